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


# --- full resolution: refinement, outputs, clicks ------------------------------------------------


def scene_image(h, w, seed=0):
    """A smooth disk on a gradient: a mask with a boundary to refine, cheap at any size."""
    yy, xx = np.mgrid[0:h, 0:w]
    inside = np.hypot((yy - h / 2) / h, (xx - w / 2) / w) < 0.3
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = (xx * 200 // max(w, 1)).astype(np.uint8)
    image[inside] = (230, 200, 40)
    return image


@pytest.mark.parametrize("h,w", [(333, 517), (1001, 777)])
def test_outputs_at_the_source_size_with_refinement(task, h, w):
    image = scene_image(h, w)
    out = task.predict_outputs(image, refine=True)
    assert set(out) == {"main", "alpha", "cutout", "overlay"}
    assert out["main"].shape == (h, w) and out["main"].dtype == np.uint8
    assert set(np.unique(out["main"])) <= {0, 255}
    assert out["alpha"].shape == (h, w) and out["overlay"].shape == (h, w, 3)
    cut = out["cutout"]
    assert cut.shape == (h, w, 4) and cut.dtype == np.uint8
    np.testing.assert_array_equal(cut[..., :3], image)  # the photo untouched, the alpha is the soft mask
    np.testing.assert_array_equal(cut[..., 3], out["alpha"])
    assert (cut[..., 3][out["main"] == 0] <= 127).all() and (cut[..., 3][out["main"] == 255] >= 128).all()


def test_refinement_is_automatic_for_large_images_only(task):
    small = scene_image(200, 300)
    assert not task.should_refine(small.shape) and task.should_refine((1000, 600))
    np.testing.assert_array_equal(task.predict(small), task.predict(small, refine=False))
    large = scene_image(700, 900)
    prob, plan = task.predict_refined(large)
    coarse, none = task.predict_refined(large, refine=False)
    assert none is None and plan is not None and plan.boxes and 1 <= len(plan.boxes) <= 32
    assert prob.shape == coarse.shape == (700, 900)
    from adapt.highres import RefineConfig

    untrusting = task.predict(large, config=RefineConfig(trust=False))  # random weights: crops disagree
    assert not np.array_equal(untrusting, coarse)


def test_clicks_refine_the_prompt_free_mask(task):
    image = scene_image(300, 400)
    free = task.predict(image)
    clicked = task.predict(image, points=([[200, 150], [20, 20]], [1, 0]), whole_box=True)
    assert clicked.shape == free.shape and not np.allclose(clicked, free)
    both = task.predict(image, box=[100, 50, 300, 250], points=([[200, 150]], [1]))
    assert both.shape == (300, 400)


def test_click_training_prompts(task):
    mask = np.zeros((200, 200), np.uint8)
    mask[50:120, 60:150] = 1
    p = task.prepare(np.zeros((200, 200, 3), np.uint8), mask)
    rng = np.random.default_rng(0)
    prompts = [task.sample_prompt(p, rng, "clicks") for _ in range(40)]
    assert all(q["box"].tolist() == [0, 0, 255, 255] for q in prompts)  # always the whole image
    with_points = [q for q in prompts if "points" in q]
    assert 5 < len(with_points) < 35
    for q in with_points:
        coords, labels = q["points"]
        assert 1 <= len(labels) <= 3
        for (x, y), label in zip(coords.tolist(), labels.tolist()):
            assert bool(p.mask[int(y), int(x)]) == bool(label)
    loss = DichotomousTask(task.backbone, prompt="clicks").loss([p, p], rng, "cpu")
    assert torch.isfinite(loss)


def test_mask_input_reaches_the_decoder(task):
    image = scene_image(256, 256)
    prepared = task.prepare(image)
    embedding = task.backbone.model.image_encoder(prepared.image[None])
    prompt = task.source_prompt(prepared)
    prob, low = task.decode_embedded(prepared, embedding, prompt)
    assert low.shape == (1, 1, 64, 64)
    again, _ = task.decode_embedded(prepared, embedding, task.source_prompt(prepared, mask_input=low))
    assert again.shape == prob.shape and not np.allclose(again, prob)


def test_cli_predict_writes_a_4000_by_3000_mask(tmp_path, capsys):
    from PIL import Image

    from adapt.__main__ import main
    from adapt.export import save_adapter
    from adapt.methods import attach
    from adapt.weights import resolve_checkpoint

    backbone = build_backbone("tiny-sam", checkpoint=resolve_checkpoint("tiny-sam", None))
    save_adapter(attach(backbone, "parser"), tmp_path / "adapter", task="dichotomous")
    Image.fromarray(scene_image(3000, 4000)).save(tmp_path / "photo.png", compress_level=1)
    assert (
        main(
            [
                "predict",
                "--task",
                "dichotomous",
                "--adapter",
                str(tmp_path / "adapter"),
                "--image",
                str(tmp_path / "photo.png"),
                "--out",
                str(tmp_path / "mask.png"),
                "--box",
                "780,580,3220,2420",
            ]
        )
        == 0
    )
    assert "4000x3000" in capsys.readouterr().out
    mask = np.array(Image.open(tmp_path / "mask.png"))
    assert mask.shape == (3000, 4000) and set(np.unique(mask)) <= {0, 255}
    yy, xx = np.mgrid[0:3000:50, 0:4000:50]
    inside = np.hypot((yy - 1500) / 3000, (xx - 2000) / 4000) < 0.15
    assert (mask[::50, ::50][inside] == 255).mean() > 0.9  # the disk's core is found (the frozen tiny-sam)
