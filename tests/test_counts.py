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


# --- SAM 2.1 (Hiera): every SAM method, counts re-derived from the catalog's shapes ----------------


def hiera_blocks(name):
    """(width in, width out) of every Hiera block, from the catalog's trunk settings: stage k has
    width E 2^k, and its first block widens the stream from the previous stage's width."""
    from adapt.backbones.catalog import CATALOG

    arch = CATALOG[name].arch
    out, width = [], arch["embed_dim"]
    for k, depth in enumerate(arch["stages"]):
        for j in range(depth):
            out.append((width // 2 if k and j == 0 else width, width))
        width *= 2
    return arch, out


def expected_sam2(name, method, rank=4, bottleneck=16):
    arch, blocks = hiera_blocks(name)
    e = arch["embed_dim"]
    if method == "parser":  # min(out, in) per weight: qkv (3d x d_in), proj, two MLP linears, widening shortcut
        linears = sum(d_in + 3 * d for d_in, d in blocks) + sum(d_in for d_in, d in blocks if d_in != d)
        necks = sum(min(arch["d_model"], e * 2**k) for k in range(len(arch["stages"])))
        return min(e, 3 * 7 * 7) + linears + necks
    if method == "parser scope=conv":
        return min(e, 3 * 7 * 7) + sum(min(arch["d_model"], e * 2**k) for k in range(len(arch["stages"])))
    if method == "lora":
        return sum(2 * rank * (d_in + d) for d_in, d in blocks)
    if method == "adaptformer":  # LN 2d, down d V + V, up V d + d
        return sum(d * (3 + 2 * bottleneck) + bottleneck for _, d in blocks)
    slices, width = (2 * len(blocks), rank) if method == "cobot-lora" else (len(blocks), bottleneck)
    base = expected_sam2(name, method.removeprefix("cobot-"), rank, bottleneck)
    return base + 2 * slices * width + slices**2 + slices * width**2 // 4  # C, gamma, S, quaternions


@pytest.mark.parametrize(
    "method", ["parser", "parser scope=conv", "lora", "adaptformer", "cobot-lora", "cobot-adaptformer"]
)
def test_sam2_counts_follow_the_architecture(capsys, method):
    name = "sam2.1-hiera-base-plus"
    info = params(capsys, name, *method.split())
    assert info["adapter"] == expected_sam2(name, method)
    decoder = params(capsys, name, "decoder")
    assert info["trainable"] == info["adapter"] + decoder["head"] and decoder["adapter"] == 0


def test_sam2_full_and_decoder_counts(capsys):
    """full: the image path's encoder and prompt encoder (SAM 2's video memory is neither trained nor
    counted); decoder: the mask decoder alone."""
    import torch

    from adapt.backbones import build_backbone

    name = "sam2.1-hiera-base-plus"
    with torch.device("meta"):
        model = build_backbone(name).model

    def size(part):
        return sum(p.numel() for p in model.get_submodule(part).parameters())

    full, decoder = params(capsys, name, "full"), params(capsys, name, "decoder")
    assert full["adapter"] == size("image_encoder") + size("sam_prompt_encoder") + model.no_mem_embed.numel()
    assert decoder["head"] == size("sam_mask_decoder") == full["head"]
    assert decoder["base"] == full["adapter"] + full["head"] == 73_328_401


@pytest.mark.parametrize("name", ["sam2.1-hiera-tiny", "sam2.1-hiera-large"])
def test_sam2_sizes_parser_and_lora(capsys, name):
    for method in ("parser", "lora"):
        assert params(capsys, name, method)["adapter"] == expected_sam2(name, method)


# --- MobileSAM (TinyViT): counts re-derived from the stage widths -----------------------------------


def expected_mobile_sam(method, rank=4, bottleneck=16):
    from adapt.backbones.catalog import CATALOG

    arch = CATALOG["mobile-sam"].arch
    widths, depths, neck = arch["tinyvit_widths"], arch["tinyvit_depths"], arch["prompt_embed_dim"]
    attention = [w for w, d in zip(widths[1:], depths[1:]) for _ in range(d)]
    if method == "lora":
        return sum(4 * rank * w for w in attention)
    if method == "adaptformer":
        return sum(w * (3 + 2 * bottleneck) + bottleneck for w in attention)
    stem = min(widths[0] // 2, 27) + widths[0]  # 3x3 convs: (w0/2 x 27), (w0 x 9 w0/2)
    necks = 2 * neck  # (256 x 320), (256 x 9 * 256)
    if method == "parser scope=conv":
        return stem + necks
    if method == "parser":
        mbconv = depths[0] * (widths[0] + 9 + widths[0])  # expand, depthwise 3x3, project
        merges = sum(min(out, w) + 9 + out for w, out in zip(widths, widths[1:]))
        blocks = sum(4 * w + 9 for w in attention)  # qkv, proj, fc1, fc2 (each min = w), local 3x3 depthwise
        return stem + mbconv + merges + blocks + necks
    slices, width = (2 * len(attention), rank) if method == "cobot-lora" else (len(attention), bottleneck)
    base = expected_mobile_sam(method.removeprefix("cobot-"), rank, bottleneck)
    return base + 2 * slices * width + slices**2 + slices * width**2 // 4


@pytest.mark.parametrize(
    "method", ["parser", "parser scope=conv", "lora", "adaptformer", "cobot-lora", "cobot-adaptformer"]
)
def test_mobile_sam_counts_follow_the_architecture(capsys, method):
    info = params(capsys, "mobile-sam", *method.split())
    assert info["adapter"] == expected_mobile_sam(method)
    assert info["trainable"] == info["adapter"] + 4_058_340  # SAM's mask decoder, unchanged
