"""The open-vocabulary CLI loop: train --task openvocab on an index-mask folder, eval, predict with
typed class names (adapted and zero-shot), outputs written at the photo's size."""

import json

import numpy as np
import pytest
from PIL import Image

from adapt.__main__ import main
from adapt.data.synthetic import SEEN_SHAPES, make_dataset, write_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("openvocab")
    write_folder(make_dataset("source", n=6, size=96, seed=3, shapes=SEEN_SHAPES[:3]), out, task="openvocab")
    return out


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "street.png"
    image = np.random.default_rng(0).integers(0, 255, (181, 333, 3), dtype=np.uint8)
    Image.fromarray(image).save(path)
    return path


def test_train_eval_predict_openvocab(tmp_path, folder, photo, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--task",
                "openvocab",
                "--backbone",
                "tiny-clip",
                "--method",
                "hclip",
                "--data",
                str(folder),
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--out",
                str(run),
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert "miou" in report["frozen"] and "miou" in report["adapted"]
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["task"] == "openvocab" and config["classes"][0] == "background"

    assert main(["eval", "--adapter", str(run / "adapter"), "--data", str(folder), "--json"]) == 0
    assert "miou" in json.loads(capsys.readouterr().out)["adapted"]

    out = tmp_path / "labels.png"
    assert (
        main(
            [
                "predict",
                "--adapter",
                str(run / "adapter"),
                "--image",
                str(photo),
                "--classes",
                "circle, square,heart",
                "--out",
                str(out),
                "--all",
            ]
        )
        == 0
    )
    assert Image.open(out).size == (333, 181)
    legend = tmp_path / "labels_legend.png"
    assert legend.is_file() and (tmp_path / "labels_overlay.png").is_file()
    index = np.array(Image.open(tmp_path / "labels_index.png"))
    assert index.shape == (181, 333) and index.max() <= 3


def test_zero_shot_predict_without_adapter(tmp_path, photo):
    out = tmp_path / "zs.png"
    assert (
        main(["predict", "--backbone", "tiny-clip", "--image", str(photo), "--classes", "sky,road", "--out", str(out)])
        == 0
    )
    assert Image.open(out).size == (333, 181) and not (tmp_path / "zs_legend.png").exists()


def test_predict_needs_classes_or_says_so(tmp_path, photo, capsys):
    assert main(["predict", "--backbone", "tiny-clip", "--image", str(photo), "--out", str(tmp_path / "x.png")]) == 2
    assert "at least one class" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
