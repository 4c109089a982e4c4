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
from studio_support import OWNER, dataset_zip, work

from app.config import Limits, Paths
from app.label_rest import LabelRest
from app.run.worker import run_job
from app.studio import Studio, UserError

OTHER = "another-owner-" + "c" * 20


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
    assert items[0][1] == f"{rows[0]['file']} · #1 · {rows[0]['uncertainty']:.2f}"  # the file name first

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


# --- issue 24: one pair per result, the reviews marked, the download as decided, fixed held-out ----


@pytest.fixture(scope="module")
def round0(tmp_path_factory):
    """A studio of its own: a finished 4-step training job on 6 pairs (2 held out) and a finished
    labelling job over 5 unlabelled images with its adapter."""
    root = tmp_path_factory.mktemp("rounds")
    studio = Studio(Paths(root / "studio"), Limits())
    rest = LabelRest(studio)
    train_job = studio.submit(
        OWNER, str(dataset_zip(root, n=6, size=96)), "dichotomous", "tiny-sam", "parser", 4, 1e-3, 1e-4, 2
    )
    assert work(studio) == ["done"]
    return studio, rest, train_job, _label(studio, rest, root, train_job, seed=5)


def _label(studio: Studio, rest: LabelRest, root, adapter: str, seed: int, n: int = 5) -> str:
    from adapt.data.synthetic import make_dataset

    folder = root / f"unlabelled-{seed}"
    folder.mkdir()
    for i, s in enumerate(make_dataset("camouflage", n=n, size=112, seed=seed)):
        Image.fromarray(s.image).save(folder / f"p{seed}-{i}.png")
    job = rest.submit(OWNER, sorted(str(p) for p in folder.iterdir()), adapter)
    assert work(studio) == ["done"]
    return job


def _pairs(studio: Studio) -> list[str]:
    return sorted(p.stem for p in (studio.paths.labelled_set(OWNER) / "images").glob("*.png"))


def test_accepting_twice_keeps_one_pair_and_each_review_is_marked(round0):
    studio, rest, _, job = round0
    _, rows, _ = rest.results(OWNER, job)
    first, second = rows[0], rows[1]
    stem = rest.accept(OWNER, job, first["name"])
    assert rest.accept(OWNER, job, first["name"]) == stem  # accepted again: the same pair, rewritten
    assert _pairs(studio) == [stem]

    # correcting an accepted result rewrites its pair too, and marks it corrected
    from app import labeller

    state = rest.correction(OWNER, job, first["name"])
    assert labeller.saved_as(state) == stem

    state["labels"][:] = 0
    state["labels"][10:50, 10:50] = 1
    assert labeller.save_pair(state, studio.paths.labelled_set(OWNER), "dichotomous", rest.classes(OWNER, job)) == stem
    assert rest.corrected(OWNER, state) == first["name"]
    assert _pairs(studio) == [stem]
    saved = np.asarray(Image.open(studio.paths.labelled_set(OWNER) / "masks" / f"{stem}.png"))
    assert (saved > 0).sum() == 40 * 40

    rest.accept(OWNER, job, second["name"])
    assert len(_pairs(studio)) == 2
    items, rows, text = rest.results(OWNER, job)
    marks = {r["name"]: r["review"] for r in rows}
    assert marks[first["name"]] == "corrected" and marks[second["name"]] == "accepted"
    assert sum(bool(m) for m in marks.values()) == 2
    captions = {r["name"]: caption for r, (_, caption) in zip(rows, items)}
    assert captions[first["name"]].endswith("✎ corrected") and captions[second["name"]].endswith("✓ accepted")
    assert first["file"] in captions[first["name"]]
    assert "Reviewed 2 of 5** (1 accepted, 1 corrected), 3 to go" in text
    # reopened, the correction starts from the corrected mask, not the model's
    assert (rest.correction(OWNER, job, first["name"])["labels"] > 0).sum() == 40 * 40


def test_download_all_holds_the_corrections_marked(round0):
    """Runs after the reviews above: the corrected mask replaces the model's in masks/ (the
    model's under predicted/), and scores.csv, annotations.json and reviewed.json say which."""
    import csv
    import io

    studio, rest, _, job = round0
    reviews = {r["name"]: r for r in rest.results(OWNER, job)[1] if r["review"]}
    corrected = next(n for n, r in reviews.items() if r["review"] == "corrected")
    accepted = next(n for n, r in reviews.items() if r["review"] == "accepted")
    model = studio.paths.job_files(job).labels / "masks"
    with zipfile.ZipFile(rest.download(OWNER, job)) as z:
        names = set(z.namelist())
        mask = np.asarray(Image.open(io.BytesIO(z.read(f"masks/{corrected}.png"))))
        predicted = np.asarray(Image.open(io.BytesIO(z.read(f"predicted/masks/{corrected}.png"))))
        kept = z.read(f"masks/{accepted}.png")
        scores = list(csv.DictReader(io.StringIO(z.read("scores.csv").decode())))
        coco = json.loads(z.read("annotations.json"))
        marked = json.loads(z.read("reviewed.json"))
    assert (mask > 0).sum() == 40 * 40  # the user's correction
    assert np.array_equal(predicted, np.asarray(Image.open(model / f"{corrected}.png")))
    assert kept == (model / f"{accepted}.png").read_bytes()  # accepted: the model's mask as is
    assert {r["name"]: r["review"] for r in scores if r["review"]} == {corrected: "corrected", accepted: "accepted"}
    assert len(scores) == 5 and sum(n.startswith("masks/") for n in names) == 5
    assert not any(n.startswith(("thumbs/", "corrected/")) or n == "records.jsonl" for n in names)
    by_file = {i["file_name"]: i for i in coco["images"]}
    assert by_file[reviews[corrected]["file"]]["review"] == "corrected"
    image_id = by_file[reviews[corrected]["file"]]["id"]
    ann = [a for a in coco["annotations"] if a["image_id"] == image_id]
    assert [a["area"] for a in ann] == [40 * 40] and "score" not in ann[0]  # from the corrected mask
    assert marked[corrected]["review"] == "corrected"


def test_retraining_keeps_one_held_out_set_and_compares_with_the_previous_adapter(round0, tmp_path):
    """Two rounds: the first training job's held-out images stay held out (never trained on) in
    both, the labelled pairs are trained on once each, and each round is scored against the
    adapter it continues on those images."""
    from adapt.export import read_adapter

    studio, rest, train_job, job = round0
    first, _ = read_adapter(studio.paths.job_files(train_job).adapter)
    held = sorted(first["data"]["heldout_stems"].split(", "))
    assert len(held) == 2

    def round_of(label_job) -> tuple[str, dict, list[str], list[str]]:
        new = rest.retrain(OWNER, label_job, steps=2)
        assert work(studio) == ["done"]
        card, _ = read_adapter(studio.paths.job_files(new).adapter)
        with zipfile.ZipFile(studio.paths.job_files(new).data_zip) as z:
            trained = sorted(n[len("images/") : -4] for n in z.namelist() if n.startswith("images/"))
        return new, card, sorted(card["data"]["heldout_stems"].split(", ")), trained

    one, card, held1, trained1 = round_of(job)
    assert held1 == held and not set(held) & set(trained1)
    assert len(trained1) == 4 + 2  # the first round's 4 training images and the 2 reviewed pairs
    status = studio.status(OWNER, one)
    # the previous adapter, on the same held-out images: the first adapter's own held-out score
    assert status["previous"]["iou"] == pytest.approx(first["metrics"]["adapted_iou"], abs=1e-5)
    assert card["metrics"]["previous_iou"] == pytest.approx(status["previous"]["iou"])
    assert status["frozen"]["iou"] == pytest.approx(first["metrics"]["frozen_iou"], abs=1e-5)

    # the second round: the retrained adapter labels more, one more is accepted
    job2 = _label(studio, rest, tmp_path, one, seed=9, n=3)
    rest.accept(OWNER, job2, rest.results(OWNER, job2)[1][0]["name"])
    two, card2, held2, trained2 = round_of(job2)
    assert held2 == held and not set(held) & set(trained2)
    assert len(trained2) == 4 + 3  # the earlier pairs once each, and the new one
    assert studio.status(OWNER, two)["previous"]["iou"] == pytest.approx(card["metrics"]["adapted_iou"], abs=1e-5)


def test_a_failed_labelling_job_resumes_from_its_ledger(round0, monkeypatch):
    import app.jobs.label as label_kind
    from app.run.worker import record_failure

    studio, rest, train_job, _ = round0
    files = sorted(str(p) for p in studio.paths.job_files(round0[3]).inputs.iterdir())
    job = rest.submit(OWNER, files, train_job)
    real = label_kind.label_images

    def dies_after_two(*args, progress, **kwargs):
        def report(done, total, name):
            progress(done, total, name)
            if done == 2:
                raise OSError("the network file system went away")

        return real(*args, progress=report, **kwargs)

    monkeypatch.setattr(label_kind, "label_images", dies_after_two)
    claimed = studio.store.claim("w1", 1)
    with pytest.raises(OSError):
        run_job(studio.store, studio.paths, claimed, "w1", threading.Event(), 40_000_000)
    record_failure(studio.store, job, "w1", "OSError: the network file system went away")
    assert studio.status(OWNER, job)["status"] == "failed"
    monkeypatch.setattr(label_kind, "label_images", real)

    assert "labels the images it has not labelled yet" in studio.resume(OWNER, job)
    assert work(studio) == ["done"]
    assert len(rest.results(OWNER, job)[1]) == 5
    events = [json.loads(line) for line in studio.paths.job_files(job).events.read_text().splitlines()]
    assert sum(e["type"] == "labelled" for e in events) == 2 + 3  # the first two were not labelled again


def test_a_labelling_job_that_kept_nothing_says_to_start_again_in_its_tab(round0):
    from app.run.worker import record_failure

    studio, rest, train_job, job0 = round0
    job = rest.submit(OWNER, [str(next(studio.paths.job_files(job0).inputs.iterdir()))], train_job)
    studio.store.claim("w1", 1)
    record_failure(studio.store, job, "w1", "killed before it began")
    with pytest.raises(UserError, match="start it again from the Label the rest tab"):
        studio.resume(OWNER, job)
