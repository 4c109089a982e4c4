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
    task, max_pixels = loader.task, loader.max_pixels
    # Pass 1: headers only (size limit, readability, size agreement), so nothing big is decoded.
    headers = []
    for c in cands:
        try:
            isize = _header_size(c.image_path, max_pixels)
        except _Bad as e:
            loader.problem(c.image_name, str(e))
            isize = None
        msize = None
        if c.mask_path is not None:
            try:
                msize = _header_size(c.mask_path, max_pixels)
            except _Bad as e:
                loader.problem(c.mask_name, str(e))
        headers.append((isize, msize))
    total = sum(4 * s[0] * s[1] for s, _ in headers if s)
    keep_in_memory = total <= cache_bytes

    samples = []
    for c, (isize, msize) in zip(cands, headers):
        if isize is None or (c.mask_path is not None and msize is None):
            continue
        try:
            im = _open_image(c.image_path, max_pixels)
        except _Bad as e:
            loader.problem(c.image_name, str(e))
            continue
        transpose = False
        if c.mask_path is not None and msize != isize:
            rotated = _exif_transposed_size(im)
            if rotated == msize:
                transpose = True   # the mask was drawn on the photo as a viewer shows it
            else:
                loader.problem(c.mask_name, f"size {_fmt_size(msize)} does not match image "
                                            f"{c.image_name} ({_fmt_size(isize)})")
                continue
        if c.coco is not None:
            if c.json_size is not None and tuple(c.json_size) != tuple(isize):
                rotated = _exif_transposed_size(im)
                if rotated != tuple(c.json_size):
                    loader.problem(c.coco_label, f"the JSON says {_fmt_size(c.json_size)} but image "
                                                 f"{c.image_name} is {_fmt_size(isize)}")
                    continue
                transpose = True
        try:
            rgb = _to_rgb(ImageOps.exif_transpose(im) if transpose else im)
        except Exception as e:
            loader.problem(c.image_name, f"image could not be converted to RGB ({e})")
            continue
        h, w = rgb.shape[:2]

        if c.coco is not None:
            bad_rle = [seg for _, seg in c.coco if isinstance(seg, dict) and
                       tuple(int(v) for v in seg["size"]) != (h, w)]
            if bad_rle:
                sz = bad_rle[0]["size"]
                loader.problem(c.coco_label, f"RLE size {sz[1]}x{sz[0]} (width x height) does not "
                                             f"match image {c.image_name} ({w}x{h})")
                continue
            mask = _coco_mask(c.coco, h, w, task)
            where = c.coco_label
            if task == "dichotomous" and not mask.any():
                loader.problem(where, "no foreground: the image has no annotations (empty mask)"
                               if not c.coco else "no foreground: the annotations cover no pixel")
                continue
            if task == "dichotomous" and mask.all():
                loader.problem(where, "mask is all foreground (nothing to tell apart)")
                continue
        else:
            try:
                mim = _open_image(c.mask_path, max_pixels)
            except _Bad as e:
                loader.problem(c.mask_name, str(e))
                continue
            if task == "openvocab" and _is_colour_mask(mim):
                loader.problem(c.mask_name, "mask is a colour (RGB) image; openvocab masks must be "
                                            "index PNGs (gray value = class id) or palette PNGs")
                continue
            values = _mask_values(mim)
            if task == "dichotomous":
                mask = _binarize(values)
                if not mask.any():
                    top = int(values.max(initial=0))
                    hint = ("the mask is all zero" if top == 0 else
                            f"its largest value is {top}; foreground must be > 127 in 0-255 masks "
                            f"or 1 in 0/1 masks")
                    if 1 < top <= 127 and len(np.unique(values)) <= 32:
                        hint += "; if the values are class ids, load it with task='openvocab'"
                    loader.problem(c.mask_name, f"empty mask: no foreground pixels ({hint})")
                    continue
                if mask.all():
                    loader.problem(c.mask_name, "mask is all foreground (every pixel is set); "
                                                "the object must not fill the whole image")
                    continue
            else:
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
                    continue
                mask = values.astype(np.uint8)
                if ignore_index is not None and (mask == ignore_index).all():
                    loader.problem(c.mask_name,
                                   f"every pixel is {ignore_index} (ignore): nothing is labelled")
                    continue
        sample = Sample(c.stem, c.image_name, c.mask_name, h, w, task,
                        np.bincount(mask.reshape(-1), minlength=256).astype(np.int64),
                        _image_path=c.image_path, _exif_transpose=transpose, _mask_path=c.mask_path,
                        _coco=(c.coco, h, w) if c.coco is not None else None, _storage=storage,
                        _max_pixels=max_pixels)
        if keep_in_memory:
            sample._image, sample._mask = rgb, mask
        samples.append(sample)
    return samples



def _validate_files_only(cands, loader: _Loader):
    for c in cands:
        for p, name in ((c.image_path, c.image_name), (c.mask_path, c.mask_name)):
            if p is None:
                continue
            try:
                _open_image(p, loader.max_pixels).close()
            except _Bad as e:
                loader.problem(name, str(e))
