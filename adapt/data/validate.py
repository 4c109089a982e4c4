"""Validation of collected candidates: every file checked, every problem recorded, then Samples.

`_validate` works in two passes. First headers only (the max_pixels limit, readability, and that
an image and its mask have the same size, allowing for an EXIF rotation), so nothing large is
decoded needlessly; then each pair is decoded and its mask checked against the task (dichotomous:
not empty and not all foreground; openvocab: a gray or palette image whose values are class ids or
the ignore index). Problems are recorded on the `_Loader`, each naming its file, so that
load_dataset can raise them all together. `_validate_files_only` checks just that the files open,
for when label maps cannot be checked (classes.json missing or broken).
"""

from __future__ import annotations

import numpy as np
from PIL import ImageOps

from adapt.data.coco import _coco_mask
from adapt.data.dataset import Sample
from adapt.data.errors import _Bad
from adapt.data.images import (
    _binarize, _exif_transposed_size, _header_size, _is_colour_mask, _mask_values, _open_image, _to_rgb,
)
from adapt.data.layout import _Candidate, _Loader


def _fmt_size(wh) -> str:
    return f"{wh[0]}x{wh[1]}"


def _fmt_values(vals) -> str:
    vals = [int(v) for v in vals]
    shown = ", ".join(str(v) for v in vals[:10])
    return shown + (f" (and {len(vals) - 10} more)" if len(vals) > 10 else "")


def _validate(cands: list[_Candidate], loader: _Loader, classes, ignore_index,
              cache_bytes: int, storage) -> list[Sample]:
    # Pass 1: headers only (size limit, readability, size agreement), so nothing big is decoded.
    headers = [_header_sizes(c, loader) for c in cands]
    keep_in_memory = sum(4 * s[0] * s[1] for s, _ in headers if s) <= cache_bytes
    # Pass 2: each pair decoded, its mask checked against the task.
    samples = []
    for c, (isize, msize) in zip(cands, headers):
        if isize is None or (c.mask_path is not None and msize is None):
            continue
        decoded = _decode_image(c, loader, isize, msize)
        if decoded is None:
            continue
        rgb, transpose = decoded
        h, w = rgb.shape[:2]
        if c.coco is not None:
            mask = _coco_pair_mask(c, loader, h, w)
        else:
            mask = _file_mask(c, loader, classes, ignore_index)
        if mask is None:
            continue
        sample = Sample(c.stem, c.image_name, c.mask_name, h, w, loader.task,
                        np.bincount(mask.reshape(-1), minlength=256).astype(np.int64),
                        _image_path=c.image_path, _exif_transpose=transpose, _mask_path=c.mask_path,
                        _coco=(c.coco, h, w) if c.coco is not None else None, _storage=storage,
                        _max_pixels=loader.max_pixels)
        if keep_in_memory:
            sample._image, sample._mask = rgb, mask
        samples.append(sample)
    return samples


def _header_sizes(c: _Candidate, loader: _Loader):
    """(image size, mask size) from the files' headers; None where a file is unreadable or too large."""
    try:
        isize = _header_size(c.image_path, loader.max_pixels)
    except _Bad as e:
        loader.problem(c.image_name, str(e))
        isize = None
    msize = None
    if c.mask_path is not None:
        try:
            msize = _header_size(c.mask_path, loader.max_pixels)
        except _Bad as e:
            loader.problem(c.mask_name, str(e))
    return isize, msize


def _decode_image(c: _Candidate, loader: _Loader, isize, msize):
    """(RGB array, whether its EXIF rotation was applied) or None; sizes must agree with the mask or
    the JSON, allowing for an EXIF rotation (the mask drawn on the photo as a viewer shows it)."""
    try:
        im = _open_image(c.image_path, loader.max_pixels)
    except _Bad as e:
        loader.problem(c.image_name, str(e))
        return None
    transpose = False
    if c.mask_path is not None and msize != isize:
        if _exif_transposed_size(im) != msize:
            loader.problem(c.mask_name, f"size {_fmt_size(msize)} does not match image "
                                        f"{c.image_name} ({_fmt_size(isize)})")
            return None
        transpose = True
    if c.coco is not None and c.json_size is not None and tuple(c.json_size) != tuple(isize):
        if _exif_transposed_size(im) != tuple(c.json_size):
            loader.problem(c.coco_label, f"the JSON says {_fmt_size(c.json_size)} but image "
                                         f"{c.image_name} is {_fmt_size(isize)}")
            return None
        transpose = True
    try:
        return _to_rgb(ImageOps.exif_transpose(im) if transpose else im), transpose
    except Exception as e:
        loader.problem(c.image_name, f"image could not be converted to RGB ({e})")
        return None


def _coco_pair_mask(c: _Candidate, loader: _Loader, h: int, w: int):
    """The mask a COCO entry's annotations draw at h x w, or None after recording why not."""
    task = loader.task
    bad_rle = [seg for _, seg in c.coco if isinstance(seg, dict) and
               tuple(int(v) for v in seg["size"]) != (h, w)]
    if bad_rle:
        sz = bad_rle[0]["size"]
        loader.problem(c.coco_label, f"RLE size {sz[1]}x{sz[0]} (width x height) does not "
                                     f"match image {c.image_name} ({w}x{h})")
        return None
    mask = _coco_mask(c.coco, h, w, task)
    if task == "dichotomous" and not mask.any():
        loader.problem(c.coco_label, "no foreground: the image has no annotations (empty mask)"
                       if not c.coco else "no foreground: the annotations cover no pixel")
        return None
    if task == "dichotomous" and mask.all():
        loader.problem(c.coco_label, "mask is all foreground (nothing to tell apart)")
        return None
    return mask


def _file_mask(c: _Candidate, loader: _Loader, classes, ignore_index):
    """A mask file's labels checked against the task, or None after recording why not."""
    try:
        mim = _open_image(c.mask_path, loader.max_pixels)
    except _Bad as e:
        loader.problem(c.mask_name, str(e))
        return None
    if loader.task == "openvocab" and _is_colour_mask(mim):
        loader.problem(c.mask_name, "mask is a colour (RGB) image; openvocab masks must be "
                                    "index PNGs (gray value = class id) or palette PNGs")
        return None
    values = _mask_values(mim)
    if loader.task == "dichotomous":
        return _binary_mask(c, loader, values)
    return _class_map(c, loader, values, classes, ignore_index)


def _binary_mask(c: _Candidate, loader: _Loader, values: np.ndarray):
    mask = _binarize(values)
    if not mask.any():
        top = int(values.max(initial=0))
        hint = ("the mask is all zero" if top == 0 else
                f"its largest value is {top}; foreground must be > 127 in 0-255 masks "
                f"or 1 in 0/1 masks")
        if 1 < top <= 127 and len(np.unique(values)) <= 32:
            hint += "; if the values are class ids, load it with task='openvocab'"
        loader.problem(c.mask_name, f"empty mask: no foreground pixels ({hint})")
        return None
    if mask.all():
        loader.problem(c.mask_name, "mask is all foreground (every pixel is set); "
                                    "the object must not fill the whole image")
        return None
    return mask


def _class_map(c: _Candidate, loader: _Loader, values: np.ndarray, classes, ignore_index):
    present = np.unique(values)
    allowed = set(range(len(classes)))
    if ignore_index is not None:
        allowed.add(ignore_index)
    wrong = [v for v in present.tolist() if v not in allowed]
    if wrong:
        ign = f"; {ignore_index} = ignore" if ignore_index is not None else ""
        jpeg = (" (JPEG compression changes pixel values: save label maps as PNG)"
                if c.mask_path.suffix.lower() in (".jpg", ".jpeg") else "")
        what = (f"mask value {wrong[0]} is not a class id" if len(wrong) == 1 else
                f"mask values {_fmt_values(wrong)} are not class ids")
        loader.problem(c.mask_name, f"{what} "
                       f"(classes.json lists {len(classes)} classes, ids 0-{len(classes) - 1}"
                       f"{ign}){jpeg}")
        return None
    mask = values.astype(np.uint8)
    if ignore_index is not None and (mask == ignore_index).all():
        loader.problem(c.mask_name, f"every pixel is {ignore_index} (ignore): nothing is labelled")
        return None
    return mask


def _validate_files_only(cands, loader: _Loader):
    for c in cands:
        for p, name in ((c.image_path, c.image_name), (c.mask_path, c.mask_name)):
            if p is None:
                continue
            try:
                _open_image(p, loader.max_pixels).close()
            except _Bad as e:
                loader.problem(name, str(e))
