"""Warm start (`train --init-adapter`, adapt.pipeline.warm_start): the retraining step of the
label-the-rest loop continues from the adapter, checks it, and resumes like any run."""

from __future__ import annotations

import json

import pytest

from adapt.__main__ import main
from adapt.data import load_dataset
from adapt.data.synthetic import make_dataset, write_folder
from adapt.export import AdapterError, read_adapter
from adapt.pipeline import train_adapter, warm_start
from adapt.train import TrainConfig


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A cobot-lora adapter trained 4 steps on 8 camouflage images, and a second dataset."""
    root = tmp_path_factory.mktemp("warm")
    write_folder(make_dataset("camouflage", n=8, size=96, seed=1), root / "a", task="dichotomous")
    write_folder(make_dataset("camouflage", n=8, size=96, seed=2), root / "b", task="dichotomous")
    cfg = TrainConfig(backbone="tiny-sam", method="cobot-lora", method_options={"rank": 4}, steps=4, warmup=0)
    summary = train_adapter(cfg, load_dataset(root / "a"), root / "run-a", holdout=3)
    return root, summary["adapter"]


def test_cli_warm_start_takes_the_adapters_method_and_starts_from_its_score(first, tmp_path, capsys):
    root, adapter = first
    out = tmp_path / "run-b"
    args = ["train", "--init-adapter", str(adapter), "--data", str(root / "a"), "--holdout", "3", "--validation", "0"]
    assert main(args + ["--steps", "2", "--lr", "0", "--head-lr", "0", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    saved, _ = read_adapter(out / "adapter")
    assert saved["method"] == "cobot-lora" and saved["config"]["rank"] == 4
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert any(e["type"] == "warm_start" for e in events)
    evals = [e for e in events if e["type"] == "eval"]
    frozen, initial = evals[0], evals[1]
    assert (frozen["model"], initial["model"], initial["step"]) == ("frozen", "adapted", 0)
    # nothing moved (lr 0): the adapted score is the loaded adapter's, and it is the first run's
    first_card, _ = read_adapter(adapter)
    assert report["adapted"]["iou"] == pytest.approx(initial["metrics"]["iou"], abs=1e-6)
    assert report["adapted"]["iou"] == pytest.approx(first_card["metrics"]["adapted_iou"], abs=1e-6)
    assert report["frozen"]["iou"] == pytest.approx(first_card["metrics"]["frozen_iou"], abs=1e-6)
    previous = next(e for e in evals if e["model"] == "previous")  # the loaded adapter, on the held-out images
    assert (previous["step"], previous["split"]) == (0, "heldout")
    assert previous["metrics"]["iou"] == pytest.approx(first_card["metrics"]["adapted_iou"], abs=1e-6)
    card = (out / "adapter" / "README.md").read_text()
    assert "warm_start" in card and "precision" in card and "fp32" in card
    done = next(e for e in events if e["type"] == "done")
    assert done["precision"] == "fp32" and done["peak_memory_mb"] > 100


def test_warm_start_refuses_a_different_method_backbone_or_options(first, tmp_path, capsys):
    root, adapter = first
    with pytest.raises(AdapterError, match="'cobot-lora' adapter on 'tiny-sam'.*method is 'cobot-lora', not 'parser'"):
        warm_start(TrainConfig(method="parser"), adapter, explicit={"method"})
    with pytest.raises(AdapterError, match="not 'tiny-clip'"):
        warm_start(TrainConfig(backbone="tiny-clip"), adapter, explicit={"backbone"})
    args = ["train", "--init-adapter", str(adapter), "--data", str(root / "b"), "--option", "rank=8"]
    assert main(args + ["--out", str(tmp_path)]) != 0
    assert "--option cannot be combined with --init-adapter" in capsys.readouterr().err
    cfg = warm_start(TrainConfig(steps=2), adapter)
    with pytest.raises(AdapterError, match="options"):
        train_adapter(
            TrainConfig(**{**cfg.__dict__, "method_options": {"rank": 8}}), load_dataset(root / "b"), tmp_path / "x"
        )


def test_a_warm_started_run_resumes_from_its_checkpoint(first, tmp_path):
    root, adapter = first
    cfg = warm_start(TrainConfig(steps=6, warmup=0, checkpoint_every=2), adapter)
    data = load_dataset(root / "b")
    stops = iter([False, False, False, True])
    half = train_adapter(cfg, data, tmp_path / "run", holdout=3, should_stop=lambda: next(stops, True))
    assert half["status"] == "cancelled" and half["step"] == 3
    whole = train_adapter(cfg, data, tmp_path / "run", holdout=3, resume=True)
    straight = train_adapter(cfg, data, tmp_path / "straight", holdout=3)
    assert whole["status"] == "done" and whole["step"] == 6
    assert whole["adapted"]["iou"] == pytest.approx(straight["adapted"]["iou"], abs=1e-5)
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert sum(e["type"] == "warm_start" for e in events) == 1  # loaded once: the resume uses the checkpoint
