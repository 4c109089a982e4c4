"""The click labeller's state (app/labeller.py): the queue of images, undo, and the zoomed view whose
clicks land on the source pixel shown under them."""

from __future__ import annotations

import numpy as np
import pytest

from app import labeller
from app.checks import UserError

FG = labeller.MODES[0]


def coded(w: int = 300, h: int = 200) -> np.ndarray:
    """An image whose pixel (x, y) is coloured (x % 256, y, x // 256): each pixel says where it is."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs % 256, ys, xs // 256], -1).astype(np.uint8)


def where(rgb) -> tuple[int, int]:
    return int(rgb[0]) + 256 * int(rgb[2]), int(rgb[1])


@pytest.mark.parametrize(
    "zoom, pans",
    [(1, []), (2, []), (2, [(-1, 0), (0, 1)]), (8, [(1, 1), (1, 1), (1, 0)]), (8, [(-9, -9)]), (3, [(9, 9)])],
)
def test_a_click_lands_on_the_source_pixel_shown_under_it(zoom, pans):
    state = labeller.new_state(coded(), "coded.png")
    labeller.zoom(state, zoom)
    for dx, dy in pans:
        labeller.pan(state, dx, dy)
    shown = labeller.render(state, 2, clicks=False)
    assert shown.shape[1::-1] == labeller.display_size(state) == (300, 200)  # the view keeps its size
    x0, y0, cw, ch = labeller.window(state)
    assert 0 <= x0 <= 300 - cw and 0 <= y0 <= 200 - ch and cw == round(300 / state["zoom"])
    rng = np.random.default_rng(zoom)
    for dx, dy in zip(rng.integers(0, 300, 50), rng.integers(0, 200, 50)):
        sx, sy = labeller._source_xy(state, dx, dy)
        assert (int(sx), int(sy)) == where(shown[dy, dx])


def test_zoom_is_bounded_and_whole_image_resets_it():
    state = labeller.new_state(coded(), "coded.png")
    labeller.zoom(state, 0.5)
    assert state["zoom"] == 1 and labeller.window(state) == (0, 0, 300, 200)
    for _ in range(10):
        labeller.zoom(state, 2)
    assert state["zoom"] == labeller.ZOOM_PIXEL  # a source pixel at most 8 display pixels
    labeller.pan(state, 50, 50)  # past the corner: the view stops at the edge
    assert labeller.window(state)[:2] == (300 - 38, 200 - 25)
    labeller.pan(state, -1, 0)  # and moves back at once, nothing built up unseen
    assert labeller.window(state)[0] < 300 - 38
    labeller.zoom(state, 0)
    assert labeller.window(state) == (0, 0, 300, 200)


def test_undo_takes_back_clicks_regions_brush_and_clear_in_order():
    state = labeller.new_state(np.zeros((40, 60, 3), np.uint8), "a.png")
    labeller.click(state, 10, 10, FG)
    labeller.click(state, 20, 10, labeller.MODES[1])
    state["proposal"] = np.zeros((40, 60), bool)
    state["proposal"][5:15, 5:25] = True
    labeller.add_region(state, 1)
    layer = np.zeros((40, 60, 4), np.uint8)
    layer[30:, 50:] = (0, 255, 0, 255)
    labeller.apply_brush(state, layer, 1)
    labeller.click(state, 2, 2, labeller.MODES[2])  # a box's first corner
    labeller.clear_clicks(state)
    assert state["corner"] is None and state["labels"].sum() == 10 * 20 + 10 * 10

    labeller.undo(state)
    assert state["corner"] == [2, 2]
    labeller.undo(state)
    assert state["corner"] is None
    labeller.undo(state)  # the brush
    assert state["labels"].sum() == 10 * 20
    labeller.undo(state)  # the region: its clicks are back (propose() gives the proposal again)
    assert state["labels"].sum() == 0 and [p[2] for p in state["points"]] == [1, 0]
    labeller.undo(state)
    labeller.undo(state)
    assert state["points"] == []
    labeller.undo(state)  # nothing left: unchanged
    assert state["points"] == [] and state["labels"].sum() == 0


def test_a_queue_keeps_each_images_work_and_grows_with_the_upload_field(tmp_path):
    images = {name: np.full((20 + i, 30, 3), i, np.uint8) for i, name in enumerate(["a.png", "b.png", "c.png"])}

    def load(path):
        if path.endswith("bad.png"):
            raise UserError("bad.png: not an image")
        return images[path.rsplit("/", 1)[-1]]

    files = [f"/up/{n}" for n in ("a.png", "bad.png", "b.png")]
    state, skipped, added = labeller.queue_files(None, files, load, limit=10)
    assert added == 2 and skipped == ["bad.png: not an image"] and state["name"] == "a.png"
    assert labeller.position(state) == "Image **1** of 2: **a.png**"
    labeller.click(state, 3, 3, FG)
    state["labels"][:5, :5] = 1
    labeller.zoom(state, 2)

    assert labeller.go(state, 1, load) and state["name"] == "b.png"
    assert state["labels"].shape == (21, 30) and not state["labels"].any() and state["zoom"] == 1
    assert state["points"] == [] and state["history"] == []
    assert not labeller.go(state, 1, load)  # the end: nothing moves
    assert labeller.go(state, -1, load) and state["name"] == "a.png"
    assert state["labels"].sum() == 25 and len(state["points"]) == 1 and state["zoom"] == 2

    labeller.save_pair(state, tmp_path / "set", "dichotomous", ["background", "foreground"])
    labeller.save_pair(state, tmp_path / "set", "dichotomous", ["background", "foreground"])  # replaces
    assert sorted(p.name for p in (tmp_path / "set" / "images").iterdir()) == ["a.png"]
    assert labeller.position(state).endswith("(saved as `a`)")

    # the field adds each upload to its list: the queue grows, the place and the work stay
    same, skipped, added = labeller.queue_files(state, files + ["/up/c.png"], load, limit=3)
    assert same is state and added == 1 and state["at"] == 0 and state["labels"].sum() == 25
    assert [e["name"] for e in state["queue"]] == ["a.png", "b.png", "c.png"]
    _, skipped, added = labeller.queue_files(state, files + ["/up/c.png", "/up/d.png"], load, limit=3)
    assert added == 0 and skipped == ["2 more files: a queue holds at most 3 images"]
    # a field cleared and filled anew: a new queue
    fresh, _, _ = labeller.queue_files(state, ["/up/c.png"], load, limit=3)
    assert fresh is not state and fresh["name"] == "c.png" and len(fresh["queue"]) == 1
    assert labeller.queue_files(None, ["/up/bad.png"], load, limit=3)[0] is None


def test_the_readme_lists_every_key_and_each_key_presses_a_button_of_the_page(tmp_path):
    from pathlib import Path

    from app.config import Paths
    from app.studio import Studio
    from app.ui.labeller import KEYS
    from app.ui.page import build

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("The labeller's keys") :].split("\n\n")[1]
    for key in KEYS:
        assert ("arrow keys" if key.startswith("arrow") else f"`{'+' if key == '=' else key.upper()}`") in table
    ids = {getattr(b, "elem_id", None) for b in build(Studio(Paths(tmp_path))).blocks.values()}
    assert {t for t in KEYS.values() if not t.startswith("mode:")} | {"label-mode"} <= ids
