"""Held-out previews while a job trains: ground truth beside the model's prediction, as one PNG.

The trainer owns its model, so the worker keeps a second copy of the backbone + method (on the
CPU) and loads the adapter tensors of the latest checkpoint into it whenever the trainer reports
a held-out evaluation. The frozen model's preview ("before") and the final one ("after") feed the
before/after slider.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

MAX_IMAGES = 3
TILE = 256  # longest side of each picture in the preview


def _fit(image: np.ndarray, side: int = TILE) -> np.ndarray:
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def request_for(task: str, mask: np.ndarray, classes: list[str]) -> dict:
    """The prompt a held-out image is previewed with: the evaluation's (the mask's box) for
    dichotomous, the dataset's classes for open-vocabulary."""
    if task == "openvocab":
        return {"classes": list(classes)}
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return {}
    return {"box": [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]}


def truth_overlay(task: str, image: np.ndarray, mask: np.ndarray, n_classes: int) -> np.ndarray:
    from adapt.render import overlay, palette

    if task == "openvocab":
        return overlay(image, mask.astype(np.int64), palette(n_classes), skip=(0,))
    return overlay(image, mask > 0)


def _stack(images: list[np.ndarray]) -> np.ndarray:
    """Images one above the other on white, 6 px apart."""
    width = max(im.shape[1] for im in images)
    padded = [np.pad(im[..., :3], ((0, 6), (0, width - im.shape[1]), (0, 0)), constant_values=255) for im in images]
    return np.concatenate(padded, axis=0)[:-6]


class Previewer:
    def __init__(self, cfg, samples, classes: list[str]):
        self.cfg, self.classes = cfg, list(classes)
        self.samples = list(samples)[:MAX_IMAGES]
        self._task = self._handle = None

    def _build(self):
        """The same backbone, task and method as the trainer's Run, on the CPU."""
        if self._task is None:
            from adapt.train import build_model

            backbone, self._task, self._handle = build_model(self.cfg)
            backbone.model.eval()
        return self._task, self._handle

    @torch.no_grad()
    def _render(self, task, path: Path) -> Path | None:
        from adapt.render import save_png, side_by_side

        if not self.samples:
            return None
        rows, predictions = [], []
        for s in self.samples:
            image, mask = s.image, s.mask
            outputs = task.predict_outputs(image, **request_for(self.cfg.task, mask, self.classes))
            predictions.append(_fit(outputs["overlay"]))
            rows.append(side_by_side(_fit(truth_overlay(self.cfg.task, image, mask, len(self.classes))),
                                     predictions[-1]))
        # <name>_pred.png: the predictions alone, for the before/after slider
        save_png(_stack(predictions), path.with_name(f"{path.stem}_pred.png"))
        return save_png(_stack(rows), path)

    def render_frozen(self, path: Path) -> Path | None:
        task, _ = self._build()
        return self._render(task, path)

    def render_checkpoint(self, checkpoint: Path, path: Path) -> Path | None:
        if not checkpoint.exists():
            return None
        task, handle = self._build()
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        handle.load_state_dict(state["adapter"])
        return self._render(task, path)

    def render_handle(self, trained, path: Path) -> Path | None:
        task, handle = self._build()
        handle.load_state_dict({k: v.cpu() for k, v in trained.state_dict().items()})
        return self._render(task, path)
