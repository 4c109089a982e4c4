"""The seams the CLI and the studio stand on: the use cases (adapt.pipeline), the registries
(backbone catalog, tasks, method variants) and the one atomic-file helper."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from adapt.backbones import BACKBONES, FAMILIES, build_backbone, family_of
from adapt.backbones.catalog import CONFIG_DIR, bundled
from adapt.data import load_dataset
from adapt.data.synthetic import make_dataset, write_folder
from adapt.export import load_adapter, read_adapter, save_merged
from adapt.files import atomic_folder, atomic_path, format_bytes, write_json
from adapt.methods import METHODS, attach, configurations, make_config
from adapt.pipeline import count_params, encoder_shape, inference_task, metric_record, train_adapter
from adapt.tasks import TASKS, make_task, task_for_family, task_options
from adapt.tasks.dichotomous import parse_points
from adapt.train import TrainConfig
from app.config import JobFiles


@pytest.fixture(scope="module")
def sam_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    write_folder(make_dataset("grayscale-noise", n=5, size=96, seed=3), out, task="dichotomous")
    return load_dataset(out, task="dichotomous")


@pytest.fixture(scope="module")
def clip_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    write_folder(make_dataset("source", n=4, size=96, seed=2), out, task="openvocab")
    return load_dataset(out, task="openvocab")


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".part"))


# --- registries -----------------------------------------------------------------------------------


def test_family_is_known_without_building():
    for name, entry in BACKBONES.items():
        assert family_of(name) == entry.family in FAMILIES
    with pytest.raises(ValueError, match="unknown backbone 'sam-vit-z'"):
        family_of("sam-vit-z")
    for family in FAMILIES:
        assert build_backbone(bundled(family)).family == family


def test_tiny_configs_are_discovered_from_their_json_files():
    for path in CONFIG_DIR.glob("*.json"):
        entry, config = BACKBONES[path.stem], json.loads(path.read_text())
        assert entry.bundled == config.get("bundled", True) and entry.family == config["family"]
        assert "bundled" not in entry.arch
        assert "family" not in entry.arch  # the family is the entry's, the rest is the architecture


def test_tasks_declare_their_family_and_build_their_options(sam_data, clip_data):
    assert {name: cls.family for name, cls in TASKS.items()} == {
        "dichotomous": "sam",
        "openvocab": "clip",
        "concept": "sam",
    }
    assert [task_for_family(f) for f in FAMILIES] == ["dichotomous", "openvocab"]
    assert task_options("dichotomous", sam_data) == {}
    assert task_options("dichotomous", sam_data, prompt="none") == {"prompt": "none"}
    options = task_options("openvocab", clip_data)
    assert options == {"classes": clip_data.classes, "ignore_index": clip_data.ignore_index}
    with pytest.raises(ValueError, match="unknown task 'depth'"):
        make_task("depth", build_backbone("tiny-sam"))


def test_every_variant_is_a_valid_configuration():
    cases = configurations()
    for name, cls in METHODS.items():
        for family in cls.families:
            assert (name, family, {}) in cases
        for v in cls.variants:
            make_config(name, **v.options)  # options the method takes
            assert v.why
    compared = configurations(compared=True)
    assert set(map(str, compared)) < set(map(str, cases))
    assert ("parser", "sam", {"reparam": "delta"}) not in compared and ("parser", "sam", {"scope": "conv"}) in compared


# --- use cases -------------------------------------------------------------------------------------


def test_count_params_matches_a_real_build():
    info = count_params("tiny-sam", "cobot-lora")
    real = attach(build_backbone("tiny-sam"), "cobot-lora").count()
    assert {k: info[k] for k in real} == real
    assert info["adapter_percent_of_base"] == round(100 * real["adapter"] / real["base"], 4)
    # full fine-tuning adapts the model's own weights: its share is of the whole model (CLIP's full
    # leaves nothing frozen, which once divided by zero)
    for backbone in ("tiny-clip", "tiny-sam"):
        full = count_params(backbone, "full")
        assert 0 < full["adapter_percent_of_base"] <= 100
    assert encoder_shape("sam-vit-b") == {"tokens": 64 * 64, "width": 768, "depth": 12}
    assert encoder_shape("clip-vit-b-16") == {"tokens": 14 * 14 + 1, "width": 768, "depth": 12}


def test_metric_record_names():
    assert metric_record({"iou": 0.1}, {"iou": 0.2}) == {"frozen_iou": 0.1, "adapted_iou": 0.2}
    assert metric_record(None, None) == {}


def config(**kw):
    base = dict(
        backbone="tiny-sam",
        checkpoint="random",
        method="parser",
        steps=2,
        batch_size=1,
        lr=1e-3,
        warmup=1,
        eval_every=1,
        checkpoint_every=1,
        device="cpu",
        augment=False,
    )
    return TrainConfig(**{**base, **kw})


def test_train_adapter_saves_a_loadable_adapter_and_shows_the_live_model(tmp_path, sam_data):
    seen = []
    summary = train_adapter(
        config(task_options={"prompt": "box"}),
        sam_data,
        tmp_path / "run",
        holdout=2,
        source="my pairs",
        on_eval=lambda e: seen.append((e.model, e.step, e.final, len(e.samples))),
    )
    assert summary["status"] == "done" and summary["adapter"] == tmp_path / "run" / "adapter"
    assert (summary["train_images"], summary["heldout_images"]) == (3, 2)
    assert seen == [("frozen", 0, True, 2), ("adapted", 1, False, 2), ("adapted", 2, True, 2)]
    cfg, _ = read_adapter(summary["adapter"])
    assert cfg["task"] == "dichotomous" and cfg["classes"] is None and cfg["data"]["source"] == "my pairs"
    assert cfg["metrics"]["frozen_iou"] == summary["frozen"]["iou"]
    assert cfg["metrics"]["adapted_iou"] == summary["adapted"]["iou"]
    task, info = inference_task(summary["adapter"])
    assert task.name == "dichotomous" and info["method"] == "parser"


def test_train_adapter_cancelled_saves_no_adapter(tmp_path, sam_data):
    summary = train_adapter(config(), sam_data, tmp_path / "run", should_stop=lambda: True)
    assert summary["status"] == "cancelled" and summary["adapter"] is None
    assert not (tmp_path / "run" / "adapter").exists()


def test_openvocab_adapter_keeps_the_dataset_classes(tmp_path, clip_data):
    summary = train_adapter(
        config(task="openvocab", backbone="tiny-clip", method="lora-clip", eval_every=0),
        clip_data,
        tmp_path / "run",
        holdout=1,
    )
    cfg, _ = read_adapter(summary["adapter"])
    assert cfg["classes"] == clip_data.classes and cfg["task"] == "openvocab"
    task, _ = inference_task(summary["adapter"])
    assert task.classes == clip_data.classes


def test_save_merged_holds_the_merged_weights(tmp_path, sam_data):
    summary = train_adapter(config(eval_every=0), sam_data, tmp_path / "run", holdout=1)
    dest = save_merged(summary["adapter"], tmp_path / "out" / "merged.safetensors", source="job-1")
    handle = load_adapter(summary["adapter"])
    handle.merge()
    state = load_file(str(dest))
    assert set(state) == set(handle.model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in handle.model.state_dict().items())
    assert leftovers(tmp_path / "out") == []


def test_parse_points():
    coords, labels = parse_points(" 10,20 ; 30.5,40,0;")
    assert coords.dtype == np.float32 and coords.tolist() == [[10, 20], [30.5, 40]] and labels.tolist() == [1, 0]
    assert parse_points("") is None and parse_points(None) is None and parse_points(" ; ") is None
    for bad in ("1", "1,2,3,4", "a,b"):
        with pytest.raises(ValueError, match="clicks are 'x,y' or 'x,y,label'"):
            parse_points(bad)


# --- files -------------------------------------------------------------------------------------------


def test_atomic_path_leaves_nothing_half_written(tmp_path):
    dest = tmp_path / "sub" / "a.json"
    write_json(dest, {"ok": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert json.loads(dest.read_text()) == {"ok": 1} and leftovers(tmp_path) == []


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "adapter"
    with atomic_folder(dest) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(dest) as tmp:
            (tmp / "b").write_text("2")
            raise KeyboardInterrupt
    assert sorted(p.name for p in dest.iterdir()) == ["a"] and leftovers(tmp_path) == []
    with atomic_folder(dest) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in dest.iterdir()) == ["c"]


def test_format_bytes():
    assert [format_bytes(n) for n in (None, 512, 3.5 * 2**20, 5 * 2**40)] == [
        "size unknown",
        "512 B",
        "3.5 MB",
        "5120.0 GB",
    ]


def test_job_files_are_distinct_names_in_the_job_folder(tmp_path):
    files = JobFiles(tmp_path / "job")
    paths = [
        getattr(files, n)
        for n in (
            "data_zip",
            "events",
            "checkpoint",
            "adapter",
            "adapter_zip",
            "merged",
            "result",
            "before",
            "preview",
            "after",
        )
    ]
    assert len(set(paths)) == len(paths) and all(p.parent == files.folder for p in paths)
    assert JobFiles.predictions(files.before).name == "before_pred.png"
