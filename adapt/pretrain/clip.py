"""Pretraining of tiny-clip (see adapt/pretrain/__init__.py for the command and the manifest).

Two losses on source-domain scenes:
- CLIP's symmetric contrastive loss between images and their attribute captions
  ("a large red striped star and a small blue circle on a wooden background");
- a dense term: each patch embedding is classified against the text embeddings of every shape
  name (the template "a photo of a {}." plus "background"), with the label of the shape under the
  patch centre; object and background patches weigh half each (objects cover ~10% of patches). It is what makes the tiny model's dense features carry class information, which a
  model this small does not get from captions alone in a few minutes of CPU time;
- the same dense term for colours (``--colour-weight``): each patch against "a photo of a {colour}
  object." for the 13 colour names plus "background", labelled with the colour of the object under
  the patch centre. Shapes are hard for a 4-layer model in minutes of CPU; colours are not, and they
  are what the studio's bundled open-vocabulary example asks for.
Every shape, including those the open-vocabulary benchmark holds out as "unseen", is seen here:
unseen means never labelled in the few-shot set, not unknown to CLIP.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from adapt.backbones import build_backbone
from adapt.backbones.clip import dense_image_features, image_normalization
from adapt.pretrain.loop import fit

TEMPLATE = "a photo of a {}."


def class_names() -> list[str]:
    from adapt.data.synthetic import CLASSES

    return list(CLASSES)


def colour_names() -> list[str]:
    """The dense colour vocabulary: "background" then "<colour> object" for every colour name."""
    from adapt.data.synthetic import COLOURS

    return ["background"] + [f"{c} object" for c in COLOURS]


def _images(scenes, mean, std) -> torch.Tensor:
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255.0
    return (x - mean[:, None, None]) / std[:, None, None]


def _patch_labels(scenes, grid: int) -> torch.Tensor:
    """Class id at each patch centre, (B, grid, grid)."""
    size = scenes[0].semantic.shape[0]
    centres = ((np.arange(grid) + 0.5) * size / grid).astype(int)
    return torch.from_numpy(np.stack([s.semantic[np.ix_(centres, centres)] for s in scenes])).long()


def _colour_labels(scenes, grid: int) -> torch.Tensor:
    """Colour id (colour_names() index) at each patch centre, (B, grid, grid)."""
    from adapt.data.synthetic import COLOURS

    ids = {c: i + 1 for i, c in enumerate(COLOURS)}
    size = scenes[0].semantic.shape[0]
    centres = ((np.arange(grid) + 0.5) * size / grid).astype(int)
    out = []
    for s in scenes:
        lut = np.array([0] + [ids[o.colour] for o in s.objects], np.int64)
        out.append(lut[s.instance_map()[np.ix_(centres, centres)]])
    return torch.from_numpy(np.stack(out))


def _patch_loss(dense, text, labels, scale, object_weight: float) -> torch.Tensor:
    """Cross-entropy of every patch against the class texts; objects and background weighted apart
    (objects cover ~10% of patches: weigh them as much as the background)."""
    logits = scale * torch.einsum("bdhw,kd->bkhw", dense, text)
    per_patch = F.cross_entropy(logits, labels, reduction="none")
    fg = labels > 0
    obj = per_patch[fg].mean() if fg.any() else per_patch.new_zeros(())
    return object_weight * obj + (1 - object_weight) * per_patch[~fg].mean()


def _step_losses(backbone, scenes, class_tokens, mean, std, object_weight: float = 0.5, colour_tokens=None):
    model = backbone.model
    images = _images(scenes, mean, std)
    captions = backbone.tokenizer([s.caption for s in scenes])
    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(model.encode_text(captions), dim=-1)
    scale = model.logit_scale.exp().clamp(max=100)
    logits = scale * img @ txt.t()
    labels = torch.arange(len(scenes))
    contrastive = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    dense = dense_image_features(model, images)  # (B, D, g, g), normalised
    cls = F.normalize(model.encode_text(class_tokens), dim=-1)  # (K, D)
    dense_loss = _patch_loss(dense, cls, _patch_labels(scenes, dense.shape[-1]), scale, object_weight)
    colour_loss = dense_loss.new_zeros(())
    if colour_tokens is not None:
        col = F.normalize(model.encode_text(colour_tokens), dim=-1)
        colour_loss = _patch_loss(dense, col, _colour_labels(scenes, dense.shape[-1]), scale, object_weight)
    return contrastive, dense_loss, colour_loss, logits


@torch.no_grad()
def evaluate_clip(backbone, domain: str = "source", n: int = 64, seed: int = 20_000) -> dict:
    """Caption retrieval top-1 within the batch, and patch-level zero-shot accuracy on shapes."""
    from adapt.data.synthetic import make_scene

    model = backbone.model
    model.eval()
    rng = np.random.default_rng(seed)
    size = backbone.spec["vision_cfg"]["image_size"]
    scenes = [make_scene(rng, size=size, domain=domain) for _ in range(n)]
    mean, std = image_normalization(backbone)
    class_tokens = backbone.tokenizer([TEMPLATE.format(c) for c in class_names()])
    *_, logits = _step_losses(backbone, scenes, class_tokens, mean, std)
    images = _images(scenes, mean, std)
    dense = dense_image_features(model, images)
    out = {"retrieval_top1": round((logits.argmax(1) == torch.arange(n)).float().mean().item(), 4)}
    colour_tokens = backbone.tokenizer([TEMPLATE.format(c) for c in colour_names()])
    for prefix, tokens, labels in (
        ("patch", class_tokens, _patch_labels(scenes, dense.shape[-1])),
        ("colour_patch", colour_tokens, _colour_labels(scenes, dense.shape[-1])),
    ):
        text = F.normalize(model.encode_text(tokens), dim=-1)
        pred = torch.einsum("bdhw,kd->bkhw", dense, text).argmax(1)
        fg = labels > 0
        out[f"{prefix}_accuracy"] = round((pred == labels).float().mean().item(), 4)
        out[f"{prefix}_accuracy_objects"] = round((pred[fg] == labels[fg]).float().mean().item(), 4)
    return out


def pretrain_clip(args) -> dict:
    from adapt.data.synthetic import make_scene

    init = getattr(args, "init", None)  # continue from a checkpoint (e.g. the bundled file)
    backbone = build_backbone("tiny-clip", checkpoint=init, seed=args.seed)
    model = backbone.model
    model.train()
    params = list(model.parameters())
    rng = np.random.default_rng(args.seed)
    size = backbone.spec["vision_cfg"]["image_size"]
    mean, std = image_normalization(backbone)
    class_tokens = backbone.tokenizer([TEMPLATE.format(c) for c in class_names()])
    colour_weight = getattr(args, "colour_weight", 0.0)
    colour_tokens = backbone.tokenizer([TEMPLATE.format(c) for c in colour_names()]) if colour_weight else None

    def step_loss(step):
        scenes = [make_scene(rng, size=size, domain="source") for _ in range(args.batch_size)]
        contrastive, dense_loss, colour_loss, _ = _step_losses(
            backbone, scenes, class_tokens, mean, std, getattr(args, "object_weight", 0.5), colour_tokens
        )
        loss = contrastive + getattr(args, "dense_weight", 1.0) * dense_loss + colour_weight * colour_loss
        return (
            loss,
            f"contrastive {contrastive.item():.3f} dense {dense_loss.item():.3f} colour {colour_loss.item():.3f}",
        )

    train_seconds = fit(params, args, step_loss, weight_decay=0.05)
    metrics = bundled_metrics(backbone, args.eval_domains)
    metrics["train_seconds"] = train_seconds
    return {"backbone": backbone, "metrics": metrics, "dtype": STORAGE_DTYPE}


# The real 49,408-token BPE vocabulary makes the token embedding most of the model (12.6 MB in
# float32); the bundled file stores float16 (8.6 MB) and the model runs in float32.
STORAGE_DTYPE = torch.float16


def bundled_metrics(backbone, domains) -> dict:
    """Round the weights to their storage precision, then measure: the figures describe the file."""
    with torch.no_grad():
        for p in backbone.model.parameters():
            p.copy_(p.to(STORAGE_DTYPE).float())
    metrics = {f"source_{k}": v for k, v in evaluate_clip(backbone, "source").items()}
    for domain in domains:
        metrics.update({f"{domain}_{k}": v for k, v in evaluate_clip(backbone, domain).items()})
    return metrics
