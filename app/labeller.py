"""Click labelling: SAM proposes a mask from positive/negative points and a box; the user adds the
proposal to the image's label map (as a class, for open-vocabulary data), fixes it with a brush, and
saves the pair into their labelled set, a standard images/ + masks/ dataset folder.

The state is a plain dict kept per browser session: the queue of images to label (the user moves
along it, each image's work kept), and for the current one the full-resolution image, its label map
(0 = background, k = the k-th class), the clicks, the current proposal, an undo history and the view
(zoom and centre). The page shows the part in view scaled to at most DISPLAY px; clicks are mapped
back to source pixels through the same window.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import cv2
import numpy as np

from adapt.pipeline import interactive_predictor
from adapt.tasks import TASKS
from app.placement import cache_entries, place

DISPLAY = 768
ZOOM_PIXEL = 8  # the closest zoom shows a source pixel as this many display pixels
PAN_STEP = 0.25  # of the view's size
HISTORY = 30  # changes that can be undone, per image
KEPT = ("labels", "points", "box", "corner", "proposal", "zoom", "centre")  # an image's, kept in the queue
BRUSH_ADD, BRUSH_ERASE = "#00ff00", "#ff0000"
MODES = ("foreground point", "background point", "box (two clicks)")

_predictors: dict = {}
_predictors_lock = threading.Lock()


def predictor(backbone: str = "tiny-sam"):
    """One interactive SAM predictor per backbone (its image embeddings are cached), on the GPU when
    there is room for it (app.placement); `pred.placement` says where it runs."""
    with _predictors_lock:
        if backbone not in _predictors:
            pred = interactive_predictor(backbone)  # on the CPU until placed
            where = place(pred.task.backbone, backbone)
            pred.device, pred.capacity = where.device, cache_entries(backbone, where.device)
            pred.placement = where
            _predictors[backbone] = (pred, threading.Lock())
        return _predictors[backbone]


def new_state(image: np.ndarray, name: str, queue: list[dict] | None = None) -> dict:
    """A labelling session on `image`: the queue of images to label (dicts with path and name, this
    image first; by default just this one) and where in it the user is."""
    state = {"queue": queue or [{"path": None, "name": name}], "at": 0}
    return _show(state, image, None)


def _show(state: dict, image: np.ndarray, kept: dict | None) -> dict:
    """Make `image` (the queue's current entry) the one being labelled: what was kept of it when the
    user moved on, or a fresh start (nothing labelled, the whole image in view)."""
    h, w = image.shape[:2]
    state.update(image=image, name=state["queue"][state["at"]]["name"], scale=min(1.0, DISPLAY / max(h, w)))
    fresh = {"labels": np.zeros((h, w), np.uint8), "points": [], "box": None, "corner": None, "proposal": None}
    state.update(kept or dict(fresh, zoom=1.0, centre=[w / 2, h / 2]), history=[])
    return state


def queue_files(state: dict | None, files: list[str], load, limit: int) -> tuple[dict | None, list[str], int]:
    """The queue for the files an upload field holds (the field adds each upload to its list): the
    current queue with the new files appended, the user's place and work kept, while the field
    still holds every file of it; else a new queue, at its first file. Files `load` refuses (a
    UserError) are left out, with why; at most `limit` images. Returns the state (None when no
    file could be read), the reasons for what was left out, and how many images were added."""
    from app.checks import UserError

    files = list(dict.fromkeys(files))
    keep = state is not None and all(e["path"] in files for e in state["queue"])
    queue = state["queue"] if keep else []
    known = {e["path"] for e in queue}
    first, added, skipped, over = None, 0, [], 0
    for path in (p for p in files if p not in known):
        if len(queue) >= limit:
            over += 1
            continue
        try:
            image = load(path)
        except UserError as e:
            skipped.append(str(e))
            continue
        queue.append({"path": path, "name": Path(path).name})
        added += 1
        first = image if first is None and not keep else first
    if over:
        skipped.append(f"{over} more file{'s' if over > 1 else ''}: a queue holds at most {limit} images")
    if keep or not queue:
        return (state if keep else None), skipped, added
    return new_state(first, queue[0]["name"], queue), skipped, added


def go(state: dict, step: int, load) -> bool:
    """Move `step` images along the queue (False past either end), keeping this image's labels,
    clicks and view for a return; `load(path)` reads the next image (if it raises, nothing moved)."""
    at = state["at"] + step
    if not 0 <= at < len(state["queue"]):
        return False
    image = load(state["queue"][at]["path"])
    state["queue"][state["at"]]["kept"] = {k: state[k] for k in KEPT}
    state["at"] = at
    _show(state, image, state["queue"][at].pop("kept", None))
    return True


def position(state: dict) -> str:
    """Where the user is in the queue, and whether this image was saved to the set."""
    entry, n = state["queue"][state["at"]], len(state["queue"])
    where = f"Image **{state['at'] + 1}** of {n}: " if n > 1 else "Labelling "
    saved = f" (saved as `{entry['saved']}`)" if entry.get("saved") else ""
    return f"{where}**{state['name']}**{saved}"


# --- the view: the whole image at zoom 1, a part of it around a centre when zoomed --------------


def display_size(state: dict) -> tuple[int, int]:
    """The rendered view's width and height: the image scaled to at most DISPLAY, at every zoom."""
    h, w = state["labels"].shape
    return max(1, round(w * state["scale"])), max(1, round(h * state["scale"]))


def window(state: dict) -> tuple[int, int, int, int]:
    """The part of the image in view, in source pixels: x0, y0, width, height (kept inside it)."""
    h, w = state["labels"].shape
    cw, ch = max(1, round(w / state["zoom"])), max(1, round(h / state["zoom"]))
    cx, cy = state["centre"]
    return min(max(round(cx - cw / 2), 0), w - cw), min(max(round(cy - ch / 2), 0), h - ch), cw, ch


def zoom(state: dict, factor: float) -> dict:
    """Zoom in (factor > 1) or out around the view's centre; factor 0 shows the whole image. At
    most ZOOM_PIXEL display pixels per source pixel."""
    most = max(1.0, ZOOM_PIXEL / state["scale"])
    state["zoom"] = 1.0 if factor == 0 else min(most, max(1.0, state["zoom"] * factor))
    return _settle(state)


def pan(state: dict, dx: int, dy: int) -> dict:
    """Move the view by (dx, dy) steps of PAN_STEP of its own size (right and down positive)."""
    _, _, cw, ch = window(state)
    state["centre"] = [state["centre"][0] + dx * PAN_STEP * cw, state["centre"][1] + dy * PAN_STEP * ch]
    return _settle(state)


def _settle(state: dict) -> dict:
    """The centre of the view as shown (a pan past the edge does not build up unseen)."""
    x0, y0, cw, ch = window(state)
    state["centre"] = [x0 + cw / 2, y0 + ch / 2]
    return state


def _source_xy(state: dict, x: float, y: float) -> list[float]:
    """A click on the view (display pixels) in source pixels: the view's pixel grid laid on the
    part of the image it shows."""
    h, w = state["labels"].shape
    x0, y0, cw, ch = window(state)
    dw, dh = display_size(state)
    return [min(w - 1.0, max(0.0, x0 + x * cw / dw)), min(h - 1.0, max(0.0, y0 + y * ch / dh))]


# --- clicks, regions, brush; each change can be undone ---------------------------------------------


def _remember(state: dict, labels: bool = False) -> None:
    """Keep what a change is about to alter (the clicks; the label map too when it paints), so
    `undo` can take it back; the last HISTORY changes are kept."""
    state["history"].append(
        {
            "points": [p[:] for p in state["points"]],
            "box": state["box"],
            "corner": state["corner"],
            "labels": state["labels"].copy() if labels else None,
        }
    )
    del state["history"][:-HISTORY]


def click(state: dict, x: float, y: float, mode: str) -> dict:
    """Record a click given in displayed pixels (of the view as shown, zoomed or not)."""
    _remember(state)
    sx, sy = _source_xy(state, x, y)
    if mode.startswith("box"):
        if state["corner"] is None:
            state["corner"] = [sx, sy]
        else:
            cx, cy = state["corner"]
            state["box"] = [min(cx, sx), min(cy, sy), max(cx, sx), max(cy, sy)]
            state["corner"] = None
    else:
        state["points"].append([sx, sy, 1 if mode.startswith("foreground") else 0])
    return state


def propose(state: dict, backbone: str = "tiny-sam") -> dict:
    """SAM's mask for the current clicks (none: no proposal)."""
    if not state["points"] and state["box"] is None:
        state["proposal"] = None
        return state
    pred, lock = predictor(backbone)
    pts = np.asarray([p[:2] for p in state["points"]], np.float32) if state["points"] else None
    labels = np.asarray([p[2] for p in state["points"]], np.int64) if state["points"] else None
    from app.placement import run

    def on(device):
        if pred.device != device:  # the GPU ran out of memory: its cached embeddings go with it
            pred.device = device
            pred.clear()
        return pred.predict(state["image"], points=pts, labels=labels, box=state["box"])

    with lock:
        prob = run(on, pred.task.backbone, pred.placement)
    state["proposal"] = prob > 0.5
    state["device_note"] = pred.placement.note
    return state


def undo(state: dict) -> dict:
    """Take back the last change: a click, an added region, a brush stroke or a clear (the
    proposal is then SAM's for the clicks restored: call `propose`)."""
    if state["history"]:
        last = state["history"].pop()
        labels = last.pop("labels")
        state.update(last)
        if labels is not None:
            state["labels"] = labels
    return state


def clear_clicks(state: dict) -> dict:
    _remember(state)
    return _forget_clicks(state)


def _forget_clicks(state: dict) -> dict:
    state.update(points=[], box=None, corner=None, proposal=None)
    return state


def add_region(state: dict, class_id: int) -> dict:
    """Paint the proposal into the label map as `class_id`, and start a fresh set of clicks."""
    _remember(state, labels=True)
    if state["proposal"] is not None:
        state["labels"][state["proposal"]] = class_id
    return _forget_clicks(state)


def apply_brush(state: dict, layer: np.ndarray | None, class_id: int) -> dict:
    """Green strokes paint `class_id`, red strokes erase to background (drawn over the whole image
    at display size: `render(..., whole=True)`)."""
    if layer is None or layer.ndim != 3 or layer.shape[2] < 4:
        return state
    _remember(state, labels=True)
    h, w = state["labels"].shape
    painted = layer[..., 3] > 0
    green = painted & (layer[..., 1].astype(int) > layer[..., 0].astype(int))
    red = painted & ~green
    for strokes, value in ((green, class_id), (red, 0)):
        full = cv2.resize(strokes.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        state["labels"][full] = value
    return state


def render(state: dict, n_classes: int, clicks: bool = True, whole: bool = False) -> np.ndarray:
    """What the page shows: the label map over the image, the proposal in blue, clicks and box; the
    part in view (`window`), or the whole image, at `display_size` (source pixels drawn as blocks
    when zoomed past 1:1, so a click is seen to land on one)."""
    from adapt.render import overlay, palette

    h, w = state["labels"].shape
    x0, y0, cw, ch = (0, 0, w, h) if whole else window(state)
    part = (slice(y0, y0 + ch), slice(x0, x0 + cw))
    image, labels = state["image"][part], state["labels"][part]
    colors = palette(max(2, n_classes))
    shown = overlay(image, labels.astype(np.int64), colors, skip=(0,)) if labels.any() else image.copy()
    if state["proposal"] is not None:
        shown = overlay(shown, state["proposal"][part], alpha=0.45)
    dw, dh = display_size(state)
    if (dw, dh) != (cw, ch):
        shrink = dw < cw
        shown = cv2.resize(shown, (dw, dh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_NEAREST)
    shown = np.ascontiguousarray(shown[..., :3])
    if clicks:
        _draw_clicks(state, shown, lambda x, y: (round((x - x0) * dw / cw), round((y - y0) * dh / ch)))
    return shown


def _draw_clicks(state: dict, shown: np.ndarray, at) -> None:
    """Points (green: object, red: background), the box and a box's first corner, at `at(x, y)`."""
    r = max(3, round(min(shown.shape[:2]) / 80))
    for x, y, label in state["points"]:
        color = (0, 220, 0) if label else (230, 0, 0)
        cv2.circle(shown, at(x, y), r, color, -1)
        cv2.circle(shown, at(x, y), r, (255, 255, 255), 1)
    if state["box"] is not None:
        x0, y0, x1, y1 = state["box"]
        cv2.rectangle(shown, at(x0, y0), at(x1, y1), (255, 215, 0), 2)
    if state["corner"] is not None:
        cv2.drawMarker(shown, at(*state["corner"]), (255, 215, 0), cv2.MARKER_CROSS, 2 * r, 2)


# --- the labelled set: a standard dataset folder -------------------------------------------------


def _stem(name: str, folder: Path) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem)[:40] or "image"
    stem, k = base, 1
    while (folder / "images" / f"{stem}.png").exists():
        k += 1
        stem = f"{base}_{k}"
    return stem


def save_pair(state: dict, folder: Path, task: str, classes: list[str], class_id: int = 1) -> str:
    """Write image + mask as the task's mask kind writes them (binary 0/255, or class ids +
    classes.json); returns the stem. Saving the same image again replaces its pair (one image,
    one pair), until the set is emptied (`forget_saved`)."""
    from adapt.render import save_png

    if state["proposal"] is not None:  # a proposal not yet added counts as the region
        add_region(state, class_id)
    if not state["labels"].any():
        raise ValueError("nothing is labelled on this image yet: click on the object, then save")
    folder.mkdir(parents=True, exist_ok=True)
    entry = state["queue"][state["at"]]
    stem = entry.get("saved") or _stem(state["name"], folder)
    save_png(state["image"], folder / "images" / f"{stem}.png")
    TASKS[task].mask.write(folder, stem, state["labels"], classes)
    entry["saved"] = stem
    return stem


def saved_as(state: dict) -> str | None:
    """The stem of the pair the current image was saved as (None: not saved yet)."""
    return state["queue"][state["at"]].get("saved")


def mark_saved(state: dict, stem: str) -> None:
    """The current image already has the pair `stem` (e.g. a label-the-rest result accepted
    earlier): saving it rewrites that pair."""
    state["queue"][state["at"]]["saved"] = stem


def forget_saved(state: dict | None) -> None:
    """The labelled set was emptied: no image of the queue has a pair in it any more."""
    for entry in state["queue"] if state else ():
        entry.pop("saved", None)


def gallery(folder: Path, task: str, size: int = 160) -> list[tuple[np.ndarray, str]]:
    """Thumbnails of the labelled set (mask over image) with their names."""
    kind = TASKS[task].mask
    items = []
    for img_path in sorted((folder / "images").glob("*.png")) if (folder / "images").exists() else []:
        image = cv2.imread(str(img_path))
        mask = cv2.imread(str(folder / "masks" / img_path.name), cv2.IMREAD_UNCHANGED)
        if image is None or mask is None:
            continue
        shown = kind.overlay(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), kind.decode(mask))
        scale = size / max(shown.shape[:2])
        items.append((cv2.resize(shown, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), img_path.stem))
    return items
