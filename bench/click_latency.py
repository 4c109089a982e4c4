#!/usr/bin/env python
"""Click latency of the app's click predictor where the app puts it (app.placement), against the CPU.

    .venv/bin/python bench/click_latency.py [--backbone sam-vit-b] [--pairs 5] [--size 1024]

The predictor is the one the Data tab's click labelling uses (adapt.predictor.InteractivePredictor
on the dichotomous task), built on a random-init architecture (no download). "uncached" clears the
embedding cache before the click (image encoder + prompt encoder + mask decoder); "cached" is the
next click on the same image (prompt encoder + mask decoder only). Median wall time over --pairs
pairs after one warm-up pair, CUDA synchronised. Rows: the device app.placement chooses on this
machine (the GPU when it has room) and the CPU; on a machine without a GPU only the CPU row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import command_line, device_description  # noqa: E402


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="sam-vit-b")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--size", type=int, default=1024, help="the clicked image's side (px)")
    args = p.parse_args(argv)
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
