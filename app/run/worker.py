"""The worker: a separate process that takes jobs from the job store one at a time.

    python -m app.run.worker --root STUDIO_DIR --worker-id ID

Each job is run by its kind (app.jobs.KINDS: train an adapter, label images) in the job's folder,
while a thread beats its heartbeat and watches its cancel flag (app.jobs.control).
A job's errors mark it failed with their message; a process that dies is noticed by the
app's supervisor, which marks the job failed with the exit status. On SIGTERM (the app stopping)
the run stops at the next step, saves its checkpoint and goes back to the queue.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

import torch

from adapt.data import DatasetError
from adapt.export import AdapterError
from adapt.files import disk_full
from adapt.pipeline import TrainingError
from adapt.weights import WeightsUnavailable
from app.config import JobFiles, Limits, Paths
from app.jobs import JobStore, UnknownKind, job_kind
from app.jobs.control import Control, Heartbeat

log = logging.getLogger("app.run.worker")


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM when the app that started us dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def execute(job: dict, files: JobFiles, control: Control, max_pixels: int) -> str:
    """Run one job in its folder to its end, with no job store: the one job function both executors
    call (this process's workers, and app.run.ray_executor's tasks on other machines). The job's
    kind (app.jobs.KINDS) runs it; returns "done", "cancelled" (its owner asked) or "stopped" (the
    executor is stopping; the job resumes from what it kept). Errors raise (UnknownKind included)."""
    return job_kind(job).run(job, files, control, max_pixels)


def settle(store, job: dict, worker: str, status: str) -> str:
    """Record how a job ended in the store; returns the status it was left in."""
    if status == "stopped":
        store.finish(job["id"], "queued", worker=worker, note=job_kind(job).resume_note)
        return "queued"
    store.finish(job["id"], status, worker=worker)
    return status


def run_job(store, paths, job: dict, worker: str, shutdown: threading.Event, max_pixels: int) -> str:
    """Run one claimed job to its end in this process; returns the status it was left in."""
    with Heartbeat(store, job["id"], worker) as beat:
        status = execute(job, paths.job_files(job["id"]), Control(beat.cancelled.is_set, shutdown.is_set), max_pixels)
    return settle(store, job, worker, status)


def user_message(e: BaseException) -> str:
    """What the job page shows: our own errors speak for themselves; others get their type."""
    if isinstance(e, (DatasetError, TrainingError, WeightsUnavailable, AdapterError, UnknownKind)):
        return str(e)
    if disk_full(e):
        return (
            "the studio's disk is full, so the job could not write its files (nothing half-written was "
            "kept); it can be resumed from its last checkpoint once space is freed"
        )
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
        return f"out of memory: {e}. Try a smaller batch size, a smaller backbone or a lighter method."
    return f"{type(e).__name__}: {e}"


def record_failure(store, job_id: str, worker: str, message: str, tries: int = 5) -> None:
    """Mark the job failed. A full disk can refuse even that (SQLite needs room for its journal):
    retry a few times, then exit with the message as the last output, so that the supervisor
    marks the job failed with it instead of the job hanging as running."""
    for attempt in range(tries):
        try:
            store.finish(job_id, "failed", error=message, worker=worker)
            return
        except sqlite3.OperationalError as e:
            log.warning("cannot record job %s as failed (%s); retrying", job_id, e)
            time.sleep(1 + attempt)
    log.error("job %s failed: %s", job_id, message)
    sys.exit(3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.run.worker")
    parser.add_argument("--root", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--poll", type=float, default=0.5)
    parser.add_argument("--gpus", type=int, default=1, help="GPUs this worker holds (the supervisor's choice)")
    parser.add_argument("--one-job", action="store_true", help="exit after one job (a multi-GPU worker)")
    args = parser.parse_args(argv)
    _die_with_parent()
    os.nice(int(os.environ.get("ADAPT_WORKER_NICE", "10")))  # training yields the CPU to the page and its API
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout)
    shutdown = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: shutdown.set())
    signal.signal(signal.SIGINT, lambda *_: shutdown.set())
    torch.set_num_threads(int(os.environ.get("ADAPT_WORKER_THREADS") or os.cpu_count() or 1))
    paths = Paths(Path(args.root)).ensure()
    store = JobStore(paths.db)
    limits = Limits.from_env()
    log.info("worker %s (pid %d) ready", args.worker_id, os.getpid())
    while not shutdown.is_set():
        job = store.claim(args.worker_id, os.getpid(), gpus=args.gpus)
        if job is None:
            shutdown.wait(args.poll)
            continue
        log.info("job %s: started (attempt %s)", job["id"], job["attempts"])
        try:
            status = run_job(store, paths, job, args.worker_id, shutdown, limits.max_pixels)
        except Exception as e:  # the job failed, the worker lives on
            log.exception("job %s failed", job["id"])
            status = "failed"
            record_failure(store, job["id"], args.worker_id, user_message(e))
        log.info("job %s: %s", job["id"], status)
        if args.one_job:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
