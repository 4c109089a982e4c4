"""SAM 2.1 backbones in image mode: Meta's own classes from the `sam2` package (Hiera trunk, FPN
neck, SAM 2 prompt encoder and mask decoder), run the way SAM2ImagePredictor runs them.

Built here from the catalog entry rather than through sam2's hydra configs, so that every size
(the tiny test config included) goes through one constructor, and official checkpoints load with
`weights_only=True`. The settings are those of Meta's configs/sam2.1/*.yaml, with what
`build_sam2` adds by default (the mask decoder's dynamic fallback to its multi-mask outputs when
the single mask is unstable, at evaluation). The memory attention and memory encoder only serve
video; they are built because the checkpoints hold them, and never run here.

Where SAM 2 differs from SAM, and how the rest of the library sees it:
- input: the image is resized to a square without keeping its aspect ratio (no padding), in
  [0, 1] with ImageNet statistics (SAM2Transforms); `resize = "stretch"` tells the task;
- the cached embedding is a feature pyramid (`Sam2Features`): the top-level image embedding, with
  SAM 2's no-memory embedding added, and the two high-resolution levels the mask decoder reads,
  already projected by its conv_s0 / conv_s1 (as forward_image does);
- a box is two labelled corner points (labels 2, 3) placed before the clicks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from adapt.backbones.base import (
    BlockLayout,
    EncoderLayout,
    MemoryBlock,
    PortableBuild,
    SamFamilyBackbone,
    load_into,
    load_state_dict_file,
)
from adapt.backbones.catalog import BackboneEntry

# SAM2ImagePredictor's image statistics (on [0, 1] pixels), here on 0..255 as SAM's
PIXEL_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
PIXEL_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]


# SAM2Base's parts that only video tracking runs (image mode adds no_mem_embed, and nothing else of these)
VIDEO_ONLY = (
    "mask_downsample",
    "memory_attention",
    "memory_encoder",
    "obj_ptr_proj",
    "obj_ptr_tpos_proj",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
)


@dataclass
class Sam2Features:
    """One batch of cached SAM 2 image features: `image_embed` (B, C, g, g) and `high_res`, the
    decoder's two finer levels (B, C/8, 4g, 4g) and (B, C/4, 2g, 2g). Indexing and slicing take
    images, as they do on SAM's embedding tensor."""

    image_embed: torch.Tensor
    high_res: tuple[torch.Tensor, ...]

    def __getitem__(self, index) -> Sam2Features:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Sam2Features(self.image_embed[index], tuple(h[index] for h in self.high_res))

    def __len__(self) -> int:
        return self.image_embed.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.image_embed.shape

    def to(self, *args, **kwargs) -> Sam2Features:
        return Sam2Features(self.image_embed.to(*args, **kwargs), tuple(h.to(*args, **kwargs) for h in self.high_res))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors, in a fixed order (adapt.embedding_cache stores and joins them)."""
        return (self.image_embed, *self.high_res)

    @classmethod
    def from_tensors(cls, tensors: tuple[torch.Tensor, ...]) -> Sam2Features:
        return cls(tensors[0], tuple(tensors[1:]))


SAM2_CONFIGS = {  # sam2's own config files for the official sizes
    "sam2.1-hiera-tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1-hiera-small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1-hiera-base-plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1-hiera-large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


class Sam2Backbone(SamFamilyBackbone):
    """A built SAM 2.1 (sam2.modeling.sam2_base.SAM2Base): the Hiera trunk and the FPN neck are
    what the methods adapt, the mask decoder is the head, the prompt encoder stays frozen."""

    resize = "stretch"
    pixel_statistics: ClassVar = (PIXEL_MEAN, PIXEL_STD)  # (mean, std) on 0..255 pixels
    onnx_refusal = (
        "ONNX export of SAM 2 backbones is not supported yet; "
        "`export --official` writes the merged model in sam2's own checkpoint format"
    )

    @classmethod
    def input_size_of(cls, spec: dict) -> int:
        return spec["image_size"]

    @classmethod
    def build(cls, entry: BackboneEntry, checkpoint=None) -> Sam2Backbone:
        spec = cls.spec_for(entry)
        model = cls.build_model(spec)
        weights_id = "random-init"
        if checkpoint is not None:
            state, weights_id = load_state_dict_file(checkpoint)
            # Meta's files: {"model": state dict}, in the upstream project's names
            load_into(model, cls.from_upstream(state.get("model", state)), checkpoint)
        backbone = cls(name=entry.name, family="sam", model=model, spec=spec, weights_id=weights_id)
        backbone.heads = [backbone.interactive.sam_mask_decoder]
        return backbone

    @classmethod
    def build_model(cls, spec: dict):
        """The upstream model, random-init, from the catalog's settings."""
        return build_sam2_model(spec)

    @staticmethod
    def from_upstream(state: dict) -> dict:
        """An upstream checkpoint's state dict in this model's names (sam2's are the same)."""
        return state

    @classmethod
    def memory_blocks(cls, spec: dict, **attention) -> tuple[list[MemoryBlock], list[MemoryBlock]]:
        """Hiera: stage k works at 1/4 / 2^k of the input with width and heads x 2^k, in windows of
        window_spec[k] (global attention in global_att_blocks); its attention is PyTorch's fused
        scaled_dot_product_attention, which keeps no length^2 matrix."""
        blocks = []
        for k, depth in enumerate(spec["stages"]):
            grid = spec["image_size"] // 4 // 2**k
            ws = spec["window_spec"][k]
            for _ in range(depth):
                glob = len(blocks) in spec["global_att_blocks"]
                blocks.append(
                    MemoryBlock(
                        tokens=grid * grid,
                        width=spec["embed_dim"] * 2**k,
                        mlp=4,
                        heads=spec["num_heads"] * 2**k,
                        length=grid * grid if glob else ws * ws,
                        sequences=1 if glob else math.ceil(grid / ws) ** 2,
                        explicit=False,
                    )
                )
        return blocks, []

    @classmethod
    def embedding_values(cls, spec: dict) -> int:
        """The pyramid: the image embedding (d x g x g) and the decoder's two finer levels (d/8
        channels at 4g, d/4 at 2g), four times as much as SAM's in all."""
        grid, d = cls.embedding_grid(spec), spec["d_model"]
        return d * grid * grid + d // 8 * (4 * grid) ** 2 + d // 4 * (2 * grid) ** 2

    @classmethod
    def upstream_checkpoint(cls, state: dict) -> dict:
        return {"model": state}  # sam2's build_sam2 reads ckpt["model"]

    def upstream_usage(self, dest: Path, config: Path | None = None) -> str:
        config = SAM2_CONFIGS.get(self.name)
        if config:
            return (
                "from sam2.build_sam import build_sam2\n"
                "from sam2.sam2_image_predictor import SAM2ImagePredictor\n"
                f"predictor = SAM2ImagePredictor(build_sam2({config!r}, {str(dest)!r}))"
            )
        return (
            f"# {self.name} is not one of sam2's config files: build its SAM2Base with the same classes\n"
            "# (adapt.backbones.sam2.build_sam2_model(spec) with this backbone's spec)\n"
            f"model.load_state_dict(torch.load({str(dest)!r})['model'])"
        )

    @property
    def pixel_mean(self) -> torch.Tensor:
        return torch.tensor(self.pixel_statistics[0]).view(3, 1, 1)

    @property
    def pixel_std(self) -> torch.Tensor:
        return torch.tensor(self.pixel_statistics[1]).view(3, 1, 1)

    @property
    def interactive(self):
        """The module holding the prompt encoder and mask decoder (SAM2Base itself)."""
        return self.model

    def blocks(self) -> list:
        return list(self.model.image_encoder.trunk.blocks)

    def inactive(self) -> tuple[str, ...]:
        """The video memory (memory attention and encoder, object pointers, temporal encodings)."""
        return VIDEO_ONLY

    def layout(self) -> EncoderLayout:
        trunk = self.model.image_encoder.trunk
        blocks = []
        for i, block in enumerate(trunk.blocks):
            blocks.append(
                BlockLayout(
                    path=f"image_encoder.trunk.blocks.{i}",
                    width_in=block.dim,
                    width=block.dim_out,
                    mlp_linears=("mlp.layers.0", "mlp.layers.1"),
                    # the stage's first block widens the stream through its own linear shortcut
                    other_linears=("proj",) if block.dim != block.dim_out else (),
                )
            )
        necks = tuple(f"image_encoder.neck.convs.{i}.conv" for i in range(len(self.model.image_encoder.neck.convs)))
        return EncoderLayout(
            blocks=tuple(blocks), stem=("image_encoder.trunk.patch_embed.proj",), neck=necks, encoder="image_encoder"
        )

    def encoder_shape(self) -> dict:
        """Hiera is a pyramid: tokens and width of its first stage, depth over all stages (the
        planner reads `stages` for the rest)."""
        trunk = self.model.image_encoder.trunk
        grid = self.input_size // 4
        return {"tokens": grid * grid, "width": trunk.blocks[0].dim, "depth": len(trunk.blocks)}

    def encoder_parameters(self) -> list:
        """The image encoder's, the mask decoder's conv_s0 / conv_s1 (forward_image applies them to
        the finer levels) and no_mem_embed."""
        model = self.model
        extra = (
            [model.sam_mask_decoder.conv_s0, model.sam_mask_decoder.conv_s1]
            if model.use_high_res_features_in_sam
            else []
        )
        return [*model.image_encoder.parameters(), *(p for m in extra for p in m.parameters()), model.no_mem_embed]

    def encode(self, images: torch.Tensor) -> Sam2Features:
        """What SAM2ImagePredictor.set_image computes for normalised square images (B, 3, S, S)."""
        model = self.model
        out = model.forward_image(images)
        _, feats, _, sizes = model._prepare_backbone_features(out)
        if model.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + model.no_mem_embed
        maps = [f.permute(1, 2, 0).reshape(f.shape[1], -1, *s) for f, s in zip(feats, sizes)]
        return Sam2Features(maps[-1], tuple(maps[:-1]))

    def decode(
        self,
        features: Sam2Features,
        boxes: torch.Tensor | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        multimask: bool = False,
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Low-resolution mask logits (B, 1 or 3, 4g, 4g), one prompt per image, as
        SAM2ImagePredictor._predict: boxes (B, 4) xyxy and points ((B, N, 2), (B, N)) in the input
        frame; neither: the whole image as the box."""
        model = self.interactive
        batch = features.image_embed.shape[0]
        if boxes is None and points is None:
            size = self.input_size
            boxes = features.image_embed.new_tensor([0.0, 0.0, size - 1.0, size - 1.0]).expand(batch, 4)
        pe = model.sam_prompt_encoder.get_dense_pe()
        out = []
        for i in range(batch):
            coords, labels = [], []
            if boxes is not None:
                coords.append(boxes[i : i + 1].reshape(1, 2, 2))
                labels.append(torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device))
            if points is not None:
                coords.append(points[0][i : i + 1])
                labels.append(points[1][i : i + 1].to(torch.int))
            sparse, dense = model.sam_prompt_encoder(
                points=(torch.cat(coords, 1), torch.cat(labels, 1)),
                boxes=None,
                masks=None if masks is None else masks[i : i + 1],
            )
            low, _, _, _ = model.sam_mask_decoder(
                image_embeddings=features.image_embed[i : i + 1],
                image_pe=pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                repeat_image=False,
                high_res_features=[h[i : i + 1] for h in features.high_res],
            )
            out.append(low)
        return torch.cat(out, dim=0)


def _video_memory(spec: dict) -> tuple:
    """(memory attention, memory encoder): SAM 2's video memory, built because the checkpoints
    hold it, never run in image mode."""
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam.transformer import RoPEAttention

    d, mem = spec["d_model"], spec["memory_dim"]
    grid = spec["image_size"] // 16

    def rope(**kw):
        return RoPEAttention(
            rope_theta=10000.0,
            feat_sizes=[grid, grid],
            embedding_dim=d,
            num_heads=1,
            downsample_rate=1,
            dropout=0.1,
            **kw,
        )

    layer = MemoryAttentionLayer(
        activation="relu",
        dim_feedforward=spec["memory_ffn"],
        dropout=0.1,
        pos_enc_at_attn=False,
        self_attention=rope(),
        d_model=d,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        cross_attention=rope(rope_k_repeat=True, kv_in_dim=mem),
    )
    memory_attention = MemoryAttention(d_model=d, pos_enc_at_input=True, layer=layer, num_layers=spec["memory_layers"])
    memory_encoder = MemoryEncoder(
        out_dim=mem,
        position_encoding=PositionEmbeddingSine(num_pos_feats=mem, normalize=True, scale=None, temperature=10000),
        mask_downsampler=MaskDownSampler(kernel_size=3, stride=2, padding=1, embed_dim=d),
        fuser=Fuser(
            CXBlock(dim=d, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True), num_layers=2
        ),
        in_dim=d,
    )
    return memory_attention, memory_encoder


# the multi-mask settings of Meta's SAM 2.1 configs (and of SAM 3's tracker), with what build_sam2
# adds by default (apply_postprocessing=True): the dynamic fallback to the multi-mask outputs
MULTIMASK = dict(
    multimask_output_in_sam=True,
    multimask_output_for_tracking=True,
    multimask_min_pt_num=0,
    multimask_max_pt_num=1,
    sam_mask_decoder_extra_args={
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    },
)


def build_sam2_model(spec: dict):
    """SAM2Base from the catalog's settings (Meta's configs/sam2.1 values for the official sizes)."""
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam2_base import SAM2Base

    d, embed = spec["d_model"], spec["embed_dim"]
    with PortableBuild():
        trunk = Hiera(
            embed_dim=embed,
            num_heads=spec["num_heads"],
            stages=tuple(spec["stages"]),
            global_att_blocks=tuple(spec["global_att_blocks"]),
            window_pos_embed_bkg_spatial_size=tuple(spec["window_pos_embed_bkg_spatial_size"]),
            window_spec=tuple(spec["window_spec"]),
        )
    channels = [embed * 2**k for k in reversed(range(len(spec["stages"])))]
    neck = FpnNeck(
        position_encoding=PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None, temperature=10000),
        d_model=d,
        backbone_channel_list=channels,
        fpn_top_down_levels=[2, 3],
        fpn_interp_model="nearest",
    )
    memory_attention, memory_encoder = _video_memory(spec)
    return SAM2Base(
        image_encoder=ImageEncoder(scalp=1, trunk=trunk, neck=neck),
        memory_attention=memory_attention,
        memory_encoder=memory_encoder,
        num_maskmem=7,
        image_size=spec["image_size"],
        sigmoid_scale_for_mem_enc=20.0,
        sigmoid_bias_for_mem_enc=-10.0,
        use_mask_input_as_output_without_sam=True,
        directly_add_no_mem_embed=True,
        no_obj_embed_spatial=True,
        use_high_res_features_in_sam=True,
        iou_prediction_use_sigmoid=True,
        use_obj_ptrs_in_encoder=True,
        add_tpos_enc_to_obj_ptrs=True,
        proj_tpos_enc_in_obj_ptrs=True,
        use_signed_tpos_enc_to_obj_ptrs=True,
        only_obj_ptrs_in_the_past_for_eval=True,
        pred_obj_scores=True,
        pred_obj_scores_mlp=True,
        fixed_no_obj_ptr=True,
        use_multimask_token_for_obj_ptr=True,
        use_mlp_for_obj_ptr_proj=True,
        compile_image_encoder=False,
        **MULTIMASK,
    )
