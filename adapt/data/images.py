"""Reading images and masks safely: the one place image files are opened and decoded.

`_open_image` checks the size in the file header against max_pixels before any pixel is decoded,
keeps PIL's decompression-bomb guard on (raising its limit only under a lock, for one file, when
the caller allows more), and turns unreadable, empty or truncated files into one-line messages
(`_Bad`) instead of PIL's exceptions. Images become HxWx3 uint8 RGB (`_to_rgb`); masks are read as
raw values (palette indices or gray levels, `_mask_values`) and binarised by the dichotomous rule
(`_binarize`). The loader's validation, the lazily loading `Sample` and `load_image` all decode
through these functions, so they read every file the same way and report the same messages.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from adapt.data.errors import DatasetError, _Bad

__all__ = ["IMAGE_EXTS", "load_image"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")

_PIL_LOCK = threading.RLock()


def _open_image(path: Path, max_pixels: int | None, *, load: bool = True) -> Image.Image:
    """Open with PIL, checking the header size against max_pixels before decoding any pixels."""
    if not path.is_file():
        raise _Bad("file not found")
    if path.stat().st_size == 0:
        raise _Bad("file is empty (0 bytes)")
    # PIL's decompression-bomb guard stays on; only when the caller allows more pixels than PIL
    # does is its limit raised to max_pixels, for this file, under a lock (it is a global).
    raise_limit = bool(max_pixels and Image.MAX_IMAGE_PIXELS and max_pixels > Image.MAX_IMAGE_PIXELS)
    with _PIL_LOCK if raise_limit else contextlib.nullcontext():
        old = Image.MAX_IMAGE_PIXELS
        if raise_limit:
            Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            im = _open_header(path)
            w, h = im.size
            if max_pixels and w * h > max_pixels:
                im.close()
                raise _Bad(f"{w}x{h} = {w * h / 1e6:.1f} megapixels is over the limit of "
                           f"{max_pixels / 1e6:.1f} megapixels; downscale it (or raise max_pixels)")
            if w == 0 or h == 0:
                im.close()
                raise _Bad(f"image has no pixels ({w}x{h})")
            if load:
                try:
                    im.load()
                except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, struct.error...
                    im.close()
                    raise _Bad(f"image data is truncated or corrupt ({e})") from None
            return im
        finally:
            if raise_limit:
                Image.MAX_IMAGE_PIXELS = old


def _open_header(path: Path) -> Image.Image:
    """Image.open reads only the header; nothing is decoded yet."""
    try:
        with warnings.catch_warnings():
            # Sizes between PIL's limit and twice it only warn; our own check reports them.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError:
        limit = Image.MAX_IMAGE_PIXELS
        with _PIL_LOCK:  # read the size from the header alone (nothing is decoded), guard off briefly
            Image.MAX_IMAGE_PIXELS = None
            try:
                with Image.open(path) as im:
                    w, h = im.size
            finally:
                Image.MAX_IMAGE_PIXELS = limit
        raise _Bad(f"{w}x{h} = {w * h / 1e6:.1f} megapixels is too large to open safely; downscale it") from None
    except UnidentifiedImageError:
        raise _Bad("not a readable image (the file is corrupt or not an image format: "
                   "use PNG, JPEG, TIFF, BMP or WebP)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise _Bad(f"not a readable image ({e})") from None


def _header_size(path: Path, max_pixels: int | None) -> tuple[int, int]:
    """(width, height) from the header, without decoding."""
    im = _open_image(path, max_pixels, load=False)
    size = im.size
    im.close()
    return size


def _exif_transposed_size(im: Image.Image) -> tuple[int, int] | None:
    """The size the image would have once its EXIF orientation is applied, if that swaps axes."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:
        return None
    if orientation in (5, 6, 7, 8):
        return im.size[1], im.size[0]
    return None


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL image -> HxWx3 uint8 RGB. 16-bit / float images are min-max scaled to 0-255."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
        a = np.clip(a + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def _mask_values(im: Image.Image) -> np.ndarray:
    """Raw mask values as a 2-D integer array: palette indices for "P", gray levels otherwise.

    Colour masks whose three channels are equal are read as gray; an RGBA/LA mask whose colour is
    constant but whose alpha varies (a cut-out) is read from its alpha channel. Other colour
    masks are converted to gray with PIL's luminance formula (fine for dichotomous masks; the
    openvocab checker refuses them before this is called).
    """
    if im.mode == "P" or im.mode == "L":
        return np.asarray(im)
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return np.asarray(im).astype(np.int64)
    if im.mode == "F":
        return np.rint(np.asarray(im)).astype(np.int64)
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = np.asarray(im.convert("RGBA"))
        alpha = rgba[..., 3]
        colour = rgba[..., :3]
        if alpha.min() != alpha.max() and (colour == colour.reshape(-1, 3)[0]).all():
            return alpha
        return _gray_or_colour(colour)
    return _gray_or_colour(np.asarray(im.convert("RGB")))


def _gray_or_colour(rgb: np.ndarray) -> np.ndarray:
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return np.ascontiguousarray(rgb[..., 0])
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def _is_colour_mask(im: Image.Image) -> bool:
    if im.mode not in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        return False
    rgb = np.asarray(im.convert("RGB"))
    return not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _binarize(values: np.ndarray) -> np.ndarray:
    """Dichotomous rule: > 127 when the mask's maximum is above 1 (0/255), else > 0 (0/1)."""
    threshold = 127 if values.max(initial=0) > 1 else 0
    return (values > threshold).astype(np.uint8)



def load_image(path, *, max_pixels: int | None = 40_000_000, exif_transpose: bool = True) -> np.ndarray:
    """One image file -> HxWx3 uint8 RGB, with the same checks and messages as load_dataset.

    exif_transpose: apply the EXIF orientation (what photo viewers show), for prediction on a
    single photo. Raises DatasetError (a ValueError) naming the file.
    """
    path = Path(path)
    try:
        im = _open_image(path, max_pixels)
        return _to_rgb(ImageOps.exif_transpose(im) if exif_transpose else im)
    except _Bad as e:
        raise DatasetError([(str(path), str(e))], source=path.name) from None
