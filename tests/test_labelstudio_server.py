"""The studio as the ML backend of a real Label Studio server (from PyPI, its own environment:
requirements-labelstudio-server.txt, made by .ci/run) on 127.0.0.1 with a temporary data dir, and
the studio as `python -m app` with its worker: a project with a BrushLabels config made through
Label Studio's API, 12 images imported, the studio connected as its ML backend; predictions appear
with the studio's model_version; 4 annotations made through Label Studio's API reach the studio;
"start training" queues a job that finishes; the served model_version changes; the new predictions
score higher against the held-out masks than the first ones (camouflage: the frozen tiny model is
poor there).

Slow (Label Studio's first start migrates its database: ~1.5 min here): `make test-all`, or
`pytest -m slow tests/test_labelstudio_server.py` (.ci/run runs it; ADAPT_CI_LABELSTUDIO=0 there
leaves it out). Skipped where the server is not installed, except under CI=true. LABEL_STUDIO_TEST_URL (+ LABEL_STUDIO_TEST_TOKEN) reuses a
running server."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image
from studio_support import OWNER, wait_for

from adapt.data.labelstudio import brush_decode, brush_encode
from adapt.data.synthetic import make_dataset
from devtools.launcher import LabelStudioServer, StudioProcess, label_studio_bin

pytestmark = pytest.mark.slow
if (
    (os.environ.get("CI") != "true" or os.environ.get("ADAPT_CI_LABELSTUDIO", "1") != "1")
    and label_studio_bin() is None
    and not os.environ.get("LABEL_STUDIO_TEST_URL")
):
    pytest.skip("no Label Studio server installed (see requirements-labelstudio-server.txt)", allow_module_level=True)
httpx = pytest.importorskip("httpx")

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="object"/></BrushLabels></View>'
)
N, ANNOTATED, SIZE = 12, 4, 128


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """(url, API token, (user, password))."""
    if os.environ.get("LABEL_STUDIO_TEST_URL"):
        login = tuple(os.environ.get("LABEL_STUDIO_TEST_LOGIN", ":").split(":", 1))
        yield os.environ["LABEL_STUDIO_TEST_URL"], os.environ["LABEL_STUDIO_TEST_TOKEN"], login
        return
    server = LabelStudioServer(tmp_path_factory.mktemp("label-studio"))
    try:
        yield server.start().url, server.TOKEN, server.LOGIN
    finally:
        server.stop()


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    app = StudioProcess(tmp_path_factory.mktemp("studio") / "studio").start()
    try:
        yield app
    finally:
        app.stop()


def union(scene) -> np.ndarray:
    return np.any(np.stack(scene.masks), axis=0).astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter, either = np.logical_and(a, b).sum(), np.logical_or(a, b).sum()
    return float(inter / either) if either else 1.0


def predicted_masks(ls, tasks: list[dict]) -> dict[int, tuple[str, np.ndarray]]:
    """Each task's newest prediction: (model_version, mask)."""
    out = {}
    for t in tasks:
        predictions = ls.get("/api/predictions/", params={"task": t["id"]}).json()
        if not predictions:
            continue
        newest = max(predictions, key=lambda p: p["id"])
        mask = np.zeros((SIZE, SIZE), np.uint8)
        for r in newest["result"]:
            mask |= brush_decode(r["value"]["rle"], SIZE, SIZE)
        out[t["id"]] = (newest["model_version"], mask)
    return out


def retrieve_predictions(ls, project: int, tasks: list[dict], version: str) -> dict:
    """Label Studio's "Retrieve predictions" action on every task, until each has one by `version`."""
    answer = ls.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    assert answer.status_code == 200, answer.text
    return wait_for(
        lambda: (
            (got := predicted_masks(ls, tasks))
            and len(got) == len(tasks)
            and all(v == version for v, _ in got.values())
            and got
        ),
        120,
        what=f"predictions by {version}",
    )


def test_label_studio_learns_through_the_studio(label_studio, studio):
    url, token, login = label_studio
    scenes = make_dataset("camouflage", n=N, size=SIZE, seed=11)
    ls = httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=120)
    api = httpx.Client(base_url=studio.url.rstrip("/"), timeout=300)

    project = ls.post("/api/projects/", json={"title": "studio test", "label_config": CONFIG}).json()["id"]
    files = {}
    for i, s in enumerate(scenes):
        buf = io.BytesIO()
        Image.fromarray(s.image).save(buf, format="PNG")
        files[f"file{i}"] = (f"s{i:02d}.png", buf.getvalue(), "image/png")
    imported = ls.post(f"/api/projects/{project}/import", files=files)
    assert imported.status_code == 201, imported.text
    tasks = sorted(
        ls.get("/api/tasks/", params={"project": project, "page_size": 100}).json()["tasks"], key=lambda t: t["id"]
    )
    assert len(tasks) == N
    truth = {t["id"]: union(scenes[int(t["data"]["image"].rsplit("s", 1)[-1][:2])]) for t in tasks}

    connected = api.post(
        "/studio/v1/labelstudio/connect",
        json={"owner": OWNER, "url": url, "token": token, "project": project, "backbone": "tiny-sam",
              "method": "decoder", "steps": 150},
    )  # fmt: skip
    assert connected.status_code == 200, connected.text
    backend = studio.url.rstrip("/") + connected.json()["backend_path"]
    ml = ls.post("/api/ml/", json={"project": project, "url": backend, "title": "adapt studio"})
    assert ml.status_code == 201, ml.text
    hook = {"project": project, "url": backend + "/webhook", "send_payload": True, "send_for_all_actions": False}
    hook["actions"] = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]
    assert ls.post("/api/webhooks/", json=hook).status_code == 201

    first_version = connected.json()["model_version"]
    first = retrieve_predictions(ls, project, tasks, first_version)

    for t in tasks[:ANNOTATED]:
        result = [{"type": "brushlabels", "from_name": "tag", "to_name": "image", "original_width": SIZE,
                   "original_height": SIZE, "value": {"format": "rle", "rle": brush_encode(truth[t["id"]]),
                                                      "brushlabels": ["object"]}}]  # fmt: skip
        made = ls.post(f"/api/tasks/{t['id']}/annotations/", json={"result": result, "project": project})
        assert made.status_code == 201, made.text

    def status():
        body = {"owner": OWNER, "connection": connected.json()["connection"]}
        return api.post("/studio/v1/labelstudio/status", json=body).json()

    wait_for(lambda: status()["pairs"] == ANNOTATED, 60, what="4 annotations in the studio")
    started = ls.post(f"/api/ml/{ml.json()['id']}/train", json={})
    assert started.status_code == 200, started.text
    job = wait_for(lambda: status()["training_job"], 60, what="a training job")
    final = wait_for(lambda: (s := status())["training_job"] is None and s, 600, what=f"job {job} to finish")
    assert final["decisions"][-1]["job"] == job, final
    assert final["decisions"][-1]["served"], final["decisions"][-1]["reason"]
    assert final["model_version"] == job != first_version

    again = retrieve_predictions(ls, project, tasks, job)
    held_out = [t["id"] for t in tasks[ANNOTATED:]]
    before = np.mean([iou(first[i][1], truth[i]) for i in held_out])
    after = np.mean([iou(again[i][1], truth[i]) for i in held_out])
    print(f"held-out IoU of Label Studio's predictions: {before:.3f} frozen -> {after:.3f} adapted ({job})")
    assert after > before
    assert token not in studio.log_path.read_text(errors="replace")  # the studio never logs the token
    if os.environ.get("STUDIO_SCREENSHOTS"):  # make screenshots: Label Studio showing the studio's predictions
        screenshot(ls, url, login, project, tasks[-1]["id"], job, os.environ["STUDIO_SCREENSHOTS"])


def screenshot(ls, url: str, login: tuple, project: int, task: int, version: str, folder: str) -> None:
    """Label Studio's labelling page on an unannotated task, pre-labelled with the studio's prediction."""
    from browser_support import launched

    settings = {"show_collab_predictions": True, "model_version": version, "evaluate_predictions_automatically": True}
    assert ls.patch(f"/api/projects/{project}/", json=settings).status_code == 200
    with launched() as browser:
        page = browser.new_page(viewport={"width": 1360, "height": 860})
        page.goto(f"{url}/user/login/")
        page.fill("input[name=email]", login[0])
        page.fill("input[name=password]", login[1])
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        page.goto(f"{url}/projects/{project}/data?task={task}")
        page.wait_for_timeout(8000)  # the editor loads, draws the image and the prediction's brush layer
        page.screenshot(path=f"{folder}/labelstudio-predictions.png")
