"""Open-vocabulary benchmark: seen vs unseen classes after few-shot adaptation of tiny-clip.

    python bench/openvocab.py --threads 1                 # every method, ~8 min on one CPU thread
    python bench/openvocab.py --out docs/benchmarks.md    # append the Markdown table

The synthetic world's 12 shapes are split into 8 *seen* shapes (the only ones drawn and labelled
in the few-shot training set) and 4 *unseen* ones (never drawn in training, but named in
tiny-clip's pretraining, so CLIP "knows" them). Every method trains on the same few-shot set with
the same trainer, steps and head; the held-out set draws all 12 shapes and is scored with the full
vocabulary (background + 12 shapes), from one confusion matrix over all its pixels. Reported per
method: seen mIoU (8 shapes), unseen mIoU (4 shapes), their harmonic mean, background IoU,
trainable parameters (adapter alone / with the head), training wall time, and the text tower's
hyperspherical-energy drift: mean over its W_q, W_k, W_v, W_o of |HE(after) - HE(before)| / HE(before),
and what the text tower now says about the classes: the unseen classes' embedding shift (mean
1 - cos to their frozen embeddings) and the relative change of the 13 x 13 class similarity matrix.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapt.data.synthetic import CLASS_IDS, SEEN_SHAPES, UNSEEN_SHAPES, make_dataset  # noqa: E402
from adapt.methods.hclip import hyperspherical_energy, text_tower_weights  # noqa: E402
from adapt.metrics import harmonic_iou  # noqa: E402
from adapt.train import TrainConfig, train  # noqa: E402

TRAIN_CLASSES = ["background"] + SEEN_SHAPES
VOCAB = ["background"] + SEEN_SHAPES + UNSEEN_SHAPES
SEEN_IDS = list(range(1, 1 + len(SEEN_SHAPES)))
UNSEEN_IDS = list(range(1 + len(SEEN_SHAPES), len(VOCAB)))
# (label, method, options, lr of the CLIP-side parameters)
METHODS = [
    ("frozen (zero-shot)", "frozen", {}, 0.0),
    ("frozen + head", "decoder", {}, 0.0),
    ("lora-clip", "lora-clip", {}, 3e-3),
    ("hclip, no DCRC", "hclip", {"dcrc": False}, 3e-3),
    ("hclip", "hclip", {}, 3e-3),
    ("hclip, orthogonal both towers", "hclip", {"orthogonal": "both"}, 3e-3),
    ("full fine-tuning", "full", {}, 3e-4),
    # the same adapters at a 10x smaller CLIP-side lr (the paper trains CLIP-side at 5e-6 on real data)
    ("lora-clip, lr/10", "lora-clip", {}, 3e-4),
    ("hclip, lr/10", "hclip", {}, 3e-4),
]


class Sample:
    def __init__(self, scene, vocab: list[str]):
        lut = np.full(256, 255, np.uint8)  # world class id -> id in `vocab`; anything else ignored
        lut[0] = 0
        for k, name in enumerate(vocab[1:], start=1):
            lut[CLASS_IDS[name]] = k
        self.image, self.mask = scene.image, lut[scene.semantic]


def text_energies(model) -> dict[str, float]:
    return {k: hyperspherical_energy(w) for k, w in text_tower_weights(model).items()}


def text_structure(task) -> torch.Tensor:
    """Class text embeddings (VOCAB x D) as the task's text tower gives them now."""
    with torch.no_grad():
        return task.text_features(VOCAB).cpu()


def text_shift(before: torch.Tensor, after: torch.Tensor) -> tuple[float, float]:
    """(mean 1 - cos of the unseen classes' embeddings, relative change of the class Gram matrix)."""
    unseen = [VOCAB.index(c) for c in UNSEEN_SHAPES]
    shift = float((1 - (before[unseen] * after[unseen]).sum(-1)).mean())
    g0, g1 = before @ before.t(), after @ after.t()
    return shift, float((g1 - g0).norm() / g0.norm())


def run_one(label, method, options, lr, args, train_set, heldout, reference_he, reference_text) -> dict:
    cfg = TrainConfig(task="openvocab", backbone="tiny-clip", checkpoint=args.checkpoint, method=method,
                      method_options=options, task_options={"classes": TRAIN_CLASSES}, steps=args.steps,
                      batch_size=args.batch_size, lr=lr or args.lr, head_lr=args.head_lr,
                      warmup=max(1, args.steps // 10), seed=args.seed, checkpoint_every=0, device=args.device)
    start = time.time()
    summary = train(cfg, train_set, [], out_dir=None)
    seconds = time.time() - start
    run = summary["run"]
    run.backbone.model.eval()
    with torch.no_grad():
        scores = run.task.evaluate(heldout, device=run.device, classes=VOCAB)
    cm = run.task.last_confusion
    he = text_energies(run.backbone.model)
    drift = float(np.mean([abs(he[k] - reference_he[k]) / reference_he[k] for k in he]))
    seen, unseen = cm.miou(SEEN_IDS), cm.miou(UNSEEN_IDS)
    shift, gram = text_shift(reference_text, text_structure(run.task))
    counts = summary["counts"]
    return {"method": label, "name": method, "options": options, "lr": lr if method not in ("frozen", "decoder") else None,
            "seen_miou": seen, "unseen_miou": unseen, "hiou": harmonic_iou(seen, unseen),
            "background_iou": scores.get("iou/background", float("nan")), "pixel_acc": scores["pixel_acc"],
            "adapter_params": counts["adapter"], "trainable_params": counts["trainable"],
            "seconds": round(seconds, 1) if method != "frozen" else 0.0, "text_he_drift": drift,
            "unseen_text_shift": shift, "text_gram_drift": gram,
            "per_class": {c: scores.get(f"iou/{c}") for c in VOCAB}}


def markdown(rows: list[dict], args) -> str:
    lines = [
        "## Open-vocabulary adaptation: seen vs unseen classes (bench/openvocab.py)",
        "",
        f"`{args.command}` — tiny-clip (bundled), {args.shots} few-shot training images of the "
        f"'{args.domain}' domain drawing only the 8 seen shapes, {args.steps} steps of batch {args.batch_size}, "
        f"head lr {args.head_lr:g}; {args.heldout} held-out images drawing all 12 shapes at {args.size} px, "
        "scored with the full 13-class vocabulary from one confusion matrix.",
        "",
        "| method | CLIP-side lr | seen mIoU | unseen mIoU | hIoU | background IoU | adapter params | with head | "
        "train s | text HE drift | unseen text shift | text Gram drift |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lr = "–" if r["lr"] is None else f"{r['lr']:g}"
        lines.append(f"| {r['method']} | {lr} | {r['seen_miou']:.3f} | {r['unseen_miou']:.3f} | {r['hiou']:.3f} | "
                     f"{r['background_iou']:.3f} | {r['adapter_params']:,} | {r['trainable_params']:,} | "
                     f"{r['seconds']:.0f} | {r['text_he_drift']:.1e} | {r['unseen_text_shift']:.1e} | "
                     f"{r['text_gram_drift']:.1e} |")
    lines += ["", "Per-class IoU on the unseen shapes: " + "; ".join(
        f"{r['method']}: " + ", ".join(f"{c} {r['per_class'][c] or 0:.2f}" for c in UNSEEN_SHAPES) for r in rows), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", default="source", help="domain of the few-shot and held-out images")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--heldout", type=int, default=32)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="CLIP-side lr for methods without their own")
    p.add_argument("--head-lr", type=float, default=3e-3)
    p.add_argument("--methods", nargs="*", help="row labels to run, e.g. 'frozen + head' hclip (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint", default=None, help="tiny-clip weights (default: the bundled ones)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="append the Markdown table to this file")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.command = "python bench/openvocab.py " + " ".join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)

    train_set = [Sample(s, TRAIN_CLASSES) for s in
                 make_dataset(args.domain, n=args.shots, size=args.size, seed=args.seed + 1, shapes=SEEN_SHAPES)]
    heldout = [Sample(s, VOCAB) for s in make_dataset(args.domain, n=args.heldout, size=args.size, seed=args.seed + 1000)]
    from adapt.backbones import build_backbone
    from adapt.weights import resolve_checkpoint

    from adapt.tasks.openvocab import OpenVocabTask

    reference = build_backbone("tiny-clip", checkpoint=resolve_checkpoint("tiny-clip", args.checkpoint))
    reference_he = text_energies(reference.model)
    reference_text = text_structure(OpenVocabTask(reference, classes=TRAIN_CLASSES))
    rows = []
    for label, method, options, lr in METHODS:
        if args.methods and label not in args.methods:
            continue
        row = run_one(label, method, options, lr, args, train_set, heldout, reference_he, reference_text)
        rows.append(row)
        print(f"{label:<32} seen {row['seen_miou']:.3f} unseen {row['unseen_miou']:.3f} hIoU {row['hiou']:.3f} "
              f"drift {row['text_he_drift']:.1e} {row['seconds']:.0f}s", file=sys.stderr, flush=True)
    md = markdown(rows, args)
    print(json.dumps(rows, indent=1) if args.json else md)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
