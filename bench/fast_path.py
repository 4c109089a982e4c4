#!/usr/bin/env python
"""The fast path against the slow one, on the CPU: fused vs eager attention, ours vs HF peft's
LoRA, cached vs uncached embeddings.

    .venv/bin/python bench/fast_path.py [--parts step,peft,click,cache,dice] [--pairs 1] [--steps 2]
    .venv/bin/python -m pip install -r requirements-bench.txt     # for the peft part

Parts (--backbone, by default sam-vit-b random-init at 1024 px; batch 1; one thread):

- step: one training step (benchkit.Trainer: zero_grad, forward, MSE against a fixed target,
  backward, AdamW) of LoRA and of PARSER, with `attention="eager"` (segment-anything's own) and
  `"fused"` (adapt.backbones.fused_attention). Each (method, attention) runs in its own fresh
  process; a pair's two processes run back to back, the order alternating over --pairs.
- peft: the same LoRA step, ours (fused) against HF peft's LoRA (r=4 on every block's qkv, the
  target SAM fine-tuning guides use) on stock segment-anything SAM (its eager attention), the mask
  decoder trained in both.
- click: what an uncached click costs: one image through the image encoder (torch.no_grad),
  eager against fused.
- cache: a decoder-only training step (adapt.train's own step: a 1024 px image, a box prompt,
  the mask decoder trained) with the embedding cache (adapt.embedding_cache) against without;
  the cached steps are timed once every view is in the cache.
- dice: few-shot Dice of decoder-only training on tiny-sam, cached vs uncached, --seeds seeds on
  the synthetic "camouflage" domain (8 training images, 24 held out), with 95% intervals over
  the seeds (adapt.metrics.bootstrap_interval).

Time: the child process's CPU time (one thread, so other load on a shared machine does not
count), median over --steps timed steps after one warm-up step. Memory: how far the process's
resident set rises during the steps (benchkit.measure_rise: VmHWM after resetting it, minus
VmRSS), measured in a separate child run with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_)
so that freed tensors leave the RSS; the timed children run with the default allocator (the
fixed threshold would charge every freed and re-allocated buffer its page faults).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

import benchkit

PARTS = ("step", "peft", "click", "cache", "dice")


# --- what one child process measures ----------------------------------------------------------


def _timed(step, steps: int, device: torch.device, warmup: int = 1) -> float:
    """Median seconds of `steps` calls after `warmup`: CPU time on the CPU, wall time on a GPU."""
    for _ in range(warmup):  # kernels, allocator, optimizer state (and compilation, with --compile)
        step()
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    times = []
    for _ in range(steps):
        benchkit.sync(device)
        start = clock()
        step()
        benchkit.sync(device)
        times.append(clock() - start)
    return statistics.median(times)


def _peft_trainer(backbone: str, device: torch.device) -> benchkit.Trainer:
    """benchkit.Trainer's step with HF peft's LoRA on stock segment-anything SAM instead of ours."""
    from peft import LoraConfig, inject_adapter_in_model

    t = benchkit.Trainer(backbone, "decoder", {}, 1, False, device, attention="eager")
    encoder = t.backbone.model.image_encoder
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, lora_dropout=0.0, target_modules=["qkv"]), encoder)
    encoder.to(device)
    lora = [p for n, p in encoder.named_parameters() if "lora_" in n]
    for p in lora:
        p.requires_grad_(True)
    decoder = [p for g in t.handle.trainable_groups() for p in g.params]
    t.opt = torch.optim.AdamW([{"params": lora}, {"params": decoder}], lr=benchkit.LR)
    return t


def _cache_run(backbone: str, cached: bool, device: torch.device, precision: str):
    """adapt.train's Run for decoder-only training on one 1024 px image, and its step."""
    import numpy as np

    from adapt.data.synthetic import make_dataset
    from adapt.train import Run, TrainConfig, _optimizer_step

    scene = make_dataset("camouflage", n=1, size=1024, seed=0)[0]
    sample = SimpleNamespace(image=scene.image, mask=np.any(np.stack(scene.masks), 0).astype(np.uint8))
    cfg = TrainConfig(
        backbone=backbone, checkpoint="random", method="decoder", batch_size=1, augment=False,
        embedding_cache=cached, device=device.type, precision=precision,
    )  # fmt: skip
    run = Run(cfg)
    run.start_cache([sample], None)
    run.backbone.model.train()
    return lambda: _optimizer_step(run, [sample], lambda event: None)


def one(part: str, variant: str, args) -> dict:
    """What one child process measures: the seconds of one call (or, in the memory child, its rise)."""
    benchkit.set_threads(1)
    device, name = torch.device(args.device), args.backbone
    autocast = {"fp32": None, "bf16": torch.bfloat16}[args.precision]
    if part in ("step", "peft"):
        method, attention = variant.split(":")
        peft = attention == "peft"
        t = _peft_trainer(name, device) if peft else benchkit.Trainer(name, method, {}, 1, False, device, attention)
        t.autocast = autocast
        if args.compile:
            for block in t.backbone.blocks():
                block.compile()
        step = t.step
    elif part == "click":
        from adapt.backbones import build_backbone

        backbone = build_backbone(name, seed=0, attention=variant).to(device)
        image = backbone.example_inputs(1, seed=0)["images"].to(device)

        def step():
            with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                backbone.encode(image)

    elif part == "cache":
        step = _cache_run(name, variant == "cached", device, args.precision)
    else:
        raise ValueError(part)
    if args.memory_child:  # its own process: the rise above the level after one step
        step()
        return {"step_bytes": benchkit.measure_rise(SimpleNamespace(step=step), 1, device)["step_bytes"]}
    return {"seconds": _timed(step, args.steps, device, warmup=3 if args.compile else 1)}


def run_child(part: str, variant: str, args, memory: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 16)
    cmd = [sys.executable, __file__, "--one", part, variant, "--steps", str(args.steps), "--backbone", args.backbone]
    cmd += ["--device", args.device, "--precision", args.precision] + ["--compile"] * args.compile
    cmd += ["--memory-child"] * memory
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{part} {variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- pairs and the report ---------------------------------------------------------------------


def compare(part: str, base: str, new: str, args, memory: bool = True) -> dict:
    """new/base time (median over pairs, each pair back to back, order alternating) and memory."""
    times = {base: [], new: []}
    for r in range(args.pairs):
        for v in (base, new) if r % 2 == 0 else (new, base):
            times[v].append(run_child(part, v, args, memory=False)["seconds"])
    out = {v: statistics.median(ts) for v, ts in times.items()}
    out["time"] = out[new] / out[base]
    if memory and not args.time_only:
        mem = {v: run_child(part, v, args, memory=True)["step_bytes"] for v in (base, new)}
        out.update({f"{v} bytes": b for v, b in mem.items()}, memory=mem[new] / mem[base])
    return out


def dice_part(args) -> list[str]:
    """Few-shot Dice of decoder-only training on tiny-sam, cached vs uncached, over seeds."""
    import numpy as np

    from adapt.data.synthetic import make_dataset
    from adapt.metrics import bootstrap_interval
    from adapt.train import TrainConfig, train

    def samples(n, seed):
        scenes = make_dataset("camouflage", n=n, size=256, seed=seed)
        return [SimpleNamespace(image=s.image, mask=np.any(np.stack(s.masks), 0).astype(np.uint8)) for s in scenes]

    data, held = samples(8, 0), samples(24, 1)
    dice = {True: [], False: []}
    for seed in range(args.seeds):
        for cached in (True, False):
            cfg = TrainConfig(
                backbone="tiny-sam", method="decoder", steps=args.dice_steps, batch_size=2, seed=seed,
                eval_every=0, validation=0, embedding_cache=cached, cache_views=args.cache_views, device="cpu",
            )  # fmt: skip
            dice[cached].append(train(cfg, data, held)["adapted"]["dice"])
    rows = ["| embeddings | Dice (mean over seeds) | 95% interval | per seed |", "|---|---:|---|---|"]
    spans = {}
    for cached in (True, False):
        lo, hi = bootstrap_interval(dice[cached])
        spans[cached] = (lo, hi)
        per = ", ".join(f"{d:.3f}" for d in dice[cached])
        rows.append(
            f"| {'cached' if cached else 'uncached'} | {np.mean(dice[cached]):.3f} | {lo:.3f} - {hi:.3f} | {per} |"
        )
    inside = all(spans[not c][0] <= np.mean(dice[c]) <= spans[not c][1] for c in (True, False))
    overlap = spans[True][0] <= spans[False][1] and spans[False][0] <= spans[True][1]
    diff = np.asarray(dice[True]) - np.asarray(dice[False])  # paired by seed
    lo, hi = bootstrap_interval(diff)
    rows.append(
        f"\nIntervals overlap: **{'yes' if overlap else 'no'}**; each mean inside the other's interval: "
        f"**{'yes' if inside else 'no'}**; cached - uncached, paired by seed: {diff.mean():+.3f} "
        f"(95% interval {lo:+.3f} to {hi:+.3f}). {args.seeds} seeds, {args.dice_steps} steps, batch 2, "
        f"{args.cache_views} cached views per image, "
        "8 training / 24 held-out 256 px images."
    )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    p.add_argument("--methods", default="lora,parser", help="the step part's methods")
    p.add_argument("--time-only", action="store_true", help="no memory children (time ratios only)")
    p.add_argument("--pairs", type=int, default=1, help="base/new pairs per comparison (order alternates)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per process, after one warm-up")
    p.add_argument("--backbone", default="sam-vit-b", help="the SAM ViT of the step, peft, click and cache parts")
    p.add_argument("--seeds", type=int, default=5, help="seeds of the dice part")
    p.add_argument("--cache-views", type=int, default=4, help="the dice part's fixed views per image")
    p.add_argument("--dice-steps", type=int, default=60, help="training steps of the dice part")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="autocast (GPU: bf16)")
    p.add_argument("--compile", action="store_true", help="torch.compile every encoder block (GPU)")
    p.add_argument("--one", nargs=2, metavar=("PART", "VARIANT"), help=argparse.SUPPRESS)
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args)))
        return
    started, parts = time.time(), args.parts.split(",")
    lines = ["| comparison | base | new | time new/base | memory new/base |", "|---|---:|---:|---:|---:|"]

    def row(name, r, base, new):
        mem = (
            f"**{r['memory']:.2f}x** ({r[f'{new} bytes'] / 2**20:,.0f} / {r[f'{base} bytes'] / 2**20:,.0f} MiB)"
            if "memory" in r
            else "-"
        )
        lines.append(f"| {name} | {r[base]:.2f} s | {r[new]:.2f} s | **{r['time']:.2f}x** | {mem} |")
        print(lines[-1], flush=True)

    for method in args.methods.split(","):
        if "step" in parts:
            row(f"{method} step, fused / eager", compare("step", f"{method}:eager", f"{method}:fused", args), f"{method}:eager", f"{method}:fused")  # fmt: skip
    if "peft" in parts:
        row("lora step, ours fused / peft on stock SAM", compare("peft", "lora:peft", "lora:fused", args), "lora:peft", "lora:fused")  # fmt: skip
    if "click" in parts:
        row("uncached click embedding, fused / eager", compare("click", "eager", "fused", args), "eager", "fused")
    if "cache" in parts:
        row("decoder-only step, cached / uncached", compare("cache", "uncached", "cached", args, memory=False), "uncached", "cached")  # fmt: skip
    print("\n".join(lines))
    if "dice" in parts:
        print("\n" + "\n".join(dice_part(args)))
    print(f"\nCommand: `{benchkit.command_line(__file__)}`; torch {torch.__version__}, ", end="")
    print(
        f"{benchkit.device_description(torch.device('cpu'))}, 1 thread per process; the run took {time.time() - started:.0f} s."
    )


if __name__ == "__main__":
    main()
