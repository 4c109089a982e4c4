"""Eager against fused attention (adapt.backbones.fused_attention) in one SAM ViT block.

One random-init block of sam-vit-b's image encoder at 1024 px (64 x 64 tokens), batch 1, one
thread, forward + backward of a scalar loss: a global-attention block and a windowed one (25
windows of 14 x 14 tokens), each form in a fresh subprocess (hidden --one), the two forms of a kind
run back to back as a pair, pairs repeated --pairs times with the order alternating. Time: CPU time
of the child process per step (one thread, so a shared machine's other load does not count),
median over --steps steps after one warm-up step. Peak memory: VmHWM after resetting it through
/proc/self/clear_refs minus VmRSS at the reset (block, input and the warm-up's buffers in memory
already), with MALLOC_MMAP_THRESHOLD_ set so that freed tensors leave the RSS; the largest over
the steps. The relative-position tables are random (SAM initialises them at zero) so that the
fused form's folding is exercised.

    .venv/bin/python bench/fused_attention.py            # ~2 minutes (--pairs 2: ~4)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import benchkit

KINDS = {"global": 2, "windowed": 0}  # block index in sam-vit-b (global blocks: 2, 5, 8, 11)
MODES = ("eager", "fused")


def one(kind: str, mode: str, steps: int, backbone: str) -> dict:
    """Time and peak memory of `steps` forward + backward passes of one block (this process)."""
    from adapt.backbones import spec_of
    from adapt.backbones.fused_attention import set_attention
    from adapt.backbones.sam import SamBackbone

    benchkit.set_threads(1)
    spec = spec_of(backbone)
    torch.manual_seed(0)
    block = SamBackbone.build_block(spec, KINDS[kind])
    with torch.no_grad():
        block.attn.rel_pos_h.normal_(0, 0.1)
        block.attn.rel_pos_w.normal_(0, 0.1)
    fused = set_attention(block, mode, windowed=True)
    grid = spec["img_size"] // spec["patch_size"]
    x = torch.randn(1, grid, grid, spec["encoder_embed_dim"], requires_grad=True)

    def step():
        block.zero_grad(set_to_none=True)
        x.grad = None
        block(x).pow(2).mean().backward()

    step()  # warm-up: kernels, allocator, gradient buffers
    times, peak = [], 0
    for _ in range(steps):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        base = benchkit.proc_status_kib("VmRSS")
        start = time.process_time()
        step()
        times.append(time.process_time() - start)
        peak = max(peak, benchkit.proc_status_kib("VmHWM") - base)
    return {"kind": kind, "mode": mode, "fused_blocks": fused, "seconds": statistics.median(times), "peak_kib": peak}


def run_child(kind: str, mode: str, steps: int, backbone: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    cmd = [sys.executable, __file__, "--one", kind, mode, "--steps", str(steps), "--backbone", backbone]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=1, help="eager/fused pairs per block kind (order alternates)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per process, after one warm-up")
    p.add_argument("--backbone", default="sam-vit-b")
    p.add_argument("--one", nargs=2, metavar=("KIND", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.steps, args.backbone)))
        return
    started = time.time()
    rows = []
    for kind in KINDS:
        got = {m: [] for m in MODES}
        for r in range(args.pairs):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                got[mode].append(run_child(kind, mode, args.steps, args.backbone))
        t = {m: statistics.median(g["seconds"] for g in got[m]) for m in MODES}
        mem = {m: statistics.median(g["peak_kib"] for g in got[m]) / 1024 for m in MODES}
        rows.append((kind, t, mem))
    print(
        f"| block ({args.backbone}, 1024 px) | eager s | fused s | time fused/eager | eager MiB | fused MiB | memory fused/eager |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind, t, mem in rows:
        print(
            f"| {kind} | {t['eager']:.2f} | {t['fused']:.2f} | **{t['fused'] / t['eager']:.2f}x** "
            f"| {mem['eager']:.0f} | {mem['fused']:.0f} | **{mem['fused'] / mem['eager']:.2f}x** |"
        )
    print(f"\nCommand: `{benchkit.command_line(__file__)}`; torch {torch.__version__}, ", end="")
    print(f"{benchkit.device_description(torch.device('cpu'))}, 1 thread; the run took {time.time() - started:.0f} s.")


if __name__ == "__main__":
    main()
