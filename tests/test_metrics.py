import numpy as np
import py_sod_metrics as sod
import pytest
import torch

from adapt.metrics import (
    ConfusionMatrix,
    DISMetrics,
    as_mask,
    boundary_f,
    boundary_scores,
    dice,
    dice_batch,
    harmonic_iou,
    iou,
    iou_batch,
    mask_boundary,
)


def square(size=64, lo=16, hi=48):
    m = np.zeros((size, size), bool)
    m[lo:hi, lo:hi] = True
    return m


def disk(size=96, center=(40, 48), radius=25):
    yy, xx = np.mgrid[:size, :size]
    return (xx - center[0]) ** 2 + (yy - center[1]) ** 2 <= radius**2


# ---------------------------------------------------------------------------------------------- IoU / Dice


def test_iou_dice_exact_fractions():
    pred = np.zeros((4, 4), bool)
    gt = np.zeros((4, 4), bool)
    pred[0, :4] = True  # 4 pixels
    gt[0, 2:4] = True
    gt[1, 0:2] = True  # 4 pixels, 2 shared
    assert iou(pred, gt) == 2 / 6
    assert dice(pred, gt) == 4 / 8
    pred3 = np.zeros((3, 3), int)
    gt3 = np.zeros((3, 3), int)
    pred3[0] = 1  # 3 px
    gt3[0, 0] = 1  # 1 px inside
    assert iou(pred3, gt3) == 1 / 3
    assert dice(pred3, gt3) == 2 / 4


def test_iou_dice_edge_cases():
    empty = np.zeros((8, 8), bool)
    gt = square(8, 2, 6)
    assert iou(empty, empty) == 1.0 and dice(empty, empty) == 1.0
    assert iou(gt, gt) == 1.0 and dice(gt, gt) == 1.0
    assert iou(~gt, gt) == 0.0 and dice(~gt, gt) == 0.0
    assert iou(empty, gt) == 0.0 and dice(gt, empty) == 0.0


def test_mask_encodings_agree_and_probabilities_are_refused():
    gt = square()
    pred = np.roll(gt, 3, axis=0)
    ref = iou(pred, gt)
    for enc in (
        lambda m: m,
        lambda m: m.astype(np.uint8),
        lambda m: m.astype(np.uint8) * 255,
        lambda m: m.astype(np.float32),
        lambda m: torch.from_numpy(m),
    ):
        assert iou(enc(pred), enc(gt)) == ref
    with pytest.raises(ValueError, match="binary mask"):
        iou(np.full((4, 4), 0.7), np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="binary mask"):
        as_mask(np.array([0, 1, 255]))  # 255 next to 1 is an ignore label, not foreground
    with pytest.raises(ValueError, match="shape"):
        iou(np.ones((4, 4), bool), np.ones((4, 5), bool))


def test_batched_helpers():
    gt = np.stack([square(), np.zeros((64, 64), bool), square()])
    pred = np.stack([square(), np.zeros((64, 64), bool), ~square()])
    assert iou_batch(pred, gt).tolist() == [1.0, 1.0, 0.0]
    assert dice_batch(pred, gt).tolist() == [1.0, 1.0, 0.0]
    shifted = np.stack([np.roll(square(), k, axis=1) for k in (0, 2, 5)])
    ref = np.stack([square()] * 3)
    np.testing.assert_allclose(iou_batch(shifted, ref), [iou(s, r) for s, r in zip(shifted, ref)])
    np.testing.assert_allclose(dice_batch(shifted, ref), [dice(s, r) for s, r in zip(shifted, ref)])


# ---------------------------------------------------------------------------------------------- boundary F


def test_boundary_is_inner_edge_not_the_frame():
    m = np.zeros((10, 10), bool)
    m[:, :5] = True  # touches the frame on three sides
    b = mask_boundary(m)
    assert b[:, 4].all() and np.count_nonzero(b) == 10


def test_boundary_f_tolerates_small_shift():
    gt = square(96, 20, 70)
    shifted = np.roll(gt, 1, axis=1)
    assert boundary_f(shifted, gt, tolerance=2) == pytest.approx(1.0)
    assert boundary_f(shifted, gt, tolerance=0) < 0.6  # exact matching does see the shift
    assert boundary_f(np.roll(gt, 5, axis=1), gt, tolerance=2) < 0.6


def test_boundary_f_penalises_missing_thin_part_more_than_iou():
    body = disk()
    gt = body.copy()
    gt[47:49, 65:92] = True  # a thin 2-px appendage, few pixels but long boundary
    p, r, f = boundary_scores(body, gt, tolerance=2)
    assert p == pytest.approx(1.0)  # every predicted edge is a true edge
    assert r < 0.85  # but the appendage's edges are missed
    assert 1 - iou(body, gt) < 0.03
    assert (1 - f) > 3 * (1 - iou(body, gt))


def test_boundary_f_empty_cases():
    empty = np.zeros((16, 16), bool)
    assert boundary_f(empty, empty) == 1.0
    assert boundary_f(empty, square(16, 4, 12)) == 0.0


# ---------------------------------------------------------------------------------------------- DIS metrics


def test_dis_perfect_prediction():
    gt = square()
    m = DISMetrics()
    m.step(gt.astype(np.float32), gt)
    r = m.results()
    assert r["maxF"] == pytest.approx(1.0)
    assert r["wFm"] == pytest.approx(1.0)
    assert r["Sm"] == pytest.approx(1.0, abs=1e-9)
    assert r["MAE"] == 0.0
    assert r["HCE"] == 0.0
    assert r["boundaryF"] == 1.0
    assert r["meanEm"] > 0.99 and r["n"] == 1


def test_dis_gt_encodings_identical_and_raw_library_would_be_wrong():
    gt = square()
    rng = np.random.default_rng(0)
    prob = np.clip(np.where(np.roll(gt, 2, axis=0), 0.8, 0.1) + rng.normal(0, 0.05, gt.shape), 0, 1)
    results = []
    for enc in (gt, gt.astype(np.uint8), gt.astype(np.uint8) * 255, torch.from_numpy(gt)):
        m = DISMetrics()
        m.step(prob, enc)
        results.append(m.results())
    assert all(r == results[0] for r in results[1:])
    # pysodmetrics binarises gt with `gt > 128`: a 0/1 ground truth fed to it directly is all background
    raw = sod.MAE()
    raw.step(gt.astype(np.uint8) * 255, gt.astype(np.uint8))  # perfect prediction, 0/1 gt
    assert raw.get_results()["mae"] == pytest.approx(gt.mean())  # not 0
    good = DISMetrics()
    good.step(gt.astype(float), gt.astype(np.uint8))
    assert good.results()["MAE"] == 0.0


def test_dis_worse_prediction_scores_worse_and_dataset_mean():
    gt = square()
    m = DISMetrics(hce=False)
    m.step(gt.astype(float), gt)
    m.step(np.roll(gt, 6, axis=1).astype(float) * 0.9, gt)
    r = m.results()
    assert "HCE" not in r and r["n"] == 2 and len(m) == 2
    assert 0.5 < r["maxF"] < 1 and 0 < r["MAE"] < 0.1 and r["boundaryF"] < 1
    worse = DISMetrics(hce=True)
    worse.step(np.roll(gt, 6, axis=1).astype(float), gt)
    assert worse.results()["HCE"] > 0


def test_dis_minmax_protocol():
    # The standard protocol min-max stretches each map: a low-contrast but perfectly ordered map
    # scores like a perfect one; minmax=False scores the probabilities themselves.
    gt = square()
    low_contrast = np.where(gt, 0.6, 0.2)
    standard, raw = DISMetrics(), DISMetrics(minmax=False)
    standard.step(low_contrast, gt)
    raw.step(low_contrast, gt)
    assert standard.results()["MAE"] == pytest.approx(0.0)
    assert raw.results()["MAE"] == pytest.approx(0.2 * (1 - gt.mean()) + 0.4 * gt.mean())


def test_dis_input_checks():
    m = DISMetrics()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.step(np.full((8, 8), 3.0), np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="shape"):
        m.step(np.zeros((8, 8)), np.zeros((8, 9), bool))
    with pytest.raises(ValueError, match="no images"):
        m.results()
    m.step(np.zeros((1, 8, 8)), np.zeros((8, 8), bool))  # a leading singleton axis is fine


def test_dis_empty_ground_truth_conventions():
    # pysodmetrics' conventions for an empty ground truth with a perfect (empty) prediction
    m = DISMetrics()
    m.step(np.zeros((32, 32)), np.zeros((32, 32), bool))
    r = m.results()
    assert r["MAE"] == 0.0 and r["Sm"] == 1.0 and r["boundaryF"] == 1.0
    assert r["wFm"] == 0.0 and r["maxF"] == 0.0  # F-measures are 0 by its definition, not 1


# ---------------------------------------------------------------------------------------------- mIoU


def test_confusion_matrix_miou_with_ignore():
    cm = ConfusionMatrix(num_classes=4, ignore_index=255)
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 3, 2]])  # predictions under ignore pixels do not count
    cm.update(pred, gt)
    assert cm.matrix.sum() == 6
    ious = cm.iou_per_class()
    assert ious[0] == pytest.approx(1 / 3)  # tp 1, fp 1 (a 2 predicted 0), fn 1
    assert ious[1] == pytest.approx(2 / 3)  # tp 2, fp 1
    assert ious[2] == pytest.approx(1 / 2)  # tp 1, fn 1
    assert np.isnan(ious[3])  # absent from gt and (counted) predictions
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert cm.miou(classes=[1, 2]) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert np.isnan(cm.miou(classes=[3]))
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)


def test_confusion_matrix_accumulates_over_the_set():
    cm = ConfusionMatrix(2, ignore_index=None)
    big_gt = np.ones((10, 10), int)
    big_pred = big_gt.copy()
    big_pred[0, :] = 0
    small_gt = np.zeros((2, 2), int)
    small_gt[0, 0] = 1
    small_pred = np.zeros((2, 2), int)  # misses the only foreground pixel
    cm.update(torch.from_numpy(big_pred), torch.from_numpy(big_gt))
    cm.update(small_pred, small_gt)
    assert cm.iou_per_class()[1] == pytest.approx(90 / 101)  # pooled, not mean of 0.9 and 0.0
    # a class predicted but never present gets IoU 0 (it is not NaN)
    cm2 = ConfusionMatrix(3)
    cm2.update(np.array([2, 0]), np.array([0, 0]))
    assert cm2.iou_per_class()[2] == 0.0 and np.isnan(cm2.iou_per_class()[1])
    total = ConfusionMatrix(2, ignore_index=None)
    total += cm
    assert (total.matrix == cm.matrix).all()


def test_confusion_matrix_rejects_bad_labels():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.array([0, 1]), np.array([0, 7]))
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.array([0, 5]), np.array([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        cm.update(np.array([0.5, 1.0]), np.array([0, 1]))
    cm.update(np.array([0, 1]), np.array([0, 255]))  # ignore label is fine


def test_harmonic_iou():
    assert harmonic_iou(0.6, 0.3) == pytest.approx(0.4)
    assert harmonic_iou(0.0, 0.0) == 0.0
    assert np.isnan(harmonic_iou(float("nan"), 0.5))
