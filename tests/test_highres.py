"""Crop refinement (adapt.highres) with fake predictors: plans, seam-free blending, bounded memory."""

import itertools
import tracemalloc

import numpy as np
import pytest

from adapt.highres import RefineConfig, crop_window, grid_starts, plan_crops, refine


def grid(h, w):
    return np.mgrid[0:h, 0:w].astype(np.float32)


def max_step(a: np.ndarray) -> float:
    """The largest difference between neighbouring pixels."""
    return float(max(np.abs(np.diff(a, axis=0)).max(), np.abs(np.diff(a, axis=1)).max()))


def smooth(yy, xx):
    return 0.5 + 0.4 * np.sin((xx + yy) / 97.0)


def soft_disk(h, w, r, width):
    yy, xx = grid(h, w)
    d = np.hypot(yy - h / 2, xx - w / 2) - r
    return (1 / (1 + np.exp(np.clip(d / width, -60, 60)))).astype(np.float32)


def test_smooth_crops_come_back_without_a_step_at_crop_borders():
    H, W = 1000, 1301
    yy, xx = grid(H, W)
    coarse = (0.5 + 0.3 * np.sin(xx / 150) * np.cos(yy / 200)).astype(np.float32)  # uncertain everywhere
    truth = smooth(yy, xx)
    biases = {}

    def predict(boxes):  # a smooth function of global coordinates, each crop off by its own bias
        out = []
        for y0, x0, y1, x1 in boxes:
            biases[(y0, x0, y1, x1)] = 0.05 * np.sin(7.0 * len(biases))
            out.append(smooth(yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]) + biases[(y0, x0, y1, x1)])
        return out

    blend_only = RefineConfig(trust=False)  # the blending alone (crop_trust has its own test)
    out, plan = refine(coarse, predict, 256, blend_only)
    assert len(plan.boxes) == plan.grid > 4  # every crop chosen: the whole map is uncertain
    spread = max(biases.values()) - min(biases.values())
    assert spread > 0.05  # pasting the crops side by side would leave steps this tall
    assert max_step(out) < max_step(truth) + 0.003
    for y0, x0, y1, x1 in plan.boxes:  # right across every crop border inside the image
        for x in (x0, x1):
            if 0 < x < W:
                assert np.abs(out[y0:y1, x] - out[y0:y1, x - 1]).max() < max_step(truth) + 0.003
        for y in (y0, y1):
            if 0 < y < H:
                assert np.abs(out[y, x0:x1] - out[y - 1, x0:x1]).max() < max_step(truth) + 0.003

    exact, _ = refine(
        coarse, lambda boxes: [smooth(yy[a:c, b:d], xx[a:c, b:d]) for a, b, c, d in boxes], 256, blend_only
    )
    np.testing.assert_allclose(exact, truth, atol=1e-5)  # crops that agree are reproduced exactly


def test_refined_band_fades_into_the_coarse_map():
    coarse = soft_disk(900, 1100, r=300, width=25)
    out, plan = refine(
        coarse,
        lambda boxes: [np.full((c - a, d - b), 0.3, np.float32) for a, b, c, d in boxes],
        256,
        RefineConfig(zoom=4, trust=False),
    )
    assert plan.boxes and 0 < plan.band_fraction < 1
    assert out[450, 550] == pytest.approx(coarse[450, 550])  # the confident centre keeps the coarse value
    assert out[0, 0] == pytest.approx(coarse[0, 0])
    ring = np.abs(soft_disk(900, 1100, r=300, width=25) - 0.5) < 0.3  # well inside the band
    np.testing.assert_allclose(out[ring], 0.3, atol=1e-4)
    # the hand-over spreads over the feather: no step taller than the coarse map's own slope allows
    assert max_step(out) < max_step(coarse) + 0.7 / 40


def test_band_only_false_trusts_crops_everywhere_they_cover():
    coarse = soft_disk(700, 700, r=200, width=400)  # uncertain everywhere
    out, plan = refine(
        coarse,
        lambda boxes: [np.full((c - a, d - b), 0.3, np.float32) for a, b, c, d in boxes],
        256,
        RefineConfig(zoom=4, band_only=False, trust=False),
    )
    assert len(plan.boxes) == plan.grid
    np.testing.assert_allclose(out, 0.3, atol=1e-5)


@pytest.mark.parametrize("h,w", [(1001, 777), (513, 2049), (4001, 2999)])
def test_crop_plans_fit_the_image_and_the_budget(h, w):
    coarse = soft_disk(h, w, r=min(h, w) / 3, width=4)
    cfg = RefineConfig()
    plan = plan_crops(coarse, 256, cfg)
    assert 0 < len(plan.boxes) <= cfg.max_crops
    assert plan.side >= 256 and plan.side >= max(h, w) / cfg.zoom
    shapes = {(c - a, d - b) for a, b, c, d in plan.boxes}
    assert len(shapes) == 1  # one crop size: the crops batch together
    for a, b, c, d in plan.boxes:
        assert 0 <= a < c <= h and 0 <= b < d <= w
    covered = np.zeros((h, w), bool)
    for a, b, c, d in plan.boxes:
        covered[a:c, b:d] = True
    assert covered[np.abs(coarse - 0.5) < 0.4].all()  # every uncertain pixel is refined


def test_a_tight_budget_grows_the_crops():
    coarse = soft_disk(2000, 2000, r=700, width=3)
    free = plan_crops(coarse, 256, RefineConfig(max_crops=1000))
    tight = plan_crops(coarse, 256, RefineConfig(max_crops=8))
    assert len(tight.boxes) <= 8 < len(free.boxes) and tight.side > free.side


def test_crops_that_lose_the_shape_are_not_trusted():
    coarse = soft_disk(1000, 1000, r=300, width=8)
    lost, plan = refine(coarse, lambda boxes: [np.zeros((c - a, d - b), np.float32) for a, b, c, d in boxes], 256)
    assert plan.boxes
    np.testing.assert_allclose(lost, coarse, atol=1e-6)  # every crop contradicts the coarse shape

    def hairs(boxes):  # the coarse shape, sharpened, plus 2-px lines the coarse map never saw
        out = []
        for a, b, c, d in boxes:
            p = (coarse[a:c, b:d] > 0.5).astype(np.float32)
            p[::40, :] = np.maximum(p[::40, :], 1.0)
            p[1::40, :] = np.maximum(p[1::40, :], 1.0)
            out.append(p)
        return out

    detailed, _ = refine(coarse, hairs, 256)
    rows = np.zeros((1000, 1000), bool)
    rows[::40] = True
    rows[1::40] = True
    assert ((detailed > 0.5) == (coarse > 0.5))[~rows].mean() > 0.999  # the shape kept...
    ring = np.abs(np.hypot(np.arange(1000)[:, None] - 500, np.arange(1000)[None] - 500) - 330) < 10
    assert (detailed[ring & rows] > 0.5).mean() > 0.9  # ...and the hairs near it added


def test_nothing_to_refine():
    calls = []
    predict = lambda boxes: calls.append(boxes) or []  # noqa: E731
    certain = np.full((2000, 1500), 0.01, np.float32)
    out, plan = refine(certain, predict, 256)
    assert plan.boxes == [] and not calls and np.array_equal(out, certain)
    small = soft_disk(250, 200, r=60, width=5)  # no larger than the model's input: nothing to gain
    out, plan = refine(small, predict, 256)
    assert plan.boxes == [] and not calls and np.array_equal(out, small)


def test_predictions_of_the_wrong_size_are_refused():
    coarse = soft_disk(800, 800, r=250, width=10)
    with pytest.raises(ValueError, match="expected"):
        refine(coarse, lambda boxes: [np.zeros((5, 5), np.float32) for _ in boxes], 256)


def test_windows_sum_to_one_inside_and_stay_flat_at_the_image_border():
    assert grid_starts(100, 100) == [0] and grid_starts(1000, 256)[-1] == 1000 - 256
    starts = grid_starts(1024, 256, overlap=0.5)
    assert all(b - a <= 128 for a, b in itertools.pairwise(starts))
    total = np.zeros(1024)
    for s in starts:
        total[s : s + 256] += crop_window((0, s, 1, s + 256), (1, 1024))[0]
    np.testing.assert_allclose(total, 1.0, atol=1e-6)  # Hann windows at half overlap; untapered at the ends
    w = crop_window((0, 100, 256, 356), (1000, 1000))
    assert w[0, 128] == pytest.approx(1.0, abs=1e-3)  # top edge is the image border: flat
    assert w[255, 128] < 1e-3 and w[128, 0] < 1e-3  # edges inside the image fall to ~0


def test_a_large_image_never_holds_a_stack_of_full_size_maps():
    H, W = 3000, 4000
    coarse = soft_disk(H, W, r=1100, width=6)
    calls = []

    def predict(boxes):
        calls.append(len(boxes))
        return [coarse[a:c, b:d] * 0.9 for a, b, c, d in boxes]

    full = coarse.nbytes
    tracemalloc.start()
    tracemalloc.reset_peak()
    out, plan = refine(coarse, predict, 256, RefineConfig(batch=3), inplace=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert out is coarse and out.shape == (H, W)
    assert max(calls) <= 3 and sum(calls) == len(plan.boxes) <= 32
    crop = plan.side * plan.side * 4
    # two row-band accumulators of about a crop side each, and a few crops; a stack of full-size
    # float maps (sums, weights, refined map) would be 3-5 x `full`
    assert peak < 1.5 * full + 8 * crop, (peak / full, plan.side)


@pytest.mark.parametrize("batch", [1, 2, 8])
def test_crop_rows_with_a_gap_between_them_blend_each_row_and_leave_the_gap(batch):
    """Crops only where the band is: two objects far apart give crop rows with uncovered rows
    between them (found labelling 200 mixed-size images: the blend once ran past its buffer)."""
    from adapt.highres import CropPlan

    coarse = np.full((600, 300), 0.5, np.float32)
    plan = CropPlan(side=100, boxes=[(0, 0, 100, 100), (0, 100, 100, 200), (400, 0, 500, 100), (450, 150, 560, 260)])
    out, _ = refine(
        coarse,
        lambda boxes: [np.full((c - a, d - b), 0.9, np.float32) for a, b, c, d in boxes],
        256,
        RefineConfig(band_only=False, trust=False, batch=batch),
        plan=plan,
    )
    assert np.allclose(out[150:350], 0.5)  # the gap: untouched
    assert out[50, 50] > 0.8 and out[450, 50] > 0.8 and out[500, 200] > 0.8
