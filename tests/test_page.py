"""Issue 24, the page's items without a browser: the adapter pickers and the "Runs:" line follow the
task (9), every action answers beside its button (12), and the numbers come with guidance (14):
backbones on disk, memory against this machine, metric explanations, held-out intervals and a
small split flagged, job kinds, Cancel/Resume by status, legend colours, download names."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_backbone
from studio_support import OWNER

from adapt.data import load_dataset
from adapt.data.synthetic import make_dataset, write_folder
from adapt.export import model_card, read_adapter, save_adapter, zip_adapter
from adapt.methods import attach
from adapt.metrics import (
    INTERVAL,
    METRIC_HELP,
    bootstrap_interval,
    confusion_statistic,
    intervals_over_images,
    small_split_warning,
)
from adapt.pipeline import train_adapter
from adapt.render import class_palette, named_color
from adapt.train import TrainConfig
from app import catalog
from app.config import Paths
from app.studio import Studio, UserError, estimate_memory

EXAMPLE = "assets/examples/colours.jpg"
CLASSES = "background, red object, cyan object, yellow object, white object"


@pytest.fixture
def studio(tmp_path):
    return Studio(Paths(tmp_path / "studio"))


@pytest.fixture
def sam_upload(studio, tmp_path):
    """A dichotomous (SAM) adapter loaded into the studio: its ref."""
    folder = save_adapter(attach(tiny_backbone("sam"), "parser"), tmp_path / "sam", task="dichotomous")
    ref, _ = studio.upload_adapter(OWNER, str(zip_adapter(folder, tmp_path / "sam.zip")))
    return ref


# --- item 9: the pickers and the "Runs:" line follow the task; predict refuses another task ---------


def test_adapter_pickers_offer_only_the_tasks_adapters(studio, sam_upload):
    from app.ui.common import adapter_choices

    assert [r for _, r in studio.adapters(OWNER, "dichotomous")] == [sam_upload]
    assert studio.adapters(OWNER, "openvocab") == []
    assert [r for _, r in studio.adapters(OWNER)] == [sam_upload]
    kept = adapter_choices(studio, OWNER, sam_upload, "dichotomous")
    assert kept.value == sam_upload
    reset = adapter_choices(studio, OWNER, sam_upload, "openvocab")  # switching the task resets it
    assert reset.value == "" and sam_upload not in [c[1] for c in reset.choices]


def test_the_page_says_what_will_run(studio, sam_upload):
    from app.ui.preview import what_runs

    assert what_runs(studio, OWNER, "", "tiny-clip", "openvocab", CLASSES, "") == (
        "Runs: frozen tiny-clip, open-vocabulary, 5 classes"
    )
    line = what_runs(studio, OWNER, sam_upload, "tiny-clip", "openvocab", CLASSES, "")
    assert line.startswith("**Will not run:**") and "open-vocabulary" in line
    line = what_runs(studio, OWNER, sam_upload, "tiny-sam", "dichotomous", "", "10,10,1; 20,20,0")
    assert line.startswith("Runs: adapter uploaded: parser on tiny-sam") and line.endswith("dichotomous, 2 click(s)")


def test_exemplar_boxes_are_a_field_of_the_tasks_that_take_them(studio):
    """The Preview's exemplar boxes field shows for the concept task only (hidden, it is emptied);
    two clicks on the image draw a box (either corner first), appended to the field; the line
    beside Predict refuses boxes for a task without exemplars; /predict takes them last, optional."""
    from app.ui.page import build
    from app.ui.preview import BOXES_INFO, add_click, add_corner, boxes_shown

    field, corner = boxes_shown("concept")
    assert field.visible is True and corner is None
    for task in ("dichotomous", "openvocab"):
        field, _ = boxes_shown(task)
        assert field.visible is False and field.value == ""
    field, corner = add_corner("", None, 60.4, 70.6)  # first corner: kept, said under the field
    assert corner == (60.4, 70.6) and "Corner (60, 71) set" in field.info
    field, corner = add_corner("", corner, 10.2, 20)  # the opposite one: the box, corners sorted
    assert field.value == "10,20,60,71" and field.info == BOXES_INFO and corner is None
    field, corner = add_corner("10,20,60,71", (5, 5), 30, 5.2)  # no height: not drawn, corner kept
    assert field.value is None and "needs width and height" in field.info and corner == (5, 5)
    field, _ = add_corner("10,20,60,71", (5, 5), 30, 40)
    assert field.value == "10,20,60,71; 5,5,30,40"
    assert add_click("1,2,1", False, 3.4, 4.6) == "1,2,1; 3,5,0"

    from app.ui.preview import what_runs

    line = what_runs(studio, OWNER, "", "tiny-sam", "dichotomous", "", "", "", "1,2,30,40")
    assert (
        line
        == "**Will not run:** exemplar boxes are prompts of the concept task (SAM 3): choose that task, or clear the boxes"
    )
    line = what_runs(studio, OWNER, "", "tiny-sam", "dichotomous", "", "", "", "1,2")
    assert line.startswith("**Will not run:** exemplar boxes are 'x0,y0,x1,y1'")

    demo = build(studio)
    (predict,) = [d for d in demo.config["dependencies"] if d.get("api_name") == "predict"]
    last = demo.blocks[predict["inputs"][-1]]
    assert last.elem_id == "predict-boxes" and last.value == ""  # an initial value: optional in the API


def test_predict_refuses_an_adapter_of_another_task(studio, sam_upload):
    with pytest.raises(UserError, match="for the Dichotomous .* task, not Open-vocabulary"):
        studio.predict(OWNER, EXAMPLE, sam_upload, "tiny-clip", "openvocab", CLASSES)


# --- item 12: each action's result beside its button ---------------------------------------------


def test_a_failed_action_is_a_message_beside_its_button_not_a_toast():
    import gradio as gr

    from app.ui.messages import in_page

    def refuse(x):
        raise UserError(f"no {x} here: do this instead")

    assert in_page(refuse, 1)("job") == "**no job here: do this instead**"
    skipped, text = in_page(refuse, 2)("file")
    assert isinstance(skipped, type(gr.skip())) and "no file here" in text
    assert in_page(lambda x: (x, "ok"), 2)("a") == ("a", "ok")


def test_cancel_and_resume_answer_beside_their_buttons(studio):
    """Their answers go to a message of their own (the status line is redrawn by the timer)."""
    from app.ui.page import build

    demo = build(studio)
    outputs = {
        dep["api_name"]: [demo.blocks[i].elem_id for i in dep["outputs"]]
        for dep in demo.config["dependencies"]
        if dep.get("api_name") in ("cancel", "resume")
    }
    assert outputs == {"cancel": ["job-action-msg"], "resume": ["job-action-msg"]}
    ids = [getattr(b, "elem_id", None) for b in demo.blocks.values()]
    for button, msg in (("predict", "predict-msg"), ("load-adapter", "adapter-msg"), ("download", "download-msg")):
        assert msg in ids
        assert 0 < ids.index(msg) - ids.index(button) <= 3, (button, msg)  # laid out right after it


# --- item 14: numbers with guidance ---------------------------------------------------------------


def test_backbone_pickers_say_which_weights_are_on_disk():
    choices = dict((name, label) for label, name in catalog.backbone_choices("dichotomous"))
    assert choices["tiny-sam"] == "tiny-sam (on disk)"
    assert choices["sam-vit-b"].startswith("sam-vit-b (download ") and "MB" in choices["sam-vit-b"]
    assert [n for _, n in catalog.backbone_choices("openvocab")] == catalog.backbones_for("openvocab")


def test_the_memory_estimate_is_compared_with_this_machines_free_memory(monkeypatch):
    assert catalog.fit_warning(10**6, (2 * 10**9, "RAM")) == ""
    warning = catalog.fit_warning(5 * 2**30, (2**30, "RAM"))
    assert "Will not fit here" in warning and "5.0 GB" in warning and "1.0 GB" in warning
    free, what = catalog.free_memory()
    assert what == "RAM" and (free is None or free > 0)
    monkeypatch.setattr(catalog, "free_memory", lambda: (2**20, "RAM"))
    assert "Will not fit here" in estimate_memory("tiny-sam", "parser", 2)
    monkeypatch.setattr(catalog, "free_memory", lambda: (2**40, "RAM"))
    assert "Will not fit" not in estimate_memory("tiny-sam", "parser", 2)


def test_bootstrap_intervals_over_images():
    low, high = bootstrap_interval([0.2, 0.4, 0.6, 0.8, 0.5])
    assert 0.2 <= low < 0.5 < high <= 0.8
    assert np.isnan(bootstrap_interval([0.5])[0])  # one image: no spread to speak of
    same = bootstrap_interval([0.3, 0.3, 0.3])
    assert same == pytest.approx((0.3, 0.3))
    perfect = np.eye(2, dtype=np.int64) * 10
    wrong = np.array([[0, 10], [10, 0]])
    low, high = bootstrap_interval(np.stack([perfect, wrong, perfect]), confusion_statistic("pixel_acc"))
    assert 0 <= low < 2 / 3 < high <= 1
    assert set(intervals_over_images({"iou": [0.1, 0.9], "dice": [0.5]})) == {"iou"}


def test_a_small_held_out_split_is_flagged_in_the_result_and_the_model_card(tmp_path):
    assert small_split_warning(5) is None and "2 held-out" in small_split_warning(2)
    out = tmp_path / "pairs"
    write_folder(make_dataset("grayscale-noise", n=5, size=64, seed=3), out, task="dichotomous")
    cfg = TrainConfig(backbone="tiny-sam", checkpoint="random", method="parser", steps=2, batch_size=1, warmup=1)
    cfg = TrainConfig(**{**cfg.__dict__, "eval_every": 0, "checkpoint_every": 0, "device": "cpu", "augment": False})
    summary = train_adapter(cfg, load_dataset(out, task="dichotomous"), tmp_path / "run", holdout=3)
    for model in ("frozen", "adapted"):
        low, high = summary[model][INTERVAL]["iou"]
        assert low <= summary[model]["iou"] <= high
    assert "too few to trust" in summary["heldout_warning"] and "3 held-out" in summary["heldout_warning"]
    assert "95% bootstrap" in summary["heldout_scores"]
    card_cfg, _ = read_adapter(summary["adapter"])
    assert all(isinstance(v, (int, float)) for v in card_cfg["metrics"].values())  # the intervals are not metrics
    card = model_card(card_cfg)
    assert "too few to trust" in card and "95% bootstrap" in card


def test_scores_come_with_intervals_explanations_and_the_small_split_flag():
    from app.ui.progress import _scores

    frozen = {"iou": 0.4, "dice": 0.5, INTERVAL: {"iou": [0.3, 0.5], "dice": [0.4, 0.6]}}
    adapted = {"iou": 0.6, "dice": 0.7, INTERVAL: {"iou": [0.5, 0.7]}}
    text = _scores(frozen, adapted, heldout=2)
    assert "| iou | 0.400 [0.300, 0.500] | 0.600 [0.500, 0.700] |" in text
    assert "| dice | 0.500 [0.400, 0.600] | 0.700 |" in text
    assert METRIC_HELP["iou"] in text and METRIC_HELP["dice"] in text
    assert "Too few held-out images" in text and "(2 images)" in text
    assert "Too few" not in _scores(frozen, adapted, heldout=8)
    assert METRIC_HELP["miou"].startswith("mIoU") and METRIC_HELP["pixel_acc"].startswith("pixel accuracy")


def test_job_list_entries_say_their_kind_and_actions_follow_the_status(studio, monkeypatch):
    from app.ui.progress import actions, job_choices

    jobs = [{"job": "j1", "status": "running", "kind": "label", "method": "parser", "backbone": "tiny-sam"}]
    monkeypatch.setattr(studio, "jobs", lambda owner: [{**j, "created": 0} for j in jobs])
    label = job_choices(studio, OWNER, "j1").choices[0][0]
    assert " label: parser on tiny-sam: running" in label
    enabled = {
        s: tuple(b.interactive for b in actions(s)) for s in ("queued", "running", "done", "failed", "cancelled")
    }
    assert enabled == {
        "queued": (True, False),
        "running": (True, False),
        "done": (False, False),
        "failed": (False, True),
        "cancelled": (False, False),
    }


def test_legend_colours_agree_with_colour_class_names():
    from adapt.tasks.openvocab import class_colors

    names = ["background", "cat", "red object", "blue object", "dog", "yellow object", "Green leaf"]
    colors = class_colors(names).astype(int)
    red, blue, yellow, green = colors[2], colors[3], colors[5], colors[6]
    assert red[0] > 180 and red[1] < 80 and red[2] < 80  # "red object" is red, never blue
    assert blue[2] > 180 and blue[0] < 80
    assert yellow[0] > 180 and yellow[1] > 180 and yellow[2] < 80
    assert green[1] > 120 and green[0] < 80
    named = [named_color(n) for n in names if named_color(n)]
    for other in (colors[1], colors[4]):  # unnamed classes stay far from every named colour
        assert min(np.linalg.norm(np.subtract(other, c)) for c in named) >= 90
    assert len({tuple(c) for c in class_palette(["a", "b", "c", "d"])}) == 4


def test_download_names_say_method_and_backbone(studio, sam_upload):
    from app.ui.adapters import adapter_download, download_name

    name = download_name(studio, OWNER, sam_upload, merged=False)
    assert name == f"adapter-parser-tiny-sam-{sam_upload[len('upload-') :][:8]}.zip"
    assert adapter_download(studio, OWNER, sam_upload, False).endswith(name)
