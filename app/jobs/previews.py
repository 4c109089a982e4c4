"""Held-out previews while a job trains: ground truth beside the model's prediction, as one PNG.

The trainer hands its live model to `Previewer` after every held-out evaluation (train's
`on_eval`), right after scoring, while the model is in eval mode. The frozen model's preview
("before") and the final one ("after") feed the before/after slider.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from adapt.tasks import TASKS
from app.config import JobFiles

MAX_IMAGES = 3
TILE = 256  # longest side of each picture in the preview


def _fit(image: np.ndarray, side: int = TILE) -> np.ndarray:
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def request_for(task: str, mask: np.ndarray, classes: list[str]) -> dict:
    """The prompt a held-out image is previewed with: the dataset's classes for a task whose classes
    are named (open-vocabulary), else the evaluation's prompt (the mask's box)."""
    if TASKS[task].mask.needs_class_names:
        return {"classes": list(classes)}
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return {}
    return {"box": [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]}


def truth_overlay(task: str, image: np.ndarray, mask: np.ndarray, n_classes: int) -> np.ndarray:
    return TASKS[task].mask.overlay(image, mask, n_classes)


def _stack(images: list[np.ndarray]) -> np.ndarray:
    """Images one above the other on white, 6 px apart."""
    width = max(im.shape[1] for im in images)
    padded = [np.pad(im[..., :3], ((0, 6), (0, width - im.shape[1]), (0, 0)), constant_values=255) for im in images]
    return np.concatenate(padded, axis=0)[:-6]


class Previewer:
    """The trainer's `on_eval` hook for a job: after each held-out evaluation it renders the first
    held-out images with the live model (no second copy, nothing reloaded from disk): the frozen
    model into "before", intermediate scores into "preview", the final model into "after"."""

    def __init__(self, files: JobFiles, task: str, classes: list[str]):
        self.files, self.task, self.classes = files, task, list(classes)

    def __call__(self, evaluated) -> Path | None:
        if evaluated.model == "frozen":
            picture = self.files.before
        else:
            picture = self.files.after if evaluated.final else self.files.preview
        return self.render(evaluated.run.task, evaluated.samples, picture, device=evaluated.run.device)

    @torch.no_grad()
    def render(self, task, samples, path: Path, device="cpu") -> Path | None:
        """Truth | prediction rows for up to MAX_IMAGES samples, and the predictions alone beside it."""
        from adapt.render import save_png, side_by_side

        samples = list(samples)[:MAX_IMAGES]
        if not samples:
            return None
        rows, predictions = [], []
        for s in samples:
            image, mask = s.image, s.mask
            outputs = task.predict_outputs(image, device=device, **request_for(self.task, mask, self.classes))
            predictions.append(_fit(outputs["overlay"]))
            rows.append(side_by_side(_fit(truth_overlay(self.task, image, mask, len(self.classes))), predictions[-1]))
        save_png(_stack(predictions), JobFiles.predictions(path))
        return save_png(_stack(rows), path)
