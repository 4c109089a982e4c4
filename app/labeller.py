"""Click labelling: SAM proposes a mask from positive/negative points and a box; the user adds the
proposal to the image's label map (as a class, for open-vocabulary data), fixes it with a brush, and
saves the pair into their labelled set, a standard images/ + masks/ dataset folder.

The state is a plain dict kept per browser session: the full-resolution image, its label map
(0 = background, k = the k-th class), the clicks and the current proposal. The page shows a copy
scaled to at most DISPLAY px; clicks are mapped back to source pixels.
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


def new_state(image: np.ndarray, name: str) -> dict:
    h, w = image.shape[:2]
    return {
        "image": image,
        "name": name,
        "labels": np.zeros((h, w), np.uint8),
        "points": [],
        "box": None,
        "corner": None,
        "proposal": None,
        "scale": min(1.0, DISPLAY / max(h, w)),
    }


def _source_xy(state: dict, x: float, y: float) -> list[float]:
    h, w = state["image"].shape[:2]
    s = state["scale"]
    return [min(w - 1.0, max(0.0, x / s)), min(h - 1.0, max(0.0, y / s))]


def click(state: dict, x: float, y: float, mode: str) -> dict:
    """Record a click given in displayed pixels."""
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
    if state["corner"] is not None:
        state["corner"] = None
    elif state["points"]:
        state["points"].pop()
    else:
        state["box"] = None
    return state


def clear_clicks(state: dict) -> dict:
    state.update(points=[], box=None, corner=None, proposal=None)
    return state


def add_region(state: dict, class_id: int) -> dict:
    """Paint the proposal into the label map as `class_id`, and start a fresh set of clicks."""
    if state["proposal"] is not None:
        state["labels"][state["proposal"]] = class_id
    return clear_clicks(state)


def apply_brush(state: dict, layer: np.ndarray | None, class_id: int) -> dict:
    """Green strokes paint `class_id`, red strokes erase to background (drawn at display size)."""
    if layer is None or layer.ndim != 3 or layer.shape[2] < 4:
        return state
    h, w = state["labels"].shape
    painted = layer[..., 3] > 0
    green = painted & (layer[..., 1].astype(int) > layer[..., 0].astype(int))
    red = painted & ~green
    for strokes, value in ((green, class_id), (red, 0)):
        full = cv2.resize(strokes.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        state["labels"][full] = value
    return state


def render(state: dict, n_classes: int, clicks: bool = True) -> np.ndarray:
    """What the page shows: the label map over the image, the proposal in blue, clicks and box."""
    from adapt.render import overlay, palette

    image, labels = state["image"], state["labels"]
    colors = palette(max(2, n_classes))
    shown = overlay(image, labels.astype(np.int64), colors, skip=(0,)) if labels.any() else image.copy()
    if state["proposal"] is not None:
        shown = overlay(shown, state["proposal"], alpha=0.45)
    s = state["scale"]
    if s < 1:
        h, w = image.shape[:2]
        shown = cv2.resize(shown, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    shown = np.ascontiguousarray(shown[..., :3])
    if clicks:
        r = max(3, round(min(shown.shape[:2]) / 80))
        for x, y, label in state["points"]:
            color = (0, 220, 0) if label else (230, 0, 0)
            cv2.circle(shown, (round(x * s), round(y * s)), r, color, -1)
            cv2.circle(shown, (round(x * s), round(y * s)), r, (255, 255, 255), 1)
        if state["box"] is not None:
            x0, y0, x1, y1 = (round(v * s) for v in state["box"])
            cv2.rectangle(shown, (x0, y0), (x1, y1), (255, 215, 0), 2)
        if state["corner"] is not None:
            cv2.drawMarker(
                shown,
                (round(state["corner"][0] * s), round(state["corner"][1] * s)),
                (255, 215, 0),
                cv2.MARKER_CROSS,
                2 * r,
                2,
            )
    return shown


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
    classes.json); returns the stem. A state saved before rewrites its own pair (state["stem"]),
    so saving again, or correcting a result already saved, never makes a second copy."""
    from adapt.render import save_png

    if state["proposal"] is not None:  # a proposal not yet added counts as the region
        add_region(state, class_id)
    if not state["labels"].any():
        raise ValueError("nothing is labelled on this image yet: click on the object, then save")
    folder.mkdir(parents=True, exist_ok=True)
    stem = state.get("stem") or _stem(state["name"], folder)
    save_png(state["image"], folder / "images" / f"{stem}.png")
    TASKS[task].mask.write(folder, stem, state["labels"], classes)
    state["stem"] = stem
    return stem


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
