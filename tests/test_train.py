"""The trainer: resume equivalence, NaN guard, cancellation, events, frozen-vs-adapted reporting."""

import json

import numpy as np
import pytest
import torch

from adapt.data.synthetic import make_dataset
from adapt.train import TrainConfig, TrainingError, lr_factor, train


class _Sample:
    def __init__(self, image, mask, stem):
        self.image, self.mask, self.stem = image, mask, stem


def samples(n=4, domain="source", seed=0):
    scenes = make_dataset(domain, n=n, size=128, seed=seed)
    return [
        _Sample(s.image, np.any(np.stack(s.masks[:1]), axis=0).astype(np.uint8), f"s{i}") for i, s in enumerate(scenes)
    ]


def config(**kw):
    base = dict(
        backbone="tiny-sam",
        checkpoint="random",
        method="parser",
        steps=4,
        batch_size=2,
        lr=1e-2,
        head_lr=1e-3,
        warmup=1,
        checkpoint_every=2,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def losses(out_dir):
    return [e["loss"] for e in map(json.loads, open(out_dir / "events.jsonl")) if e["type"] == "step"]


def test_lr_schedule():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100) == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    data, held = samples(4), samples(2, seed=1)
    full = train(config(steps=4), data, held, tmp_path / "full")
    stop_after = {"n": 0}

    def stop():  # cancel once two steps are done
        stop_after["n"] += 1
        return stop_after["n"] > 2

    part = train(config(steps=4), data, held, tmp_path / "part", should_stop=stop)
    assert part["status"] == "cancelled" and part["step"] == 2
    resumed = train(config(steps=4), data, held, tmp_path / "part", resume=True)
    assert resumed["status"] == "done" and resumed["step"] == 4
    a, b = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert len(a) == len(b) == 4
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    sa = full["run"].handle.state_dict()
    sb = resumed["run"].handle.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-6)
    assert resumed["frozen"] == full["frozen"]  # carried in the checkpoint, not recomputed


def test_nan_loss_stops_with_a_message(tmp_path, monkeypatch):
    from adapt.tasks import dichotomous

    monkeypatch.setattr(dichotomous, "bce_dice_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingError, match="loss became nan at step 1.*lower learning rate"):
        train(config(), samples(2), [], tmp_path / "nan")
    events = [json.loads(line) for line in open(tmp_path / "nan" / "events.jsonl")]
    assert events[-1]["type"] == "error"
    assert not (tmp_path / "nan" / "adapter").exists()


def test_events_and_frozen_vs_adapted(tmp_path):
    result = train(config(steps=3, eval_every=2), samples(3), samples(2, seed=1), tmp_path / "r")
    events = [json.loads(line) for line in open(tmp_path / "r" / "events.jsonl")]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3]
    assert all({"loss", "lr", "images_per_s", "eta_s"} <= set(e) for e in steps)
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["model"] for e in evals] == ["frozen", "adapted", "adapted"]
    assert set(result["frozen"]) >= {"iou", "dice", "maxF", "Sm", "MAE"}
    assert result["adapted"] != result["frozen"]


def test_empty_training_set_is_refused(tmp_path):
    with pytest.raises(TrainingError, match="no training samples"):
        train(config(), [], [], tmp_path / "x")


def test_a_run_killed_after_its_checkpoint_resumes_with_each_step_once(tmp_path):
    """The kill came at step 3, after the checkpoint of step 2: the events of step 3, the
    half-written line and the temporary checkpoint file the kill left behind are gone after resume."""
    data, held = samples(4), samples(2, seed=1)
    out = tmp_path / "run"
    stop_after = {"n": 0}

    def stop():
        stop_after["n"] += 1
        return stop_after["n"] > 2

    train(config(steps=4, checkpoint_every=2), data, held, out, should_stop=stop)
    events = out / "events.jsonl"
    lines = [json.loads(x) for x in events.read_text().splitlines() if '"cancelled"' not in x]
    lines.append({"type": "step", "time": 0, "step": 3, "loss": 9.9, "lr": 0.0, "eta_s": 1.0})  # after the checkpoint
    events.write_text("".join(json.dumps(e) + "\n" for e in lines) + '{"type": "st')
    (out / ".checkpoint.pt.dead.part").write_bytes(b"half a checkpoint")
    train(config(steps=4, checkpoint_every=2), data, held, out, resume=True)
    steps = [json.loads(x)["step"] for x in events.read_text().splitlines() if '"type": "step"' in x]
    assert steps == [1, 2, 3, 4] and 9.9 not in losses(out)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
