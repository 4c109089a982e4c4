"""Keeps the worker processes alive: one per GPU (one on the CPU when there is none).

On start it puts jobs interrupted by the last shutdown back in the queue, then starts the workers.
A thread watches them: when one exits while holding a job, that job is marked failed with the exit
status and the last lines of the worker's log, and a fresh worker takes its place. A worker whose
job's heartbeat stops (a hang) is killed and handled the same way.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.config import Paths
from app.gpus import gpu_count
from app.jobs import KINDS, JobStore, new_token
from app.progress import read_progress

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("app.run.supervisor")
HEARTBEAT_TIMEOUT_S = float(os.environ.get("ADAPT_HEARTBEAT_TIMEOUT", "300"))


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the system may have run out of memory)" if -code == signal.SIGKILL else ""
        return f"the worker process was killed by {name}{hint}"
    return f"the worker process exited with status {code}"


def log_tail(path: Path, start: int, lines: int = 6) -> str:
    """The last lines the worker wrote since `start` (a byte offset)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read()[-4000:].decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)


def retry_from_checkpoint(store: JobStore, paths: Paths, job: dict, worker: str, reason: str) -> bool | str | None:
    """A job whose process died (`reason`) while it has a checkpoint goes back in the queue and
    resumes from it (True), once per step of death. None: it has no checkpoint; a string: it died
    at this step before, and says so. In both cases the caller fails the job. Both executors use
    this rule (a SIGKILLed local worker; a lost Ray worker or node). What counts as a checkpoint
    is the job's kind's to say (a job of an unknown kind has none)."""
    files = paths.job_files(job["id"])
    kind = KINDS.get(job["kind"])
    if kind is None or not kind.has_checkpoint(files):
        return None
    step = read_progress(files.folder).step
    note = f"{reason} at step {step}; retrying once from its last checkpoint"
    if store.retry_after_death(job["id"], worker, step, note):
        log.warning("job %s: %s", job["id"], note)
        return True
    return f" again at step {step}, after a retry from its checkpoint; not retried a second time"


@dataclass
class Slot:
    index: int
    gpu: int | None
    gpus: list[int] = field(default_factory=list)  # a multi-GPU worker's GPUs (its slots are parked)
    parked: bool = False  # its GPU is lent to a multi-GPU worker
    proc: subprocess.Popen | None = None
    worker_id: str = ""
    log_path: Path | None = None
    log_start: int = 0
    started: float = 0.0
    crashes: list = field(default_factory=list)


class Supervisor:
    def __init__(self, paths: Paths, workers: int | None = None, poll_s: float = 0.5):
        self.paths = paths.ensure()
        self.store = JobStore(paths.db)
        gpus = gpu_count()
        n = workers or int(os.environ.get("ADAPT_WORKERS") or 0) or max(1, gpus)
        self.slots = [Slot(i, i % gpus if gpus else None) for i in range(n)]
        self.gang: Slot | None = None  # the multi-GPU worker, while one runs
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> Supervisor:
        requeued = self.store.requeue_interrupted()
        if requeued:
            log.info("requeued %d interrupted job(s); they resume from their checkpoints", len(requeued))
        for slot in self.slots:
            self._spawn(slot)
        self._thread.start()
        return self

    def describe(self) -> str:
        return f"local executor: worker process(es) {self.worker_pids()}"

    def stop(self, timeout: float = 20) -> None:
        """Ask the workers to stop (their jobs checkpoint and go back to the queue), then make sure."""
        self._stop.set()
        with self._lock:
            for slot in self._live():
                if slot.proc and slot.proc.poll() is None:
                    slot.proc.terminate()
            deadline = time.time() + timeout
            for slot in self._live():
                if slot.proc:
                    try:
                        slot.proc.wait(max(0.1, deadline - time.time()))
                    except subprocess.TimeoutExpired:
                        slot.proc.kill()
                        slot.proc.wait()

    def worker_pids(self) -> list[int]:
        return [s.proc.pid for s in self._live() if s.proc and s.proc.poll() is None]

    def _live(self) -> list[Slot]:
        return [s for s in self.slots if not s.parked] + ([self.gang] if self.gang else [])

    # --- workers -------------------------------------------------------------------------------
    def _spawn(self, slot: Slot) -> None:
        env = dict(os.environ)
        if slot.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slot.gpus))
        elif slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(slot.gpu)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        slot.worker_id = f"w{slot.index}-{new_token()[:10]}"
        slot.log_path = self.paths.logs / f"worker-{slot.index}.log"
        with open(slot.log_path, "ab") as log:
            slot.log_start = log.tell()
            command = [
                sys.executable,
                "-m",
                "app.run.worker",
                "--root",
                str(self.paths.root),
                "--worker-id",
                slot.worker_id,
            ]
            if slot.gpus:
                command += ["--gpus", str(len(slot.gpus)), "--one-job"]
            slot.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=env,
            )
        slot.started = time.time()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            with self._lock:
                if self._stop.is_set():
                    return
                for slot in self.slots:
                    if slot.parked:
                        continue
                    try:
                        self._check(slot)
                    except Exception as e:  # the supervisor must outlive anything odd
                        log.exception("supervisor: %s: %s", type(e).__name__, e)
                try:
                    self._gang_up()
                except Exception as e:
                    log.exception("supervisor: %s: %s", type(e).__name__, e)

    def _gang_up(self) -> None:
        """Multi-GPU jobs: when the oldest one asking for N GPUs is queued and N single-GPU workers
        are idle, those workers stop (they hold nothing) and one worker holding their N GPUs runs
        that job (`--gpus N --one-job`); when it exits, the single-GPU workers come back. A worker
        that took a job in between is left alone (the gang waits for the next idle one)."""
        if self.gang is not None:
            if self.gang.proc.poll() is None:
                self._check_heartbeat(self.gang)
                return
            code = self.gang.proc.returncode
            if code != 0:
                tail = log_tail(self.gang.log_path, self.gang.log_start)
                error = describe_exit(code) + (f". Last output:\n{tail}" if tail else "")
                self.store.fail_worker_jobs(self.gang.worker_id, error)
            for slot in self.slots:
                if slot.parked:
                    slot.parked = False
                    self._spawn(slot)
            self.gang = None
            return
        need = self.store.widest_queued()
        gpu_slots = [s for s in self.slots if s.gpu is not None]
        if need < 2 or need > len({s.gpu for s in gpu_slots}):
            return
        idle = [s for s in gpu_slots if s.proc.poll() is None and self.store.running_job(s.worker_id) is None]
        chosen, seen = [], set()
        for s in idle:
            if s.gpu not in seen:
                chosen.append(s)
                seen.add(s.gpu)
        if len(chosen) < need:
            return
        chosen = chosen[:need]
        for s in chosen:
            s.parked = True
            s.proc.terminate()
        for s in chosen:
            try:
                s.proc.wait(20)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()
        self.gang = Slot(len(self.slots), None, gpus=sorted(s.gpu for s in chosen))
        log.info("a job asks for %d GPUs: one worker takes GPUs %s", need, self.gang.gpus)
        self._spawn(self.gang)

    def _check(self, slot: Slot) -> None:
        code = slot.proc.poll()
        if code is None:
            self._check_heartbeat(slot)
            return
        reason = describe_exit(code)
        tail = log_tail(slot.log_path, slot.log_start)
        retried = self._retry_killed_job(slot, code, reason)
        if retried is not True:
            error = reason + (retried or "") + (f". Last output:\n{tail}" if tail else "")
            failed = self.store.fail_worker_jobs(slot.worker_id, error)
            log.warning("%s; failed job(s) %s; starting a new worker", reason, failed)
        now = time.time()
        slot.crashes = [t for t in slot.crashes if now - t < 60] + [now]
        if len(slot.crashes) >= 5:  # crashing at start-up: do not spin, try again later
            slot.crashes = []
            self._stop.wait(30)
        self._spawn(slot)

    def _retry_killed_job(self, slot: Slot, code: int, reason: str) -> bool | str | None:
        """A worker killed by SIGKILL (the kernel's out-of-memory killer, typically): its job
        resumes from its last checkpoint, once per step of death (retry_from_checkpoint)."""
        job = self.store.running_job(slot.worker_id)
        if job is None or code != -signal.SIGKILL:
            return None
        return retry_from_checkpoint(self.store, self.paths, job, slot.worker_id, reason)

    def _check_heartbeat(self, slot: Slot) -> None:
        row = self.store.running_job(slot.worker_id)
        if row and row["heartbeat"] and time.time() - row["heartbeat"] > HEARTBEAT_TIMEOUT_S:
            log.warning("job %s has had no heartbeat for %.0f s; killing its worker", row["id"], HEARTBEAT_TIMEOUT_S)
            slot.proc.kill()
            slot.proc.wait()
            self.store.fail_worker_jobs(
                slot.worker_id,
                f"the worker stopped responding (no heartbeat for {HEARTBEAT_TIMEOUT_S:.0f} s) and was stopped",
            )
