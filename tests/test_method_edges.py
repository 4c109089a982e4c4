"""What the methods must survive beyond training and merging: a model cast to bf16, two forwards
before their backwards, edits through .data, a second attach, detach, small towers, weight decay."""

import pytest
import torch
from conftest import perturb, tiny_backbone

from adapt.export import load_adapter, read_adapter, save_adapter
from adapt.methods import attach
from adapt.methods.hclip import cayley
from adapt.methods.parser import SpectralCoefficients
from adapt.train import Run, TrainConfig


def float32_state(module) -> bool:
    tensors = list(module.parameters()) + list(module.buffers())
    return bool(tensors) and all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())


def test_parser_keeps_its_decomposition_in_float32_after_a_bf16_cast():
    backbone = tiny_backbone("sam")
    handle = attach(backbone, "parser")
    perturb(handle)
    param = backbone.model.image_encoder.blocks[0].attn.qkv.parametrizations.weight[0]
    assert isinstance(param, SpectralCoefficients)
    delta32 = ((param.U * (param.sigma() - param.s)) @ param.Vh).detach()
    backbone.model.to(torch.bfloat16)
    assert float32_state(param)
    base = backbone.model.image_encoder.blocks[0].attn.qkv.parametrizations.weight.original
    assert base.dtype == torch.bfloat16
    with torch.no_grad():
        adapted = param(base)
    # the only bf16 rounding is the final one: W (bf16) + delta (float32), rounded once
    assert adapted.dtype == torch.bfloat16
    assert torch.equal(adapted, (base.float() + delta32.reshape(base.shape)).to(torch.bfloat16))
    images = backbone.example_inputs(batch=1)["images"].to(torch.bfloat16)
    with torch.no_grad():  # the image encoder, which PARSER adapts (SAM's prompt encoder is fp32-only upstream)
        out = backbone.model.image_encoder(images)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_hclip_runs_and_stays_orthogonal_after_a_bf16_cast():
    backbone = tiny_backbone("clip")
    handle = attach(backbone, "hclip")
    perturb(handle)
    backbone.model.to(torch.bfloat16)
    hub = backbone.model.hclip
    assert float32_state(hub)
    inputs = backbone.example_inputs(batch=1)
    with torch.no_grad():  # the Cayley solve has no bf16 CPU kernel: it must not be asked for one
        out = backbone.model.encode_image(inputs["images"].to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    rotations = hub.transforms()["text"]
    eye = torch.eye(rotations.shape[-1])
    assert (rotations @ rotations.transpose(-1, -2) - eye).abs().max() < 1e-5


@pytest.mark.parametrize("method", ["hclip", "lora-clip"])
def test_two_forwards_then_two_backwards(method):
    backbone = tiny_backbone("clip")
    handle = attach(backbone, method)
    perturb(handle)
    inputs = backbone.example_inputs(batch=1)
    params = [p for g in handle.trainable_groups() for p in g.params]
    backbone.forward(inputs).square().mean().backward()
    single = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    first = backbone.forward(inputs).square().mean()
    second = backbone.forward(inputs).square().mean()
    first.backward()
    second.backward()
    for p, g in zip(params, single):
        torch.testing.assert_close(p.grad, 2 * g, rtol=1e-4, atol=1e-7)


def test_hclip_sees_edits_made_through_data():
    backbone = tiny_backbone("clip")
    attach(backbone, "hclip")
    inputs = backbone.example_inputs(batch=1)
    hub = backbone.model.hclip
    with torch.no_grad():
        before = backbone.forward(inputs)
        hub.generators["text"].data.normal_(0, 0.05)  # .data: no version bump
        hub.generators["image"].data.normal_(0, 0.05)
        after = backbone.forward(inputs)
        hub.forget()
        fresh = backbone.forward(inputs)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh)
    assert torch.allclose(hub.transforms()["text"], cayley(hub.generators["text"]), atol=1e-6)


@pytest.mark.parametrize(("family", "method"), [("sam", "parser"), ("sam", "lora"), ("clip", "hclip")])
def test_a_second_attach_is_refused_and_detach_allows_it(family, method):
    backbone = tiny_backbone(family)
    handle = attach(backbone, method)
    with pytest.raises(ValueError, match=f"already has a '{method}' adapter attached"):
        attach(backbone, method)
    handle.detach()
    attach(backbone, method)


def test_loading_an_adapter_onto_an_adapted_backbone_is_refused(tmp_path):
    backbone = tiny_backbone("clip")
    handle = attach(backbone, "hclip")
    save_adapter(handle, tmp_path / "a", task="openvocab")
    with pytest.raises(ValueError, match="already has a 'hclip' adapter"):
        load_adapter(tmp_path / "a", backbone=backbone)


def test_detach_restores_requires_grad():
    backbone = tiny_backbone("sam")
    model = backbone.model
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.image_encoder.neck[0].weight.requires_grad_(False)  # a user's own choice survives too
    flags["image_encoder.neck.0.weight"] = False
    handle = attach(backbone, "lora")
    trainable = {id(p) for p in [*handle.adapter_parameters().values(), *handle.head_parameters().values()]}
    assert not any(p.requires_grad for p in model.parameters() if id(p) not in trainable)
    handle.detach()
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_hclip_records_the_block_size_it_uses(tmp_path):
    backbone = tiny_backbone("clip")  # text width 64: the 128 default cannot be a block
    handle = attach(backbone, "hclip")
    assert handle.config.block_size == backbone.model.hclip.q == 64
    cfg, _ = read_adapter(save_adapter(handle, tmp_path / "a", task="openvocab"))
    assert cfg["config"]["block_size"] == 64


def test_no_weight_decay_on_identity_initialised_coefficients():
    cfg = TrainConfig(backbone="tiny-sam", checkpoint="random", method="cobot-lora", weight_decay=0.1, device="cpu")
    groups = {g["name"]: g["weight_decay"] for g in Run(cfg).optimizer.param_groups}
    assert groups == {"adapter": 0.1, "coefficients": 0.0, "head": 0.1}
    cfg = TrainConfig(backbone="tiny-sam", checkpoint="random", method="parser", weight_decay=0.1, device="cpu")
    run = Run(cfg)
    coefs = [p.detach().clone() for g in run.optimizer.param_groups if g["name"] == "coefficients" for p in g["params"]]
    for g in run.optimizer.param_groups:
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    run.optimizer.step()  # zero gradients: only decay could move a parameter
    after = [p for g in run.optimizer.param_groups if g["name"] == "coefficients" for p in g["params"]]
    assert all(torch.equal(a, b) for a, b in zip(coefs, after))
