"""The Ray executor against a real two-node Ray cluster on 127.0.0.1 (devtools.launcher.RayCluster): jobs
submitted through the studio's API train as Ray tasks, and everything the page shows arrives as it
does with the local executor; cancel; a killed Ray worker; an app restart; two owners at once.

Skipped where Ray is not installed, except under CI=true (where .ci/run installs it)."""

from __future__ import annotations

import json
import os
import signal
import time
import zipfile

import pytest

if os.environ.get("CI") != "true":
    pytest.importorskip("ray")
pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from studio_support import OWNER, App, dataset_zip, wait_for  # noqa: E402
from test_studio_api import FINISHED, train  # noqa: E402

from devtools.launcher import RayCluster  # noqa: E402

OTHER = "other-owner-" + "c" * 20


def status(client, job, owner=OWNER):
    return client.predict(owner, job, api_name="/status")


def finished(client, job, owner=OWNER, timeout=240):
    return wait_for(
        lambda: (s := status(client, job, owner)) and s["status"] in FINISHED and s, timeout, what=f"job {job}"
    )


def events(app, job) -> list[dict]:
    return [json.loads(line) for line in (app.root / "jobs" / job / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("studio-ray")


@pytest.fixture(scope="module")
def cluster():
    cluster = RayCluster(cpus_per_node=2, nodes=2)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def app(workdir, cluster):
    app = App(workdir / "studio", env=cluster.app_env()).start()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


@pytest.fixture(scope="module")
def data(workdir):
    return dataset_zip(workdir, n=4, size=80)


def test_a_job_trains_on_ray_and_the_page_sees_what_a_local_job_shows(app, client, data, workdir):
    """The same job on the Ray executor and on the local one: the same steps, the same frozen and
    adapted held-out scores, previews, and an adapter that downloads."""
    job = train(client, data, steps=6)
    s = finished(client, job)
    assert s["status"] == "done" and s["adapter_ready"], (s, app.log())
    assert app.job_row(job)["pid"] != app.proc.pid  # it ran in a Ray worker, not in the app
    assert "Ray executor: 2 node(s)" in app.log()
    folder = app.root / "jobs" / job
    for name in ("before.png", "after.png", "result.json", "adapter.zip"):
        assert (folder / name).is_file(), name
    assert not [p for p in folder.rglob("*") if p.name.endswith(".part")]
    with zipfile.ZipFile(client.predict(OWNER, job, False, api_name="/download")) as z:
        assert "adapter_model.safetensors" in z.namelist()

    local = App(workdir / "studio-local").start()  # the local executor, the same job
    try:
        local_client = Client(local.url, verbose=False)
        local_job = train(local_client, data, steps=6)
        ls = finished(local_client, local_job)
    finally:
        local.stop()
    assert ls["status"] == "done"
    assert set(s) == set(ls)
    assert s["step"] == ls["step"] == 6
    assert s["frozen"] == ls["frozen"]
    for key, value in ls["adapted"].items():
        assert s["adapted"][key] == pytest.approx(value, abs=1e-4), key
    assert [e["type"] for e in events(app, job)] == [e["type"] for e in events(local, local_job)]


def test_cancel_reaches_the_running_task(app, client, data):
    job = train(client, data, steps=5000)
    wait_for(lambda: status(client, job)["step"] >= 2, 180, what="the first steps")
    asked = time.time()
    assert "cancel" in client.predict(OWNER, job, api_name="/cancel")
    s = finished(client, job, timeout=60)
    assert s["status"] == "cancelled" and s["step"] < 5000, s
    assert time.time() - asked < 30


def test_a_killed_ray_worker_resumes_its_job_from_the_last_checkpoint_once(app, client, data):
    """The documented outcome (app/run/ray_executor.py): like a SIGKILLed local worker, the job goes
    back to the queue and resumes from the last checkpoint that reached the app, once."""
    job = train(client, data, steps=40)  # checkpoints every 5 steps
    wait_for(lambda: status(client, job)["step"] >= 7, 180, what="a checkpoint")
    pid = app.job_row(job)["pid"]
    assert pid != app.proc.pid
    os.kill(pid, signal.SIGKILL)
    s = finished(client, job, timeout=300)
    assert s["status"] == "done", (s, app.log())
    row = app.job_row(job)
    assert row["died_at"] >= 5 and "retrying once from its last checkpoint" in row["note"], row
    steps = [e["step"] for e in events(app, job) if e["type"] == "step"]
    assert steps == list(range(1, 41))  # each step once in the page's curve
    assert [e["type"] for e in events(app, job)].count("resumed") == 1


def test_two_owners_jobs_run_at_once_and_stay_apart(app, client, data):
    first = train(client, data, steps=60)
    second = train(client, data, steps=60, owner=OTHER)

    def both_running():
        a, b = status(client, first), status(client, second, OTHER)
        return a["status"] == b["status"] == "running" and a["step"] >= 1 and b["step"] >= 1

    wait_for(both_running, 180, what="both jobs running at once")
    pids = app.job_row(first)["pid"], app.job_row(second)["pid"]
    assert pids[0] != pids[1] and app.proc.pid not in pids  # each in its own Ray worker process
    assert [j["job"] for j in client.predict(OTHER, api_name="/jobs")] == [second]
    assert first not in [j["job"] for j in client.predict(OTHER, api_name="/jobs")]
    with pytest.raises(Exception, match="no such job"):
        status(client, first, owner=OTHER)
    assert finished(client, first)["status"] == "done"
    assert finished(client, second, OTHER)["status"] == "done"
    assert (app.root / "jobs" / first).is_dir() and (app.root / "jobs" / second).is_dir()


def test_an_app_restart_resumes_the_job_from_its_checkpoint(app, client, data):
    job = train(client, data, steps=40)
    seen = wait_for(lambda: (s := status(client, job)["step"]) >= 12 and s, 180, what="a few checkpoints")
    app.crash()  # the app dies; Ray ends the tasks it owned
    assert app.job_row(job)["status"] == "running"
    app.start()
    restarted = Client(app.url, verbose=False)
    assert finished(restarted, job, timeout=300)["status"] == "done", app.log()
    resumed = [e for e in events(app, job) if e["type"] == "resumed"]
    # from the last checkpoint that reached the app (every 4 steps; the newest may still have been on its
    # way from the Ray worker when the app died), not from the start
    assert resumed and 4 <= resumed[0]["step"] <= seen and resumed[0]["step"] % 4 == 0, (resumed, seen)
    assert [e["step"] for e in events(app, job) if e["type"] == "step"][-1] == 40
