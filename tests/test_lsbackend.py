"""The studio as a Label Studio ML backend (app.lsbackend), against a fake Label Studio: a tiny HTTP
server on 127.0.0.1 that answers the project API and serves task images for one token, started
and stopped by the module. The routes run on a bare Starlette app (the same functions Gradio's app
gets), training jobs in-process through the worker's own function."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image
from studio_support import OWNER, work

from adapt.data import load_dataset
from adapt.data.labelstudio import brush_decode, brush_encode
from adapt.data.synthetic import make_dataset
from app.config import Limits, Paths
from app.lsbackend import ROUTE, add_routes, backend_for, describe
from app.rest import PREFIX
from app.studio import Studio

starlette = pytest.importorskip("starlette")
from starlette.applications import Starlette  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

TOKEN = "fake-legacy-token-0123456789"
OTHER = "another-owner-" + "d" * 20
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="object"/></BrushLabels></View>'
)
SIZE = 64


class FakeLabelStudio(BaseHTTPRequestHandler):
    """GET /api/projects/<id>/ and /data/upload/1/<name>.png, for `Authorization: Token TOKEN` only."""

    images: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.headers.get("Authorization") != f"Token {TOKEN}":
            return self._send(401, b'{"detail": "Invalid token."}')
        if self.path.rstrip("/") == "/api/projects/1":
            return self._send(200, json.dumps({"id": 1, "title": "cells", "label_config": CONFIG}).encode())
        if self.path.startswith("/data/upload/1/") and self.path.rsplit("/", 1)[-1] in self.images:
            return self._send(200, self.images[self.path.rsplit("/", 1)[-1]], "image/png")
        return self._send(404, b'{"detail": "Not found."}')

    def _send(self, status: int, body: bytes, kind: str = "application/json"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    samples = make_dataset("camouflage", n=6, size=SIZE, seed=3)
    FakeLabelStudio.images = {f"s{i}.png": png(s.image) for i, s in enumerate(samples)}
    FakeLabelStudio.images["broken.png"] = b"\x89PNG not really"
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLabelStudio)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    studio = Studio(Paths(tmp_path_factory.mktemp("lsbackend") / "studio"), Limits())
    app = Starlette()
    backend = add_routes(app, studio)
    try:
        with TestClient(app) as client:
            yield {
                "url": f"http://127.0.0.1:{server.server_address[1]}",
                "client": client,
                "studio": studio,
                "backend": backend,
                "samples": samples,
            }
    finally:
        server.shutdown()
        server.server_close()


def connect(world, owner=OWNER, **extra):
    body = {"owner": owner, "url": world["url"], "token": TOKEN, "project": 1, "backbone": "tiny-sam", **extra}
    return world["client"].post(f"{PREFIX}/labelstudio/connect", json=body)


def union(scene) -> np.ndarray:
    return np.any(np.stack(scene.masks), axis=0).astype(np.uint8)


def annotation_event(sample, task_id: int, annotation_id: int, image: str | None = None, action="ANNOTATION_CREATED"):
    mask = union(sample)
    result = {
        "type": "brushlabels",
        "from_name": "tag",
        "to_name": "image",
        "original_width": mask.shape[1],
        "original_height": mask.shape[0],
        "value": {"format": "rle", "rle": brush_encode(mask), "brushlabels": ["object"]},
    }
    task = {"id": task_id, "project": 1, "data": {"image": image or f"/data/upload/1/s{task_id}.png"}}
    return {
        "action": action,
        "project": {"id": 1},
        "task": task,
        "annotation": {"id": annotation_id, "result": [result]},
    }


@pytest.fixture(scope="module")
def connected(world):
    answer = connect(world, method="decoder")
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_connecting_checks_the_token_and_the_project_and_never_echoes_the_token(world, connected):
    assert connected["labels"] == ["object"] and connected["model_version"] == "frozen-tiny-sam"
    assert connected["token"] == "kept in memory" and TOKEN not in json.dumps(connected)
    assert connected["backend_path"] == f"{ROUTE}/{connected['connection']}"
    wrong = connect(world, token="not-the-token-at-all")
    assert wrong.status_code == 400 and "refused the API token (HTTP 401)" in wrong.json()["error"]
    missing = connect(world, project=7)
    assert missing.status_code == 400 and "has no project 7 (HTTP 404)" in missing.json()["error"]
    away = connect(world, url="http://127.0.0.1:9")
    assert away.status_code == 400 and "cannot reach Label Studio" in away.json()["error"]
    assert connect(world, keep_token="cloud").json()["error"].startswith("keep_token must be one of")


def test_health_setup_and_predict_speak_the_protocol(world, connected):
    client, base = world["client"], connected["backend_path"]
    assert client.get(f"{base}/health").json() == {
        "status": "UP",
        "model_class": "adapt-studio",
        "model_version": "frozen-tiny-sam",
    }
    assert client.post(f"{base}/setup", json={"project": "1.1712345678", "schema": CONFIG}).json() == {
        "model_version": "frozen-tiny-sam"
    }
    tasks = [{"id": i, "data": {"image": f"/data/upload/1/s{i}.png"}} for i in (0, 1)]
    answer = client.post(f"{base}/predict", json={"project": "1.1712345678", "tasks": tasks})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == 2 and answer.json()["model_version"] == "frozen-tiny-sam"
    for r in results:
        assert r["model_version"] == "frozen-tiny-sam" and 0 <= r["score"] <= 1
        for brush in r["result"]:
            assert brush["from_name"] == "tag" and brush["to_name"] == "image" and brush["type"] == "brushlabels"
            assert brush["value"]["brushlabels"] == ["object"]
            assert brush_decode(brush["value"]["rle"], SIZE, SIZE).shape == (SIZE, SIZE)


def test_each_bad_request_gets_a_clear_message_and_adds_nothing(world, connected):
    client, base = world["client"], connected["backend_path"]
    hook = f"{base}/webhook"
    before = client.post(f"{PREFIX}/labelstudio/status", json={"owner": OWNER, "connection": connected["connection"]})
    sample = world["samples"][0]
    cases = [
        (client.post(hook, content=b"{not json"), "not JSON"),
        (client.post(hook, json=[1, 2]), "must be a JSON object"),
        (client.post(hook, json={"project": {"id": 1}}), 'no "action"'),
        (client.post(hook, json={**annotation_event(sample, 0, 1), "project": {"id": 9}}), "unknown project 9"),
        (client.post(hook, json={**annotation_event(sample, 0, 1), "task": "x"}), '"task" and "annotation"'),
        (client.post(hook, json=annotation_event(sample, 0, 1, image="/data/upload/1/gone.png")), "HTTP 404"),
        (
            client.post(hook, json=annotation_event(sample, 0, 1, image="/data/upload/1/broken.png")),
            "task 0: its image",
        ),
        (
            client.post(hook, json=annotation_event(sample, 0, 1, image="http://example.com/a.png")),
            "not on the Label Studio",
        ),
        (client.post(f"{ROUTE}/{'x' * 32}/webhook", json=annotation_event(sample, 0, 1)), "unknown connection"),
        (client.post(f"{base}/predict", json={"project": 1, "tasks": []}), 'no "tasks"'),
        (client.post(f"{base}/predict", json={"project": 2, "tasks": [{"id": 1}]}), "unknown project 2"),
    ]
    bad = annotation_event(sample, 0, 1)
    bad["annotation"]["result"][0]["value"]["rle"] = bad["annotation"]["result"][0]["value"]["rle"][:9]
    cases.append((client.post(hook, json=bad), "task 0, annotation 1: result 0: the brush 'rle'"))
    other_label = annotation_event(sample, 0, 1)
    other_label["annotation"]["result"][0]["value"]["brushlabels"] = ["cow"]
    cases.append((client.post(hook, json=other_label), "the label 'cow'"))
    for answer, expected in cases:
        assert answer.status_code == 400, (expected, answer.text)
        assert expected in answer.json()["error"], (expected, answer.json())
    after = client.post(f"{PREFIX}/labelstudio/status", json={"owner": OWNER, "connection": connected["connection"]})
    assert after.json()["pairs"] == before.json()["pairs"] == 0
    pairs = world["studio"].paths.labelstudio(OWNER, connected["connection"]).pairs
    assert not pairs.exists() or not list(pairs.rglob("*.png"))


def test_another_owner_cannot_reach_the_connection(world, connected):
    client = world["client"]
    for route in ("status", "disconnect"):
        answer = client.post(
            f"{PREFIX}/labelstudio/{route}", json={"owner": OTHER, "connection": connected["connection"]}
        )
        assert answer.status_code == 400 and "no such Label Studio connection" in answer.json()["error"]


def test_annotations_become_pairs_and_training_decides_the_served_version(world, connected, monkeypatch, caplog):
    caplog.set_level("INFO", logger="app.lsbackend")
    client, studio, base = world["client"], world["studio"], connected["backend_path"]
    hook = f"{base}/webhook"
    for i, sample in enumerate(world["samples"][:5]):
        answer = client.post(hook, json=annotation_event(sample, i, 100 + i))
        assert answer.status_code == 200 and answer.json()["status"] == "added", answer.text
    updated = annotation_event(world["samples"][1], 0, 200, action="ANNOTATION_UPDATED")  # task 0 relabelled
    assert client.post(hook, json=updated).json()["pairs"] == 5
    files = studio.paths.labelstudio(OWNER, connected["connection"])
    pairs = load_dataset(files.pairs)
    first = next(s for s in pairs.samples if s.stem == "ls-0")
    np.testing.assert_array_equal(first.mask, union(world["samples"][1]))  # the update replaced the pair
    removed = client.post(
        hook, json={"action": "ANNOTATIONS_DELETED", "project": {"id": 1}, "annotations": [{"id": 104}]}
    )
    assert removed.json() == {"status": "removed", "removed": ["ls-4"], "pairs": 4}

    queued = client.post(hook, json={"action": "START_TRAINING", "project": {"id": 1}})
    assert queued.status_code == 200 and queued.json()["status"] == "queued", queued.text
    job = queued.json()["job"]
    again = client.post(hook, json={"action": "START_TRAINING", "project": {"id": 1}})
    assert again.json() == {"status": "training", "job": job}
    assert work(studio) == ["done"]
    status = client.post(f"{PREFIX}/labelstudio/status", json={"owner": OWNER, "connection": connected["connection"]})
    decision = status.json()["decisions"][-1]
    assert decision["job"] == job and "held-out iou" in decision["reason"]
    assert status.json()["model_version"] == (job if decision["served"] else "frozen-tiny-sam")
    assert status.json()["training_job"] is None

    # a round scoring worse than the served model leaves it served, saying why
    served = status.json()["model_version"]
    client.post(hook, json=annotation_event(world["samples"][4], 4, 300))
    job2 = client.post(hook, json={"action": "START_TRAINING", "project": {"id": 1}}).json()["job"]
    real = studio.status

    def worse(owner, job_id):
        answer = real(owner, job_id)
        if job_id == job2:
            answer = {
                **answer,
                "status": "done",
                "adapted": {"iou": 0.1},
                "previous": {"iou": 0.5},
                "frozen": {"iou": 0.5},
            }
        return answer

    monkeypatch.setattr(studio, "status", worse)
    health = client.get(f"{base}/health").json()
    assert health["model_version"] == served
    last = client.post(f"{PREFIX}/labelstudio/status", json={"owner": OWNER, "connection": connected["connection"]})
    assert last.json()["decisions"][-1] == {
        "job": job2,
        "served": False,
        "reason": f"training job {job2}: held-out iou 0.1000 < 0.5000 of {served}; {served} stays served",
    }
    assert "stays served" in caplog.text and "queued on 5 pairs" in caplog.text  # the reason is logged
    shown = describe(last.json())  # what the page's Label Studio tab shows
    assert f"serving **{served}**" in shown and f"- kept the served model: training job {job2}" in shown
    assert backend_for(studio) is world["backend"]  # the page and the routes share one backend (its tokens)
    assert TOKEN not in caplog.text  # never the token


def test_a_token_kept_on_disk_is_private_and_one_kept_in_memory_is_asked_for_again(world):
    disk = connect(world, keep_token="disk").json()
    files = world["studio"].paths.labelstudio(OWNER, disk["connection"])
    assert disk["token"] == "kept on disk" and files.token.read_text() == TOKEN
    assert files.token.stat().st_mode & 0o777 == 0o600
    assert TOKEN not in files.settings.read_text()
    memory = connect(world).json()
    assert not world["studio"].paths.labelstudio(OWNER, memory["connection"]).token.exists()
    world["backend"]._tokens.clear()  # as after a restart
    tasks = [{"id": 0, "data": {"image": "/data/upload/1/s0.png"}}]
    answer = world["client"].post(f"{memory['backend_path']}/predict", json={"project": 1, "tasks": tasks})
    assert answer.status_code == 400 and "connect the project again" in answer.json()["error"]
    assert (
        world["client"].post(f"{disk['backend_path']}/predict", json={"project": 1, "tasks": tasks}).status_code == 200
    )
    gone = world["client"].post(
        f"{PREFIX}/labelstudio/disconnect", json={"owner": OWNER, "connection": disk["connection"]}
    )
    assert gone.status_code == 200 and not files.folder.exists()
    assert "unknown connection" in world["client"].get(f"{disk['backend_path']}/health").json()["error"]


def test_the_pages_label_studio_tab_connects_and_shows_the_state(world):
    from app.ui import build

    demo = build(world["studio"])
    fns = {
        d.fn.__name__: d.fn for d in demo.fns.values() if getattr(d.fn, "__name__", "") in ("on_connect", "on_refresh")
    }
    connection, token_field, said = fns["on_connect"](
        OWNER, "dichotomous", world["url"], TOKEN, 1, "", 100, 0, "memory"
    )
    assert token_field == "" and "serving **frozen-tiny-sam**" in said and TOKEN not in said, (
        said
    )  # the field is cleared
    assert f"`{ROUTE}/{connection}`" in said
    _, shown = fns["on_refresh"](OWNER, "dichotomous", connection, "")
    assert "0 annotation(s) learnt" in shown
    refused = fns["on_connect"](OWNER, "dichotomous", world["url"], "wrong-token-0000", 1, "", 100, 0, "memory")
    assert "not connected" in refused[-1] and "refused the API token" in refused[-1]
