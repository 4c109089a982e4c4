#!/usr/bin/env python
"""Click latency of the app's click predictor where the app puts it (app.placement), against the CPU.

    .venv/bin/python bench/click_latency.py [--backbone sam-vit-b] [--pairs 5] [--size 1024]
    .venv/bin/python bench/click_latency.py --compare sam-vit-b mobile-sam sam2.1-hiera-tiny   # CPU only

The predictor is the one the Data tab's click labelling uses (adapt.predictor.InteractivePredictor
on the dichotomous task), built on a random-init architecture (no download). "uncached" clears the
embedding cache before the click (image encoder + prompt encoder + mask decoder); "cached" is the
next click on the same image (prompt encoder + mask decoder only). Median wall time over --pairs
pairs after one warm-up pair, CUDA synchronised. Rows: the device app.placement chooses on this
machine (the GPU when it has room) and the CPU; on a machine without a GPU only the CPU row.

--compare: several backbones on the CPU, what a CPU-only user or a free Space would pick between:
uncached and cached click, and a prompt-free prediction of a whole image (one pass, no refinement),
medians over --pairs rounds in which the backbones take turns, each as a ratio to the first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from benchkit import command_line, device_description


def click_times(backbone: str, device: str, pairs: int, size: int) -> tuple[float, float]:
    from adapt.backbones import build_backbone
    from adapt.predictor import InteractivePredictor
    from adapt.train import make_task

    bb = build_backbone(backbone, seed=0).to(device)
    pred = InteractivePredictor(make_task("dichotomous", bb), device=device)
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    points = np.array([[size / 2, size / 2]], np.float32)

    def timed() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        pred.predict(image, points=points, labels=np.array([1]))
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    uncached, cached = [], []
    for i in range(pairs + 1):
        pred.clear()
        u, c = timed(), timed()
        if i:  # the first pair warms up
            uncached.append(u)
            cached.append(c)
    return statistics.median(uncached), statistics.median(cached)


def compare(backbones: list[str], pairs: int, size: int) -> None:
    from adapt.backbones import build_backbone
    from adapt.predictor import InteractivePredictor
    from adapt.train import make_task

    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    points, labels = np.array([[size / 2, size / 2]], np.float32), np.array([1])
    tasks = {name: make_task("dichotomous", build_backbone(name, seed=0)) for name in backbones}
    clicks = {name: InteractivePredictor(task) for name, task in tasks.items()}
    times = {name: {"uncached": [], "cached": [], "whole": []} for name in backbones}
    with torch.no_grad():
        for i in range(pairs + 1):
            for name in backbones[i % len(backbones) :] + backbones[: i % len(backbones)]:  # take turns
                clicks[name].clear()
                t = [time.perf_counter()]
                clicks[name].predict(image, points=points, labels=labels)
                t.append(time.perf_counter())
                clicks[name].predict(image, points=points, labels=labels)
                t.append(time.perf_counter())
                tasks[name].predict(image, refine=False)
                t.append(time.perf_counter())
                if i:  # the first round warms up
                    for key, a, b in zip(("uncached", "cached", "whole"), t, t[1:]):
                        times[name][key].append(b - a)
    base = {k: statistics.median(v) for k, v in times[backbones[0]].items()}
    print(f"| backbone | uncached click (s) | cached click (s) | prompt-free whole image (s) | vs {backbones[0]} |")
    print("|---|---:|---:|---:|---|")
    for name in backbones:
        m = {k: statistics.median(v) for k, v in times[name].items()}
        ratios = ", ".join(f"{m[k] / base[k]:.2f}" for k in ("uncached", "cached", "whole"))
        print(f"| {name} | {m['uncached']:.3f} | {m['cached']:.4f} | {m['whole']:.3f} | {ratios} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="sam-vit-b")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--size", type=int, default=1024, help="the clicked image's side (px)")
    p.add_argument("--compare", nargs="+", metavar="BACKBONE", help="these backbones on the CPU, against the first")
    args = p.parse_args(argv)
    if args.compare:
        started = time.perf_counter()
        compare(args.compare, args.pairs, args.size)
        print(
            f"\nCommand: `{command_line(__file__)}`; torch {torch.__version__}, {torch.get_num_threads()} CPU "
            f"threads, {args.size} px image; random-init architectures. The run took {time.perf_counter() - started:.0f} s."
        )
        return 0
    from adapt.backbones import build_backbone
    from app.placement import place

    where = place(build_backbone(args.backbone, seed=0), args.backbone)
    devices = ["cpu"] if where.device == "cpu" else [where.device, "cpu"]
    print(f"app.placement on this machine: {where.device} {('(' + where.note + ')') if where.note else ''}")
    print()
    print("| device | uncached click (s) | cached click (s) | uncached / cached |")
    print("|---|---:|---:|---:|")
    started = time.perf_counter()
    for device in devices:
        u, c = click_times(args.backbone, device, args.pairs, args.size)
        name = device_description(torch.device(device))
        print(f"| {name} | {u:.3f} | {c:.4f} | {u / c:.0f}x |")
    print()
    print(
        f"Command: `{command_line(__file__)}`; torch {torch.__version__}, {torch.get_num_threads()} CPU threads. "
        f"The run took {time.perf_counter() - started:.0f} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
