"""Pretraining of the bundled demo backbones on procedurally generated scenes.

    python -m adapt pretrain --backbone tiny-sam --steps 3000 --out weights/
    python -m adapt pretrain --backbone tiny-clip --steps 3000 --out weights/

tiny-sam: segment-anything's Sam class at a tiny size, trained from scratch (every weight) to
segment the object a prompt points at (jittered box or points, several prompts per image sharing
one image embedding, as SAM itself is trained) in the "source" synthetic domain.
tiny-clip: open_clip's CLIP class at a tiny size with the real BPE tokenizer, trained with the
symmetric contrastive loss on (scene, caption) pairs plus a dense term that aligns every patch
embedding with the text embedding of the shape under it ("a photo of a {shape}."), so that dense
features carry class information for open-vocabulary segmentation.

Everything is seeded; weights are written as safetensors with an entry in weights/manifest.json
(sha256, bytes, command, seed, final metrics). Deterministic given the same torch build and thread
count (torch.set_num_threads is fixed by --threads).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from adapt.pretrain.loop import save_bundled


def main(args) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)


def _main(args) -> int:
    torch.manual_seed(args.seed)
    command = (
        f"python -m adapt pretrain --backbone {args.backbone} --steps {args.steps} --batch-size {args.batch_size} "
        f"--prompts-per-image {args.prompts_per_image} --warmup {args.warmup} --lr {args.lr:g} "
        f"--seed {args.seed} --threads {args.threads} --out weights"
    )
    if args.backbone == "tiny-clip" and (
        args.init or args.dense_weight != 1.0 or args.object_weight != 0.5 or args.colour_weight
    ):
        command += f" --dense-weight {args.dense_weight:g} --object-weight {args.object_weight:g}"
        command += f" --colour-weight {args.colour_weight:g}" if args.colour_weight else ""
        command += f" --init {args.init}" if args.init else ""
    if args.backbone == "tiny-sam":
        from adapt.pretrain.sam import pretrain_sam

        result = pretrain_sam(args)
    elif args.backbone == "tiny-clip":
        from adapt.pretrain.clip import pretrain_clip

        result = pretrain_clip(args)
    else:
        raise ValueError(f"pretraining is for the bundled tiny backbones (tiny-sam, tiny-clip), not {args.backbone!r}")
    path = save_bundled(
        result["backbone"],
        Path(args.out),
        result["metrics"],
        command,
        args.seed,
        dtype=result.get("dtype", torch.float32),
    )
    print(json.dumps({"file": str(path), "metrics": result["metrics"]}))
    return 0
