"""Backbones: names, shapes, checkpoints (weights_only / safetensors), clear errors."""

import pytest
import torch
from conftest import sam3_installed
from safetensors.torch import save_file

from adapt.backbones import BACKBONES, architecture, build_backbone
from adapt.backbones.catalog import CATALOG, BackboneEntry


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name,expected",
    [
        ("sam-vit-b", 93_735_472),
        ("sam-vit-l", 312_342_832),
        ("sam-vit-h", 641_090_608),
        ("clip-vit-b-16", 149_620_737),
        ("clip-vit-l-14", 427_616_513),
        # SAM 2.1: Meta's model card gives 38.9M, 46M, 80.8M and 224.4M (the video memory included)
        ("sam2.1-hiera-tiny", 38_962_498),
        ("sam2.1-hiera-small", 46_060_354),
        ("sam2.1-hiera-base-plus", 80_850_178),
        ("sam2.1-hiera-large", 224_446_642),
        ("mobile-sam", 10_130_092),  # TinyViT-5M (its unused ImageNet classifier included) + SAM's decoder
    ],
)
def test_official_architectures(name, expected):
    with torch.device("meta"):
        backbone = build_backbone(name)
    assert n_params(backbone.model) == expected
    assert backbone.weights_id == "random-init"


def test_names():
    assert set(BACKBONES) == {
        "sam-vit-b",
        "sam-vit-l",
        "sam-vit-h",
        "tiny-sam",
        "sam2.1-hiera-tiny",
        "sam2.1-hiera-small",
        "sam2.1-hiera-base-plus",
        "sam2.1-hiera-large",
        "tiny-sam2",
        "sam3",
        "tiny-sam3",
        "mobile-sam",
        "tiny-mobile-sam",
        "clip-vit-b-16",
        "clip-vit-l-14",
        "tiny-clip",
    }
    with pytest.raises(ValueError, match="unknown backbone 'sam-vit-x'"):
        build_backbone("sam-vit-x")


def test_tiny_models_run_and_use_the_real_tokenizer():
    sam = build_backbone("tiny-sam")
    out = sam.forward(sam.example_inputs(batch=2))
    assert out.shape == (2, 1, 64, 64)
    clip = build_backbone("tiny-clip")
    tokens = clip.tokenizer(["a photo of a zebra"])
    assert tokens.shape == (1, 32) and tokens[0, 0].item() == 49406  # <start_of_text> of the CLIP BPE
    assert n_params(sam.model) < 2_000_000 and n_params(clip.model) < 6_000_000


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_checkpoint_round_trip(tmp_path, fmt):
    source = build_backbone("tiny-sam", seed=3)
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    path = tmp_path / f"tiny.{fmt}"
    torch.save(state, path) if fmt == "pth" else save_file(state, str(path))
    loaded = build_backbone("tiny-sam", checkpoint=path)
    assert len(loaded.weights_id) == 64
    inputs = source.example_inputs()
    with torch.no_grad():
        assert torch.equal(loaded.forward(inputs), source.forward(inputs))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_backbone("tiny-sam", checkpoint=tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        build_backbone("tiny-sam", checkpoint=bad)
    other = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in build_backbone("tiny-clip").model.state_dict().items()}, str(other))
    with pytest.raises(ValueError, match="does not fit this architecture"):
        build_backbone("tiny-sam", checkpoint=other)


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("open(r'%s', 'w').write('pwned')" % (tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        build_backbone("tiny-sam", checkpoint=path)
    assert not (tmp_path / "pwned").exists()


def test_official_openai_clip_checkpoints_get_quick_gelu():
    from adapt.backbones.clip import _official_settings

    openai = _official_settings("clip-vit-b-16", "/w/open_clip_ViT-B-16_openai.bin")
    laion = _official_settings("clip-vit-b-16", "/w/open_clip_ViT-B-16_laion2b_s34b_b88k.safetensors")
    assert openai["quick_gelu"] is True and laion["quick_gelu"] is False
    assert _official_settings("clip-vit-b-16", "/w/mine.pt") == {} and _official_settings("tiny-clip", "x") == {}


# Other widths for a backbone of each known architecture (from its tiny config): nothing but the
# catalog entry is new
OTHER_WIDTHS = {
    "tiny-sam": (
        {"encoder_embed_dim": 64, "encoder_num_heads": 2, "encoder_depth": 2, "encoder_global_attn_indexes": [1]},
        "lora",
    ),
    "tiny-mobile-sam": ({"tinyvit_widths": [8, 16, 24, 32], "tinyvit_heads": [1, 2, 2, 2]}, "lora"),
    "tiny-sam2": ({"embed_dim": 8, "stages": [1, 2, 2, 1], "global_att_blocks": [4]}, "lora"),
    "tiny-clip": (
        {"embed_dim": 32, "vision_cfg": {**CATALOG["tiny-clip"].arch["vision_cfg"], "width": 64}},
        "lora-clip",
    ),
}
if sam3_installed():  # SAM 3's optional extra
    OTHER_WIDTHS["tiny-sam3"] = ({"embed_dim": 48, "num_heads": 3, "depth": 3, "global_att_blocks": [2]}, "lora")


@pytest.mark.parametrize("known", sorted(OTHER_WIDTHS))
def test_a_backbone_of_a_known_architecture_is_one_catalog_entry(monkeypatch, known):
    """A new size of a known architecture is one catalog entry: it builds (random init), counts its
    parameters and gets a memory plan with no other edit."""
    from adapt.counts import count_params
    from adapt.planner import make_plan

    widths, method = OTHER_WIDTHS[known]
    base = CATALOG[known]
    entry = BackboneEntry("other-" + known, base.family, arch={**base.arch, **widths}, bundled=False)
    monkeypatch.setitem(CATALOG, entry.name, entry)
    backbone = build_backbone(entry.name)
    assert type(backbone) is architecture(known) and backbone.weights_id == "random-init"
    assert backbone.forward(backbone.example_inputs(batch=1)).isfinite().all()
    counts = count_params(entry.name, method)
    assert counts["base"] == n_params(backbone.model) - sum(p.numel() for p in _inactive(backbone))
    assert counts["adapter"] > 0 and counts["base"] != count_params(known, method)["base"]
    plan = make_plan(entry.name, method, batch_size=2, budget="8GB")
    assert plan.fits and 0 < plan.estimate.total < make_plan(known, method, 2, "8GB").estimate.total * 10


def _inactive(backbone):
    ids = backbone.inactive_parameter_ids()
    return [p for p in backbone.model.parameters() if id(p) in ids]


def test_an_optional_architecture_says_how_to_add_it(monkeypatch):
    """Where SAM 3's package (an optional extra) is not installed, its backbones say how to add it
    (the catalog, the weights' status, a build) and selfcheck leaves them out; nothing else changes."""
    import sys

    from adapt.backbones.catalog import missing_extra
    from adapt.selfcheck import check_backbones
    from adapt.weights import available

    monkeypatch.setitem(sys.modules, "sam3", None)  # as if not installed
    hint = "pip install --no-deps -r requirements-sam3.txt"
    assert hint in missing_extra("tiny-sam3") and missing_extra("tiny-sam2") is None
    info = available("tiny-sam3")
    assert not info["ready"] and hint in info["message"]
    assert hint in available("sam3")["message"]
    with pytest.raises(ImportError, match="requirements-sam3.txt"):
        build_backbone("tiny-sam3")
    assert "tiny-sam3" not in check_backbones("sam") and "tiny-sam2" in check_backbones("sam")
