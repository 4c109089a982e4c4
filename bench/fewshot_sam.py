"""Few-shot SAM adaptation benchmark on synthetic target domains unlike tiny-sam's pretraining.

    python bench/fewshot_sam.py --quick            # < 5 minutes on 2 CPU cores
    python bench/fewshot_sam.py                    # every domain, 5/10/20 shots, every method
    python bench/fewshot_sam.py --seeds 0 1 2 3 4 --jobs 2 --threads 1 --tuned docs/fewshot_rates.json \
        --record docs/evidence/fewshot_sam.json --plot docs/img/fewshot-params-dice.png --out docs/fewshot_sam.md
                                                   # the documented run (51 min on 2 cores)

For each target domain, shot count and method: train on `shots` generated images with the same
trainer the CLI uses (bundled tiny-sam, box prompts with jitter), then score the fixed held-out set
(the same 24 images for every run of a domain) with exact boxes. Reported: held-out Dice and IoU of
the frozen model and the adapted one, adapter parameters (adapter alone, and with the trained mask
decoder), the adapter file size and the training wall time.

With several --seeds (each seed draws its own training images and initialises its own run; the
held-out set stays the same), every figure is the mean over seeds with a 95% interval
(Student's t over the seeds), and every method is compared with decoder-only training, the
reference an adapter must beat, by a paired test on the same seeds and images: the mean
difference with its 95% interval, marked * where the interval excludes 0. --jobs runs cells in
parallel processes (one thread each by default).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from adapt.data import Dataset
from adapt.data.synthetic import make_dataset
from adapt.methods import configurations
from adapt.metrics import format_interval, mean_interval, paired_difference
from adapt.pipeline import train_adapter
from adapt.train import TrainConfig

DOMAINS = ["camouflage", "thin", "grayscale-noise"]
# every SAM method configuration the benchmarks compare (adapt.methods.configurations), decoder-only
# first (the reference every adapter must beat); `frozen` is the "frozen" column of every row already
METHODS = sorted(
    ((m, o) for m, _, o in configurations("sam", compared=True) if m != "frozen"), key=lambda c: c[0] != "decoder"
)


class Sample:
    def __init__(self, scene, i):
        self.image = scene.image
        self.mask = np.any(np.stack(scene.masks), axis=0).astype(np.uint8)  # foreground = every object
        self.stem = f"{scene.domain}-{i}"


def samples(domain, n, seed, size):
    return [Sample(s, i) for i, s in enumerate(make_dataset(domain, n=n, size=size, seed=seed))]


def label(method, options):
    return method + "".join(f" {k}={v}" for k, v in options.items())


# --sweep: the one rate each method is tuned on (the adapter's lr; the backbone's for `full`, whose
# every weight at an adapter's lr would be a different experiment; the decoder's for decoder-only)
SWEEP_GRID = {"decoder": ("head_lr", [1e-4, 3e-4, 1e-3]), "full": ("lr", [3e-5, 1e-4, 3e-4])}
ADAPTER_GRID = ("lr", [1e-3, 3e-3, 1e-2])
VALIDATION_SEED, HELDOUT_SEED = 20_000, 10_000  # image streams: neither overlaps the other or any training seed


def rates(method, options, args) -> dict:
    """{"lr", "head_lr"} for one method: the command line's, or the sweep's choice with --tuned."""
    out = {"lr": args.full_lr if method == "full" else args.lr, "head_lr": args.head_lr}
    out.update(args.tuned.get(label(method, options), {}) if args.tuned else {})
    return out


def run_one(domain, shots, method, options, args, heldout, seed=None, override=None):
    seed = args.seed if seed is None else seed
    lr = {**rates(method, options, args), **(override or {})}
    cfg = TrainConfig(
        validation=0.0,  # every shot trains (the figures recorded in docs/benchmarks.md)
        task="dichotomous",
        backbone="tiny-sam",
        checkpoint=args.checkpoint,
        method=method,
        method_options=options,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=lr["lr"],
        head_lr=lr["head_lr"],
        warmup=max(1, args.steps // 10),
        seed=seed,
        device=args.device,
        checkpoint_every=0,
    )
    train_set = samples(domain, shots, seed=seed + shots, size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        result = train_adapter(cfg, Dataset.of(train_set), tmp, holdout=Dataset.of(heldout))
        seconds = time.time() - start
        size = (result["adapter"] / "adapter_model.safetensors").stat().st_size
    counts = result["counts"]
    return {
        "domain": domain,
        "shots": shots,
        "seed": seed,
        "method": label(method, options),
        "frozen_dice": result["frozen"]["dice"],
        "dice": result["adapted"]["dice"],
        "frozen_iou": result["frozen"]["iou"],
        "iou": result["adapted"]["iou"],
        "adapter": counts["adapter"],
        "trainable": counts["trainable"],
        "file_bytes": size,
        "seconds": round(seconds, 1),
        "lr": lr["lr"],
        "head_lr": lr["head_lr"],
    }


def table(rows) -> str:
    out = [
        "| domain | shots | method | held-out Dice (frozen -> adapted) | IoU (frozen -> adapted) | adapter params "
        "| with decoder | file | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['domain']} | {r['shots']} | {r['method']} | {r['frozen_dice']:.3f} -> **{r['dice']:.3f}** "
            f"| {r['frozen_iou']:.3f} -> {r['iou']:.3f} | {r['adapter']:,} | {r['trainable']:,} "
            f"| {r['file_bytes'] / 1024:.0f} KiB | {r['seconds']:.0f} |"
        )
    return "\n".join(out)


def summary(rows) -> str:
    """Mean adapted Dice per method over every domain and shot count."""
    by = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r["dice"])
    frozen = np.mean([r["frozen_dice"] for r in rows])
    lines = ["| method | mean held-out Dice | adapter params |", "|---|---|---|", f"| frozen | {frozen:.3f} | 0 |"]
    params = {r["method"]: r["adapter"] for r in rows}
    for m, v in sorted(by.items(), key=lambda kv: -np.mean(kv[1])):
        lines.append(f"| {m} | {np.mean(v):.3f} | {params[m]:,} |")
    return "\n".join(lines)


def _by_seed(rows, method, cells=None) -> dict:
    """{seed: mean Dice of `method` over the cells (domain, shots) given (default: all)}."""
    out = {}
    for r in rows:
        if r["method"] == method and (cells is None or (r["domain"], r["shots"]) in cells):
            out.setdefault(r["seed"], []).append(r["dice"])
    return {s: float(np.mean(v)) for s, v in out.items()}


def compare(rows, method, reference, cells=None) -> str:
    """'+0.012 [-0.004, 0.028]' (mean paired difference over seeds, 95% interval; * excludes 0)."""
    m, h, n = paired_difference(_by_seed(rows, method, cells), _by_seed(rows, reference, cells))
    return "n/a" if n < 2 else format_interval(m, h, signed=True)


def seeded_summary(rows, reference="decoder") -> str:
    """Per method: mean Dice over every cell, the mean and interval taken over seeds, and the paired
    difference to `reference`."""
    methods = sorted({r["method"] for r in rows}, key=lambda m: -np.mean(list(_by_seed(rows, m).values())))
    params = {r["method"]: r["adapter"] for r in rows}
    frozen = np.mean([r["frozen_dice"] for r in rows])
    lines = [
        f"| method | mean held-out Dice [95% interval over seeds] | vs {reference} (paired) | adapter params |",
        "|---|---|---|---|",
        f"| frozen | {frozen:.3f} | | 0 |",
    ]
    for m in methods:
        mean, h = mean_interval(_by_seed(rows, m).values())
        vs = "reference" if m == reference else compare(rows, m, reference)
        lines.append(f"| {m} | {format_interval(mean, h)} | {vs} | {params[m]:,} |")
    return "\n".join(lines)


def evidence(rows, head: str, reference="decoder") -> dict:
    """What the studio shows beside a method (adapt.evidence): per method, mean held-out Dice over
    every cell with its interval over seeds and the paired difference to `reference`, overall and
    per domain."""
    domains = sorted({r["domain"] for r in rows}, key=lambda d: DOMAINS.index(d) if d in DOMAINS else 99)
    cells = {d: {(r["domain"], r["shots"]) for r in rows if r["domain"] == d} for d in domains}

    def figures(method, where=None):
        out = {"dice": list(mean_interval(_by_seed(rows, method, where).values()))}
        if method != reference:
            out["vs_reference"] = list(
                paired_difference(_by_seed(rows, method, where), _by_seed(rows, reference, where))[:2]
            )
        return out

    methods = {r["method"]: r["adapter"] for r in rows}
    return {
        "benchmark": "bench/fewshot_sam.py",
        "setting": head.strip(),
        "backbone": "tiny-sam",
        "metric": "held-out Dice",
        "reference": reference,
        "shots": sorted({r["shots"] for r in rows}),
        "seeds": sorted({r["seed"] for r in rows}),
        "frozen": float(np.mean([r["frozen_dice"] for r in rows])),
        "methods": {
            m: {
                "name": m.split()[0],
                "options": dict(o.split("=", 1) for o in m.split()[1:]),
                "params": p,
                **figures(m),
                "per_domain": {d: figures(m, cells[d]) for d in domains},
            }
            for m, p in methods.items()
        },
    }


def seeded_table(rows, reference="decoder") -> str:
    lines = [
        f"| domain | shots | method | held-out Dice [95% interval] | vs {reference} (paired) |",
        "|---|---|---|---|---|",
    ]
    cells = sorted(
        {(r["domain"], r["shots"]) for r in rows}, key=lambda c: (DOMAINS.index(c[0]) if c[0] in DOMAINS else 99, c[1])
    )
    for cell in cells:
        frozen = np.mean([r["frozen_dice"] for r in rows if (r["domain"], r["shots"]) == cell])
        lines.append(f"| {cell[0]} | {cell[1]} | frozen | {frozen:.3f} | |")
        methods = sorted({r["method"] for r in rows if (r["domain"], r["shots"]) == cell})
        for m in sorted(methods, key=lambda m: m != reference):
            mean, h = mean_interval(_by_seed(rows, m, {cell}).values())
            vs = "reference" if m == reference else compare(rows, m, reference, {cell})
            lines.append(f"| {cell[0]} | {cell[1]} | {m} | {format_interval(mean, h)} | {vs} |")
    return "\n".join(lines)


# the comparisons claims are made about: PARSER against LoRA and full fine-tuning, COBOT against its base
PAIRS = [
    ("parser", "lora"),
    ("parser", "full"),
    ("parser", "cobot-lora"),
    ("cobot-lora", "lora"),
    ("cobot-adaptformer", "adaptformer"),
    ("parser scope=conv", "parser"),
]


def pairs_table(rows) -> str:
    """The comparisons the project's claims rest on, paired over seeds: over every cell, then per domain."""
    present = {r["method"] for r in rows}
    domains = sorted({r["domain"] for r in rows}, key=lambda d: DOMAINS.index(d) if d in DOMAINS else 99)
    lines = ["| comparison | all cells | " + " | ".join(domains) + " |", "|---|---|" + "---|" * len(domains)]
    cells = {d: {(r["domain"], r["shots"]) for r in rows if r["domain"] == d} for d in domains}
    for a, b in PAIRS:
        if a in present and b in present:
            per = [compare(rows, a, b, cells[d]) for d in domains]
            lines.append(f"| {a} - {b} | {compare(rows, a, b)} | " + " | ".join(per) + " |")
    return "\n".join(lines)


def plot(rows, path) -> None:
    """Held-out Dice against adapter parameters per method (log scale; decoder-only's 0 drawn at the
    left edge), one panel per domain, mean over seeds with its 95% interval as a bar. Drawn with
    OpenCV (already a dependency) so the benchmark needs no plotting library."""
    import cv2

    domains = sorted({r["domain"] for r in rows}, key=lambda d: DOMAINS.index(d) if d in DOMAINS else 99)
    methods = sorted({r["method"] for r in rows})
    params = {r["method"]: r["adapter"] for r in rows}
    colours = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140)]
    w, h, pad = 420, 340, 60
    canvas = np.full((h + 40, w * len(domains), 3), 255, np.uint8)
    lo_x, hi_x = 1.0, np.log10(max(params.values()) * 2)
    for k, domain in enumerate(domains):
        x0 = k * w
        stats = {}
        for m in methods:
            mean, half = mean_interval(_by_seed(rows, m, {(domain, n) for n in {r["shots"] for r in rows}}).values())
            stats[m] = (mean, 0.0 if np.isnan(half) else half)
        frozen = np.mean([r["frozen_dice"] for r in rows if r["domain"] == domain])
        ys = [v for m, (mean, half) in stats.items() for v in (mean - half, mean + half)] + [frozen]
        y_lo, y_hi = max(0.0, min(ys) - 0.05), min(1.0, max(ys) + 0.05)

        def px(p, x0=x0):
            return int(x0 + pad + (np.log10(max(p, 10)) - lo_x) / (hi_x - lo_x) * (w - pad - 20))

        def py(v, y_lo=y_lo, y_hi=y_hi):
            v = min(max(v, y_lo), y_hi)  # an interval reaching past the axis is cut at it
            return int(h - pad + 20 - (v - y_lo) / (y_hi - y_lo) * (h - pad - 20))

        cv2.rectangle(canvas, (x0 + pad, py(y_hi)), (x0 + w - 20, py(y_lo)), (0, 0, 0), 1)
        for v in np.linspace(y_lo, y_hi, 5):
            cv2.putText(canvas, f"{v:.2f}", (x0 + 8, py(v) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1)
        for e in range(1, int(hi_x) + 1):
            cv2.putText(
                canvas,
                "0" if e == 1 else f"1e{e}",
                (px(10**e) - 10, py(y_lo) + 16),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.38,
                (0, 0, 0),
                1,
            )
        cv2.line(canvas, (x0 + pad, py(frozen)), (x0 + w - 20, py(frozen)), (150, 150, 150), 1)
        cv2.putText(canvas, "frozen", (x0 + w - 70, py(frozen) - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (120, 120, 120), 1)
        for i, m in enumerate(methods):
            mean, half = stats[m]
            c, x = colours[i % len(colours)], px(params[m])
            cv2.line(canvas, (x, py(mean - half)), (x, py(mean + half)), c, 2)
            cv2.circle(canvas, (x, py(mean)), 5, c, -1)
            cv2.putText(canvas, m, (x + 7, py(mean) + 4 + 12 * (i % 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, c, 1)
        cv2.putText(canvas, domain, (x0 + pad, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1)
    note = "held-out Dice (mean over seeds, 95% interval) against adapter parameters (log scale)"
    cv2.putText(canvas, note, (10, h + 32), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    cv2.imwrite(str(path), canvas)


def _cell(job):
    torch.set_num_threads(job[4].threads)
    return run_one(*job)


def sweep_grid(method):
    return SWEEP_GRID.get(method, ADAPTER_GRID)


def sweep_result(rows, methods) -> dict:
    """Per method: mean validation Dice of every grid value (over domains, shots and seeds) and the
    value chosen, the best mean."""
    out = {}
    for method, options in methods:
        name, knob = label(method, options), sweep_grid(method)[0]
        scores = {}
        for r in rows:
            if r["method"] == name:
                scores.setdefault(r[knob], []).append(r["dice"])
        means = {f"{v:g}": round(float(np.mean(d)), 4) for v, d in sorted(scores.items())}
        best = max(scores, key=lambda v: np.mean(scores[v]))
        out[name] = {"knob": knob, "validation_dice": means, "chosen": {knob: best}}
    return out


def sweep_table(result) -> str:
    lines = ["| method | tuned rate | validation Dice per value (chosen in bold) |", "|---|---|---|"]
    for name, r in result.items():
        chosen = f"{r['chosen'][r['knob']]:g}"
        cells = ", ".join(
            f"**{v}: {d:.3f}**" if v == chosen else f"{v}: {d:.3f}" for v, d in r["validation_dice"].items()
        )
        lines.append(f"| {name} | {'decoder lr' if r['knob'] == 'head_lr' else 'lr'} | {cells} |")
    return "\n".join(lines)


def run_jobs(jobs, workers, report) -> None:
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for row in pool.map(_cell, jobs):
                report(row)
    else:
        for job in jobs:
            report(run_one(*job))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10 shots, 5 methods, fewer steps: < 5 min")
    p.add_argument("--domains", nargs="*", default=DOMAINS)
    p.add_argument("--shots", nargs="*", type=int, default=[5, 10, 20])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--head-lr", type=float, default=3e-4)
    p.add_argument("--full-lr", type=float, default=1e-4, help="lr of the backbone weights for `full`")
    p.add_argument("--heldout", type=int, default=24)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", nargs="*", type=int, help="several seeds: means, intervals and paired tests")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once, each in its own process")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint", default=None, help="tiny-sam weights (default: the bundled ones)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="write the Markdown tables to this file")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", help="with several --seeds: write Dice against parameters per domain to this PNG")
    p.add_argument(
        "--sweep",
        metavar="JSON",
        help="tune each method's learning rate instead: train at every value of its grid (seeds default 100 101, "
        "10 shots) and score validation images of each domain (never the held-out ones); write the choice to JSON",
    )
    p.add_argument("--tuned", metavar="JSON", help="each method at the rate a --sweep chose")
    p.add_argument(
        "--record", metavar="JSON", help="with several --seeds: write the figures the Train tab shows (docs/evidence/)"
    )
    args = p.parse_args(argv)
    args.tuned = (
        {k: v["chosen"] for k, v in json.loads(Path(args.tuned).read_text())["methods"].items()} if args.tuned else None
    )
    torch.set_num_threads(args.threads)
    methods = METHODS
    if args.quick:
        args.shots, args.steps, args.heldout = [10], 60, 12
        methods = [("decoder", {}), ("parser", {}), ("lora", {}), ("cobot-lora", {}), ("full", {})]
    if args.sweep:
        args.seeds, args.shots = args.seeds or [100, 101], [10] if args.shots == [5, 10, 20] else args.shots
    seeds = args.seeds or [args.seed]
    started = time.time()
    jobs = []
    for domain in args.domains:
        scored = samples(domain, args.heldout, seed=VALIDATION_SEED if args.sweep else HELDOUT_SEED, size=args.size)
        for seed in seeds:
            for shots in args.shots:
                for method, options in methods:
                    knob, grid = sweep_grid(method)
                    for override in [{knob: v} for v in grid] if args.sweep else [None]:
                        jobs.append((domain, shots, method, options, args, scored, seed, override))
    rows = []

    def report(row):
        rows.append(row)
        print(
            f"{row['domain']:<16} {row['shots']:>3} shots seed {row['seed']} {row['method']:<20} dice "
            f"{row['frozen_dice']:.3f} -> {row['dice']:.3f}  ({row['seconds']:.0f}s) [{len(rows)}/{len(jobs)}]",
            file=sys.stderr,
            flush=True,
        )

    run_jobs(jobs, args.jobs, report)
    command = "python bench/fewshot_sam.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.sweep:
        result = sweep_result(rows, methods)
        record = {
            "command": command.strip(),
            "protocol": f"{args.steps} steps, batch {args.batch_size}, shots {args.shots}, seeds {seeds}, "
            f"{args.heldout} validation images per domain (image seed {VALIDATION_SEED}; the held-out set uses "
            f"{HELDOUT_SEED}); head lr {args.head_lr:g} for every method but decoder-only",
            "seconds": round(time.time() - started),
            "methods": result,
        }
        Path(args.sweep).write_text(json.dumps(record, indent=1) + "\n")
        print(sweep_table(result))
        return 0
    head = (
        f"Command: `{command.strip()}` (torch {torch.__version__}, {args.threads} thread(s) per cell, {args.jobs} "
        f"cell(s) at once, {args.steps} steps, batch {args.batch_size}, "
        + (
            "rates: "
            + "; ".join(
                f"{label(m, o)} {rates(m, o, args)['lr']:g} / {rates(m, o, args)['head_lr']:g}" for m, o in methods
            )
            if args.tuned
            else f"lr {args.lr:g} / head {args.head_lr:g} / full {args.full_lr:g}"
        )
        + f"; seeds {', '.join(map(str, seeds))}; {time.time() - started:.0f} s)\n\n"
    )
    if len(seeds) > 1:
        text = f"{head}{seeded_summary(rows)}\n\n{pairs_table(rows)}\n\n{seeded_table(rows)}\n"
    else:
        text = f"{head}{summary(rows)}\n\n{table(rows)}\n"
    if args.out:
        Path(args.out).write_text(text)
    if args.record and len(seeds) > 1:
        Path(args.record).write_text(json.dumps(evidence(rows, head), indent=1) + "\n")
    if args.plot and len(seeds) > 1:
        plot(rows, args.plot)
    print(json.dumps(rows, indent=1) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
