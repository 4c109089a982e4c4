"""Interactive SAM prediction for point-and-click labelling (segment-anything's predictor pattern).

The image embedding, the expensive part of SAM, is computed once per image and kept in a bounded
LRU cache keyed by the image's content; every further click on that image runs only the prompt
encoder and the mask decoder. The cache is per predictor, and a predictor belongs to one loaded
backbone + adapter, so a new adapter never reuses another model's embeddings.

Clicks can refine the prompt-free mask: `whole_box=True` sends them together with the whole-image
box (the prompt a prompt-free adapter was trained with, see the task's "clicks" mode), and
`use_previous=True` also passes the previous prediction's low-resolution logits on this image as
SAM's mask_input (worth it only with a prompt encoder trained on mask inputs, as the official SAM
checkpoints are; the bundled tiny-sam was pretrained without them).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch


def image_key(image: np.ndarray) -> str:
    """A content key: the same pixels give the same key whatever array object holds them.

    SHA-1 as a fingerprint, not for security: it runs at memory speed with the CPU's SHA
    instructions (a 12-megapixel photo in ~25 ms, half of BLAKE2b's time), and every click pays it."""
    data = np.ascontiguousarray(image)
    digest = hashlib.sha1(f"{data.shape}{data.dtype}".encode(), usedforsecurity=False)
    digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


class InteractivePredictor:
    def __init__(self, task, capacity: int = 8, device="cpu"):
        if capacity < 1:
            raise ValueError("the embedding cache needs room for at least one image")
        self.task, self.capacity, self.device = task, capacity, device
        self._cache: OrderedDict[str, list] = OrderedDict()  # key -> [prepared, embedding, last logits]
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
        embedding = self.task.encode(prepared.image[None].to(self.device))
        self._cache[key] = [prepared, embedding, None]
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)  # least recently used
        return self._cache[key]

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        self._cache.clear()

    @torch.no_grad()
    def predict(
        self, image: np.ndarray, points=None, labels=None, box=None, whole_box: bool = False, use_previous: bool = False
    ) -> np.ndarray:
        """Foreground probability (H, W) at the source resolution.

        points: (N, 2) xy in source pixels with labels (N,) 1 = foreground, 0 = background;
        box: xyxy in source pixels; neither: the whole image (prompt-free). whole_box: points come
        with the whole-image box; use_previous: the last prediction on this image goes in as
        mask_input.
        """
        entry = self._embedding(image)
        prepared, embedding, previous = entry
        prompt = self.task.source_prompt(
            prepared, box, points, labels, whole_box=whole_box, mask_input=previous if use_previous else None
        )
        prob, entry[2] = self.task.decode_embedded(prepared, embedding, prompt, self.device)
        return prob
