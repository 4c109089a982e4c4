"""Eager against the two fused forms (adapt.backbones.fused_attention) in one SAM ViT block.

One random-init block of sam-vit-b's image encoder at 1024 px (64 x 64 tokens), batch 1, one
thread, forward + backward of a scalar loss: a global-attention block and a windowed one (25
windows of 14 x 14 tokens). The forms: "eager" (segment-anything's), "blockwise" (the fused form
the CPU runs) and "folded" (the one accelerators and traced models run, here forced on the CPU).
Each form in a fresh subprocess (hidden --one), the forms of a kind run back to back, repeated
--pairs times with the order reversed every other time. Time: CPU time
of the child process per step (one thread, so a shared machine's other load does not count),
median over --steps steps after one warm-up step. Peak memory: VmHWM after resetting it through
/proc/self/clear_refs minus VmRSS at the reset (block, input and the warm-up's buffers in memory
already), the largest over the steps, from a second child run with MALLOC_MMAP_THRESHOLD_ set
so that freed tensors leave the RSS (the timed child keeps the default allocator). The
relative-position tables are random (SAM initialises them at zero) so that B is exercised.

    .venv/bin/python bench/fused_attention.py            # ~5 minutes (--pairs 2: ~10)
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
MODES = ("eager", "blockwise", "folded")


def one(kind: str, mode: str, steps: int, backbone: str) -> dict:
    """Time and peak memory of `steps` forward + backward passes of one block (this process)."""
    import adapt.backbones.fused_attention as fa
    from adapt.backbones import spec_of
    from adapt.backbones.sam import SamBackbone

    benchkit.set_threads(1)
    spec = spec_of(backbone)
    torch.manual_seed(0)
    block = SamBackbone.build_block(spec, KINDS[kind])
    with torch.no_grad():
        block.attn.rel_pos_h.normal_(0, 0.1)
        block.attn.rel_pos_w.normal_(0, 0.1)
    fused = fa.set_attention(block, "eager" if mode == "eager" else "fused", windowed=True)
    fa._device_of = lambda x: {"blockwise": "cpu", "folded": "cuda"}.get(mode, "cpu")  # the form to run
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
    """Seconds from a child with the default allocator, peak from one with glibc's mmap threshold
    fixed (freed tensors leave the RSS; it would also charge the timed steps page faults)."""
    got = {}
    for memory in (False, True):
        env = {**os.environ, "OMP_NUM_THREADS": "1"} | ({"MALLOC_MMAP_THRESHOLD_": str(1 << 20)} if memory else {})
        cmd = [sys.executable, __file__, "--one", kind, mode, "--steps", str(steps), "--backbone", backbone]
        out = json.loads(
            subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
        )
        got.update({"peak_kib": out["peak_kib"]} if memory else out)
    return got


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
    print(f"| block ({args.backbone}, 1024 px) | form | seconds | time / eager | peak MiB | memory / eager |")
    print("|---|---|---:|---:|---:|---:|")
    for kind, t, mem in rows:
        for m in MODES:
            ratio = (
                (f"**{t[m] / t['eager']:.2f}x**", f"**{mem[m] / mem['eager']:.2f}x**") if m != "eager" else ("-", "-")
            )
            print(f"| {kind} | {m} | {t[m]:.2f} | {ratio[0]} | {mem[m]:.0f} | {ratio[1]} |")
    print(f"\nCommand: `{benchkit.command_line(__file__)}`; torch {torch.__version__}, ", end="")
    print(f"{benchkit.device_description(torch.device('cpu'))}, 1 thread; the run took {time.time() - started:.0f} s.")


if __name__ == "__main__":
    main()
