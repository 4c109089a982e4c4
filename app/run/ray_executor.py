"""The Ray executor (ADAPT_EXECUTOR=ray): the studio's queued jobs run as Ray tasks on any node of
a cluster, with the same job function as the local workers (app.run.worker.execute).

The app stays the one owner of the job store and the job folders. For each job it claims:

* **out**: the job's folder (its dataset zip or images, checkpoint and events so far, a warm-start
  adapter) and any adapter it predicts with are packed as bytes (app.run.mirror.pack) and put in Ray's
  object store; the task unpacks them in a scratch folder on its node. No path of the app's
  machine is used there: no shared filesystem is assumed.
* **back**: every half second the task scans its folder (app.run.mirror.Mirror) and sends what changed
  (new event lines, previews, checkpoints, finally the adapter and result) to a small actor the app
  owns (`Channel`); the app drains it and applies the changes to the job's folder, so the page reads
  progress, previews and scores exactly as it does for a local job. The same round trip carries the
  owner's cancel back to the task, which stops within a step.
* **end**: the task returns how the job ended ("done", "cancelled", "stopped", or "failed" with the
  message the local worker would show); the app records it.

Failures. A task's worker process or node that dies (Ray's WorkerCrashedError, NodeDiedError,
...) is treated like a local worker killed by SIGKILL: the job resumes from its last checkpoint
(the last one that reached the app), once per step of death; without a checkpoint, or dying at the
same step again, it fails with the reason. Ray's own task retries are off (they would restart from
the checkpoint sent at submission, not the latest). When the app stops, running tasks checkpoint
and their jobs go back to the queue; when the app dies, Ray ends the tasks it owned (they share
its fate), and on the next start their jobs are resubmitted from their last checkpoint.

Resources: a job asks for `num_gpus` = its GPUs when the cluster has GPUs (and the job is not
pinned to the CPU), else ADAPT_RAY_CPUS CPUs (default 1). At most ADAPT_RAY_MAX_JOBS jobs run at
once (default: the cluster's GPUs, or its CPUs / ADAPT_RAY_CPUS); the rest wait in the store's
queue, in order. Each job gets a fresh worker process (max_calls=1): nothing stays in memory between
two owners' jobs.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import ray.exceptions as rex

from app.config import JobFiles, Limits, Paths
from app.jobs import JobStore, UnknownKind, job_kind, new_token
from app.jobs.control import Control
from app.run.mirror import MirrorError, apply, pack
from app.run.supervisor import HEARTBEAT_TIMEOUT_S, retry_from_checkpoint

log = logging.getLogger("app.run.ray_executor")
SHIP_EVERY_S = float(os.environ.get("ADAPT_RAY_SHIP_S", "0.5"))
NAMESPACE = "adapt-studio"
# how the process or machine running a task can be lost (the job may resume from its checkpoint)
LOST = (
    rex.WorkerCrashedError,
    rex.NodeDiedError,
    rex.LocalRayletDiedError,
    rex.OwnerDiedError,
    rex.ObjectLostError,
    rex.TaskCancelledError,
)


@ray.remote(num_cpus=0, max_restarts=0)
class Channel:
    """The app's mailbox: tasks put their folder changes here, the app drains them; it holds the
    cancel flags the tasks read back. One per app, owned by it (it dies with the app)."""

    def __init__(self):
        self.inbox: dict[str, list] = {}
        self.cancelled: set[str] = set()
        self.stopping = False

    def put(self, token: str, messages: list) -> tuple[bool, bool]:
        self.inbox.setdefault(token, []).extend(messages)
        return token in self.cancelled, self.stopping

    def drain(self) -> dict[str, list]:
        out, self.inbox = self.inbox, {}
        return out

    def cancel(self, token: str) -> None:
        self.cancelled.add(token)

    def stop_all(self) -> None:
        self.stopping = True

    def forget(self, token: str) -> None:
        self.cancelled.discard(token)
        self.inbox.pop(token, None)


def run_task(token: str, payload: dict, channel, max_pixels: int, threads: int | None) -> dict:
    """One job, on whichever node Ray chose: unpack it in a scratch folder, run the job function,
    send what it writes back to the app through `channel` as it goes; returns how it ended."""
    import torch

    from app.run.mirror import Mirror, unpack
    from app.run.worker import execute, user_message

    if threads:
        torch.set_num_threads(threads)
    scratch = Path(tempfile.mkdtemp(prefix="adapt-job-", dir=os.environ.get("ADAPT_RAY_SCRATCH") or None))
    flags = {"cancelled": False, "stopping": False}
    lock = threading.Lock()
    try:
        job, folder = unpack(payload, scratch)
        mirror = Mirror(folder)

        def ship(extra: tuple = ()) -> None:
            with lock:
                messages = [*extra, ("changes", mirror.scan())]
                cancelled, stopping = ray.get(channel.put.remote(token, messages))
            flags.update(cancelled=cancelled, stopping=stopping)

        where = {"pid": os.getpid(), "host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id()}
        ship((("hello", where),))
        finished = threading.Event()

        def shipping() -> None:
            while not finished.wait(SHIP_EVERY_S):
                try:
                    ship()
                except Exception:  # the app is away for a moment: the next round sends it all
                    logging.getLogger("app.ray_task").exception("could not reach the app")

        shipper = threading.Thread(target=shipping, name="ship", daemon=True)
        shipper.start()
        control = Control(lambda: flags["cancelled"], lambda: flags["stopping"])
        try:
            result = {"status": execute(job, JobFiles(folder), control, max_pixels)}
        except Exception as e:
            logging.getLogger("app.ray_task").exception("job failed")
            result = {"status": "failed", "error": user_message(e)}
        finally:
            finished.set()
            shipper.join(30)
        ship()  # the last changes reach the app before the result does
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


_remote_task = ray.remote(max_retries=0, max_calls=1)(run_task)


@dataclass
class Running:
    job: dict
    token: str
    ref: ray.ObjectRef
    folder: Path
    submitted: float = field(default_factory=time.time)
    seen: float | None = None  # the last message from the task
    where: dict | None = None
    cancel_sent: bool = False
    hung: bool = False


class RayExecutor:
    """Claims queued jobs from the store and runs them as Ray tasks (see the module docstring)."""

    def __init__(self, paths: Paths, poll_s: float = 0.5):
        self.paths = paths.ensure()
        self.store = JobStore(paths.db)
        self.limits = Limits.from_env()
        self.poll_s = poll_s
        self.cpus_per_job = float(os.environ.get("ADAPT_RAY_CPUS") or 1)
        self.max_jobs = int(os.environ.get("ADAPT_RAY_MAX_JOBS") or 0)
        self.running: dict[str, Running] = {}
        self.channel = None
        self._resources: tuple[float, dict] = (0.0, {})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ray-executor", daemon=True)

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> RayExecutor:
        address = os.environ.get("RAY_ADDRESS", "").strip() or None
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, ignore_reinit_error=True)
        self.channel = Channel.remote()
        requeued = self.store.requeue_interrupted()
        if requeued:
            log.info("requeued %d interrupted job(s); they resume from their checkpoints on Ray", len(requeued))
        self._thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        """Running tasks checkpoint and hand their jobs back to the queue; then leave the cluster."""
        self._stop.set()
        self._thread.join(10)
        if self.channel is None:
            return
        try:
            self.channel.stop_all.remote()
            deadline = time.time() + timeout
            while self.running and time.time() < deadline:
                self._poll(submit=False)
                time.sleep(self.poll_s)
            for run in list(self.running.values()):  # did not stop in time: its job resumes next start
                ray.cancel(run.ref, force=True)
                self.store.finish(run.job["id"], "queued", worker=run.token, note="interrupted by a restart")
        finally:
            ray.shutdown()

    def describe(self) -> str:
        res = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return (
            f"Ray executor: {len(nodes)} node(s), {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU "
            f"(dashboard/GCS at {ray.get_runtime_context().gcs_address})"
        )

    def worker_pids(self) -> list[int]:
        return [r.where["pid"] for r in self.running.values() if r.where]

    # --- the loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._poll(submit=True)
            except Exception as e:  # the executor must outlive anything odd (a slow GCS, a full disk)
                log.exception("ray executor: %s: %s", type(e).__name__, e)

    def _poll(self, submit: bool) -> None:
        ready = set()
        if self.running:
            refs = [r.ref for r in self.running.values()]
            ready = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
        inbox = ray.get(
            self.channel.drain.remote(), timeout=60
        )  # after the wait: a finished task's last changes are in
        now = time.time()
        for token, messages in inbox.items():
            run = self.running.get(token)
            if run is None:  # a task of an earlier attempt, or one already settled
                continue
            run.seen = now
            for kind, body in messages:
                if kind == "hello":
                    run.where = body
                    self.store.place(run.job["id"], token, body["pid"])
                    log.info("job %s: running on %s (pid %s)", run.job["id"], body["host"], body["pid"])
                elif kind == "changes":
                    apply(body, run.folder)
        for token, run in list(self.running.items()):
            if run.ref in ready:
                self._settle(run)
                continue
            if self.store.beat(run.job["id"], token) and not run.cancel_sent:
                self.channel.cancel.remote(token)
                run.cancel_sent = True
            if run.seen and now - run.seen > HEARTBEAT_TIMEOUT_S and not run.hung:
                log.warning(
                    "job %s: no word from its task for %.0f s; cancelling it", run.job["id"], HEARTBEAT_TIMEOUT_S
                )
                run.hung = True
                ray.cancel(run.ref, force=True)
        if submit:
            self._submit_queued()

    def _settle(self, run: Running) -> None:
        del self.running[run.token]
        self.channel.forget.remote(run.token)
        job_id = run.job["id"]
        try:
            result = ray.get(run.ref)
        except LOST as e:
            if run.hung:
                self._fail(run, f"the job stopped responding (no word for {HEARTBEAT_TIMEOUT_S:.0f} s) and was stopped")
                return
            where = f" on {run.where['host']} (pid {run.where['pid']})" if run.where else ""
            reason = f"the Ray worker running the job{where} was lost ({type(e).__name__})"
            retried = retry_from_checkpoint(self.store, self.paths, run.job, run.token, reason)
            if retried is not True:
                self._fail(run, reason + (retried or ""))
            return
        except rex.RayError as e:
            self._fail(run, f"Ray could not run the job: {type(e).__name__}: {str(e).splitlines()[0][:500]}")
            return
        status = result["status"]
        log.info("job %s: %s", job_id, status)
        if status == "failed":
            self._fail(run, result["error"])
            return
        from app.run.worker import settle

        settle(self.store, run.job, run.token, status)

    def _fail(self, run: Running, message: str) -> None:
        log.warning("job %s failed: %s", run.job["id"], message)
        self.store.finish(run.job["id"], "failed", worker=run.token, error=message)

    # --- submitting ----------------------------------------------------------------------------
    def _cluster(self) -> dict:
        """Total resources and the most GPUs on one node, refreshed every 5 s (nodes come and go)."""
        stamp, res = self._resources
        if time.time() - stamp > 5:
            total = ray.cluster_resources()
            per_node = [n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")]
            res = {"CPU": total.get("CPU", 0), "GPU": total.get("GPU", 0), "node_gpus": max(per_node, default=0)}
            self._resources = (time.time(), res)
        return res

    def capacity(self) -> int:
        if self.max_jobs:
            return self.max_jobs
        res = self._cluster()
        return int(res["GPU"]) if res["GPU"] else max(1, int(res["CPU"] // self.cpus_per_job))

    def _options(self, job: dict) -> tuple[dict, int | None]:
        """Ray resources for a job, and its torch threads (None: torch's own choice)."""
        config = job["config"]
        device = str(config.get("train", {}).get("device", "auto"))
        if self._cluster()["GPU"] and device != "cpu":
            return {"num_gpus": int(config.get("gpus") or 1), "num_cpus": 1}, None
        return {"num_gpus": 0, "num_cpus": self.cpus_per_job}, max(1, int(self.cpus_per_job))

    def _submit_queued(self) -> None:
        res = self._cluster()
        while len(self.running) < self.capacity():
            token = f"ray-{new_token()[:10]}"
            job = self.store.claim(token, os.getpid(), gpus=max(1, int(res["node_gpus"])) if res["GPU"] else 64)
            if job is None:
                return
            run = Running(job, token, None, self.paths.job_files(job["id"]).folder)
            options, threads = self._options(job)
            if res["GPU"] and options["num_gpus"] > res["node_gpus"]:
                self._fail(
                    run, f"the job asks for {options['num_gpus']} GPUs; no node of the Ray cluster has that many"
                )
                continue
            try:
                externals = job_kind(job).externals(job)
            except UnknownKind as e:
                self._fail(run, str(e))
                continue
            try:
                payload = ray.put(pack(job, run.folder, externals))
            except (MirrorError, OSError) as e:
                self._fail(run, f"the job's files could not be sent to the cluster: {e}")
                continue
            run.ref = _remote_task.options(**options).remote(
                token, payload, self.channel, self.limits.max_pixels, threads
            )
            self.running[token] = run
            log.info("job %s: submitted to Ray (%s)", job["id"], options)


__all__ = ["Channel", "RayExecutor", "run_task"]
