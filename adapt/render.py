"""Pictures people look at: colour label maps with a legend, overlays, cut-outs, and atomic PNG writes.

The one place where predictions become images; the CLI and the app both call it.

    colorize(labels, palette(len(classes)))          # (H, W) ids -> (H, W, 3) uint8
    class_palette(classes)                           # colours that agree with colour class names
    legend(classes, palette(len(classes)))           # a small swatch + name image
    overlay(image, labels_or_mask, colors)           # blend over the photo, outlines drawn
    cutout(image, alpha)                             # RGBA with the background transparent
    save_png(array, path)                            # atomic: a temp file then rename
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from adapt.files import atomic_path


def palette(n: int) -> np.ndarray:
    """n distinct colours (uint8 (n, 3)): golden-ratio hues, alternating lightness, deterministic."""
    colors = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        lightness, s = (0.5, 0.75) if i % 2 == 0 else (0.62, 0.65)
        colors.append([round(255 * c) for c in colorsys.hls_to_rgb(h, lightness, s)])
    return np.asarray(colors, dtype=np.uint8).reshape(n, 3)


# the colour a class whose name says one is drawn in ("red object" is red): one word each, the
# first found in the name wins
NAMED_COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 80, 230),
    "yellow": (240, 220, 20),
    "orange": (250, 140, 20),
    "purple": (140, 50, 190),
    "violet": (140, 50, 190),
    "pink": (250, 120, 180),
    "magenta": (230, 30, 200),
    "cyan": (20, 210, 230),
    "brown": (130, 80, 30),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
}
_NEAR = 90  # RGB distance under which a palette colour would pass for a named one


def named_color(name: str) -> tuple[int, int, int] | None:
    """The colour a class name says (a colour word in it), or None."""
    words = "".join(ch if ch.isalpha() else " " for ch in name.lower()).split()
    return next((NAMED_COLORS[w] for w in words if w in NAMED_COLORS), None)


def class_palette(classes: list[str]) -> np.ndarray:
    """One colour per class (uint8 (n, 3)) that never contradicts a name: a class named with a
    colour word is drawn in that colour, and the other classes take palette colours far from
    every named colour in use (so "cat" is not drawn red beside "red object")."""
    named = [named_color(c) for c in classes]
    used = np.asarray([c for c in named if c is not None], np.float64).reshape(-1, 3)
    candidates = iter(palette(len(classes) * 4 + 8))
    out = []
    for color in named:
        if color is None:
            color = next(
                (c for c in candidates if not len(used) or np.linalg.norm(used - c, axis=1).min() >= _NEAR),
                (128, 128, 128),
            )
        out.append(color)
    return np.asarray(out, dtype=np.uint8).reshape(len(classes), 3)


def colorize(
    labels: np.ndarray, colors: np.ndarray, ignore_index: int | None = 255, ignore_color=(0, 0, 0)
) -> np.ndarray:
    """Class-id map (H, W) -> RGB (H, W, 3); ids outside the palette (or ignore_index) get ignore_color."""
    labels = np.asarray(labels)
    table = np.zeros((max(256, int(labels.max(initial=0)) + 1), 3), dtype=np.uint8)
    table[:] = ignore_color
    table[: len(colors)] = colors
    if ignore_index is not None and ignore_index < len(table):
        table[ignore_index] = ignore_color
    return table[labels.astype(np.int64)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without sized default fonts
        return ImageFont.load_default()


def legend(
    classes: list[str], colors: np.ndarray, fractions: list[float] | None = None, row_height: int = 22, width: int = 260
) -> np.ndarray:
    """An RGB image listing each class next to its colour swatch (and its pixel share if given)."""
    if len(classes) == 0:
        raise ValueError("a legend needs at least one class")
    img = Image.new("RGB", (width, row_height * len(classes) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = _font(max(10, row_height - 8))
    for i, name in enumerate(classes):
        y = 4 + i * row_height
        draw.rectangle(
            [6, y + 3, 6 + row_height - 6, y + row_height - 3],
            fill=tuple(int(c) for c in colors[i]),
            outline=(60, 60, 60),
        )
        text = name if fractions is None else f"{name}  {100 * fractions[i]:.1f}%"
        draw.text((row_height + 8, y + 3), text, fill=(20, 20, 20), font=font)
    return np.asarray(img)


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    colors: np.ndarray | None = None,
    alpha: float = 0.5,
    outline: bool = True,
    skip: tuple[int, ...] = (),
    band: int = 256,
) -> np.ndarray:
    """Blend a label map (or a binary / soft mask) over an RGB image, with region outlines.

    labels: (H, W) ints (class ids, coloured by `colors`) or a mask (bool / float in [0, 1],
    drawn in one colour with its soft value as opacity). Ids in `skip` (e.g. background) stay clear.
    Blending runs in bands of `band` rows, so a 12-megapixel photo needs no full-size float copy.
    """
    image = np.asarray(image)
    if image.shape[:2] != labels.shape[:2]:
        raise ValueError(
            f"overlay: image is {image.shape[1]}x{image.shape[0]} but the labels are "
            f"{labels.shape[1]}x{labels.shape[0]}"
        )
    soft = labels.dtype == bool or np.issubdtype(labels.dtype, np.floating)
    if soft:
        color_table = np.asarray([(30, 144, 255) if colors is None else colors[0]], np.float32)
        edges = _edges(labels > 0.5) if outline else None
    else:
        colors = palette(int(labels.max(initial=0)) + 1) if colors is None else colors
        edges = _edges(labels) if outline else None
    out = np.empty(image.shape[:2] + (3,), np.uint8)
    for y0 in range(0, image.shape[0], band):
        rows = slice(y0, y0 + band)
        base = image[rows, :, :3].astype(np.float32)
        lab = labels[rows]
        if soft:
            weight = np.clip(lab.astype(np.float32), 0, 1)[..., None] * alpha
            painted = color_table[0]
        else:
            painted = colorize(lab, colors, ignore_index=None).astype(np.float32)
            keep = np.isin(lab, list(skip)) | (lab >= len(colors))
            weight = np.where(keep, 0.0, alpha).astype(np.float32)[..., None]
        out[rows] = (base * (1 - weight) + painted * weight).astype(np.uint8)
    if edges is not None:
        out[edges] = (255, 255, 255)
    return out


def _edges(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, dtype=bool)
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    return edge


def cutout(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """RGBA (H, W, 4) uint8: the photo with alpha (float [0, 1] or bool / 0-255 mask) as opacity."""
    image = np.asarray(image)[..., :3]
    if image.shape[:2] != alpha.shape[:2]:
        raise ValueError(
            f"cutout: image is {image.shape[1]}x{image.shape[0]} but the alpha is {alpha.shape[1]}x{alpha.shape[0]}"
        )
    if alpha.dtype == np.uint8:
        a = alpha
    else:
        a = np.round(np.clip(alpha.astype(np.float32), 0, 1) * 255).astype(np.uint8)
    return np.dstack([image.astype(np.uint8), a])


def side_by_side(*images: np.ndarray, gap: int = 6) -> np.ndarray:
    """RGB images in a row at a common height (for before/after previews)."""
    h = max(im.shape[0] for im in images)
    parts = []
    for im in images:
        im = im[..., :3] if im.ndim == 3 else np.dstack([im] * 3)
        if im.shape[0] != h:
            im = cv2.resize(im, (round(im.shape[1] * h / im.shape[0]), h), interpolation=cv2.INTER_AREA)
        parts += [im, np.full((h, gap, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], axis=1)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a PNG atomically (no half-written file on failure); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
    return path


def write_outputs(outputs: dict[str, np.ndarray], out: str | Path) -> list[Path]:
    """A task's named outputs as PNGs: the "main" one at `out`, each other at <stem>_<name>.png."""
    out = Path(out)
    written = []
    for name, array in outputs.items():
        path = out if name == "main" else out.with_name(f"{out.stem}_{name}.png")
        written.append(save_png(array, path))
    return written
