"""What runs the queued jobs: the executor seam.

The app queues jobs in its store (app/jobs/store.py) the same way whatever runs them; an executor claims
them, runs the one job function (app.run.worker.execute) somewhere, and records how each ended.

    ADAPT_EXECUTOR=local   this machine's supervisor and worker processes (app/run/supervisor.py), the
                           default: nothing to install, jobs survive restarts
    ADAPT_EXECUTOR=ray     a Ray cluster (app/run/ray_executor.py; `pip install -r requirements-ray.txt`):
                           RAY_ADDRESS=host:6379 joins that cluster, RAY_ADDRESS unset or "auto"
                           joins the cluster this machine belongs to (or starts a local one)
    ADAPT_EXECUTOR=auto    ray when Ray is installed and this machine belongs to a cluster
                           (RAY_ADDRESS set, or `ray start` ran here), local otherwise

Every executor has start() (requeue what the last run left running, then run jobs), stop() (running
jobs checkpoint and go back to the queue) and describe() (one line for the log).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from app.config import Paths

log = logging.getLogger("app.run.executor")
KINDS = ("local", "ray", "auto")


class ExecutorError(RuntimeError):
    """An executor that cannot be used (unknown name, Ray missing or unreachable)."""


def ray_cluster_here() -> bool:
    """Ray is installed, and RAY_ADDRESS names a cluster or `ray start` ran on this machine."""
    if importlib.util.find_spec("ray") is None:
        return False
    if os.environ.get("RAY_ADDRESS", "").strip():
        return True
    return Path("/tmp/ray/ray_current_cluster").exists()


def executor_kind(value: str | None = None) -> str:
    kind = (value if value is not None else os.environ.get("ADAPT_EXECUTOR", "local")).strip().lower() or "local"
    if kind not in KINDS:
        raise ExecutorError(f"ADAPT_EXECUTOR={kind!r}: use one of {', '.join(KINDS)}")
    if kind == "auto":
        kind = "ray" if ray_cluster_here() else "local"
    if kind == "ray" and importlib.util.find_spec("ray") is None:
        raise ExecutorError("ADAPT_EXECUTOR=ray needs Ray: pip install -r requirements-ray.txt")
    return kind


def make_executor(paths: Paths, kind: str | None = None):
    """The executor ADAPT_EXECUTOR names (not started)."""
    kind = executor_kind(kind)
    if kind == "ray":
        from app.run.ray_executor import RayExecutor

        return RayExecutor(paths)
    from app.run.supervisor import Supervisor

    return Supervisor(paths)


__all__ = ["ExecutorError", "executor_kind", "make_executor", "ray_cluster_here"]
