"""Backbones by name: SAM (segment-anything) and CLIP (open_clip), official sizes and tiny configs.

`build_backbone("sam-vit-b")` builds the real architecture with random weights (no download);
`build_backbone("sam-vit-b", checkpoint="sam_vit_b_01ec64.pth")` loads a local file with
`weights_only=True` (or a .safetensors file). The tiny configs are data (configs/*.json), built
with the same Sam / CLIP classes as the official models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class Backbone:
    """A built model plus what the rest of the library needs to know about it.

    `model` is the module adapters attach to (segment_anything.Sam or open_clip.CLIP).
    `heads` are the modules a task trains next to the adapter (SAM: the mask decoder; CLIP: the
    open-vocabulary head, added by that task). `weights_id` identifies the base weights: the
    sha256 of the checkpoint file, or "random-init" for an architecture built without one.
    """

    name: str
    family: str  # "sam" | "clip"
    model: nn.Module
    spec: dict
    weights_id: str
    heads: list = field(default_factory=list)
    tokenizer: Callable | None = None

    def encoder(self) -> nn.Module:
        """The part the adaptation methods target (SAM image encoder; the whole CLIP)."""
        return self.model.image_encoder if self.family == "sam" else self.model

    def example_inputs(self, batch: int = 2, seed: int = 0) -> dict:
        """Deterministic inputs for checks and benchmarks, at the model's own input size."""
        g = torch.Generator().manual_seed(seed)
        if self.family == "sam":
            size = self.spec["img_size"]
            images = torch.randn(batch, 3, size, size, generator=g)
            lo = torch.rand(batch, 2, generator=g) * size * 0.4
            hi = lo + size * 0.3 + torch.rand(batch, 2, generator=g) * size * 0.3
            return {"images": images, "boxes": torch.cat([lo, hi], dim=1)}
        size = self.spec["vision_cfg"]["image_size"]
        images = torch.randn(batch, 3, size, size, generator=g)
        texts = self.tokenizer(["a photo of a red circle", "a photo of a blue square", "a striped cat"])
        return {"images": images, "texts": texts}

    def forward(self, inputs: dict) -> torch.Tensor:
        """One flat output tensor that depends on every adapted weight (for equivalence checks)."""
        if self.family == "sam":
            from adapt.backbones.sam import sam_mask_logits

            return sam_mask_logits(self.model, inputs["images"], boxes=inputs["boxes"])
        from adapt.backbones.clip import dense_image_features

        img = self.model.encode_image(inputs["images"])
        txt = self.model.encode_text(inputs["texts"])
        out = [img.flatten(), txt.flatten()]
        for head in self.heads:  # the task head sees dense features and normalised class embeddings
            dense = dense_image_features(self.model, inputs["images"])
            out.append(head(dense, torch.nn.functional.normalize(txt, dim=-1), inputs["images"].shape[-2:]).flatten())
        return torch.cat(out)


def _sam_builder(cfg_name: str):
    def build(checkpoint=None):
        from adapt.backbones import sam

        return sam.build(cfg_name, checkpoint)

    return build


def _clip_builder(cfg_name: str):
    def build(checkpoint=None):
        from adapt.backbones import clip

        return clip.build(cfg_name, checkpoint)

    return build


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "sam-vit-b": _sam_builder("sam-vit-b"),
    "sam-vit-l": _sam_builder("sam-vit-l"),
    "sam-vit-h": _sam_builder("sam-vit-h"),
    "tiny-sam": _sam_builder("tiny-sam"),
    "clip-vit-b-16": _clip_builder("clip-vit-b-16"),
    "clip-vit-l-14": _clip_builder("clip-vit-l-14"),
    "tiny-clip": _clip_builder("tiny-clip"),
}


def build_backbone(name: str, checkpoint: str | Path | None = None, seed: int = 0) -> Backbone:
    """Build a backbone by name; random-init (seeded) when no checkpoint is given."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    torch.manual_seed(seed)
    backbone = BACKBONES[name](checkpoint)
    backbone.model.eval()
    return backbone


def load_json_config(name: str) -> dict:
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_state_dict_file(path: str | Path) -> tuple[dict, str]:
    """Read a checkpoint without unpickling code: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors, truncated files
            raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} does not hold a state dict")
    return state, file_sha256(path)


def load_into(model: nn.Module, state: dict, path) -> None:
    """Strict load with a message that names what is missing or unexpected."""
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint {path} does not fit this architecture: "
            f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
        )
