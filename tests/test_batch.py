"""Label the rest (adapt.batch, `predict --images`): a folder of mixed-size images with a corrupt
one in the middle -> masks at source size, a COCO file pycocotools reads back to the same masks,
scores most uncertain first, the corrupt file named; resume predicts nothing twice; zips go
through the archive guard; the uncertainty score ranks what it says it ranks."""

from __future__ import annotations

import csv
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from adapt.__main__ import main
from adapt.batch import label_images, list_images, read_scores
from adapt.data.synthetic import make_scene
from adapt.uncertainty import label_uncertainty, mask_uncertainty

pycocotools_mask = pytest.importorskip("pycocotools.mask")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """50 files: 49 scenes of varied sizes and shapes (jpg and png, one subfolder), and a corrupt
    file in the middle."""
    root = tmp_path_factory.mktemp("unlabelled")
    rng = np.random.default_rng(0)
    (root / "more").mkdir()
    for i in range(49):
        side = int(rng.integers(64, 300))
        scene = make_scene(rng, size=side, domain="camouflage" if i % 2 else "source")
        image = Image.fromarray(scene.image)
        if i % 3 == 0:
            image = image.resize((side, int(side * rng.uniform(0.5, 0.9))))
        target = (root / "more" if i % 5 == 0 else root) / f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
        image.save(target)
    (root / "img24_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    return root


def test_predict_images_writes_masks_coco_scores_and_names_the_corrupt_file(folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["predict", "--backbone", "tiny-sam", "--images", str(folder), "--out", str(out), "--batch-size", "8"]
    assert main(args + ["--labelstudio", "/data/local-files/?d=set/"]) == 0
    printed = capsys.readouterr().out
    assert "49 image(s) labelled" in printed and "img24_corrupt.png" in printed
    tasks = json.loads((out / "labelstudio.json").read_text())  # ranked as scores.csv, images under the prefix
    assert [t["data"]["image"] for t in tasks] == ["/data/local-files/?d=set/" + r["file"] for r in read_scores(out)]
    assert {t["predictions"][0]["model_version"] for t in tasks} == {"tiny-sam"}
    failed = json.loads((out / "failed.json").read_text())
    assert [f["file"] for f in failed] == ["img24_corrupt.png"] and "not a readable image" in failed[0]["error"]

    sources = {s.name: s for s in list_images(folder) if "corrupt" not in s.name}
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 49 and {p.stem for p in masks} == set(sources)
    for p in masks:
        mask = np.asarray(Image.open(p))
        with Image.open(sources[p.stem].path) as im:
            assert mask.shape == (im.height, im.width)  # the source's own size
        assert set(np.unique(mask)) <= {0, 255}
    assert not list(out.rglob("*.part"))

    rows = read_scores(out)
    assert len(rows) == 49 and [r["rank"] for r in rows] == list(range(1, 50))
    u = [r["uncertainty"] for r in rows]
    assert u == sorted(u, reverse=True)
    assert {"stability", "foreground", "entropy_bits"} <= set(rows[0])

    coco = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["foreground"]
    by_file = {im["file_name"]: im for im in coco["images"]}
    assert len(by_file) == 49
    checked = 0
    for ann in coco["annotations"]:
        image = next(im for im in coco["images"] if im["id"] == ann["image_id"])
        decoded = pycocotools_mask.decode(ann["segmentation"])
        name = next(n for n, s in sources.items() if s.label == image["file_name"])
        png = np.asarray(Image.open(out / "masks" / f"{name}.png")) > 0
        assert decoded.shape == (image["height"], image["width"])
        assert np.array_equal(decoded.astype(bool), png)
        assert ann["area"] == int(png.sum()) == int(pycocotools_mask.area(ann["segmentation"]))
        checked += 1
    assert checked == len(coco["annotations"]) > 0
    # images where the model found nothing have no annotation, and their PNG is all zeros
    annotated = {a["image_id"] for a in coco["annotations"]}
    for im in coco["images"]:
        if im["id"] not in annotated:
            name = next(n for n, s in sources.items() if s.label == im["file_name"])
            assert not np.asarray(Image.open(out / "masks" / f"{name}.png")).any()

    stamps = {p.name: p.stat().st_mtime_ns for p in masks}
    assert main(args + ["--resume"]) == 0
    assert "0 image(s) labelled, 49 already done, 1 failed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "masks").glob("*.png")} == stamps


def test_resume_after_a_stop_writes_the_rest_once(folder, tmp_path):
    from adapt.pipeline import inference_task

    task, _ = inference_task(backbone="tiny-sam", task="dichotomous")
    out = tmp_path / "out"
    calls = {"n": 0}

    def stop_after_two_batches():
        calls["n"] += 1
        return calls["n"] > 2

    first = label_images(task, folder, out, batch_size=5, should_stop=stop_after_two_batches)
    assert first.cancelled and len(first.done) == 10
    assert len(read_scores(out)) == 10  # what was written is consistent: scores and COCO so far
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 10
    with open(out / "records.jsonl", "a") as f:  # a kill mid-line leaves a torn record: ignored
        f.write('{"name": "img4')
    second = label_images(task, folder, out, batch_size=5, resume=True)
    assert len(second.skipped) == 10 and len(second.done) == 39 and len(second.failed) == 1
    assert len(read_scores(out)) == 49


def test_zip_input_goes_through_the_archive_guard(tmp_path):
    from adapt.archive import ArchiveError
    from adapt.pipeline import inference_task

    task, _ = inference_task(backbone="tiny-sam", task="dichotomous")
    good = tmp_path / "images.zip"
    rng = np.random.default_rng(1)
    with zipfile.ZipFile(good, "w") as z:
        for i in range(3):
            buffer = tmp_path / f"{i}.png"
            Image.fromarray(make_scene(rng, size=96).image).save(buffer)
            z.write(buffer, f"photos/{i}.png")
        z.writestr("__MACOSX/photos/._0.png", b"resource fork")
    report = label_images(task, good, tmp_path / "out")
    assert len(report.done) == 3 and not report.failed
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == [
        "photos__0.png",
        "photos__1.png",
        "photos__2.png",
    ]
    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(slip, "w") as z:
        z.writestr("../evil.png", b"x")
    with pytest.raises(ArchiveError, match="evil"):
        label_images(task, slip, tmp_path / "out2")
    assert not (tmp_path / "evil.png").exists()


def test_open_vocabulary_batch_writes_class_ids_colour_maps_and_a_coco_category_per_class(tmp_path):
    from adapt.pipeline import inference_task

    rng = np.random.default_rng(2)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(make_scene(rng, size=128).image).save(images / f"{i}.png")
    task, _ = inference_task(backbone="tiny-clip", task="openvocab")
    classes = ["red object", "blue object", "green object"]
    report = label_images(task, images, tmp_path / "out", classes=classes, batch_size=2)
    assert len(report.done) == 3
    out = tmp_path / "out"
    coco = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == classes and [c["id"] for c in coco["categories"]] == [1, 2, 3]
    for ann in coco["annotations"]:
        name = coco["images"][ann["image_id"] - 1]["file_name"].rsplit(".", 1)[0]
        ids = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        assert np.array_equal(pycocotools_mask.decode(ann["segmentation"]).astype(bool), ids == ann["category_id"])
    assert all(np.asarray(Image.open(p)).ndim == 3 for p in (out / "colour").iterdir())
    with open(out / "scores.csv") as f:
        assert {"uncertainty", "mean_margin", "ambiguous"} <= set(next(csv.reader(f)))


def test_mask_uncertainty_is_the_uncertain_band_relative_to_the_object():
    sure = np.zeros((100, 100), np.float32)
    sure[20:60, 20:60] = 0.99
    assert mask_uncertainty(sure)["uncertainty"] == 0.0
    soft = sure.copy()
    soft[20:60, 20:30] = 0.5  # a quarter of the object in the band
    assert mask_uncertainty(soft)["uncertainty"] == pytest.approx(0.25)
    # scale-free: the same shape at twice the size scores the same
    big = np.kron(soft, np.ones((2, 2), np.float32))
    assert mask_uncertainty(big)["uncertainty"] == pytest.approx(0.25)
    assert mask_uncertainty(np.full((10, 10), 0.01, np.float32))["uncertainty"] == 1.0  # nothing found


def test_label_uncertainty_is_one_minus_the_mean_top_two_margin():
    scores = np.zeros((3, 4, 4), np.float32)
    scores[0] = 0.9
    scores[1] = 0.1
    assert label_uncertainty(scores)["uncertainty"] == pytest.approx(0.2)
    scores[1, :2] = 0.85  # half the pixels nearly tied
    got = label_uncertainty(scores)
    assert got["ambiguous"] == pytest.approx(0.5) and got["uncertainty"] == pytest.approx(1 - (0.8 + 0.05) / 2)


def test_one_bad_name_never_fails_the_batch(tmp_path, monkeypatch):
    """Names that would clash ("a/x.png" and "a__x.png") or overflow a file name (250 characters)
    get unique, bounded output names; an image whose outputs cannot be written goes to
    failed.json and the others are all labelled; scores.csv and COCO keep the source names."""
    import adapt.batch as batch
    from adapt.pipeline import inference_task

    task, _ = inference_task(backbone="tiny-sam", task="dichotomous")
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(2)
    long_name = "n" * 250 + ".png"
    names = ["a/x.png", "a__x.png", long_name, "unwritable.png", "plain.png"]
    for name in names:
        Image.fromarray(make_scene(rng, size=64).image).save(root / name)
    real_save = batch._save

    def save(array, path):
        if "unwritable" in path.name:
            raise OSError(36, "File name too long")
        real_save(array, path)

    monkeypatch.setattr(batch, "_save", save)
    report = label_images(task, root, tmp_path / "out")
    assert len(report.done) == 4 and [f["file"] for f in report.failed] == ["unwritable.png"]
    outputs = sorted(p.stem for p in (tmp_path / "out" / "masks").iterdir())
    assert len(outputs) == len(set(outputs)) == 4 and "plain" in outputs
    assert all(len(s.encode()) <= batch.MAX_NAME_BYTES for s in outputs)
    scores = read_scores(tmp_path / "out")
    assert sorted(r["file"] for r in scores) == sorted(n for n in names if n != "unwritable.png")
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert sorted(im["file_name"] for im in coco["images"]) == sorted(r["file"] for r in scores)
