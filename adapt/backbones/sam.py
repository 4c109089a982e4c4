"""SAM backbones: segment-anything's own Sam class, built from a catalog entry (official sizes
and the tiny config alike).

Built here rather than through `sam_model_registry` so that every size (tiny included) goes
through one constructor and checkpoints load with `weights_only=True`.
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from adapt.backbones.base import Backbone, BlockLayout, EncoderLayout, load_into, load_state_dict_file
from adapt.backbones.catalog import BackboneEntry


class SamBackbone(Backbone):
    """A built SAM: the image encoder is what the methods adapt, the mask decoder is the head.

    What the dichotomous task and the SAM methods ask of any SAM-family backbone (SAM 2's in
    sam2.py answers the same): `resize` ("letterbox": longest side to the input size, padded),
    `pixel_mean` / `pixel_std` (0..255), `encode` / `decode` (the two network calls of every
    prediction) and `layout` (where the adapted parts sit)."""

    resize = "letterbox"

    @property
    def input_size(self) -> int:
        return self.spec["img_size"]

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
        if self.spec.get("kind") == "tinyvit":
            return tinyvit_layout(self.spec)
        width = self.spec["encoder_embed_dim"]
        blocks = tuple(
            BlockLayout(f"image_encoder.blocks.{i}", width, width) for i in range(self.spec["encoder_depth"])
        )
        return EncoderLayout(
            blocks, stem=("image_encoder.patch_embed.proj",), neck=("image_encoder.neck.0", "image_encoder.neck.2")
        )

    def encoder_shape(self) -> dict:
        if self.spec.get("kind") == "tinyvit":  # its first attention stage
            return {"tokens": (self.input_size // 8) ** 2, "width": self.spec["tinyvit_widths"][1], "depth": 10}
        return {
            "tokens": (self.input_size // self.spec["patch_size"]) ** 2,
            "width": self.spec["encoder_embed_dim"],
            "depth": self.spec["encoder_depth"],
        }

    def example_inputs(self, batch: int = 2, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        size = self.input_size
        images = torch.randn(batch, 3, size, size, generator=g)
        lo = torch.rand(batch, 2, generator=g) * size * 0.4
        hi = lo + size * 0.3 + torch.rand(batch, 2, generator=g) * size * 0.3
        return {"images": images, "boxes": torch.cat([lo, hi], dim=1)}

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.decode(self.encode(inputs["images"]), boxes=inputs["boxes"])

    def inactive(self) -> tuple[str, ...]:
        """MobileSAM's TinyViT carries its ImageNet classifier, which segmentation never runs."""
        return ("image_encoder.norm_head", "image_encoder.head") if self.spec.get("kind") == "tinyvit" else ()

    def blocks(self) -> list:
        if self.spec.get("kind") == "tinyvit":
            return [b for layer in self.model.image_encoder.layers for b in layer.blocks]
        return list(self.model.image_encoder.blocks)


def tinyvit_layout(spec: dict) -> EncoderLayout:
    """MobileSAM's TinyViT: attention blocks in stages 1-3 (per-head qkv, normalising MLPs, a local
    depthwise conv each); the patch embedding's two convs as the stem; stage 0's MBConv convs and
    the patch mergings' convs as further weights; SAM's neck."""
    enc, depths = "image_encoder", spec["tinyvit_depths"]
    blocks = tuple(
        BlockLayout(
            f"{enc}.layers.{i}.blocks.{j}",
            spec["tinyvit_widths"][i],
            spec["tinyvit_widths"][i],
            norm2=None,
            mlp_linears=("mlp.fc1", "mlp.fc2"),
            other_linears=("local_conv.c",),
            qkv_heads=spec["tinyvit_heads"][i],
        )
        for i in range(1, len(depths))
        for j in range(depths[i])
    )
    convs = [f"{enc}.layers.0.blocks.{j}.conv{k}.c" for j in range(depths[0]) for k in (1, 2, 3)]
    convs += [f"{enc}.layers.{i}.downsample.conv{k}.c" for i in range(len(depths) - 1) for k in (1, 2, 3)]
    stem = (f"{enc}.patch_embed.seq.0.c", f"{enc}.patch_embed.seq.2.c")
    return EncoderLayout(blocks, stem=stem, neck=(f"{enc}.neck.0", f"{enc}.neck.2"), others=tuple(convs))


def build_sam_model(spec: dict) -> Sam:
    """segment-anything's Sam; with "kind": "tinyvit", MobileSAM's (the TinyViT encoder, tinyvit.py)."""
    emb = spec["img_size"] // spec.get("patch_size", 16)
    if spec.get("kind") == "tinyvit":
        from adapt.backbones.tinyvit import TinyViTEncoder

        encoder = TinyViTEncoder(spec)
    else:
        encoder = ImageEncoderViT(
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


def build(entry: BackboneEntry, checkpoint=None) -> SamBackbone:
    spec = {"family": "sam", **entry.arch}
    model = build_sam_model(spec)
    weights_id = "random-init"
    if checkpoint is not None:
        state, weights_id = load_state_dict_file(checkpoint)
        load_into(model, state, checkpoint)
    return SamBackbone(
        name=entry.name, family="sam", model=model, spec=spec, weights_id=weights_id, heads=[model.mask_decoder]
    )


def sam_mask_logits(
    sam: Sam,
    images: torch.Tensor,
    boxes: torch.Tensor | None = None,
    points: tuple[torch.Tensor, torch.Tensor] | None = None,
    multimask: bool = False,
    masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Low-resolution mask logits (B, 1 or 3, h, w) for preprocessed images and one prompt each.

    `images` are normalised and padded to the encoder size (Sam.preprocess); boxes are (B, 4) xyxy
    in that frame; points are (coords (B, N, 2), labels (B, N)). With neither, the whole image is
    the box (the prompt-free mode). masks: optional (B, 1, 4h, 4w) low-resolution logits of an
    earlier prediction (SAM's mask_input).
    """
    return sam_decode(sam, sam.image_encoder(images), boxes=boxes, points=points, multimask=multimask, masks=masks)


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
