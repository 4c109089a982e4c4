"""The interactive predictor: cached embeddings give the same masks, clicks hit the cache, LRU bound."""

import numpy as np
import pytest

from adapt.backbones import build_backbone
from adapt.predictor import InteractivePredictor, image_key
from adapt.tasks.dichotomous import DichotomousTask


@pytest.fixture(scope="module")
def task():
    return DichotomousTask(build_backbone("tiny-sam"))


def images(n, h=90, w=140):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_cached_clicks_match_the_uncached_path(task):
    (image,) = images(1)
    predictor = InteractivePredictor(task, capacity=2)
    box = [10, 5, 100, 80]
    first = predictor.predict(image, box=box)
    second = predictor.predict(image.copy(), box=box)  # same pixels, another array: a hit
    assert predictor.misses == 1 and predictor.hits == 1
    np.testing.assert_allclose(first, second)
    np.testing.assert_allclose(first, task.predict(image, box=box), atol=1e-5)
    assert first.shape == image.shape[:2]


def test_points_with_negative_clicks(task):
    (image,) = images(1)
    predictor = InteractivePredictor(task)
    prob = predictor.predict(image, points=[[20, 30], [100, 60]], labels=[1, 0])
    assert prob.shape == (90, 140) and 0 <= prob.min() <= prob.max() <= 1
    free = predictor.predict(image)
    assert free.shape == (90, 140) and predictor.hits == 1


def test_lru_bound_and_eviction_order(task):
    a, b, c = images(3)
    predictor = InteractivePredictor(task, capacity=2)
    predictor.predict(a)
    predictor.predict(b)
    predictor.predict(a)  # a is now the most recent
    predictor.predict(c)  # evicts b
    assert len(predictor) == 2 and predictor.misses == 3
    predictor.predict(a)
    assert predictor.hits == 2
    predictor.predict(b)
    assert predictor.misses == 4


def test_image_key_depends_on_content_and_shape():
    x = np.zeros((4, 6, 3), np.uint8)
    assert image_key(x) == image_key(x.copy())
    assert image_key(x) != image_key(x.reshape(6, 4, 3))
    y = x.copy()
    y[0, 0, 0] = 1
    assert image_key(x) != image_key(y)
    with pytest.raises(ValueError, match="at least one image"):
        InteractivePredictor(None, capacity=0)


def test_clicks_on_the_prompt_free_mask_reuse_the_embedding(task):
    (image,) = images(1)
    predictor = InteractivePredictor(task)
    free = predictor.predict(image)
    clicked = predictor.predict(image, points=[[70, 45]], labels=[1], whole_box=True)
    corrected = predictor.predict(image, points=[[70, 45], [5, 5]], labels=[1, 0], whole_box=True)
    assert predictor.misses == 1 and predictor.hits == 2  # one encoder run for three masks
    assert not np.allclose(free, clicked) and not np.allclose(clicked, corrected)
    prepared = task.prepare(image)
    expected = task.predict(image, points=([[70, 45]], [1]), whole_box=True, refine=False)
    np.testing.assert_allclose(clicked, expected, atol=1e-5)
    assert prepared.size == free.shape


def test_previous_logits_go_back_in_as_mask_input(task):
    (image,) = images(1)
    predictor = InteractivePredictor(task)
    first = predictor.predict(image, points=[[70, 45]], labels=[1], whole_box=True)
    again = predictor.predict(image, points=[[70, 45]], labels=[1], whole_box=True)
    with_previous = predictor.predict(image, points=[[70, 45]], labels=[1], whole_box=True, use_previous=True)
    np.testing.assert_allclose(first, again)
    assert not np.allclose(with_previous, again) and predictor.misses == 1
