"""Pretraining of tiny-sam (see adapt/pretrain/__init__.py for the command and the manifest):
segment-anything's Sam class at a tiny size, trained from scratch (every weight) to segment the
object a prompt points at (jittered box or points, several prompts per image sharing one image
embedding, as SAM itself is trained) in the "source" synthetic domain.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from adapt.backbones import build_backbone
from adapt.pretrain.loop import fit
from adapt.tasks.dichotomous import bce_dice_loss


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
        low, _ = sam.mask_decoder(
            image_embeddings=emb[i : i + 1],
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
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
