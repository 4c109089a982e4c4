"""The studio side of the concept task and of SAM 3's text prompts, without a browser: the Train
tab's choices (concept's backbones are SAM 3's; its phrase and hard-negative options), a concept
job trained on tiny-sam3 by the worker's job function, Compare (frozen CLIP, frozen SAM 3 and the
adapter on the same classes), a text prompt and exemplar boxes in Preview, a text prompt in label
the rest, and label the rest with the concept adapter (class-map masks, scores.csv).

Kept cheap: a 2-step job on 112 px images. Skipped where the `sam3` package is not installed,
except under CI=true (.ci/run installs it)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image
from studio_support import OWNER, dataset_zip, work

if os.environ.get("CI") != "true":
    pytest.importorskip("sam3")

from adapt.data.synthetic import make_dataset  # noqa: E402
from app.compare import MAX_COMPARE, compare  # noqa: E402
from app.config import Limits, Paths  # noqa: E402
from app.label_rest import LabelRest  # noqa: E402
from app.studio import Studio, UserError  # noqa: E402

SIZE = 112  # tiny-sam3's input
CLASSES = "background, circle, square"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A studio with a finished 2-step concept job (LoRA on tiny-sam3, class maps), an image to
    predict (not square: outputs come back at its size) and two unlabelled images."""
    root = tmp_path_factory.mktemp("concept-studio")
    studio = Studio(Paths(root / "studio"), Limits())
    data = dataset_zip(root, n=4, size=SIZE, task="openvocab")
    job = studio.submit(OWNER, str(data), "concept", "tiny-sam3", "lora", 2, 1e-3, 1e-4, 1)
    assert work(studio) == ["done"]
    scenes = make_dataset("source", n=3, size=SIZE, seed=7)
    image = root / "photo.png"
    Image.fromarray(np.ascontiguousarray(scenes[0].image[:, :90])).save(image)
    unlabelled = root / "unlabelled"
    unlabelled.mkdir()
    for i, s in enumerate(scenes[1:]):
        Image.fromarray(s.image).save(unlabelled / f"u{i}.png")
    return {"studio": studio, "job": job, "image": image, "unlabelled": unlabelled, "root": root}


# --- the Train tab: choices and task options ----------------------------------------------------------


def test_concept_is_offered_on_sam3_backbones_only(world, monkeypatch):
    import app.catalog as catalog
    from app.ui.page import TASK_CHOICES
    from app.ui.train import task_options_shown

    assert "concept" in [name for _, name in TASK_CHOICES]
    monkeypatch.setattr(catalog, "has_gpu", lambda: False)
    assert catalog.backbones_for("concept") == ["tiny-sam3", "sam3"]  # on the CPU: no download first
    assert catalog.backbones_for("dichotomous")[0] == "tiny-sam"
    monkeypatch.setattr(catalog, "has_gpu", lambda: True)
    assert catalog.backbones_for("concept") == ["sam3", "tiny-sam3"]
    with pytest.raises(UserError, match="'tiny-sam' is not a backbone for concept: .* runs on sam3, tiny-sam3 only"):
        world["studio"].submit(OWNER, "data.zip", "concept", "tiny-sam", "lora", 2, 1e-3, 1e-4)
    phrase, hard = task_options_shown("concept")
    assert phrase.visible and hard.visible
    assert not any(x.visible for x in task_options_shown("dichotomous"))


def test_a_binary_set_needs_a_phrase_and_the_options_reach_the_job(world):
    """Binary masks with no phrase get the task's own message (a UserError, said beside Train);
    with one, the job's classes are background and the phrase, hard negatives as chosen."""
    studio = world["studio"]
    binary = dataset_zip(world["root"], n=3, size=SIZE, task="dichotomous")
    args = (OWNER, str(binary), "concept", "tiny-sam3", "lora", 2, 1e-3, 1e-4)
    with pytest.raises(UserError, match="give the phrase SAM 3 should learn"):
        studio.submit(*args)
    for bad in ("no", 0, None):
        with pytest.raises(UserError, match="hard negatives must be true or false"):
            studio.submit(*args, phrase="shape", hard_negatives=bad)
    with pytest.raises(UserError, match="the phrase is 61 characters long"):
        studio.submit(*args, phrase="x" * 61)
    job = studio.submit(*args, phrase=" shape ", hard_negatives=False)
    options = studio.store.get(job, OWNER)["config"]["train"]["task_options"]
    assert options["classes"] == ["background", "shape"] and options["hard_negatives"] is False
    studio.cancel(OWNER, job)


def test_a_concept_job_trains_on_tiny_sam3_and_reports_forgetting(world):
    status = world["studio"].status(OWNER, world["job"])
    assert status["status"] == "done" and status["adapter_ready"]
    assert {"absent_fp", "present_iou"} <= set(status["adapted"]) and "forgetting" in status
    options = world["studio"].store.get(world["job"], OWNER)["config"]["train"]["task_options"]
    assert options["hard_negatives"] is True and "circle" in options["classes"]


# --- Preview: Compare and the text prompt --------------------------------------------------------------


def test_compare_shows_three_label_maps_of_the_same_classes(world):
    """Frozen CLIP, frozen SAM 3 and the adapter, each a label map at the image's size over the
    typed classes; the frozen SAM 3 map is the concept task's own prediction."""
    from adapt.backbones import build_backbone
    from adapt.tasks import make_task

    studio, path = world["studio"], str(world["image"])
    panels = compare(studio, OWNER, path, CLASSES, world["job"])
    assert [p.title.split(":")[0] for p in panels] == ["**Frozen CLIP**", "**Frozen SAM 3**", "**Adapted**"]
    assert "tiny-clip" in panels[0].title and "tiny-sam3" in panels[1].title
    image = studio.load_image(path)
    for p in panels:
        assert p.classes == ["background", "circle", "square"]
        assert p.outputs["index"].shape == p.outputs["main"].shape[:2] == image.shape[:2]
        assert p.outputs["index"].max() < len(p.classes) and p.outputs["legend"].ndim == 3
    frozen = make_task("concept", build_backbone("tiny-sam3", seed=0), classes=["circle", "square"])
    assert np.array_equal(panels[1].outputs["index"], frozen.predict(image)[0])

    assert len(compare(studio, OWNER, path, CLASSES)) == 2  # no adapter: the two frozen models
    own = compare(studio, OWNER, path, "", world["job"])  # no classes typed: the adapter's own
    assert len(own[0].classes) == 15 and own[0].classes == own[2].classes
    many = ", ".join(f"class {k}" for k in range(MAX_COMPARE + 1))
    for classes, sam3, words in (
        (many, "", f"at most {MAX_COMPARE}"),
        ("background", "", "name the classes"),
        (CLASSES, "tiny-sam", "not a backbone for concept"),
    ):
        with pytest.raises(UserError, match=words):
            compare(studio, OWNER, path, classes, "", sam3)


def test_a_text_prompt_segments_a_phrase_on_sam3_only(world):
    studio, path = world["studio"], str(world["image"])
    from app.ui.preview import what_runs

    line = what_runs(studio, OWNER, "", "tiny-sam3", "dichotomous", "", "", " circle ")
    assert line == "Runs: frozen tiny-sam3, dichotomous, every 'circle'"
    outputs, _ = studio.predict(OWNER, path, "", "tiny-sam3", "dichotomous", text="circle")
    image = studio.load_image(path)
    assert outputs["main"].shape == image.shape[:2] and set(np.unique(outputs["main"])) <= {0, 255}
    with pytest.raises(UserError, match="tiny-sam takes no text prompt; sam3, tiny-sam3"):
        studio.predict(OWNER, path, "", "tiny-sam", "dichotomous", text="circle")
    with pytest.raises(UserError, match="takes its phrases as its classes"):
        studio.predict(OWNER, path, "", "tiny-clip", "openvocab", CLASSES, text="circle")

    from adapt.pipeline import inference_task

    task, _ = inference_task(backbone="tiny-sam3", task="dichotomous")
    (many, scores), = task.predict_many([image], text="circle")  # fmt: skip
    assert np.array_equal(many["main"], task.predict_outputs(image, text="circle")["main"])
    assert "uncertainty" in scores


def test_an_exemplar_box_in_preview_reaches_sam3_beside_the_classes(tmp_path, monkeypatch):
    """Studio.predict(boxes=...) on frozen tiny-sam3, the concept task: the boxes reach the model
    as exemplars of every class phrase (image pixels), its scores change, the outputs keep the
    image's size; a box off the image is refused; the line beside Predict counts the boxes."""
    from adapt.tasks import ConceptTask
    from app.ui.preview import what_runs

    studio = Studio(Paths(tmp_path / "studio"), Limits())
    path = tmp_path / "photo.png"
    Image.fromarray(np.ascontiguousarray(make_dataset("source", n=1, size=SIZE, seed=3)[0].image[:, :90])).save(path)
    calls, scores_of = [], ConceptTask.instance_scores

    def spy(self, image, phrases, device="cpu", boxes=None):
        scores, masks = scores_of(self, image, phrases, device, boxes)
        calls.append((phrases, None if boxes is None else np.asarray(boxes).tolist(), scores))
        return scores, masks

    monkeypatch.setattr(ConceptTask, "instance_scores", spy)
    plain, _ = studio.predict(OWNER, str(path), "", "tiny-sam3", "concept", CLASSES)
    boxed, _ = studio.predict(OWNER, str(path), "", "tiny-sam3", "concept", CLASSES, boxes="10,20,60,70; 5,5,30,30")
    (phrases, none, before), (_, given, after) = calls
    assert phrases == ["circle", "square"] and none is None and given == [[10, 20, 60, 70], [5, 5, 30, 30]]
    assert (before - after).abs().max() > 1e-5
    assert boxed["index"].shape == plain["index"].shape == (SIZE, 90)
    with pytest.raises(UserError, match=r"the exemplar box \(0, 0, 100, 10\) is outside the 90x112 image"):
        studio.predict(OWNER, str(path), "", "tiny-sam3", "concept", CLASSES, boxes="0,0,100,10")
    line = what_runs(studio, OWNER, "", "tiny-sam3", "concept", CLASSES, "", "", "10,20,60,70; 5,5,30,30")
    assert line == "Runs: frozen tiny-sam3, concept, 3 classes, 2 exemplar box(es)"


# --- label the rest ---------------------------------------------------------------------------------------


def test_label_the_rest_with_the_concept_adapter_writes_class_maps(world):
    studio = world["studio"]
    rest = LabelRest(studio)
    files = sorted(str(p) for p in world["unlabelled"].iterdir())
    job = rest.submit(OWNER, files, world["job"])
    assert work(studio) == ["done"]
    labels = studio.paths.job_files(job).labels
    summary = json.loads((labels / "summary.json").read_text())
    assert summary["task"] == "concept" and "circle" in summary["classes"] and summary["written"] == 2
    for f in files:
        mask = np.asarray(Image.open(labels / "masks" / os.path.basename(f)))
        assert mask.shape == (SIZE, SIZE) and mask.max() < len(summary["classes"])
    with open(labels / "scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    coco = json.loads((labels / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == summary["classes"][1:]
    items, rows, _ = rest.results(OWNER, job)
    assert len(items) == 2 and rest.classes(OWNER, job) == summary["classes"]


def test_label_the_rest_with_a_phrase_on_frozen_sam3(world):
    studio = world["studio"]
    rest = LabelRest(studio)
    files = sorted(str(p) for p in world["unlabelled"].iterdir())
    with pytest.raises(UserError, match="tiny-sam takes no text prompt"):
        rest.submit(OWNER, files, "", "tiny-sam", "dichotomous", text="circle")
    with pytest.raises(UserError, match="takes its phrases as its classes"):
        rest.submit(OWNER, files, world["job"], text="circle")
    job = rest.submit(OWNER, files, "", "tiny-sam3", "dichotomous", text="circle")
    assert studio.store.get(job, OWNER)["config"]["label"]["text"] == "circle"
    assert work(studio) == ["done"]
    labels = studio.paths.job_files(job).labels
    for f in files:
        assert set(np.unique(np.asarray(Image.open(labels / "masks" / os.path.basename(f))))) <= {0, 255}


def test_a_backbone_whose_extra_is_missing_is_refused_at_the_request(monkeypatch):
    """Without Meta's `sam3` package a SAM 3 job is refused when asked for, with the command that
    adds it, not after waiting in the queue."""
    import app.catalog

    monkeypatch.setattr(app.catalog, "missing_extra", lambda name: f"{name} needs the optional `sam3` package")
    with pytest.raises(UserError, match="needs the optional `sam3` package"):
        app.catalog.backbone_for("concept", "tiny-sam3")
