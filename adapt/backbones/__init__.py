"""Backbones by name: SAM (segment-anything), MobileSAM, SAM 2.1 (sam2) and CLIP (open_clip),
official sizes and tiny configs.

`build_backbone("sam-vit-b")` builds the real architecture with random weights (no download);
`build_backbone("sam-vit-b", checkpoint="sam_vit_b_01ec64.pth")` loads a local file with
`weights_only=True` (or a .safetensors file). What each name is lives in one place, the catalog
(catalog.py; tiny configs are data, configs/*.json); what each architecture is lives in its
Backbone subclass (sam.py: SAM ViT, tinyvit.py: MobileSAM, sam2.py: SAM 2 Hiera, clip.py: CLIP),
which builds it and answers what the planner and the exporters ask of it.

    BACKBONES            name -> catalog entry, for every backbone
    family_of(name)      "sam" | "clip", without building anything
    architecture(name)   the Backbone subclass of a name (or of a spec), without building anything
    spec_of(name)        its architecture's settings, without building anything
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from adapt.backbones import catalog
from adapt.backbones.base import Backbone, MemoryBlock, load_into, load_state_dict_file
from adapt.backbones.catalog import CATALOG, FAMILIES, BackboneEntry, bundled, family_of, missing_extra, names

BACKBONES: dict[str, BackboneEntry] = CATALOG

# architecture (a catalog entry's kind) -> its Backbone subclass, imported when first asked: the
# modules import segment_anything (with torchvision), sam2 or open_clip
ARCHITECTURES = {
    "sam": "adapt.backbones.sam:SamBackbone",
    "tinyvit": "adapt.backbones.tinyvit:MobileSamBackbone",
    "sam2": "adapt.backbones.sam2:Sam2Backbone",
    "sam3": "adapt.backbones.sam3:Sam3Backbone",
    "clip": "adapt.backbones.clip:ClipBackbone",
}

__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "FAMILIES",
    "Backbone",
    "BackboneEntry",
    "MemoryBlock",
    "architecture",
    "build_backbone",
    "bundled",
    "family_of",
    "load_into",
    "load_state_dict_file",
    "missing_extra",
    "names",
    "spec_of",
]


def architecture(of: str | dict) -> type[Backbone]:
    """The Backbone subclass of a backbone name, or of a spec (a built backbone's `spec`)."""
    kind = catalog.get(of).kind if isinstance(of, str) else of.get("kind", of["family"])
    if kind not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {kind!r}; known: {', '.join(ARCHITECTURES)}")
    module, cls = ARCHITECTURES[kind].split(":")
    return getattr(importlib.import_module(module), cls)


def spec_of(name: str) -> dict:
    """The architecture's settings of a backbone name (what a built backbone's `spec` holds
    without a checkpoint), for questions asked of the architecture without building it."""
    return architecture(name).spec_for(catalog.get(name))


def build_backbone(
    name: str, checkpoint: str | Path | None = None, seed: int = 0, attention: str = "fused"
) -> Backbone:
    """Build a backbone by name; random-init (seeded) when no checkpoint is given. `attention`:
    "fused" (exact fused attention where the architecture has it: SAM ViT, see
    adapt/backbones/fused_attention.py) or "eager" (the upstream code's own, the reference)."""
    entry = catalog.get(name)
    torch.manual_seed(seed)
    backbone = architecture(name).build(entry, checkpoint)
    backbone.set_attention(attention)
    backbone.model.eval()
    return backbone
