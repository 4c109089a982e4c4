#!/usr/bin/env python
"""SAM 3 concepts on tiny-sam3: does training with hard negatives keep the model able to say no?

    .venv/bin/python bench/concept_negatives.py [--seeds 5] [--steps N] [--train 32] [--heldout 24]
                                               [--domains source] [--method full] [--lr 3e-3]
                                               [--out FILE.md] [--json]
    .venv/bin/python bench/concept_negatives.py --step-cost [--rounds 20] [--out FILE.md] [--json]

Negatives part (the default). For each domain and seed, the concept task (adapt/tasks/concept.py)
trains tiny-sam3 twice with the trainer the CLI uses: with hard negatives (absent-class phrases
whose only target is presence 0, `negatives` per image) and without; the same seed, so the same
random initialisation, training images, augmentation and steps, only the pairs differ. A seed
draws its own training images (synthetic class maps, 112 px; the vocabulary is the 14 classes of
adapt.data.synthetic, of which the shape domains draw the 12 shapes); the held-out images are one
fixed set (image seed 10000) for every run. Scored on the held-out set,
frozen (the seed's random model) and adapted, by the task's own evaluation:
- absent_fp: of the prompts for classes absent from an image, the share that find an instance
  scoring above 0.5 (lower is better);
- present_iou: IoU of a present class's found instances with its pixels;
- miou: of the label map, the classes competing on one scale.
Each figure is the mean over seeds with its 95% Student's t interval, and "with - without" is the
paired difference over seeds (adapt.metrics.paired_difference), * where its interval excludes 0.

Those scores count instances above a threshold of 0.5, which a random-init model trained for
minutes rarely reaches: SAM 3's score target for a matched query is prob^0.25 x IoU^0.75, whose
fixed point is the box IoU, so a query only scores above 0.5 once its boxes overlap their targets
by more than half. So the part also reads the scores behind the threshold, on the same held-out
prompts: the mean presence probability of absent-class and present-class prompts, the mean best
instance score (query x presence) of each, and two AUROCs of the best score (0.5: it cannot tell
present from absent): pooled over every prompt, which a phrase prior alone can win (the
thin-structure classes never appear on the shape domains, so "curve" is always absent), and
within a class (its images against the images without it, averaged over the classes), which only
a model that looks at the image can.

tiny-sam3 is random-init (no weights exist at this size): the frozen scores are a random model's,
and what the figures can show is the mechanism, not what SAM 3's real weights would do.

The default method is `full` at lr 3e-3 (the heads too), 500 steps: the setting that moved the
held-out scores at all within a CPU budget. Tried first on one seed (--seeds 1 --steps 600
--heldout 12): `decoder` at lr 3e-2 and `lora` at 1e-2 left the best score no better than chance
at telling present classes from absent ones in either arm (pooled AUROC 0.48-0.50), `full` at 3e-3
reached 0.54 with hard negatives; `decoder` at 1e-2 for 3,000 steps kept the label map all
background. No setting tried (up to 4,000 steps of `full`) found an instance above 0.5 on the
held-out images.

Step-cost part (--step-cost): one training step of the concept task (its matched loss on a batch
of two synthetic 112 px class maps, hard negatives on, the same pairs every step) for every SAM
method configuration the benchmarks compare, as bench/step_cost.py measures the interactive path:
the methods stepped round-robin in one process (process CPU time, one thread; the ratio to `full`
is the median of per-round ratios), memory as the rise of the resident set over the steps in a
fresh process per method (benchkit.measure_rise, MALLOC_MMAP_THRESHOLD_=65536).

Run every training process with OMP_NUM_THREADS=1 on a shared CPU (this script sets one thread).
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

import numpy as np
import torch

import benchkit
from adapt.data.synthetic import CLASSES, DOMAINS, make_dataset
from adapt.metrics import format_interval, mean_interval, paired_difference
from adapt.train import TrainConfig, train

BACKBONE, SIZE = "tiny-sam3", 112
HELDOUT_SEED = 10000
ARMS = {True: "with hard negatives", False: "without"}
SCORES = ("absent_fp", "present_iou", "miou")  # the task's own (held-out, at its thresholds)
# behind the threshold (see score_reads)
READS = ("presence_absent", "presence_present", "top_absent", "top_present", "auroc", "auroc_class")


def samples(domain: str, n: int, seed: int) -> list:
    """n synthetic class maps (ids into CLASSES) at tiny-sam3's input size."""
    return [SimpleNamespace(image=s.image, mask=s.semantic) for s in make_dataset(domain, n=n, size=SIZE, seed=seed)]


# --- behind the threshold ---------------------------------------------------------------------------


def auroc(positive, negative) -> float:
    """P(a positive's score > a negative's), ties counting half (Mann-Whitney); nan without both."""
    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    return float(greater + 0.5 * (pos[:, None] == neg[None, :]).mean())


@torch.no_grad()
def score_reads(task, heldout, device="cpu") -> dict:
    """The presence probability and the best instance score (query x presence) of every named class
    on every held-out image, split by whether the class is in the image: their means; AUROC of the
    best score between present and absent prompts, pooled over the classes ("auroc") and within
    each class ("auroc_class": for each class, its images against the images without it, the mean
    over classes seen in some held-out images and missing from others). The pooled AUROC rewards
    a phrase prior alone (a class no training image shows, e.g. the thin-structure classes on
    shape domains, is always absent); the within-class one only a model that looks at the image."""
    vocab = task.vocabulary()
    named = [c for c in vocab if c != "background"]
    ids = [vocab.index(c) for c in named]  # each class's id in the masks
    presence, top, here = [], [], []  # (images, classes) each
    for s in heldout:
        x = task.backbone.normalise(s.image)[None].to(device)
        out = task.backbone.ground(x, named, [0] * len(named), list(range(len(named))))
        p = out["presence"].float().sigmoid()
        presence.append(p.cpu().numpy())
        top.append((out["pred_logits"].float().sigmoid() * p[:, None]).amax(1).cpu().numpy())
        here.append(np.isin(ids, np.unique(s.mask)))
    presence, top, here = np.array(presence), np.array(top), np.array(here)
    within = [
        auroc(top[here[:, k], k], top[~here[:, k], k]) for k in range(len(ids)) if 0 < here[:, k].sum() < len(here)
    ]
    return {
        "presence_absent": float(presence[~here].mean()),
        "presence_present": float(presence[here].mean()),
        "top_absent": float(top[~here].mean()),
        "top_present": float(top[here].mean()),
        "auroc": auroc(top[here], top[~here]),
        "auroc_class": float(np.mean(within)) if within else float("nan"),
    }


# --- one run ---------------------------------------------------------------------------------------


def run_one(domain: str, seed: int, hard: bool, args, heldout) -> dict:
    """Train one arm on one seed; the task's held-out scores and the reads behind them, frozen and
    adapted."""
    cfg = TrainConfig(
        task="concept", backbone=BACKBONE, checkpoint="random", method=args.method, steps=args.steps,
        batch_size=args.batch, lr=args.lr, head_lr=args.head_lr, seed=seed, validation=0.0, eval_every=0,
        device="cpu", task_options={"classes": list(CLASSES), "hard_negatives": hard, "negatives": args.negatives},
    )  # fmt: skip
    reads = {}

    def on_eval(e) -> None:  # the frozen model before the first step, the adapted one after the last
        if e.final:
            reads[e.model] = score_reads(e.run.task, e.samples, e.run.device)

    started = time.time()
    summary = train(cfg, samples(domain, args.train, seed), heldout, on_eval=on_eval)
    row = {"domain": domain, "seed": seed, "hard_negatives": hard, "seconds": round(time.time() - started, 1)}
    for model in ("frozen", "adapted"):
        row[model] = {k: float(summary[model][k]) for k in SCORES} | reads[model]
    return row


# --- the report ------------------------------------------------------------------------------------


def _by_seed(rows, domain, hard, model, key) -> dict:
    return {r["seed"]: r[model][key] for r in rows if r["domain"] == domain and r["hard_negatives"] == hard}


def _interval(values) -> str:
    return format_interval(*mean_interval(values))


def _paired(rows, domain, model, key) -> str:
    mean, half, n = paired_difference(
        _by_seed(rows, domain, True, model, key), _by_seed(rows, domain, False, model, key)
    )
    return "n/a" if n < 2 else format_interval(mean, half, signed=True)


def table(rows, domain: str, keys, names) -> list[str]:
    """Frozen, then each arm adapted, then the paired difference (with - without) of the adapted
    figures, per score."""
    lines = ["| model | " + " | ".join(names[k] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    frozen = [_interval(_by_seed(rows, domain, True, "frozen", k).values()) for k in keys]
    lines.append("| frozen (random init) | " + " | ".join(frozen) + " |")
    for hard, arm in ARMS.items():
        cells = [_interval(_by_seed(rows, domain, hard, "adapted", k).values()) for k in keys]
        lines.append(f"| adapted, {arm} | " + " | ".join(cells) + " |")
    lines.append("| with - without (paired) | " + " | ".join(_paired(rows, domain, "adapted", k) for k in keys) + " |")
    return lines


NAMES = {
    "absent_fp": "absent_fp ↓",
    "present_iou": "present_iou",
    "miou": "mIoU",
    "presence_absent": "presence, absent ↓",
    "presence_present": "presence, present",
    "top_absent": "best score, absent ↓",
    "top_present": "best score, present",
    "auroc": "AUROC present vs absent",
    "auroc_class": "AUROC within a class",
}


def markdown(rows, args, wall: float) -> str:
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        f"Backbone `{BACKBONE}` (random init, {SIZE} px), method `{args.method}` (lr {args.lr:g}, head lr "
        f"{args.head_lr:g}), {args.steps} steps at batch {args.batch}, {args.negatives} hard negatives per image "
        f'in the "with" arm; {len(seeds)} seeds ({", ".join(map(str, seeds))}), {args.train} training images '
        f"per seed, {args.heldout} held-out images (image seed {HELDOUT_SEED}). Mean over seeds [95% t interval]; "
        "the last row is the paired difference of the adapted figures, * where its interval excludes 0. "
        "↓: lower is better.",
    ]
    for domain in args.domains:
        lines += ["", f"**{domain}**: the task's scores (held-out, instances above 0.5)", ""]
        lines += table(rows, domain, SCORES, NAMES)
        lines += ["", f"**{domain}**: behind the threshold (held-out prompts of the 14 classes)", ""]
        lines += table(rows, domain, READS, NAMES)
    runs = [r["seconds"] for r in rows]
    lines += [
        "",
        f"Command: `OMP_NUM_THREADS=1 {benchkit.command_line(__file__)}`  ",
        f"Device: {benchkit.device_description(torch.device('cpu'))}; torch {torch.__version__}; 1 thread. "
        f"{len(rows)} runs, {statistics.median(runs):.0f} s each (median, training and both evaluations); "
        f"the whole run took {wall:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def negatives_part(args) -> tuple[str, dict]:
    started, rows = time.time(), []
    for domain in args.domains:
        heldout = samples(domain, args.heldout, HELDOUT_SEED)
        for seed in range(args.seeds):
            for hard in ARMS:
                rows.append(run_one(domain, seed, hard, args, heldout))
                r = rows[-1]
                print(
                    f"  {domain} seed {seed} {ARMS[hard]}: "
                    + ", ".join(f"{k} {r['adapted'][k]:.3f}" for k in SCORES + READS)
                    + f" ({r['seconds']:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    wall = time.time() - started
    report = {
        "command": benchkit.command_line(__file__),
        "settings": _settings(args),
        "wall_s": round(wall),
        "runs": rows,
    }
    return markdown(rows, args, wall), report


def _settings(args) -> dict:
    keys = ("method", "lr", "head_lr", "steps", "batch", "negatives", "seeds", "train", "heldout", "domains")
    return {"backbone": BACKBONE, "size": SIZE, **{k: getattr(args, k) for k in keys}}


# --- step cost -------------------------------------------------------------------------------------


class ConceptStep:
    """One training step of the concept task on a fresh tiny-sam3 with `method` attached: AdamW over
    the method's groups (lr 1e-4 x lr_scale, as benchkit.Trainer), the task's loss on a fixed batch
    of two class maps with the same pairs every step (hard negatives on)."""

    def __init__(self, key: str, device=torch.device("cpu")):
        from step_cost import BY_KEY

        from adapt.backbones import build_backbone
        from adapt.methods import attach
        from adapt.tasks import make_task

        _, self.label, method, options = BY_KEY[key]
        self.key, self.device, self.times = key, device, []
        backbone = build_backbone(BACKBONE, seed=0)
        self.task = make_task("concept", backbone, classes=list(CLASSES))  # the concept path, before attaching
        self.handle = attach(backbone, method, **options)
        backbone.model.to(device).train()
        self.batch = [self.task.prepare(s.image, s.mask) for s in samples("source", 2, 0)]
        groups = [{"params": g.params, "lr": benchkit.LR * g.lr_scale} for g in self.handle.trainable_groups()]
        self.opt = torch.optim.AdamW(groups, lr=benchkit.LR)
        with torch.no_grad():  # the lazy parts (tokenizer, positional caches) before any measurement,
            self.loss()  # as benchkit.Trainer's forward for its target

    def loss(self) -> torch.Tensor:
        return self.task.loss(self.batch, np.random.default_rng(0), self.device)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss().backward()
        self.opt.step()


def _cost_child(key: str, args) -> dict:
    """In a fresh process (MALLOC_MMAP_THRESHOLD_ fixed): the rise of memory over 3 steps, the counts."""
    t = ConceptStep(key)
    rise = benchkit.measure_rise(t, 3, torch.device("cpu"))
    counts = t.handle.count()
    flops = benchkit.count_flops(lambda: t.loss().backward())
    return {**rise, "adapter_params": counts["adapter"], "trainable_params": counts["trainable"], "step_flops": flops}


def step_cost_part(args) -> tuple[str, dict]:
    from step_cost import BY_KEY, time_round_robin

    started = time.time()
    keys = [k.strip() for k in args.cost_methods.split(",") if k.strip()]
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown or "full" not in keys:
        raise SystemExit(f"--cost-methods: need `full` and keys of {', '.join(BY_KEY)}; unknown {unknown}")
    memory = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    for k in keys:
        proc = subprocess.run([sys.executable, __file__, "--cost-child", k], env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"memory of {k} failed:\n{proc.stderr[-3000:]}")
        memory[k] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  memory {k}: {memory[k]['step_bytes'] / 2**20:.1f} MiB", file=sys.stderr, flush=True)
    clock = SimpleNamespace(warmup=args.warmup, steps=args.rounds, clock_fn=time.process_time)
    times = time_round_robin([ConceptStep(k) for k in keys], clock, torch.device("cpu"), lambda m: None)
    full = times["full"]
    results = []
    for k in keys:
        ratios = [a / b for a, b in zip(times[k], full)]
        m = memory[k]
        results.append({
            "key": k, "label": BY_KEY[k][1], "step_s": statistics.median(times[k]), "step_times_s": times[k],
            "time_over_full": statistics.median(ratios), "time_over_full_range": [min(ratios), max(ratios)],
            "memory_over_full": m["step_bytes"] / memory["full"]["step_bytes"],
            "flops_over_full": m["step_flops"] / memory["full"]["step_flops"], **m,
        })  # fmt: skip
    wall = time.time() - started
    lines = [
        f"Backbone `{BACKBONE}` on the concept path, the task's loss on a batch of 2 synthetic {SIZE} px class maps "
        f"(hard negatives on); {args.rounds} timed rounds after {args.warmup} warm-up, round-robin over the methods. "
        "Time: median of per-round ratios to `full` [range over rounds].",
        "",
        "| method | adapter params | trainable params | step time / full | step memory / full "
        "| step FLOPs / full | step time (ms) | step memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lo, hi = r["time_over_full_range"]
        lines.append(
            f"| {r['label']} | {r['adapter_params']:,} | {r['trainable_params']:,} "
            f"| {r['time_over_full']:.2f} [{lo:.2f}, {hi:.2f}] | {r['memory_over_full']:.2f} "
            f"| {r['flops_over_full']:.2f} | {r['step_s'] * 1e3:.0f} | {r['step_bytes'] / 2**20:.1f} |"
        )
    lines += [
        "",
        f"Command: `OMP_NUM_THREADS=1 {benchkit.command_line(__file__)}`  ",
        f"Device: {benchkit.device_description(torch.device('cpu'))}; torch {torch.__version__}; 1 thread; times "
        f"are process CPU time. Step memory: {results[0]['mem_how']}, over 3 steps, one fresh process per method "
        f"(MALLOC_MMAP_THRESHOLD_=65536). Step FLOPs: forward + backward. The run took {wall:.0f} s.",
        "",
    ]
    report = {"command": benchkit.command_line(__file__), "wall_s": round(wall), "results": results}
    return "\n".join(lines), report


# --- main ------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (each: its own init and training images)")
    p.add_argument("--steps", type=int, default=500, help="training steps per run")
    p.add_argument("--train", type=int, default=32, help="training images per seed")
    p.add_argument("--heldout", type=int, default=24, help="held-out images (one fixed set)")
    p.add_argument("--domains", default="source", help=f"comma-separated, of {', '.join(DOMAINS)}")
    p.add_argument("--method", default="full", help="the adaptation method of every run (see the docstring)")
    p.add_argument("--lr", type=float, default=3e-3, help="the adapter's learning rate")
    p.add_argument("--head-lr", type=float, default=None, help="the heads' learning rate (default: --lr)")
    p.add_argument("--batch", type=int, default=2, help="images per step")
    p.add_argument("--negatives", type=int, default=2, help="hard negatives per image in the 'with' arm")
    p.add_argument("--step-cost", action="store_true", help="the step-cost part instead of the negatives part")
    p.add_argument("--cost-methods", default=None, help="step cost: comma-separated keys of bench/step_cost.py")
    p.add_argument("--rounds", type=int, default=20, help="step cost: timed rounds")
    p.add_argument("--warmup", type=int, default=3, help="step cost: warm-up rounds")
    p.add_argument("--out", help="append the Markdown to this file")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of Markdown")
    p.add_argument("--cost-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    benchkit.set_threads(1)
    if args.cost_child:
        print(json.dumps(_cost_child(args.cost_child, args)))
        return 0
    args.domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    if unknown := [d for d in args.domains if d not in DOMAINS]:
        p.error(f"unknown domains {unknown}; choose from {', '.join(DOMAINS)}")
    args.head_lr = args.lr if args.head_lr is None else args.head_lr
    if args.step_cost:
        from step_cost import BY_KEY

        args.cost_methods = args.cost_methods or ",".join(BY_KEY)
        md, report = step_cost_part(args)
    else:
        md, report = negatives_part(args)
    print(json.dumps(report, indent=2) if args.json else md)
    if args.out:
        with open(args.out, "a") as f:
            f.write(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
