"""Adapter files: round trip, refusal of mismatches, zips, nothing half-written."""

import json
import zipfile

import pytest
import torch
from conftest import CASE_IDS, CASES, perturb, tiny_backbone

from adapt.backbones import build_backbone
from adapt.export import AdapterError, load_adapter, read_adapter, save_adapter, zip_adapter
from adapt.methods import attach


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_save_load_round_trip(tmp_path, case):
    method, family, options = case
    backbone = tiny_backbone(family)
    inputs = backbone.example_inputs()
    handle = attach(backbone, method, **options)
    perturb(handle)
    with torch.no_grad():
        expected = backbone.forward(inputs)
    folder = save_adapter(handle, tmp_path / "adapter", task="openvocab" if family == "clip" else "dichotomous")
    assert {p.name for p in folder.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["method"] == method and cfg["base_model"]["name"] == backbone.name
    assert cfg["config"] == handle.config.to_dict()

    loaded = load_adapter(folder)  # builds the same random-init tiny backbone (seed 0)
    with torch.no_grad():
        got = loaded.backbone.forward(inputs)
    assert torch.allclose(got, expected, atol=1e-6)


def test_only_trainable_tensors_are_saved(tmp_path):
    handle = attach(tiny_backbone("sam"), "parser", train_heads=False)
    _, tensors = read_adapter(save_adapter(handle, tmp_path / "a"))
    assert sum(t.numel() for t in tensors.values()) == handle.count()["adapter"]
    assert all("sigma" in k or "coef" in k for k in tensors)


def test_zip_round_trip_and_model_card(tmp_path):
    handle = attach(tiny_backbone("sam"), "cobot-lora")
    perturb(handle)
    folder = save_adapter(handle, tmp_path / "a", task="dichotomous", metrics={"dice": 0.91})
    z = zip_adapter(folder, tmp_path / "a.zip")
    cfg, tensors = read_adapter(z)
    assert cfg["method"] == "cobot-lora" and cfg["metrics"]["dice"] == 0.91
    card = (folder / "README.md").read_text()
    assert "cobot-lora" in card and "tiny-sam" in card and "dice" in card


def test_refuses_other_backbone(tmp_path):
    folder = save_adapter(attach(tiny_backbone("sam"), "lora"), tmp_path / "a")
    other = tiny_backbone("clip")
    with pytest.raises(AdapterError, match="trained on 'tiny-sam', not 'tiny-clip'"):
        load_adapter(folder, backbone=other)


def test_refuses_other_base_weights(tmp_path):
    from safetensors.torch import save_file

    backbone = tiny_backbone("sam")
    folder = save_adapter(attach(backbone, "lora"), tmp_path / "a")
    ckpt = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in build_backbone("tiny-sam", seed=1).model.state_dict().items()}, str(ckpt))
    other = build_backbone("tiny-sam", checkpoint=ckpt)
    assert len(other.weights_id) == 64
    with pytest.raises(AdapterError, match="load the same base checkpoint"):
        load_adapter(folder, backbone=other)


def test_refuses_other_method(tmp_path):
    folder = save_adapter(attach(tiny_backbone("sam"), "lora"), tmp_path / "a")
    with pytest.raises(AdapterError, match="is a 'lora' adapter, not 'parser'"):
        load_adapter(folder, method="parser")


def test_bad_files_get_clear_messages(tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        read_adapter(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="has no adapter_config.json"):
        read_adapter(tmp_path / "empty")
    (tmp_path / "notzip.zip").write_bytes(b"hello")
    with pytest.raises(AdapterError, match="neither an adapter folder nor a zip"):
        read_adapter(tmp_path / "notzip.zip")
    folder = save_adapter(attach(tiny_backbone("sam"), "lora"), tmp_path / "a")
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(AdapterError, match="cannot be read"):
        read_adapter(folder)


def test_zip_with_escaping_paths_is_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../adapter_config.json", "{}")
    with pytest.raises(AdapterError, match="outside the folder"):
        read_adapter(evil)
    assert not (tmp_path.parent / "adapter_config.json").exists()


def test_tensor_mismatch_is_refused(tmp_path):
    from safetensors.torch import save_file

    handle = attach(tiny_backbone("sam"), "lora")
    folder = save_adapter(handle, tmp_path / "a")
    tensors = handle.state_dict()
    key = next(iter(tensors))
    tensors[key] = torch.zeros(3)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="has shape"):
        load_adapter(folder)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import adapt.export as export

    handle = attach(tiny_backbone("sam"), "lora")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(export, "model_card", boom)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(handle, tmp_path / "a")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_merged_checkpoint_predicts_like_the_adapter_or_is_refused(tmp_path, case):
    from adapt.export import load_merged, save_merged
    from adapt.methods import METHODS

    method, family, options = case
    backbone = tiny_backbone(family)
    inputs = backbone.example_inputs()
    handle = attach(backbone, method, **options)
    perturb(handle)
    task = "openvocab" if family == "clip" else "dichotomous"
    classes = ["background", "cat"] if task == "openvocab" else None  # a binary task names no classes
    folder = save_adapter(handle, tmp_path / "adapter", task=task, classes=classes)
    dest = tmp_path / "merged.safetensors"
    if not METHODS[method].fully_mergeable:
        with pytest.raises(AdapterError, match="cannot be merged: its bottleneck branch is non-linear"):
            save_merged(folder, dest)
        assert not dest.exists() and list(tmp_path.glob(".*")) == []
        return
    save_merged(folder, dest)
    merged, info = load_merged(dest)  # the plain architecture: no method attached
    assert merged.method is None and info["task"] == task and info["classes"] == classes
    with torch.no_grad():
        expected = backbone.forward(inputs)
        got = merged.forward(inputs)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_a_merged_clip_checkpoint_holds_the_trained_head(tmp_path):
    from safetensors.torch import load_file

    from adapt.export import save_merged

    backbone = tiny_backbone("clip")
    handle = attach(backbone, "hclip")
    perturb(handle)
    folder = save_adapter(handle, tmp_path / "adapter", task="openvocab", classes=["background", "cat"])
    state = load_file(str(save_merged(folder, tmp_path / "m.safetensors")))
    head = {k[len("heads.0.") :]: v for k, v in state.items() if k.startswith("heads.0.")}
    assert head.keys() == backbone.heads[0].state_dict().keys()
    assert all(torch.equal(v, backbone.heads[0].state_dict()[k]) for k, v in head.items())


def test_load_merged_refuses_other_files(tmp_path):
    from safetensors.torch import save_file

    from adapt.export import load_merged

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(AdapterError, match="not a merged checkpoint written by adapt"):
        load_merged(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterError, match="cannot be read as a merged checkpoint"):
        load_merged(tmp_path / "junk.safetensors")
