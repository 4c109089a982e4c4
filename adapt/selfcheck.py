"""Self-check of every method configuration on the tiny backbones: identity at step 0, merge
equivalence, and each method's own invariants (`Handle.check_report`: H-CLIP's text-tower
hyperspherical energy under training).

Each check takes a few optimizer steps first (on a fixed random objective), so merge is tested on
an adapter that has moved away from its initialisation, not on the trivial zero update.
"""

from __future__ import annotations

import torch

from adapt.backbones import build_backbone
from adapt.backbones.catalog import CATALOG, bundled, missing_extra
from adapt.methods import attach, configurations
from adapt.tasks import attach_task_head


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


def check_backbones(family: str) -> list[str]:
    """The tiny backbones every configuration of a family is checked on: the bundled one, and the
    random-init test configs of the family's other architectures (tiny-sam2: SAM 2's Hiera;
    tiny-sam3 where SAM 3's optional package is installed)."""
    return [bundled(family)] + [
        n
        for n, e in CATALOG.items()
        if e.family == family and not e.bundled and not e.official and not missing_extra(n)
    ]


def check_method(method: str, family: str, steps: int = 3, backbone: str | None = None, **options) -> dict:
    backbone = build_backbone(backbone or bundled(family), seed=0)
    attach_task_head(backbone)
    inputs = backbone.example_inputs(batch=2, seed=0)
    reference = _frozen_reference(backbone, inputs)
    handle = attach(backbone, method, **options)
    with torch.no_grad():
        step0 = backbone.forward(inputs)
    result = {
        "method": method,
        "backbone": backbone.name,
        "options": options,
        "step0_max_abs_diff": (step0 - reference).abs().max().item(),
    }
    snapshot = handle.check_snapshot()
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
    report, ok = handle.check_report(snapshot)
    result.update(report, method_checks=sorted(report), method_checks_pass=ok)
    return result


def run_all(steps: int = 3) -> list[dict]:
    """Every configuration the library ships (each method's defaults and its variants)."""
    return [
        check_method(method, family, steps=steps, backbone=name, **options)
        for method, family, options in configurations()
        for name in check_backbones(family)
    ]


def passes(r: dict) -> bool:
    return r["step0_max_abs_diff"] <= 1e-5 and r["merge_max_abs_diff"] <= 1e-4 and r.get("method_checks_pass", True)
