"""Datasets: formats and validation (formats.py), augmentation and SAM-style resizing (augment.py).

    ds = load_dataset("my_data.zip", task="dichotomous")   # raises DatasetError listing every problem
    train, heldout = ds.split()                            # given val/ folder, else 30% by seed 0
    sample = train[0]; sample.image, sample.mask           # HxWx3 uint8 RGB, HxW uint8

Procedurally generated datasets live in adapt.data.synthetic (import it directly).
"""

from adapt.data.augment import (  # noqa: F401
    Augment, Letterbox, augment, color_jitter, letterbox, pad_to_square, random_flip,
    random_scale_crop, resize_longest_side, unletterbox,
)
from adapt.data.formats import (  # noqa: F401
    ACCEPTED_LAYOUTS, TASKS, Dataset, DatasetError, Sample, load_dataset, load_image, polygons_to_mask,
    rle_decode, rle_encode,
)

__all__ = [
    "load_dataset", "load_image", "Dataset", "Sample", "DatasetError", "TASKS", "ACCEPTED_LAYOUTS",
    "rle_decode", "rle_encode", "polygons_to_mask",
    "Augment", "augment", "random_flip", "random_scale_crop", "color_jitter",
    "resize_longest_side", "pad_to_square", "Letterbox", "letterbox", "unletterbox",
]
