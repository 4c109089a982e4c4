"""Backbones by name: SAM (segment-anything), SAM 2.1 (sam2) and CLIP (open_clip), official sizes
and tiny configs.

`build_backbone("sam-vit-b")` builds the real architecture with random weights (no download);
`build_backbone("sam-vit-b", checkpoint="sam_vit_b_01ec64.pth")` loads a local file with
`weights_only=True` (or a .safetensors file). What each name is lives in one place, the catalog
(catalog.py; tiny configs are data, configs/*.json); the family modules build it (sam.py, clip.py).

    BACKBONES            name -> catalog entry, for every backbone
    family_of(name)      "sam" | "clip", without building anything
"""

from __future__ import annotations

from pathlib import Path

import torch

from adapt.backbones.base import Backbone, load_into, load_state_dict_file
from adapt.backbones.catalog import CATALOG, FAMILIES, BackboneEntry, family_of, names

BACKBONES: dict[str, BackboneEntry] = CATALOG

__all__ = [
    "BACKBONES",
    "FAMILIES",
    "Backbone",
    "BackboneEntry",
    "build_backbone",
    "family_of",
    "load_into",
    "load_state_dict_file",
    "names",
]


def build_backbone(name: str, checkpoint: str | Path | None = None, seed: int = 0) -> Backbone:
    """Build a backbone by name; random-init (seeded) when no checkpoint is given."""
    if name not in CATALOG:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(CATALOG)}")
    entry = CATALOG[name]
    torch.manual_seed(seed)
    # the family modules import segment_anything / sam2 / open_clip: only when asked
    if entry.arch.get("kind") == "sam2":
        from adapt.backbones import sam2 as family
    elif entry.family == "sam":
        from adapt.backbones import sam as family
    else:
        from adapt.backbones import clip as family
    backbone = family.build(entry, checkpoint)
    backbone.model.eval()
    return backbone
