"""The job store: one SQLite table of jobs of every kind, shared by the app and its worker processes.

    queued -> running -> done | failed | cancelled          (running -> queued: interrupted, resumes)

- Ids are `secrets.token_urlsafe` (unguessable); every read and write by a user names the owner
  token their browser holds, so nobody sees or touches another's jobs.
- A worker claims the oldest queued job in one `BEGIN IMMEDIATE` transaction, so two workers can
  never take the same job; it stamps the job with its worker id and pid and beats a heartbeat.
- Cancel is a flag the worker polls between steps (a queued job is cancelled at once).
- The supervisor marks a dead worker's job failed, or, when the worker was killed (out of memory,
  typically) and a checkpoint exists, queues it again once per step of death (`died_at`); an app
  (re)start puts jobs whose worker is gone back in the queue, and the trainer resumes them from
  their last checkpoint. A failed job can be resumed by its owner.
WAL mode lets the UI read while a worker writes; every connection waits for the lock (busy timeout).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    kind        TEXT NOT NULL DEFAULT 'train',
    status      TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    config      TEXT NOT NULL,
    data        TEXT NOT NULL,
    error       TEXT,
    note        TEXT,
    cancel      INTEGER NOT NULL DEFAULT 0,
    worker      TEXT,
    pid         INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created     REAL NOT NULL,
    started     REAL,
    finished    REAL,
    heartbeat   REAL,
    died_at     INTEGER,
    seen        REAL
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created);
"""
NEW_COLUMNS = (("died_at", "INTEGER"), ("seen", "REAL"), ("kind", "TEXT NOT NULL DEFAULT 'train'"))


def new_token() -> str:
    return secrets.token_urlsafe(16)


class JobStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            columns = {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
            for name, decl in NEW_COLUMNS:  # a store made by an older version
                if name not in columns:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
            if "kind" not in columns:  # older stores kept a label job's kind in its config
                db.execute(
                    "UPDATE jobs SET kind = json_extract(config, '$.kind') "
                    "WHERE json_extract(config, '$.kind') IS NOT NULL"
                )

    @contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit; explicit BEGINs
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield db
        finally:
            db.close()

    @staticmethod
    def _row(row) -> dict | None:
        if row is None:
            return None
        job = dict(row)
        job["config"] = json.loads(job["config"])
        job["cancel"] = bool(job["cancel"])
        return job

    # --- users ---------------------------------------------------------------------------------
    def submit(self, owner: str, config: dict, data: str, job_id: str | None = None, kind: str = "train") -> str:
        """Queue a job of `kind` (a key of app.jobs.KINDS) with its kind's config; returns its id."""
        job_id = job_id or new_token()
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, owner, kind, status, config, data, created) VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                (job_id, owner, kind, json.dumps(config), str(data), time.time()),
            )
        return job_id

    def get(self, job_id: str, owner: str | None) -> dict | None:
        """The job if it exists and belongs to `owner` (None: any owner; for workers only)."""
        with self._connect() as db:
            if owner is None:
                row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            else:
                row = db.execute("SELECT * FROM jobs WHERE id = ? AND owner = ?", (job_id, owner)).fetchone()
        return self._row(row)

    def list(self, owner: str, limit: int = 50) -> list[dict]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE owner = ? ORDER BY created DESC LIMIT ?", (owner, limit)
            ).fetchall()
        return [self._row(r) for r in rows]

    def cancel(self, job_id: str, owner: str) -> str | None:
        """Cancel a job: at once if queued, by flag if running. Returns its status, None if unknown."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT status FROM jobs WHERE id = ? AND owner = ?", (job_id, owner)).fetchone()
            if row is None:
                db.execute("ROLLBACK")
                return None
            if row["status"] == "queued":
                db.execute(
                    "UPDATE jobs SET status = 'cancelled', cancel = 1, finished = ? WHERE id = ?", (time.time(), job_id)
                )
            elif row["status"] == "running":
                db.execute("UPDATE jobs SET cancel = 1 WHERE id = ?", (job_id,))
            db.execute("COMMIT")
        return self.get(job_id, owner)["status"]

    def active_count(self, owner: str) -> int:
        """How many of the owner's jobs are queued or running."""
        with self._connect() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN ('queued', 'running')", (owner,)
            ).fetchone()
        return int(row[0])

    def owner_jobs(self, owner: str) -> list[str]:
        """Every job id of an owner (for storage accounting)."""
        with self._connect() as db:
            return [r["id"] for r in db.execute("SELECT id FROM jobs WHERE owner = ?", (owner,))]

    def seen(self, job_id: str, when: float) -> None:
        """Record that the owner looked at the job (cleanup keeps what is looked at)."""
        with self._connect() as db:
            db.execute("UPDATE jobs SET seen = ? WHERE id = ?", (when, job_id))

    def expired(self, before: float) -> list[str]:
        """Finished jobs that ended, and were last looked at, before `before`."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE status IN ('done', 'failed', 'cancelled') AND finished < ? "
                "AND COALESCE(seen, 0) < ?",
                (before, before),
            )
            return [r["id"] for r in rows]

    def delete(self, job_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def queue_position(self, job_id: str) -> int:
        """How many queued jobs are ahead of this one (0: next)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND created < "
                "(SELECT created FROM jobs WHERE id = ?)",
                (job_id,),
            ).fetchone()
        return int(row[0])

    # --- workers -------------------------------------------------------------------------------
    def claim(self, worker: str, pid: int, gpus: int = 1) -> dict | None:
        """Atomically take the oldest queued job that fits a worker holding `gpus` GPUs (or None):
        a job asks for `config["gpus"]` (default 1). A worker holding several (the supervisor
        formed it for a multi-GPU job) takes the oldest job that needs them all first."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            queued = db.execute("SELECT id, config FROM jobs WHERE status = 'queued' ORDER BY created").fetchall()
            need = {r["id"]: int(json.loads(r["config"]).get("gpus") or 1) for r in queued}
            fitting = [r for r in queued if need[r["id"]] <= gpus]
            row = next((r for r in fitting if need[r["id"]] == gpus), fitting[0] if fitting else None)
            if row is None:
                db.execute("ROLLBACK")
                return None
            now = time.time()
            db.execute(
                "UPDATE jobs SET status = 'running', worker = ?, pid = ?, attempts = attempts + 1, "
                "started = COALESCE(started, ?), heartbeat = ?, error = NULL WHERE id = ?",
                (worker, pid, now, now, row["id"]),
            )
            db.execute("COMMIT")
        return self.get(row["id"], None)

    def place(self, job_id: str, worker: str, pid: int) -> None:
        """Record the process that runs a claimed job, when it is not the claimer's (a Ray task's
        worker process, on whichever node Ray chose)."""
        with self._connect() as db:
            db.execute(
                "UPDATE jobs SET pid = ? WHERE id = ? AND worker = ? AND status = 'running'", (pid, job_id, worker)
            )

    def beat(self, job_id: str, worker: str) -> bool:
        """Record that the worker is alive; True when a cancel has been asked for."""
        with self._connect() as db:
            db.execute("UPDATE jobs SET heartbeat = ? WHERE id = ? AND worker = ?", (time.time(), job_id, worker))
            row = db.execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel"])

    def finish(self, job_id: str, status: str, worker: str, error: str | None = None, note: str | None = None) -> None:
        """End a running job (done / failed / cancelled), or hand it back to the queue (queued).
        Only the worker that holds the job can: one that lost it (its app restarted) changes nothing."""
        if status not in STATUSES or status == "running":
            raise ValueError(f"cannot finish a job as {status!r}")
        finished = None if status == "queued" else time.time()
        with self._connect() as db:
            db.execute(
                "UPDATE jobs SET status = ?, error = ?, note = COALESCE(?, note), finished = ?, worker = NULL, "
                "pid = NULL WHERE id = ? AND status = 'running' AND worker = ?",
                (status, error, note, finished, job_id, worker),
            )

    # --- the supervisor ------------------------------------------------------------------------
    def widest_queued(self) -> int:
        """The GPUs the oldest queued multi-GPU job asks for (1 when none does)."""
        with self._connect() as db:
            rows = db.execute("SELECT config FROM jobs WHERE status = 'queued' ORDER BY created").fetchall()
        return next((n for n in (int(json.loads(r["config"]).get("gpus") or 1) for r in rows) if n > 1), 1)

    def running_job(self, worker: str) -> dict | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE status = 'running' AND worker = ?", (worker,)).fetchone()
        return self._row(row)

    def fail_worker_jobs(self, worker: str, error: str) -> list[str]:
        """Mark the jobs a dead worker was running as failed with its error."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            ids = [
                r["id"] for r in db.execute("SELECT id FROM jobs WHERE status = 'running' AND worker = ?", (worker,))
            ]
            db.execute(
                "UPDATE jobs SET status = 'failed', error = ?, finished = ?, worker = NULL, pid = NULL "
                "WHERE status = 'running' AND worker = ?",
                (error, time.time(), worker),
            )
            db.execute("COMMIT")
        return ids

    def retry_after_death(self, job_id: str, worker: str, step: int, note: str) -> bool:
        """Put the job a killed worker held back in the queue (it resumes from its checkpoint),
        once per step of death: False, and nothing changed, when it already died at this step."""
        with self._connect() as db:
            cur = db.execute(
                "UPDATE jobs SET status = 'queued', worker = NULL, pid = NULL, died_at = ?, note = ? "
                "WHERE id = ? AND status = 'running' AND worker = ? AND (died_at IS NULL OR died_at != ?)",
                (step, note, job_id, worker, step),
            )
        return cur.rowcount == 1

    def resume(self, job_id: str, owner: str) -> bool:
        """A failed job back in the queue at its owner's request (it resumes from its checkpoint)."""
        with self._connect() as db:
            cur = db.execute(
                "UPDATE jobs SET status = 'queued', error = NULL, finished = NULL, cancel = 0, died_at = NULL, "
                "note = 'resumed by its owner from its last checkpoint' WHERE id = ? AND owner = ? AND status = 'failed'",
                (job_id, owner),
            )
        return cur.rowcount == 1

    def requeue_interrupted(self) -> list[str]:
        """On start: jobs left running by an app that stopped go back in the queue (they resume
        from their checkpoint); call it before any worker of this app starts."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            ids = [r["id"] for r in db.execute("SELECT id FROM jobs WHERE status = 'running'")]
            db.execute(
                "UPDATE jobs SET status = 'queued', worker = NULL, pid = NULL, "
                "note = 'interrupted by a restart; resumes from its last checkpoint' WHERE status = 'running'"
            )
            db.execute("COMMIT")
        return ids
