"""CLIP backbones: open_clip's CLIP class, official ViT-B/16 and ViT-L/14 and a tiny config.

Official shapes come from open_clip's own model configs; the tiny one is configs/tiny-clip.json,
built with the same class and the real BPE tokenizer (only its context length is shorter).
"""

from __future__ import annotations

import torch

from adapt.backbones.base import Backbone, load_into, load_state_dict_file
from adapt.backbones.catalog import BackboneEntry


class ClipBackbone(Backbone):
    """A built CLIP: both towers are what the methods adapt; the open-vocabulary head, added by
    that task, is the head."""

    @property
    def input_size(self) -> int:
        return self.spec["vision_cfg"]["image_size"]

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


def spec_for(entry: BackboneEntry) -> dict:
    if "open_clip_name" in entry.arch:
        import open_clip  # imported where needed: it costs ~3 s, and SAM-only work never needs it

        return {"family": "clip", **entry.arch, **open_clip.get_model_config(entry.arch["open_clip_name"])}
    return {"family": "clip", **entry.arch}


def build(entry: BackboneEntry, checkpoint=None) -> ClipBackbone:
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    spec = spec_for(entry)
    spec.update(_official_settings(entry.name, checkpoint))
    cfg = {k: v for k, v in spec.items() if k in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")}
    model = CLIP(**cfg)
    weights_id = "random-init"
    if checkpoint is not None:
        state, weights_id = load_state_dict_file(checkpoint)
        load_into(model, state, checkpoint)
    tokenizer = SimpleTokenizer(context_length=spec["text_cfg"].get("context_length", 77))
    return ClipBackbone(
        name=entry.name, family="clip", model=model, spec=spec, weights_id=weights_id, tokenizer=tokenizer
    )


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
