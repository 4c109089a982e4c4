"""Label the rest in the studio's service layer (app.label_rest), with the worker's job function
run in-process: submit -> label in the background -> results most uncertain first -> correct one
from the model's mask, accept another -> retrain warm-started on the enlarged set."""

from __future__ import annotations

import json
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image
from studio_support import OWNER, dataset_zip

from app.config import Limits, Paths
from app.label_rest import LabelRest
from app.run.worker import run_job
from app.studio import Studio, UserError

OTHER = "another-owner-" + "c" * 20


def work(studio: Studio) -> list[str]:
    """Run every queued job to its end, as a worker would; returns their final statuses."""
    statuses = []
    while (job := studio.store.claim("w1", 1)) is not None:
        statuses.append(run_job(studio.store, studio.paths, job, "w1", threading.Event(), 40_000_000))
    return statuses


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A finished 4-step training job and a folder of unlabelled images (one corrupt)."""
    root = tmp_path_factory.mktemp("labelrest")
    studio = Studio(Paths(root / "studio"), Limits())
    data = dataset_zip(root, n=6, size=96)
    train_job = studio.submit(OWNER, str(data), "dichotomous", "tiny-sam", "parser", 4, 1e-3, 1e-4, 2)
    assert work(studio) == ["done"]
    images = root / "unlabelled"
    images.mkdir()
    from adapt.data.synthetic import make_dataset

    for i, s in enumerate(make_dataset("camouflage", n=7, size=112, seed=5)):
        Image.fromarray(s.image).save(images / f"u{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    return studio, LabelRest(studio), train_job, images


def test_label_the_rest_then_correct_accept_and_retrain(loop):
    studio, rest, train_job, images = loop
    files = sorted(str(p) for p in images.iterdir())
    job = rest.submit(OWNER, files, train_job)
    with pytest.raises(UserError, match="is queued"):
        rest.results(OWNER, job)
    assert work(studio) == ["done"]
    status = studio.status(OWNER, job)
    assert status["kind"] == "label" and status["step"] == 8 and status["steps"] == 8 and status["labels_ready"]

    items, rows, text = rest.results(OWNER, job)
    assert len(items) == len(rows) == 7 and "broken.png" in text
    assert [r["uncertainty"] for r in rows] == sorted((r["uncertainty"] for r in rows), reverse=True)
    assert items[0][1] == f"#1 · {rows[0]['uncertainty']:.2f}"

    # the most uncertain result, opened for correction: the model's mask is the starting label map
    state = rest.correction(OWNER, job, rows[0]["name"])
    mask = np.asarray(Image.open(studio.paths.job_files(job).labels / "masks" / f"{rows[0]['name']}.png"))
    assert np.array_equal(state["labels"] > 0, mask > 0)
    from app import labeller

    state["labels"][:] = 0
    state["labels"][20:60, 20:60] = 1  # the user's correction
    labeller.save_pair(state, studio.paths.labelled_set(OWNER), "dichotomous", rest.classes(OWNER, job))
    rest.accept(OWNER, job, rows[1]["name"])  # the second, accepted as the model had it
    saved = sorted((studio.paths.labelled_set(OWNER) / "masks").iterdir())
    assert len(saved) == 2

    with zipfile.ZipFile(rest.download(OWNER, job)) as z:
        names = set(z.namelist())
    assert {"annotations.json", "scores.csv", "failed.json"} <= names and sum(
        n.startswith("masks/") for n in names
    ) == 7

    retrain = rest.retrain(OWNER, job, steps=3)
    spec = studio.store.get(retrain, OWNER)["config"]["train"]
    assert spec["init_adapter"] and spec["method"] == "parser"
    assert work(studio) == ["done"]
    s = studio.status(OWNER, retrain)
    assert s["status"] == "done" and s["adapted"] and s["frozen"]
    events = [json.loads(line) for line in studio.paths.job_files(retrain).events.read_text().splitlines()]
    start = next(e for e in events if e["type"] == "start")
    assert start["train"] + start["heldout"] == 6 + 2  # the adapter's data and the two saved pairs
    assert any(e["type"] == "warm_start" for e in events)


def test_labelling_results_are_private_and_bad_requests_are_named(loop):
    studio, rest, train_job, images = loop
    job = studio.store.list(OWNER)[0]["id"]
    with pytest.raises(UserError, match="no such job"):
        rest.results(OTHER, job)
    with pytest.raises(UserError, match="no such job|no uploaded adapter|no adapter"):
        rest.submit(OTHER, [str(next(images.iterdir()))], train_job)  # someone else's adapter
    with pytest.raises(UserError, match="upload the images"):
        rest.submit(OWNER, [], train_job)
    with pytest.raises(UserError, match="not images"):
        rest.submit(OWNER, [str(images.parent / "data-dichotomous-camouflage-6-96.zip"), str(images / "u0.png")])
    with pytest.raises(UserError, match="training job, not a labelling job"):
        rest.results(OWNER, train_job)
    with pytest.raises(UserError, match="no labelled image"):
        label_job = next(j["id"] for j in studio.store.list(OWNER) if j["kind"] == "label")
        rest.correction(OWNER, label_job, "../../etc/passwd")
    slip = images.parent / "slip.zip"
    with zipfile.ZipFile(slip, "w") as z:
        z.writestr("../evil.png", b"x")
    with pytest.raises(UserError, match="evil"):
        rest.submit(OWNER, [str(slip)], train_job)


def test_a_zip_of_images_is_extracted_by_the_worker_and_frozen_models_label_too(loop, tmp_path):
    studio, rest, _, images = loop
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(images.glob("u[0-2].png")):
            z.write(p, f"batch/{p.name}")
    job = rest.submit(OWNER, [str(archive)], "", backbone="tiny-sam", task="dichotomous")
    assert work(studio) == ["done"]
    _, rows, _ = rest.results(OWNER, job)
    assert sorted(r["file"] for r in rows) == ["batch/u0.png", "batch/u1.png", "batch/u2.png"]
    with pytest.raises(UserError, match="frozen model"):
        rest.retrain(OWNER, job)
    coco = json.loads(zipfile.ZipFile(rest.download(OWNER, job)).read("annotations.json"))
    assert len(coco["images"]) == 3
