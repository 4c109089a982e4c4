"""Weights registry and downloads. Nothing here touches the network: downloads come from a local
http.server on 127.0.0.1 (a few KB) or file:// URLs."""

import dataclasses
import hashlib
import http.server
import json
import os
import re
import socket
import threading
from functools import partial
from pathlib import Path

import pytest

from adapt import weights
from adapt.weights import ChecksumMismatch, WeightsUnavailable


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/'srv' on 127.0.0.1; yields (base url, folder)."""
    root = tmp_path / "srv"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def wdir(tmp_path, monkeypatch):
    d = tmp_path / "weights"
    monkeypatch.setenv("ADAPT_WEIGHTS_DIR", str(d))
    return d


@pytest.fixture
def blob(server):
    url, root = server
    data = os.urandom(4096) + b"checkpoint"
    (root / "model.bin").write_bytes(data)
    return f"{url}/model.bin", data, hashlib.sha256(data).hexdigest()


def closed_port_url(name="sam_vit_b_01ec64.pth"):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}/{name}"


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------- registry


def test_sam_registry_entries():
    from adapt.backbones import BACKBONES

    sam2 = {f"sam2.1-hiera-{s}": s.replace("-", "_") for s in ("tiny", "small", "base-plus", "large")}
    assert set(weights.SAM_CHECKPOINTS) == {"sam-vit-b", "sam-vit-l", "sam-vit-h", "mobile-sam", "sam3", *sam2}
    entries = dict(weights.SAM_CHECKPOINTS)
    sam3 = entries.pop("sam3")  # gated on the Hub; no published checksum or size
    assert sam3.url == "https://huggingface.co/facebook/sam3/resolve/main/sam3.pt" and sam3.gated == "facebook/sam3"
    assert sam3.sha256 is None and sam3.bytes is None
    mobile = entries.pop("mobile-sam")
    assert mobile.url.endswith("ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt") and mobile.sha256 is None
    for name, size in sam2.items():  # Meta publishes no checksums or sizes for SAM 2.1: none are made up
        e = entries.pop(name)
        assert e.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_{size}.pt"
        assert e.sha256 is None and e.bytes is None and e.file == f"sam2.1_hiera_{size}.pt"
    for name, e in entries.items():
        assert name in BACKBONES and e.name == name and e.family == "sam"
        assert re.fullmatch(r"[0-9a-f]{64}", e.sha256)
        assert isinstance(e.bytes, int) and e.bytes > 100_000_000
        assert e.url == "https://dl.fbaipublicfiles.com/segment_anything/" + e.file
        assert re.fullmatch(r"sam_vit_[blh]_[0-9a-f]{6}\.pth", e.file) and name[-1] == e.file[8]
    assert set(weights.names()) <= set(BACKBONES)


def test_clip_registry_comes_from_open_clip():
    import open_clip

    pretrained = set(open_clip.list_pretrained())
    for name, (model, default, _) in weights.CLIP_MODELS.items():
        tags = weights.clip_tags(name)
        assert tags[0] == default == "openai"
        for tag in tags:
            e = weights.official(name, tag)
            assert (model, tag) in pretrained
            assert e.open_clip_model == model and e.pretrained == tag and e.family == "clip"
            assert e.quick_gelu is (tag == "openai")  # OpenAI weights need QuickGELU
            assert e.url.startswith("https://huggingface.co/") and e.file.endswith(".safetensors")
            assert e.sources[-1][1].endswith(".bin")  # fallback when the repo has no safetensors
            assert len(e.mean) == 3 and len(e.std) == 3
    with pytest.raises(ValueError, match="no pretrained tag"):
        weights.official("clip-vit-b-16", "no-such-tag")
    with pytest.raises(ValueError, match="no official checkpoint"):
        weights.official("tiny-sam")


def test_weights_dir_override(monkeypatch, tmp_path):
    monkeypatch.delenv("ADAPT_WEIGHTS_DIR", raising=False)
    assert weights.weights_dir() == weights.REPO_ROOT / "weights"
    monkeypatch.setenv("ADAPT_WEIGHTS_DIR", str(tmp_path / "w"))
    assert weights.weights_dir() == tmp_path / "w"
    info = weights.available("sam-vit-b")
    assert info["path"] == str(tmp_path / "w" / "sam_vit_b_01ec64.pth")


# ---------------------------------------------------------------------------------------------- download()


def test_download_verified_and_atomic(blob, tmp_path):
    url, data, sha = blob
    dest = tmp_path / "out" / "model.bin"
    got = weights.download(url, dest, sha256=sha, expected_bytes=len(data), progress=False, timeout=5)
    assert got == dest and dest.read_bytes() == data
    assert leftovers(dest.parent) == ["model.bin"]  # no .part file left behind
    assert json.loads((dest.parent / "cache" / "model.bin.sha256.json").read_text())["sha256"] == sha


def test_download_checksum_mismatch_leaves_nothing(blob, tmp_path):
    url, data, sha = blob
    dest = tmp_path / "out" / "model.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatch) as err:
        weights.download(url, dest, sha256=wrong, progress=False, timeout=5)
    assert wrong in str(err.value) and sha in str(err.value)
    assert leftovers(dest.parent) == []
    with pytest.raises(ChecksumMismatch, match="bytes"):
        weights.download(url, dest, sha256=sha, expected_bytes=len(data) - 1, progress=False, timeout=5)
    assert leftovers(dest.parent) == []


def test_download_unreachable_and_missing(server, tmp_path):
    base, _ = server
    dest = tmp_path / "out" / "sam_vit_b_01ec64.pth"
    url = closed_port_url()
    with pytest.raises(WeightsUnavailable) as err:
        weights.download(url, dest, progress=False, timeout=5)
    msg = str(err.value)
    assert url in msg and "'sam_vit_b_01ec64.pth'" in msg and str(dest.parent) in msg and "tiny" in msg
    with pytest.raises(WeightsUnavailable, match="404"):
        weights.download(f"{base}/nothing-here.pth", dest, progress=False, timeout=5)
    assert leftovers(dest.parent) == []


class _TruncatingHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"only ten b")  # then the connection closes

    def log_message(self, *args):
        pass


def test_download_broken_off_leaves_nothing(tmp_path):
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _TruncatingHandler)
    thread = threading.Thread(target=httpd.handle_request, daemon=True)
    thread.start()
    dest = tmp_path / "out" / "model.bin"
    try:
        with pytest.raises(WeightsUnavailable, match="broke off|incomplete"):
            weights.download(f"http://127.0.0.1:{httpd.server_address[1]}/m.bin", dest, progress=False, timeout=5)
    finally:
        thread.join(timeout=5)
        httpd.server_close()
    assert leftovers(dest.parent) == []


def test_download_file_url(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc" * 100)
    dest = weights.download(
        src.as_uri(), tmp_path / "w" / "copy.bin", sha256=hashlib.sha256(b"abc" * 100).hexdigest(), progress=False
    )
    assert dest.read_bytes() == b"abc" * 100


# ---------------------------------------------------------------------------------------------- resolve_checkpoint()


def test_resolve_official_downloads_then_uses_cache(blob, wdir, monkeypatch):
    url, data, sha = blob
    entry = dataclasses.replace(
        weights.SAM_CHECKPOINTS["sam-vit-b"], sources=((url, "sam_vit_b_01ec64.pth"),), sha256=sha, bytes=len(data)
    )
    monkeypatch.setitem(weights.SAM_CHECKPOINTS, "sam-vit-b", entry)
    assert weights.available("sam-vit-b")["cached"] is False
    path = weights.resolve_checkpoint("sam-vit-b", progress=False)
    assert path == wdir / "sam_vit_b_01ec64.pth" and path.read_bytes() == data
    assert leftovers(wdir) == ["sam_vit_b_01ec64.pth"]
    info = weights.available("sam-vit-b")
    assert info["cached"] and info["ready"] and info["bytes"] == len(data)
    # second call: no network needed
    offline = dataclasses.replace(entry, sources=((closed_port_url(), "sam_vit_b_01ec64.pth"),))
    monkeypatch.setitem(weights.SAM_CHECKPOINTS, "sam-vit-b", offline)
    assert weights.resolve_checkpoint("sam-vit-b", download=False) == path
    # a cached file that changed is caught
    path.write_bytes(b"x" * len(data))
    os.utime(path, ns=(1, 1))
    with pytest.raises(ChecksumMismatch, match="sha256 mismatch"):
        weights.resolve_checkpoint("sam-vit-b")


def test_resolve_official_offline_message(wdir, monkeypatch):
    entry = weights.SAM_CHECKPOINTS["sam-vit-b"]
    url = closed_port_url()
    monkeypatch.setitem(weights.SAM_CHECKPOINTS, "sam-vit-b", dataclasses.replace(entry, sources=((url, entry.file),)))
    with pytest.raises(WeightsUnavailable) as err:
        weights.resolve_checkpoint("sam-vit-b", progress=False, timeout=5)
    msg = str(err.value)
    assert "sam_vit_b_01ec64.pth" in msg and str(wdir) in msg and url in msg
    assert "tiny-sam" in msg and "offline" in msg
    assert leftovers(wdir) == []
    with pytest.raises(WeightsUnavailable, match="downloading is disabled"):
        weights.resolve_checkpoint("sam-vit-b", download=False)


def test_resolve_falls_back_to_next_source_on_404(server, wdir, monkeypatch):
    base, root = server
    (root / "open_clip_pytorch_model.bin").write_bytes(b"state dict")
    entry = weights.Checkpoint(
        "clip-vit-b-16",
        "clip",
        (
            (f"{base}/open_clip_model.safetensors", "clip.safetensors"),
            (f"{base}/open_clip_pytorch_model.bin", "clip.bin"),
        ),
        sha256=None,
        bytes=None,
        description="test",
    )
    monkeypatch.setattr(weights, "official", lambda name, pretrained=None: entry)
    path = weights.resolve_checkpoint("clip-vit-b-16", progress=False, timeout=5)
    assert path == wdir / "clip.bin" and path.read_bytes() == b"state dict"
    assert weights.resolve_checkpoint("clip-vit-b-16", download=False) == path  # cached under the 2nd name


def test_resolve_local_paths(wdir, tmp_path):
    f = tmp_path / "mine.pth"
    f.write_bytes(b"123")
    assert weights.resolve_checkpoint("sam-vit-b", f) == f
    assert weights.resolve_checkpoint("anything", str(f)) == f  # a path needs no registry entry
    wdir.mkdir()
    (wdir / "placed.pth").write_bytes(b"456")
    assert weights.resolve_checkpoint("sam-vit-b", "placed.pth") == wdir / "placed.pth"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        weights.resolve_checkpoint("sam-vit-b", tmp_path / "missing.pth")
    assert weights.resolve_checkpoint("sam-vit-b", "random") is None
    src = tmp_path / "remote.pth"
    src.write_bytes(b"789")
    assert weights.resolve_checkpoint("sam-vit-b", src.as_uri(), progress=False).read_bytes() == b"789"


# ---------------------------------------------------------------------------------------------- bundled tiny models


def write_manifest(folder: Path, name: str, data: bytes, sha: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.safetensors").write_bytes(data)
    manifest = {
        name: {
            "file": f"{name}.safetensors",
            "sha256": sha or hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "command": f"python -m adapt pretrain {name} --seed 0",
            "seed": 0,
            "metrics": {"miou": 0.5},
        }
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_bundled_checksum_verified(wdir):
    write_manifest(wdir, "tiny-sam", b"tiny weights")
    path = weights.resolve_checkpoint("tiny-sam")
    assert path == wdir / "tiny-sam.safetensors"
    info = weights.available("tiny-sam")
    assert info["bundled"] and info["ready"] and info["command"].startswith("python -m adapt pretrain")


def test_bundled_checksum_mismatch_message(wdir):
    wrong = "f" * 64
    write_manifest(wdir, "tiny-clip", b"tiny clip weights", sha=wrong)
    with pytest.raises(ChecksumMismatch) as err:
        weights.resolve_checkpoint("tiny-clip")
    msg = str(err.value)
    assert wrong in msg and hashlib.sha256(b"tiny clip weights").hexdigest() in msg
    assert "tiny-clip.safetensors" in msg and "manifest.json" in msg and "python -m adapt pretrain tiny-clip" in msg


def test_bundled_missing_is_reported(wdir, monkeypatch):
    monkeypatch.setattr(weights, "REPO_WEIGHTS_DIR", wdir)  # do not see the repo's own files
    write_manifest(wdir, "tiny-sam", b"x")
    (wdir / "tiny-sam.safetensors").unlink()
    info = weights.available("tiny-sam")
    assert info["bundled"] is False and info["ready"] is False and "not built" in info["message"]
    with pytest.raises(WeightsUnavailable, match="python -m adapt pretrain tiny-sam"):
        weights.resolve_checkpoint("tiny-sam")
    assert weights.available("tiny-clip")["bundled"] is False  # no manifest entry, no file: no error
