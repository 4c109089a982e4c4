"""What every tab of the studio's page shares: turning UserErrors into page messages, handing
files to the browser, the bundled example images, owner-token checks, the model pickers."""

from __future__ import annotations

import functools
import inspect
import logging
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import gradio as gr
import numpy as np

from adapt.files import disk_full
from app.catalog import backbones_for
from app.studio import UserError, check_owner

log = logging.getLogger("app")
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "assets" / "examples"


def error_message(e: Exception, where: str) -> str:
    """What a user is told of an exception: a UserError's own message; a full disk said as such;
    anything else a short line with an error id, the traceback logged under that id."""
    if isinstance(e, UserError):
        return str(e)
    if disk_full(e):
        log.error("the studio's disk is full (%s)", where)
        return "the studio's disk is full right now: nothing was kept; try again later"
    error_id = secrets.token_hex(4)
    log.error("error %s in %s", error_id, where, exc_info=e)
    return (
        f"something went wrong on the server ({type(e).__name__}, error id {error_id}); "
        "the server log has the details under that id"
    )


def user_errors(fn):
    """Every endpoint's guard: a UserError is shown as its message in the page (and is the API's
    error text); anything unexpected becomes a short message with an error id, while the
    traceback goes to the server log under that id. Gradio's generic error never reaches a user.
    Works for plain and async endpoints alike."""

    def translate(e: Exception) -> gr.Error:
        return gr.Error(error_message(e, fn.__name__), print_exception=False)

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awaited(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:
                raise translate(e) from None

        return awaited

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:
            raise translate(e) from None

    return wrapped


def said_beside(n_outputs: int, at: int = -1, failed: str = "Not done"):
    """A private event's guard that answers beside its own button: any error becomes one message in
    the event's message output (`at` among its `n_outputs`), the other outputs left as they were;
    not a toast plus an error badge on every output. (A public API event keeps `user_errors`: its
    error is the API's answer.)"""

    def guard(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                out = [gr.skip()] * n_outputs
                out[at] = f"**{failed}:** {error_message(e, fn.__name__)}"
                return tuple(out) if n_outputs > 1 else out[0]

        return wrapped

    return guard


def outbox(path: Path, name: str) -> str:
    """A copy of a file for the browser to download, under the temp folder gradio may serve from
    (the studio folder itself is never exposed)."""
    folder = Path(tempfile.gettempdir()) / "adapt-studio-downloads"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*/*"):
        if time.time() - old.stat().st_mtime > 3600:
            shutil.rmtree(old.parent, ignore_errors=True)
    dest = Path(tempfile.mkdtemp(dir=folder)) / name
    shutil.copyfile(path, dest)
    return str(dest)


def read_rgb(path: Path) -> np.ndarray | None:
    image = cv2.imread(str(path)) if path.exists() else None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def examples() -> list[str]:
    return sorted(str(p) for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg")) if EXAMPLES.exists() else []


def example_path(path: str | None) -> str | None:
    """Only the bundled example images can be opened by name."""
    return path if path in examples() else None


def valid_owner(token: str) -> bool:
    try:
        check_owner(token)
        return True
    except UserError:
        return False


NO_ADAPTER = ("none: the frozen backbone", "")


def model_pickers(adapter_id: str, backbone_id: str, backbone_label: str):
    """The (adapter, backbone) dropdowns of a tab that predicts: any of this browser's adapters,
    or none and a frozen backbone. Both take any value from the API; the service checks it."""
    adapter = gr.Dropdown([NO_ADAPTER], value="", label="adapter", allow_custom_value=True, elem_id=adapter_id)
    names = backbones_for("dichotomous")
    backbone = gr.Dropdown(names, value=names[0], allow_custom_value=True, label=backbone_label, elem_id=backbone_id)
    return adapter, backbone


def adapter_choices(studio, owner: str, value: str = ""):
    """The adapter dropdown's choices for this browser: none, its finished jobs, its uploads."""
    try:
        items = studio.adapters(owner)
    except UserError:
        items = []
    return gr.Dropdown(choices=[NO_ADAPTER] + items, value=value)
