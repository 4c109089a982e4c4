"""PARSER's decomposition: reconstruction, conv reshaping, the delta reparameterisation."""

import torch
from conftest import tiny_backbone

from adapt.methods import attach
from adapt.methods.parser import SpectralCoefficients


def test_sigma_reconstructs_u_diag_sigma_vt():
    w = torch.randn(48, 20)
    p = SpectralCoefficients(w)
    assert torch.allclose(p(w), w)
    with torch.no_grad():
        p.coef.mul_(1.5)
    expected = (p.U * p.coef) @ p.Vh  # the paper's W'(sigma) = U diag(sigma) V^T
    assert torch.allclose(p(w), expected, atol=1e-5)


def test_conv_kernels_are_read_as_out_by_in_k_k():
    w = torch.randn(8, 3, 4, 4)
    p = SpectralCoefficients(w)
    assert p.coef.shape == (8,) and p.U.shape == (8, 8) and p.Vh.shape == (8, 48)
    with torch.no_grad():
        p.coef.zero_()
    assert torch.allclose(p(w), torch.zeros_like(w), atol=1e-5)


def test_delta_reparameterisation():
    w = torch.randn(10, 30)
    p = SpectralCoefficients(w, reparam="delta")
    assert torch.equal(p.coef, torch.zeros(10))
    with torch.no_grad():
        p.coef.fill_(1.0)  # sigma = 2 s
    assert torch.allclose(p(w), 2 * w, atol=1e-5)


def test_prompt_encoder_stays_frozen_and_decoder_trains():
    backbone = tiny_backbone("sam")
    handle = attach(backbone, "parser")
    assert not any(p.requires_grad for p in backbone.model.prompt_encoder.parameters())
    assert all(p.requires_grad for p in backbone.model.mask_decoder.parameters())
    assert all("image_encoder" in n for n in handle.adapter_parameters())


def test_conv_scope_targets():
    handle = attach(tiny_backbone("sam"), "parser", scope="conv")
    names = sorted(handle.adapter_parameters())
    assert len(names) == 3
    assert any("patch_embed.proj" in n for n in names) and sum("neck" in n for n in names) == 2
