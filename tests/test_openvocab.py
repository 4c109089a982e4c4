"""Open-vocabulary segmentation: the cost-volume head, per-class BCE with an ignore index, sliding
windows, outputs (label map + legend), training through the one trainer, and H-CLIP's text-tower
energy after real training steps."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from adapt.render import legend, palette
from adapt.tasks.openvocab import (
    BACKGROUND,
    CostVolumeHead,
    OpenVocabTask,
    class_colors,
    per_class_bce,
    window_starts,
)
from tests.conftest import tiny_backbone


@dataclass
class Pair:
    image: np.ndarray
    mask: np.ndarray


@pytest.fixture(scope="module")
def task():
    return OpenVocabTask(tiny_backbone("clip"), classes=["background", "circle", "square"])


def scenes(n=3, size=96, shapes=("circle", "square"), seed=0):
    from adapt.data.synthetic import CLASS_IDS, make_dataset

    out = []
    for s in make_dataset("source", n=n, size=size, seed=seed, shapes=list(shapes)):
        remap = np.full(256, 255, np.uint8)  # dataset ids -> ["background", *shapes]
        remap[0] = 0
        for k, name in enumerate(shapes, start=1):
            remap[CLASS_IDS[name]] = k
        out.append(Pair(s.image, remap[s.semantic]))
    return out


def test_head_shapes_and_resolution():
    head = CostVolumeHead(64, hidden=32)
    patches = torch.nn.functional.normalize(torch.randn(2, 64, 8, 8), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(5, 64), dim=1)
    out = head(patches, texts, size=(100, 130))
    assert out.shape == (2, 5, 100, 130)
    # untrained, the head ranks classes exactly as the raw cosine cost does (zero-shot CLIP)
    cost = torch.einsum("bdhw,kd->bkhw", patches, texts)
    up = torch.nn.functional.interpolate(cost, size=(100, 130), mode="bilinear", align_corners=False)
    assert torch.equal(out.argmax(1), up.argmax(1))


def test_task_logits_at_input_resolution(task):
    s = task.size
    logits = task.logits(torch.randn(2, 3, s, s), task.text_features(task.vocabulary()))
    assert logits.shape == (2, 3, s, s)


def test_background_is_prepended_once(task):
    assert task.vocabulary(["sky", "road"]) == [BACKGROUND, "sky", "road"]
    assert task.vocabulary(["road", "background"]) == ["road", "background"]
    with pytest.raises(ValueError, match="at least one class"):
        task.vocabulary([" ", ""])
    with pytest.raises(ValueError, match="distinct"):
        task.vocabulary(["car", "car"])


def test_per_class_bce_ignores_ignore_index():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 16, 16))
    labels[:, :5] = 255
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    loss = per_class_bce(logits, labels)
    loss.backward()
    assert torch.all(logits.grad[:, :, :5] == 0) and torch.any(logits.grad[:, :, 5:] != 0)
    changed = logits.detach().clone()
    changed[:, :, :5] = 1e3  # anything at ignored pixels leaves the loss unchanged
    assert per_class_bce(changed, labels).item() == pytest.approx(loss.item(), rel=1e-6)
    assert per_class_bce(logits, torch.full_like(labels, 255)).item() == 0.0  # nothing to learn, no NaN
    with pytest.raises(ValueError, match="outside"):
        per_class_bce(logits, torch.full_like(labels, 7))


def test_prepare_pads_labels_with_ignore(task):
    image = np.zeros((60, 120, 3), np.uint8)
    prepared = task.prepare(image, np.ones((60, 120), np.uint8))
    assert prepared.image.shape == (3, task.size, task.size)
    assert (prepared.labels[: task.size // 2] == 1).all() and (prepared.labels[task.size // 2 + 1 :] == 255).all()


def test_window_starts_cover_and_end_flush():
    assert window_starts(128, 128, 85) == [0]
    starts = window_starts(300, 128, 85)
    assert starts[0] == 0 and starts[-1] == 300 - 128
    covered = np.zeros(300, bool)
    for s in starts:
        covered[s : s + 128] = True
    assert covered.all()


def test_sliding_windows_on_a_large_non_square_image(task, monkeypatch):
    h, w = 300, 700  # wider than tall, larger than the 128-px input: 3+ windows along x
    wh, ww = task.working_size(h, w)
    assert wh == task.size and ww > 2 * task.size
    windows = task.windows(wh, ww)
    assert len(windows) >= 3 and all(y == 0 for y, _ in windows)
    seen = []
    real = task.logits

    def spy(images, texts):
        seen.append(images.shape)
        return real(images, texts)

    monkeypatch.setattr(task, "logits", spy)
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    labels, classes, confidence = task.predict(image, ["circle", "square"])
    assert labels.shape == (h, w) and confidence.shape == (h, w) and labels.dtype == np.uint8
    assert classes == [BACKGROUND, "circle", "square"] and labels.max() < 3
    assert sum(s[0] for s in seen) == len(windows)  # every window ran, each at the model's size
    assert all(s[-2:] == (task.size, task.size) for s in seen)


def test_windows_average_without_seams(task, monkeypatch):
    """A model whose output is a smooth function of global position must come back unchanged
    by the window averaging: no step where windows overlap or end."""
    h, w = 128, 500
    offsets = iter([])

    def fake_scores(images, texts):
        nonlocal offsets
        out = []
        for _ in range(images.shape[0]):
            y, x = next(offsets)
            xs = torch.arange(x, x + task.size).float()
            ramp = (xs / w)[None, None].expand(1, task.size, task.size)
            out.append(torch.cat([ramp, 1 - ramp]))
        return torch.logit(torch.stack(out).clamp(1e-4, 1 - 1e-4))

    offsets = iter(task.windows(*task.working_size(h, w)))
    monkeypatch.setattr(task, "logits", fake_scores)
    scores = task.class_scores(np.zeros((h, w, 3), np.uint8), ["a", "b"])
    expected = torch.arange(w).float() / w
    assert torch.allclose(scores[0, 0], expected.clamp(1e-4, 1 - 1e-4), atol=1e-5)


def test_outputs_label_map_legend_and_masks(task):
    image = scenes(1, size=140)[0].image[:, :110]  # odd, non-square
    out = task.predict_outputs(image, classes=["circle", "square"])
    assert out["main"].shape == (140, 110, 3) and out["overlay"].shape == (140, 110, 3)
    assert out["index"].shape == (140, 110) and out["index"].max() <= 2
    assert out["legend"].ndim == 3 and out["legend"].shape[0] > 3 * 20
    for name, m in out.items():
        if name.startswith("mask_"):
            assert m.shape == (140, 110) and set(np.unique(m)) <= {0, 255}
    colors = class_colors([BACKGROUND, "circle", "square"])
    assert tuple(colors[0]) == (48, 48, 48) and len({tuple(c) for c in colors}) == 3
    ids = np.unique(out["index"])
    main_colors = {tuple(c) for c in out["main"].reshape(-1, 3)}
    assert main_colors == {tuple(colors[i]) for i in ids}  # the map uses exactly the legend's colours


def test_legend_draws_each_class_swatch():
    colors = palette(4)
    assert len({tuple(c) for c in colors}) == 4
    img = legend(["background", "sky", "a long class name", "road"], colors, fractions=[0.5, 0.25, 0.125, 0.125])
    assert img.shape[0] == 4 * 22 + 8
    for c in colors:  # every swatch colour appears in the picture
        assert np.any(np.all(img == c, axis=-1))
    with pytest.raises(ValueError):
        legend([], colors)


def test_evaluate_accumulates_one_confusion_matrix(task):
    data = scenes(2)
    metrics = task.evaluate(data)
    assert 0 <= metrics["miou"] <= 1 and 0 <= metrics["pixel_acc"] <= 1
    assert "iou/background" in metrics
    total = task.last_confusion.matrix.sum()
    assert total == sum(int((d.mask != 255).sum()) for d in data)


def test_evaluate_maps_ids_when_background_is_prepended():
    task = OpenVocabTask(tiny_backbone("clip"), classes=["circle", "square"])
    data = [Pair(d.image, np.where(d.mask == 0, 255, d.mask - 1).astype(np.uint8)) for d in scenes(1)]
    metrics = task.evaluate(data)
    assert task.last_confusion.num_classes == 3 and 0 <= metrics["miou"] <= 1


def test_task_refuses_sam():
    with pytest.raises(ValueError, match="CLIP"):
        OpenVocabTask(tiny_backbone("sam"))


@pytest.mark.parametrize("options", [{}, {"dcrc": False}, {"orthogonal": "both"}])
def test_hclip_training_keeps_text_tower_energy(tmp_path, options):
    from adapt.methods.hclip import hyperspherical_energy, text_tower_weights
    from adapt.train import TrainConfig, train

    data = scenes(2, size=64)
    cfg = TrainConfig(
        task="openvocab",
        backbone="tiny-clip",
        checkpoint="random",
        method="hclip",
        method_options=options,
        task_options={"classes": ["background", "circle", "square"]},
        steps=3,
        batch_size=2,
        lr=5e-2,
        head_lr=1e-3,
        warmup=1,
        checkpoint_every=0,
    )
    from adapt.backbones import build_backbone

    reference = build_backbone("tiny-clip", seed=0)  # the same random init the trainer builds
    text_before = {k: hyperspherical_energy(w) for k, w in text_tower_weights(reference.model).items()}
    summary = train(cfg, data, [], tmp_path)
    model = summary["run"].backbone.model
    text_after = {k: hyperspherical_energy(w) for k, w in text_tower_weights(model).items()}
    for k in text_before:
        assert text_after[k] == pytest.approx(text_before[k], rel=1e-4), k
    image_w = model.visual.transformer.resblocks[0].attn.in_proj_weight
    image_ref = reference.model.visual.transformer.resblocks[0].attn.in_proj_weight
    delta = (image_w - image_ref).abs().max().item()
    if options.get("orthogonal") == "both":
        assert hyperspherical_energy(image_w) == pytest.approx(hyperspherical_energy(image_ref), rel=1e-4)
    assert delta > 1e-4  # the image tower did train
    if options.get("orthogonal") != "both":
        assert hyperspherical_energy(image_w) != pytest.approx(hyperspherical_energy(image_ref), rel=1e-6)


def test_balanced_bce_does_not_reward_all_background():
    labels = torch.zeros(1, 20, 20, dtype=torch.long)
    labels[0, :2, :2] = 1  # a small object: 1% of the pixels
    all_background = torch.stack([torch.full((20, 20), 6.0), torch.full((20, 20), -6.0)])[None]
    correct = torch.where(torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).bool(), 6.0, -6.0)
    plain = per_class_bce(all_background, labels, balanced=False)
    balanced = per_class_bce(all_background, labels)
    assert plain < 0.2 and balanced > 2.0  # plain BCE barely notices the missed object; balanced does
    assert per_class_bce(correct.float(), labels) < 0.01


def test_overlay_in_row_bands_equals_one_pass():
    from adapt.render import overlay

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (301, 97, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, (301, 97)).astype(np.uint8)
    soft = rng.random((301, 97)).astype(np.float32)
    assert np.array_equal(overlay(image, labels, skip=(0,), band=7), overlay(image, labels, skip=(0,), band=10**6))
    assert np.array_equal(overlay(image, soft, band=7), overlay(image, soft, band=10**6))
    with pytest.raises(ValueError, match="labels are"):
        overlay(image, labels[:-1])
