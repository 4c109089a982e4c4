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
from adapt.tasks import TASKS
from app.catalog import backbone_choices, takes_text
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


def owners_checked(demo: gr.Blocks, owner) -> None:
    """Every event of `demo` that takes the `owner` token refuses a missing or malformed one before
    it runs. No event is protected by being left out of the API: a "private" one is still callable
    by fn_index over /gradio_api/queue/join. A timer's tick, which may come before the page has its
    token, changes nothing instead of raising. Call once, after every event is registered."""
    for block_fn in demo.fns.values():
        if block_fn.fn is None or owner not in block_fn.inputs:
            continue
        ticks = all(event == "tick" for _, event in block_fn.targets)
        block_fn.fn = _owner_first(block_fn.fn, block_fn.inputs.index(owner), len(block_fn.outputs), ticks)


def _owner_first(fn, position: int, n_outputs: int, quiet: bool):
    """`fn` behind the owner check of its argument at `position` (Gradio passes the inputs in
    order: the owner is always among them, before any Request or event data)."""

    def refused(args) -> tuple | None:
        """None when the owner token is well formed; else skips (a tick) or a raised gr.Error."""
        token = args[position] if position < len(args) else None
        try:
            check_owner(token)
            return None
        except UserError as e:
            if quiet:
                return gr.skip() if n_outputs == 1 else tuple(gr.skip() for _ in range(n_outputs))
            raise gr.Error(str(e), print_exception=False) from None

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awaited(*args, **kwargs):
            skip = refused(args)
            return skip if skip is not None else await fn(*args, **kwargs)

        return awaited

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        skip = refused(args)
        return skip if skip is not None else fn(*args, **kwargs)

    return wrapped


def outbox(path: Path, name: str) -> str:
    """A copy of a file for the browser to download, under the temp folder gradio may serve from
    (the studio folder itself is never exposed). Gradio serves it from its cache, at a URL only
    this answer names, until Limits.served_files removes it (README, "Who can read what")."""
    folder = Path(tempfile.gettempdir()) / "adapt-studio-downloads"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*/*"):
        if time.time() - old.stat().st_mtime > 3600:
            shutil.rmtree(old.parent, ignore_errors=True)
    dest = Path(tempfile.mkdtemp(dir=folder)) / name
    shutil.copyfile(path, dest)
    return str(dest)


# Saves the file a one-click download's event returned (a hidden gr.File's value) in the browser
SAVE_FILE_JS = """(file) => { if (file && file.url) { const a = document.createElement('a');
  a.href = file.url; a.download = file.orig_name || ''; document.body.appendChild(a); a.click(); a.remove(); }
  return []; }"""


def download_button(label: str, elem_id: str) -> gr.Button:
    """A button that downloads in one click (wired by `one_click_download`): made in the layout,
    with the hidden gr.File beside it that carries the file to the browser (`button.holder`)."""
    button = gr.Button(label, elem_id=elem_id)
    button.holder = gr.File(visible="hidden", elem_id=f"{elem_id}-file")
    return button


def one_click_download(button: gr.Button, fn, inputs, message=None, **event) -> None:
    """Wire a `download_button` to download, in one click, the file `fn(*inputs)` makes then: the
    file goes to the hidden gr.File and the browser is told to save it. (A gr.DownloadButton saves
    the file it already holds when clicked; fed by its own click, it needed a second click.)
    `message`: a message output beside the button (fn then returns the file and the message).
    `event`: the click's options (api_name, ...)."""
    outputs = [button.holder] + ([message] if message is not None else [])
    click = button.click(fn, inputs, outputs, **event)
    click.success(None, button.holder, None, js=SAVE_FILE_JS, api_visibility="private")


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
    names = backbone_choices("dichotomous")
    backbone = gr.Dropdown(names, value=names[0][1], allow_custom_value=True, label=backbone_label, elem_id=backbone_id)
    return adapter, backbone


def text_field(label: str, elem_id: str) -> gr.Textbox:
    """A text prompt field (SAM 3: every instance of a phrase), hidden until the model chosen takes
    one (`text_field_follows`)."""
    return gr.Textbox(
        "", label=label, placeholder="e.g. cell", max_length=60, visible=False, elem_id=elem_id
    )  # "": optional in the API


def text_field_follows(studio, owner, task, adapter, backbone, text) -> None:
    """Show a tab's text prompt field while its task makes binary masks (a label map's phrases are
    its classes) and the model chosen segments phrases: the adapter's base, or the frozen backbone
    (app.catalog.takes_text); hidden, it is emptied, so nothing hidden is sent."""

    def shown(owner, adapter, backbone, task):
        if task not in TASKS or TASKS[task].mask.needs_class_names:
            return gr.Textbox(visible=False, value="")
        if adapter:
            bases = {ref: base for _, ref, _, base in studio.adapter_rows(owner)} if valid_owner(owner or "") else {}
            backbone = bases.get(adapter, "")
        return gr.Textbox(visible=True) if takes_text(backbone or "") else gr.Textbox(visible=False, value="")

    for trigger in (adapter.change, backbone.change, task.change):
        trigger(shown, [owner, adapter, backbone, task], text, api_visibility="private", show_progress="hidden")


def adapter_choices(studio, owner: str, value: str = "", task: str | None = None):
    """The adapter dropdown's choices for this browser: none, its finished jobs, its uploads; with
    `task`, only the adapters for that task, and `value` only if it is one of them (none otherwise)."""
    try:
        items = studio.adapters(owner, task)
    except UserError:
        items = []
    if task is not None and value not in [ref for _, ref in items]:
        value = ""
    return gr.Dropdown(choices=[NO_ADAPTER] + items, value=value)
