"""The concept task (SAM 3): training pairs from class maps or binary masks with a phrase, SAM 3's
matched loss and hard negatives, the label map with the classes on one scale, the "did it
forget?" scores and where they show, and the CLI loop on tiny-sam3.

Skipped where the `sam3` package is not installed, except under CI=true (.ci/run installs it)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

if os.environ.get("CI") != "true":
    pytest.importorskip("sam3")

from adapt.backbones import build_backbone  # noqa: E402
from adapt.data import load_dataset  # noqa: E402
from adapt.data.synthetic import CLASSES, make_dataset, write_folder  # noqa: E402
from adapt.tasks import make_task, task_options  # noqa: E402
from adapt.tasks.concept import ConceptTask, boxes_of, instances_of  # noqa: E402

SIZE = 112  # tiny-sam3's input


@pytest.fixture(scope="module")
def class_maps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("concept") / "maps"
    write_folder(make_dataset("source", n=8, size=SIZE, seed=4), folder, task="openvocab")
    return folder


def task_on(classes=CLASSES, **options) -> ConceptTask:
    return make_task("concept", build_backbone("tiny-sam3", seed=0), classes=list(classes), **options)


# --- data: what users have, no conversion by hand ----------------------------------------------------


def test_class_maps_and_binary_masks_both_load(class_maps, tmp_path):
    """A class map names its classes (each name is a phrase); binary masks need the phrase, and
    say so without one."""
    maps = load_dataset(class_maps, task="concept")
    assert maps.task == "openvocab" and task_options("concept", maps)["classes"] == list(CLASSES)
    write_folder(make_dataset("source", n=3, size=SIZE, seed=1), tmp_path / "bin", task="dichotomous")
    binary = load_dataset(tmp_path / "bin", task="concept")
    assert binary.task == "dichotomous"
    with pytest.raises(ValueError, match="--phrase"):
        task_options("concept", binary)
    assert task_options("concept", binary, phrase=" cell ")["classes"] == ["background", "cell"]


def test_instances_are_connected_components_with_their_boxes():
    labels = np.zeros((20, 30), np.uint8)
    labels[2:6, 3:9] = 1  # two separate "1" objects and one "2"; a 1-pixel speck is noise
    labels[10:18, 20:28] = 1
    labels[12:15, 2:5] = 2
    labels[0, 29] = 2
    labels[19, 0] = 255  # ignored
    found = instances_of(labels)
    assert sorted(found) == [1, 2] and found[1].shape == (2, 20, 30) and found[2].shape == (1, 20, 30)
    boxes = boxes_of(torch.from_numpy(found[1]))
    expected = torch.tensor([[6 / 30, 4 / 20, 6 / 30, 4 / 20], [24 / 30, 14 / 20, 8 / 30, 8 / 20]])
    assert torch.allclose(boxes, expected)


# --- training ----------------------------------------------------------------------------------------


def test_pairs_loss_and_what_the_gradients_reach():
    """Every present class is a pair, plus `negatives` absent ones per image (hard negatives);
    a hard negative's only target is presence 0; gradients reach the trunk's adapters and the
    detector's heads, never the tracker."""
    from adapt.methods import attach

    task = task_on()
    handle = attach(task.backbone, "lora")
    scenes = make_dataset("source", n=2, size=SIZE, seed=0)
    prepared = [task.prepare(s.image, s.semantic) for s in scenes]
    pairs = task.pairs(prepared, np.random.default_rng(0))
    present = [(i, c) for i, p in enumerate(prepared) for c in p.instances]
    assert [(i, CLASSES.index(ph)) for i, ph, c in pairs if c is not None] == present
    negatives = [(i, ph) for i, ph, c in pairs if c is None]
    assert len(negatives) == 2 * len(prepared)
    assert all(CLASSES.index(ph) not in prepared[i].instances for i, ph in negatives)
    assert all(
        c is not None
        for _, _, c in ConceptTask.pairs(task_on(hard_negatives=False), prepared, np.random.default_rng(0))
    )

    loss = task.loss(prepared, np.random.default_rng(0), "cpu")
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    adapters = handle.adapter_parameters().values()  # LoRA's B starts at zero: A's gradient is zero at step 0
    assert all(p.grad is not None for p in adapters) and sum(float(p.grad.abs().sum()) for p in adapters) > 0
    heads = task.backbone.model.dot_prod_scoring
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())
    tracker = task.backbone.interactive
    assert all(p.grad is None for p in tracker.parameters())
    assert set(handle.head_parameters()) and not any(n.startswith("inst_interactive") for n in handle.head_parameters())


def test_a_hard_negative_teaches_the_presence_token_to_say_no():
    """A few steps on absent phrases alone lower their presence score, and nothing else is a target."""
    task = task_on(negatives=3)
    image = make_dataset("source", n=1, size=SIZE, seed=2)[0]
    empty = task.prepare(image.image, np.zeros(image.semantic.shape, np.uint8))  # nothing of any class
    params = [p for h in task.backbone.heads for p in h.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)

    def presence() -> float:
        with torch.no_grad():
            out = task.backbone.ground(empty.image[None], ["circle", "star"], [0, 0], [0, 1])
        return float(out["presence"].sigmoid().mean())

    before = presence()
    for step in range(5):
        optimizer.zero_grad()
        task.loss([empty], np.random.default_rng(step), "cpu").backward()
        optimizer.step()
    assert presence() < before - 0.05


# --- prediction and "did it forget?" ---------------------------------------------------------------


def fake_instances(monkeypatch, scores: dict, masks: dict, m: int = 8):
    """instance_scores answering `scores[phrase]` (Q,) and `masks[phrase]` (Q, m, m)."""

    def instance_scores(self, image, phrases, device="cpu", boxes=None):
        return (
            torch.stack([torch.tensor(scores[p], dtype=torch.float) for p in phrases]),
            torch.stack([torch.tensor(masks[p], dtype=torch.float) for p in phrases]),
        )

    monkeypatch.setattr(ConceptTask, "instance_scores", instance_scores)


def test_classes_compete_on_one_scale_and_background_is_below_the_threshold(monkeypatch):
    left, right = np.zeros((2, 8, 8)), np.zeros((2, 8, 8))
    left[0, :, :4] = 0.9  # "cat" covers the left half with score 0.6 and everything faintly with 0.3
    left[1] = 0.5
    right[0, :, 2:] = 1.0  # "dog" covers from column 2 with score 0.8
    fake_instances(monkeypatch, {"cat": [0.6, 0.3], "dog": [0.8, 0.0]}, {"cat": left, "dog": right})
    task = task_on(["background", "cat", "dog"])
    labels, classes, _ = task.predict(np.zeros((16, 16, 3), np.uint8))
    assert classes == ["background", "cat", "dog"]
    assert (labels[:, :3] == 1).all()  # only cat (0.54 > 0.25)
    assert (labels[:, 6:] == 2).all()  # dog 0.8 beats cat's 0.15
    labels, _, _ = task.predict(np.zeros((16, 16, 3), np.uint8), threshold=0.7)
    assert (labels[:, :3] == 0).all() and (labels[:, 6:] == 2).all()  # cat's 0.54 is now background
    outputs = task.predict_outputs(np.zeros((16, 16, 3), np.uint8), text="dog")
    assert set(np.unique(outputs["index"])) == {0, 1} and "mask_dog" in outputs


def test_forgetting_scores_count_absent_prompts_and_present_overlap(monkeypatch):
    """absent_fp: of the prompts for classes not in an image, the share finding an instance above
    0.5; present_iou: the found instances' union against the class's pixels."""
    from types import SimpleNamespace

    full = np.ones((1, 8, 8))
    half = np.zeros((1, 8, 8))
    half[0, :, :4] = 1
    fake_instances(monkeypatch, {"cat": [0.9], "dog": [0.7], "cow": [0.2]}, {"cat": half, "dog": full, "cow": full})
    gt = np.zeros((8, 8), np.uint8)
    gt[:, :2] = 1  # cat on the two left columns: the found half has IoU 2/4
    image = np.zeros((8, 8, 3), np.uint8)
    samples = [SimpleNamespace(image=image, mask=gt), SimpleNamespace(image=image, mask=np.zeros((8, 8), np.uint8))]
    scores = task_on(["background", "cat", "dog", "cow"]).evaluate(samples)
    # image 1: dog found (absent), cow not; image 2: cat and dog found, cow not -> 3 of 5
    assert scores["absent_fp"] == pytest.approx(3 / 5)
    assert scores["present_iou"] == pytest.approx(0.5)
    assert list(scores)[:5] == ["miou", "pixel_acc", "absent_fp", "absent_score", "present_iou"]  # the Progress table's
    assert scores["absent_score"] == pytest.approx((0.7 + 0.2 + 0.9 + 0.7 + 0.2) / 5)


def test_the_forgetting_warning_and_where_it_shows():
    from adapt.metrics import forgetting_warning
    from adapt.pipeline import heldout_report
    from app.ui.progress import _scores

    frozen = {"miou": 0.2, "absent_fp": 0.05, "present_iou": 0.1}
    fine, forgot = dict(frozen, absent_fp=0.07), dict(frozen, absent_fp=0.0701 + 0.0001)
    assert forgetting_warning(frozen, fine) is None
    assert "+2.0 points" in forgetting_warning(frozen, forgot) and "hard negatives" in forgetting_warning(
        frozen, forgot
    )
    report = heldout_report(frozen, forgot, 10)
    assert "absent-class false positives 0.050 frozen -> 0.070 adapted" in report["did_it_forget"]
    assert report["forgetting_warning"].startswith("It forgot how to say no")
    assert heldout_report(frozen, fine, 10)["forgetting_warning"].startswith("none")
    assert "did_it_forget" not in heldout_report({"iou": 0.5}, {"iou": 0.6}, 10)
    assert "**Did it forget?** It forgot" in _scores(frozen, forgot, heldout=10)
    assert "**Did it forget?** No" in _scores(frozen, fine, heldout=10)


# --- the CLI loop ------------------------------------------------------------------------------------


def test_cli_trains_a_concept_adapter_and_says_what_it_forgot(class_maps, tmp_path, capsys):
    """train --task concept on class maps: the result and the model card carry the forgetting
    scores; eval, predict (label map of the trained classes, or one phrase) and batch labelling
    run on the adapter; the official export loads into the same classes and predicts the same."""
    from PIL import Image

    from adapt.__main__ import main
    from adapt.backbones.catalog import CATALOG
    from adapt.backbones.sam3 import Sam3Backbone, build_sam3_model, from_upstream

    run = tmp_path / "run"
    argv = ["train", "--task", "concept", "--backbone", "tiny-sam3", "--method", "lora", "--data", str(class_maps)]
    assert main(argv + ["--steps", "2", "--validation", "0", "--out", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "absent-class false positives" in report["did_it_forget"] and report["forgetting_warning"]
    card = (run / "adapter" / "README.md").read_text()
    assert "absent-class false positives" in card and "SAM License" in card
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["task"] == "concept"

    assert main(["eval", "--adapter", str(run / "adapter"), "--data", str(class_maps), "--json"]) == 0
    assert "absent_fp" in capsys.readouterr().out
    image = np.random.default_rng(0).integers(0, 255, (90, 140, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    assert main(["predict", "--adapter", str(run / "adapter"), "--image", str(tmp_path / "x.png"),
                 "--out", str(tmp_path / "map.png"), "--all"]) == 0  # fmt: skip
    assert np.array(Image.open(tmp_path / "map_index.png")).shape == (90, 140)
    assert main(["predict", "--adapter", str(run / "adapter"), "--image", str(tmp_path / "x.png"),
                 "--text", "circle", "--out", str(tmp_path / "circle.png")]) == 0  # fmt: skip
    assert main(["predict", "--adapter", str(run / "adapter"), "--images", str(class_maps / "images"),
                 "--out", str(tmp_path / "batch")]) == 0  # fmt: skip
    assert len(list((tmp_path / "batch").rglob("*.png"))) >= 8

    official = tmp_path / "merged.pt"
    assert main(["export", "--adapter", str(run / "adapter"), "--official", str(official)]) == 0
    spec = {"family": "sam", **CATALOG["tiny-sam3"].arch}
    model = build_sam3_model(spec).eval()
    model.load_state_dict(from_upstream(torch.load(official, weights_only=True)["model"]))
    theirs = make_task("concept", Sam3Backbone("tiny-sam3", "sam", model, spec, "file"), classes=list(CLASSES))
    ours = np.array(Image.open(tmp_path / "map_index.png"))
    assert np.array_equal(theirs.predict(image)[0], ours)


def test_an_exemplar_box_joins_the_phrase(tmp_path, capsys):
    """predict --task concept --text PHRASE --box x0,y0,x1,y1: the box is an example of the concept
    (a geometric prompt beside the phrase): the scores change, the output keeps the image's size."""
    from PIL import Image

    from adapt.__main__ import main

    task = task_on(["background", "circle"])
    image = make_dataset("source", n=1, size=SIZE, seed=3)[0].image
    plain, _ = task.instance_scores(image, ["circle"])
    boxed, _ = task.instance_scores(image, ["circle"], boxes=[[10, 20, 60, 70]])
    assert (plain - boxed).abs().max() > 1e-5
    Image.fromarray(image).save(tmp_path / "x.png")
    argv = ["predict", "--backbone", "tiny-sam3", "--task", "concept", "--image", str(tmp_path / "x.png")]
    assert main(argv + ["--text", "circle", "--box", "10,20,60,70", "--out", str(tmp_path / "m.png")]) == 0
    assert np.array(Image.open(tmp_path / "m.png")).shape[:2] == (SIZE, SIZE)


@pytest.mark.parametrize("method", ["lora", "parser", "full", "decoder"])
def test_concept_path_counts(method):
    """On the concept path the trunk adapters are the interactive path's; the head is the
    detector's decoder, segmentation head and scorer; base is what the path runs: the detector
    without the SAM 2 levels and the unread coarsest level; full fine-tuning trains all of it but
    the heads (the full-size model, on the meta device)."""
    from adapt.counts import count_params, meta_backbone

    concept, interactive = count_params("sam3", method, "concept"), count_params("sam3", method)
    model = meta_backbone("sam3", "concept").model
    heads = sum(p.numel() for m in (model.transformer.decoder, model.segmentation_head, model.dot_prod_scoring)
                for p in m.parameters())  # fmt: skip
    neck = model.backbone.vision_backbone
    unread = sum(p.numel() for p in neck.sam2_convs.parameters()) + sum(p.numel() for p in neck.convs[-1].parameters())
    runs = (
        sum(p.numel() for n, p in model.named_parameters() if not n.startswith("inst_interactive_predictor")) - unread
    )
    assert concept["head"] == heads == 15_056_950
    if method == "full":
        assert concept["adapter"] == runs - heads == 824_600_320 and concept["base"] == heads
    else:
        assert concept["adapter"] == interactive["adapter"] and concept["base"] == runs == 839_657_270


def test_a_dataset_listing_background_elsewhere_is_scored_by_its_own_ids(monkeypatch):
    """Class ids are the dataset's wherever it lists background; predictions are numbered
    background first; ignored pixels count in no IoU; absent_score reads behind the threshold."""
    from types import SimpleNamespace

    half = np.zeros((1, 8, 8))
    half[0, :, :4] = 1
    fake_instances(monkeypatch, {"cat": [0.9], "dog": [0.3]}, {"cat": half, "dog": half})
    gt = np.full((8, 8), 1, np.uint8)  # background is id 1 here
    gt[:, :4] = 0  # cat (id 0) on the left half, exactly where it is found
    gt[0, 4:] = 255  # ignored
    task = task_on(["cat", "background", "dog"])
    labels, classes, _ = task.predict(np.zeros((8, 8, 3), np.uint8))
    assert classes == ["background", "cat", "dog"] and (labels[:, :4] == 1).all() and (labels[:, 4:] == 0).all()
    scores = task_on(["cat", "background", "dog"]).evaluate(
        [SimpleNamespace(image=np.zeros((8, 8, 3), np.uint8), mask=gt)]
    )
    assert scores["present_iou"] == 1.0  # cat found exactly; the ignored row is in neither mask
    assert scores["iou/cat"] == 1.0 and scores["iou/background"] == 1.0
    assert scores["absent_fp"] == 0.0 and scores["absent_score"] == pytest.approx(0.3)
