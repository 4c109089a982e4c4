"""Open-vocabulary benchmark: seen vs unseen classes after few-shot adaptation of tiny-clip.

    python bench/openvocab.py --threads 1                 # every method, ~8 min on one CPU thread
    python bench/openvocab.py --out docs/benchmarks.md    # append the Markdown table

Two splits of the synthetic world's objects into *seen* classes (the only ones in the few-shot
training set) and *unseen* ones (never in training, but named in tiny-clip's pretraining captions):
--split shapes (8 seen, 4 unseen shapes) and --split colours (9 seen, 4 unseen colours; the class
"red object" is every red object, whatever its shape). tiny-clip's pretraining taught it colours
(zero-shot colour of a one-object scene from its global embedding: 0.69-0.81, chance 0.08) but not
shapes (0.08, chance), so only the colour split has unseen classes CLIP actually knows. Every
method trains on the same few-shot set with the same trainer, steps and head; the held-out set
shows every class and is scored with the full vocabulary, from one confusion matrix over all its
pixels. Reported per
method: seen mIoU (8 shapes), unseen mIoU (4 shapes), their harmonic mean, background IoU,
trainable parameters (adapter alone / with the head), training wall time, and the text tower's
hyperspherical-energy drift: mean over its W_q, W_k, W_v, W_o of |HE(after) - HE(before)| / HE(before),
and what the text tower now says about the classes: the unseen classes' embedding shift (mean
1 - cos to their frozen embeddings) and the relative change of the class similarity matrix.
"frozen" is zero-shot CLIP with the untrained head (it ranks classes by raw cosine cost).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from adapt.data.synthetic import COLOURS, SEEN_SHAPES, UNSEEN_SHAPES, make_dataset
from adapt.methods import configurations
from adapt.methods import label as config_label
from adapt.methods.hclip import hyperspherical_energy, text_tower_weights
from adapt.metrics import format_interval, harmonic_iou, mean_interval, paired_difference
from adapt.train import TrainConfig, train

UNSEEN_COLOURS = ["orange", "cyan", "pink", "gray"]
SEEN_COLOURS = [c for c in COLOURS if c not in UNSEEN_COLOURS]


class Split:
    """A seen/unseen class split of the synthetic world: what a pixel's class is, and which
    classes the few-shot set may show."""

    def __init__(self, name: str, seen: list[str], unseen: list[str], suffix: str = ""):
        self.name, self.suffix = name, suffix
        self.seen, self.unseen = seen, unseen
        self.train_classes = ["background"] + [c + suffix for c in seen]
        self.vocab = ["background"] + [c + suffix for c in seen + unseen]
        self.seen_ids = list(range(1, 1 + len(seen)))
        self.unseen_ids = list(range(1 + len(seen), len(self.vocab)))
        self.unseen_names = [c + suffix for c in unseen]

    def attribute(self, obj) -> str:
        return obj.shape if self.name == "shapes" else obj.colour

    def labels(self, scene, vocab: list[str]) -> np.ndarray:
        """Per-pixel ids into `vocab`: 0 background, each object's attribute, 255 if not in vocab."""
        out = np.zeros(scene.semantic.shape, np.uint8)
        for obj, mask in zip(scene.objects, scene.masks):
            name = self.attribute(obj) + self.suffix
            out[mask] = vocab.index(name) if name in vocab else 255
        return out

    def training_scenes(self, domain: str, n: int, size: int, seed: int) -> list:
        """n scenes whose objects all have seen attributes: unseen classes never appear in training."""
        if self.name == "shapes":
            return make_dataset(domain, n=n, size=size, seed=seed, shapes=self.seen)
        out, k = [], 0
        while len(out) < n:
            for scene in make_dataset(domain, n=n, size=size, seed=seed + 7919 * k):
                if all(self.attribute(o) in self.seen for o in scene.objects) and len(out) < n:
                    out.append(scene)
            k += 1
        return out


SPLITS = {
    "shapes": Split("shapes", SEEN_SHAPES, UNSEEN_SHAPES),
    "colours": Split("colours", SEEN_COLOURS, UNSEEN_COLOURS, suffix=" object"),
}
# Row labels as the tables in docs/benchmarks.md print them; other configurations are named by
# adapt.methods.label.
ROW_NAMES = {
    ("frozen", ()): "frozen (zero-shot)",
    ("decoder", ()): "frozen + head",
    ("hclip", (("dcrc", False),)): "hclip, no DCRC",
    ("hclip", (("orthogonal", "both"),)): "hclip, orthogonal both towers",
    ("full", ()): "full fine-tuning",
}
CLIP_SIDE_LR = {"frozen": 0.0, "decoder": 0.0, "full": 3e-4}  # the adapters: 3e-3


def _row(method: str, options: dict) -> tuple[str, str, dict, float]:
    name = ROW_NAMES.get((method, tuple(options.items())), config_label(method, options))
    return name, method, options, CLIP_SIDE_LR.get(method, 3e-3)


# (label, method, options, lr of the CLIP-side parameters): every CLIP configuration the benchmarks
# compare (adapt.methods.configurations), then each one that trains the CLIP side at a 10x smaller
# lr (the paper trains the CLIP side at 5e-6 on real data): the two rates each method is tuned over
METHODS = [_row(m, o) for m, _, o in configurations("clip", compared=True)]
LOWER = ", lr/10"
METHODS += [(name + LOWER, m, o, round(lr / 10, 12)) for name, m, o, lr in list(METHODS) if lr]
SUMMARY = ["frozen (zero-shot)", "frozen + head", "hclip", "lora-clip", "full fine-tuning"]  # the --seeds run's rows
PAIRS = [("hclip", "lora-clip"), ("hclip", "full fine-tuning"), ("lora-clip", "full fine-tuning")]


class Sample:
    def __init__(self, scene, split: Split, vocab: list[str]):
        self.image, self.mask = scene.image, split.labels(scene, vocab)


def text_energies(model) -> dict[str, float]:
    return {k: hyperspherical_energy(w) for k, w in text_tower_weights(model).items()}


def text_structure(task, split: Split) -> torch.Tensor:
    """Class text embeddings (vocabulary x D) as the task's text tower gives them now."""
    with torch.no_grad():
        return task.text_features(split.vocab).cpu()


def text_shift(before: torch.Tensor, after: torch.Tensor, split: Split) -> tuple[float, float]:
    """(mean 1 - cos of the unseen classes' embeddings, relative change of the class Gram matrix)."""
    unseen = split.unseen_ids
    shift = float((1 - (before[unseen] * after[unseen]).sum(-1)).mean())
    g0, g1 = before @ before.t(), after @ after.t()
    return shift, float((g1 - g0).norm() / g0.norm())


def run_one(
    label, method, options, lr, args, split, train_set, heldout, reference_he, reference_text, validation=()
) -> dict:
    cfg = TrainConfig(
        validation=0.0,  # every shot trains (the figures recorded in docs/benchmarks.md)
        task="openvocab",
        backbone="tiny-clip",
        checkpoint=args.checkpoint,
        method=method,
        method_options=options,
        task_options={"classes": split.train_classes},
        steps=args.steps,
        batch_size=args.batch_size,
        lr=lr or args.lr,
        head_lr=args.head_lr,
        warmup=max(1, args.steps // 10),
        seed=args.seed,
        checkpoint_every=0,
        device=args.device,
    )
    start = time.time()
    summary = train(cfg, train_set, [], out_dir=None)
    seconds = time.time() - start
    run = summary["run"]
    run.backbone.model.eval()
    with torch.no_grad():
        # the validation images (seen classes only, as a user's own split would be) choose the lr
        checked = run.task.evaluate(validation, device=run.device, classes=split.train_classes) if validation else {}
        scores = run.task.evaluate(heldout, device=run.device, classes=split.vocab)
    cm = run.task.last_confusion
    he = text_energies(run.backbone.model)
    drift = float(np.mean([abs(he[k] - reference_he[k]) / reference_he[k] for k in he]))
    seen, unseen = cm.miou(split.seen_ids), cm.miou(split.unseen_ids)
    shift, gram = text_shift(reference_text, text_structure(run.task, split), split)
    counts = summary["counts"]
    return {
        "method": label,
        "name": method,
        "options": options,
        "lr": lr if method not in ("frozen", "decoder") else None,
        "seen_miou": seen,
        "unseen_miou": unseen,
        "hiou": harmonic_iou(seen, unseen),
        "validation_miou": checked.get("miou", float("nan")),
        "background_iou": scores.get("iou/background", float("nan")),
        "pixel_acc": scores["pixel_acc"],
        "adapter_params": counts["adapter"],
        "trainable_params": counts["trainable"],
        "seconds": round(seconds, 1) if method != "frozen" else 0.0,
        "text_he_drift": drift,
        "unseen_text_shift": shift,
        "text_gram_drift": gram,
        "per_class": {c: scores.get(f"iou/{c}") for c in split.vocab},
    }


@torch.no_grad()
def clip_knowledge(checkpoint=None, n: int = 300, seed: int = 0) -> str:
    """What tiny-clip knows before any adaptation: zero-shot shape and colour of one-object scenes
    from its global image embedding (the pooled token, not the dense features)."""
    from adapt.backbones import build_backbone
    from adapt.backbones.clip import image_normalization
    from adapt.data.synthetic import SHAPES, make_scene
    from adapt.weights import resolve_checkpoint

    backbone = build_backbone("tiny-clip", checkpoint=resolve_checkpoint("tiny-clip", checkpoint))
    model = backbone.model.eval()
    mean, std = image_normalization(backbone)
    rng = np.random.default_rng(seed)
    scenes = [make_scene(rng, size=backbone.spec["vision_cfg"]["image_size"], max_objects=1) for _ in range(n)]
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255.0
    images = torch.nn.functional.normalize(model.encode_image((x - mean[:, None, None]) / std[:, None, None]), dim=-1)
    lines = ["| attribute | template | zero-shot accuracy | chance |", "|---|---|---:|---:|"]
    for attribute, names in (("shape", list(SHAPES)), ("colour", list(COLOURS))):
        truth = torch.tensor([names.index(getattr(s.objects[0], attribute)) for s in scenes])
        for template in ("a photo of a {}.", "a {} object on a wooden background"):
            texts = torch.nn.functional.normalize(
                model.encode_text(backbone.tokenizer([template.format(c) for c in names])), dim=-1
            )
            accuracy = ((images @ texts.t()).argmax(1) == truth).float().mean().item()
            lines.append(f"| {attribute} | `{template}` | {accuracy:.3f} | {1 / len(names):.3f} |")
    return "\n".join(lines)


SCORES = ("seen_miou", "unseen_miou", "hiou", "validation_miou")


def average(per_seed: list[list[dict]]) -> list[dict]:
    """One row per method: the mean of every figure over seeds, each seed's seen/unseen mIoU, and
    for the scores each seed's value ("per_seed", the same seed order in every row, for pairing)
    and the half-width of their 95% interval ("ci")."""
    out = []
    for runs in zip(*per_seed):
        row = dict(runs[0])
        for key, value in runs[0].items():
            if isinstance(value, float) and key != "lr":
                row[key] = float(np.mean([r[key] for r in runs]))
        row["per_class"] = {c: float(np.mean([r["per_class"][c] or 0.0 for r in runs])) for c in runs[0]["per_class"]}
        row["seeds"] = [(r["seen_miou"], r["unseen_miou"]) for r in runs]
        row["per_seed"] = {k: [r[k] for r in runs] for k in SCORES}
        row["ci"] = {k: mean_interval(row["per_seed"][k])[1] for k in SCORES}
        out.append(row)
    return out


def tuned(rows: list[dict]) -> dict[str, dict]:
    """Per method (label without LOWER): its row at the lr with the best mean validation mIoU (seen
    classes on images of the training distribution; the held-out images are never consulted)."""
    out = {}
    for r in rows:
        base = r["method"].removesuffix(LOWER)
        if base not in out or r["validation_miou"] > out[base]["validation_miou"]:
            out[base] = r
    return out


def _paired(a: dict, b: dict, key: str) -> str:
    mean, half, _ = paired_difference(dict(enumerate(a["per_seed"][key])), dict(enumerate(b["per_seed"][key])))
    return format_interval(mean, half, signed=True)


def interval_tables(rows: list[dict], split: Split) -> str:
    """The seeded reading: each method at its validation-chosen lr, seen / unseen mIoU and hIoU with
    95% intervals over seeds, paired differences to zero-shot CLIP, and the pairs claims are made about."""
    best = tuned(rows)
    zero = best.get("frozen (zero-shot)")
    lines = [
        "| method | lr chosen on validation (validation seen mIoU per lr) | seen mIoU | unseen mIoU | hIoU "
        "| unseen vs zero-shot (paired) | hIoU vs zero-shot (paired) | adapter params |",
        "|---|---|---|---|---|---|---|---:|",
    ]
    for base, r in best.items():
        options = [x for x in rows if x["method"].removesuffix(LOWER) == base]
        chosen = (
            "–"
            if r["lr"] is None
            else f"{r['lr']:g} (" + ", ".join(f"{x['lr']:g}: {x['validation_miou']:.3f}" for x in options) + ")"
        )
        cells = [format_interval(r[k], r["ci"][k]) for k in ("seen_miou", "unseen_miou", "hiou")]
        vs = (
            ["reference", "reference"]
            if r is zero or zero is None
            else [_paired(r, zero, k) for k in ("unseen_miou", "hiou")]
        )
        lines.append(f"| {base} | {chosen} | " + " | ".join(cells + vs) + f" | {r['adapter_params']:,} |")
    pairs = ["", "| comparison (each at its chosen lr) | seen mIoU | unseen mIoU | hIoU |", "|---|---|---|---|"]
    for a, b in PAIRS:
        if a in best and b in best:
            pairs.append(
                f"| {a} - {b} | "
                + " | ".join(_paired(best[a], best[b], k) for k in ("seen_miou", "unseen_miou", "hiou"))
                + " |"
            )
    return "\n".join(lines + (pairs if len(pairs) > 3 else []))


def evidence(rows: list[dict], args, split: Split) -> dict:
    """What the studio shows beside a CLIP method (adapt.evidence): each method at its chosen lr."""
    best = tuned(rows)
    zero = best.get("frozen (zero-shot)")
    methods = {}
    for base, r in best.items():
        entry = {"name": r["name"], "options": r["options"], "params": r["adapter_params"], "lr": r["lr"]}
        entry.update({k: [r[k], r["ci"][k]] for k in ("seen_miou", "unseen_miou", "hiou")})
        if zero is not None and r is not zero:
            for k in ("unseen_miou", "hiou"):
                a, b = dict(enumerate(r["per_seed"][k])), dict(enumerate(zero["per_seed"][k]))
                entry[f"{k}_vs_reference"] = list(paired_difference(a, b)[:2])
        methods[base] = entry
    return {
        "benchmark": "bench/openvocab.py",
        "setting": f"`{args.command}` ({len(args.seeds)} seeds, {args.seconds} s)",
        "backbone": "tiny-clip",
        "split": split.name,
        "reference": "frozen (zero-shot)",
        "seeds": list(args.seeds),
        "methods": methods,
    }


def markdown(rows: list[dict], args, split: Split) -> str:
    lines = [
        f"## Open-vocabulary adaptation: seen vs unseen {split.name} (bench/openvocab.py --split {split.name})",
        "",
        f"`{args.command}` ({args.seconds} s) — tiny-clip (bundled), {args.shots} few-shot training images of the "
        f"'{args.domain}' domain (mean over seeds {', '.join(map(str, args.seeds))}) in which every object has one of the {len(split.seen)} seen {split.name} "
        f"({', '.join(split.seen)}), {args.steps} steps of batch {args.batch_size}, head lr {args.head_lr:g}; "
        f"{args.heldout} held-out images with objects of all {split.name} at {args.size} px, scored with "
        f"the full {len(split.vocab)}-class vocabulary (unseen: {', '.join(split.unseen_names)}) from one "
        "confusion matrix.",
        "",
        "| method | CLIP-side lr | validation seen mIoU | seen mIoU | unseen mIoU | hIoU | background IoU "
        "| adapter params | with head | train s | text HE drift | unseen text shift | text Gram drift "
        "| seen / unseen per seed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lr = "–" if r["lr"] is None else f"{r['lr']:g}"
        lines.append(
            f"| {r['method']} | {lr} | {r['validation_miou']:.3f} | {r['seen_miou']:.3f} | {r['unseen_miou']:.3f} "
            f"| {r['hiou']:.3f} | "
            f"{r['background_iou']:.3f} | {r['adapter_params']:,} | {r['trainable_params']:,} | "
            f"{r['seconds']:.0f} | {r['text_he_drift']:.1e} | {r['unseen_text_shift']:.1e} | "
            f"{r['text_gram_drift']:.1e} | " + ", ".join(f"{a:.3f} / {b:.3f}" for a, b in r["seeds"]) + " |"
        )
    lines += [
        "",
        "Per-class IoU on the unseen classes (mean over seeds): "
        + "; ".join(
            f"{r['method']}: " + ", ".join(f"{c} {r['per_class'][c] or 0:.2f}" for c in split.unseen_names)
            for r in rows
        ),
        "",
    ]
    if len(args.seeds) > 1:
        lines += [
            f"Each method at the CLIP-side lr with the better mean validation mIoU over the seeds ({args.shots} more "
            "images of the training distribution, seen classes only; the held-out images never choose), "
            "mean over seeds with its 95% interval (Student's t), and paired differences on the same seeds "
            "(* where the interval excludes 0):",
            "",
            interval_tables(rows, split),
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--split",
        default="shapes",
        choices=sorted(SPLITS),
        help="classes: the objects' shapes (8 seen, 4 unseen) or their colours (9 seen, 4 unseen)",
    )
    p.add_argument("--domain", default="source", help="domain of the few-shot and held-out images")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--heldout", type=int, default=32)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="CLIP-side lr for methods without their own")
    p.add_argument("--head-lr", type=float, default=3e-3)
    p.add_argument(
        "--methods",
        nargs="*",
        help="row labels to run (each at both CLIP-side lrs), e.g. 'frozen + head' hclip (default: all); "
        f"'summary' for {', '.join(SUMMARY)}",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="mean over these seeds (data and training)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint", default=None, help="tiny-clip weights (default: the bundled ones)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="append the Markdown table to this file")
    p.add_argument(
        "--record", metavar="JSON", help="with several --seeds: write the figures the Train tab shows (docs/evidence/)"
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--knowledge",
        action="store_true",
        help="only print what tiny-clip knows zero-shot (global shape / colour accuracy) and exit",
    )
    args = p.parse_args(argv)
    if args.knowledge:
        torch.set_num_threads(args.threads)
        print(clip_knowledge(args.checkpoint))
        return 0
    args.command = "python bench/openvocab.py " + " ".join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)

    split = SPLITS[args.split]
    if args.methods == ["summary"]:
        args.methods = SUMMARY
    from adapt.backbones import build_backbone
    from adapt.tasks.openvocab import OpenVocabTask
    from adapt.weights import resolve_checkpoint

    reference = build_backbone("tiny-clip", checkpoint=resolve_checkpoint("tiny-clip", args.checkpoint))
    reference_he = text_energies(reference.model)
    reference_text = text_structure(OpenVocabTask(reference, classes=split.train_classes), split)
    per_seed, started = [], time.time()
    for seed in args.seeds:
        args.seed = seed  # data and training both follow the seed
        train_set = [
            Sample(s, split, split.train_classes)
            for s in split.training_scenes(args.domain, args.shots, args.size, seed + 1)
        ]
        heldout = [
            Sample(s, split, split.vocab)
            for s in make_dataset(args.domain, n=args.heldout, size=args.size, seed=seed + 1000)
        ]
        validation = [
            Sample(s, split, split.train_classes)
            for s in split.training_scenes(args.domain, args.shots, args.size, seed + 2000)
        ]
        rows = []
        for label, method, options, lr in METHODS:
            if args.methods and label.removesuffix(LOWER) not in args.methods:
                continue
            row = run_one(
                label, method, options, lr, args, split, train_set, heldout, reference_he, reference_text, validation
            )
            rows.append(row)
            print(
                f"seed {seed} {label:<32} seen {row['seen_miou']:.3f} unseen {row['unseen_miou']:.3f} "
                f"hIoU {row['hiou']:.3f} drift {row['text_he_drift']:.1e} {row['seconds']:.0f}s",
                file=sys.stderr,
                flush=True,
            )
        per_seed.append(rows)
    rows = average(per_seed)
    args.seconds = round(time.time() - started)
    md = markdown(rows, args, split)
    if args.record and len(args.seeds) > 1:
        Path(args.record).write_text(json.dumps(evidence(rows, args, split), indent=1) + "\n")
    print(json.dumps(rows, indent=1) if args.json else md)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
