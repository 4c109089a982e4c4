"""What a running job asks between steps, and the heartbeat that tells the store it is alive.

`Control` is all a job kind sees of its executor: whether its owner cancelled it, and whether the
process that runs it is stopping (the job then writes its checkpoint and goes back to the queue).
`Heartbeat` is the local executor's side of it: a thread that beats the job's heartbeat in the
store (a slow step must not look like a hang) and watches the job's cancel flag.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

HEARTBEAT_S = 2.0


@dataclass(frozen=True)
class Control:
    """What a running job asks its executor between steps: has its owner cancelled it, and is the
    process that runs it stopping (the job then checkpoints and goes back to the queue)."""

    cancelled: Callable[[], bool]
    stopping: Callable[[], bool]

    def should_stop(self) -> bool:
        return self.cancelled() or self.stopping()


class Heartbeat:
    """Beats the job's heartbeat from a thread (a slow step must not look like a hang) and
    watches its cancel flag."""

    def __init__(self, store, job_id: str, worker: str):
        self.store, self.job_id, self.worker = store, job_id, worker
        self.cancelled = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._done.wait(HEARTBEAT_S):
            try:
                if self.store.beat(self.job_id, self.worker):
                    self.cancelled.set()
            except Exception:  # a locked database for a moment: try again next beat
                pass

    def __enter__(self):
        if self.store.beat(self.job_id, self.worker):
            self.cancelled.set()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join(timeout=5)
