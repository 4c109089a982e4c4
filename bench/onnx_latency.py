#!/usr/bin/env python
"""ONNX export: onnxruntime's CPU latency against PyTorch's for the same adapted model, and graph sizes.

    .venv/bin/python bench/onnx_latency.py [--backbones tiny-sam,sam-vit-b,tiny-clip,clip-vit-b-16]
                                           [--method parser|lora|hclip] [--rounds 7] [--threads 1]

Per backbone: the method attached to the random-init architecture (no download), its adapter
moved off its initialisation, saved, then exported with adapt.pipeline.export_onnx (merged).
Timed, one thread each (torch.set_num_threads and onnxruntime's intra-op threads), rounds
interleaved (PyTorch then onnxruntime, then the other way round), the median of per-round ratios:
- SAM: the image encoder on one image at the encoder size; the prompt encoder + mask decoder
  for one box prompt on that embedding (what a cached click costs).
- CLIP: the open-vocabulary graph (image tower + head, the class embeddings baked in) on one
  window, 3 classes + background.
Time is this process's CPU time (time.process_time): on a shared machine other processes' time
slices do not count. Graph size: the .onnx files (with external data when there is any).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchkit import command_line, device_description, set_threads

METHOD = {"sam": "lora", "clip": "hclip"}


def timed(fn, clock=time.process_time) -> float:
    start = clock()
    fn()
    return clock() - start


def compare(torch_fn, ort_fn, rounds: int) -> tuple[float, float, float]:
    """(median torch s, median onnxruntime s, median of per-round ort/torch), after one warm-up each."""
    torch_fn(), ort_fn()
    ts, os_, ratios = [], [], []
    for r in range(rounds):
        if r % 2:
            o, t = timed(ort_fn), timed(torch_fn)
        else:
            t, o = timed(torch_fn), timed(ort_fn)
        ts.append(t)
        os_.append(o)
        ratios.append(o / t)
    return statistics.median(ts), statistics.median(os_), statistics.median(ratios)


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name != "onnx_config.json" and p.suffix != ".md") / 2**20


def bench(backbone: str, method: str | None, rounds: int, threads: int, tmp: Path) -> list[dict]:
    from adapt.backbones import build_backbone, family_of
    from adapt.methods import attach
    from adapt.onnx_graphs import load_onnx, write_onnx
    from adapt.tasks import attach_task_head, make_task

    family = family_of(backbone)
    method = method or METHOD[family]
    model = build_backbone(backbone, seed=0)
    attach_task_head(model)
    handle = attach(model, method)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in handle.adapter_parameters().values():
            p.add_(torch.randn(p.shape, generator=g) * 0.01 * (p.abs().mean() + 1e-2))
    handle.merge()
    model.model.eval()
    task_name = "dichotomous" if family == "sam" else "openvocab"
    ours = make_task(task_name, model, **({"classes": ["red", "blue", "green"]} if family == "clip" else {}))
    started = time.perf_counter()
    out = write_onnx(ours, tmp / f"{backbone}-onnx")
    export_s = time.perf_counter() - started
    runner = load_onnx(out)
    rows = []
    common = {"backbone": backbone, "method": method, "graph_mb": size_mb(out), "export_s": export_s}
    with torch.no_grad():
        if family == "sam":
            x = ours.prepare(
                np.random.default_rng(0).integers(0, 255, (ours.size, ours.size, 3), dtype=np.uint8)
            ).image[None]
            t, o, r = compare(lambda: ours.encode(x), lambda: runner.encode(x), rounds)
            rows.append({**common, "part": "image encoder", "torch_s": t, "ort_s": o, "ratio": r})
            emb = ours.encode(x)
            box = torch.tensor([[10.0, 20.0, ours.size * 0.6, ours.size * 0.7]])
            t, o, r = compare(lambda: ours.decode(emb, boxes=box), lambda: runner.decode(emb, boxes=box), rounds)
            rows.append({**common, "part": "prompt encoder + mask decoder", "torch_s": t, "ort_s": o, "ratio": r})
        else:
            x = torch.randn(1, 3, ours.size, ours.size)
            texts = ours.text_features(ours.vocabulary())
            t, o, r = compare(lambda: ours.logits(x, texts), lambda: runner.logits(x), rounds)
            rows.append({**common, "part": "image tower + head (one window)", "torch_s": t, "ort_s": o, "ratio": r})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", default="tiny-sam,sam-vit-b,tiny-clip,clip-vit-b-16")
    p.add_argument("--method", help="default: lora on SAM, hclip on CLIP")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    set_threads(args.threads)
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    from adapt import onnx_graphs

    original = onnx_graphs._session

    def session(path):  # the runner's sessions, with the same thread count as torch
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    onnx_graphs._session = session
    started = time.perf_counter()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for backbone in [b.strip() for b in args.backbones.split(",") if b.strip()]:
                print(f"{backbone}...", file=sys.stderr, flush=True)
                rows += bench(backbone, args.method, args.rounds, args.threads, Path(tmp))
    finally:
        onnx_graphs._session = original
    print(
        "| backbone | method | part | PyTorch (ms) | onnxruntime (ms) | onnxruntime / PyTorch | graphs (MiB) | export (s) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['backbone']} | {r['method']} | {r['part']} | {r['torch_s'] * 1e3:.1f} | {r['ort_s'] * 1e3:.1f} "
            f"| **{r['ratio']:.2f}** | {r['graph_mb']:.1f} | {r['export_s']:.0f} |"
        )
    print()
    print(
        f"Command: `{command_line(__file__)}`  \nDevice: {device_description(torch.device('cpu'))}; torch "
        f"{torch.__version__}, onnxruntime {ort.__version__}; {args.threads} thread(s) each; process CPU time, "
        f"median of {args.rounds} interleaved rounds. The run took {time.perf_counter() - started:.0f} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
