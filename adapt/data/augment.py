"""Augmentation for (image, mask) pairs, and the SAM-style resize/pad with its inverse.

Every random choice comes from the numpy Generator passed in, so a run is reproducible from its
seed. Masks are only ever moved with nearest-neighbour sampling, flips and crops: no new values
(class ids) can appear, except `mask_fill` where padding is added.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "Augment", "augment", "random_flip", "random_scale_crop", "color_jitter",
    "resize_longest_side", "pad_to_square", "Letterbox", "letterbox", "unletterbox",
]


def _hw(size) -> tuple[int, int]:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _resize(a: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    """cv2.resize to (h, w): nearest for label maps, area when shrinking, linear when growing."""
    h, w = hw
    if a.shape[:2] == (h, w):
        return a
    if nearest:
        interp = cv2.INTER_NEAREST_EXACT
    elif h * w < a.shape[0] * a.shape[1]:
        interp = cv2.INTER_AREA
    else:
        interp = cv2.INTER_LINEAR
    squeeze = a.ndim == 3 and a.shape[2] == 1
    out = cv2.resize(a, (w, h), interpolation=interp)
    return out[..., None] if squeeze else out


# ----------------------------------------------------------------------------------------------
# Random transforms


def random_flip(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *,
                horizontal: float = 0.5, vertical: float = 0.0):
    """Flip left-right with probability `horizontal`, up-down with probability `vertical`."""
    flip_h, flip_v = rng.random() < horizontal, rng.random() < vertical
    if flip_h:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if flip_v:
        image, mask = image[::-1], mask[::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def random_scale_crop(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *,
                      size=None, scale=(0.75, 1.25), mask_fill: int = 0, image_fill: int = 0):
    """Zoom by a factor drawn uniformly from `scale`, then crop (or pad) to `size`.

    size: (h, w) or an int for a square; None keeps the input size. Where the zoomed image is
    smaller than the crop, the image is padded with `image_fill` and the mask with `mask_fill`
    (use the ignore index for label maps so padding is not taught as background).
    """
    h, w = image.shape[:2]
    out_h, out_w = _hw(size) or (h, w)
    s = float(rng.uniform(scale[0], scale[1]))
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    image = _resize(image, (nh, nw), nearest=False)
    mask = _resize(mask, (nh, nw), nearest=True)
    # pad (bottom/right is as good as any side: the crop offset below is random)
    ph, pw = max(0, out_h - nh), max(0, out_w - nw)
    if ph or pw:
        top, left = int(rng.integers(0, ph + 1)), int(rng.integers(0, pw + 1))
        image = cv2.copyMakeBorder(image, top, ph - top, left, pw - left, cv2.BORDER_CONSTANT,
                                   value=(image_fill,) * 4)
        mask = cv2.copyMakeBorder(mask, top, ph - top, left, pw - left, cv2.BORDER_CONSTANT,
                                  value=mask_fill)
    y = int(rng.integers(0, image.shape[0] - out_h + 1))
    x = int(rng.integers(0, image.shape[1] - out_w + 1))
    return (np.ascontiguousarray(image[y:y + out_h, x:x + out_w]),
            np.ascontiguousarray(mask[y:y + out_h, x:x + out_w]))


def color_jitter(image: np.ndarray, rng: np.random.Generator, *, brightness: float = 0.2,
                 contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.02) -> np.ndarray:
    """Brightness, contrast, saturation (factors in [1-x, 1+x]) and hue (shift in [-hue, hue] of
    the full circle) on an HxWx3 uint8 RGB image. Always draws four numbers from rng."""
    b = rng.uniform(1 - brightness, 1 + brightness)
    c = rng.uniform(1 - contrast, 1 + contrast)
    s = rng.uniform(1 - saturation, 1 + saturation)
    dh = rng.uniform(-hue, hue)
    x = image.astype(np.float32) * b
    if c != 1:
        mean = float(cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY).mean())
        x = (x - mean) * c + mean
    if s != 1:
        gray = cv2.cvtColor(np.clip(x, 0, 255), cv2.COLOR_RGB2GRAY)[..., None]
        x = (x - gray) * s + gray
    x = np.clip(x, 0, 255)
    if dh:
        hsv = cv2.cvtColor(x / 255.0, cv2.COLOR_RGB2HSV)   # float input: H in degrees [0, 360)
        hsv[..., 0] = (hsv[..., 0] + 360.0 * dh) % 360.0
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


@dataclass
class Augment:
    """One configurable pipeline: flip -> scale + crop -> colour jitter.

    >>> aug = Augment(size=512, mask_fill=255)
    >>> image, mask = aug(image, mask, np.random.default_rng(0))
    """

    size: int | tuple[int, int] | None = None   # output (h, w); None keeps each input's size
    hflip: float = 0.5
    vflip: float = 0.0
    scale: tuple[float, float] = (0.75, 1.25)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02
    mask_fill: int = 0        # dichotomous: 0 (background); openvocab: the ignore index
    image_fill: int = 0

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
        image, mask = random_flip(image, mask, rng, horizontal=self.hflip, vertical=self.vflip)
        if self.size is not None or tuple(self.scale) != (1.0, 1.0):
            image, mask = random_scale_crop(image, mask, rng, size=self.size, scale=self.scale,
                                            mask_fill=self.mask_fill, image_fill=self.image_fill)
        if self.brightness or self.contrast or self.saturation or self.hue:
            image = color_jitter(image, rng, brightness=self.brightness, contrast=self.contrast,
                                 saturation=self.saturation, hue=self.hue)
        return image, mask


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, **options):
    """`Augment(**options)(image, mask, rng)`."""
    return Augment(**options)(image, mask, rng)


# ----------------------------------------------------------------------------------------------
# SAM's input convention: resize the longest side to the encoder size, pad bottom/right


def resize_longest_side(image: np.ndarray, size: int, *, nearest: bool = False):
    """Resize so the longer side is `size` (aspect kept; SAM's rounding) -> (resized, scale).

    Works for HxW and HxWxC arrays; nearest=True for masks.
    """
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))  # a 1-px sliver stays 1 px
    return _resize(image, (nh, nw), nearest), scale


def pad_to_square(image: np.ndarray, size: int | None = None, *, value=0):
    """Pad bottom and right to size x size (default: the longer side) -> (padded, (pad_h, pad_w))."""
    h, w = image.shape[:2]
    size = max(h, w) if size is None else int(size)
    if h > size or w > size:
        raise ValueError(f"image {w}x{h} is larger than the square {size}x{size}")
    ph, pw = size - h, size - w
    if ph == 0 and pw == 0:
        return image, (0, 0)
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad, mode="constant", constant_values=value), (ph, pw)


@dataclass(frozen=True)
class Letterbox:
    """What `letterbox` did, to map predictions back to the source image."""

    original_size: tuple[int, int]    # (h, w) of the source image
    resized_size: tuple[int, int]     # (h, w) after resize_longest_side
    size: int                         # side of the padded square
    scale: float

    @property
    def pad(self) -> tuple[int, int]:
        return self.size - self.resized_size[0], self.size - self.resized_size[1]


def letterbox(image: np.ndarray, size: int, *, nearest: bool = False, value=0):
    """resize_longest_side + pad_to_square -> (size x size array, Letterbox)."""
    resized, scale = resize_longest_side(image, size, nearest=nearest)
    padded, _ = pad_to_square(resized, size, value=value)
    return padded, Letterbox(tuple(image.shape[:2]), tuple(resized.shape[:2]), int(size), scale)


def unletterbox(x, box: Letterbox, *, nearest: bool = False):
    """Map a square prediction back to the source image's (h, w) (the inverse of `letterbox`).

    x: numpy HxW or HxWxC (label maps with nearest=True; probabilities/logits bilinear), or a
    torch tensor (..., S, S), e.g. (B, K, S, S) logits. S may be smaller than the letterbox size
    (SAM's 256x256 low-res logits): as in SAM's postprocess_masks, it is first resized to the
    square, then the padding is cut off, then it is resized to the source size.
    """
    oh, ow = box.original_size
    rh, rw = box.resized_size
    torch = _torch()
    if torch is not None and isinstance(x, torch.Tensor):
        from torch.nn import functional as F

        lead = x.shape[:-2]
        y = x.reshape(-1, 1, *x.shape[-2:])
        dtype = y.dtype
        if nearest or not y.is_floating_point():
            y = y.float()
            kw = {"mode": "nearest-exact"}
        else:
            kw = {"mode": "bilinear", "align_corners": False}
        if tuple(y.shape[-2:]) != (box.size, box.size):
            y = F.interpolate(y, size=(box.size, box.size), **kw)
        y = F.interpolate(y[..., :rh, :rw], size=(oh, ow), **kw).to(dtype)
        return y.reshape(*lead, oh, ow)
    x = np.asarray(x)
    dtype = x.dtype
    if dtype in (np.bool_, np.float16):
        y = x.astype(np.float32)
    elif dtype in (np.int64, np.uint32, np.uint64):   # OpenCV has no 64-bit integers
        y = x.astype(np.float64)
    else:
        y = x
    if not nearest:
        y = _linear(y, (box.size, box.size))
        y = _linear(np.ascontiguousarray(y[:rh, :rw]), (oh, ow))
    else:
        y = _resize(y, (box.size, box.size), nearest=True)
        y = _resize(np.ascontiguousarray(y[:rh, :rw]), (oh, ow), nearest=True)
    return y.astype(dtype, copy=False)


def _linear(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if a.shape[:2] == tuple(hw):
        return a
    out = cv2.resize(a, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    return out[..., None] if a.ndim == 3 and out.ndim == 2 else out


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the library, not of this file
        return None
    return torch
