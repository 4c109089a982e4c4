"""SAM ViT backbones: segment-anything's own Sam class, built from a catalog entry (official sizes
and the tiny config alike). MobileSAM, the same Sam around a TinyViT encoder, is in tinyvit.py.

Built here rather than through `sam_model_registry` so that every size (tiny included) goes
through one constructor and checkpoints load with `weights_only=True`.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.image_encoder import Block

from adapt.backbones.base import (
    BlockLayout,
    EncoderLayout,
    MemoryBlock,
    SamFamilyBackbone,
    load_into,
    load_state_dict_file,
)
from adapt.backbones.catalog import BackboneEntry
from adapt.backbones.fused_attention import attention_mode, fused_form, fused_kept_values, set_attention


class SamBackbone(SamFamilyBackbone):
    """A built SAM (ViT image encoder): the image encoder is what the methods adapt, the mask
    decoder is the head."""

    # segment-anything's registry names of Meta's three sizes, by encoder width
    REGISTRY: ClassVar[dict[int, str]] = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}

    @classmethod
    def input_size_of(cls, spec: dict) -> int:
        return spec["img_size"]

    @classmethod
    def build_encoder(cls, spec: dict) -> torch.nn.Module:
        """segment-anything's ViT image encoder."""
        return ImageEncoderViT(
            depth=spec["encoder_depth"],
            embed_dim=spec["encoder_embed_dim"],
            img_size=spec["img_size"],
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec["encoder_num_heads"],
            patch_size=spec["patch_size"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec["encoder_global_attn_indexes"],
            window_size=spec["window_size"],
            out_chans=spec["prompt_embed_dim"],
        )

    @classmethod
    def build_block(cls, spec: dict, index: int) -> Block:
        """Block `index` of the spec's image encoder alone, as ImageEncoderViT builds it (random
        init): for checks and benchmarks of one block at full size without the whole encoder."""
        grid = spec["img_size"] // spec["patch_size"]
        windowed = index not in spec["encoder_global_attn_indexes"]
        return Block(
            dim=spec["encoder_embed_dim"],
            num_heads=spec["encoder_num_heads"],
            mlp_ratio=4,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=spec["window_size"] if windowed else 0,
            input_size=(grid, grid),
        )

    @classmethod
    def build(cls, entry: BackboneEntry, checkpoint=None) -> SamBackbone:
        spec = cls.spec_for(entry)
        model = build_sam_model(spec, cls.build_encoder(spec))
        weights_id = "random-init"
        if checkpoint is not None:
            state, weights_id = load_state_dict_file(checkpoint)
            load_into(model, state, checkpoint)
        return cls(
            name=entry.name, family="sam", model=model, spec=spec, weights_id=weights_id, heads=[model.mask_decoder]
        )

    @classmethod
    def memory_blocks(cls, spec: dict, attention: str = "fused", device: str = "cuda"):
        """Windowed blocks with global attention at encoder_global_attn_indexes. segment-anything's
        eager attention materialises its matrix; the fused form (adapt.backbones.fused_attention)
        keeps none, and keeps instead what its form on `device` saves (kept_widths)."""
        grid = spec["img_size"] // spec["patch_size"]
        ws, width, heads = spec["window_size"], spec["encoder_embed_dim"], spec["encoder_num_heads"]
        windows = math.ceil(grid / ws) ** 2
        image = []
        for i in range(spec["encoder_depth"]):
            side, sequences = (grid, 1) if i in spec["encoder_global_attn_indexes"] else (ws, windows)
            form = fused_form(attention, device, windowed=sequences > 1)
            kept = fused_kept_values(form, heads, width // heads, side) / width if form != "eager" else 0.0
            image.append(MemoryBlock(grid * grid, width, 4, heads, side * side, sequences, form == "eager", kept))
        return image, []

    @property
    def pixel_mean(self) -> torch.Tensor:
        return self.model.pixel_mean.detach().cpu()  # (3, 1, 1), Sam.preprocess's

    @property
    def pixel_std(self) -> torch.Tensor:
        return self.model.pixel_std.detach().cpu()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, C, g, g) of normalised, padded images (B, 3, S, S)."""
        return self.model.image_encoder(images)

    def decode(self, embeddings: torch.Tensor, **prompt) -> torch.Tensor:
        """Low-resolution mask logits from embeddings and a prompt (see sam_decode)."""
        return sam_decode(self.model, embeddings, **prompt)

    def layout(self) -> EncoderLayout:
        width = self.spec["encoder_embed_dim"]
        blocks = tuple(
            BlockLayout(f"image_encoder.blocks.{i}", width, width) for i in range(self.spec["encoder_depth"])
        )
        return EncoderLayout(
            blocks, stem=("image_encoder.patch_embed.proj",), neck=("image_encoder.neck.0", "image_encoder.neck.2")
        )

    def set_attention(self, mode: str) -> None:
        """ "fused" (the default: adapt.backbones.fused_attention, exact, no N x N matrix in the
        global blocks) or "eager" (segment-anything's own Attention, the reference)."""
        set_attention(self.model.image_encoder, mode)

    @property
    def attention(self) -> str:
        return attention_mode(self.model.image_encoder)

    def encoder_shape(self) -> dict:
        return {
            "tokens": (self.input_size // self.spec["patch_size"]) ** 2,
            "width": self.spec["encoder_embed_dim"],
            "depth": self.spec["encoder_depth"],
        }

    def blocks(self) -> list:
        return list(self.model.image_encoder.blocks)

    def upstream_usage(self, dest: Path, config: Path | None = None) -> str:
        """segment-anything's registry for Meta's three sizes; the same classes otherwise."""
        spec = self.spec
        registry = self.REGISTRY.get(spec["encoder_embed_dim"])
        if registry and spec["img_size"] == 1024 and spec["encoder_depth"] in (12, 24, 32):
            return (
                "from segment_anything import sam_model_registry, SamPredictor\n"
                f"sam = sam_model_registry[{registry!r}](checkpoint={str(dest)!r})"
            )
        encoder = {k: spec[k] for k in spec if k.startswith("encoder_") or k == "img_size"}
        return (
            f"# {self.name} is not one of segment-anything's registry sizes: build its Sam with the same classes\n"
            f"# (encoder {json.dumps(encoder)})\n"
            f"sam.load_state_dict(torch.load({str(dest)!r}))"
        )


def build_sam_model(spec: dict, encoder: torch.nn.Module | None = None) -> Sam:
    """segment-anything's Sam around an image encoder (default: the ViT of `spec`); MobileSAM's
    is the same Sam around its TinyViT encoder (tinyvit.py)."""
    emb = spec["img_size"] // spec.get("patch_size", 16)
    if encoder is None:
        encoder = SamBackbone.build_encoder(spec)
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=spec["prompt_embed_dim"],
            image_embedding_size=(emb, emb),
            input_image_size=(spec["img_size"], spec["img_size"]),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=spec["prompt_embed_dim"],
                mlp_dim=spec["decoder_mlp_dim"],
                num_heads=spec["decoder_num_heads"],
            ),
            transformer_dim=spec["prompt_embed_dim"],
            iou_head_depth=3,
            iou_head_hidden_dim=spec["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def sam_decode(
    sam: Sam,
    embeddings: torch.Tensor,
    boxes: torch.Tensor | None = None,
    points: tuple[torch.Tensor, torch.Tensor] | None = None,
    multimask: bool = False,
    masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prompt encoder + mask decoder on image embeddings already computed (B, C, h, w): the cheap
    part of SAM, what an interactive click costs once the embedding is cached.

    masks: (B, 1, 4h, 4w) low-resolution logits of an earlier prediction, SAM's mask_input (the
    decoder's own output size); only meaningful for a prompt encoder trained with mask inputs.
    """
    if boxes is None and points is None:
        size = sam.image_encoder.img_size
        boxes = embeddings.new_tensor([0.0, 0.0, size - 1.0, size - 1.0]).expand(embeddings.shape[0], 4)
    dense_pe = sam.prompt_encoder.get_dense_pe()
    out = []
    for i in range(embeddings.shape[0]):
        sparse, dense = sam.prompt_encoder(
            points=None if points is None else (points[0][i : i + 1], points[1][i : i + 1]),
            boxes=None if boxes is None else boxes[i : i + 1],
            masks=None if masks is None else masks[i : i + 1],
        )
        logits, _ = sam.mask_decoder(
            image_embeddings=embeddings[i : i + 1],
            image_pe=dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        out.append(logits)
    return torch.cat(out, dim=0)
