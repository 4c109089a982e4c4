"""Datasets: loading and validation, augmentation and SAM-style resizing (augment.py).

Loading is split by job, each module importing only those below it (no cycles):
errors.py (DatasetError) <- images.py (safe decoding, load_image), coco.py (RLE/polygon codecs),
labelstudio.py (Label Studio's export and brush codes, read as COCO),
archive.py (zip checks and extraction) <- dataset.py (Dataset, Sample), layout.py (finding and
pairing files) <- validate.py (checking candidates) <- loading.py (load_dataset, the entry point).

    ds = load_dataset("my_data.zip", task="dichotomous")   # raises DatasetError listing every problem
    train, heldout = ds.split()                            # given val/ folder, else 30% by seed 0
    sample = train[0]; sample.image, sample.mask           # HxWx3 uint8 RGB, HxW uint8

Procedurally generated datasets live in adapt.data.synthetic (import it directly).
"""

from adapt.data.augment import (  # noqa: F401
    Augment, Letterbox, augment, color_jitter, letterbox, pad_to_square, random_flip,
    random_scale_crop, resize_longest_side, unletterbox,
)
from adapt.data.coco import polygons_to_mask, rle_decode, rle_encode  # noqa: F401
from adapt.data.dataset import Dataset, Sample  # noqa: F401
from adapt.data.errors import DatasetError  # noqa: F401
from adapt.data.images import IMAGE_EXTS, load_image  # noqa: F401
from adapt.data.labelstudio import mask_results, parse_config, results_mask, tasks_from_masks  # noqa: F401
from adapt.data.layout import ACCEPTED_LAYOUTS  # noqa: F401
from adapt.data.loading import TASKS, load_dataset  # noqa: F401

__all__ = [
    "load_dataset", "load_image", "IMAGE_EXTS", "Dataset", "Sample", "DatasetError", "TASKS", "ACCEPTED_LAYOUTS",
    "rle_decode", "rle_encode", "polygons_to_mask",
    "mask_results", "parse_config", "results_mask", "tasks_from_masks",
    "Augment", "augment", "random_flip", "random_scale_crop", "color_jitter",
    "resize_longest_side", "pad_to_square", "Letterbox", "letterbox", "unletterbox",
]
