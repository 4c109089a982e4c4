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


def test_tiny_clip_names_the_colours_of_the_bundled_example_zero_shot():
    """The first open-vocabulary preview a newcomer makes (colours.jpg with the page's default
    classes, frozen tiny-clip) labels every object with its colour."""
    import importlib.util

    import numpy as np
    from PIL import Image

    from adapt.data.synthetic import make_scene
    from adapt.pipeline import inference_task
    from app.ui.preview import EXAMPLE_CLASSES

    examples = WEIGHTS.parent / "assets" / "examples"
    spec = importlib.util.spec_from_file_location("make_examples", examples / "make_examples.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    domain, seed = make.EXAMPLES["colours.jpg"]
    scene = make_scene(np.random.default_rng(seed), size=make.SIZE, domain=domain)
    image = np.asarray(Image.open(examples / "colours.jpg").convert("RGB"))
    assert (
        np.abs(image.astype(float) - scene.image).mean() < 8
    )  # the file is the scene: jpeg noise ~4, another scene ~45

    classes = [c.strip() for c in EXAMPLE_CLASSES.split(",")]
    assert classes[0] == "background"
    assert sorted(classes[1:]) == sorted(f"{o.colour} object" for o in scene.objects)
    task, _ = inference_task(backbone="tiny-clip", task="openvocab")
    labels, _, _ = task.predict(image, classes)
    for mask, obj in zip(scene.masks, scene.objects):
        k = classes.index(f"{obj.colour} object")
        iou = (mask & (labels == k)).sum() / (mask | (labels == k)).sum()
        assert iou > 0.35, (obj, iou)
    assert (labels[~scene.foreground] == 0).mean() > 0.9


def test_tiny_clip_dense_features_know_colours_and_its_captions():
    metrics = json.loads((WEIGHTS / "manifest.json").read_text())["tiny-clip"]["metrics"]
    assert metrics["source_colour_patch_accuracy_objects"] > 0.8  # 14 classes: chance ~0.07
    assert metrics["source_retrieval_top1"] > 0.6  # 64-way caption retrieval
