"""What a request may carry: every user-facing failure is a `UserError` whose message says what to
do, every variable-size input is bounded and every value type-checked before anything is done
with it. The UI shows a UserError in the page; gradio_client and the JSON API receive its text.
"""

from __future__ import annotations

import os
import re

from adapt.tasks import parse_boxes as read_boxes
from adapt.tasks import parse_points

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


# an absolute path in a message, up to the first space, quote or separator (the rest of a name
# with spaces stays as text), and the folders in one that a server makes up: mkdtemp's names
# ("tmpab12cd_x", "adapt-dataset-ab12cd_x") and Gradio's cache folders (a content hash)
SERVER_PATH = re.compile(r"(?<![\w.~:/@-])/[^\s'\"`,;:()\[\]{}<>]+")
MADE_UP = re.compile(r"(?:tmp|[a-z]+(?:-[a-z]+)*-)[a-z0-9_]{8}|[0-9a-f]{32,}")


def without_server_paths(message: str) -> str:
    """A message with each absolute server path cut to what the user knows of it: what follows
    the last made-up folder (a temporary folder, Gradio's upload cache: the user's own file name
    or the path inside their zip), else the last component. A user never gives a server path, so
    a message names a file the way the user named it, never where the server keeps it."""

    def cut(match: re.Match) -> str:
        parts = [p for p in match.group(0).split("/") if p]
        made_up = [i for i, p in enumerate(parts) if MADE_UP.fullmatch(p)]
        rest = parts[made_up[-1] + 1 :] if made_up else parts[-1:]
        return "/".join(rest) or "the upload"

    return SERVER_PATH.sub(cut, message)


class UserError(ValueError):
    """Something the user can fix; the message says what (naming files as the user named them:
    server paths are cut at construction, the one place every user-facing message passes)."""

    def __init__(self, message: str = ""):
        super().__init__(without_server_paths(str(message)))


# --- what a request may carry: every variable-size input is bounded, every value type-checked ----

MAX_CLICKS = 100  # points and boxes in one prediction request
MAX_BOXES = 16  # exemplar boxes in one prediction request (each one more prompt token per phrase)
MAX_CLASSES = 64  # class names in one request (background included)
MAX_NAME = 60  # characters in one class name
MAX_TEXT = 4096  # characters in any free-text field (clicks, class lists)
MAX_ID = 64  # characters in a job or adapter id


def as_text(value, what: str, limit: int = MAX_TEXT) -> str:
    """A text field as a string (None: ""), at most `limit` characters."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{what} must be text, not {type(value).__name__}")
    if len(value) > limit:
        raise UserError(f"{what} is {len(value):,} characters long; at most {limit:,} are accepted")
    return value


def number(value, what: str, lo: float, hi: float, integer: bool = False) -> float | int:
    """A numeric field within [lo, hi] (numeric strings are read as numbers)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        x = float(value)
        if integer and x != int(x):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        kind = "a whole number" if integer else "a number"
        raise UserError(f"{what} must be {kind} between {lo:g} and {hi:g}, got {str(value)[:40]!r}") from None
    if not lo <= x <= hi:
        raise UserError(f"{what} must be between {lo:g} and {hi:g}, got {x:g}")
    return int(x) if integer else x


def flag(value, what: str) -> bool:
    """A checkbox: True or False, nothing else (an API client's 0, "no" or None is refused)."""
    if not isinstance(value, bool):
        raise UserError(f"{what} must be true or false, got {str(value)[:40]!r}")
    return value


def as_phrase(value, what: str) -> str | None:
    """A text prompt (SAM 3 looks for every instance of it): one class name's worth of text,
    stripped; None when empty."""
    text = as_text(value, what, MAX_NAME).strip()
    return text or None


def choice(value, what: str, options) -> str:
    """One of `options` (a registry's names)."""
    value = as_text(value, what, MAX_ID)
    if value not in options:
        raise UserError(f"unknown {what} {value!r}; choose one of {', '.join(options)}")
    return value


def file_list(files, what: str, limit: int) -> list[str]:
    """Uploaded file paths (one, or a list), at most `limit` of them."""
    if files is None:
        return []
    files = [files] if isinstance(files, str) else files
    if not isinstance(files, (list, tuple)) or not all(isinstance(f, str) for f in files):
        raise UserError(f"{what} must be a list of uploaded files")
    if len(files) > limit:
        raise UserError(f"{len(files)} {what} uploaded at once; at most {limit} are accepted")
    return list(files)


def uploaded(path: str) -> str:
    """An uploaded file's path, refused by its name when it is no longer there (uploads are kept
    for a while: app.config.Limits.served_files)."""
    if path and not os.path.isfile(path):
        raise UserError(f"{os.path.basename(path)}: the upload is no longer on the server: upload it again")
    return path


def check_owner(owner: str | None) -> str:
    if not isinstance(owner, str) or not TOKEN_RE.match(owner):
        raise UserError(
            "missing or malformed owner token: the page makes one for each browser; API clients "
            "pass any random string of 16-128 letters, digits, '-' or '_' (e.g. secrets.token_urlsafe())"
        )
    return owner


def parse_classes(value: str, background: bool) -> list[str]:
    names = [c.strip() for c in as_text(value, "the class list").split(",") if c.strip()]
    if len(names) + background > MAX_CLASSES:
        raise UserError(f"{len(names)} class names; at most {MAX_CLASSES - background} are accepted")
    long = [n for n in names if len(n) > MAX_NAME]
    if long:
        raise UserError(f"class name {long[0][:20]!r}... is longer than {MAX_NAME} characters")
    if len(set(n.lower() for n in names)) != len(names):
        raise UserError("class names repeat; give each class once")
    if background and (not names or names[0].lower() != "background"):
        names = ["background"] + [n for n in names if n.lower() != "background"]
    return names


def parse_clicks(value: str):
    """Clicks as the page and the API send them (see parse_points), at most MAX_CLICKS of them; a
    bad one is a UserError."""
    try:
        clicks = parse_points(as_text(value, "clicks"))
    except ValueError as e:
        raise UserError(str(e)) from None
    if clicks is not None and len(clicks[0]) > MAX_CLICKS:
        raise UserError(f"{len(clicks[0])} clicks; at most {MAX_CLICKS} are accepted in one request")
    return clicks


def clicks_inside(points, shape) -> None:
    """Every click lies on the image (x < width, y < height); a click off it is a UserError."""
    if points is None:
        return
    h, w = shape[:2]
    for x, y in points[0].tolist():
        if x >= w or y >= h:
            raise UserError(f"the click at ({x:g}, {y:g}) is outside the {w}x{h} image")


def parse_boxes(value: str):
    """Exemplar boxes as the page and the API send them, "x0,y0,x1,y1; ..." in image pixels (see
    adapt.tasks.parse_boxes), as (N, 4) rows or None; at most MAX_BOXES of them; a bad one is a
    UserError. Whether they lie on the image is `boxes_inside`'s, once it is loaded."""
    try:
        boxes = read_boxes(as_text(value, "exemplar boxes"))
    except ValueError as e:
        raise UserError(f"exemplar {e}") from None
    if boxes is not None and len(boxes) > MAX_BOXES:
        raise UserError(f"{len(boxes)} exemplar boxes; at most {MAX_BOXES} are accepted in one request")
    return boxes


def boxes_inside(boxes, shape) -> None:
    """Every box lies on the image (x1 <= width, y1 <= height: its corners are pixel edges); a box
    off it is a UserError."""
    if boxes is None:
        return
    h, w = shape[:2]
    for x0, y0, x1, y1 in boxes.tolist():
        if x1 > w or y1 > h:
            raise UserError(f"the exemplar box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the {w}x{h} image")


def boxes_taken(boxes, task) -> None:
    """Exemplar boxes only for a task that takes them (Task.exemplars: SAM 3's concept task); given
    to another, they are refused rather than silently dropped."""
    if boxes is not None and not task.exemplars:
        raise UserError("exemplar boxes are prompts of the concept task (SAM 3): choose that task, or clear the boxes")
