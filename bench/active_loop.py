"""Does the label-the-rest loop pay off? Uncertainty-ranked correction against random, on the
synthetic target domains, with the product's own path (adapt.batch.label_images, warm start).

    python bench/active_loop.py                      # 3 domains x 5 seeds, 3 rounds (~50 min on 2 cores)
    python bench/active_loop.py --quick              # one domain, one seed, 2 rounds
    python bench/active_loop.py --throughput-only    # batch speed and memory only

The loop, per domain and seed: k = 5 labelled images; a pool of 100 unlabelled ones; a fixed
held-out set. Round 0 trains tiny-sam + PARSER on the k images (prompt-free: the whole image as the
box, which is how auto-labelling prompts). Each round then auto-labels the pool with the current
adapter, "corrects" the m = 5 images the strategy picks (a simulated user: their ground truth joins
the labelled set) and retrains warm-started from the current adapter (train --init-adapter) on the
enlarged set. Strategies: "ranked" picks the most uncertain first (scores.csv order,
adapt.uncertainty), "random" picks m at random. "Up front" labels k + rounds x m random images at
once and trains as many steps as the loop trained in all. Reported: held-out Dice per round, mean
over seeds with a 95% interval, and paired differences between strategies on the same seeds.

Throughput: images per second of label_images (batched encoder, --batch-size 8) against calling
the single-image path (task.predict_outputs + one PNG) in a loop on the same images; and the peak
resident memory of a 200-image run against a 20-image run, each in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adapt.batch import label_images, read_scores
from adapt.data import Dataset
from adapt.data.synthetic import make_dataset
from adapt.metrics import format_interval, mean_interval, paired_difference
from adapt.pipeline import inference_task, train_adapter, warm_start
from adapt.train import TrainConfig

DOMAINS = ["camouflage", "thin", "grayscale-noise"]


class Sample:
    def __init__(self, scene, stem):
        self.image = scene.image
        self.mask = np.any(np.stack(scene.masks), axis=0).astype(np.uint8)
        self.stem = stem


def samples(domain, n, seed, size, prefix):
    return [Sample(s, f"{prefix}{i:03d}") for i, s in enumerate(make_dataset(domain, n=n, size=size, seed=seed))]


def config(args, steps) -> TrainConfig:
    return TrainConfig(
        validation=0.0,  # every shot trains (the figures recorded in docs/benchmarks.md)
        task="dichotomous",
        backbone="tiny-sam",
        method="parser",
        task_options={"prompt": "none"},
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr=args.head_lr,
        warmup=max(1, steps // 10),
        seed=0,
        checkpoint_every=0,
    )


def pick(strategy, pool_dir, adapter, remaining, m, rng, batch_size) -> list[str]:
    """The m pool stems the strategy sends to the (simulated) user."""
    if strategy == "random":
        return list(rng.choice(sorted(remaining), size=m, replace=False))
    task, _ = inference_task(adapter)
    out = pool_dir.parent / f"labelled-{time.time_ns()}"
    label_images(task, pool_dir, out, batch_size=batch_size)
    ranked = [r["name"] for r in read_scores(out) if r["name"] in remaining]
    return ranked[:m]


def start_and_pool(domain, seed, args, pool_dir: Path) -> tuple[list, dict, Path]:
    """A seed's k labelled images, and its pool of unlabelled ones (stem -> sample), written as PNGs
    into `pool_dir` for label_images."""
    start = samples(domain, args.k, seed=1000 * seed + 1, size=args.size, prefix="start")
    pool = {s.stem: s for s in samples(domain, args.pool, seed=1000 * seed + 2, size=args.size, prefix="pool")}
    pool_dir.mkdir()
    for stem, s in pool.items():
        Image.fromarray(s.image).save(pool_dir / f"{stem}.png")
    return start, pool, pool_dir


def run_loop(domain, seed, args, heldout, tmp: Path) -> dict:
    rng = np.random.default_rng(seed)
    start, pool, pool_dir = start_and_pool(domain, seed, args, tmp / f"pool-{domain}-{seed}")
    held = Dataset.of(heldout)
    first = train_adapter(config(args, args.steps), Dataset.of(start), tmp / f"r0-{domain}-{seed}", holdout=held)
    result = {"frozen": first["frozen"]["dice"], "round0": first["adapted"]["dice"]}
    for strategy in ("ranked", "random"):
        labelled, remaining, adapter = list(start), set(pool), first["adapter"]
        dice = [first["adapted"]["dice"]]
        for r in range(1, args.rounds + 1):
            chosen = pick(strategy, pool_dir, adapter, remaining, args.m, rng, args.label_batch)
            remaining -= set(chosen)
            labelled += [pool[c] for c in chosen]
            cfg = warm_start(config(args, args.steps), adapter)
            out = tmp / f"{strategy}-{domain}-{seed}-{r}"
            summary = train_adapter(cfg, Dataset.of(labelled), out, holdout=held)
            adapter = summary["adapter"]
            dice.append(summary["adapted"]["dice"])
            print(f"{domain} seed {seed} {strategy} round {r}: dice {dice[-1]:.3f}", file=sys.stderr, flush=True)
        result[strategy] = dice
    n = args.k + args.rounds * args.m
    upfront = list(start) + [pool[s] for s in rng.choice(sorted(pool), size=n - args.k, replace=False)]
    total = args.steps * (args.rounds + 1)
    summary = train_adapter(config(args, total), Dataset.of(upfront), tmp / f"upfront-{domain}-{seed}", holdout=held)
    result["upfront"] = summary["adapted"]["dice"]
    print(f"{domain} seed {seed} up front ({n} images): dice {result['upfront']:.3f}", file=sys.stderr, flush=True)
    return result


def ranking_quality(domain, seed, args, heldout, tmp: Path) -> dict:
    """How well the uncertainty ranks the pool by actual error: the round-0 adapter labels the
    pool; Spearman's rho between each image's uncertainty and its Dice error (1 - Dice against
    the ground truth), and the mean Dice of the m images ranked first against the pool's mean."""
    from adapt.metrics import dice as dice_score

    start, pool, pool_dir = start_and_pool(domain, seed, args, tmp / f"rank-pool-{domain}-{seed}")
    first = train_adapter(
        config(args, args.steps), Dataset.of(start), tmp / f"rank-{domain}-{seed}", holdout=Dataset.of(heldout)
    )
    task, _ = inference_task(first["adapter"])
    out = tmp / f"rank-labels-{domain}-{seed}"
    label_images(task, pool_dir, out, batch_size=args.label_batch)
    rows = read_scores(out)
    dice = {
        r["name"]: dice_score(np.asarray(Image.open(out / "masks" / f"{r['name']}.png")) > 0, pool[r["name"]].mask > 0)
        for r in rows
    }
    u = np.array([r["uncertainty"] for r in rows])
    err = np.array([1 - dice[r["name"]] for r in rows])
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    rho = float(np.corrcoef(rank(u), rank(err))[0, 1])
    return {
        "rho": round(rho, 3),
        "top_dice": round(float(np.mean([dice[r["name"]] for r in rows[: args.m]])), 3),
        "pool_dice": round(float(np.mean(list(dice.values()))), 3),
        "empty": int(sum(r["foreground"] == 0 for r in rows)),
    }


def images_for_throughput(folder: Path, n: int, seed: int = 7) -> list[Path]:
    """n scenes of mixed sizes (256-640 px on the long side, varied aspect), written as PNG."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(make_dataset("camouflage", n=n, size=256, seed=seed)):
        w, h = int(rng.integers(256, 640)), int(rng.integers(256, 640))
        path = folder / f"{i:04d}.png"
        Image.fromarray(s.image).resize((w, h)).save(path)
        paths.append(path)
    return paths


def throughput(args, tmp: Path) -> dict:
    from adapt.data import load_image
    from adapt.render import save_png

    paths = images_for_throughput(tmp / "speed", args.speed_images)
    task, _ = inference_task(backbone="tiny-sam", task="dichotomous")
    label_images(task, paths[0].parent, tmp / "warm", batch_size=args.label_batch)  # warm-up
    t = time.perf_counter()
    label_images(task, paths[0].parent, tmp / "batched", batch_size=args.label_batch)
    batched = time.perf_counter() - t
    t = time.perf_counter()
    for p in paths:
        outputs = task.predict_outputs(load_image(p))
        save_png(outputs["main"], tmp / "loop" / f"{p.stem}.png")
    loop = time.perf_counter() - t
    memory = {}
    for n in (20, 200):
        answer = subprocess.run(
            [sys.executable, __file__, "--memory-run", str(n), "--label-batch", str(args.label_batch)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
        )
        memory[n] = json.loads(answer.stdout.strip().splitlines()[-1])["peak_rss_mib"]
    return {
        "images": len(paths),
        "batched_images_per_s": round(len(paths) / batched, 2),
        "loop_images_per_s": round(len(paths) / loop, 2),
        "speedup": round(loop / batched, 2),
        "peak_rss_mib_20": memory[20],
        "peak_rss_mib_200": memory[200],
        "memory_ratio": round(memory[200] / memory[20], 3),
    }


def memory_run(n: int, label_batch: int) -> None:
    """In a fresh process: label n images, print the peak resident memory."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images_for_throughput(tmp / "images", n)
        task, _ = inference_task(backbone="tiny-sam", task="dichotomous")
        label_images(task, tmp / "images", tmp / "out", batch_size=label_batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images": n, "peak_rss_mib": round(peak, 1)}))


def _cell(values) -> str:
    return format_interval(*mean_interval(values))


def _paired(a: list, b: list) -> str:
    mean, half, _ = paired_difference(dict(enumerate(a)), dict(enumerate(b)))
    return format_interval(mean, half, signed=True)


def report(results, args, speed) -> str:
    lines = [f"Command: `{args.command}` (torch {torch.__version__}, {torch.get_num_threads()} threads)", ""]
    if results:
        rounds = args.rounds
        head = " | ".join(f"round {r}" for r in range(rounds + 1))
        lines += [
            f"Held-out Dice, mean over seeds {', '.join(map(str, args.seeds))} with its 95% interval (Student's t); "
            f"k = {args.k}, m = {args.m}, pool {args.pool}, {args.steps} steps per round.",
            "",
            f"| domain | strategy | {head} | up front ({args.k + rounds * args.m} images) |",
            "|---|---|" + "---:|" * (rounds + 2),
        ]
        paired = [
            f"Paired differences on the same seeds (* where the 95% interval excludes 0); round {rounds} unless named:",
            "",
            "| domain | ranked - random, round 1 | ranked - random | up front - ranked | up front - random | per seed (ranked / random / up front) |",
            "|---|---|---|---|---|---|",
        ]
        for domain in args.domains:
            runs = [results[(domain, s)] for s in args.seeds]
            for strategy in ("ranked", "random"):
                cells = [_cell([run[strategy][r] for run in runs]) for r in range(rounds + 1)]
                upfront = _cell([run["upfront"] for run in runs]) if strategy == "ranked" else ""
                lines.append(f"| {domain} | {strategy} | {' | '.join(cells)} | {upfront} |")
            frozen = np.mean([run["frozen"] for run in runs])
            lines.append(f"| {domain} | frozen | {frozen:.3f} |" + " |" * (rounds + 1))
            ranked = [run["ranked"][rounds] for run in runs]
            rand = [run["random"][rounds] for run in runs]
            up = [run["upfront"] for run in runs]
            first = _paired([run["ranked"][1] for run in runs], [run["random"][1] for run in runs])
            per_seed = ", ".join(f"{a:.3f} / {b:.3f} / {c:.3f}" for a, b, c in zip(ranked, rand, up))
            paired.append(
                f"| {domain} | {first} | {_paired(ranked, rand)} | {_paired(up, ranked)} | {_paired(up, rand)} | {per_seed} |"
            )
        lines += ["", *paired, ""]
    if speed:
        lines += [
            f"Batch labelling of {speed['images']} mixed-size images (256-640 px), tiny-sam: "
            f"{speed['batched_images_per_s']} images/s batched (label_images, batch {args.label_batch}) against "
            f"{speed['loop_images_per_s']} images/s for the single-image path in a loop: **{speed['speedup']}x**. "
            f"Peak resident memory: {speed['peak_rss_mib_20']} MiB for 20 images, {speed['peak_rss_mib_200']} MiB "
            f"for 200: **{speed['memory_ratio']}x**.",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domains", nargs="+", default=DOMAINS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--m", type=int, default=5)
    p.add_argument("--pool", type=int, default=100)
    p.add_argument("--heldout", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--head-lr", type=float, default=3e-4)
    p.add_argument("--label-batch", type=int, default=8)
    p.add_argument("--speed-images", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="one domain, one seed, 2 rounds, pool 40")
    p.add_argument("--throughput-only", action="store_true")
    p.add_argument("--no-throughput", action="store_true", help="skip the batch speed and memory measurement")
    p.add_argument("--ranking-only", action="store_true", help="only how well the uncertainty ranks the pool by error")
    p.add_argument("--memory-run", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help="also write the report (markdown) here")
    args = p.parse_args(argv)
    if args.memory_run:
        memory_run(args.memory_run, args.label_batch)
        return 0
    torch.set_num_threads(args.threads)
    args.command = "python bench/active_loop.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.quick:
        args.domains, args.seeds, args.rounds, args.pool = args.domains[:1], args.seeds[:1], 2, 40
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.ranking_only:
            lines = [
                "| domain | seed | Spearman rho (uncertainty vs 1 - Dice) | Dice of the m ranked first | pool mean Dice | empty predictions |",
                "|---|---|---:|---:|---:|---:|",
            ]
            for domain in args.domains:
                heldout = samples(domain, args.heldout, seed=424242, size=args.size, prefix="held")
                for seed in args.seeds:
                    q = ranking_quality(domain, seed, args, heldout, tmp)
                    lines.append(
                        f"| {domain} | {seed} | {q['rho']:.3f} | {q['top_dice']:.3f} | {q['pool_dice']:.3f} | {q['empty']} |"
                    )
                    print(lines[-1], file=sys.stderr, flush=True)
            text = f"Command: `{args.command}`\n\n" + "\n".join(lines)
            print(text)
            if args.out:
                Path(args.out).write_text(text + "\n")
            return 0
        if not args.throughput_only:
            for domain in args.domains:
                heldout = samples(domain, args.heldout, seed=424242, size=args.size, prefix="held")
                for seed in args.seeds:
                    results[(domain, seed)] = run_loop(domain, seed, args, heldout, tmp)
        speed = None if args.no_throughput else throughput(args, tmp)
    text = report(results, args, speed)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
