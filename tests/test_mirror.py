"""app.run.mirror: a job folder packed for another machine, and its changes sent back (no Ray needed)."""

from __future__ import annotations

import json
import os

import pytest

from adapt.files import write_text
from app.run.mirror import Mirror, MirrorError, apply, pack, unpack


def job_folder(tmp_path):
    folder = tmp_path / "app" / "jobs" / "j1"
    folder.mkdir(parents=True)
    (folder / "data.zip").write_bytes(b"zip")
    (folder / "events.jsonl").write_text('{"type": "start"}\n')
    (folder / "checkpoint.pt").write_bytes(b"ckpt-1")
    (folder / ".checkpoint.pt.ab12.part").write_bytes(b"half")  # a writer's temporary: never sent
    adapter = tmp_path / "app" / "uploads" / "owner" / "adapter.zip"
    adapter.parent.mkdir(parents=True)
    adapter.write_bytes(b"adapter")
    job = {
        "id": "j1",
        "data": str(folder / "data.zip"),
        "kind": "label",
        "config": {"label": {"adapter": str(adapter), "task": "dichotomous"}},
    }
    return job, folder, adapter


def test_a_packed_job_names_nothing_of_the_apps_filesystem_and_unpacks_whole(tmp_path):
    job, folder, adapter = job_folder(tmp_path)
    payload = pack(job, folder, [str(adapter)])
    assert str(tmp_path) not in json.dumps(payload["job"])
    assert ".checkpoint.pt.ab12.part" not in payload["files"]
    remote_job, remote = unpack(payload, tmp_path / "node")
    assert remote == (tmp_path / "node" / "job").resolve()
    assert open(remote_job["data"], "rb").read() == b"zip"
    assert open(remote_job["config"]["label"]["adapter"], "rb").read() == b"adapter"
    assert (remote / "checkpoint.pt").read_bytes() == b"ckpt-1"


def test_changes_travel_back_and_rebuild_the_folder(tmp_path):
    job, folder, _ = job_folder(tmp_path)
    _, remote = unpack(pack(job, folder), tmp_path / "node")
    mirror = Mirror(remote)
    assert mirror.scan() == []  # what was unpacked is already on the app's side

    with open(remote / "events.jsonl", "a") as f:
        f.write('{"type": "step", "step": 1}\n{"type": "st')  # the last line is still being written
    write_text(remote / "checkpoint.pt", "ckpt-2")
    (remote / "labels").mkdir()
    write_text(remote / "labels" / "a.png", "png")
    os.makedirs(remote / "tmpx1")  # a writer's temporary folder: never sent
    (remote / "tmpx1" / "y").write_text("no")
    changes = mirror.scan()
    assert ("append", "events.jsonl", b'{"type": "step", "step": 1}\n') in changes
    assert {c[1] for c in changes} == {"events.jsonl", "checkpoint.pt", "labels/a.png"}
    apply(changes, folder)
    with open(remote / "events.jsonl", "a") as f:
        f.write('ep", "step": 2}\n')
    (remote / "checkpoint.pt").unlink()
    apply(mirror.scan(), folder)
    lines = (folder / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["start", "step", "step"]
    assert not (folder / "checkpoint.pt").exists() and (folder / "labels" / "a.png").read_text() == "png"
    assert (folder / "data.zip").read_bytes() == b"zip"  # inputs are never sent back or removed

    write_text(remote / "events.jsonl", '{"type": "start"}\n')  # a rewind rewrites the log atomically
    apply(mirror.scan(), folder)
    assert (folder / "events.jsonl").read_text() == '{"type": "start"}\n'


def test_changes_cannot_leave_the_job_folder(tmp_path):
    (tmp_path / "job").mkdir()
    with pytest.raises(MirrorError, match="outside the job folder"):
        apply([("put", "../evil.txt", b"x")], tmp_path / "job")
    with pytest.raises(MirrorError, match="climbs out"):
        unpack({"job": {}, "files": {"../../evil.txt": b"x"}}, tmp_path / "node")
    assert not (tmp_path / "evil.txt").exists()


def test_the_executor_is_chosen_by_name(monkeypatch):
    from app.run.executor import ExecutorError, executor_kind

    assert executor_kind("local") == "local"
    with pytest.raises(ExecutorError, match="use one of"):
        executor_kind("kubernetes")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("app.run.executor.ray_cluster_here", lambda: False)
    assert executor_kind("auto") == "local"
