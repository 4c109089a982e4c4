"""The bundled demo backbones: present, checksummed, small, loadable offline, and good at home."""

import json
from pathlib import Path

import pytest

from adapt.backbones import build_backbone
from adapt.weights import resolve_checkpoint

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


@pytest.mark.parametrize("name", ["tiny-sam", "tiny-clip"])
def test_bundled_model_is_committed_with_its_manifest(name):
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())
    entry = manifest[name]
    path = resolve_checkpoint(name)  # verifies the sha256 against the manifest
    assert path.stat().st_size == entry["bytes"] < 10 * 1024 * 1024
    assert entry["command"].startswith(f"python -m adapt pretrain --backbone {name}")
    backbone = build_backbone(name, checkpoint=path)
    assert backbone.weights_id == entry["sha256"]


def test_tiny_sam_segments_its_own_domain_and_less_well_shifted_ones():
    metrics = json.loads((WEIGHTS / "manifest.json").read_text())["tiny-sam"]["metrics"]
    assert metrics["source_heldout_box_iou"] > 0.6
    shifted = [metrics[f"{d}_heldout_box_iou"] for d in ("camouflage", "thin", "grayscale-noise")]
    assert max(shifted) < metrics["source_heldout_box_iou"]
