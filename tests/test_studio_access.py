"""Who can read and use what (issue 24, items 1, 2, 7, 8): a checked dataset belongs to the browser
that checked it (by path or by id, another browser is refused); every event that takes the owner
token checks it, including the "private" ones reachable by fn_index; files the page hands out
expire; what a zip unpacks to counts against the owner's storage quota; a full disk while
unpacking says so; messages name the user's files, never the server's temporary paths."""

from __future__ import annotations

import errno
import json
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import gradio as gr
import pytest
from studio_support import OWNER, App, dataset_zip, wait_for

from app.config import Limits, Paths
from app.studio import Studio, UserError
from app.ui.common import error_message

OTHER = "someone-else-" + "c" * 20
TTL = 6  # seconds a served file lives in the launched app (ADAPT_SERVED_FILES_S)


@pytest.fixture
def studio(tmp_path):
    return Studio(Paths(tmp_path / "studio"), Limits(owner_storage_mb=1))


def many_small_entries(path: Path, n: int = 1200) -> Path:
    """A zip of `n` entries of 1 KB each, compressing ~40 times: each under the per-entry ratio
    floor, the whole under the overall ratio, ~30 KB packed, 1.2 MB unpacked."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(n):
            z.writestr(f"images/{i:04d}.png", (f"{i:04d}" * 256).encode())
    return path


# --- item 1: a checked dataset is the owner's own ---------------------------------------------------


def test_a_checked_dataset_is_found_only_by_its_owner(tmp_path):
    studio = Studio(Paths(tmp_path / "studio"))
    data = dataset_zip(tmp_path, n=3, size=64)
    path, _ = studio.stage_upload(OWNER, "dichotomous", zip_file=str(data))
    assert path.is_relative_to(studio.paths.owner_uploads(OWNER))
    assert studio.checked_dataset(OWNER, path.stem) == path  # by id
    assert studio.checked_dataset(OWNER, f"/tmp/gradio/{'e' * 64}/{path.name}") == path  # the served copy
    for name in (path.stem, str(path)):  # another browser: by id, or by the very path
        with pytest.raises(UserError, match="not a dataset checked for this browser"):
            studio.checked_dataset(OTHER, name)
    for name in (str(data), "/etc/passwd", "dataset-../../x"):  # an unchecked file, a path, a traversal
        with pytest.raises(UserError, match="not a dataset checked for this browser"):
            studio.checked_dataset(OWNER, name)
    with pytest.raises(UserError, match="no dataset"):
        studio.checked_dataset(OWNER, None)


# --- item 2: every event that takes the owner checks it ---------------------------------------------


def test_every_event_that_takes_the_owner_refuses_a_missing_or_malformed_one(tmp_path):
    """Private events included: none is protected by being left out of the API. A timer's tick
    changes nothing instead (it may tick before the page has its token)."""
    from app.ui.page import build

    demo = build(Studio(Paths(tmp_path / "studio")))
    owner = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "owner")
    taking = [f for f in demo.fns.values() if f.fn is not None and owner in f.inputs]
    assert {"load_hub", "push_hub", "on_click", "download_set", "check_data", "submit"} <= {f.name for f in taking}
    for block_fn in taking:
        for token in (None, "", "short", "../" + OWNER):
            args = [None] * len(block_fn.inputs)
            args[block_fn.inputs.index(owner)] = token
            if all(event == "tick" for _, event in block_fn.targets):
                answer = block_fn.fn(*args)
                assert all(isinstance(a, type(gr.skip())) for a in answer), block_fn.name
                continue
            with pytest.raises(gr.Error, match="owner token"):
                answer = block_fn.fn(*args)
                if hasattr(answer, "__await__"):
                    import asyncio

                    asyncio.run(answer)


# --- item 7: what is unpacked counts against the owner's quota -------------------------------------


def test_what_a_zip_unpacks_to_counts_against_the_storage_quota(studio, tmp_path):
    from app.label_rest import LabelRest

    archive = many_small_entries(tmp_path / "many.zip")
    assert archive.stat().st_size < 200_000  # the upload alone is well under the 1 MB quota
    for request in (
        lambda: studio.stage_upload(OWNER, "dichotomous", zip_file=str(archive)),
        lambda: studio.upload_adapter(OWNER, str(archive)),
        lambda: LabelRest(studio).submit(OWNER, [str(archive)], "", backbone="tiny-sam", task="dichotomous"),
    ):
        with pytest.raises(UserError, match="over the 1.0 MB each user has here"):
            request()
    assert not list(studio.paths.jobs.iterdir())  # nothing was queued or unpacked


# --- item 8: a full disk while unpacking, and messages without server paths --------------------------


def test_a_full_disk_while_unpacking_says_the_disk_is_full(tmp_path, monkeypatch):
    import adapt.archive
    from app.run.worker import user_message

    real_open = open

    def full_disk(path, mode="r", *args, **kwargs):
        if "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(adapt.archive, "open", full_disk, raising=False)
    studio = Studio(Paths(tmp_path / "studio"))
    data = dataset_zip(tmp_path, n=3, size=64)
    for request in (
        lambda: studio.stage_upload(OWNER, "dichotomous", zip_file=str(data)),
        lambda: studio.upload_adapter(OWNER, str(data)),
    ):
        with pytest.raises(OSError) as raised:
            request()
        said = error_message(raised.value, "test")
        assert "disk is full" in said and "Errno" not in said and "ArchiveError" not in said
    with pytest.raises(OSError) as raised:  # the label job's extraction: the worker's message
        adapt.archive.safe_extract(data, tmp_path / "inputs", folder="the images")
    assert "disk is full" in user_message(raised.value) and not (tmp_path / "inputs").exists()


def test_messages_name_the_users_files_never_a_server_temp_path(tmp_path):
    studio = Studio(Paths(tmp_path / "studio"))
    upload = Path(tempfile.mkdtemp(dir=tmp_path)) / "my adapter.zip"  # where Gradio keeps an upload
    with zipfile.ZipFile(upload, "w") as z:
        z.writestr("adapter_config.json", json.dumps({"method": "parser"}))
    gone = Path(tempfile.mkdtemp()) / "cells.zip"
    for request, name in (
        (lambda: studio.upload_adapter(OWNER, str(upload)), "my adapter.zip"),
        (lambda: studio.stage_upload(OWNER, "dichotomous", zip_file=str(gone)), "cells.zip"),
        (lambda: studio.stage_upload(OWNER, "dichotomous", images=[str(gone)], masks=[str(gone)]), "cells.zip"),
    ):
        with pytest.raises(UserError) as raised:
            request()
        said = error_message(raised.value, "test")
        assert name in said and tempfile.gettempdir() not in said and str(tmp_path) not in said, said
    said = str(UserError(f"{tempfile.gettempdir()}/gradio/{'ab' * 32}/cat 1.zip: not a zip"))
    assert said == "cat 1.zip: not a zip"
    assert str(UserError("images/a.png is not hf://a/b@main")) == "images/a.png is not hf://a/b@main"


# --- through HTTP, against a launched studio --------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = App(tmp_path_factory.mktemp("access") / "studio", env={"ADAPT_SERVED_FILES_S": str(TTL)}).start()
    yield app
    app.stop()


def join(app, fn_index: int, data: list) -> dict:
    """Call an event by fn_index over /gradio_api/queue/join, as any HTTP client can (listed in the
    API or not); returns the process_completed message."""
    session = "s" + str(time.time_ns())
    body = json.dumps({"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None}).encode()
    request = urllib.request.Request(
        f"{app.url}gradio_api/queue/join", body, {"Content-Type": "application/json"}, method="POST"
    )
    urllib.request.urlopen(request, timeout=30).read()
    with urllib.request.urlopen(f"{app.url}gradio_api/queue/data?session_hash={session}", timeout=60) as stream:
        for line in stream:
            if line.startswith(b"data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("no answer")


def fn_index(app, elem_id: str) -> int:
    """The event a button with this elem_id triggers (from the page's config)."""
    config = json.loads(urllib.request.urlopen(f"{app.url}config", timeout=30).read())
    button = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)
    return next(d["id"] for d in config["dependencies"] if [button, "click"] in [list(t) for t in d["targets"]])


def test_private_events_over_http_refuse_a_missing_owner(app):
    """The Hub pull is "private" (not on the API page), yet callable by fn_index: it refuses a call
    without a well-formed owner token before it looks at the Hub."""
    for elem_id, data in (("load-hub", [None, "hf://a/b@../../c"]), ("load-hub", ["short", "user/repo"])):
        answer = join(app, fn_index(app, elem_id), data)
        assert not answer["success"] and "owner token" in json.dumps(answer), answer


def test_another_browser_cannot_train_on_a_checked_dataset_and_served_files_expire(app, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app.url, verbose=False, download_files=False)
    served, message = client.predict(
        OWNER, "dichotomous", handle_file(str(dataset_zip(tmp_path, n=3, size=64))), [], [], "", api_name="/check_data"
    )
    assert "ready to train" in message and Path(served["path"]).name.startswith("dataset-")
    args = ("dichotomous", "tiny-sam", "parser", 2, 1e-3, 1e-4, 2)
    with pytest.raises(Exception, match="not a dataset checked for this browser"):  # by the served path
        client.predict(OTHER, served, *args, api_name="/train")
    with pytest.raises(Exception, match="not a dataset checked for this browser"):  # an unchecked upload
        client.predict(OWNER, handle_file(str(dataset_zip(tmp_path, n=3, size=64))), *args, api_name="/train")
    job, _ = client.predict(OWNER, served, *args, api_name="/train")
    assert client.predict(OWNER, job, api_name="/status")["job"] == job
    with urllib.request.urlopen(served["url"], timeout=30) as answer:  # readable by its URL for a while,
        assert answer.status == 200

    def gone():
        try:
            urllib.request.urlopen(served["url"], timeout=30).read()
            return False
        except urllib.error.HTTPError as e:
            return e.code in (403, 404)

    wait_for(gone, 4 * TTL, what="the served dataset to expire")  # then no longer
