"""One job on several GPUs through the studio: the supervisor gives a job that asks for N GPUs one
worker holding N of them (its single-GPU workers stand down meanwhile) and brings them back after;
the worker trains data-parallel (adapt.distributed). Two GPUs are simulated: the workers get
CUDA_VISIBLE_DEVICES as on a two-GPU machine, and the processes fall back to gloo on the CPU."""

from __future__ import annotations

import pytest
from studio_support import OWNER, dataset_zip, wait_for

from app.config import Limits, Paths
from app.jobs import JobStore
from app.studio import Studio, UserError


def test_the_store_gives_a_multi_gpu_job_only_to_a_worker_holding_enough_gpus(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    wide = store.submit(OWNER, {"train": {}, "gpus": 2}, "data.zip")
    single = store.submit(OWNER, {"train": {}}, "data.zip")
    assert store.widest_queued() == 2
    assert store.claim("one-gpu", 1)["id"] == single  # the older job needs two: skipped
    assert store.claim("one-gpu-b", 2) is None
    assert store.claim("two-gpus", 3, gpus=2)["id"] == wide
    assert store.widest_queued() == 1


def test_a_two_gpu_job_runs_on_a_worker_holding_both(tmp_path, monkeypatch):
    import app.run.supervisor as supervisor
    import app.studio as service

    monkeypatch.setattr(supervisor, "gpu_count", lambda: 2)
    monkeypatch.setattr(service, "gpu_count", lambda: 2)
    monkeypatch.setattr(service, "has_gpu", lambda: False)  # no GPU memory to plan for
    monkeypatch.setenv("ADAPT_WORKER_THREADS", "1")
    paths = Paths(tmp_path / "studio")
    studio = Studio(paths, Limits())
    data = dataset_zip(tmp_path, n=6, size=64)
    with pytest.raises(UserError, match="GPUs must be between 1 and 2"):
        studio.submit(OWNER, str(data), "dichotomous", "tiny-sam", "parser", 4, 1e-3, 1e-4, 2, gpus=3)
    wide = studio.submit(OWNER, str(data), "dichotomous", "tiny-sam", "parser", 4, 1e-3, 1e-4, 2, gpus=2)
    single = studio.submit(OWNER, str(data), "dichotomous", "tiny-sam", "lora", 4, 1e-3, 1e-4, 2)
    sup = supervisor.Supervisor(paths, workers=2, poll_s=0.2).start()
    try:
        done = lambda job: studio.status(OWNER, job)["status"] in ("done", "failed")  # noqa: E731
        wait_for(lambda: done(wide) and done(single), 300, what="both jobs to finish")
        status = studio.status(OWNER, wide)
        assert status["status"] == "done", status
        assert studio.status(OWNER, single)["status"] == "done"
        assert studio.adapter_zip(OWNER, wide).is_file()
        log = (paths.logs / "worker-2.log").read_text()  # the two-GPU worker's log
        assert f"job {wide}: started" in log and f"job {wide}: done" in log and single not in log
        # the single-GPU workers are back, each on its own GPU
        wait_for(lambda: sup.gang is None and len(sup.worker_pids()) == 2, 60, what="the workers to return")
        assert [s.gpu for s in sup.slots] == [0, 1] and not any(s.parked for s in sup.slots)
    finally:
        sup.stop()
