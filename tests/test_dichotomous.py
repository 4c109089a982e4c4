"""The SAM dichotomous task: geometry, prompts, loss, predictions at the source resolution."""

import numpy as np
import pytest
import torch

from adapt.backbones import build_backbone
from adapt.tasks.dichotomous import DichotomousTask, bce_dice_loss


@pytest.fixture(scope="module")
def task():
    return DichotomousTask(build_backbone("tiny-sam"), prompt="box")


@pytest.mark.parametrize("h,w", [(100, 300), (257, 255), (31, 17), (600, 400)])
def test_predict_returns_the_source_size(task, h, w):
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    prob = task.predict(image)
    assert prob.shape == (h, w) and prob.dtype == np.float32
    assert 0 <= prob.min() and prob.max() <= 1
    assert task.predict(image, box=[1, 1, w // 2, h // 2]).shape == (h, w)


def test_prepare_keeps_aspect_and_marks_padding(task):
    image = np.zeros((100, 200, 3), np.uint8)
    mask = np.zeros((100, 200), np.uint8)
    mask[20:40, 50:150] = 1
    p = task.prepare(image, mask)
    assert p.scale == pytest.approx(256 / 200)
    assert p.valid[:128].all() and not p.valid[129:].any()
    box = task.box_of(p.mask)
    assert box.tolist() == pytest.approx([50 * 1.28, 20 * 1.28, 150 * 1.28 - 1, 40 * 1.28 - 1], abs=2)


def test_box_jitter_is_bounded_and_absent_at_eval(task):
    image = np.zeros((256, 256, 3), np.uint8)
    mask = np.zeros((256, 256), np.uint8)
    mask[100:150, 80:200] = 1
    p = task.prepare(image, mask)
    exact = task.box_of(p.mask)
    rng = np.random.default_rng(0)
    shifts = torch.stack([task.sample_prompt(p, rng, "box")["box"] - exact for _ in range(200)])
    assert shifts.abs().max() < 20 * 256 / 1024 + 1e-4 and shifts.abs().max() > 1
    assert torch.equal(task.eval_prompt(p)["box"], exact)


def test_point_prompts_fall_inside_the_mask(task):
    mask = np.zeros((256, 256), np.uint8)
    mask[10:30, 200:240] = 1
    p = task.prepare(np.zeros((256, 256, 3), np.uint8), mask)
    coords, labels = task.sample_prompt(p, np.random.default_rng(1), "points")["points"]
    assert all(mask[int(y), int(x)] for x, y in coords.tolist()) and labels.tolist() == [1, 1, 1]


def test_prompt_free_mode_uses_the_image_box(task):
    p = task.prepare(np.zeros((50, 100, 3), np.uint8), np.ones((50, 100), np.uint8))
    assert task.sample_prompt(p, np.random.default_rng(0), "none")["box"].tolist() == [0, 0, 255, 127]


def test_soft_dice_loss_has_gradients_and_ignores_padding():
    logits = torch.zeros(1, 4, 4, requires_grad=True)
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1
    valid = torch.ones(1, 4, 4)
    valid[0, 3] = 0
    loss = bce_dice_loss(logits, target, valid)
    loss.backward()
    assert logits.grad[0, 3].abs().sum() == 0 and logits.grad[0, :3].abs().sum() > 0
    perfect = bce_dice_loss(torch.where(target > 0, 20.0, -20.0), target)
    assert perfect < 1e-3


def test_wrong_backbone_or_prompt():
    with pytest.raises(ValueError, match="runs on SAM backbones"):
        DichotomousTask(build_backbone("tiny-clip"))
    with pytest.raises(ValueError, match="prompt must be one of"):
        DichotomousTask(build_backbone("tiny-sam"), prompt="scribble")
