"""MobileSAM (TinyViT encoder in segment-anything's Sam): the architecture, predictions equal to
segment-anything's SamPredictor (MobileSAM's own predictor), and the methods on its layout."""

import numpy as np
import pytest
import torch
from conftest import reference_prompts

from adapt.backbones import build_backbone
from adapt.methods import attach
from adapt.tasks.dichotomous import DichotomousTask


def test_architecture_and_checkpoint_names():
    """The official architecture's encoder, without the ImageNet classifier TinyViT carries, has
    5.74M parameters (MobileSAM's paper rounds its encoder to 5.78M), and every tensor has the name
    MobileSAM's checkpoint gives it."""
    with torch.device("meta"):
        backbone = build_backbone("mobile-sam")
    enc = backbone.model.image_encoder
    classifier = sum(p.numel() for p in [*enc.head.parameters(), *enc.norm_head.parameters()])
    assert sum(p.numel() for p in enc.parameters()) - classifier == 5_743_892
    keys = set(backbone.model.state_dict())
    for name in (
        "image_encoder.patch_embed.seq.2.c.weight",
        "image_encoder.layers.0.blocks.1.conv3.bn.running_var",
        "image_encoder.layers.0.downsample.conv2.c.weight",
        "image_encoder.layers.2.blocks.5.attn.attention_biases",
        "image_encoder.layers.3.blocks.1.local_conv.c.weight",
        "image_encoder.layers.3.blocks.1.mlp.fc2.bias",
        "image_encoder.neck.3.weight",
        "image_encoder.head.weight",
        "mask_decoder.iou_prediction_head.layers.2.bias",
    ):
        assert name in keys, name
    assert "image_encoder.layers.3.downsample.conv1.c.weight" not in keys  # the last stage does not merge
    assert not any("attention_bias_idxs" in k for k in keys)  # rebuilt, not stored
    grid_in = backbone.model.image_encoder.layers[2].downsample.conv2.c.stride
    assert grid_in == (1, 1)  # into the widest stage: no downsampling, both last stages at 1/16


@pytest.mark.parametrize("size", [(256, 256), (180, 300), (413, 97)])
def test_prediction_equals_sam_predictor(size):
    from segment_anything import SamPredictor

    backbone = build_backbone("tiny-mobile-sam", seed=3)
    task, reference = DichotomousTask(backbone), SamPredictor(backbone.model)
    image, cases = reference_prompts(*size, backbone.input_size)
    reference.set_image(image)
    for theirs, ours in cases[:3]:  # box, clicks, both
        logits, _, _ = reference.predict(**theirs, multimask_output=False, return_logits=True)
        expected = 1 / (1 + np.exp(-logits[0]))
        got = task.predict(image, refine=False, **ours)
        assert np.abs(got - expected).max() < 1e-3, (size, list(theirs))
    assert expected.std() > 1e-3


def test_lora_updates_only_q_and_v_in_the_per_head_layout():
    """TinyViT's fused qkv is laid out per head ([q, k, v] for each head): LoRA's q and v updates
    must land in those slots, and merge must fold them there."""
    backbone = build_backbone("tiny-mobile-sam")
    handle = attach(backbone, "lora")
    wrapper = backbone.model.image_encoder.layers[1].blocks[0].attn.qkv
    heads = wrapper.heads
    with torch.no_grad():
        wrapper.q.B.normal_()
        x = torch.randn(5, wrapper.qkv.in_features)
        delta = (wrapper(x) - wrapper.qkv(x)).view(5, heads, 3, -1)
    assert delta[:, :, 0].abs().max() > 0 and delta[:, :, 1:].abs().max() == 0
    handle.merge()
    merged = backbone.model.image_encoder.layers[1].blocks[0].attn.qkv
    assert torch.allclose(merged(x), wrapper(x), atol=1e-5)


def test_batch_norm_statistics_stay_frozen_in_training():
    backbone = build_backbone("tiny-mobile-sam")
    attach(backbone, "full")
    bn = backbone.model.image_encoder.layers[0].blocks[0].conv1.bn
    before = bn.running_mean.clone()
    backbone.model.train()
    backbone.forward(backbone.example_inputs(2)).sum().backward()
    assert not bn.training and torch.equal(bn.running_mean, before)
    assert bn.weight.grad is not None  # the affine part still trains under full fine-tuning
