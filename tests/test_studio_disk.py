"""A full disk: the studio folder on a small tmpfs, filled while a job trains. The job fails with a
message that says so, the job store stays consistent, and the app keeps serving. Skipped, with the
reason, where this machine cannot mount a tmpfs (mounting needs root)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from studio_support import OWNER, App, checked, dataset_zip, wait_for

pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

SIZE_MB = 96


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'mount failed'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder: Path, leave: int) -> Path:
    """Write zeros until about `leave` bytes are free."""
    filler = folder / "filler.bin"
    with open(filler, "wb") as f:
        while (free := os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize) > leave:
            try:
                f.write(bytes(min(free - leave, 1 << 20)))
                f.flush()
            except OSError:
                break
    return filler


def answer(client, *args, api_name):
    """An endpoint's answer; while the disk is full a call may be told so (and asked to retry)."""
    for _ in range(30):
        try:
            return client.predict(*args, api_name=api_name)
        except Exception as e:
            assert "disk is full" in str(e), e  # the only refusal a full disk may cause
            time.sleep(1)
    raise TimeoutError(f"{api_name} kept answering that the disk is full")


def test_a_full_disk_fails_the_job_clearly_and_the_app_goes_on(small_disk, tmp_path):
    app = App(small_disk / "studio").start()
    try:
        client = Client(app.url, verbose=False)
        data = handle_file(checked(client, dataset_zip(tmp_path, n=4, size=80)))
        job, _ = client.predict(OWNER, data, "dichotomous", "tiny-sam", "parser", 400, 1e-3, 1e-4, 2, api_name="/train")
        wait_for(lambda: answer(client, OWNER, job, api_name="/status")["step"] >= 1, 120, what="the first step")
        filler = fill(small_disk, leave=2 << 20)  # the next checkpoint (several MB) cannot be written
        s = wait_for(
            lambda: (st := answer(client, OWNER, job, api_name="/status"))["status"] in ("failed", "done") and st,
            300,
            what="the job to stop",
        )
        assert s["status"] == "failed" and "disk is full" in s["error"], s
        assert not [p for p in (small_disk / "studio" / "jobs" / job).iterdir() if p.name.endswith(".part")]
        assert [j["job"] for j in answer(client, OWNER, api_name="/jobs")] == [job]  # the store answers
        filler.unlink()
        time.sleep(1)
        again, _ = client.predict(OWNER, data, "dichotomous", "tiny-sam", "parser", 2, 1e-3, 1e-4, 2, api_name="/train")
        s = wait_for(
            lambda: (st := client.predict(OWNER, again, api_name="/status"))["status"] in ("failed", "done") and st,
            180,
            what="the next job",
        )
        assert s["status"] == "done", s
    finally:
        app.stop()
