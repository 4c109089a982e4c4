"""Shapes of a backbone without its memory: parameter counts and encoder shapes, on the meta device.

    count_params(backbone, method, **options)   what a method trains on the real architecture, instantly
    base_params(backbone)                       the base model's size, with no method attached
    encoder_shape(backbone)                     tokens, width and depth of the image encoder
    trainable_tensors(backbone, method, **opts) name -> (shape, dtype) of what an adapter file holds

Below the use-case floor (adapt.pipeline re-exports both): the memory planner and the
upstream-format export ask it for shapes without building a model in memory.
"""

from __future__ import annotations

import torch

from adapt.backbones import Backbone, build_backbone
from adapt.methods import attach
from adapt.tasks import attach_task_head


def meta_backbone(name: str, task: str | None = None) -> Backbone:
    """The backbone with its task's head (default: its family's task), built on the meta device:
    shapes only (no memory, no SVD, instant even for ViT-H)."""
    with torch.device("meta"):
        backbone = build_backbone(name)
        attach_task_head(backbone, task)
    return backbone


def count_params(backbone: str, method: str, task: str | None = None, **options) -> dict:
    """What `method` trains on `backbone` for `task` (built on the meta device): the handle's
    description (adapter, head, trainable, base counts, config) and the adapter's share of the
    base model."""
    model = meta_backbone(backbone, task)
    with torch.device("meta"):
        info = attach(model, method, **options).describe()
    # the base model's size: full fine-tuning's "adapter" is the model's own encoder weights
    size = info["base"] + (info["adapter"] if method == "full" else 0)
    info["adapter_percent_of_base"] = round(100.0 * info["adapter"] / size, 4)
    return info


def base_params(backbone: str) -> int:
    """Parameters of the base model that its image path runs (count_params' "base" with nothing
    attached): the parts it never runs (SAM 2's video memory) aside."""
    model = meta_backbone(backbone)
    inactive = model.inactive_parameter_ids()
    return sum(p.numel() for p in model.model.parameters() if id(p) not in inactive)


def encoder_shape(backbone: str) -> dict:
    """{"tokens", "width", "depth"} of the backbone's image encoder (for memory estimates)."""
    return meta_backbone(backbone).encoder_shape()


def trainable_tensors(
    backbone: str, method: str, task: str | None = None, **options
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) of every tensor an adapter of `method` on `backbone` for `task` saves
    (its state_dict), from the meta-device build: what a file read back must hold."""
    model = meta_backbone(backbone, task)
    with torch.device("meta"):
        state = attach(model, method, **options).state_dict()
    return {name: (tuple(t.shape), t.dtype) for name, t in state.items()}
