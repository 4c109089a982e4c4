"""The procedural scene generator: determinism, consistency of masks/labels/captions, the character
of each domain, and the folder export."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from adapt.data.synthetic import (
    CLASSES,
    COLOURS,
    DOMAINS,
    SEEN_SHAPES,
    SHAPES,
    TEXTURE_WORDS,
    TEXTURES,
    THIN_SHAPES,
    UNSEEN_SHAPES,
    Scene,
    SceneObject,
    caption_for,
    class_names,
    make_dataset,
    make_scene,
    object_contrast,
    scene_stream,
    write_folder,
)

SIZE = 128  # small scenes keep the suite fast; the generator scales its textures with the size


@pytest.fixture(scope="module")
def datasets():
    return {d: make_dataset(d, 12, SIZE, seed=7) for d in DOMAINS}


def test_constants():
    assert set(SEEN_SHAPES).isdisjoint(UNSEEN_SHAPES)
    assert sorted(SEEN_SHAPES + UNSEEN_SHAPES) == sorted(SHAPES)
    assert len(SEEN_SHAPES) == 2 * len(UNSEEN_SHAPES)
    assert CLASSES[0] == "background" and len(CLASSES) < 256
    assert set(TEXTURES) <= set(TEXTURE_WORDS)
    assert all(len(rgb) == 3 and all(0 <= v <= 255 for v in rgb) for rgb in COLOURS.values())
    assert {"source", "camouflage", "thin", "grayscale-noise", "highres-fine"} <= set(DOMAINS)
    assert class_names() == list(CLASSES[1:])
    assert class_names(include_background=True) == list(CLASSES)
    assert class_names("colours") == list(COLOURS)
    with pytest.raises(ValueError):
        class_names("sizes")


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_deterministic_from_seed(domain):
    a = make_scene(np.random.default_rng(3), SIZE, domain)
    b = make_scene(np.random.default_rng(3), SIZE, domain)
    c = make_scene(np.random.default_rng(4), SIZE, domain)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.semantic, b.semantic)
    assert a.caption == b.caption and a.objects == b.objects
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    assert not np.array_equal(a.image, c.image)


def test_dataset_is_a_prefix_and_domains_differ():
    long = make_dataset("source", 5, SIZE, seed=1)
    short = make_dataset("source", 3, SIZE, seed=1)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(long, short))
    assert not np.array_equal(make_dataset("source", 1, SIZE, seed=2)[0].image, long[0].image)
    stream = scene_stream("source", SIZE, seed=1)
    assert np.array_equal(next(stream).image, long[0].image)
    assert np.array_equal(next(stream).image, long[1].image)
    # The same seed in two domains gives unrelated layouts.
    hr = make_dataset("highres-fine", 1, SIZE, seed=1)[0]
    assert not np.array_equal(hr.semantic > 0, long[0].semantic > 0)


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_scene_structure(datasets, domain):
    for scene in datasets[domain]:
        assert isinstance(scene, Scene) and scene.domain == domain
        assert scene.image.shape == (SIZE, SIZE, 3) and scene.image.dtype == np.uint8
        assert scene.semantic.shape == (SIZE, SIZE) and scene.semantic.dtype == np.uint8
        assert 1 <= len(scene.masks) == len(scene.objects) <= 4
        union = np.zeros((SIZE, SIZE), int)
        for mask, obj in zip(scene.masks, scene.objects):
            assert mask.shape == (SIZE, SIZE) and mask.dtype == bool
            assert mask.sum() >= 6
            union += mask
            # Each instance carries one class in the semantic map, and its attributes are known.
            assert np.all(scene.semantic[mask] == obj.class_id) and obj.class_id > 0
            assert obj.colour in COLOURS and obj.size in ("small", "medium", "large")
            assert obj.texture in TEXTURE_WORDS
            assert (obj.shape in THIN_SHAPES) == (domain == "thin")
        assert union.max() == 1, "instances overlap"
        assert np.array_equal(union > 0, scene.semantic > 0)
        assert np.array_equal(scene.foreground, union > 0)
        inst = scene.instance_map()
        assert inst.max() == len(scene.masks) and np.array_equal(inst > 0, scene.foreground)
        boxes = scene.boxes()
        assert boxes.shape == (len(scene.masks), 4)
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= SIZE)
        assert np.all(boxes[:, 2:] > boxes[:, :2])


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_caption_names_every_object(datasets, domain):
    for scene in datasets[domain]:
        assert scene.caption == caption_for(scene)
        for obj in scene.objects:
            assert f"{obj.colour} " in scene.caption and obj.shape in scene.caption
        assert scene.caption.startswith(("a ", "an ")) and scene.caption.endswith("background")
    scene = datasets[domain][0]
    variants = {caption_for(scene, np.random.default_rng(i)) for i in range(20)}
    assert len(variants) > 1 and all(o.shape in v for v in variants for o in scene.objects)


def test_caption_format():
    scene = Scene(
        image=np.zeros((8, 8, 3), np.uint8),
        masks=[],
        semantic=np.zeros((8, 8), np.uint8),
        objects=[SceneObject("star", "red", "stripes", "large"), SceneObject("circle", "blue", "solid", "small")],
        caption="",
        background="wood",
    )
    assert caption_for(scene) == ("a large red striped star and a small blue circle on a wooden background")


def test_shapes_restriction():
    scenes = make_dataset("source", 8, SIZE, seed=0, shapes=SEEN_SHAPES)
    assert {o.shape for s in scenes for o in s.objects} <= set(SEEN_SHAPES)
    scenes = make_dataset("thin", 4, SIZE, seed=0, shapes=["curve"])
    assert {o.shape for s in scenes for o in s.objects} == {"curve"}
    with pytest.raises(ValueError):
        make_scene(np.random.default_rng(0), SIZE, "source", shapes=["dragon"])
    with pytest.raises(ValueError):
        make_scene(np.random.default_rng(0), SIZE, "no-such-domain")


def test_rectangular_and_large_sizes():
    scene = make_scene(np.random.default_rng(0), (96, 160), "source")
    assert scene.image.shape == (96, 160, 3) and scene.semantic.shape == (96, 160)
    assert DOMAINS["highres-fine"].default_size >= 1024


def test_camouflage_has_low_contrast(datasets):
    source = np.mean([object_contrast(s) for s in datasets["source"]])
    camo = np.mean([object_contrast(s) for s in datasets["camouflage"]])
    assert camo < 0.4 * source, (camo, source)


def test_thin_structures_are_thin(datasets):
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    for scene in datasets["thin"]:
        fg = scene.foreground.astype(np.uint8)
        assert fg.mean() < 0.15
        # No part of a 1-4 px wide structure holds a 7-px disc (crossings aside).
        assert cv2.erode(fg, disc).sum() <= 0.05 * fg.sum()
    source_fg = np.mean([s.foreground.mean() for s in datasets["source"]])
    thin_fg = np.mean([s.foreground.mean() for s in datasets["thin"]])
    assert thin_fg < source_fg


def test_grayscale_noise_is_grey_and_noisy(datasets):
    for scene in datasets["grayscale-noise"]:
        img = scene.image.astype(np.int16)
        assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])

    def roughness(scenes):  # high-frequency energy: pixel minus its 3x3 median
        return np.mean(
            [np.abs(s.image[..., 0].astype(float) - cv2.medianBlur(s.image[..., 0], 3)).mean() for s in scenes]
        )

    assert roughness(datasets["grayscale-noise"]) > 2 * roughness(datasets["source"])


def test_highres_fine_has_fine_boundaries():
    def boundary_ratio(scenes):  # boundary pixels per object pixel: higher = finer detail
        out = []
        for s in scenes:
            fg = s.foreground.astype(np.uint8)
            edge = fg - cv2.erode(fg, np.ones((3, 3), np.uint8))
            out.append(edge.sum() / fg.sum())
        return np.mean(out)

    fine = make_dataset("highres-fine", 6, 256, seed=0)
    source = make_dataset("source", 6, 256, seed=0)
    assert boundary_ratio(fine) > 1.3 * boundary_ratio(source)


def test_write_folder_dichotomous(tmp_path, datasets):
    scenes = datasets["source"][:3]
    out = write_folder(scenes, tmp_path / "dis", task="dichotomous")
    images = sorted(p.name for p in (out / "images").iterdir())
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert images == masks == ["00000.png", "00001.png", "00002.png"]
    for i, scene in enumerate(scenes):
        img = np.array(Image.open(out / "images" / images[i]).convert("RGB"))
        assert np.array_equal(img, scene.image)
        mask = np.array(Image.open(out / "masks" / masks[i]))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, scene.foreground)
    meta = [json.loads(line) for line in (out / "meta.jsonl").read_text().splitlines()]
    assert [m["caption"] for m in meta] == [s.caption for s in scenes]
    assert len(meta[0]["objects"][0]["box"]) == 4
    assert not (out / "classes.json").exists()


def test_write_folder_openvocab(tmp_path, datasets):
    scenes = datasets["source"][:2] + datasets["thin"][:1]
    out = write_folder(scenes, tmp_path / "ov", task="openvocab")
    classes = json.loads((out / "classes.json").read_text())
    assert classes == list(CLASSES) and classes[0] == "background"
    splits = json.loads((out / "splits.json").read_text())
    assert splits["seen"] == SEEN_SHAPES and splits["unseen"] == UNSEEN_SHAPES
    for i, scene in enumerate(scenes):
        label = np.array(Image.open(out / "masks" / f"{i:05d}.png"))
        assert label.shape == scene.semantic.shape and np.array_equal(label, scene.semantic)
        for obj in scene.objects:
            assert classes[obj.class_id] == obj.shape
    with pytest.raises(ValueError):
        write_folder(scenes, tmp_path / "x", task="detection")


@pytest.mark.parametrize("task", ["dichotomous", "openvocab"])
def test_written_folder_loads_with_the_dataset_reader(tmp_path, datasets, task):
    from adapt.data.loading import load_dataset

    scenes = datasets["source"][:2] + datasets["grayscale-noise"][:1]
    ds = load_dataset(write_folder(scenes, tmp_path / task, task=task), task=task)
    assert len(ds) == len(scenes) and not ds.skipped
    for sample, scene in zip(ds, scenes):
        assert np.array_equal(sample.image, scene.image)
        expected = scene.foreground.astype(np.uint8) if task == "dichotomous" else scene.semantic
        assert np.array_equal(sample.mask, expected)
    if task == "openvocab":
        assert ds.classes == list(CLASSES)
