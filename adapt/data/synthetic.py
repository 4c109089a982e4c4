"""Procedural scenes: a seeded, CPU-fast world of shapes for pretraining and few-shot benchmarks.

Every scene is a pure function of a numpy Generator (numpy + OpenCV only, a few milliseconds at
256 px), so a dataset is reproducible from ``(domain, n, size, seed)`` alone and never needs to be
stored. The bundled tiny SAM and tiny CLIP are pretrained on the "source" domain; the other domains
are deliberately unlike it and serve as few-shot adaptation targets:

    source          textured shapes (12 kinds, 13 colours, 6 textures) on textured backgrounds
                    (noise, gradient, stripes, grass, wood); objects clearly distinguishable
    camouflage      the same shapes, but filled with the background's own texture and palette
                    shifted slightly, with feathered edges: low contrast
    thin            thin curvilinear structures 1-4 px wide (bezier bundles, branching vessel
                    trees) on fundus-, paper- or dark-field backgrounds; one instance per structure
    grayscale-noise microscopy-like grey cells (blob, ellipse, circle, ring), blurred edges, heavy
                    gaussian + speckle noise, uneven illumination
    highres-fine    source-like objects with fine boundaries (serrated contours, 1-2 px hairs,
                    small holes); 1024 px by default (``DOMAINS["highres-fine"].default_size``)

A ``Scene`` keeps the instances (``masks`` + ``objects``, disjoint: a later object occludes earlier
ones, but none loses more than about a third of itself, half for thin structures), because
prompted SAM training needs instances; ``semantic`` labels every pixel with a class id
(``CLASSES``: 0 = background, then the shapes, then the thin-structure classes). Colour names are
the drawn colour's (in camouflage and thin scenes, the nearest name in ``COLOURS``).
``write_folder`` exports a folder dataset: for the dichotomous task the mask is the union of all
instances (the foreground: nothing visible is ever labelled background), for openvocab an index
PNG of class ids plus classes.json; both add meta.jsonl with captions, attributes and boxes.

Class ids are global and stable across domains, so a model trained on one domain reads another.
For open-vocabulary benchmarks ``SEEN_SHAPES`` (8) train the segmentation head and
``UNSEEN_SHAPES`` (4) are held out; the thin-structure classes belong to neither split.
"""

from __future__ import annotations

import colorsys
import json
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "ring", "blob",
          "ellipse", "heart", "crescent", "arrow")
SEEN_SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross", "ring", "blob"]
UNSEEN_SHAPES = ["ellipse", "heart", "crescent", "arrow"]
THIN_SHAPES = ("curve", "vessel")
CLASSES = ("background",) + SHAPES + THIN_SHAPES
CLASS_IDS = {name: i for i, name in enumerate(CLASSES)}

COLOURS = {
    "red": (215, 35, 35), "orange": (240, 140, 25), "yellow": (235, 215, 45),
    "green": (45, 160, 60), "cyan": (45, 200, 210), "blue": (40, 75, 200),
    "purple": (125, 55, 175), "pink": (240, 125, 185), "brown": (135, 85, 45),
    "maroon": (110, 25, 25), "white": (240, 240, 240), "gray": (128, 128, 128),
    "black": (25, 25, 25),
}
TEXTURES = ("solid", "stripes", "checks", "dots", "gradient", "noise")
# Object textures of the target domains (attributes only, never drawn in the source domain).
TARGET_TEXTURES = ("camouflage",)
BACKGROUNDS = ("noise", "gradient", "stripes", "grass", "wood")
TARGET_BACKGROUNDS = ("blotch", "fundus", "paper", "dark", "micro-dark", "micro-bright")
SIZES = ("small", "medium", "large")

TEXTURE_WORDS = {"solid": "", "stripes": "striped", "checks": "checkered", "dots": "dotted",
                 "gradient": "shaded", "noise": "speckled", "camouflage": "camouflaged"}
BACKGROUND_WORDS = {"noise": "noisy", "gradient": "gradient", "stripes": "striped",
                    "grass": "grassy", "wood": "wooden", "blotch": "blotchy",
                    "fundus": "reddish", "paper": "pale", "dark": "dark",
                    "micro-dark": "dark grainy", "micro-bright": "bright grainy"}

# Radius (half the extent) as a fraction of the shorter image side, per size word.
_SIZE_RANGES = {"small": (0.055, 0.09), "medium": (0.105, 0.16), "large": (0.18, 0.26)}


# --------------------------------------------------------------------------------------------
# Scenes

@dataclass
class SceneObject:
    """The attributes of one instance; ``Scene.masks[i]`` belongs to ``Scene.objects[i]``."""
    shape: str
    colour: str
    texture: str
    size: str

    @property
    def class_id(self) -> int:
        return CLASS_IDS[self.shape]

    def to_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "texture": self.texture,
                "size": self.size, "class_id": self.class_id}


@dataclass
class Scene:
    image: np.ndarray            # (H, W, 3) uint8 RGB
    masks: list                  # [(H, W) bool], disjoint, non-empty, one per object
    objects: list                # [SceneObject]
    semantic: np.ndarray         # (H, W) uint8 class ids (CLASSES), 0 = background
    caption: str
    domain: str = "source"
    background: str = ""         # a key of BACKGROUND_WORDS

    @property
    def attributes(self) -> list:
        return self.objects

    @property
    def foreground(self) -> np.ndarray:
        """The union of all instances, (H, W) bool: the dichotomous target."""
        return self.semantic > 0

    def instance_map(self) -> np.ndarray:
        """(H, W) uint8: 0 background, i + 1 for ``masks[i]``."""
        out = np.zeros(self.semantic.shape, np.uint8)
        for i, m in enumerate(self.masks):
            out[m] = i + 1
        return out

    def boxes(self) -> np.ndarray:
        """(N, 4) int xyxy boxes of the instances (inclusive-exclusive), for box prompts."""
        out = np.zeros((len(self.masks), 4), np.int64)
        for i, m in enumerate(self.masks):
            ys, xs = np.nonzero(m)
            out[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        return out

    def class_ids(self) -> list:
        return [o.class_id for o in self.objects]


# --------------------------------------------------------------------------------------------
# Small helpers

_BANK_SIDE = 640


@lru_cache(maxsize=1)
def _bank() -> np.ndarray:
    # One fixed sheet of N(0, 1) noise, sliced at random offsets: fresh gaussian noise for every
    # pixel costs ~1 ms per 256x256 plane, slicing costs nothing and is still seeded by the rng.
    bank = np.random.default_rng(0x5EED).standard_normal((_BANK_SIDE, _BANK_SIDE), np.float32)
    bank.flags.writeable = False
    return bank


@lru_cache(maxsize=4)
def _tiled_bank(reps_y: int, reps_x: int) -> np.ndarray:
    out = np.tile(_bank(), (reps_y, reps_x))
    out.flags.writeable = False
    return out


def _fine_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 ~N(0, 1) per pixel (a read-only view)."""
    bank = _bank()
    if h > _BANK_SIDE // 2 or w > _BANK_SIDE // 2:
        bank = _tiled_bank(h // _BANK_SIDE + 2, w // _BANK_SIDE + 2)
    oy = int(rng.integers(0, bank.shape[0] - h + 1))
    ox = int(rng.integers(0, bank.shape[1] - w + 1))
    out = bank[oy:oy + h, ox:ox + w]
    flip = int(rng.integers(4))
    if flip & 1:
        out = out[::-1]
    if flip & 2:
        out = out[:, ::-1]
    return out


def _value_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """(h, w) float32 smooth noise in about [0, 1], blobs about ``scale`` px across."""
    grid = rng.random((max(2, int(np.ceil(h / scale)) + 1), max(2, int(np.ceil(w / scale)) + 1)),
                      dtype=np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _coords(h: int, w: int):
    return (np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :])


def _ramp(rng: np.random.Generator, h: int, w: int, angle: float | None = None) -> np.ndarray:
    """(h, w) float32 linear ramp from 0 to 1 along a random direction."""
    if angle is None:
        angle = rng.uniform(0, 2 * np.pi)
    ca, sa = np.cos(angle), np.sin(angle)
    corners = [x * ca + y * sa for x in (0, w - 1) for y in (0, h - 1)]   # u is linear
    lo, hi = min(corners), max(corners)
    k = 1.0 / max(hi - lo, 1e-6)
    yy, xx = _coords(h, w)
    u = xx * np.float32(ca * k) + (yy * np.float32(sa * k) - np.float32(lo * k))
    return np.clip(u, 0, 1, out=u)


# numpy broadcasting of an (H, W) plane against (H, W, 3) runs an inner loop of length 3 and is
# ten times slower than working per plane, so colour images are built with cv2.merge/cvtColor.

def _mix(c1, c2, t: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32: colour c1 where t = 0, c2 where t = 1."""
    c1 = np.asarray(c1, np.float32)
    d = np.asarray(c2, np.float32) - c1
    return cv2.merge([t * d[k] + c1[k] for k in range(3)])


def _rgb(plane: np.ndarray) -> np.ndarray:
    """(h, w) -> (h, w, 3) float32, the plane repeated."""
    return cv2.cvtColor(np.ascontiguousarray(plane, dtype=np.float32), cv2.COLOR_GRAY2RGB)


def _blend(view: np.ndarray, top: np.ndarray, alpha: np.ndarray) -> None:
    """In place: view = top * alpha + view * (1 - alpha), alpha an (h, w) plane."""
    a = np.ascontiguousarray(alpha, dtype=np.float32)
    view[...] = cv2.blendLinear(np.ascontiguousarray(top, dtype=np.float32),
                                np.ascontiguousarray(view), a, 1 - a)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


def _shade(c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A second tone of the same hue: darker for light colours, lighter for dark ones."""
    lum = float(c @ np.array([0.299, 0.587, 0.114], np.float32))
    if lum > 100:
        return c * np.float32(rng.uniform(0.4, 0.62))
    return c + (255 - c) * np.float32(rng.uniform(0.3, 0.5))


def _nearest_colour(rgb, names: Sequence[str] | None = None) -> str:
    names = list(names or COLOURS)
    table = np.array([COLOURS[n] for n in names], np.float32)
    return names[int(np.argmin(((table - np.asarray(rgb, np.float32)) ** 2).sum(1)))]


def _size_word(r: float, side: int) -> str:
    rel = r / side
    return "small" if rel < 0.0975 else "medium" if rel < 0.17 else "large"


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


# --------------------------------------------------------------------------------------------
# Backgrounds: params are sampled once, rendering may be repeated (camouflage re-renders a crop
# of the same background with a new phase). All scales are in pixels.

def _bg_params(kind: str, rng: np.random.Generator, s: float) -> dict:
    if kind == "grass":
        hue = rng.uniform(0.22, 0.36)
        return {"colours": [_hsv(hue, rng.uniform(0.55, 0.8), rng.uniform(0.2, 0.35)),
                            _hsv(hue + rng.uniform(-0.03, 0.03), rng.uniform(0.45, 0.7),
                                 rng.uniform(0.55, 0.75))],
                "blade": rng.uniform(8, 16) * s, "slant": rng.uniform(-0.35, 0.35),
                "patch": rng.uniform(30, 70) * s}
    if kind == "wood":
        hue = rng.uniform(0.05, 0.1)
        return {"colours": [_hsv(hue, rng.uniform(0.55, 0.75), rng.uniform(0.3, 0.45)),
                            _hsv(hue + 0.01, rng.uniform(0.4, 0.6), rng.uniform(0.62, 0.8))],
                "period": rng.uniform(9, 22) * s, "warp": rng.uniform(0.6, 2.0),
                "warp_scale": rng.uniform(40, 90) * s, "vertical": bool(rng.random() < 0.5)}
    if kind == "blotch":
        base = rng.uniform(0, 1)
        sat, val = rng.uniform(0.25, 0.5), rng.uniform(0.35, 0.6)
        k = int(rng.integers(3, 5))
        colours = [_hsv(base + rng.uniform(-0.05, 0.05), sat + rng.uniform(-0.1, 0.1),
                        val + rng.uniform(-0.15, 0.15)) for _ in range(k)]
        return {"colours": colours, "scale": rng.uniform(18, 40) * s}
    c1 = _hsv(rng.uniform(0, 1), rng.uniform(0.08, 0.38), rng.uniform(0.3, 0.85))
    c2 = _hsv(rng.uniform(0, 1), rng.uniform(0.08, 0.38), rng.uniform(0.3, 0.85))
    if kind == "noise":
        return {"colours": [c1, c2], "scale": rng.uniform(20, 70) * s}
    if kind == "gradient":
        return {"colours": [c1, c2], "angle": rng.uniform(0, 2 * np.pi)}
    if kind == "stripes":
        return {"colours": [c1, c2], "angle": rng.uniform(0, np.pi),
                "period": rng.uniform(14, 40) * s, "hardness": rng.uniform(1.0, 4.0)}
    raise ValueError(f"unknown background {kind!r}")


def _render_bg(kind: str, p: dict, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float32 RGB in [0, 255] (before clipping)."""
    c = p["colours"]
    if kind == "noise":
        t = _value_noise(rng, h, w, p["scale"]) + 0.35 * _value_noise(rng, h, w, p["scale"] / 4)
        img = _mix(c[0], c[1], np.clip(t / 1.35, 0, 1))
        grain = 6.0
    elif kind == "gradient":
        img = _mix(c[0], c[1], _ramp(rng, h, w, p["angle"] + rng.normal(0, 0.05)))
        grain = 4.0
    elif kind == "stripes":
        yy, xx = _coords(h, w)
        u = xx * np.float32(np.cos(p["angle"])) + yy * np.float32(np.sin(p["angle"]))
        phase = rng.uniform(0, 2 * np.pi)
        t = np.sin(u * np.float32(2 * np.pi / p["period"]) + np.float32(phase)) * p["hardness"]
        img = _mix(c[0], c[1], np.clip(t, -1, 1) * 0.5 + 0.5)
        grain = 5.0
    elif kind == "grass":
        blades = np.ascontiguousarray(_fine_noise(rng, h, w))
        k = int(max(3, round(p["blade"]))) | 1
        kernel = np.zeros((k, k), np.float32)
        x_end = (k - 1) / 2 + p["slant"] * (k - 1) / 2
        cv2.line(kernel, (int(round((k - 1) - x_end)), 0), (int(round(x_end)), k - 1), 1.0, 1)
        kernel /= kernel.sum()
        t = cv2.filter2D(blades, -1, kernel) * np.float32(np.sqrt(k) * 0.3) + 0.5
        t += (_value_noise(rng, h, w, p["patch"]) - 0.5) * 0.6
        img = _mix(c[0], c[1], np.clip(t, 0, 1))
        grain = 3.0
    elif kind == "wood":
        hh, ww = (w, h) if p["vertical"] else (h, w)
        yy, _ = _coords(hh, ww)
        warp = _value_noise(rng, hh, ww, p["warp_scale"]) * np.float32(p["warp"] * p["period"])
        t = np.sin((yy + warp) * np.float32(2 * np.pi / p["period"])) * 0.5 + 0.5
        t = t ** 1.5
        streak = cv2.blur(np.ascontiguousarray(_fine_noise(rng, hh, ww)), (31, 1))
        t = np.clip(t * 0.8 + streak * 1.2 + 0.1, 0, 1)
        img = _mix(c[0], c[1], t)
        if p["vertical"]:
            img = np.ascontiguousarray(img.transpose(1, 0, 2))
        grain = 3.0
    elif kind == "blotch":
        t = _value_noise(rng, h, w, p["scale"]) + 0.3 * _value_noise(rng, h, w, p["scale"] / 3)
        t = t / 1.3
        k = len(c)
        levels = np.clip(t * k, 0, k - 1).astype(np.uint8)
        table = np.zeros((256, 3), np.uint8)
        table[:k] = np.clip(np.asarray(c), 0, 255)
        img = cv2.LUT(cv2.merge([levels] * 3), table[:, None, :]).astype(np.float32)
        grain = 5.0
    else:
        raise ValueError(f"unknown background {kind!r}")
    img += _rgb(_fine_noise(rng, h, w) * np.float32(grain))
    return img


# --------------------------------------------------------------------------------------------
# Object textures (a crop the size of the object's box)

def _object_texture(kind: str, rng: np.random.Generator, h: int, w: int, c: np.ndarray,
                    s: float) -> np.ndarray:
    c2 = _shade(c, rng)
    angle = rng.uniform(0, np.pi)
    if kind == "solid":
        t = _ramp(rng, h, w) * np.float32(0.25)          # soft lighting, still one colour
        img = _mix(c, c * 0.8, t)
    elif kind in ("stripes", "checks", "dots"):
        period = np.float32(rng.uniform(5, 12) * s)
        yy, xx = _coords(h, w)
        ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        u = (xx * ca + yy * sa) / period
        if kind == "stripes":
            t = (u % 1.0) < rng.uniform(0.35, 0.6)
        else:
            v = (yy * ca - xx * sa) / period
            if kind == "checks":
                t = (np.floor(u) + np.floor(v)) % 2 > 0
            else:
                rad = rng.uniform(0.2, 0.35)
                t = ((u % 1.0) - 0.5) ** 2 + ((v % 1.0) - 0.5) ** 2 < rad * rad
        img = _mix(c, c2, t.astype(np.float32))
    elif kind == "gradient":
        img = _mix(c2, c, _ramp(rng, h, w) ** 0.7)
    elif kind == "noise":
        t = _value_noise(rng, h, w, rng.uniform(4, 10) * s) * 0.8 + 0.4 * _fine_noise(rng, h, w)
        img = _mix(c, c2, np.clip(t - 0.2, 0, 1))
    else:
        raise ValueError(f"unknown texture {kind!r}")
    img += _rgb(_fine_noise(rng, h, w) * np.float32(3.0))
    return img


# --------------------------------------------------------------------------------------------
# Shapes: unit outlines (max radius 1), then a mask crop

def _regular(n: int, offset: float, radii=(1.0,)) -> np.ndarray:
    a = offset + 2 * np.pi * np.arange(n) / n
    r = np.resize(np.asarray(radii, float), n)
    return np.stack([np.cos(a) * r, np.sin(a) * r], 1)


def _circle(n=72, cx=0.0, cy=0.0, r=1.0, b=None) -> np.ndarray:
    a = 2 * np.pi * np.arange(n) / n
    return np.stack([cx + np.cos(a) * r, cy + np.sin(a) * (r if b is None else b)], 1)


def _outline(shape: str, rng: np.random.Generator) -> list:
    """[(polygon (N, 2), fill value)] in unit coordinates; fill 0 cuts a hole."""
    if shape == "circle":
        parts = [(_circle(), 1)]
    elif shape == "ellipse":
        parts = [(_circle(b=rng.uniform(0.42, 0.68)), 1)]
    elif shape == "square":
        parts = [(_regular(4, np.pi / 4), 1)]
    elif shape == "triangle":
        parts = [(_regular(3, -np.pi / 2), 1)]
    elif shape == "hexagon":
        parts = [(_regular(6, 0.0), 1)]
    elif shape == "star":
        parts = [(_regular(10, -np.pi / 2, (1.0, rng.uniform(0.38, 0.5))), 1)]
    elif shape == "cross":
        a = rng.uniform(0.26, 0.38)
        pts = [(a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1),
               (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a), (-a, -1)]
        parts = [(np.array(pts, float), 1)]
    elif shape == "ring":
        parts = [(_circle(), 1), (_circle(r=rng.uniform(0.45, 0.65)), 0)]
    elif shape == "blob":
        a = 2 * np.pi * np.arange(64) / 64
        r = np.ones_like(a)
        for k in range(2, 6):
            r += rng.uniform(0, 0.32 / k * 2) * np.cos(k * a + rng.uniform(0, 2 * np.pi))
        r = np.maximum(r, 0.35)
        parts = [(np.stack([np.cos(a) * r, np.sin(a) * r], 1), 1)]
    elif shape == "heart":
        t = 2 * np.pi * np.arange(80) / 80
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        parts = [(np.stack([x, y - (y.max() + y.min()) / 2], 1), 1)]
    elif shape == "crescent":
        parts = [(_circle(), 1),
                 (_circle(cx=rng.uniform(0.35, 0.55), r=rng.uniform(0.75, 0.9)), 0)]
    elif shape == "arrow":
        shaft, head = rng.uniform(0.16, 0.26), rng.uniform(0.45, 0.62)
        neck = rng.uniform(0.0, 0.3)
        pts = [(-1, -shaft), (neck, -shaft), (neck, -head), (1, 0), (neck, head),
               (neck, shaft), (-1, shaft)]
        parts = [(np.array(pts, float), 1)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    scale = max(float(np.hypot(p[:, 0], p[:, 1]).max()) for p, fill in parts if fill)
    return [(p / scale, fill) for p, fill in parts]


def _roughen(poly: np.ndarray, rng: np.random.Generator, r: float) -> np.ndarray:
    """Resample a closed polygon (pixel units) every ~1.5 px and serrate it: fine boundaries."""
    seg = np.roll(poly, -1, 0) - poly
    length = np.hypot(seg[:, 0], seg[:, 1]) + 1e-9
    cum = np.concatenate([[0.0], np.cumsum(length)])
    total = cum[-1]
    n = max(24, int(total / 1.5))
    arc = np.linspace(0, total, n, endpoint=False)
    idx = np.clip(np.searchsorted(cum, arc, "right") - 1, 0, len(poly) - 1)
    q = poly[idx] + seg[idx] * ((arc - cum[idx]) / length[idx])[:, None]
    tangent = np.roll(q, -1, 0) - np.roll(q, 1, 0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], 1)
    normal /= np.hypot(normal[:, 0], normal[:, 1])[:, None] + 1e-9
    d = np.zeros(n)
    amp_scale = min(1.0, r / 40)
    for _ in range(3):
        cycles = max(3, round(total / rng.uniform(4, 24)))
        wave = np.sin(2 * np.pi * cycles * arc / total + rng.uniform(0, 2 * np.pi))
        sharp = np.sign(wave) * np.abs(wave) ** rng.uniform(0.4, 1.5)     # teeth or waves
        d += rng.uniform(0.5, 3.0) * amp_scale * sharp
    d += rng.normal(0, 0.35, n)
    return q + normal * d[:, None]


def _shape_mask(shape: str, rng: np.random.Generator, r: float, angle: float,
                fine: bool = False, pad: int = 2) -> np.ndarray:
    """(side, side) bool crop with the shape centred; ``side`` is odd."""
    reach = r * (1.6 if fine else 1.0)
    half = int(np.ceil(reach)) + pad
    side = 2 * half + 1
    mask = np.zeros((side, side), np.uint8)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    outlines = []
    for poly, fill in _outline(shape, rng):
        pts = poly @ rot.T * r
        if fine:
            pts = _roughen(pts, rng, r)
        outlines.append(pts)
        cv2.fillPoly(mask, [np.round((pts + half) * 16).astype(np.int32)], fill,
                     lineType=cv2.LINE_8, shift=4)
    if fine:
        inside = np.argwhere(mask > 0)
        for _ in range(int(rng.integers(0, 9))):              # perforations
            if len(inside) == 0:
                break
            y, x = inside[int(rng.integers(len(inside)))]
            rr = max(1.5, r * rng.uniform(0.025, 0.07))
            cv2.ellipse(mask, (int(x), int(y)), (int(rr), int(rr * rng.uniform(0.5, 1.0))),
                        rng.uniform(0, 180), 0, 360, 0, -1)
        outer = outlines[0]
        for _ in range(int(rng.integers(0, 40))):             # hairs, legs, antennae
            p = outer[int(rng.integers(len(outer)))]
            direction = np.arctan2(p[1], p[0]) + rng.normal(0, 0.4)
            seg_len = r * rng.uniform(0.15, 0.55) / 3
            pts = [p]
            for _ in range(3):
                direction += rng.normal(0, 0.35)
                pts.append(pts[-1] + seg_len * np.array([np.cos(direction), np.sin(direction)]))
            cv2.polylines(mask, [np.round((np.array(pts) + half) * 16).astype(np.int32)], False, 1,
                          thickness=1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


# --------------------------------------------------------------------------------------------
# The canvas: paints instances in order and keeps the label map (later objects occlude)

class _Canvas:
    def __init__(self, img: np.ndarray):
        self.img = img
        self.h, self.w = img.shape[:2]
        self.label = np.zeros((self.h, self.w), np.uint8)
        self.areas = [0]
        self.objects: list = []

    def place(self, crop: np.ndarray, cy: int, cx: int, max_loss: float = 0.35,
              min_inside: float = 0.85):
        """Claim ``crop`` centred at (cy, cx) if it stays inside the image enough and hides no
        earlier instance by more than ``max_loss``; returns (image slices, crop slices, mask)."""
        bh, bw = crop.shape
        y0, x0 = cy - bh // 2, cx - bw // 2
        iy0, ix0 = max(0, y0), max(0, x0)
        iy1, ix1 = min(self.h, y0 + bh), min(self.w, x0 + bw)
        if iy1 <= iy0 or ix1 <= ix0:
            return None
        csl = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
        isl = (slice(iy0, iy1), slice(ix0, ix1))
        m = crop[csl]
        n = int(np.count_nonzero(m))
        if n < max(6, min_inside * np.count_nonzero(crop)):
            return None
        lab = self.label[isl]
        hit = lab[m]
        if len(self.areas) > 1 and hit.any():
            lost = np.bincount(hit, minlength=len(self.areas))[1:]
            if np.any(lost > max_loss * np.asarray(self.areas[1:])):
                return None
            for i, k in enumerate(lost):
                self.areas[i + 1] -= int(k)
        if len(self.areas) > 254:
            return None
        lab[m] = len(self.areas)
        self.areas.append(n)
        return isl, csl, m

    def finish(self, domain: str, background: str) -> Scene:
        if self.img.ndim == 2:
            image = cv2.cvtColor(np.clip(self.img, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)
        else:
            image = np.clip(self.img, 0, 255, out=self.img).astype(np.uint8)
        keep = [i for i in range(1, len(self.areas)) if self.areas[i] > 0]
        masks = [self.label == i for i in keep]
        objects = [self.objects[i - 1] for i in keep]
        lut = np.zeros(256, np.uint8)
        for i in keep:
            lut[i] = self.objects[i - 1].class_id
        semantic = lut[self.label]
        scene = Scene(image=image, masks=masks, objects=objects, semantic=semantic, caption="",
                      domain=domain, background=background)
        scene.caption = caption_for(scene)
        return scene


def _sample_radii(rng, n, side, words=SIZES):
    out = []
    for _ in range(n):
        word = _pick(rng, words)
        lo, hi = _SIZE_RANGES[word]
        out.append(max(4.0, rng.uniform(lo, hi) * side))
    return sorted(out, reverse=True)


def _place_shapes(canvas: _Canvas, rng, shape_pool, radii, fine=False, pad=2, margin=0.8,
                  max_loss=0.35, min_inside=0.85):
    """Claim room for one object per radius (largest first) and yield (shape, r, placement) for
    the caller to paint before the next is placed. An object that does not fit shrinks, and is
    dropped after a few tries (the first one always fits)."""
    side = min(canvas.h, canvas.w)
    for r in radii:
        shape = _pick(rng, shape_pool)
        angle = rng.uniform(0, 2 * np.pi)
        for attempt in range(12):
            if attempt % 4 == 0:
                if attempt:
                    r = max(4.0, r * 0.8)
                r = min(r, side * 0.45)
                crop = _shape_mask(shape, rng, r, angle, fine=fine, pad=pad)
            lo_y, hi_y = int(r * margin), canvas.h - int(r * margin)
            lo_x, hi_x = int(r * margin), canvas.w - int(r * margin)
            cy = int(rng.integers(lo_y, max(lo_y + 1, hi_y)))
            cx = int(rng.integers(lo_x, max(lo_x + 1, hi_x)))
            placed = canvas.place(crop, cy, cx, max_loss=max_loss, min_inside=min_inside)
            if placed is not None:
                yield shape, r, placed
                break


# --------------------------------------------------------------------------------------------
# Domains

def _admissible_colours(palette, min_dist=90.0) -> list:
    palette = np.asarray(palette, np.float32).reshape(-1, 3)
    names = list(COLOURS)
    table = np.array([COLOURS[n] for n in names], np.float32)
    dist = np.sqrt(((table[:, None] - palette[None]) ** 2).sum(-1)).min(1)
    ok = [n for n, d in zip(names, dist) if d >= min_dist]
    return ok or [names[i] for i in np.argsort(-dist)[:3]]


def _render_source(rng, h, w, max_objects, shapes, fine=False, domain="source") -> Scene:
    s = min(h, w) / 256
    bg = _pick(rng, BACKGROUNDS)
    params = _bg_params(bg, rng, s)
    img = _render_bg(bg, params, h, w, rng)
    canvas = _Canvas(img)
    colours = _admissible_colours(params["colours"] + [img[::8, ::8].mean((0, 1))])
    n = int(rng.integers(1, max_objects + 1))
    order = rng.permutation(len(colours))
    pad = int(np.ceil(4 * s)) + 2
    placements = _place_shapes(canvas, rng, shapes, _sample_radii(rng, n, min(h, w)), fine=fine,
                               pad=pad)
    for i, (shape, r, (isl, csl, m)) in enumerate(placements):
        name = colours[order[i % len(colours)]]
        texture = _pick(rng, TEXTURES)
        rgb = np.clip(np.array(COLOURS[name], np.float32) + rng.uniform(-15, 15, 3), 0, 255)
        bh, bw = m.shape
        tex = _object_texture(texture, rng, bh, bw, rgb.astype(np.float32), s)
        view = canvas.img[isl]
        if not fine and rng.random() < 0.4:                  # a soft drop shadow
            dy, dx = (int(v) for v in rng.integers(1, int(3 * s) + 3, 2))
            sh = np.zeros(m.shape, np.float32)
            sh[dy:, dx:] = m[:bh - dy, :bw - dx]
            sh = cv2.GaussianBlur(sh, (0, 0), 1.5 * s)
            view *= _rgb(1 - 0.45 * sh)
        if fine:                                             # keep 1-px detail crisp
            view[m] = tex[m]
        else:
            _blend(view, tex, cv2.GaussianBlur(m.astype(np.float32), (3, 3), 0.6))
        canvas.objects.append(SceneObject(shape, name, texture, _size_word(r, min(h, w))))
    return canvas.finish(domain, bg)


def _render_highres(rng, h, w, max_objects, shapes) -> Scene:
    return _render_source(rng, h, w, max_objects, shapes, fine=True, domain="highres-fine")


def _render_camouflage(rng, h, w, max_objects, shapes) -> Scene:
    s = min(h, w) / 256
    bg = _pick(rng, ("noise", "grass", "wood", "blotch"))
    params = _bg_params(bg, rng, s)
    canvas = _Canvas(_render_bg(bg, params, h, w, rng))
    n = int(rng.integers(1, max_objects + 1))
    for shape, r, (isl, csl, m) in _place_shapes(canvas, rng, shapes,
                                                 _sample_radii(rng, n, min(h, w)), pad=4):
        bh, bw = m.shape
        # The same texture and palette with a new phase, shifted a little in brightness and hue.
        tex = _render_bg(bg, params, bh, bw, rng)
        shift = rng.uniform(6, 18) * (1 if rng.random() < 0.5 else -1) + rng.normal(0, 5, 3)
        tex += shift.astype(np.float32)
        alpha = cv2.GaussianBlur(m.astype(np.float32), (0, 0), rng.uniform(0.8, 1.6) * s)
        view = canvas.img[isl]
        _blend(view, tex, alpha)
        colour = _nearest_colour(tex[m].mean(0))
        canvas.objects.append(SceneObject(shape, colour, "camouflage", _size_word(r, min(h, w))))
    return canvas.finish("camouflage", bg)


def _bezier(rng, p0, h, w, s, n=80) -> np.ndarray:
    span = min(h, w)
    pts = [np.asarray(p0, float)]
    for _ in range(3):
        step = rng.normal(0, 0.35 * span, 2)
        pts.append(np.clip(pts[-1] + step, [-0.05 * w, -0.05 * h], [1.05 * w, 1.05 * h]))
    p = np.array(pts)
    t = np.linspace(0, 1, n)[:, None]
    return ((1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t ** 2 * p[2]
            + t ** 3 * p[3])


def _vessel_tree(rng, h, w, s, max_width):
    """Branches of a vessel-like tree as [(polyline (N, 2), width px)]."""
    side = rng.integers(4)
    if side == 0:
        start, heading = (rng.uniform(0, w), 0.0), np.pi / 2
    elif side == 1:
        start, heading = (rng.uniform(0, w), h - 1.0), -np.pi / 2
    elif side == 2:
        start, heading = (0.0, rng.uniform(0, h)), 0.0
    else:
        start, heading = (w - 1.0, rng.uniform(0, h)), np.pi
    if rng.random() < 0.4:                                   # a root inside, like an optic disc
        start = (rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h)
        heading = rng.uniform(0, 2 * np.pi)
    stack = [(np.array(start, float), heading + rng.normal(0, 0.4), max_width, 0, -2)]
    step = 3.0 * s
    # A coarse grid of which branch occupies each cell: a branch stops where it would come within
    # about a cell of the tree (other than its parent, near its start), so branches do not pile up
    # into blobs (real vessels rarely overlap themselves).
    cell = max(4.0, step)
    owner = np.full((int(h / cell) + 4, int(w / cell) + 4), -1, np.int16)
    last_cell = np.array([owner.shape[1] - 2, owner.shape[0] - 2])        # (x, y)
    skip = int(np.ceil(3 * cell / step)) + 1
    out = []
    while stack and len(out) < 30:
        p, ang, width, depth, parent = stack.pop()
        steps = max(6, int(rng.uniform(25, 70) * 0.75 ** depth))
        angs = ang + np.cumsum(rng.normal(0, 0.12, steps))
        xy = np.empty((steps + 1, 2))
        xy[0] = p
        xy[1:, 0] = np.cos(angs)
        xy[1:, 1] = np.sin(angs)
        xy[1:] *= step
        np.cumsum(xy, 0, out=xy)
        outside = (xy[:, 0] < -2) | (xy[:, 0] > w + 1) | (xy[:, 1] < -2) | (xy[:, 1] > h + 1)
        if outside.any():
            xy = xy[:int(outside.argmax())]
        cells = (xy * (1 / cell)).astype(np.intp) + 2
        np.minimum(np.maximum(cells, 1, out=cells), last_cell, out=cells)
        own = owner[cells[:, 1], cells[:, 0]]
        hit = own >= 0
        hit[:skip] &= own[:skip] != parent
        if hit.any():
            xy = xy[:int(hit.argmax())]
            cells = cells[:len(xy)]
        if len(xy) < 2:
            continue
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                owner[cells[:, 1] + dy, cells[:, 0] + dx] = len(out)
        out.append((xy, width))
        if depth < 5 and len(xy) > 6:
            k = int(rng.integers(2, 5))
            u = rng.random((k, 3))
            for j, (uj, ut, us) in zip(rng.integers(3, len(xy) - 1, k), u):
                turn = (0.35 + 0.65 * ut) * (1 if us < 0.5 else -1)
                child = max(1, width - int(uj < 0.5))
                stack.append((xy[j], angs[j - 1] + turn, child, depth + 1, len(out) - 1))
    return out


def _draw_width_layers(h, w, lines) -> np.ndarray:
    """Rasterise [(polyline, width)] with exact widths 1-4 px: 1-px lines, then one dilation per
    width (OpenCV's own thick lines jump from 1 to 3 to 5 px)."""
    out = np.zeros((h, w), np.uint8)
    by_width: dict = {}
    for pts, width in lines:
        by_width.setdefault(int(width), []).append(np.round(pts * 16).astype(np.int32))
    for width, polys in by_width.items():
        layer = np.zeros((h, w), np.uint8)
        cv2.polylines(layer, polys, False, 1, thickness=1, lineType=cv2.LINE_8, shift=4)
        if width > 1:
            layer = cv2.dilate(layer, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width)))
        out |= layer
    return out


def _render_thin(rng, h, w, max_objects, shapes) -> Scene:
    s = min(h, w) / 256
    bg = _pick(rng, ("fundus", "paper", "dark"))
    yy, xx = _coords(h, w)
    haze = _value_noise(rng, h, w, rng.uniform(40, 90) * s) - 0.5
    if bg == "fundus":
        base = np.array([rng.uniform(170, 215), rng.uniform(60, 100), rng.uniform(20, 45)],
                        np.float32)
        cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
        k = np.float32(-0.6 / (0.75 * max(h, w)) ** 2)
        light = ((yy - cy) ** 2 * k + np.float32(1.05)) + (xx - cx) ** 2 * k    # vignette
        light += np.float32(0.18) * haze
        img = _mix((0, 0, 0), base, np.clip(light, 0.2, 1.2, out=light))
        sigma = 0.06 * min(h, w)                                              # an optic disc
        dy, dx = int(rng.uniform(0.2, 0.8) * h), int(rng.uniform(0.2, 0.8) * w)
        y0, y1 = max(0, dy - int(3 * sigma)), min(h, dy + int(3 * sigma))
        x0, x1 = max(0, dx - int(3 * sigma)), min(w, dx + int(3 * sigma))
        disc = np.exp(-((yy[y0:y1] - dy) ** 2 + (xx[:, x0:x1] - dx) ** 2) / np.float32(sigma ** 2))
        img[y0:y1, x0:x1] += _mix((0, 0, 0), (50, 70, 40), disc)
        line_rgb = base * np.float32(rng.uniform(0.35, 0.55))
        grain = 4.0
    elif bg == "paper":
        base = _hsv(rng.uniform(0.05, 0.15), rng.uniform(0.02, 0.15), rng.uniform(0.8, 0.93))
        img = _mix(base, base * 0.85, np.clip(haze + 0.5, 0, 1))
        line_rgb = np.array(COLOURS[_pick(rng, ("black", "blue", "gray", "red"))], np.float32)
        grain = 5.0
    else:
        base = np.full(3, rng.uniform(8, 35), np.float32)
        img = _mix(base, base + 25, haze)
        line_rgb = np.array(COLOURS[_pick(rng, ("white", "green", "yellow", "cyan"))], np.float32)
        grain = 6.0
    img += _rgb(_fine_noise(rng, h, w) * np.float32(grain))
    canvas = _Canvas(img)
    pool = [k for k in THIN_SHAPES if shapes is None or k in shapes] or list(THIN_SHAPES)
    n = int(rng.integers(1, min(max_objects, 3) + 1))
    min_pixels = max(6, min(20, h * w // 1000))
    for attempt in range(n + 8):                      # a few spare tries: never an empty scene
        if len(canvas.objects) == n or (attempt >= n and canvas.objects):
            break
        kind = _pick(rng, pool)
        max_width = int(rng.integers(1, 5))
        if kind == "curve":
            lines, p0 = [], (rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h)
            for _ in range(int(rng.integers(1, 4))):
                pts = _bezier(rng, p0, h, w, s)
                lines.append((pts, max(1, max_width - int(rng.integers(0, 2)))))
                p0 = pts[int(rng.integers(len(pts)))]      # the next curve starts on this one
        else:
            for _ in range(4):              # a root that soon leaves the image makes a stub
                lines = _vessel_tree(rng, h, w, s, max_width)
                if sum(len(xy) for xy, _ in lines) * 3 * s >= 0.8 * min(h, w):
                    break
        drawn = _draw_width_layers(h, w, lines)
        x, y, bw, bh = cv2.boundingRect(drawn)
        if cv2.countNonZero(drawn) < min_pixels:
            continue
        # The structure sprawls over the whole image: claim it as a full-frame crop.
        placed = canvas.place(drawn.view(bool), h // 2, w // 2, max_loss=0.5, min_inside=0.0)
        if placed is None:
            continue
        rgb = np.clip(line_rgb + rng.normal(0, 10, 3), 0, 255).astype(np.float32)
        y0, y1, x0, x1 = max(0, y - 1), min(h, y + bh + 1), max(0, x - 1), min(w, x + bw + 1)
        alpha = cv2.GaussianBlur(drawn[y0:y1, x0:x1].astype(np.float32), (3, 3), 0.6)
        alpha *= np.float32(rng.uniform(0.65, 0.95))
        view = canvas.img[y0:y1, x0:x1]
        _blend(view, np.broadcast_to(rgb, view.shape), alpha)
        size = "small" if max(bw, bh) < 0.4 * max(h, w) else \
            "medium" if max(bw, bh) < 0.7 * max(h, w) else "large"
        canvas.objects.append(SceneObject(kind, _nearest_colour(rgb), "solid", size))
    return canvas.finish("thin", bg)


def _render_grayscale(rng, h, w, max_objects, shapes) -> Scene:
    s = min(h, w) / 256
    dark_field = rng.random() < 0.5
    level = rng.uniform(25, 70) if dark_field else rng.uniform(160, 215)
    illum = (_value_noise(rng, h, w, rng.uniform(60, 140) * s) - 0.5) * rng.uniform(20, 45)
    img = (np.float32(level) + illum + (_ramp(rng, h, w) - 0.5) * np.float32(rng.uniform(0, 30)))
    canvas = _Canvas(img.astype(np.float32))
    cells = ("blob", "ellipse", "circle", "ring")
    pool = [k for k in cells if shapes is None or k in shapes] or list(shapes)
    n = int(rng.integers(1, max_objects + 1))
    radii = _sample_radii(rng, n, min(h, w), words=("small", "small", "medium", "large"))
    for shape, r, (isl, csl, m) in _place_shapes(canvas, rng, pool, radii, pad=2,
                                                 max_loss=0.25):
        bh, bw = m.shape
        contrast = rng.uniform(45, 110)
        value = level + contrast if dark_field else level - contrast
        tex = np.float32(value) + (_value_noise(rng, bh, bw, rng.uniform(4, 10) * s) - 0.5) * 30
        if rng.random() < 0.6:                               # a nucleus
            cy, cx = bh // 2 + int(rng.normal(0, r * 0.15)), bw // 2 + int(rng.normal(0, r * 0.15))
            ax = max(2, int(r * rng.uniform(0.25, 0.45)))
            cv2.ellipse(tex, (cx, cy), (ax, max(2, int(ax * rng.uniform(0.6, 1.0)))),
                        rng.uniform(0, 180), 0, 360,
                        float(value + rng.uniform(-1, 1) * contrast * 0.5), -1)
        view = canvas.img[isl]
        view[m] = tex[m]
        mean = float(tex[m].mean())
        colour = "white" if mean >= 165 else "black" if mean <= 75 else "gray"
        canvas.objects.append(SceneObject(shape, colour, "noise", _size_word(r, min(h, w))))
    img = cv2.GaussianBlur(canvas.img, (0, 0), rng.uniform(1.2, 2.5) * s)
    img *= 1 + np.float32(rng.uniform(0.1, 0.3)) * _fine_noise(rng, h, w)       # speckle
    img += np.float32(rng.uniform(10, 25)) * _fine_noise(rng, h, w)            # sensor noise
    canvas.img = img
    return canvas.finish("grayscale-noise", "micro-dark" if dark_field else "micro-bright")


@dataclass(frozen=True)
class Domain:
    name: str
    render: Callable          # (rng, h, w, max_objects, shapes or None) -> Scene
    default_size: int = 256
    description: str = ""


DOMAINS = {d.name: d for d in [
    Domain("source", _render_source, 256,
           "textured shapes of many kinds and colours on textured backgrounds, clearly visible"),
    Domain("camouflage", _render_camouflage, 256,
           "shapes filled with the background's own texture, slightly shifted: low contrast"),
    Domain("thin", _render_thin, 256,
           "thin curvilinear structures 1-4 px wide: bezier bundles and branching vessels"),
    Domain("grayscale-noise", _render_grayscale, 256,
           "microscopy-like grey cells with blurred edges under heavy gaussian and speckle noise"),
    Domain("highres-fine", _render_highres, 1024,
           "source-like objects with serrated contours, 1-2 px hairs and small holes"),
]}


# --------------------------------------------------------------------------------------------
# Public API

def make_scene(rng: np.random.Generator | int, size: int | tuple = 256, domain: str = "source",
               max_objects: int = 4, shapes: Sequence[str] | None = None) -> Scene:
    """One scene, a pure function of ``rng``'s state. ``size`` is a side or (height, width);
    ``shapes`` restricts the classes drawn (e.g. ``SEEN_SHAPES`` for open-vocabulary training)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose from {sorted(DOMAINS)}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    h, w = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if min(h, w) < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    if max_objects < 1:
        raise ValueError("max_objects must be at least 1")
    if shapes is not None:
        shapes = list(shapes)
        bad = [k for k in shapes if k not in CLASS_IDS or k == "background"]
        if bad or not shapes:
            raise ValueError(f"unknown shapes {bad}; choose from {list(CLASSES[1:])}")
        if domain != "thin" and not any(k in SHAPES for k in shapes):
            raise ValueError(f"domain {domain!r} draws from {list(SHAPES)}, got {shapes}")
        if domain != "thin":
            shapes = [k for k in shapes if k in SHAPES]
    pool = shapes if (shapes is not None or domain == "thin") else list(SHAPES)
    return DOMAINS[domain].render(rng, h, w, int(max_objects), pool)


def _scene_rng(domain: str, seed: int, index: int) -> np.random.Generator:
    # Scene i depends only on (domain, seed, i): a longer dataset starts with the shorter one, and
    # two domains with the same seed do not share layouts or palettes.
    return np.random.default_rng([int(seed), int(index), zlib.crc32(domain.encode())])


def make_dataset(domain: str = "source", n: int = 16, size: int | tuple | None = None,
                 seed: int = 0, max_objects: int = 4,
                 shapes: Sequence[str] | None = None) -> list:
    """``n`` scenes; ``size`` None takes the domain's default (1024 for highres-fine, else 256)."""
    size = DOMAINS[domain].default_size if size is None and domain in DOMAINS else size
    return [make_scene(_scene_rng(domain, seed, i), size, domain, max_objects, shapes)
            for i in range(n)]


def scene_stream(domain: str = "source", size: int | tuple | None = None, seed: int = 0,
                 start: int = 0, **kwargs) -> Iterator[Scene]:
    """Endless scenes for pretraining; item i equals ``make_dataset(..., seed)[i]``."""
    size = DOMAINS[domain].default_size if size is None and domain in DOMAINS else size
    i = start
    while True:
        yield make_scene(_scene_rng(domain, seed, i), size, domain, **kwargs)
        i += 1


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _join(parts: list) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def caption_for(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """"a large red striped star and a small blue circle on a wooden background".

    With ``rng`` (CLIP pretraining) the caption varies: object order, dropped size or texture
    words, a dropped background, a template."""
    objects = list(scene.objects)
    if rng is not None and len(objects) > 1:
        objects = [objects[i] for i in rng.permutation(len(objects))]
    phrases = []
    for o in objects:
        words = [o.size, o.colour, TEXTURE_WORDS.get(o.texture, o.texture), o.shape]
        if rng is not None:
            if rng.random() < 0.3:
                words[0] = ""
            if rng.random() < 0.3:
                words[2] = ""
        phrases.append(_article(" ".join(w for w in words if w)))
    body = _join(phrases) or "nothing"
    bg = BACKGROUND_WORDS.get(scene.background, scene.background)
    with_bg = f"{body} on {_article(bg)} background" if bg else body
    if rng is None:
        return with_bg
    text = with_bg if rng.random() < 0.8 else body
    template = _pick(rng, ("{}", "{}", "a picture of {}", "a photo of {}", "an image showing {}"))
    return template.format(text)


def class_names(kind: str = "shapes", include_background: bool = False) -> list:
    """Vocabulary. ``shapes``: every semantic class in id order (id = index + 1, or index with
    ``include_background``); ``colours``, ``textures``, ``backgrounds``: caption words."""
    if kind == "shapes":
        return list(CLASSES if include_background else CLASSES[1:])
    if kind == "colours":
        return list(COLOURS)
    if kind == "textures":
        return [TEXTURE_WORDS[t] or t for t in TEXTURES + TARGET_TEXTURES]
    if kind == "backgrounds":
        return [BACKGROUND_WORDS[b] for b in BACKGROUNDS + TARGET_BACKGROUNDS]
    raise ValueError(f"unknown kind {kind!r}: shapes, colours, textures or backgrounds")


def object_contrast(scene: Scene, ring: int = 5) -> float:
    """Mean RGB distance (0-441) between each object and the background ring around it: how
    visible the objects are (source is high, camouflage low)."""
    img = scene.image.astype(np.float32)
    fg = scene.foreground
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring + 1, 2 * ring + 1))
    values = []
    for m in scene.masks:
        around = cv2.dilate(m.astype(np.uint8), kernel).astype(bool) & ~fg
        if around.any():
            values.append(float(np.linalg.norm(img[m].mean(0) - img[around].mean(0))))
    return float(np.mean(values)) if values else 0.0


def _palette() -> list:
    pal = [0, 0, 0]
    for i in range(1, 256):
        rgb = _hsv((i * 0.61803398875) % 1.0, 0.75, 0.95 if i % 2 else 0.7)
        pal += [int(v) for v in rgb]
    return pal


def write_folder(scenes: Sequence[Scene], out_dir, task: str = "dichotomous",
                 start: int = 0) -> Path:
    """Export ``images/NNNNN.png`` + ``masks/NNNNN.png`` (same stems) and ``meta.jsonl``.

    dichotomous: the mask is the union of all instances (0/255): every object is foreground, so
    nothing visible is labelled background. Instances stay available in memory (``Scene.masks``)
    and as boxes in meta.jsonl for prompted training.
    openvocab: the mask is a palette PNG whose indices are class ids, with ``classes.json`` a list
    of class names by id (0 = background, all classes, stable across domains) and
    ``splits.json`` the seen/unseen shapes."""
    from PIL import Image

    if task not in ("dichotomous", "openvocab"):
        raise ValueError(f"task must be 'dichotomous' or 'openvocab', got {task!r}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    palette = _palette()
    with open(out / "meta.jsonl", "a" if start else "w") as meta:
        for i, scene in enumerate(scenes):
            stem = f"{start + i:05d}"
            cv2.imwrite(str(out / "images" / f"{stem}.png"), scene.image[..., ::-1])
            if task == "dichotomous":
                mask = scene.foreground.astype(np.uint8) * 255
                cv2.imwrite(str(out / "masks" / f"{stem}.png"), mask)
            else:
                mask = Image.fromarray(scene.semantic, mode="P")
                mask.putpalette(palette)
                mask.save(out / "masks" / f"{stem}.png")
            boxes = scene.boxes().tolist()
            meta.write(json.dumps({"stem": stem, "caption": scene.caption, "domain": scene.domain,
                                   "background": scene.background,
                                   "objects": [dict(o.to_dict(), box=b)
                                               for o, b in zip(scene.objects, boxes)]}) + "\n")
    if task == "openvocab":
        (out / "classes.json").write_text(json.dumps(list(CLASSES), indent=1) + "\n")
        (out / "splits.json").write_text(json.dumps(
            {"seen": SEEN_SHAPES, "unseen": UNSEEN_SHAPES, "other": list(THIN_SHAPES)},
            indent=1) + "\n")
    return out
