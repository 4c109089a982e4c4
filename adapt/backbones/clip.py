"""CLIP backbones: open_clip's CLIP class, official ViT-B/16 and ViT-L/14 and a tiny config.

Official shapes come from open_clip's own model configs; the tiny one is configs/tiny-clip.json,
built with the same class and the real BPE tokenizer (only its context length is shorter).
"""

from __future__ import annotations

from pathlib import Path

import torch

from adapt.backbones.base import Backbone, MemoryBlock, load_into, load_state_dict_file
from adapt.backbones.catalog import BackboneEntry

# The settings of official weights that the architecture's name does not give (OpenAI's QuickGELU
# and image normalisation): they travel with an upstream-format export
WEIGHTS_SETTINGS = ("quick_gelu", "image_mean", "image_std")


class ClipBackbone(Backbone):
    """A built CLIP: both towers are what the methods adapt; the open-vocabulary head, added by
    that task, is the head."""

    @classmethod
    def spec_for(cls, entry: BackboneEntry) -> dict:
        """An official entry's open_clip config (by its open_clip name), or the tiny one's own."""
        if "open_clip_name" in entry.arch:
            import open_clip  # imported where needed: it costs ~3 s, and SAM-only work never needs it

            return {"family": "clip", **entry.arch, **open_clip.get_model_config(entry.arch["open_clip_name"])}
        return {"family": "clip", **entry.arch}

    @classmethod
    def build(cls, entry: BackboneEntry, checkpoint=None) -> ClipBackbone:
        from open_clip.model import CLIP
        from open_clip.tokenizer import SimpleTokenizer

        spec = cls.spec_for(entry)
        spec.update(_official_settings(entry.name, checkpoint))
        cfg = {k: v for k, v in spec.items() if k in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")}
        model = CLIP(**cfg)
        weights_id = "random-init"
        if checkpoint is not None:
            state, weights_id = load_state_dict_file(checkpoint)
            load_into(model, state, checkpoint)
        tokenizer = SimpleTokenizer(context_length=spec["text_cfg"].get("context_length", 77))
        return cls(name=entry.name, family="clip", model=model, spec=spec, weights_id=weights_id, tokenizer=tokenizer)

    @classmethod
    def input_size_of(cls, spec: dict) -> int:
        return spec["vision_cfg"]["image_size"]

    @classmethod
    def memory_blocks(cls, spec: dict, **attention) -> tuple[list[MemoryBlock], list[MemoryBlock]]:
        """Both towers' residual blocks; open_clip's nn.MultiheadAttention runs fused
        scaled-dot-product attention, which keeps no length^2 matrix."""
        v, t = spec["vision_cfg"], spec["text_cfg"]
        tokens = (v["image_size"] // v["patch_size"]) ** 2 + 1
        heads = v["width"] // v.get("head_width", 64)
        image = MemoryBlock(tokens, v["width"], v.get("mlp_ratio", 4), heads, tokens, 1, explicit=False)
        n = t["context_length"]
        text = MemoryBlock(n, t["width"], t.get("mlp_ratio", 4), t["heads"], n, 1, explicit=False)
        return [image] * v["layers"], [text] * t["layers"]

    def weights_settings(self) -> dict:
        """The loaded weights' own settings (OpenAI's QuickGELU and normalisation)."""
        return {k: v for k, v in self.spec.items() if k in WEIGHTS_SETTINGS}

    def upstream_config(self) -> dict | None:
        """open_clip's model config where open_clip does not know the architecture by name (the
        bundled tiny one); None for its own architectures."""
        if "open_clip_name" in self.spec:
            return None
        arch = {k: self.spec.get(k) for k in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")}
        return {k: v for k, v in arch.items() if v is not None}

    def upstream_usage(self, dest: Path, config: Path | None = None) -> str:
        """open_clip.create_model by the architecture's name; an architecture open_clip does not
        know is registered from its `config` file first, under the checkpoint's stem."""
        name = self.spec.get("open_clip_name") or dest.stem
        quick = ", force_quick_gelu=True" if self.spec.get("quick_gelu") else ""
        lines = ["import open_clip"]
        if config is not None:
            lines.append(f"open_clip.add_model_config({str(config)!r})  # its architecture")
        lines.append(f"model = open_clip.create_model({name!r}, pretrained={str(dest)!r}{quick})")
        return "\n".join(lines)

    def encoder_shape(self) -> dict:
        v = self.spec["vision_cfg"]
        return {"tokens": (v["image_size"] // v["patch_size"]) ** 2 + 1, "width": v["width"], "depth": v["layers"]}

    def example_inputs(self, batch: int = 2, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        images = torch.randn(batch, 3, self.input_size, self.input_size, generator=g)
        texts = self.tokenizer(["a photo of a red circle", "a photo of a blue square", "a striped cat"])
        return {"images": images, "texts": texts}

    def forward(self, inputs: dict) -> torch.Tensor:
        img = self.model.encode_image(inputs["images"])
        txt = self.model.encode_text(inputs["texts"])
        out = [img.flatten(), txt.flatten()]
        for head in self.heads:  # the task head sees dense features and normalised class embeddings
            dense = dense_image_features(self.model, inputs["images"])
            out.append(head(dense, torch.nn.functional.normalize(txt, dim=-1), inputs["images"].shape[-2:]).flatten())
        return torch.cat(out)

    def blocks(self) -> list:
        return list(self.model.visual.transformer.resblocks) + list(self.model.transformer.resblocks)


def _official_settings(name: str, checkpoint) -> dict:
    """QuickGELU and the image normalisation of an official open_clip checkpoint, from the registry
    entry adapt.weights finds for its file. OpenAI's weights were trained with QuickGELU; loading
    them into GELU succeeds silently and gives wrong features."""
    if checkpoint is None:
        return {}
    from adapt.weights import clip_checkpoint_for_file

    entry = clip_checkpoint_for_file(name, checkpoint)
    if entry is None:
        return {}
    out = {"quick_gelu": entry.quick_gelu}
    if entry.mean and entry.std:
        out["image_mean"], out["image_std"] = list(entry.mean), list(entry.std)
    return out


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def image_normalization(backbone) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) the backbone's image tower expects, as (3,) tensors on [0, 1] pixel values."""
    spec = backbone.spec if hasattr(backbone, "spec") else {}
    mean = spec.get("image_mean") or getattr(getattr(backbone, "model", backbone).visual, "image_mean", None)
    std = spec.get("image_std") or getattr(getattr(backbone, "model", backbone).visual, "image_std", None)
    return torch.tensor(mean or OPENAI_MEAN), torch.tensor(std or OPENAI_STD)


def attention_targets(model):
    """(tower, layer index, nn.MultiheadAttention) for every residual attention block of both towers."""
    for tower, transformer in (("text", model.transformer), ("image", model.visual.transformer)):
        for i, block in enumerate(transformer.resblocks):
            yield tower, i, block.attn


def dense_image_features(model, images: torch.Tensor) -> torch.Tensor:
    """Per-patch embeddings in the joint image-text space, (B, embed_dim, h, w), L2-normalised.

    The patch tokens go through the same final LayerNorm and projection as the pooled class token,
    which is what lets them be compared with class text embeddings (as CAT-Seg and MaskCLIP do).
    """
    visual = model.visual
    x = visual._embeds(images)
    x = visual.transformer(x)
    x = visual.ln_post(x)[:, 1:]
    if visual.proj is not None:
        x = x @ visual.proj
    b, n, d = x.shape
    side = int(round(n**0.5))
    x = x.transpose(1, 2).reshape(b, d, side, side)
    return torch.nn.functional.normalize(x, dim=1)


def text_embeddings(model, tokenizer, classes: list[str], templates: list[str]) -> torch.Tensor:
    """(K, embed_dim) L2-normalised class embeddings, averaged over prompt templates."""
    prompts = [t.format(c) for c in classes for t in templates]
    device = next(model.parameters()).device
    emb = model.encode_text(tokenizer(prompts).to(device), normalize=True)
    emb = emb.reshape(len(classes), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)
