"""The embedding cache (adapt/embedding_cache.py): when the image encoder is frozen the trainer
computes each embedding once; decoder gradients equal the uncached ones for a step without
augmentation; views are fixed per image; entries spill to disk past the budget; an encoder that
trains is refused; the summary says what was cached."""

import importlib.util

import numpy as np
import pytest
import torch
from test_train import config, samples

from adapt.embedding_cache import EmbeddingCache, EncoderTrainsError, content_key
from adapt.train import Run, _step_gradients, train


def gradients(cfg, data) -> tuple[list, EmbeddingCache | None]:
    """The gradients of the first step's loss, and the cache the run used (None: none)."""
    run = Run(cfg)
    cache = run.start_cache(data, None)
    try:
        run.backbone.model.train()
        _step_gradients(run, data, lambda event: None)
        return [p.grad.clone() for g in run.groups for p in g["params"] if p.grad is not None], cache
    finally:
        run.stop_cache(cache)


@pytest.mark.parametrize("backbone", ["tiny-sam", "tiny-mobile-sam"])
def test_cached_and_uncached_decoder_gradients_are_equal_without_augmentation(backbone):
    data = samples(3)
    base = config(backbone=backbone, method="decoder", augment=False, batch_size=2)
    cached, cache = gradients(base, data)
    assert cache is not None and cache.computed == 2  # two images drawn, each encoded once
    uncached, none = gradients(config(**{**base.__dict__, "embedding_cache": False}), data)
    assert none is None
    assert len(cached) == len(uncached) > 0
    for a, b in zip(cached, uncached, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_cache_applies_only_when_the_encoder_is_frozen():
    data = samples(2)
    assert Run(config(method="decoder")).encoder_frozen()
    for method in ("parser", "lora", "full"):
        assert not Run(config(method=method)).encoder_frozen(), method
    # SAM 2's and SAM 3's decoder method trains the mask decoder's conv_s0 / conv_s1, which encode applies
    assert not Run(config(backbone="tiny-sam2", method="decoder")).encoder_frozen()
    if importlib.util.find_spec("sam3") is not None:
        assert not Run(config(backbone="tiny-sam3", method="decoder")).encoder_frozen()
    run = Run(config(method="decoder", embedding_cache=False))
    assert run.start_cache(data, None) is None and run.task.embedding_cache is None


def test_views_are_fixed_and_each_is_encoded_once(tmp_path):
    data, held = samples(3), samples(2, seed=1)
    out = train(config(method="decoder", steps=12, cache_views=2, eval_every=4), data, held, tmp_path / "run")
    stats = out["embedding_cache"]
    # at most 3 images x 2 views for training, plus the 2 held-out images once (5 evaluations read them)
    assert stats["computed"] <= 3 * 2 + 2 and stats["hits"] > stats["computed"], stats
    assert not (tmp_path / "run" / ".embeddings").exists()  # nothing left behind
    assert out["run"].task.embedding_cache is None  # detached after the run
    uncached = train(config(method="parser", steps=2), data, held)
    assert uncached["embedding_cache"] is None


def test_the_cache_spills_to_disk_and_reads_back(tmp_path):
    encoder = torch.nn.Conv2d(3, 4, 3, padding=1).requires_grad_(False)
    cache = EmbeddingCache(encoder, ram_bytes=2 * 4 * 8 * 8 * 4, spill_dir=tmp_path / "spill")
    images = [torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    first, keys = cache.embeddings(images)
    assert cache.stats()["in_memory"] == 2 and cache.stats()["spilled"] == 3
    assert len(list((tmp_path / "spill").glob("*.pt"))) == 3
    again, _ = cache.embeddings([None] * 5, keys)
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(first, encoder(torch.stack(images)))
    assert cache.stats()["computed"] == 5 and cache.stats()["hits"] == 5
    assert content_key(images[0]) == keys[0] and content_key(images[0] + 1e-3) != keys[0]
    cache.close()
    assert not (tmp_path / "spill").exists()


def test_an_encoder_that_trains_is_refused():
    cache = EmbeddingCache(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(EncoderTrainsError, match="frozen"):
        cache.embeddings([torch.zeros(3, 8, 8)])
    assert cache.stats()["in_memory"] == 0


def test_a_resumed_cached_run_repeats_the_uninterrupted_one(tmp_path):
    data, held = samples(3), samples(1, seed=1)
    cfg = config(method="decoder", steps=4, checkpoint_every=2)
    full = train(cfg, data, held, tmp_path / "full")
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 2

    train(cfg, data, held, tmp_path / "part", should_stop=stop)
    resumed = train(cfg, data, held, tmp_path / "part", resume=True)
    a = full["run"].handle.state_dict()
    b = resumed["run"].handle.state_dict()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-6)
