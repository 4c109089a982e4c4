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
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from adapt.backbones import build_backbone, file_sha256
from adapt.tasks.dichotomous import bce_dice_loss
from adapt.train import lr_factor

MANIFEST = "manifest.json"


def _scenes(rng, n, size, domain="source"):
    from adapt.data.synthetic import make_scene

    return [make_scene(rng, size=size, domain=domain) for _ in range(n)]


def _sam_batch(backbone, scenes, rng, prompts_per_image: int):
    """Normalised images (B,3,S,S) and per image one prompt batch: K boxes or K point sets
    (one kind per image, so that the K prompts share one mask-decoder call), with K targets."""
    sam = backbone.model
    size = backbone.spec["img_size"]
    images, targets = [], []
    for sc in scenes:
        x = torch.from_numpy(sc.image).permute(2, 0, 1).float()
        images.append((x - sam.pixel_mean.cpu()) / sam.pixel_std.cpu())
        picks = rng.choice(len(sc.masks), size=min(prompts_per_image, len(sc.masks)), replace=False)
        masks = [torch.from_numpy(np.ascontiguousarray(sc.masks[k])).float() for k in picks]
        if rng.random() < 0.6:
            boxes = []
            for m in masks:
                ys, xs = torch.nonzero(m > 0, as_tuple=True)
                box = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
                boxes.append((box + torch.from_numpy(rng.normal(0, size * 0.03, 4)).float()).clamp(0, size - 1))
            prompt = {"points": None, "boxes": torch.stack(boxes), "masks": None}
        else:
            n = int(rng.integers(1, 4))
            coords = []
            for m in masks:
                ys, xs = torch.nonzero(m > 0, as_tuple=True)
                idx = torch.from_numpy(rng.integers(0, len(ys), n))
                coords.append(torch.stack([xs[idx], ys[idx]], 1).float())
            coords = torch.stack(coords)
            prompt = {"points": (coords, torch.ones(coords.shape[:2], dtype=torch.long)), "boxes": None, "masks": None}
        targets.append((prompt, torch.stack(masks)))
    return torch.stack(images), targets


def _sam_loss(backbone, images, targets):
    sam = backbone.model
    emb = sam.image_encoder(images)
    pe = sam.prompt_encoder.get_dense_pe()
    size = backbone.spec["img_size"]
    losses, ious = [], []
    for i, (prompt, masks) in enumerate(targets):
        sparse, dense = sam.prompt_encoder(**prompt)
        low, _ = sam.mask_decoder(image_embeddings=emb[i : i + 1], image_pe=pe, sparse_prompt_embeddings=sparse,
                                  dense_prompt_embeddings=dense, multimask_output=False)
        logits = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        losses.append(bce_dice_loss(logits, masks))
        with torch.no_grad():
            p, g = logits > 0, masks > 0
            ious.append(((p & g).sum((1, 2)) / (p | g).sum((1, 2)).clamp_min(1)).mean().item())
    return torch.stack(losses).mean(), float(np.mean(ious))


@torch.no_grad()
def evaluate_sam(backbone, domain: str = "source", n: int = 48, seed: int = 10_000) -> float:
    """Mean IoU of box-prompted (exact box) masks on held-out scenes of a domain."""
    from adapt.tasks.dichotomous import DichotomousTask

    rng = np.random.default_rng(seed)
    task = DichotomousTask(backbone, prompt="box")
    backbone.model.eval()
    ious = []
    for sc in _scenes(rng, n, backbone.spec["img_size"], domain):
        for m in sc.masks[:2]:
            ys, xs = np.nonzero(m)
            prob = task.predict(sc.image, box=[xs.min(), ys.min(), xs.max(), ys.max()])
            p, g = prob > 0.5, m > 0
            ious.append((p & g).sum() / max(1, (p | g).sum()))
    return float(np.mean(ious))


def fit(params, args, step_loss, weight_decay: float) -> float:
    """The pretraining loop both tiny models share: AdamW, warm-up + cosine, gradient clipping, a log
    line every `log_every` steps. `step_loss(step)` draws its batch and returns (loss, log text).
    Returns the training time in seconds."""
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=weight_decay)
    start = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_factor(step, args.warmup, args.steps)
        loss, text = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            el = time.time() - start
            print(f"step {step + 1}/{args.steps} {text} {el:.0f}s eta {el / (step + 1) * (args.steps - step - 1):.0f}s",
                  flush=True)
    return round(time.time() - start, 1)


def pretrain_sam(args) -> dict:
    backbone = build_backbone(args.backbone, seed=args.seed)
    model = backbone.model
    model.train()
    params = [p for p in model.parameters()]
    rng = np.random.default_rng(args.seed)
    size = backbone.spec["img_size"]

    def step_loss(step):
        images, targets = _sam_batch(backbone, _scenes(rng, args.batch_size, size), rng, args.prompts_per_image)
        loss, miou = _sam_loss(backbone, images, targets)
        return loss, f"loss {loss.item():.4f} train-iou {miou:.3f}"

    seconds = fit(params, args, step_loss, weight_decay=0.01)
    metrics = {"source_heldout_box_iou": round(evaluate_sam(backbone, "source"), 4)}
    for domain in args.eval_domains:
        metrics[f"{domain}_heldout_box_iou"] = round(evaluate_sam(backbone, domain), 4)
    metrics["train_seconds"] = seconds
    return {"backbone": backbone, "metrics": metrics}


def save_bundled(backbone, out_dir: Path, metrics: dict, command: str, seed: int,
                 dtype: torch.dtype = torch.float32) -> Path:
    """Write <name>.safetensors (floating tensors stored as `dtype`) and its manifest entry."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{backbone.name}.safetensors"
    tmp = path.with_suffix(".part")
    state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in backbone.model.state_dict().items()}
    # one metadata key: safetensors writes several keys in hash order, which would change the file's sha256
    meta = json.dumps({"name": backbone.name, "command": command, "seed": seed}, sort_keys=True)
    save_file(state, str(tmp), metadata={"adapt": meta})
    os.replace(tmp, path)
    manifest_path = out_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest[backbone.name] = {
        "file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size, "command": command,
        "seed": seed, "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__, "threads": torch.get_num_threads(), "metrics": metrics,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def main(args) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)


def _main(args) -> int:
    torch.manual_seed(args.seed)
    command = (f"python -m adapt pretrain --backbone {args.backbone} --steps {args.steps} --batch-size {args.batch_size} "
               f"--prompts-per-image {args.prompts_per_image} --warmup {args.warmup} --lr {args.lr:g} "
               f"--seed {args.seed} --threads {args.threads} --out weights")
    if args.backbone == "tiny-clip" and (args.init or args.dense_weight != 1.0 or args.object_weight != 0.5):
        command += (f" --dense-weight {args.dense_weight:g} --object-weight {args.object_weight:g}"
                    + (f" --init {args.init}" if args.init else ""))
    if args.backbone == "tiny-sam":
        result = pretrain_sam(args)
    elif args.backbone == "tiny-clip":
        from adapt.pretrain_clip import pretrain_clip

        result = pretrain_clip(args)
    else:
        raise ValueError(f"pretraining is for the bundled tiny backbones (tiny-sam, tiny-clip), not {args.backbone!r}")
    path = save_bundled(result["backbone"], Path(args.out), result["metrics"], command, args.seed,
                        dtype=result.get("dtype", torch.float32))
    print(json.dumps({"file": str(path), "metrics": result["metrics"]}))
    return 0
