"""Interactive SAM prediction for point-and-click labelling (segment-anything's predictor pattern).

The image embedding, the expensive part of SAM, is computed once per image and kept in a bounded
LRU cache keyed by the image's content; every further click on that image runs only the prompt
encoder and the mask decoder. The cache is per predictor, and a predictor belongs to one loaded
backbone + adapter, so a new adapter never reuses another model's embeddings.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch


def image_key(image: np.ndarray) -> str:
    """A content key: the same pixels give the same key whatever array object holds them."""
    data = np.ascontiguousarray(image)
    return hashlib.blake2b(data.tobytes(), digest_size=16, person=str(data.shape).encode()[:16]).hexdigest()


class InteractivePredictor:
    def __init__(self, task, capacity: int = 8, device="cpu"):
        if capacity < 1:
            raise ValueError("the embedding cache needs room for at least one image")
        self.task, self.capacity, self.device = task, capacity, device
        self._cache: OrderedDict[str, tuple] = OrderedDict()
        self.hits = self.misses = 0

    @torch.no_grad()
    def _embedding(self, image: np.ndarray):
        key = image_key(image)
        if key in self._cache:
            self.hits += 1
            self._cache.move_to_end(key)
            return self._cache[key]
        self.misses += 1
        prepared = self.task.prepare(image)
        sam = self.task.backbone.model
        embedding = sam.image_encoder(prepared.image[None].to(self.device))
        self._cache[key] = (prepared, embedding)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)  # least recently used
        return self._cache[key]

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        self._cache.clear()

    @torch.no_grad()
    def predict(self, image: np.ndarray, points=None, labels=None, box=None) -> np.ndarray:
        """Foreground probability (H, W) at the source resolution.

        points: (N, 2) xy in source pixels with labels (N,) 1 = foreground, 0 = background;
        box: xyxy in source pixels; neither: the whole image (prompt-free).
        """
        prepared, embedding = self._embedding(image)
        prompt = self.task.source_prompt(prepared, box, points, labels)
        return self.task.predict_embedded(prepared, embedding, prompt, self.device)
