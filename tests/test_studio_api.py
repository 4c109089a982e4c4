"""The studio through its public API (gradio_client) against a launched app with a real worker:
train -> poll -> predict -> download -> load the adapter; cancel; bad uploads; a worker killed
mid-job; the whole app killed and restarted (interrupted and queued jobs resume)."""

from __future__ import annotations

import json
import os
import re
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import sam3_installed
from PIL import Image
from studio_support import OWNER, App, bad_uploads, checked, dataset_zip, slip_zip, wait_for

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

FINISHED = ("done", "failed", "cancelled")
EXAMPLE = Path(__file__).resolve().parent.parent / "assets" / "examples" / "camouflage.jpg"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("studio-api")


@pytest.fixture(scope="module")
def app(workdir):
    app = App(workdir / "studio").start()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


@pytest.fixture(scope="module")
def data(workdir):
    return dataset_zip(workdir, n=4, size=80)


def train(client, data, steps=6, owner=OWNER, **kw):
    job, message = client.predict(
        owner,
        handle_file(checked(client, data, kw.get("task", "dichotomous"), owner)),
        kw.get("task", "dichotomous"),
        kw.get("backbone", "tiny-sam"),
        kw.get("method", "parser"),
        steps,
        1e-3,
        1e-4,
        2,
        api_name="/train",
    )
    assert job in message
    return job


def status(client, job, owner=OWNER):
    return client.predict(owner, job, api_name="/status")


def wait_finished(client, job, timeout=180):
    return wait_for(lambda: (s := status(client, job)) and s["status"] in FINISHED and s, timeout, what=f"job {job}")


def test_train_poll_predict_download_and_load(client, data, workdir):
    job = train(client, data)
    assert len(job) >= 20  # secrets.token_urlsafe(16): unguessable
    s = wait_finished(client, job)
    assert s["status"] == "done", s
    assert s["step"] == 6 and s["adapter_ready"]
    assert set(s["frozen"]) >= {"iou", "dice"} and set(s["adapted"]) >= {"iou", "dice"}
    assert any(j["job"] == job for j in client.predict(OWNER, api_name="/jobs"))

    # predict with the adapter, two clicks, at the image's full resolution
    main, extra, overlay, info = client.predict(
        OWNER, handle_file(str(EXAMPLE)), job, "tiny-sam", "dichotomous", "", "150,150,1; 10,10,0", api_name="/predict"
    )
    width, height = Image.open(EXAMPLE).size
    assert np.asarray(Image.open(main)).shape[:2] == (height, width)
    assert np.asarray(Image.open(extra)).shape == (height, width, 4)  # the cut-out keeps an alpha channel
    assert "parser" in info

    # download the adapter zip, load it back, predict with the loaded copy
    path = client.predict(OWNER, job, False, api_name="/download")
    with zipfile.ZipFile(path) as z:
        assert set(z.namelist()) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
        assert json.loads(z.read("adapter_config.json"))["method"] == "parser"
    ref, message = client.predict(OWNER, handle_file(path), api_name="/load_adapter")
    assert ref.startswith("upload-") and "parser" in message
    main2, *_ = client.predict(
        OWNER, handle_file(str(EXAMPLE)), ref, "tiny-sam", "dichotomous", "", "150,150,1; 10,10,0", api_name="/predict"
    )
    assert np.array_equal(np.asarray(Image.open(main2)), np.asarray(Image.open(main)))

    merged = client.predict(OWNER, job, True, api_name="/download")
    assert merged.endswith(".safetensors") and os.path.getsize(merged) > 100_000


@pytest.mark.parametrize(
    "tiny,method,official",
    [
        ("tiny-sam2", "cobot-lora", "sam2.1-hiera-base-plus"),
        pytest.param("tiny-sam3", "lora", "sam3", marks=pytest.mark.skipif(not sam3_installed(), reason="no sam3")),
    ],
)
def test_sam2_and_sam3_train_and_predict_through_the_studio(client, data, tiny, method, official):
    """SAM 2 and SAM 3 behind the same contract: the tiny random-init config trains as a job, lists in
    the Train tab with its weights' state, and predicts in the Preview tab with the adapter."""
    from app.catalog import backbone_status, backbones_for

    assert tiny in backbones_for("dichotomous") and "random weights" in backbone_status(tiny)
    assert "not downloaded" in backbone_status(official)  # and nothing is fetched
    job = train(client, data, steps=3, backbone=tiny, method=method)
    s = wait_finished(client, job)
    assert s["status"] == "done" and s["adapter_ready"], s
    main, _, _, info = client.predict(
        OWNER, handle_file(str(EXAMPLE)), job, tiny, "dichotomous", "", "150,150,1", api_name="/predict"
    )
    width, height = Image.open(EXAMPLE).size
    assert np.asarray(Image.open(main)).shape[:2] == (height, width) and method in info


def test_jobs_are_private(client, data):
    job = client.predict(OWNER, api_name="/jobs")[0]["job"]
    with pytest.raises(Exception, match="no such job"):
        status(client, job, owner="someone-else-" + "b" * 20)
    assert client.predict("someone-else-" + "b" * 20, api_name="/jobs") == []
    with pytest.raises(Exception, match="owner token"):
        client.predict("short", api_name="/jobs")


def test_cancel(client, data):
    job = train(client, data, steps=5000)
    wait_for(lambda: status(client, job)["step"] >= 1, 120, what="the first step")
    assert "cancel" in client.predict(OWNER, job, api_name="/cancel")
    s = wait_finished(client, job, timeout=60)
    assert s["status"] == "cancelled" and s["step"] < 5000


def test_bad_uploads_get_clear_messages(client, data, workdir):
    for name, (images, masks, words) in bad_uploads(workdir / "bad").items():
        dataset, message = client.predict(
            OWNER,
            "dichotomous",
            None,
            [handle_file(str(p)) for p in images],
            [handle_file(str(p)) for p in masks],
            "",
            api_name="/check_data",
        )
        assert dataset is None and "Cannot use this upload" in message and words in message, (name, message)
    dataset, message = client.predict(
        OWNER, "dichotomous", handle_file(str(slip_zip(workdir / "slip.zip"))), [], [], "", api_name="/check_data"
    )
    assert dataset is None and "outside the dataset folder" in message
    assert not (workdir / "evil.txt").exists()
    with pytest.raises(Exception, match="outside the dataset folder"):
        train(client, workdir / "slip.zip")
    # a good upload still works afterwards, and nothing was queued for the bad ones
    dataset, message = client.predict(OWNER, "dichotomous", handle_file(str(data)), [], [], "", api_name="/check_data")
    assert dataset and "ready to train" in message


def test_open_vocabulary_train_and_predict_label_map(client, workdir):
    data = dataset_zip(workdir, n=4, size=96, task="openvocab")
    job = train(client, data, steps=4, task="openvocab", backbone="tiny-clip", method="hclip")
    s = wait_finished(client, job)
    assert s["status"] == "done", s
    assert "miou" in s["frozen"] and "miou" in s["adapted"]
    main, legend, overlay, info = client.predict(
        OWNER,
        handle_file(str(EXAMPLE)),
        job,
        "tiny-clip",
        "openvocab",
        "circle, square, heart",
        "",
        api_name="/predict",
    )
    width, height = Image.open(EXAMPLE).size
    assert np.asarray(Image.open(main)).shape == (height, width, 3)  # colour label map, full resolution
    assert np.asarray(Image.open(legend)).shape[1] > 100  # the legend
    assert "hclip" in info


@pytest.mark.skipif(not sam3_installed(), reason="no sam3")
def test_exemplar_boxes_join_the_concept_task_through_the_api(client):
    """/predict's last input, exemplar boxes (optional: every call above leaves it out), reaches
    frozen SAM 3's concept task; a box off the image is refused by name."""
    args = (OWNER, handle_file(str(EXAMPLE)), "", "tiny-sam3", "concept", "background, circle", "", "")
    main, legend, _, info = client.predict(*args, "10,10,60,60; 80,90,120,140", api_name="/predict")
    width, height = Image.open(EXAMPLE).size
    assert np.asarray(Image.open(main)).shape == (height, width, 3) and "tiny-sam3" in info
    with pytest.raises(Exception, match=rf"the exemplar box \(0, 0, {width + 1}, 5\) is outside"):
        client.predict(*args, f"0,0,{width + 1},5", api_name="/predict")


def test_worker_killed_mid_job_marks_it_failed_and_the_app_goes_on(app, client, data):
    job = train(client, data, steps=5000)
    wait_for(lambda: status(client, job)["step"] >= 1, 120, what="the first step")
    os.kill(app.job_row(job)["pid"], signal.SIGKILL)
    s = wait_finished(client, job, timeout=60)
    assert s["status"] == "failed" and "SIGKILL" in s["error"], s
    # the supervisor started a fresh worker: the next job runs
    again = train(client, data, steps=2)
    assert wait_finished(client, again)["status"] == "done"


def test_worker_killed_after_a_checkpoint_resumes_the_job_once(app, client, data):
    job = train(client, data, steps=40)  # checkpoints every 5 steps
    wait_for(lambda: status(client, job)["step"] >= 7, 180, what="a checkpoint")
    os.kill(app.job_row(job)["pid"], signal.SIGKILL)  # what the out-of-memory killer does
    s = wait_finished(client, job, timeout=240)
    assert s["status"] == "done", s
    row = app.job_row(job)
    assert row["died_at"] >= 7 and "retrying once from its last checkpoint" in row["note"]
    events = [json.loads(line) for line in (app.root / "jobs" / job / "events.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in events if e["type"] == "step"]
    assert steps == list(range(1, 41))  # each step once, though steps after the checkpoint ran twice
    assert [e["type"] for e in events].count("resumed") == 1
    assert not [p for p in (app.root / "jobs" / job).iterdir() if p.name.endswith(".part")]


def test_restart_resumes_interrupted_and_queued_jobs(app, client, data):
    first = train(client, data, steps=40)  # checkpoints every 5 steps
    second = train(client, data, steps=2)  # waits in the queue behind it
    wait_for(lambda: status(client, first)["step"] >= 12, 180, what="a few checkpoints")
    assert status(client, second)["status"] == "queued"
    app.crash()  # app and worker die at once: nothing is cleaned up
    assert app.job_row(first)["status"] == "running"
    app.start()
    restarted = Client(app.url, verbose=False)
    assert wait_finished(restarted, first)["status"] == "done"
    assert wait_finished(restarted, second)["status"] == "done"
    events = [json.loads(line) for line in (app.root / "jobs" / first / "events.jsonl").read_text().splitlines()]
    resumed = [e for e in events if e["type"] == "resumed"]
    assert resumed and resumed[0]["step"] >= 10  # from its last checkpoint, not from the start
    steps = [e["step"] for e in events if e["type"] == "step"]
    assert steps[-1] == 40


GENERIC = "upstream Gradio app has raised an exception"


def malformed_requests(data):
    """(endpoint, arguments, what the answer must say) for values no page would send."""
    ok = [handle_file(str(data)), "dichotomous", "tiny-sam", "parser", 5, 1e-3, 1e-4, 2]

    def train_with(i, value):
        args = list(ok)
        args[i] = value
        return ("/train", (OWNER, *args))

    image = handle_file(str(EXAMPLE))
    predict = (OWNER, image, "", "tiny-sam", "dichotomous", "", "")

    def predict_with(i, value):
        args = list(predict)
        args[i] = value
        return ("/predict", tuple(args))

    return [
        (("/status", ("short", "x")), "malformed owner token"),
        (("/status", (OWNER, "x" * 500)), "at most 64 are accepted"),
        (("/status", (OWNER, "no-such-job")), "no such job"),
        (("/jobs", (None,)), "malformed owner token"),
        (("/cancel", (OWNER, None)), "no such job"),
        (("/resume", (OWNER, "no-such-job")), "no such job"),
        (("/download", (OWNER, "no-such-job", True)), "no such job"),
        (train_with(0, None), "no dataset"),
        (train_with(0, "/etc/passwd"), "validation error"),  # a path string, not an uploaded file
        (train_with(1, "depth"), "unknown task 'depth'|'depth' .* is not in the list of choices"),
        (train_with(1, 7), "task must be text|7 .* is not in the list of choices"),
        (train_with(2, "sam-vit-z"), "'sam-vit-z' is not a backbone for dichotomous"),
        (train_with(2, "tiny-clip"), "'tiny-clip' is not a backbone for dichotomous"),
        (train_with(3, "magic"), "'magic' does not apply to tiny-sam"),
        (train_with(4, "many"), "steps must be a whole number"),
        (train_with(4, 2.5), "steps must be a whole number"),
        (train_with(4, 10**9), "steps must be between 1 and"),
        (train_with(5, -1), "lr must be between"),
        (train_with(6, "fast"), "head lr must be a number"),
        (train_with(7, 0), "batch size must be between 1 and 64"),
        (predict_with(1, None), "upload an image first"),
        (predict_with(2, "upload-../../etc/passwd"), "no uploaded adapter"),
        (predict_with(2, "x" * 100), "at most 64 are accepted"),
        (predict_with(3, "tiny-clip"), "'tiny-clip' is not a backbone for dichotomous"),
        (predict_with(4, ["dichotomous"]), r"task must be text|\['dichotomous'\] .* is not in the list of choices"),
        (predict_with(5, ",".join(f"c{i}" for i in range(300))), "300 class names; at most 64 are accepted"),
        (predict_with(5, "x" * 100), "longer than 60 characters"),
        (predict_with(6, "; ".join(["10,10,1"] * 20_000)), "characters long; at most 4,096 are accepted"),
        (predict_with(6, "; ".join(["10,10,1"] * 200)), "200 clicks; at most 100 are accepted"),
        (predict_with(6, "a,b"), "clicks are 'x,y' or 'x,y,label'"),
        (("/predict", (*predict, "", "1,1,5,5")), r"exemplar boxes are prompts of the concept task \(SAM 3\)"),
        (("/predict", (*predict, "", "1,1")), "exemplar boxes are 'x0,y0,x1,y1'"),
        (("/predict", (*predict, "", "; ".join(["1,1,5,5"] * 17))), "17 exemplar boxes; at most 16"),
        (("/load_adapter", (OWNER, None)), "choose an adapter .zip"),
        (("/load_adapter", (OWNER, image)), r"not a usable adapter|Invalid file type.*\.zip"),
        (("/check_data", ("short", "dichotomous", None, None, None, "")), "malformed owner token"),
        (
            ("/check_data", (OWNER, "depth", None, None, None, "")),
            "unknown task 'depth'|'depth' .* not in the list of choices",
        ),
        (("/check_data", (OWNER, "dichotomous", None, None, None, "")), "upload a dataset zip"),
        (("/check_data", (OWNER, "openvocab", None, [image], [image], "a," * 100)), "at most 63 are accepted"),
        (("/predict_batch", (OWNER, None, "", "tiny-sam", "dichotomous", "")), "upload the images to label"),
        (("/predict_batch", ("short", [image], "", "tiny-sam", "dichotomous", "")), "malformed owner token"),
        (("/predict_batch", (OWNER, [image], "no-such-job", "tiny-sam", "dichotomous", "")), "no such job"),
        (("/predict_batch", (OWNER, [image], "", "tiny-sam", "openvocab", "")), "name the classes"),
        (("/predict_batch", (OWNER, [image], "", "sam-vit-z", "dichotomous", "")), "not a backbone"),
        (("/batch_results", (OWNER, "no-such-job")), "no such job"),
        (("/batch_results", (OWNER, None)), "no such job"),
        (("/accept_label", (OWNER, "no-such-job", "x")), "no such job"),
        (("/retrain", (OWNER, "no-such-job", 10)), "no such job"),
        (("/download_labels", (OWNER, "no-such-job")), "no such job"),
    ]


def test_label_the_rest_through_the_api(client, data, workdir):
    """/predict_batch with an adapter on a set of images with a corrupt one: a background job whose
    results come back most uncertain first, the corrupt file named; results are private; a second
    batch is cancelled mid-way; accept one, retrain warm-started, download all."""
    job = train(client, data, steps=4)
    assert wait_finished(client, job)["status"] == "done"
    folder = workdir / "unlabelled"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for i in range(6):
        path = folder / f"u{i}.png"
        Image.fromarray(rng.integers(0, 255, (int(rng.integers(60, 140)), 100, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    files = [handle_file(str(p)) for p in [*paths[:3], broken, *paths[3:]]]
    label_job, message = client.predict(OWNER, files, job, "tiny-sam", "dichotomous", "", api_name="/predict_batch")
    assert label_job in message
    s = wait_finished(client, label_job)
    assert s["status"] == "done" and s["kind"] == "label" and s["labels_ready"] and s["step"] == 7
    rows = client.predict(OWNER, label_job, api_name="/batch_results")
    assert len(rows) == 6 and [r["rank"] for r in rows] == list(range(1, 7))
    assert [r["uncertainty"] for r in rows] == sorted((r["uncertainty"] for r in rows), reverse=True)
    other = "someone-else-" + "d" * 20
    with pytest.raises(Exception, match="no such job"):
        client.predict(other, label_job, api_name="/batch_results")
    with pytest.raises(Exception, match="no such job"):
        client.predict(other, label_job, api_name="/download_labels")
    path = client.predict(OWNER, label_job, api_name="/download_labels")
    with zipfile.ZipFile(path) as z:
        failed = json.loads(z.read("failed.json"))
        assert [f["file"] for f in failed] == ["broken.png"]
        assert len([n for n in z.namelist() if n.startswith("masks/")]) == 6
    assert "Saved" in client.predict(OWNER, label_job, rows[0]["name"], api_name="/accept_label")
    assert "Saved" in client.predict(OWNER, label_job, rows[1]["name"], api_name="/accept_label")
    retrain, message = client.predict(OWNER, label_job, 3, api_name="/retrain")
    s = wait_finished(client, retrain)
    assert s["status"] == "done" and s["kind"] == "train" and s["adapted"]

    twice = [handle_file(str(p)) for p in [*paths, paths[0]]]  # two files with one name: refused
    with pytest.raises(Exception, match="two images are named"):
        client.predict(OWNER, twice, job, "tiny-sam", "dichotomous", "", api_name="/predict_batch")
    big = folder / "big.zip"
    with zipfile.ZipFile(big, "w") as z:
        for i in range(400):
            z.write(paths[i % 6], f"many/{i:03d}.png")
    slow, _ = client.predict(
        OWNER, [handle_file(str(big))], job, "tiny-sam", "dichotomous", "", api_name="/predict_batch"
    )
    wait_for(lambda: status(client, slow)["step"] >= 4, 120, what="the batch under way")
    client.predict(OWNER, slow, api_name="/cancel")
    s = wait_finished(client, slow, timeout=60)
    assert s["status"] == "cancelled" and 4 <= s["step"] < 400
    with pytest.raises(Exception, match="is cancelled"):
        client.predict(OWNER, slow, api_name="/batch_results")


def test_every_endpoint_answers_malformed_values_with_a_specific_message(client, data):
    """No request, whatever its values, gets Gradio's generic error: each gets a message that says
    what is wrong (raised, or returned in the page's message for /check_data). A component that
    checks a value itself (a radio's choices) answers with its own specific message."""
    wrong = []
    for (endpoint, args), expected in malformed_requests(checked(client, data)):
        try:
            answer = " ".join(str(x) for x in client.predict(*args, api_name=endpoint))
        except Exception as e:  # gradio_client raises the endpoint's error text
            answer = str(e)
        if GENERIC in answer or not re.search(expected, answer):
            wrong.append((endpoint, str(args)[:160], expected, answer[:300]))
    assert not wrong, "\n".join(map(str, wrong))


def test_status_under_load_while_a_job_trains(app, client, data):
    """8 clients poll a job's status over kept-alive HTTP for 3 s while it trains (127.0.0.1 only,
    bounded in time), four through Gradio's REST route and four through the studio's light JSON
    route (app/rest.py): every answer is the job's state. The latency figures are a benchmark's
    (bench/status_latency.py, docs/benchmarks.md), not a timed test's."""
    import http.client
    import threading
    import time

    job = train(client, data, steps=5000)
    wait_for(lambda: status(client, job)["step"] >= 1, 120, what="the first step")
    routes = {
        "/gradio_api/run/status": (json.dumps({"data": [OWNER, job]}).encode(), lambda a: a["data"][0]),
        "/studio/v1/status": (json.dumps({"owner": OWNER, "job": job}).encode(), lambda a: a),
    }
    answers = {route: [] for route in routes}
    errors = []

    def poll(route):
        body, unwrap = routes[route]
        connection = http.client.HTTPConnection("127.0.0.1", app.port, timeout=30)
        deadline = time.time() + 3
        while time.time() < deadline:
            try:
                connection.request("POST", route, body, {"Content-Type": "application/json"})
                answers[route].append(unwrap(json.loads(connection.getresponse().read())))
            except Exception as e:
                errors.append(repr(e))

    threads = [threading.Thread(target=poll, args=(route,)) for route in routes for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    client.predict(OWNER, job, api_name="/cancel")
    assert not errors
    for route, got in answers.items():
        assert len(got) > 4, route
        assert all(a["job"] == job and a["status"] == "running" for a in got), route
        assert max(a["step"] for a in got) >= 1, route
        assert set(got[0]) == set(answers["/gradio_api/run/status"][0]), route  # the same answer


def test_light_json_routes_answer_like_the_endpoints_and_refuse_bad_bodies(app, client, data):
    import urllib.error
    import urllib.request

    def post(route, raw: bytes):
        request = urllib.request.Request(f"{app.url.rstrip('/')}{route}", data=raw, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    jobs = client.predict(OWNER, api_name="/jobs")
    assert post("/studio/v1/jobs", json.dumps({"owner": OWNER}).encode()) == (200, jobs)
    job = jobs[-1]["job"]
    code, answer = post("/studio/v1/status", json.dumps({"owner": OWNER, "job": job}).encode())
    assert code == 200 and answer["job"] == job and answer["status"] == status(client, job)["status"]
    table = [
        ("/studio/v1/status", json.dumps({"owner": "someone-else-" + "b" * 20, "job": job}), 400, "no such job"),
        ("/studio/v1/status", json.dumps({"owner": OWNER, "job": 5}), 400, "job id must be text"),
        ("/studio/v1/status", json.dumps({"owner": OWNER, "job": "x" * 1000}), 400, "job id"),
        ("/studio/v1/status", json.dumps({"owner": OWNER, "jobs": job}), 400, "unknown field"),
        ("/studio/v1/jobs", json.dumps({"owner": "short"}), 400, "owner token"),
        ("/studio/v1/jobs", json.dumps({}), 400, "owner token"),
        ("/studio/v1/jobs", "[1, 2]", 400, "JSON object"),
        ("/studio/v1/jobs", "{not json", 400, "not JSON"),
        ("/studio/v1/jobs", "\udcff", 400, "not JSON"),
        ("/studio/v1/jobs", json.dumps({"owner": OWNER, "pad": "x" * 5000}), 413, "over 4096 bytes"),
    ]
    wrong = []
    for route, body, code, expected in table:
        got = post(route, body.encode("utf-8", "surrogateescape"))
        if got[0] != code or expected not in got[1].get("error", ""):
            wrong.append((route, body[:60], got))
    assert not wrong, wrong
