"""Adapters on the Hugging Face Hub (adapt/hub.py), as far as it can be tested without a network:
what would be uploaded (files, model-card metadata) through a stand-in for huggingface_hub's API,
loading an adapter from a folder laid out as a downloaded Hub repository, the offline message
(with huggingface_hub's real offline mode), and the app's Push / Load from Hub."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import perturb, tiny_backbone
from studio_support import OWNER

from adapt.__main__ import main
from adapt.export import load_adapter, push_to_hub, save_adapter
from adapt.hub import HubError, parse_ref
from adapt.methods import attach

TOKEN = "hf_secret_token_never_shown"


@pytest.fixture
def folder(tmp_path):
    handle = attach(tiny_backbone("sam"), "parser")
    perturb(handle)
    return save_adapter(
        handle, tmp_path / "adapter", task="dichotomous", metrics={"frozen_iou": 0.41, "adapted_iou": 0.62}
    )


class FakeApi:
    """huggingface_hub.HfApi's two calls the push makes; keeps a copy of what would be uploaded."""

    calls: list = []
    uploaded: dict = {}
    fail: Exception | None = None

    def __init__(self, token=None):
        FakeApi.calls.append(("token", token))

    def create_repo(self, repo_id, **kw):
        FakeApi.calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, commit_message, **kw):
        if FakeApi.fail:
            raise FakeApi.fail
        from pathlib import Path

        FakeApi.uploaded = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        FakeApi.calls.append(("upload_folder", repo_id, commit_message))


@pytest.fixture
def fake_api(monkeypatch):
    import huggingface_hub

    FakeApi.calls, FakeApi.uploaded, FakeApi.fail = [], {}, None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


def test_a_push_uploads_the_adapter_folder_with_hub_metadata(folder, fake_api):
    url = push_to_hub(folder, "me/camo-parser", token=TOKEN, private=True)
    assert url == "https://huggingface.co/me/camo-parser"
    assert (
        "create_repo",
        "me/camo-parser",
        {"private": True, "exist_ok": True, "repo_type": "model"},
    ) in fake_api.calls
    assert set(fake_api.uploaded) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    card = fake_api.uploaded["README.md"].decode()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "segmentation-adaptation-studio" and front["pipeline_tag"] == "mask-generation"
    assert {"parser", "dichotomous", "peft"} <= set(front["tags"])
    assert front["metrics_heldout"] == {"frozen_iou": 0.41, "adapted_iou": 0.62}
    assert "base_model" not in front  # the tiny backbone has no Hub repository
    assert fake_api.uploaded["adapter_model.safetensors"] == (folder / "adapter_model.safetensors").read_bytes()


def test_official_base_weights_are_named_in_the_metadata():
    from adapt.export import hub_metadata

    cfg = {"base_model": {"name": "sam-vit-b", "weights_id": "sha256:abc"}, "method": "lora", "task": "dichotomous"}
    assert hub_metadata(cfg)["base_model"] == "facebook/sam-vit-base"
    clip = {
        "base_model": {"name": "clip-vit-b-16", "weights_id": "openai:sha256:1"},
        "method": "hclip",
        "task": "openvocab",
    }
    assert hub_metadata(clip)["base_model"] == "openai/clip-vit-base-patch16"


def test_a_refused_push_never_shows_the_token(folder, fake_api):
    from huggingface_hub.errors import HfHubHTTPError

    class Response:
        status_code, headers, request = 403, {}, None

    fake_api.fail = HfHubHTTPError(f"403 Forbidden for token {TOKEN}", response=Response())
    with pytest.raises(HubError) as e:
        push_to_hub(folder, "me/x", token=TOKEN)
    assert "write access" in str(e.value) and TOKEN not in str(e.value)
    fake_api.fail = RuntimeError(f"odd failure mentioning {TOKEN}")
    with pytest.raises(HubError) as e:
        push_to_hub(folder, "me/x", token=TOKEN)
    assert TOKEN not in str(e.value) and "***" in str(e.value)


@pytest.mark.parametrize("bad", ["hf://me", "hf://../etc", "hf://me/x/y", "hf://me/ok@bad rev", "hf://-me/x"])
def test_bad_references_are_named(bad):
    with pytest.raises(HubError, match="not a Hub"):
        parse_ref(bad)
    assert parse_ref("hf://me/repo@v1.0") == ("me/repo", "v1.0")


@pytest.mark.parametrize(
    "revision", ["../../c", "/etc/passwd", "a/../b", "..", ".hidden", "a//b", "a/", "main.lock", "x" * 101]
)
def test_revisions_never_leave_the_cache(revision):
    """A revision is a branch, tag or commit: huggingface_hub's offline fallback joins it onto its
    cache folder, so a path segment like ".." or a leading "/" would resolve a folder outside."""
    with pytest.raises(HubError, match="not a Hub revision"):
        parse_ref(f"hf://me/repo@{revision}")
    for good in ("main", "refs/pr/1", "v1.0-rc_2", "0123456789abcdef0123456789abcdef01234567"):
        assert parse_ref(f"hf://me/repo@{good}") == ("me/repo", good)


def test_an_adapter_pulled_from_the_hub_loads_like_a_local_one(tmp_path, folder, monkeypatch):
    import huggingface_hub

    repo = tmp_path / "cache" / "models--me--camo" / "snapshots" / "abc123"  # how the cache lays it out
    shutil.copytree(folder, repo)
    asked = {}

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        asked.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        return str(repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    inputs = tiny_backbone("sam").example_inputs()
    pulled, local = load_adapter("hf://me/camo@main"), load_adapter(folder)
    assert asked == {
        "repo_id": "me/camo",
        "revision": "main",
        "allow_patterns": ["adapter_config.json", "adapter_model.safetensors", "README.md"],
    }
    with torch.no_grad():
        assert torch.equal(pulled.backbone.forward(inputs), local.backbone.forward(inputs))
    (repo / "adapter_config.json").unlink()
    with pytest.raises(HubError, match="not an adapter repository"):
        load_adapter("hf://me/camo")


def test_offline_the_hub_says_so(tmp_path, monkeypatch):
    """huggingface_hub's own offline mode, with an empty cache: no request leaves the machine."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(HubError, match="cannot be reached from here \\(offline\\?\\)"):
        load_adapter("hf://me/not-cached")


def test_cli_push_and_predict_from_the_hub(tmp_path, folder, fake_api, monkeypatch, capsys):
    import cv2
    import huggingface_hub

    assert main(["export", "--adapter", str(folder), "--push-to-hub", "me/cli-adapter"]) == 0
    assert "pushed to https://huggingface.co/me/cli-adapter" in capsys.readouterr().out
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(folder))
    picture = tmp_path / "p.png"
    cv2.imwrite(str(picture), np.full((64, 80, 3), 128, np.uint8))
    assert (
        main(["predict", "--adapter", "hf://me/cli-adapter", "--image", str(picture), "--out", str(tmp_path / "m.png")])
        == 0
    )
    assert (tmp_path / "m.png").is_file()


def test_the_studio_pushes_and_loads_hub_adapters(tmp_path, folder, fake_api, monkeypatch):
    import huggingface_hub

    from app.config import Limits, Paths
    from app.studio import Studio, UserError

    studio = Studio(Paths(tmp_path / "studio"), Limits())
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(folder))
    ref, desc = studio.load_hub_adapter(OWNER, "me/camo")
    assert ref.startswith("upload-") and "parser" in desc
    assert ref in [r for _, r in studio.adapters(OWNER)]
    url = studio.push_adapter(OWNER, ref, "me/again", TOKEN)
    assert url.endswith("me/again") and ("token", TOKEN) in fake_api.calls
    assert TOKEN not in json.dumps(studio.adapters(OWNER))
    with pytest.raises(UserError, match="not a Hub repository id"):
        studio.push_adapter(OWNER, ref, "not a repo", TOKEN)
    with pytest.raises(UserError, match="choose an adapter first"):
        studio.push_adapter(OWNER, "", "me/x", TOKEN)
