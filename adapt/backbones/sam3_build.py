"""SAM 3's image model built from the catalog's sizes with Meta's own classes (the optional `sam3`
package): the constructors and values of sam3's model_builder, through one builder for the
official size and the tiny test config, on the CPU or the meta device (PortableBuild). What the
built model is and does lives in adapt/backbones/sam3.py."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from adapt.backbones.base import PortableBuild
from adapt.backbones.catalog import EXTRAS
from adapt.backbones.sam2 import MULTIMASK


def require_sam3() -> None:
    """Import the optional `sam3` package, or say how to add it."""
    try:
        import sam3  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"SAM 3 backbones need Meta's `sam3` package (SAM License), an optional extra: {EXTRAS['sam3'].install}"
        ) from e


@cache
def _tokenizer():
    """sam3's tokenizer on CLIP's BPE vocabulary (open_clip ships the file; the sam3 wheel does not)."""
    import open_clip
    from sam3.model.tokenizer_ve import SimpleTokenizer

    return SimpleTokenizer(bpe_path=str(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"))


def _attention(spec: dict, dropout: float = 0.1, **kw):
    from sam3.model.model_misc import MultiheadAttentionWrapper

    return MultiheadAttentionWrapper(num_heads=spec["heads"], dropout=dropout, embed_dim=spec["d_model"], **kw)


def _vision(spec: dict):
    """The ViT trunk under the dual neck (sam3's _create_vision_backbone)."""
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.vitdet import ViT

    trunk = ViT(
        img_size=spec["image_size"],
        pretrain_img_size=spec["pretrain_image_size"],
        patch_size=spec["patch_size"],
        embed_dim=spec["embed_dim"],
        depth=spec["depth"],
        num_heads=spec["num_heads"],
        mlp_ratio=spec["mlp_ratio"],
        norm_layer="LayerNorm",
        drop_path_rate=spec["drop_path_rate"],
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=tuple(spec["global_att_blocks"]),
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=spec["window_size"],
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
    )
    trunk.use_act_checkpoint = False  # Backbone.set_checkpointing decides (the memory planner)
    position = PositionEmbeddingSine(
        num_pos_feats=spec["d_model"], normalize=True, scale=None, temperature=10000, precompute_resolution=None
    )
    return Sam3DualViTDetNeck(
        position_encoding=position,
        d_model=spec["d_model"],
        scale_factors=[4.0, 2.0, 1.0, 0.5],
        trunk=trunk,
        add_sam2_neck=True,
    )


def _text(spec: dict):
    from sam3.model.text_encoder_ve import VETextEncoder

    text = VETextEncoder(
        tokenizer=_tokenizer(),
        d_model=spec["d_model"],
        width=spec["text_width"],
        heads=spec["text_heads"],
        layers=spec["text_layers"],
    )
    # sam3 leaves these two uninitialised (torch.empty: whatever memory held, NaN at times); a
    # random-init model gets open_clip's initialisation of the same tensors
    tower = text.encoder
    torch.nn.init.normal_(tower.positional_embedding, std=0.01)
    if getattr(tower, "text_projection", None) is not None:
        torch.nn.init.normal_(tower.text_projection, std=spec["text_width"] ** -0.5)
    return text


def _fusion(spec: dict):
    """The fusion encoder and the DETR-style decoder (sam3's _create_sam3_transformer)."""
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.model_misc import TransformerWrapper

    d, ffn = spec["d_model"], spec["ffn"]
    encoder_layer = TransformerEncoderLayer(
        activation="relu",
        d_model=d,
        dim_feedforward=ffn,
        dropout=0.1,
        pos_enc_at_attn=True,
        pos_enc_at_cross_attn_keys=False,
        pos_enc_at_cross_attn_queries=False,
        pre_norm=True,
        self_attention=_attention(spec, batch_first=True),
        cross_attention=_attention(spec, batch_first=True),
    )
    encoder = TransformerEncoderFusion(
        layer=encoder_layer,
        num_layers=spec["encoder_layers"],
        d_model=d,
        num_feature_levels=1,
        frozen=False,
        use_act_checkpoint=True,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
    )
    decoder_layer = TransformerDecoderLayer(
        activation="relu",
        d_model=d,
        dim_feedforward=ffn,
        dropout=0.1,
        cross_attention=_attention(spec),
        n_heads=spec["heads"],
        use_text_cross_attention=True,
    )
    decoder = TransformerDecoder(
        layer=decoder_layer,
        num_layers=spec["decoder_layers"],
        num_queries=spec["queries"],
        return_intermediate=True,
        box_refine=True,
        num_o2m_queries=0,
        dac=True,
        boxRPB="log",
        d_model=d,
        frozen=False,
        interaction_layer=None,
        dac_use_selfatt_ln=True,
        resolution=spec["image_size"],
        stride=spec["patch_size"],
        use_act_checkpoint=True,
        presence_token=True,
    )
    return TransformerWrapper(encoder=encoder, decoder=decoder, d_model=d)


def _heads(spec: dict) -> tuple:
    """(dot-product scoring, segmentation head, geometry encoder) of the detector."""
    import torch.nn as nn
    from sam3.model.encoder import TransformerEncoderLayer
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MLP, DotProductScoring
    from sam3.model.position_encoding import PositionEmbeddingSine

    d, ffn = spec["d_model"], spec["ffn"]
    prompt_mlp = MLP(
        input_dim=d, hidden_dim=ffn, output_dim=d, num_layers=2, dropout=0.1, residual=True, out_norm=nn.LayerNorm(d)
    )
    scoring = DotProductScoring(d_model=d, d_proj=d, prompt_mlp=prompt_mlp)
    segmentation = UniversalSegmentationHead(
        hidden_dim=d,
        upsampling_stages=3,
        aux_masks=False,
        presence_head=False,
        dot_product_scorer=None,
        act_ckpt=True,
        cross_attend_prompt=_attention(spec, dropout=0),
        pixel_decoder=PixelDecoder(num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=d),
    )
    geometry_layer = TransformerEncoderLayer(
        activation="relu",
        d_model=d,
        dim_feedforward=ffn,
        dropout=0.1,
        pos_enc_at_attn=False,
        pre_norm=True,
        self_attention=_attention(spec, batch_first=False),
        pos_enc_at_cross_attn_queries=False,
        pos_enc_at_cross_attn_keys=True,
        cross_attention=_attention(spec, batch_first=False),
    )
    geometry = SequenceGeometryEncoder(
        pos_enc=PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None, temperature=10000),
        encode_boxes_as_points=False,
        points_direct_project=True,
        points_pool=True,
        points_pos_enc=True,
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=d,
        num_layers=spec["geometry_layers"],
        layer=geometry_layer,
        use_act_ckpt=True,
        add_cls=True,
        add_post_encode_proj=True,
    )
    return scoring, segmentation, geometry


def _tracker(spec: dict):
    """SAM 3's tracker with no backbone of its own (sam3's build_tracker): the prompt encoder and
    mask decoder of the interactive path, and the video memory."""
    from sam3.model.decoder import TransformerDecoderLayerv2, TransformerEncoderCrossAttention
    from sam3.model.memory import CXBlock, SimpleFuser, SimpleMaskDownSampler, SimpleMaskEncoder
    from sam3.model.model_misc import TransformerWrapper
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_tracking_predictor import Sam3TrackerPredictor
    from sam3.sam.transformer import RoPEAttention

    d, mem, grid = spec["d_model"], spec["memory_dim"], spec["image_size"] // spec["patch_size"]
    size = spec["mask_interpolation"]
    memory_encoder = SimpleMaskEncoder(
        out_dim=mem,
        position_encoding=PositionEmbeddingSine(num_pos_feats=mem, normalize=True, scale=None, temperature=10000),
        mask_downsampler=SimpleMaskDownSampler(
            embed_dim=d, kernel_size=3, stride=2, padding=1, interpol_size=[size, size]
        ),
        fuser=SimpleFuser(
            layer=CXBlock(dim=d, kernel_size=7, padding=3, layer_scale_init_value=1.0e-06, use_dwconv=True),
            num_layers=2,
        ),
        in_dim=d,
    )

    def rope(**kw):
        return RoPEAttention(
            embedding_dim=d,
            num_heads=1,
            downsample_rate=1,
            dropout=0.1,
            rope_theta=10000.0,
            feat_sizes=[grid, grid],
            use_fa3=False,
            use_rope_real=False,
            **kw,
        )

    layer = TransformerDecoderLayerv2(
        cross_attention_first=False,
        activation="relu",
        dim_feedforward=spec["ffn"],
        dropout=0.1,
        pos_enc_at_attn=False,
        pre_norm=True,
        self_attention=rope(),
        d_model=d,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        cross_attention=rope(kv_in_dim=mem, rope_k_repeat=True),
    )
    encoder = TransformerEncoderCrossAttention(
        remove_cross_attention_layers=[],
        batch_first=True,
        d_model=d,
        frozen=False,
        pos_enc_at_input=True,
        layer=layer,
        num_layers=spec["memory_layers"],
        use_act_checkpoint=False,
    )
    return Sam3TrackerPredictor(
        image_size=spec["image_size"],
        num_maskmem=7,
        backbone=None,
        backbone_stride=spec["patch_size"],
        transformer=TransformerWrapper(encoder=encoder, decoder=None, d_model=d),
        maskmem_backbone=memory_encoder,
        forward_backbone_per_frame_for_eval=True,
        trim_past_non_cond_mem_for_eval=False,
        always_start_from_first_ann_frame=False,
        non_overlap_masks_for_mem_enc=False,
        non_overlap_masks_for_output=False,
        max_cond_frames_in_attn=4,
        offload_output_to_cpu_for_eval=False,
        **MULTIMASK,
        clear_non_cond_mem_around_input=True,
        fill_hole_area=0,
        use_memory_selection=False,
    )


def build_sam3_model(spec: dict):
    """Sam3Image with its interactive predictor from the catalog's settings (the values of sam3's
    model_builder for the official size), in evaluation mode (no matcher). Caches of positional
    encodings and coordinates are left empty and fill on first use, on the input's device."""
    require_sam3()
    from sam3.model.sam1_task_predictor import SAM3InteractiveImagePredictor
    from sam3.model.sam3_image import Sam3Image
    from sam3.model.vl_combiner import SAM3VLBackbone

    with PortableBuild():
        backbone = SAM3VLBackbone(visual=_vision(spec), text=_text(spec), scalp=1)
        scoring, segmentation, geometry = _heads(spec)
        interactive = SAM3InteractiveImagePredictor(_tracker(spec))
        model = Sam3Image(
            backbone=backbone,
            transformer=_fusion(spec),
            input_geometry_encoder=geometry,
            segmentation_head=segmentation,
            num_feature_levels=1,
            o2m_mask_predict=True,
            dot_prod_scoring=scoring,
            use_instance_query=False,
            multimask_output=True,
            inst_interactive_predictor=interactive,
            matcher=None,
        )
    grid = spec["image_size"] // spec["patch_size"]
    interactive._bb_feat_sizes = [(grid * 4, grid * 4), (grid * 2, grid * 2), (grid, grid)]
    decoder = model.transformer.decoder
    decoder.compilable_cord_cache, decoder.compilable_stored_size = None, None
    return model
