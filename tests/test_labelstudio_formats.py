"""Label Studio's formats (adapt.data.labelstudio): its brush RLE through label-studio-sdk, a JSON
export loaded as a dataset (checked like every dataset), and masks written back as tasks: an export
imported and exported again gives the same masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from adapt.data import DatasetError, load_dataset
from adapt.data.labelstudio import brush_decode, brush_encode, results_mask, tasks_from_masks

W, H = 40, 30


def blob(seed: int, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    y, x = rng.integers(2, h // 2), rng.integers(2, w // 2)
    mask[y : y + h // 3, x : x + w // 3] = 1
    mask[rng.integers(0, h), rng.integers(0, w)] = 1  # a lone pixel: runs of length one
    return mask


def brush(mask, label="cat", w=W, h=H):
    return {
        "type": "brushlabels",
        "from_name": "tag",
        "to_name": "image",
        "original_width": w,
        "original_height": h,
        "value": {"format": "rle", "rle": brush_encode(mask), "brushlabels": [label]},
    }


def polygon(points, label="dog", w=W, h=H):
    value = {"points": [[x * 100 / w, y * 100 / h] for x, y in points], "polygonlabels": [label], "closed": True}
    return {"type": "polygonlabels", "original_width": w, "original_height": h, "value": value}


def write_images(folder, names):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(folder / "images" / name)


def export_folder(tmp_path, tasks, names=("a.png", "b.png", "c.png")):
    folder = tmp_path / "ls"
    write_images(folder, names)
    (folder / "export.json").write_text(json.dumps(tasks))
    return folder


def three_tasks():
    square = [(5, 5), (25, 5), (25, 20), (5, 20)]
    return [
        {"id": 1, "data": {"image": "/data/upload/1/8f2a1c3d-a.png"}, "annotations": [{"result": [brush(blob(1))]}]},
        {
            "id": 2,
            "data": {"image": "/data/local-files/?d=shots/b.png"},
            "annotations": [{"result": [polygon(square)]}],
        },
        {"id": 3, "data": {"image": "c.png"}, "annotations": []},  # not labelled yet: skipped
    ]


def test_brush_rle_round_trips_through_the_sdk():
    for seed in range(4):
        mask = blob(seed)
        rle = brush_encode(mask)
        assert isinstance(rle, list) and all(0 <= v <= 255 for v in rle)
        np.testing.assert_array_equal(brush_decode(rle, H, W), mask)
    empty = np.zeros((H, W), np.uint8)
    np.testing.assert_array_equal(brush_decode(brush_encode(empty), H, W), empty)


def test_bad_brush_codes_are_refused_saying_why():
    rle = brush_encode(blob(0))
    with pytest.raises(ValueError, match="another size"):
        brush_decode(rle, H + 1, W)  # the header's count is checked before anything is allocated
    with pytest.raises(ValueError, match="not bytes"):
        brush_decode(rle[:-1] + [300], H, W)
    with pytest.raises(ValueError, match="does not decode"):
        brush_decode(rle[: len(rle) // 2], H, W)
    with pytest.raises(ValueError, match="non-empty list"):
        brush_decode("abc", H, W)
    huge = list((2**31).to_bytes(4, "big")) + [0, 0, 0]
    with pytest.raises(ValueError, match="another size"):
        brush_decode(huge, H, W)


def test_an_export_loads_as_a_dataset(tmp_path):
    folder = export_folder(tmp_path, three_tasks())
    ds = load_dataset(folder, task="openvocab")
    assert ds.classes == ["background", "cat", "dog"]
    assert sorted(s.stem for s in ds.samples) == ["a", "b"]
    by_name = {s.stem: s for s in ds.samples}
    np.testing.assert_array_equal(by_name["a"].mask, blob(1))  # an upload's prefix 8f2a1c3d- left out
    expected = np.zeros((H, W), np.uint8)
    expected[5:20, 5:25] = 2  # pixel centres inside the square, COCO's convention
    np.testing.assert_array_equal(by_name["b"].mask, expected)
    assert any("task 3 has no annotation" in why for why in ds.summary()["skipped"])
    binary = load_dataset(folder, task="dichotomous")
    assert {int(v) for s in binary.samples for v in np.unique(s.mask)} == {0, 1}


def test_bad_exports_name_each_problem(tmp_path):
    tasks = three_tasks()
    tasks[0]["annotations"][0]["result"][0]["value"]["rle"] = tasks[0]["annotations"][0]["result"][0]["value"]["rle"][
        :5
    ]
    tasks[1]["annotations"][0]["result"] = [{"type": "rectanglelabels", "value": {"x": 1}}]
    tasks.append({"id": 4, "data": {"image": "/data/upload/1/d.png"}, "annotations": [{"result": [brush(blob(2))]}]})
    tasks.append({"id": 5, "data": {"text": 1}, "annotations": []})
    folder = export_folder(tmp_path, tasks)
    with pytest.raises(DatasetError) as e:
        load_dataset(folder)
    text = str(e.value)
    assert "task 1, result 0: the brush 'rle'" in text
    assert "task 2: its annotation has no brush or polygon result" in text
    assert "image 'd.png' (id 1) not found" in text
    assert "task 5: its data has no 'image' field" in text


def test_a_brush_drawn_on_another_size_is_refused(tmp_path):
    tasks = three_tasks()[:2]
    tasks[0]["annotations"][0]["result"] = [brush(blob(1, 20, 20), w=20, h=20)]
    with pytest.raises(DatasetError, match="20x20"):
        load_dataset(export_folder(tmp_path, tasks, names=("a.png", "b.png")))


def test_an_export_imported_and_exported_back_gives_the_same_masks(tmp_path):
    ds = load_dataset(export_folder(tmp_path, three_tasks()), task="openvocab")
    labels = ds.classes[1:]
    items = [(f"/data/local-files/?d=again/{s.stem}.png", s.mask, None) for s in ds.samples]
    tasks = tasks_from_masks(items, labels, from_name="tag", to_name="image")
    assert all(r["type"] == "brushlabels" for t in tasks for r in t["annotations"][0]["result"])
    again = tmp_path / "again"
    write_images(again, [f"{s.stem}.png" for s in ds.samples])
    (again / "tasks.json").write_text(json.dumps(tasks))
    back = load_dataset(again, task="openvocab")
    assert back.classes == ds.classes
    for s, t in zip(sorted(ds.samples, key=lambda s: s.stem), sorted(back.samples, key=lambda s: s.stem)):
        np.testing.assert_array_equal(s.mask, t.mask)
    # predictions: a model version and a score per task, in the order given
    predicted = tasks_from_masks(items, labels, model_version="job-1", image_key="img")
    assert [t["predictions"][0]["model_version"] for t in predicted] == ["job-1", "job-1"]
    assert predicted[0]["data"] == {"img": items[0][0]}


def test_an_annotation_becomes_a_label_map():
    values = {"cat": 1, "dog": 2}
    mask = results_mask([brush(blob(3)), polygon([(0, 0), (4, 0), (4, 4), (0, 4)])], H, W, values)
    assert mask[1, 1] == 2 and (mask == 1).sum() > 0
    with pytest.raises(ValueError, match="label 'cow'"):
        results_mask([brush(blob(3), label="cow")], H, W, values)
    with pytest.raises(ValueError, match="not 40x31"):
        results_mask([brush(blob(3))], H + 1, W, values)
    with pytest.raises(ValueError, match="no brush or polygon"):
        results_mask([], H, W, values)


def test_batch_results_become_label_studio_predictions_most_uncertain_first(tmp_path):
    """adapt.batch.write_labelstudio: a labelled folder's masks as predictions, ranked as scores.csv
    ranks them; a corrected result travels as the user's annotation; the download holds the file."""
    import zipfile

    from adapt.batch import export_results, record_review, write_labelstudio, write_scores

    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    records = []
    for k, name in enumerate(["x", "y", "z"]):
        Image.fromarray(blob(k) * 255).save(out / "masks" / f"{name}.png")
        records.append(
            {"name": name, "file": f"sub/{name}.jpg", "width": W, "height": H, "uncertainty": [0.2, 0.9, 0.5][k]}
        )
    write_scores(out, records)
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "summary.json").write_text(json.dumps({"classes": ["background", "foreground"], "model": "runs/a/adapter"}))
    record_review(out, "z", "corrected", mask=blob(7))
    tasks = json.loads(write_labelstudio(out, "/data/local-files/?d=shots/").read_text())
    assert [t["data"]["image"] for t in tasks] == [f"/data/local-files/?d=shots/sub/{n}.jpg" for n in "yzx"]
    y = tasks[0]["predictions"][0]
    assert y["model_version"] == "adapter" and y["score"] == pytest.approx(0.1)
    np.testing.assert_array_equal(brush_decode(y["result"][0]["value"]["rle"], H, W), blob(1))
    assert y["result"][0]["value"]["brushlabels"] == ["foreground"]
    z = tasks[1]["annotations"][0]["result"][0]  # corrected: the user's mask, as an annotation
    np.testing.assert_array_equal(brush_decode(z["value"]["rle"], H, W), blob(7))
    with zipfile.ZipFile(export_results(out, tmp_path / "results.zip")) as zf:
        shipped = json.loads(zf.read("labelstudio.json"))
    assert [t["data"]["image"] for t in shipped] == ["sub/y.jpg", "sub/z.jpg", "sub/x.jpg"]


def test_a_labelling_config_names_the_control_the_image_and_the_labels():
    from adapt.data.labelstudio import parse_config

    xml = (
        '<View><Image name="img" value="$photo"/>'
        '<BrushLabels name="tag" toName="img"><Label value="cell"/><Label value="debris"/></BrushLabels></View>'
    )
    assert parse_config(xml) == {
        "from_name": "tag",
        "to_name": "img",
        "image_key": "photo",
        "labels": ["cell", "debris"],
    }
    for bad, why in [
        ("<View><Image name='i' value='$image'/></View>", "no <BrushLabels>"),
        ("<View><BrushLabels name='t' toName='x'><Label value='a'/></BrushLabels></View>", "not an <Image"),
        ("<View", "not XML"),
        ('<!DOCTYPE x [<!ENTITY a "b">]><View/>', "DOCTYPE"),
        ("<View><Image name='i' value='$image'/><BrushLabels name='t' toName='i'/></View>", "distinct <Label"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_config(bad)


def test_the_studio_takes_an_export_zip_as_an_upload(tmp_path):
    """The Data tab's upload (Studio.stage_upload) checks a zip of an export and its images like any dataset."""
    from studio_support import OWNER, zip_tree

    from app.config import Limits, Paths
    from app.studio import Studio, UserError

    studio = Studio(Paths(tmp_path / "studio"), Limits())
    data = zip_tree(export_folder(tmp_path, three_tasks()), tmp_path / "export.zip")
    path, summary = studio.stage_upload(OWNER, "dichotomous", zip_file=str(data))
    assert path.is_file() and "**2 image/mask pairs**" in summary
    tasks = three_tasks()
    tasks[0]["annotations"][0]["result"][0]["original_width"] = W + 1
    bad = zip_tree(export_folder(tmp_path / "bad", tasks), tmp_path / "bad.zip")
    with pytest.raises(UserError, match="does not decode|another size"):
        studio.stage_upload(OWNER, "dichotomous", zip_file=str(bad))
