"""H-CLIP: orthogonality, hyperspherical energy invariance, DCRC, the transform cache."""

import pytest
import torch
from conftest import tiny_backbone

from adapt.methods import attach
from adapt.methods.hclip import cayley, hyperspherical_energy, text_tower_weights
from adapt.selfcheck import train_steps


def test_cayley_is_orthogonal_and_identity_at_zero():
    g = torch.randn(5, 16, 16)
    r = cayley(g)
    eye = torch.eye(16).expand(5, 16, 16)
    assert torch.allclose(r @ r.transpose(-1, -2), eye, atol=1e-5)
    assert torch.equal(cayley(torch.zeros(2, 8, 8)), torch.eye(8).expand(2, 8, 8))


def test_he_is_invariant_to_input_side_rotation_only():
    # rows with uneven norms and a shared direction, so that mixing rows visibly changes angles
    w = torch.randn(64, 32, dtype=torch.float64) * torch.linspace(0.1, 3, 64, dtype=torch.float64)[:, None] + 1.0
    r = cayley(torch.randn(1, 32, 32, dtype=torch.float64))[0]
    assert hyperspherical_energy(w @ r) == pytest.approx(hyperspherical_energy(w), rel=1e-10)
    r_out = cayley(torch.randn(1, 64, 64, dtype=torch.float64))[0]
    assert hyperspherical_energy(r_out @ w) != pytest.approx(hyperspherical_energy(w), rel=1e-2)


@pytest.mark.parametrize("options", [{}, {"dcrc": False}, {"orthogonal": "both"}])
def test_text_tower_energy_is_kept_while_image_tower_moves(options):
    backbone = tiny_backbone("clip")
    handle = attach(backbone, "hclip", **options)
    text_before = {k: hyperspherical_energy(w) for k, w in text_tower_weights(backbone.model).items()}
    image_attn = backbone.model.visual.transformer.resblocks[1].attn
    image_before = image_attn.in_proj_weight.detach().clone()
    train_steps(handle, backbone.example_inputs(), steps=4, lr=5e-2)
    text_after = {k: hyperspherical_energy(w) for k, w in text_tower_weights(backbone.model).items()}
    for k in text_before:
        assert text_after[k] == pytest.approx(text_before[k], rel=1e-4), k
    assert (image_attn.in_proj_weight - image_before).abs().max() > 1e-3
    # and the text weights themselves did change (the invariance is not a frozen tower)
    assert handle.model.hclip.generators["text"].abs().max() > 0


def test_free_text_tower_changes_energy():
    backbone = tiny_backbone("clip")
    handle = attach(backbone, "hclip", orthogonal="none")
    before = {k: hyperspherical_energy(w) for k, w in text_tower_weights(backbone.model).items()}
    train_steps(handle, backbone.example_inputs(), steps=4, lr=5e-2)
    after = {k: hyperspherical_energy(w) for k, w in text_tower_weights(backbone.model).items()}
    assert max(abs(after[k] - before[k]) / before[k] for k in before) > 1e-4


def test_dcrc_mixes_blocks_across_towers_and_layers():
    backbone = tiny_backbone("clip")
    handle = attach(backbone, "hclip")
    hub = backbone.model.hclip
    with torch.no_grad():
        hub.generators["image"][0, 0].normal_()  # change one image block of layer 0, W_q
        hub.alpha.fill_(0.5)
        hub.f3.add_(0.1)
        hub.f4.add_(0.1)
    transforms = hub.transforms()
    eye = torch.eye(hub.q)
    # through f3/f4 that one change now reaches a text block of the last layer's W_o
    assert not torch.allclose(transforms["text"][-1, 0], eye, atol=1e-6)
    # while without DCRC it stays put
    backbone2 = tiny_backbone("clip")
    attach(backbone2, "hclip", dcrc=False)
    hub2 = backbone2.model.hclip
    with torch.no_grad():
        hub2.generators["image"][0, 0].normal_()
    assert torch.equal(hub2.transforms()["text"][-1, 0], eye)
    del handle


def test_cache_survives_two_forwards_before_one_backward():
    backbone = tiny_backbone("clip")
    handle = attach(backbone, "hclip")
    inputs = backbone.example_inputs()
    with torch.no_grad():
        handle.model.hclip.generators["image"].normal_(0, 0.01)
    loss = backbone.forward(inputs).pow(2).mean() + backbone.forward(inputs).pow(2).mean()
    loss.backward()
    g1 = handle.model.hclip.generators["image"].grad.clone()
    handle.model.hclip.generators["image"].grad = None
    (2 * backbone.forward(inputs).pow(2).mean()).backward()  # a fresh graph after backward
    assert torch.allclose(handle.model.hclip.generators["image"].grad, g1, rtol=1e-4, atol=1e-8)


def test_cache_follows_parameter_updates():
    backbone = tiny_backbone("clip")
    handle = attach(backbone, "hclip")
    hub = backbone.model.hclip
    with torch.no_grad():
        first = hub.transforms()["image"].clone()
        hub.generators["image"].add_(0.1)
        second = hub.transforms()["image"]
    assert not torch.equal(first, second)
    del handle


def test_block_size_must_divide_widths():
    with pytest.raises(ValueError, match="does not divide"):
        attach(tiny_backbone("clip"), "hclip", block_size=48)
