"""A job kind is one module plus one line in app.jobs.KINDS: a trivial kind, registered here, runs
through the local worker's path (app.run.worker.run_job) like "train" and "label" do: it ends done,
the page's brief names it, a stop leaves its resume note, its checkpoint is its own to define; a
job of a kind nobody registered fails with a message, and the worker goes on."""

from __future__ import annotations

import threading

import pytest
from studio_support import OWNER

from app.config import Limits, Paths
from app.jobs import KINDS, UnknownKind
from app.run.supervisor import retry_from_checkpoint
from app.run.worker import record_failure, run_job, user_message
from app.studio import Studio

MAX_PIXELS = 40_000_000


class TouchJob:
    """Writes its config's text into a file in its folder; stops when its executor does."""

    name = "touch"
    resume_note = "stopped with the app; touches the file at the next start"
    resumes = "it touches the file"
    start_again = "submit it again"

    def run(self, job, files, control, max_pixels):
        files.folder.mkdir(parents=True, exist_ok=True)
        if control.should_stop():
            return "cancelled" if control.cancelled() else "stopped"
        (files.folder / "touched.txt").write_text(job["config"]["touch"]["text"])
        return "done"

    def has_checkpoint(self, files):
        return (files.folder / "touched.txt").exists()

    def externals(self, job):
        return []

    def brief(self, config):
        return {"task": "dichotomous", "backbone": "none", "method": "touch", "steps": 1}


@pytest.fixture
def studio(tmp_path, monkeypatch):
    monkeypatch.setitem(KINDS, "touch", TouchJob())
    return Studio(Paths(tmp_path / "studio"), Limits())


def claim_and_run(studio: Studio, stopping: bool = False) -> str:
    job = studio.store.claim("w1", 1)
    shutdown = threading.Event()
    if stopping:
        shutdown.set()
    return run_job(studio.store, studio.paths, job, "w1", shutdown, MAX_PIXELS)


def test_a_registered_kind_runs_through_the_worker_and_the_page_names_it(studio):
    job = studio.store.submit(OWNER, {"touch": {"text": "hello"}}, "-", kind="touch")
    assert claim_and_run(studio) == "done"
    assert (studio.paths.job_files(job).folder / "touched.txt").read_text() == "hello"
    status = studio.status(OWNER, job)
    assert status["status"] == "done" and status["kind"] == "touch" and status["method"] == "touch"
    assert [(j["job"], j["kind"]) for j in studio.jobs(OWNER)] == [(job, "touch")]


def test_a_stopped_job_goes_back_to_the_queue_with_its_kinds_resume_note(studio):
    job = studio.store.submit(OWNER, {"touch": {"text": "later"}}, "-", kind="touch")
    assert claim_and_run(studio, stopping=True) == "queued"
    row = studio.store.get(job, OWNER)
    assert row["status"] == "queued" and row["note"] == TouchJob.resume_note
    assert claim_and_run(studio) == "done"


def test_the_kind_says_what_its_checkpoint_is(studio):
    job = studio.store.submit(OWNER, {"touch": {"text": "x"}}, "-", kind="touch")
    row = studio.store.claim("w1", 1)
    assert retry_from_checkpoint(studio.store, studio.paths, row, "w1", "killed") is None  # nothing to resume
    studio.paths.job_files(job).folder.mkdir(parents=True, exist_ok=True)
    (studio.paths.job_files(job).folder / "touched.txt").write_text("x")
    assert retry_from_checkpoint(studio.store, studio.paths, row, "w1", "killed") is True
    assert studio.store.get(job, OWNER)["status"] == "queued"


def test_a_job_of_an_unknown_kind_fails_with_a_message_and_still_shows(studio):
    job = studio.store.submit(OWNER, {}, "-", kind="nope")
    row = studio.store.claim("w1", 1)
    with pytest.raises(UnknownKind) as raised:
        run_job(studio.store, studio.paths, row, "w1", threading.Event(), MAX_PIXELS)
    record_failure(studio.store, job, "w1", user_message(raised.value))  # what the worker's loop does
    status = studio.status(OWNER, job)
    assert status["status"] == "failed" and status["kind"] == "nope"
    assert status["error"].startswith("this studio cannot run a 'nope' job (it runs: train, label, touch)")
    assert retry_from_checkpoint(studio.store, studio.paths, {**row, "status": "running"}, "w1", "killed") is None
