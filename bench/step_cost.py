#!/usr/bin/env python
"""Training-step cost and merged-inference cost of every SAM adaptation method, relative to `full`.

    .venv/bin/python bench/step_cost.py [--backbone tiny-sam] [--batch 2] [--steps N] [--warmup K]
                                        [--device cpu|cuda] [--threads T] [--clock auto|cpu|wall]
                                        [--methods full,parser,...] [--infer-rounds R] [--infer-repeat K]
                                        [--out FILE.md] [--json]

What is measured, per method (a fresh backbone built with seed 0, the method attached, AdamW over
`handle.trainable_groups()` with lr 1e-4 * lr_scale, MSE of `backbone.forward(inputs)` against a
fixed random target):

- step time: the time of one training step (zero_grad, forward, loss, backward, optimizer step),
  median over the timed steps after the warm-up steps. "Time" is this process's CPU time on
  --device cpu with one thread (the default there; on a shared machine, wall time would also count
  the time slices other processes take) and wall time otherwise (--clock picks). All methods are
  built up front and stepped round-robin (one step of each per round, the order rotated every
  round), so a slow spell of a noisy, shared machine hits every method alike instead of whichever
  was running at the time; the ratio to `full` is the median over rounds of (step / full's step
  in the same round).
- step memory: how far memory rises above its level just before the first step (model, adapter,
  optimizer object, inputs and target already in place) during warm-up + a few steps, i.e. the
  activations kept for backward, the gradients, AdamW's state and temporaries. Each method runs in a
  fresh subprocess of this script (hidden `--one`), so nothing allocated by another method counts.
  CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus
  memory_allocated() at the reset. CPU (Linux): the peak resident set size VmHWM after resetting it
  through /proc/self/clear_refs ("5"), minus VmRSS at the reset; where that file cannot be written,
  ru_maxrss after the steps minus ru_maxrss before them (a lower bound if building the model ever
  peaked higher than the steps do). The subprocess runs with MALLOC_MMAP_THRESHOLD_=65536 so that
  freed tensor memory leaves the RSS (see measure_memory). The total peak (weights and, on CPU, the Python/torch runtime
  included) is in the --json output as `peak_total_bytes`.
- inference: eval mode, torch.no_grad, one forward of the batch, for the plain backbone (no method:
  "base"), the adapted model un-merged and the adapted model after handle.merge(). The adapter is
  first perturbed (about 1% noise) so that merging folds a non-zero update. The three are timed
  interleaved for several rounds (order rotated), each measurement the fastest of a few forwards,
  and merged/base, unmerged/base are medians over rounds of the per-round ratios. AdaptFormer-style
  methods cannot fold their non-linear branch into the base weights (handle.fully_mergeable is
  False), so their merged model still runs the branch: flagged in the table.
- FLOPs: matmul/convolution FLOPs counted by torch.utils.flop_counter.FlopCounterMode, of one
  training step's forward + backward and of one inference forward (base, un-merged, merged). They
  are exact and machine-independent, which the timings on a noisy machine are not; element-wise
  work (norms, activations, the optimizer update) is not in them.
- threads: torch.set_num_threads(--threads) in this process and in every subprocess (default 1 on
  CPU, see parse_args), one inter-op thread.

Ratios against `full` (training) and `base` (inference) measured in the same run are the headline;
absolute numbers are printed too, but they depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from adapt.backbones import BACKBONES, build_backbone, family_of
from adapt.methods import METHODS, attach, configurations, label
from benchkit import (
    Trainer,
    command_line,
    count_flops,
    device_description,
    measure_rise,
    quiet_gc,
    set_threads,
    sync,
)

ROOT = Path(__file__).resolve().parents[1]

# key (for --methods / --one), label in the table, method name, attach options: every SAM method
# configuration the benchmarks compare (adapt.methods.configurations), the no-training reference aside;
# `full` first, the baseline of every ratio
VARIANTS = sorted(
    (
        (method + "".join(f":{v}" for v in options.values()), label(method, options), method, options)
        for method, _, options in configurations("sam", compared=True)
        if method != "frozen"
    ),
    key=lambda v: v[2] != "full",
)
BY_KEY = {v[0]: v for v in VARIANTS}
MIB = 2**20


# --- set-up -------------------------------------------------------------------------------------


def trainer_for_key(key: str, args, device) -> Trainer:
    """The Trainer of one --methods key, labelled for the report."""
    _, label, method, options = BY_KEY[key]
    t = Trainer(args.backbone, method, options, args.batch, args.checkpointing, device)
    t.key, t.label = key, label
    return t


# --- memory (one method per fresh subprocess) ---------------------------------------------------


def measure_memory_here(key: str, args, device: torch.device) -> dict:
    """Runs inside the `--one` subprocess: build, attach, then the rise of memory over the steps."""
    t = trainer_for_key(key, args, device)
    # AdamW allocates its state in the first step, so the steady-state peak is reached by the second.
    steps = max(args.mem_steps if args.mem_steps is not None else min(args.warmup + args.steps, 3), 1)
    rise = measure_rise(t, steps, device)
    counts = t.handle.count()
    from adapt.planner import estimate

    _, _, method, options = BY_KEY[key]
    planned = estimate(args.backbone, method, args.batch, args.checkpointing, "fp32", **options)
    return {
        "key": key,
        "planned_step_bytes": planned.trainable_state + planned.activations,  # the planner, for the same step
        **rise,
        "mem_steps": steps,
        "adapter_params": counts["adapter"],
        "trainable_params": counts["trainable"],
        "step_flops": t.step_flops(),
    }


def measure_memory(key: str, args) -> dict:
    """Runs `--one KEY` in a fresh interpreter and reads the JSON line it prints last."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one",
        key,
        "--backbone",
        args.backbone,
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    if args.mem_steps is not None:
        cmd += ["--mem-steps", str(args.mem_steps)]
    if args.checkpointing:
        cmd += ["--checkpointing"]
    if args.memory_cap:
        cmd += ["--memory-cap", str(args.memory_cap)]
    # A fixed glibc mmap threshold (setting it switches off glibc's dynamic one) makes every buffer
    # over 64 KiB its own mapping, unmapped when freed, so RSS follows the live tensors rather than
    # whatever freed memory the heap happens to keep: the CPU step memory of a method then repeats
    # to ~0.3 MiB between runs instead of ~3 MiB. Ignored by other C libraries.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory run for {key!r} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- training step time (all methods in this process, round-robin) ------------------------------


def time_training(keys: list[str], args, device: torch.device, log) -> dict[str, list[float]]:
    return time_round_robin([trainer_for_key(k, args, device) for k in keys], args, device, log)


def time_round_robin(trainers: list[Trainer], args, device: torch.device, log) -> dict[str, list[float]]:
    """{trainer.key: step times after the warm-up}, every trainer stepped once per round."""
    with quiet_gc():
        for r in range(args.warmup + args.steps):
            order = trainers[r % len(trainers) :] + trainers[: r % len(trainers)]  # rotate the order
            for t in order:
                gc.collect()  # cheap under quiet_gc: only objects made since it began
                sync(device)
                start = args.clock_fn()
                t.step()
                sync(device)
                if r >= args.warmup:
                    t.times.append(args.clock_fn() - start)
            log(f"  train round {r + 1}/{args.warmup + args.steps}" + (" (warm-up)" if r < args.warmup else ""))
    times = {t.key: t.times for t in trainers}
    del trainers
    gc.collect()
    return times


def checkpointing_cost(args, device: torch.device, log) -> str:
    """--checkpointing-cost: each method's step time with activation checkpointing over its step
    time without, both trainers in this process and stepped round-robin (the ratio is the median of
    per-round ratios, so a slow spell of the machine hits both alike)."""
    trainers = []
    for k in args.keys:
        for on in (False, True):
            _, label, method, options = BY_KEY[k]
            t = Trainer(args.backbone, method, options, args.batch, on, device)
            t.key, t.label = (k, on), label
            trainers.append(t)
    started = time.perf_counter()
    times = time_round_robin(trainers, args, device, log)
    lines = [
        "| method | step time (s) | with checkpointing | ratio [range over rounds] |",
        "|---|---:|---:|---:|",
    ]
    for k in args.keys:
        off, on = times[(k, False)], times[(k, True)]
        ratios = [b / a for a, b in zip(off, on)]
        lines.append(
            f"| {BY_KEY[k][1]} | {statistics.median(off):.2f} | {statistics.median(on):.2f} | "
            f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}] |"
        )
    lines += [
        "",
        f"Command: `{command_line(__file__)}`  ",
        f"Device: {device_description(device)}; torch {torch.__version__}; {torch.get_num_threads()} thread(s); "
        f"times are {'process CPU time' if args.clock == 'cpu' else 'wall time'}; backbone `{args.backbone}`, "
        f"batch {args.batch}, {args.steps} timed rounds after {args.warmup} warm-up. "
        f"The run took {time.perf_counter() - started:.0f} s.",
    ]
    return "\n".join(lines)


# --- inference: base vs un-merged vs merged, interleaved ----------------------------------------


@torch.no_grad()
def perturb(handle, scale: float = 0.01, seed: int = 1) -> None:
    """Moves every adapter tensor by ~`scale` of its mean magnitude (absolute `scale` where it is
    zero, e.g. LoRA's B), so that merge folds a real update instead of a zero one."""
    g = torch.Generator().manual_seed(seed)
    for p in handle.adapter_parameters().values():
        ref = p.abs().mean().item() or 1.0
        p.add_(torch.randn(p.shape, generator=g).to(p.device, p.dtype) * (scale * ref))


def time_inference(key: str, base, args, device: torch.device) -> dict:
    _, _, method, options = BY_KEY[key]
    adapted = build_backbone(args.backbone, seed=0)
    adapted.model.to(device)
    handle = attach(adapted, method, **options)
    perturb(handle)
    adapted.model.eval()
    inputs = {k: v.to(device) for k, v in base.example_inputs(args.batch, seed=0).items()}

    def run(backbone) -> float:
        """Fastest of `infer_repeat` back-to-back forwards: interference only ever adds time."""
        best = float("inf")
        for _ in range(args.infer_repeat):
            sync(device)
            start = args.clock_fn()
            backbone.forward(inputs)
            sync(device)
            best = min(best, args.clock_fn() - start)
        return best

    with torch.no_grad():
        unmerged_out = adapted.forward(inputs)
        handle.merge()
        merged_out = adapted.forward(inputs)
        handle.unmerge()
        merge_diff = (merged_out - unmerged_out).abs().max().item()
        moved = (unmerged_out - base.forward(inputs)).abs().max().item()
        # Counted with grad mode on: FlopCounterMode's module tracker trips over SAM's prompt
        # encoder under no_grad (it returns a view of a trainable weight that has no grad_fn).
        with torch.enable_grad():
            flops = {
                "base": count_flops(lambda: base.forward(inputs)),
                "unmerged": count_flops(lambda: adapted.forward(inputs)),
            }
            handle.merge()
            flops["merged"] = count_flops(lambda: adapted.forward(inputs))
            handle.unmerge()
        run(base), run(adapted)  # warm-up of both models
        times = {"base": [], "unmerged": [], "merged": []}
        kinds = list(times)
        with quiet_gc():
            for r in range(args.infer_rounds):
                for kind in kinds[r % 3 :] + kinds[: r % 3]:  # rotate the order every round
                    gc.collect()  # cheap under quiet_gc: only objects made since it began
                    if kind == "base":
                        times[kind].append(run(base))
                    elif kind == "unmerged":
                        times[kind].append(run(adapted))
                    else:
                        handle.merge()
                        times[kind].append(run(adapted))
                        handle.unmerge()

    # Ratios are paired within a round (measured seconds apart), then the median over rounds.
    def ratio(kind: str) -> float:
        return statistics.median(a / b for a, b in zip(times[kind], times["base"]))

    return {
        "infer_base_s": statistics.median(times["base"]),
        "infer_unmerged_s": statistics.median(times["unmerged"]),
        "infer_merged_s": statistics.median(times["merged"]),
        "merged_over_base": ratio("merged"),
        "unmerged_over_base": ratio("unmerged"),
        "merged_over_base_spread": _spread(times["merged"], times["base"]),
        "infer_times_s": times,
        "infer_flops": flops,
        "merged_flops_over_base": flops["merged"] / flops["base"],
        "unmerged_flops_over_base": flops["unmerged"] / flops["base"],
        "merge_max_abs_diff": merge_diff,
        "output_moved_from_base": moved,
        "fully_mergeable": METHODS[method].fully_mergeable,
    }


def _spread(xs: list[float], refs: list[float]) -> list[float]:
    """Inter-quartile range of the per-round ratios xs/refs: how far to trust the median."""
    rs = sorted(a / b for a, b in zip(xs, refs))
    if len(rs) < 4:
        return [rs[0], rs[-1]]
    q = statistics.quantiles(rs, n=4)
    return [q[0], q[2]]


# --- report -------------------------------------------------------------------------------------


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _with_spread(x: float | None, spread: list[float] | None) -> str:
    return _ratio(x) if x is None or not spread else f"{x:.2f} [{spread[0]:.2f}, {spread[1]:.2f}]"


def markdown(report: dict) -> str:
    lines = [
        f"Backbone `{report['backbone']}`, batch {report['batch']}; training: {report['steps']} timed steps "
        f"after {report['warmup']} warm-up, round-robin over the methods; inference: {report['infer_rounds']} "
        f"interleaved rounds, fastest of {report['infer_repeat']} forwards each. Time ratios are medians "
        "of per-round ratios [inter-quartile range]; FLOP ratios count matmuls/convolutions exactly.",
        "",
        "| method | adapter params | trainable params | step time / full | step memory / full | step FLOPs / full "
        "| merged inference / base | unmerged inference / base | merged FLOPs / base | step time (ms) "
        "| step memory (MiB) | planner's estimate (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    flagged = False
    for r in report["results"]:
        merged = _with_spread(r.get("merged_over_base"), r.get("merged_over_base_spread"))
        merged_flops = _ratio(r.get("merged_flops_over_base"))
        if r.get("fully_mergeable") is False:
            merged += " †"
            merged_flops += " †"
            flagged = True
        lines.append(
            f"| {r['label']} | {r['adapter_params']:,} | {r['trainable_params']:,} "
            f"| {_with_spread(r['time_over_full'], r.get('time_over_full_spread'))} "
            f"| {_ratio(r['memory_over_full'])} | {_ratio(r['flops_over_full'])} | {merged} "
            f"| {_ratio(r.get('unmerged_over_base'))} | {merged_flops} "
            f"| {r['step_s'] * 1e3:.0f} | {r['step_bytes'] / MIB:.1f} "
            f"| {r.get('planned_step_bytes', 0) / MIB:.1f} |"
        )
    lines.append("")
    if flagged:
        lines += [
            "† not fully mergeable (`handle.fully_mergeable` is False): the AdaptFormer branch "
            "(LayerNorm, ReLU) cannot be folded into SAM's weights, so the merged model still runs it.",
            "",
        ]
    lines += [
        f"Command: `{report['command']}`  ",
        f"Device: {report['device']}; torch {report['torch']}; {report['threads']} intra-op thread(s) "
        f"(torch.set_num_threads), 1 inter-op thread; times are {report['clock']}.  ",
        f"Step memory: {report['mem_how']}, over {report['mem_steps']} steps, one fresh process per method"
        f"{' (MALLOC_MMAP_THRESHOLD_=65536)' if report['device'].startswith('cpu') else ''}. "
        "Step FLOPs: forward + backward (the optimizer update is element-wise and not counted). "
        f"The run took {report['wall_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="What each number measures: this file's docstring and docs/benchmarks.md.",
    )
    p.add_argument(
        "--backbone",
        default="tiny-sam",
        choices=[n for n in BACKBONES if family_of(n) == "sam"],
        help="a SAM backbone; the full-size ones are random-init (no download) (default tiny-sam)",
    )
    p.add_argument("--batch", type=int, default=None, help="default 2; 1 for full-size SAM on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 20; 2 full-size on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 3; 1 full-size on CPU)")
    p.add_argument(
        "--infer-rounds", type=int, default=None, help="interleaved inference rounds (default 21; 3 full-size on CPU)"
    )
    p.add_argument(
        "--infer-repeat", type=int, default=2, help="forwards per inference measurement, the fastest kept (default 2)"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--checkpointing", action="store_true", help="activation checkpointing of the encoder blocks in every method"
    )
    p.add_argument(
        "--checkpointing-cost",
        action="store_true",
        help="only time each method with and without activation checkpointing, in one process, round-robin",
    )
    p.add_argument(
        "--memory-cap",
        type=float,
        help="CUDA: cap this process's GPU memory at this many GiB (torch.cuda.set_per_process_memory_fraction)",
    )
    p.add_argument(
        "--clock",
        choices=["auto", "cpu", "wall"],
        default="auto",
        help="what a time is: 'cpu' = this process's CPU time (time.process_time), 'wall' = "
        "time.perf_counter; auto: cpu on --device cpu with one thread, else wall",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads in this process and the memory subprocesses "
        "(default: 1 on CPU, torch's own default on CUDA)",
    )
    p.add_argument(
        "--methods",
        default=",".join(BY_KEY),
        help=f"comma-separated subset of: {', '.join(BY_KEY)} (ratios need `full`)",
    )
    p.add_argument("--out", help="append the Markdown table to this file")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of Markdown")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: memory of one method, in a fresh process
    p.add_argument("--mem-steps", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    small = args.backbone.startswith("tiny-") or args.device == "cuda"
    args.batch = args.batch if args.batch is not None else (2 if small else 1)
    args.steps = args.steps if args.steps is not None else (20 if small else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if small else 1)
    args.infer_rounds = args.infer_rounds if args.infer_rounds is not None else (21 if small else 3)
    # One thread by default on CPU: on a shared machine, a second OpenMP thread that loses its core
    # to another process stalls every parallel region (steps measured 10-50x slower, with a huge
    # spread, when one busy process ran beside 2 threads on 2 cores); one thread only slows down.
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else torch.get_num_threads()
    if args.clock == "auto":
        args.clock = "cpu" if args.device == "cpu" and args.threads == 1 else "wall"
    if args.clock == "cpu" and args.device == "cuda":
        p.error("--clock cpu does not see GPU time; use --clock wall with --device cuda")
    # CPU time, not wall time, by default on CPU: on a shared machine the time slices other
    # processes take would otherwise land in whichever measurement they interrupt. (It still
    # counts cache interference, so rounds are interleaved as well.)
    args.clock_fn = time.process_time if args.clock == "cpu" else time.perf_counter
    if min(args.steps, args.infer_rounds, args.infer_repeat) < 1 or args.warmup < 0:
        p.error("--steps, --infer-rounds and --infer-repeat must be >= 1, --warmup >= 0")
    keys = [k.strip() for k in args.methods.split(",") if k.strip()]
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown:
        p.error(f"unknown method key(s) {unknown}; choose from {', '.join(BY_KEY)}")
    args.keys = keys
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    if args.memory_cap and device.type == "cuda":  # e.g. a 24 GB card on a larger one
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap * 2**30 / total), device)

    if args.one:  # the memory subprocess
        print(json.dumps(measure_memory_here(args.one, args, device)))
        return 0

    log = (lambda *_: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.checkpointing_cost:
        md = checkpointing_cost(args, device, log)
        print(md)
        if args.out:
            with open(args.out, "a") as f:
                f.write(md + "\n")
        return 0
    started = time.perf_counter()
    # Memory first, each method in its own process, before this process holds any model.
    memory = {}
    for k in args.keys:
        log(f"memory: {k}")
        memory[k] = measure_memory(k, args)
    log("training step time (round-robin over all methods)")
    train_times = time_training(args.keys, args, device, log)
    inference = {}
    base = build_backbone(args.backbone, seed=0)
    base.model.to(device).eval()
    for k in args.keys:
        log(f"inference: {k}")
        inference[k] = time_inference(k, base, args, device)

    step_s = {k: statistics.median(v) for k, v in train_times.items()}
    full_times = train_times.get("full")

    def over_full(k: str) -> float | None:  # paired with full's step of the same round
        return statistics.median(a / b for a, b in zip(train_times[k], full_times)) if full_times else None

    full_mem = memory["full"]["step_bytes"] if "full" in memory else None
    results = []
    for k in args.keys:
        m = memory[k]
        results.append(
            {
                "key": k,
                "label": BY_KEY[k][1],
                "method": BY_KEY[k][2],
                "options": BY_KEY[k][3],
                "adapter_params": m["adapter_params"],
                "trainable_params": m["trainable_params"],
                "step_s": step_s[k],
                "step_times_s": train_times[k],
                "time_over_full": over_full(k),
                "time_over_full_spread": _spread(train_times[k], full_times) if full_times else None,
                "step_bytes": m["step_bytes"],
                "planned_step_bytes": m.get("planned_step_bytes"),
                "peak_total_bytes": m["peak_total_bytes"],
                "memory_over_full": m["step_bytes"] / full_mem if full_mem else None,
                "step_flops": m["step_flops"],
                "flops_over_full": m["step_flops"] / memory["full"]["step_flops"] if "full" in memory else None,
                **inference[k],
            }
        )
    any_mem = next(iter(memory.values()))
    report = {
        "command": command_line(__file__),
        "device": device_description(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "backbone": args.backbone,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "infer_rounds": args.infer_rounds,
        "infer_repeat": args.infer_repeat,
        "clock": "process CPU time (time.process_time)" if args.clock == "cpu" else "wall time (time.perf_counter)",
        "mem_how": any_mem["mem_how"],
        "mem_steps": any_mem["mem_steps"],
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    md = markdown(report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(md)
    if args.out:
        with open(args.out, "a") as f:
            f.write(md + "\n")
    log(f"done in {report['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
