"""The studio as a separate process, for tests and benchmarks: `python -m app` on 127.0.0.1 at a
free port, in its own process group (so it can be killed with its workers at once), with one
worker and one thread each unless the environment given says otherwise; and a two-node Ray cluster
on 127.0.0.1 (RayCluster) for the Ray executor's tests and benchmark."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checked(client, owner: str, data: Path, task: str = "dichotomous") -> str:
    """`data` checked by the studio's /check_data for `owner`: the local copy of its answer (a file
    named after the checked dataset's id), which is what /train takes. A refusal raises its message."""
    from gradio_client import handle_file

    dataset, message = client.predict(owner, task, handle_file(str(data)), [], [], "", api_name="/check_data")
    if dataset is None:
        raise ValueError(message)
    return dataset


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


LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


class RayCluster:
    """A real two-node Ray cluster on 127.0.0.1 for tests and benchmarks: a head and worker nodes,
    each its own `ray start --block` process group (devtools/ray_node.py), stopped by whoever started it."""

    def __init__(self, cpus_per_node: int = 2, nodes: int = 2):
        self.port = free_port()
        self.cpus, self.nodes = cpus_per_node, nodes
        self.temp = Path(tempfile.mkdtemp(prefix="rayt-", dir="/tmp"))  # short: Unix socket paths
        self.procs: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _node(self, *args: str) -> subprocess.Popen:
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO))
        env.pop("RAY_ADDRESS", None)
        log = open(self.temp / f"node-{len(self.procs)}.log", "ab")
        common = ["--block", "--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus}", "--num-gpus=0"]
        common += ["--object-store-memory=300000000", "--disable-usage-stats"]
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "devtools" / "ray_node.py"), *common, *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
        )
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 120) -> RayCluster:
        self._node("--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp}")
        for _ in range(self.nodes - 1):
            self._wait(lambda: self.alive_nodes() >= 1, timeout)
            self._node(f"--address={self.address}")
        self._wait(lambda: self.alive_nodes() >= self.nodes, timeout)
        return self

    def alive_nodes(self) -> int:
        """Alive nodes, asked of the GCS from a separate process (this one never joins the cluster)."""
        code = (
            f"import ray; ray.init(address={self.address!r}, log_to_driver=False); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        env = dict(os.environ, **LOOPBACK_ENV)
        env.pop("RAY_ADDRESS", None)
        try:
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
            return int(out.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            return 0

    def _wait(self, predicate, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a Ray node exited:\n{self.log()}")
            if predicate():
                return
            time.sleep(1)
        raise TimeoutError(f"the Ray cluster did not come up in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.temp.glob("node-*.log")))

    def app_env(self, **extra) -> dict:
        """What the app needs to run its jobs on this cluster."""
        return {"ADAPT_EXECUTOR": "ray", "RAY_ADDRESS": self.address, **LOOPBACK_ENV, **extra}

    def stop(self) -> None:
        for proc in reversed(self.procs):  # worker nodes first, then the head
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for proc in self.procs:  # whatever a node started and left in its group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)


LABEL_STUDIO_BIN = REPO / ".venv-labelstudio" / "bin" / "label-studio"  # made by .ci/run


def label_studio_bin() -> Path | None:
    """The Label Studio server's command: $LABEL_STUDIO_BIN, else .venv-labelstudio's (None: not installed)."""
    path = Path(os.environ.get("LABEL_STUDIO_BIN") or LABEL_STUDIO_BIN)
    return path if path.is_file() else None


class LabelStudioServer:
    """A Label Studio server from PyPI (requirements-labelstudio-server.txt, in its own environment)
    on 127.0.0.1 at a free port, in its own process group, with its data in `root` and one user
    whose (legacy) API token is TOKEN. Its protection against requests to private addresses is
    off: the studio it calls listens on 127.0.0.1 too."""

    TOKEN = "0123456789abcdef0123456789abcdef01234567"
    LOGIN = ("studio@example.com", "studio-test-pass")

    def __init__(self, root: Path, port: int | None = None):
        self.root, self.port = Path(root), port or free_port()
        self.proc = None
        self.log_path = self.root / "label-studio.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300) -> LabelStudioServer:
        self.root.mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ,
            LABEL_STUDIO_BASE_DATA_DIR=str(self.root / "base"),
            SSRF_PROTECTION_ENABLED="false",
            USE_DEFAULT_BANNED_SUBNETS="false",
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            SENTRY_DSN="",
        )
        env.pop("PYTHONPATH", None)  # its own environment, not the studio's
        args = [str(label_studio_bin()), "start", "--no-browser", "--internal-host", "127.0.0.1"]
        args += ["--host", self.url, "-p", str(self.port), "--data-dir", str(self.root / "data")]
        args += ["--username", self.LOGIN[0], "--password", self.LOGIN[1], "--user-token", self.TOKEN]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            args, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(1)
        self.stop()
        raise TimeoutError(f"Label Studio did not start in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
