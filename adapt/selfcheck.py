"""Self-check of every method on the tiny backbones: identity at step 0, merge equivalence, and for
H-CLIP the invariance of the text tower's hyperspherical energy under training.

Each check takes a few optimizer steps first (on a fixed random objective), so merge is tested on
an adapter that has moved away from its initialisation, not on the trivial zero update.
"""

from __future__ import annotations

import torch

from adapt.backbones import build_backbone
from adapt.methods import METHODS, attach
from adapt.tasks import attach_task_head

TINY = {"sam": "tiny-sam", "clip": "tiny-clip"}


def _frozen_reference(backbone, inputs):
    for p in backbone.model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        return backbone.forward(inputs)


def train_steps(handle, inputs, steps: int = 3, lr: float = 1e-2, seed: int = 0) -> None:
    """A few AdamW steps on a fixed random target, through the handle's own parameter groups."""
    groups = [{"params": g.params, "lr": lr * g.lr_scale} for g in handle.trainable_groups()]
    if not groups:
        return
    torch.manual_seed(seed)
    with torch.no_grad():
        target = torch.randn_like(handle.backbone.forward(inputs))
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    for _ in range(steps):
        loss = (handle.backbone.forward(inputs) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def check_method(method: str, family: str, steps: int = 3, **options) -> dict:
    from adapt.methods.hclip import hyperspherical_energy, text_tower_weights

    backbone = build_backbone(TINY[family], seed=0)
    attach_task_head(backbone)
    inputs = backbone.example_inputs(batch=2, seed=0)
    reference = _frozen_reference(backbone, inputs)
    handle = attach(backbone, method, **options)
    with torch.no_grad():
        step0 = backbone.forward(inputs)
    result = {"method": method, "backbone": backbone.name, "options": options,
              "step0_max_abs_diff": (step0 - reference).abs().max().item()}
    if method == "hclip":
        he_before = {k: hyperspherical_energy(w) for k, w in text_tower_weights(backbone.model).items()}
        image_before = backbone.model.visual.transformer.resblocks[0].attn.in_proj_weight.detach().clone()
    train_steps(handle, inputs, steps=steps)
    with torch.no_grad():
        adapted = backbone.forward(inputs)
        handle.merge()
        merged = backbone.forward(inputs)
        handle.unmerge()
        unmerged = backbone.forward(inputs)
    result["merge_max_abs_diff"] = (merged - adapted).abs().max().item()
    result["unmerge_max_abs_diff"] = (unmerged - adapted).abs().max().item()
    result["moved_from_base"] = (adapted - reference).abs().max().item()
    if method == "hclip":
        he_after = {k: hyperspherical_energy(w) for k, w in text_tower_weights(backbone.model).items()}
        result["text_he_max_rel_change"] = max(abs(he_after[k] - he_before[k]) / he_before[k] for k in he_before)
        image_after = backbone.model.visual.transformer.resblocks[0].attn.in_proj_weight.detach()
        result["image_weight_rel_change"] = ((image_after - image_before).norm() / image_before.norm()).item()
    return result


def run_all(steps: int = 3) -> list[dict]:
    results = []
    for name, cls in METHODS.items():
        for family in cls.families:
            results.append(check_method(name, family, steps=steps))
            if name == "parser":
                results.append(check_method(name, family, steps=steps, scope="conv"))
            if name == "hclip":
                results.append(check_method(name, family, steps=steps, dcrc=False))
                results.append(check_method(name, family, steps=steps, orthogonal="both"))
    return results


def passes(r: dict) -> bool:
    ok = r["step0_max_abs_diff"] <= 1e-5 and r["merge_max_abs_diff"] <= 1e-4
    if "text_he_max_rel_change" in r:
        ok = ok and r["text_he_max_rel_change"] <= 1e-4
        ok = ok and (r["image_weight_rel_change"] > 0 or r["options"].get("orthogonal") == "both")
    return ok
