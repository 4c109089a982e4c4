"""The studio's parts without a server: job store, progress reader, click labelling, upload checks."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from studio_support import OWNER, bad_uploads, dataset_zip, slip_zip

from app.config import Limits, Paths
from app.jobs import JobStore
from app.progress import read_progress
from app.studio import Studio, UserError, check_owner, estimate_memory, parse_clicks

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "jobs.sqlite")


def test_jobs_belong_to_their_owner_and_ids_are_unguessable(store):
    a = store.submit("owner-a", {"x": 1}, "data.zip")
    b = store.submit("owner-b", {"x": 2}, "data.zip")
    assert len(a) >= 22 and a != b
    assert store.get(a, "owner-a")["config"] == {"x": 1}
    assert store.get(a, "owner-b") is None
    assert [j["id"] for j in store.list("owner-a")] == [a]
    assert store.cancel(a, "owner-b") is None and store.get(a, "owner-a")["status"] == "queued"


def test_claims_are_atomic_across_workers(tmp_path):
    path = tmp_path / "jobs.sqlite"
    ids = {JobStore(path).submit("o", {}, "d") for _ in range(20)}
    claimed, lock = [], threading.Lock()

    def work(name):
        store = JobStore(path)  # its own connections, as a separate process would have
        while (job := store.claim(name, 0)) is not None:
            with lock:
                claimed.append(job["id"])

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # every job exactly once


def test_cancel_queued_at_once_running_by_flag(store):
    queued = store.submit("o", {}, "d")
    assert store.cancel(queued, "o") == "cancelled"
    running = store.submit("o", {}, "d")
    assert store.claim("w1", 1)["id"] == running
    assert not store.beat(running, "w1")
    assert store.cancel(running, "o") == "running"
    assert store.beat(running, "w1")  # the worker sees the flag at its next beat
    store.finish(running, "cancelled", worker="w1")
    assert store.get(running, "o")["status"] == "cancelled"


def test_only_the_holding_worker_finishes_and_restarts_requeue(store):
    job = store.submit("o", {}, "d")
    store.claim("old", 1)
    assert store.requeue_interrupted() == [job]  # the app restarted
    assert store.get(job, "o")["status"] == "queued"
    store.claim("new", 2)
    store.finish(job, "queued", worker="old")  # a stale worker changes nothing
    assert store.get(job, "o")["status"] == "running"
    assert store.fail_worker_jobs("new", "killed") == [job]
    got = store.get(job, "o")
    assert got["status"] == "failed" and got["error"] == "killed" and got["attempts"] == 2


def test_progress_skips_a_half_written_line(tmp_path):
    events = [
        {"type": "start", "time": 0, "train": 3, "heldout": 1, "device": "cpu", "counts": {"trainable": 5}},
        {"type": "eval", "time": 0, "step": 0, "model": "frozen", "metrics": {"iou": 0.1, "dice": 0.2}},
        {"type": "step", "time": 1, "step": 1, "loss": 0.5, "lr": 1e-3, "eta_s": 3.0},
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"type": "st')
    p = read_progress(tmp_path)
    assert p.step == 1 and p.last_loss == 0.5 and p.eta_s == 3.0 and p.frozen["iou"] == 0.1
    curves = p.curves()
    assert (
        curves["loss"] == [{"step": 1, "loss": 0.5}]
        and len(curves["metric"]) == 2
        and curves["metric"][0]["score"] == 0.1
    )
    assert read_progress(tmp_path / "missing").step == 0


def test_owner_tokens_and_clicks_are_checked():
    assert check_owner(OWNER) == OWNER
    for bad in ("", None, "short", "x" * 20 + "/../"):
        with pytest.raises(UserError):
            check_owner(bad)
    coords, labels = parse_clicks("10,20,1; 30.5,40,0")
    assert coords.tolist() == [[10, 20], [30.5, 40]] and labels.tolist() == [1, 0]
    assert parse_clicks(" ") is None
    with pytest.raises(UserError):
        parse_clicks("1,2,3,4")
    for bad in ("nan,5", "5,inf", "-1,5", "5,-0.5", "1e308,5", "1,2,2", "1,2,nan"):
        with pytest.raises(UserError, match="click"):
            parse_clicks(bad)


def test_a_click_off_the_image_is_refused(tmp_path):
    studio = Studio(Paths(tmp_path / "studio"), Limits())
    image = str(REPO / "assets" / "examples" / "cells.jpg")
    for far in ("5,100000", "100000,5"):
        with pytest.raises(UserError, match="outside the .* image"):
            studio.predict(OWNER, image, "", "tiny-sam", "dichotomous", clicks=far)


def test_exemplar_boxes_are_checked_before_anything_runs():
    """parse_boxes: "x0,y0,x1,y1; ..." in image pixels, at most MAX_BOXES, four finite numbers each,
    the top-left corner first; boxes_inside: on the image (x1 <= width, y1 <= height)."""
    from app.checks import MAX_BOXES, boxes_inside, parse_boxes

    boxes = parse_boxes(" 10,20,60,70 ; 0,0.5,3,4;")
    assert boxes.dtype == np.float32 and boxes.tolist() == [[10, 20, 60, 70], [0, 0.5, 3, 4]]
    assert parse_boxes("") is None and parse_boxes(None) is None and parse_boxes(" ; ") is None
    assert len(parse_boxes("; ".join(["1,2,3,4"] * MAX_BOXES))) == MAX_BOXES
    for bad, words in (
        ("; ".join(["1,2,3,4"] * (MAX_BOXES + 1)), f"{MAX_BOXES + 1} exemplar boxes; at most {MAX_BOXES} are accepted"),
        ("1,2,3", "exemplar boxes are 'x0,y0,x1,y1' separated by ';', got '1,2,3'"),
        ("1,2,3,4,5", "exemplar boxes are 'x0,y0,x1,y1'"),
        ("a,b,c,d", "exemplar boxes are 'x0,y0,x1,y1'"),
        ("1,2,nan,4", "exemplar boxes are pixel positions"),
        ("1,2,inf,4", "exemplar boxes are pixel positions"),
        ("-1,2,3,4", "exemplar boxes are pixel positions"),
        ("30,2,10,4", r"top-left to the bottom-right corner \(x0 < x1, y0 < y1\), got '30,2,10,4'"),
        ("1,40,3,40", "top-left to the bottom-right corner"),
        ("x" * 5000, "at most 4,096 are accepted"),
        (["1,2,3,4"], "exemplar boxes must be text, not list"),
    ):
        with pytest.raises(UserError, match=words):
            parse_boxes(bad)
    boxes_inside(parse_boxes("0,0,90,112"), (112, 90, 3))  # corners are pixel edges: the whole image fits
    boxes_inside(None, (112, 90, 3))
    for off in ("0,0,91,10", "0,0,10,113"):
        with pytest.raises(UserError, match=r"the exemplar box \(0, 0, .*\) is outside the 90x112 image"):
            boxes_inside(parse_boxes(off), (112, 90, 3))


def test_exemplar_boxes_on_a_task_that_takes_none_are_refused(tmp_path):
    """The dichotomous and open-vocabulary tasks take no exemplars: the request is refused with the
    reason, before the image or a model is loaded (the image path here does not exist)."""
    studio = Studio(Paths(tmp_path / "studio"), Limits())
    for task, backbone in (("dichotomous", "tiny-sam"), ("openvocab", "tiny-clip")):
        with pytest.raises(UserError, match=r"exemplar boxes are prompts of the concept task \(SAM 3\)"):
            studio.predict(OWNER, "no-such.png", "", backbone, task, "a, b", boxes="1,2,30,40")
    with pytest.raises(UserError, match="unknown task 'depth'"):
        studio.predict(OWNER, "no-such.png", "", "tiny-sam", "depth", boxes="1,2,30,40")
    with pytest.raises(UserError, match="upload an image first"):  # no boxes: nothing to refuse
        studio.predict(OWNER, "", "", "tiny-sam", "dichotomous", boxes=" ")


def test_memory_estimate_names_the_device():
    text = estimate_memory("sam-vit-b", "parser", 2)
    assert "Estimated" in text and ("MB" in text or "GB" in text)


def test_uploads_are_checked_before_anything_is_kept(tmp_path):
    studio = Studio(Paths(tmp_path / "studio"))
    for images, masks, words in bad_uploads(tmp_path / "bad").values():
        with pytest.raises(UserError, match=words):
            studio.stage_upload(OWNER, "dichotomous", images=[str(p) for p in images], masks=[str(p) for p in masks])
    with pytest.raises(UserError, match="outside the dataset folder"):
        studio.stage_upload(OWNER, "dichotomous", zip_file=str(slip_zip(tmp_path / "slip.zip")))
    assert not list((studio.paths.uploads / OWNER).glob("*.zip"))  # nothing half-kept
    dest, summary = studio.stage_upload(OWNER, "dichotomous", zip_file=str(dataset_zip(tmp_path, n=3, size=64)))
    assert dest.exists() and "3 image/mask pairs" in summary
    with pytest.raises(UserError, match="not a backbone"):
        studio.submit(OWNER, str(dest), "dichotomous", "tiny-clip", "parser", 5, 1e-3, 1e-4)
    with pytest.raises(UserError, match="steps"):
        studio.submit(OWNER, str(dest), "dichotomous", "tiny-sam", "parser", 10**9, 1e-3, 1e-4)
    assert studio.store.list(OWNER) == []


def test_click_labelling_makes_a_valid_dataset(tmp_path, monkeypatch):
    from adapt.data import load_dataset
    from app import labeller

    image = np.zeros((400, 1000, 3), np.uint8)
    state = labeller.new_state(image, "photo one.jpg")
    assert state["scale"] == pytest.approx(labeller.DISPLAY / 1000)
    labeller.click(state, 100, 50, "foreground point")
    assert labeller.display_size(state) == (768, 307)  # a click maps through the view's own pixel grid
    assert state["points"] == [[pytest.approx(100 * 1000 / 768), pytest.approx(50 * 400 / 307), 1]]
    labeller.click(state, 10, 10, "box (two clicks)")
    labeller.click(state, 200, 100, "box (two clicks)")
    assert state["box"][2] == pytest.approx(200 / state["scale"])
    state["proposal"] = np.zeros((400, 1000), bool)
    state["proposal"][100:200, 100:300] = True
    labeller.add_region(state, 2)
    assert state["labels"].max() == 2 and state["points"] == [] and state["proposal"] is None
    layer = np.zeros((307, 768, 4), np.uint8)
    layer[:, :20] = (255, 0, 0, 255)  # red: erase
    layer[:20, 700:] = (0, 255, 0, 255)  # green: paint
    labeller.apply_brush(state, layer, 1)
    assert (state["labels"][:, :20] == 0).all() and (state["labels"][:10, 950:] == 1).all()
    assert labeller.render(state, 3).shape[1] == labeller.DISPLAY

    folder = tmp_path / "set"
    for name in ("a.png", "a.png"):
        state = labeller.new_state(np.full((64, 80, 3), 90, np.uint8), name)
        state["labels"][10:30, 10:30] = 1
        labeller.save_pair(state, folder, "dichotomous", ["background", "foreground"])
    dataset = load_dataset(folder, task="dichotomous")
    assert dataset.stems == ["a", "a_2"] and dataset[0].mask.max() == 1
    assert len(labeller.gallery(folder, "dichotomous")) == 2
    with pytest.raises(ValueError, match="nothing is labelled"):
        labeller.save_pair(labeller.new_state(np.zeros((8, 8, 3), np.uint8), "b"), folder, "dichotomous", [])


def test_the_metric_chart_has_lines_from_the_first_adapted_score(tmp_path):
    """Mid-training (one adapted evaluation so far) every series must have two points to draw."""
    events = [
        {"type": "eval", "time": 0, "step": 0, "model": "frozen", "metrics": {"iou": 0.1, "dice": 0.2}},
        {"type": "step", "time": 1, "step": 7, "loss": 0.5, "lr": 1e-3, "eta_s": 3.0},
        {"type": "eval", "time": 1, "step": 7, "model": "adapted", "metrics": {"iou": 0.3, "dice": 0.4}},
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    rows = read_progress(tmp_path).curves()["metric"]
    series = {}
    for r in rows:
        series.setdefault(r["series"], []).append((r["step"], r["score"]))
    assert series == {
        "iou adapted": [(0, 0.1), (7, 0.3)],
        "dice adapted": [(0, 0.2), (7, 0.4)],
        "iou frozen": [(0, 0.1), (7, 0.1)],
        "dice frozen": [(0, 0.2), (7, 0.2)],
    }


def test_a_killed_job_is_retried_once_per_step_of_death(store):
    job = store.submit("o", {}, "d")
    store.claim("w1", 1)
    assert store.retry_after_death(job, "w1", step=12, note="killed at step 12")
    got = store.get(job, "o")
    assert got["status"] == "queued" and got["died_at"] == 12 and "step 12" in got["note"]
    store.claim("w2", 2)
    assert not store.retry_after_death(job, "w2", step=12, note="again")  # same step: not again
    assert store.get(job, "o")["status"] == "running"
    assert store.retry_after_death(job, "w2", step=17, note="later")  # it got further: one more try
    store.claim("w3", 3)
    assert not store.retry_after_death(job, "other", step=30, note="x")  # only the holding worker's death


def test_an_owner_resumes_a_failed_job_only(store):
    job = store.submit("o", {}, "d")
    assert not store.resume(job, "o")  # queued, not failed
    store.claim("w", 1)
    store.fail_worker_jobs("w", "killed")
    assert not store.resume(job, "someone else")
    assert store.resume(job, "o")
    got = store.get(job, "o")
    assert got["status"] == "queued" and got["error"] is None and got["finished"] is None


def test_a_store_from_an_older_version_gains_its_new_column(tmp_path):
    import sqlite3

    from app.jobs import SCHEMA

    old = SCHEMA.replace(",\n    died_at     INTEGER", "")
    with sqlite3.connect(tmp_path / "old.sqlite") as db:
        db.executescript(old)
    store = JobStore(tmp_path / "old.sqlite")
    job = store.submit("o", {}, "d")
    assert store.get(job, "o")["died_at"] is None


def test_a_store_from_before_job_kinds_gives_every_job_its_kind(tmp_path):
    """Older stores kept a labelling job's kind in its config: the new column takes it over."""
    import sqlite3

    from app.jobs import SCHEMA

    old = SCHEMA.replace("\n    kind        TEXT NOT NULL DEFAULT 'train',", "")
    assert old != SCHEMA
    with sqlite3.connect(tmp_path / "old.sqlite") as db:
        db.executescript(old)
        for job, config in (("t", {"train": {}}), ("l", {"kind": "label", "label": {}})):
            db.execute(
                "INSERT INTO jobs (id, owner, status, config, data, created) VALUES (?, 'o', 'queued', ?, 'd', 0)",
                (job, json.dumps(config)),
            )
    store = JobStore(tmp_path / "old.sqlite")
    assert store.get("t", "o")["kind"] == "train" and store.get("l", "o")["kind"] == "label"
    assert store.get(store.submit("o", {}, "d"), "o")["kind"] == "train"
    assert store.get(store.submit("o", {}, "d", kind="label"), "o")["kind"] == "label"


def test_request_values_are_typed_and_bounded():
    from app.studio import MAX_CLICKS, as_text, choice, file_list, number, parse_classes

    assert number("3", "steps", 1, 10, integer=True) == 3 and number(2.0, "steps", 1, 10, integer=True) == 2
    for bad, message in [
        ("x", "must be a whole number"),
        (2.5, "must be a whole number"),
        (True, "whole number"),
        (None, "whole number"),
        (11, "between 1 and 10, got 11"),
        ([3], "whole number"),
    ]:
        with pytest.raises(UserError, match=message):
            number(bad, "steps", 1, 10, integer=True)
    assert as_text(None, "x") == "" and as_text("ab", "x") == "ab"
    with pytest.raises(UserError, match="x must be text, not dict"):
        as_text({}, "x")
    with pytest.raises(UserError, match="x is 5 characters long; at most 4 are accepted"):
        as_text("abcde", "x", 4)
    with pytest.raises(UserError, match="unknown task 'depth'; choose one of dichotomous, openvocab"):
        choice("depth", "task", ["dichotomous", "openvocab"])
    assert file_list("a.png", "images", 2) == ["a.png"] and file_list(None, "images", 2) == []
    with pytest.raises(UserError, match="3 images uploaded at once; at most 2 are accepted"):
        file_list(["a", "b", "c"], "images", 2)
    with pytest.raises(UserError, match="must be a list of uploaded files"):
        file_list([1], "images", 2)
    with pytest.raises(UserError, match=f"at most {MAX_CLICKS} are accepted"):
        parse_clicks(";".join(["1,2,1"] * (MAX_CLICKS + 1)))
    assert len(parse_clicks(";".join(["1,2,1"] * MAX_CLICKS))[0]) == MAX_CLICKS
    with pytest.raises(UserError, match="at most 63 are accepted"):
        parse_classes(",".join(f"c{i}" for i in range(64)), background=True)


def test_progress_reads_only_what_was_appended_and_starts_over_on_a_rewrite(tmp_path):
    from adapt.files import write_text

    events = tmp_path / "events.jsonl"

    def step(i):
        return json.dumps({"type": "step", "time": i, "step": i, "loss": 1.0 / i, "lr": 1e-3, "eta_s": 0}) + "\n"

    events.write_text(step(1) + step(2))
    assert read_progress(tmp_path).step == 2
    with open(events, "a") as f:
        f.write(step(3) + step(4)[:10])  # step 4 still being written
    p = read_progress(tmp_path)
    assert [s for s, _ in p.steps] == [1, 2, 3]
    with open(events, "a") as f:
        f.write(step(4)[10:])
    assert [s for s, _ in read_progress(tmp_path).steps] == [1, 2, 3, 4]
    write_text(events, step(1) + step(2))  # a resume rewinds the file (a new file, atomically)
    assert [s for s, _ in read_progress(tmp_path).steps] == [1, 2]
    p.steps.append((99, 0.0))  # what a caller does with its copy stays its own
    assert read_progress(tmp_path).step == 2


def test_quotas_per_owner(tmp_path):
    from app.config import Limits

    studio = Studio(Paths(tmp_path / "studio"), Limits(active_jobs=2, owner_storage_mb=1))
    data = str(dataset_zip(tmp_path, n=3, size=64))
    for _ in range(2):
        studio.submit(OWNER, data, "dichotomous", "tiny-sam", "parser", 5, 1e-3, 1e-4)
    with pytest.raises(UserError, match="you have 2 jobs queued or running; at most 2 at once"):
        studio.submit(OWNER, data, "dichotomous", "tiny-sam", "parser", 5, 1e-3, 1e-4)
    studio.submit(
        "another-owner-" + "c" * 10, data, "dichotomous", "tiny-sam", "parser", 5, 1e-3, 1e-4
    )  # their own quota
    studio.paths.owner_uploads(OWNER).mkdir(parents=True, exist_ok=True)
    (studio.paths.owner_uploads(OWNER) / "big.bin").write_bytes(bytes(1 << 20))
    with pytest.raises(UserError, match="over the 1.0 MB each user has here"):
        studio.stage_upload(OWNER, "dichotomous", zip_file=data)
    assert studio.usage(OWNER) > 1 << 20


def test_cleanup_removes_what_nobody_touched(tmp_path):
    import os
    import time

    from app.config import Limits

    studio = Studio(Paths(tmp_path / "studio"), Limits(retention_days=1))
    data = str(dataset_zip(tmp_path, n=3, size=64))
    old, watched, running = (
        studio.submit(OWNER, data, "dichotomous", "tiny-sam", "parser", 5, 1e-3, 1e-4) for _ in range(3)
    )
    for _ in (old, watched):
        studio.store.claim("w", 1)
    studio.store.finish(old, "done", worker="w")
    studio.store.finish(watched, "done", worker="w")
    stale = studio.paths.owner_uploads(OWNER) / "dataset-old.zip"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"x")
    two_days = time.time() - 2 * 86400
    os.utime(stale, (two_days, two_days))
    with studio.store._connect() as db:  # they finished two days ago
        db.execute("UPDATE jobs SET finished = ? WHERE id IN (?, ?)", (two_days, old, watched))
    studio.status(OWNER, watched)  # its owner is looking at it now
    removed = studio.clean()
    assert removed["jobs"] == [old] and removed["uploads"] == [str(stale)]
    assert studio.store.get(old, OWNER) is None and not studio.paths.job_dir(old).exists()
    assert studio.store.get(watched, OWNER) and studio.store.get(running, OWNER)["status"] in ("queued", "running")
    assert Studio(Paths(tmp_path / "studio"), Limits(retention_days=0)).clean() == {"jobs": [], "uploads": []}


def test_the_official_backbone_is_proposed_first_on_a_gpu(monkeypatch):
    import app.catalog as catalog

    monkeypatch.setattr(catalog, "has_gpu", lambda: True)
    assert catalog.backbones_for("dichotomous")[0] == "sam-vit-b"
    assert catalog.backbones_for("openvocab")[0] == "clip-vit-b-16"
    monkeypatch.setattr(catalog, "has_gpu", lambda: False)
    assert catalog.backbones_for("dichotomous")[0] == "tiny-sam"
    assert catalog.backbones_for("openvocab")[0] == "tiny-clip"


def test_on_a_gpu_a_job_is_planned_to_fit_before_it_is_queued(tmp_path, monkeypatch):
    """The studio plans every job for the GPU's free memory (adapt.planner): the plan's accumulation
    and checkpointing go into the job, and a job that cannot fit is refused with what would."""
    import torch

    import app.studio as service
    from adapt.planner import estimate

    data = dataset_zip(tmp_path, n=4, size=64)
    studio = Studio(Paths(tmp_path / "studio"), Limits())
    monkeypatch.setenv("ADAPT_PREDICT_DEVICE", "cpu")  # no room kept for a predictor (tests/test_placement.py)
    monkeypatch.setattr(service, "has_gpu", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    one_at_a_time = int(estimate("tiny-sam", "parser", 1, True, "bf16").total * 1.01)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (one_at_a_time, 80 * 2**30))
    job = studio.submit(OWNER, str(data), "dichotomous", "tiny-sam", "parser", 5, 1e-3, 1e-4, 4)
    spec = studio.store.get(job, OWNER)["config"]["train"]
    assert spec["accumulate"] == 4 and spec["checkpointing"] is True
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1000, 80 * 2**30))
    with pytest.raises(UserError, match="would not fit.*does not fit"):
        studio.submit(OWNER, str(data), "dichotomous", "tiny-sam", "parser", 5, 1e-3, 1e-4, 4)
