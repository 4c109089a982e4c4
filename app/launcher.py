"""The studio as a separate process, for tests and benchmarks: `python -m app` on 127.0.0.1 at a
free port, in its own process group (so it can be killed with its workers at once), with one
worker and one thread each unless the environment given says otherwise."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StudioProcess:
    """`python -m app` in its own process group (so a test can kill it with its workers at once)."""

    def __init__(self, root: Path, port: int | None = None, env: dict | None = None):
        self.root, self.port = Path(root), port or free_port()
        self.extra_env = dict(env or {})
        self.proc = None
        self.log_path = self.root.parent / f"app-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 120) -> StudioProcess:
        env = dict(
            os.environ,
            ADAPT_STUDIO_DIR=str(self.root),
            GRADIO_SERVER_PORT=str(self.port),
            GRADIO_SERVER_NAME="127.0.0.1",
            OMP_NUM_THREADS="1",
            ADAPT_WORKER_THREADS="1",
            ADAPT_APP_THREADS="1",
            ADAPT_WORKERS="1",
            PYTHONPATH=str(REPO),
        )
        env.update(self.extra_env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"the app did not start in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.crash()

    def crash(self) -> None:
        """SIGKILL the app and its workers together, as a machine or container dying would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def job_row(self, job_id: str) -> dict:
        with sqlite3.connect(self.root / "jobs.sqlite", timeout=30) as db:
            db.row_factory = sqlite3.Row
            return dict(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
