"""Image embeddings computed once when the image encoder is frozen.

When nothing that the image encoder's output depends on trains (the `decoder` method: only SAM's
mask decoder learns), every training step would run the whole encoder again on an image it has
already seen, to get the same embedding. The trainer then keeps each embedding once and trains the
decoder from the cache; the frozen model's scores, the evaluations during training and the final
scores read from the same cache (an evaluated image is the same tensor every time).

    cache = EmbeddingCache(task.encode, ram_bytes=2 << 30, spill_dir=out / "embeddings")
    embeddings, keys = cache.embeddings(images)   # prepared images (3, S, S): each computed once
    views = ViewBank(samples, task, views=4, seed=0, augment=True, cache=cache)
    prepared = views.get(i, v)                # the v-th fixed view of sample i, its embedding cached

How augmentation and the cache meet: with augmentation on, each training image has a fixed set of
`views` augmented versions (view v augmented with a generator seeded by (seed, image, v): every
view is an augmentation draw, as an uncached step's image is, so the cache does not change what
the decoder sees, only how many different draws), and a step draws one view per image from the
step's generator. A
view's embedding and prepared tensors are computed the first time the view is drawn and reused
after. A fresh augmentation every step would make every image new to the encoder and the cache
useless; a fixed bank keeps most of augmentation's variety (the prompts, box jitter and clicks are
still drawn afresh every step from each view's mask) at a cost of `views` encoder passes per image
instead of one per step. Four views: a 200-step run of batch 2 on 10 images runs the encoder 40
times instead of 400 (few-shot Dice of cached against uncached decoder training: bench/fast_path.py
--parts dice, docs/benchmarks.md). Everything is a
function of (seed, image, view, step), so a resumed run repeats an uninterrupted one.

Memory: entries are kept in RAM (on the CPU) up to `ram_bytes`, then written to `spill_dir`, one
file per entry, and read back when used; `close()` removes the spilled files. Keys are content
hashes of the prepared image tensors, so equal images share an entry and a different image can
never be served a wrong embedding. Every entry is computed with gradients enabled and refused if
its result requires a gradient: a cache in front of an encoder that trains would silently freeze
it, so that is an error, not a fallback.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from adapt.data.augment import augment
from adapt.files import atomic_path

DEFAULT_VIEWS = 4  # fixed augmented views per training image
DEFAULT_RAM_BYTES = 2 << 30  # embeddings held in memory before spilling to disk


def content_key(image: torch.Tensor) -> str:
    """A hash of a prepared image tensor's shape, dtype and values."""
    t = image.detach().to("cpu").contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(t.shape)}{t.dtype}".encode())
    h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def _tensors(embedding) -> tuple[torch.Tensor, ...]:
    """An embedding as a flat tuple of tensors (a SAM tensor, or SAM 2's feature pyramid)."""
    return (embedding,) if isinstance(embedding, torch.Tensor) else embedding.tensors()


def _rebuilt(like, tensors: tuple[torch.Tensor, ...]):
    return tensors[0] if isinstance(like, torch.Tensor) else type(like).from_tensors(tensors)


def join(embeddings: list):
    """One batch from single-image embeddings (tensors or objects with tensors / from_tensors)."""
    parts = [_tensors(e) for e in embeddings]
    return _rebuilt(embeddings[0], tuple(torch.cat(ts) for ts in zip(*parts, strict=True)))


class EncoderTrainsError(RuntimeError):
    """The embedding cache was put in front of an encoder whose output depends on trained weights."""


class EmbeddingCache:
    """Content-keyed embeddings of a frozen encoder, in RAM up to a budget, then on disk."""

    def __init__(self, encode: Callable, ram_bytes: int = DEFAULT_RAM_BYTES, spill_dir: str | Path | None = None):
        self.encode = encode
        self.ram_bytes = ram_bytes
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.memory: dict[str, object] = {}  # key -> single-image embedding (CPU)
        self.spilled: dict[str, tuple[Path, object]] = {}  # key -> (file, an embedding of the same kind)
        self.held = 0
        self.computed = self.hits = 0

    def __contains__(self, key: str) -> bool:
        return key in self.memory or key in self.spilled

    def stats(self) -> dict:
        return {
            "computed": self.computed,
            "hits": self.hits,
            "in_memory": len(self.memory),
            "spilled": len(self.spilled),
        }

    def _compute(self, images: torch.Tensor) -> list:
        with torch.enable_grad():  # a frozen encoder builds no graph: anything else is refused
            out = self.encode(images)
        if any(t.requires_grad for t in _tensors(out)):
            raise EncoderTrainsError(
                "the image embedding depends on weights that train: the embedding cache applies only "
                "when the image encoder is frozen (train with --no-embedding-cache)"
            )
        self.computed += len(images)
        return [_rebuilt(out, tuple(t[i : i + 1].detach().cpu() for t in _tensors(out))) for i in range(len(images))]

    def _store(self, key: str, embedding) -> None:
        tensors = _tensors(embedding)
        size = sum(t.numel() * t.element_size() for t in tensors)
        if self.held + size <= self.ram_bytes or self.spill_dir is None:
            self.memory[key] = embedding
            self.held += size
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"{key}.pt"
        with atomic_path(path) as tmp:
            torch.save(list(tensors), tmp)
        self.spilled[key] = (path, _rebuilt(embedding, tuple(t[:0] for t in tensors)))  # the kind, no values

    def _load(self, key: str):
        if key in self.memory:
            return self.memory[key]
        path, like = self.spilled[key]
        return _rebuilt(like, tuple(torch.load(path, weights_only=True)))

    def ensure(self, images: list, keys: list[str | None] | None = None, device="cpu") -> list[str]:
        """The keys of a batch of prepared images (B of (3, S, S); None where the key is given and
        cached); those not cached yet are computed in one encoder call on `device`."""
        keys = [k or content_key(im) for k, im in zip(keys or [None] * len(images), images, strict=True)]
        missing = [i for i, k in enumerate(keys) if k not in self]
        self.hits += len(keys) - len(missing)
        if missing:
            batch = torch.stack([images[i] for i in missing]).to(device)
            for i, emb in zip(missing, self._compute(batch), strict=True):
                self._store(keys[i], emb)
        return keys

    def embeddings(self, images: list, keys: list[str | None] | None = None, device="cpu"):
        """(the batch's embeddings on `device`, their keys): `ensure`, then read back."""
        keys = self.ensure(images, keys, device)
        return join([self._load(k) for k in keys]).to(device), keys

    def close(self) -> None:
        """Forget every entry and remove the spilled files."""
        self.memory.clear()
        self.spilled.clear()
        self.held = 0
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)


class ViewBank:
    """A fixed set of `views` versions of each training sample, each augmented with a generator
    seeded by (seed, sample, view) (without augmentation, one: the sample itself), each prepared
    once, its image embedding cached and its image tensor then dropped."""

    def __init__(self, samples, task, views: int, seed: int, augment: bool, cache: EmbeddingCache, device="cpu"):
        self.samples, self.task, self.seed, self.cache, self.device = samples, task, seed, cache, device
        self.augment = augment
        self.views = views if augment else 1
        self.prepared: dict[tuple[int, int], object] = {}

    def draw(self, rng: np.random.Generator) -> int:
        """The view a step uses for one image (no draw without augmentation)."""
        return int(rng.integers(self.views)) if self.views > 1 else 0

    def get(self, index: int, view: int):
        if (index, view) not in self.prepared:
            image, mask = self.samples[index].image, self.samples[index].mask
            if self.augment:  # every view an augmentation draw, as the uncached steps' images are
                rng = np.random.default_rng([self.seed, index, view, 0x5EED])
                image, mask = augment(image, mask, rng, **self.task.augment_options)
            p = self.task.prepare(image, mask)
            (key,) = self.cache.ensure([p.image], device=self.device)
            p.key, p.image = key, None  # the embedding stands in for the image from now on
            self.prepared[(index, view)] = p
        return self.prepared[(index, view)]
