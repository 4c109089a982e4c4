"""Never worse than frozen without saying so: the trainer returns its best state by a validation
split of the training data (the held-out split is scored only at the end), and a run whose
adapted model is not better than the frozen one says so in the CLI, the job status and the
model card."""

from __future__ import annotations

import json

import pytest
from studio_support import OWNER

from adapt.__main__ import main
from adapt.data.synthetic import make_dataset, write_folder
from adapt.pipeline import validation_split
from adapt.tasks.dichotomous import DichotomousTask
from adapt.train import TrainConfig, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Scenes like the bundled tiny-sam's own (frozen IoU ~0.6), where wrecking it shows."""
    return write_folder(
        make_dataset("source", n=14, size=96, seed=5), tmp_path_factory.mktemp("d") / "data", task="dichotomous"
    )


def test_the_validation_split_comes_from_the_training_images_only():
    from adapt.data import load_dataset  # noqa: F401  (the samples only need stems here)

    class S:
        def __init__(self, stem):
            self.stem = stem

    samples = [S(f"img{i:02d}") for i in range(20)]
    train_part, val = validation_split(samples, 0.2, seed=0)
    assert len(val) == 4 and len(train_part) == 16 and not {s.stem for s in val} & {s.stem for s in train_part}
    assert validation_split(samples, 0.2, seed=0)[1] == val  # reproducible
    assert len(validation_split(samples[:10], 0.1)[1]) == 2  # never a choice made on one image
    assert validation_split(samples[:9], 0.2)[1] == []  # too few images to spare any
    assert validation_split(samples, 0.0)[1] == []


def test_best_checkpoint_selection_never_reads_the_heldout_split_before_the_final_score(data, monkeypatch):
    from adapt.data import load_dataset

    dataset = load_dataset(data, task="dichotomous")
    samples = list(dataset)
    train_samples, validation, heldout = samples[:10], samples[10:12], samples[12:]
    calls = []
    original = DichotomousTask.evaluate

    def spy(self, evaluated, *a, **k):
        calls.append({s.stem for s in evaluated})
        return original(self, evaluated, *a, **k)

    monkeypatch.setattr(DichotomousTask, "evaluate", spy)
    events = []
    cfg = TrainConfig(steps=6, batch_size=2, lr=3e-3, eval_every=2, checkpoint_every=0)
    summary = train(cfg, train_samples, heldout, echo=events.append, validation_samples=validation)
    held, val = {s.stem for s in heldout}, {s.stem for s in validation}
    first_heldout = next(i for i, c in enumerate(calls) if c == held)
    assert all(c == val for c in calls[:first_heldout])  # frozen, steps 2 and 4, the last state
    assert len(calls[:first_heldout]) == 4 and calls[first_heldout:] == [held, held]  # frozen, adapted
    kinds = [e["type"] for e in events]
    assert kinds.index("best_checkpoint") < max(i for i, e in enumerate(events) if e.get("split") == "heldout")
    assert summary["best_step"] in (0, 2, 4, 6) and summary["frozen"] and summary["adapted"]


def test_an_overfit_run_returns_its_best_state_and_warns_everywhere(data, tmp_path, capsys):
    """lr 1 wrecks the adapter within a step: the best validated state is the frozen one (step 0),
    so the adapter returned scores exactly the frozen model's, and every report says it is not
    better."""
    from app.config import Limits, Paths
    from app.progress import read_progress
    from app.studio import Studio

    studio = Studio(Paths(tmp_path / "studio"), Limits())
    spec = {"task": "dichotomous", "backbone": "tiny-sam", "method": "parser", "steps": 8}
    job = studio.store.submit(OWNER, {"train": spec}, str(data))
    out = studio.paths.job_files(job).folder
    args = ["train", "--data", str(data), "--steps", "8", "--batch-size", "2", "--holdout", "2", "--lr", "1"]
    assert main(args + ["--head-lr", "1", "--eval-every", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "warning: The adapted model is not better than the frozen one" in printed.out
    assert "Try a lower learning rate (this run: 1)" in printed.out
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    best = next(e for e in events if e["type"] == "best_checkpoint")
    done = next(e for e in events if e["type"] == "done")
    assert best["best_step"] == 0  # nothing after the frozen state was better on the validation images
    assert done["adapted"]["iou"] == pytest.approx(done["frozen"]["iou"], abs=1e-6)  # what was returned
    assert read_progress(out).warning == done["warning"]
    status = studio.status(OWNER, job)
    assert status["warning"].startswith("The adapted model is not better") and status["best_step"] == best["best_step"]
    card = (out / "adapter" / "README.md").read_text()
    assert "## Warning" in card and "not better than the frozen one" in card
    assert "best_checkpoint" in (out / "adapter" / "adapter_config.json").read_text()
