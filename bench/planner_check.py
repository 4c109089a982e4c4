#!/usr/bin/env python
"""The memory planner's estimate against the measured step memory, case by case.

    .venv/bin/python bench/planner_check.py [--cases sam-vit-b:parser:1:ckpt,clip-vit-b-16:hclip:4,...]
                                            [--device cpu|cuda] [--threads T] [--parallel P]
                                            [--json OUT.json] [--from-json OUT.json]

Each case is BACKBONE:METHOD:BATCH[:ckpt]. It runs in a fresh subprocess of this script: the
backbone (random-init, full-size architectures need no download) with the method attached, AdamW
over its trainable groups, 2 training steps of MSE against a fixed random target on
`backbone.example_inputs(batch)` (bench/benchkit.py's Trainer), and the step memory is measured as
there: how far memory rises above its level before the first step (CPU: VmHWM after resetting it,
minus VmRSS; CUDA: max_memory_allocated minus memory_allocated), with glibc's mmap threshold fixed
so that freed tensors leave the RSS.

The planner's figure for the same step is `adapt.planner.estimate(...)`'s gradients + optimizer
state + activations (the weights are in place before the first step, so neither side counts them;
nor the x1.2 slack, which is the plan's margin, not part of the estimate). CLIP's example inputs
encode 3 prompts, so the estimate is asked for 3 text sequences.

`--from-json` recomputes the estimates for measurements saved by `--json` (no measuring): the way
to hold a changed planner against the same peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from adapt.backbones import family_of
from benchkit import Trainer, command_line, device_description, measure_rise, set_threads

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
CLIP_PROMPTS = 3  # ClipBackbone.example_inputs encodes three prompts
DEFAULT_CASES = [
    "sam-vit-b:parser:1",
    "sam-vit-b:parser:1:ckpt",
    "sam-vit-b:lora:1",
    "sam-vit-b:lora:1:ckpt",
    "sam-vit-b:full:1",
    "sam-vit-b:decoder:1",
    "clip-vit-b-16:hclip:8",
    "clip-vit-b-16:hclip:8:ckpt",
    "clip-vit-b-16:lora-clip:8",
    "clip-vit-b-16:lora-clip:8:ckpt",
    "clip-vit-b-16:full:8",
]
STEPS = 2  # AdamW's state exists from the first step on, so the second step holds the steady peak


def parse_case(text: str) -> dict:
    parts = text.split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "ckpt"):
        raise ValueError(f"a case is BACKBONE:METHOD:BATCH[:ckpt], not {text!r}")
    return {"backbone": parts[0], "method": parts[1], "batch": int(parts[2]), "checkpointing": len(parts) == 4}


def case_name(c: dict) -> str:
    return f"{c['backbone']}:{c['method']}:{c['batch']}" + (":ckpt" if c["checkpointing"] else "")


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def measure_here(case: dict, device: torch.device, precision: str, attention: str) -> dict:
    t = Trainer(case["backbone"], case["method"], {}, case["batch"], case["checkpointing"], device, attention)
    t.autocast = AUTOCAST[precision]  # no gradient scaler: the step's memory is what is measured
    return {**case, "attention": attention, **measure_rise(t, STEPS, device)}


def measure(case: dict, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", case_name(case), "--device", args.device]
    cmd += ["--threads", str(args.threads), "--precision", args.precision, "--attention", args.attention]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # see bench/step_cost.py's measure_memory
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{case_name(case)} failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.perf_counter() - started, 1)
    return out


def planned(m: dict, precision: str, device: str) -> int:
    """The planner's gradients + optimizer state + activations for a measured case (recorded
    before the fused attention existed: eager)."""
    from adapt.planner import estimate

    texts = {"texts": CLIP_PROMPTS} if family_of(m["backbone"]) == "clip" else {}
    attention = m.get("attention", "eager")
    e = estimate(
        m["backbone"],
        m["method"],
        m["batch"],
        m["checkpointing"],
        precision,
        attention=attention,
        device=device,
        **texts,
    )
    return e.trainable_state + e.activations


def device_kind(report: dict) -> str:
    return "cuda" if report["device"].startswith("cuda") else "cpu"


def markdown(report: dict) -> str:
    rows = [
        "| backbone | method | batch | checkpointing | attention | measured (MiB) | planner (MiB) | error |",
        "|---|---|---:|---|---|---:|---:|---:|",
    ]
    within = 0
    for m in report["results"]:
        est = planned(m, report["precision"], device_kind(report))
        err = est / m["step_bytes"] - 1 if m["step_bytes"] else float("nan")
        within += abs(err) <= 0.2
        rows.append(
            f"| {m['backbone']} | {m['method']} | {m['batch']} | {'on' if m['checkpointing'] else 'off'} | "
            f"{m.get('attention', 'eager')} | "
            f"{m['step_bytes'] / MIB:,.0f} | {est / MIB:,.0f} | {err:+.0%} |"
        )
    rows.append("")
    rows.append(f"Within 20%: {within} of {len(report['results'])} cases.  ")
    rows.append(f"Command: `{report['command']}`  ")
    rows.append(f"Device: {report['device']}; torch {report['torch']}; {report['threads']} thread(s) per case.  ")
    rows.append(
        f"Step memory: {report['results'][0]['mem_how']}, over {STEPS} steps. The run took {report['wall_s']} s."
    )
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated BACKBONE:METHOD:BATCH[:ckpt]")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each case's process (default 1)")
    p.add_argument(
        "--precision", choices=list(AUTOCAST), default="fp32", help="autocast of the forward (default fp32: none)"
    )
    p.add_argument(
        "--attention", choices=["fused", "eager"], default="fused", help="SAM ViT's attention (default fused)"
    )
    p.add_argument("--parallel", type=int, default=1, help="cases measured at once (each in its own process)")
    p.add_argument("--json", help="also save the measurements and report here")
    p.add_argument("--from-json", help="re-estimate the measurements saved in this file (nothing is measured)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    set_threads(args.threads)
    device = torch.device(args.device)
    if args.one:
        print(json.dumps(measure_here(parse_case(args.one), device, args.precision, args.attention)))
        return 0
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
    else:
        cases = [parse_case(c) for c in args.cases.split(",") if c.strip()]
        started = time.perf_counter()
        with ThreadPoolExecutor(max(args.parallel, 1)) as pool:
            results = list(pool.map(lambda c: measure(c, args), cases))
        report = {
            "command": command_line(__file__),
            "device": device_description(device),
            "torch": torch.__version__,
            "threads": args.threads,
            "precision": args.precision,
            "wall_s": round(time.perf_counter() - started, 1),
            "results": results,
        }
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
