"""Parameter counts on the full-size architectures (built on the meta device: shapes only)."""

import json

import pytest

from adapt.__main__ import main

PAPER_COUNTS = {  # ViT-B, adapter only (what the papers report)
    ("lora", ()): 147_456,
    ("cobot-lora", ()): 148_320,
    ("adaptformer", ()): 322_752,
    ("cobot-adaptformer", ()): 324_048,
    ("parser", ()): 38_144,
    ("parser", ("scope=conv",)): 1_280,
}


def params(capsys, backbone, method, *options):
    argv = ["params", "--backbone", backbone, "--method", method, "--json"]
    for o in options:
        argv += ["--option", o]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("method,options", list(PAPER_COUNTS), ids=lambda x: str(x))
def test_sam_vit_b_counts(capsys, method, options):
    info = params(capsys, "sam-vit-b", method, *options)
    assert info["adapter"] == PAPER_COUNTS[(method, options)]
    # adapter + the trained mask decoder
    assert info["trainable"] == info["adapter"] + 4_058_340


def test_cobot_adds_exactly_its_coefficients(capsys):
    # T = 2L = 24 slices of width V = r = 4: C 96 + S 576 + gamma 96 + quaternion 24*4 = 864
    assert params(capsys, "sam-vit-b", "cobot-lora")["adapter"] - params(capsys, "sam-vit-b", "lora")["adapter"] == 864
    # T = L = 12 slices of width 16: C 192 + S 144 + gamma 192 + quaternion 12*64 = 1296
    assert (
        params(capsys, "sam-vit-b", "cobot-adaptformer")["adapter"]
        - params(capsys, "sam-vit-b", "adaptformer")["adapter"]
    ) == 1296


def test_hclip_vit_b_16_count(capsys):
    info = params(capsys, "clip-vit-b-16", "hclip")
    q, layers = 128, 12
    blocks = 768 // q + 512 // q  # image + text blocks per target
    stored = 4 * layers * blocks * q * q + blocks**2 + (4 * layers) ** 2 + 1
    assert info["adapter"] == stored == 7_866_725
    effective = stored - 4 * layers * (512 // q) * (q * q - q * (q - 1) // 2)
    assert info["adapter_effective"] == effective == 6_281_573
    assert info["trainable"] > info["adapter"]  # + the open-vocabulary head


def test_hclip_without_dcrc_and_lora_clip(capsys):
    assert params(capsys, "clip-vit-b-16", "hclip", "dcrc=false")["adapter"] == 7_864_320
    # r=8 on q,k,v,o of 12 image (768) and 12 text (512) blocks
    assert params(capsys, "clip-vit-b-16", "lora-clip")["adapter"] == 12 * 4 * 8 * 2 * (768 + 512)


def test_hclip_vit_l_14_pads_the_shorter_tower(capsys):
    info = params(capsys, "clip-vit-l-14", "hclip")
    q = 128
    stored = 4 * (24 * (1024 // q) + 12 * (768 // q)) * q * q + (8 + 6) ** 2 + (4 * 24) ** 2 + 1
    assert info["adapter"] == stored


def test_params_rejects_bad_input(capsys):
    assert main(["params", "--backbone", "sam-vit-x", "--method", "lora"]) == 2
    assert "unknown backbone" in capsys.readouterr().err
    assert main(["params", "--backbone", "clip-vit-b-16", "--method", "parser"]) == 2
    assert "adapts SAM backbones" in capsys.readouterr().err
