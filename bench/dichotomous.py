#!/usr/bin/env python
"""Dichotomous segmentation at full resolution: plain resize versus crop refinement, and click latency.

    .venv/bin/python bench/dichotomous.py [--threads 1] [--steps 300] [--train 16] [--test 8]
                                          [--size 1024] [--domains highres-fine,thin] [--large 4000x3000]
                                          [--adapter DIR] [--out docs/benchmarks.md] [--json]

1. Adapter: the bundled tiny-sam with PARSER, trained prompt-free (task prompt "clicks": the
   whole-image box, half the time with 1-3 clicks) on synthetic high-resolution scenes of every
   benchmarked domain (seed 0). The training samples are the whole images (which the task shrinks to
   256 px) and square crops of 256-512 px around their object boundaries (what refinement sees).
   --adapter DIR loads a saved adapter instead (and --save-adapter DIR keeps the trained one).
2. Quality: held-out scenes (seed 1, --size px) of each domain, predicted prompt-free by "resize"
   (one pass at 256 px, the probability map upsampled to the source size) and "refine" (the same
   pass, then the uncertain band refined with overlapping crops, adapt.highres defaults). The DIS
   metric set (adapt.metrics.DISMetrics with HCE) against the full-resolution ground truth.
3. Cost: the time of each mode, CPU time of this process on one thread (a shared machine's other
   load does not count), interleaved image by image; refine/resize is the median of per-image
   ratios. Peak memory of each mode predicting one --large image (and one --size image): each in a
   fresh subprocess (hidden --one), VmHWM after resetting it through /proc/self/clear_refs minus
   VmRSS at the reset (model loaded and image in memory already), with MALLOC_MMAP_THRESHOLD_ so that
   freed arrays leave the RSS.
4. Clicks: adapt.predictor.InteractivePredictor on a --size image; "uncached" clears the embedding
   cache before the click (encoder + prompt encoder + decoder), "cached" is the next click on the
   same image (prompt encoder + decoder only); median CPU time of 20 pairs. The same on SAM ViT-B's
   architecture (random init, 1024-px encoder input; --vit-b-clicks pairs, ~35 s each on one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from adapt.data.synthetic import make_dataset
from benchkit import proc_status_kib, set_threads

ROOT = Path(__file__).resolve().parents[1]

MIB = 2**20
SECTION = "## Dichotomous segmentation at full resolution"


class Sample:
    def __init__(self, image, mask, stem=""):
        self.image, self.mask, self.stem = image, mask, stem


def cpu_time() -> float:
    return time.process_time()


# --- data ---------------------------------------------------------------------------------------


def scenes(domain: str, n: int, size, seed: int) -> list[Sample]:
    return [
        Sample(s.image, s.foreground.astype(np.uint8), f"{domain}-{seed}-{i}")
        for i, s in enumerate(make_dataset(domain, n=n, size=size, seed=seed))
    ]


def boundary_crops(sample: Sample, rng: np.random.Generator, count: int, sides=(256, 512)) -> list[Sample]:
    """Square crops centred on random object-boundary pixels (what the refinement will see)."""
    import cv2

    m = sample.mask.astype(np.uint8)
    edge = np.argwhere(cv2.morphologyEx(m, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0)
    H, W = m.shape
    out = []
    for k in range(count):
        side = int(rng.integers(sides[0], sides[1] + 1))
        side = min(side, H, W)
        cy, cx = edge[rng.integers(len(edge))] if len(edge) else (H // 2, W // 2)
        y0 = int(np.clip(cy - side // 2, 0, H - side))
        x0 = int(np.clip(cx - side // 2, 0, W - side))
        out.append(
            Sample(
                np.ascontiguousarray(sample.image[y0 : y0 + side, x0 : x0 + side]),
                np.ascontiguousarray(sample.mask[y0 : y0 + side, x0 : x0 + side]),
                f"{sample.stem}-crop{k}",
            )
        )
    return out


def shrunk(sample: Sample, side: int = 320) -> Sample:
    """The sample with its longest side at most `side`: the task shrinks it to 256 px anyway (after a
    0.75-1.25 zoom), and augmenting a 1024-px image costs more than the training step itself."""
    import cv2

    h, w = sample.mask.shape
    f = side / max(h, w)
    if f >= 1:
        return sample
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return Sample(
        cv2.resize(sample.image, size, interpolation=cv2.INTER_AREA),
        cv2.resize(sample.mask, size, interpolation=cv2.INTER_NEAREST),
        sample.stem,
    )


def training_set(domains: list[str], n: int, size: int, crops: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for domain in domains:
        for s in scenes(domain, n, size, seed):
            out += [shrunk(x) for x in [s] + boundary_crops(s, rng, crops)]
    return out


# --- model --------------------------------------------------------------------------------------


def train_adapter(args, out_dir: Path, log) -> Path:
    from adapt.data import Dataset
    from adapt.pipeline import train_adapter as train_and_save
    from adapt.train import TrainConfig

    train_set = training_set(args.domains, args.train, args.size, args.crops)
    cfg = TrainConfig(
        validation=0.0,  # every shot trains (the figures recorded in docs/benchmarks.md)
        task="dichotomous",
        backbone="tiny-sam",
        method="parser",
        task_options={"prompt": "clicks"},
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr=args.head_lr,
        warmup=max(1, args.steps // 10),
        seed=0,
        device="cpu",
        checkpoint_every=0,
    )
    start = time.time()
    with tempfile.TemporaryDirectory() as run:  # events and the last checkpoint: not kept
        summary = train_and_save(
            cfg,
            Dataset.of(train_set),
            run,
            holdout=Dataset.of([]),
            adapter=out_dir,
            source=f"synthetic {', '.join(args.domains)} (prompt: clicks)",
        )
    log(f"trained {args.steps} steps on {len(train_set)} samples in {time.time() - start:.0f} s")
    return summary["adapter"]


def load_task(adapter: Path):
    from adapt.export import load_adapter
    from adapt.tasks.dichotomous import DichotomousTask

    handle = load_adapter(adapter)
    handle.merge()
    handle.backbone.model.eval()
    return DichotomousTask(handle.backbone, prompt="none")


# --- quality and time ---------------------------------------------------------------------------

MODES = {"resize": False, "refine": True}


def quality(task, domains: list[str], n: int, size: int, log) -> tuple[dict, dict]:
    from adapt.metrics import DISMetrics

    metrics = {(d, m): DISMetrics(hce=True) for d in domains for m in MODES}
    seconds = {m: [] for m in MODES}
    ratios, crops = [], []
    for domain in domains:
        for i, s in enumerate(scenes(domain, n, size, seed=1)):
            t = {}
            order = list(MODES) if i % 2 == 0 else list(MODES)[::-1]  # alternate which runs first
            for mode in order:
                start = cpu_time()
                prob, plan = task.predict_refined(s.image, refine=MODES[mode])
                t[mode] = cpu_time() - start
                metrics[(domain, mode)].step(prob, s.mask)
                if plan is not None:
                    crops.append(len(plan.boxes))
            for mode in MODES:
                seconds[mode].append(t[mode])
            ratios.append(t["refine"] / t["resize"])
        log(
            f"{domain}: " + ", ".join(f"{m} boundaryF {metrics[(domain, m)].results()['boundaryF']:.3f}" for m in MODES)
        )
    scores = {f"{d}/{m}": metrics[(d, m)].results() for d in domains for m in MODES}
    cost = {
        "seconds": {m: statistics.median(v) for m, v in seconds.items()},
        "time_ratio": statistics.median(ratios),
        "crops_median": statistics.median(crops) if crops else 0,
    }
    return scores, cost


# --- memory (one subprocess per mode) -----------------------------------------------------------


def measure_here(adapter: Path, mode: str, shape: tuple[int, int], domain: str) -> dict:
    """In a fresh process: peak RSS rise while predicting one image of `shape` in `mode`."""
    task = load_task(adapter)
    (s,) = scenes(domain, 1, shape, seed=2)
    image = s.image
    task.predict(image[:64, :64], refine=False)  # first-call allocations (threads, kernels) before the reset
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = proc_status_kib("VmRSS")
    start = time.perf_counter()
    prob, plan = task.predict_refined(image, refine=MODES[mode])
    seconds = time.perf_counter() - start
    peak = proc_status_kib("VmHWM")
    return {
        "mode": mode,
        "shape": list(shape),
        "peak_rise_bytes": (peak - base) * 1024,
        "image_bytes": image.nbytes,
        "seconds": seconds,
        "crops": 0 if plan is None else len(plan.boxes),
        "crop_side": 0 if plan is None else plan.side,
        "out_shape": list(prob.shape),
    }


def measure_memory(args, adapter: Path, mode: str, shape: tuple[int, int], domain: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
    cmd = [
        sys.executable,
        __file__,
        "--one",
        mode,
        "--adapter",
        str(adapter),
        "--threads",
        str(args.threads),
        "--shape",
        f"{shape[1]}x{shape[0]}",
        "--domains",
        domain,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- clicks -------------------------------------------------------------------------------------


def click_latency(task, size: int, rounds: int = 20, warmup: bool = True) -> dict:
    from adapt.predictor import InteractivePredictor

    if rounds < 1:
        return {}
    (s,) = scenes("highres-fine", 1, size, seed=3)
    ys, xs = np.nonzero(s.mask)
    rng = np.random.default_rng(0)
    predictor = InteractivePredictor(task, capacity=4)
    if warmup:  # first-call costs (allocator, kernels) out of the timings; not worth an encoder run for ViT-B
        predictor.predict(s.image[:64, :64])
    times = {"uncached": [], "cached": []}
    for _ in range(rounds):
        k = rng.integers(len(ys))
        click = dict(points=[[xs[k], ys[k]]], labels=[1], whole_box=True)
        predictor.clear()
        for mode in ("uncached", "cached"):  # the cached click reuses the uncached one's embedding
            start = cpu_time()
            predictor.predict(s.image, **click)
            times[mode].append(cpu_time() - start)
    med = {m: statistics.median(v) for m, v in times.items()}
    return {
        "seconds": med,
        "speedup": med["uncached"] / med["cached"],
        "hits": predictor.hits,
        "misses": predictor.misses,
        "rounds": rounds,
        "backbone": task.backbone.name,
    }


def vit_b_task():
    """SAM ViT-B's architecture (random init: no download here), for what a click costs at full size."""
    from adapt.backbones import build_backbone
    from adapt.tasks.dichotomous import DichotomousTask

    backbone = build_backbone("sam-vit-b")
    backbone.model.eval()
    return DichotomousTask(backbone)


# --- report -------------------------------------------------------------------------------------

COLUMNS = [
    ("maxF", "max F ↑", 3),
    ("wFm", "weighted F ↑", 3),
    ("Sm", "S ↑", 3),
    ("maxEm", "max E ↑", 3),
    ("MAE", "MAE ↓", 4),
    ("boundaryF", "boundary F ↑", 3),
    ("HCE", "HCE ↓", 0),
]


def report(result: dict) -> str:
    a = result["args"]
    lines = [
        SECTION,
        "",
        f"Command: `{result['command']}` ({result['threads']} CPU thread(s), {result['device']}; "
        f"{result['elapsed_s']:.0f} s in all).",
        "",
        (
            f"A prompt-free tiny-sam PARSER adapter ({a['steps']} steps, {result['train_samples']} training samples: "
            f"{a['train']} whole {a['size']}-px scenes per domain and {a['crops']} boundary crops of each), "
            if result["train_samples"]
            else f"The adapter {a['adapter']}, "
        )
        + f"scored on {a['test']} held-out {a['size']} x {a['size']} scenes per domain. *resize*: one pass at "
        "256 px, upsampled to the source size. *refine*: the same pass, then the uncertain band refined "
        "with overlapping crops (adapt.highres defaults: crops at 4x the global resolution, at most 32, "
        "4 at a time) and blended back.",
        "",
        "| domain | mode | " + " | ".join(c[1] for c in COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS),
    ]
    for key, scores in result["quality"].items():
        domain, mode = key.split("/")
        cells = [f"{scores[c]:.{d}f}" for c, _, d in COLUMNS]
        lines.append(f"| {domain} | {mode} | " + " | ".join(cells) + " |")
    cost = result["cost"]
    lines += [
        "",
        f"Time per {a['size']}-px image (CPU time, median): resize {cost['seconds']['resize']:.3f} s, "
        f"refine {cost['seconds']['refine']:.3f} s, **refine / resize = {cost['time_ratio']:.1f}x** "
        f"(median {cost['crops_median']:.0f} crops per image).",
        "",
    ]
    lines += [
        "| image | mode | crops (side px) | peak memory rise | vs resize | wall time (fresh process) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, mem in result["memory"].items():
        base = mem["resize"]["peak_rise_bytes"]
        for mode in MODES:
            m = mem[mode]
            lines.append(
                f"| {label} | {mode} | {m['crops']} ({m['crop_side']}) | {m['peak_rise_bytes'] / MIB:.0f} MiB | "
                f"{m['peak_rise_bytes'] / base:.2f}x | {m['seconds']:.2f} s |"
            )
    lines += [
        "",
        "Peak memory: the rise of the process's peak RSS while predicting one image, in a fresh "
        "process per mode (model loaded, image in memory before the reset; the RGB image itself is "
        f"{result['memory'][next(iter(result['memory']))]['resize']['image_bytes'] / MIB:.0f} MiB for the first row).",
        "",
        f"Clicks (adapt.predictor.InteractivePredictor on a {a['size']}-px image, median CPU time; "
        "uncached: the embedding cache cleared before the click; cached: a further click on the same image):",
        "",
        "| backbone | clicks | uncached | cached | cached speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in result["clicks"]:
        lines.append(
            f"| {c['backbone']} | {c['rounds']} | {1000 * c['seconds']['uncached']:.1f} ms | "
            f"{1000 * c['seconds']['cached']:.1f} ms | **{c['speedup']:.1f}x** |"
        )
    lines.append("")
    lines += [result["summary"], ""]
    return "\n".join(lines)


def summarise(result: dict) -> str:
    parts = []
    for domain in result["args"]["domains"]:
        r, f = result["quality"][f"{domain}/resize"], result["quality"][f"{domain}/refine"]
        parts.append(
            f"{domain}: boundary F {r['boundaryF']:.3f} -> {f['boundaryF']:.3f}, "
            f"weighted F {r['wFm']:.3f} -> {f['wFm']:.3f}, HCE {r['HCE']:.0f} -> {f['HCE']:.0f}"
        )
    return (
        "Refinement against plain resize: " + "; ".join(parts) + f", at {result['cost']['time_ratio']:.1f}x the time."
    )


def write_section(path: Path, text: str) -> None:
    """Replace this benchmark's section of `path` (up to the next '## ' heading), or append it."""
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION in doc:
        start = doc.index(SECTION)
        nxt = doc.find("\n## ", start + len(SECTION))
        doc = doc[:start] + text.rstrip() + "\n" + (doc[nxt:] if nxt != -1 else "")
    else:
        doc = doc.rstrip() + "\n\n" + text.rstrip() + "\n"
    path.write_text(doc)


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--head-lr", type=float, default=3e-4)
    p.add_argument("--train", type=int, default=12, help="training scenes per domain")
    p.add_argument("--crops", type=int, default=3, help="boundary crops per training scene")
    p.add_argument("--test", type=int, default=8, help="held-out scenes per domain")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--domains", default="highres-fine,thin")
    p.add_argument("--large", default="4000x3000", help="WxH of the image for the memory rows")
    p.add_argument(
        "--vit-b-clicks",
        type=int,
        default=1,
        help="clicks timed on SAM ViT-B's architecture (each uncached one: ~35 s on one thread; 0: skip)",
    )
    p.add_argument("--adapter", help="use this saved adapter instead of training one")
    p.add_argument("--save-adapter", help="keep the trained adapter here")
    p.add_argument("--out", help="write the section into this markdown file")
    p.add_argument("--json", action="store_true")
    p.add_argument("--one", choices=list(MODES), help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.domains = [d for d in args.domains.split(",") if d]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    if args.one:
        w, h = (int(v) for v in args.shape.split("x"))
        print(json.dumps(measure_here(Path(args.adapter), args.one, (h, w), args.domains[0])))
        return 0
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = (
            Path(args.adapter)
            if args.adapter
            else train_adapter(args, Path(args.save_adapter or Path(tmp) / "adapter"), log)
        )
        task = load_task(adapter)
        scores, cost = quality(task, args.domains, args.test, args.size, log)
        clicks = [click_latency(task, args.size)]
        if args.vit_b_clicks:
            clicks.append(click_latency(vit_b_task(), args.size, rounds=args.vit_b_clicks, warmup=False))
        log("clicks: " + ", ".join(f"{c['backbone']} {c['speedup']:.1f}x" for c in clicks))
        memory = {}
        lw, lh = (int(v) for v in args.large.split("x"))
        for label, shape in ((f"{lw} x {lh}", (lh, lw)), (f"{args.size} x {args.size}", (args.size, args.size))):
            memory[label] = {m: measure_memory(args, adapter, m, shape, args.domains[0]) for m in MODES}
            log(
                f"memory {label}: "
                + ", ".join(f"{m} {v['peak_rise_bytes'] / MIB:.0f} MiB" for m, v in memory[label].items())
            )
    argv_shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
    result = {
        "command": "python bench/dichotomous.py " + shlex.join(argv_shown),
        "threads": args.threads,
        "device": "cpu",
        "args": {k: v for k, v in vars(args).items() if k not in ("one", "shape")},
        "train_samples": len(args.domains) * args.train * (1 + args.crops) if not args.adapter else None,
        "quality": scores,
        "cost": cost,
        "memory": memory,
        "clicks": clicks,
        "elapsed_s": time.time() - started,
    }
    result["summary"] = summarise(result)
    text = report(result)
    if args.out:
        write_section(Path(args.out), text)
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
