"""The studio's Data tab: upload image/mask pairs, or label images by clicking with SAM into the
owner's labelled set (actions in app.studio and app.labeller; what the masks are, the task's
mask kind)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from adapt.tasks import TASKS
from app import labeller
from app.catalog import backbones_for
from app.studio import Studio, UserError, check_owner, parse_classes, zip_folder
from app.ui.common import download_button, example_path, examples, one_click_download, outbox, user_errors


def data_tab(studio: Studio, owner, task) -> dict:
    """The tab; what it returns is what the Train tab (the checks, the labelled set) and the
    Label-the-rest tab (the labeller, which opens results for correction) use of it."""
    with gr.Tab("1. Data", id="data"):
        classes = gr.Textbox(
            label="Class names (open-vocabulary), comma-separated; background is class 0",
            placeholder="background, cell, debris",
            visible=False,
            elem_id="classes",
        )
        with gr.Row():
            with gr.Column(scale=1):
                view = _upload_form()
            with gr.Column(scale=2):
                _click_labeller(view)
        view.classes = classes
        _labelled_set(view)
        view.state = gr.State(None)
    _wire_labelling(studio, owner, task, view)
    use_labelled, saved = _wire_set(studio, owner, task, view)
    return {
        "classes": classes,
        "lab_class": view.lab_class,
        "check": view.check,
        "use_set": view.use_set,
        "msg": view.msg,
        "zip": view.zip,
        "images": view.images,
        "masks": view.masks,
        "owner": owner,
        "use_labelled": use_labelled,
        "lab_state": view.state,  # the labeller, which the Label-the-rest tab opens results in
        "lab_view": view.image,
        "saved": saved,  # a pair saved (the Label-the-rest tab marks a corrected result)
    }


def _upload_form() -> SimpleNamespace:
    gr.Markdown(
        "### Upload image/mask pairs\nA zip (images/ + masks/, COCO JSON, ...) or the files: "
        "masks share their image's name (cat.jpg + cat.png)."
    )
    up_zip = gr.File(label="Dataset zip", file_types=[".zip"], elem_id="upload-zip", height=140)
    up_images = gr.File(
        label="Images", file_count="multiple", file_types=["image"], elem_id="upload-images", height=140
    )
    up_masks = gr.File(label="Masks", file_count="multiple", file_types=["image"], elem_id="upload-masks", height=140)
    check = gr.Button("Check and use these pairs", elem_id="check-data")
    return SimpleNamespace(zip=up_zip, images=up_images, masks=up_masks, check=check)


def _click_labeller(view: SimpleNamespace) -> None:
    """The image to label, the clicks' meaning, the click model, the edit buttons and the brush."""
    gr.Markdown(
        "### Or label by clicking\nGreen dots: object, red dots: background, or two clicks "
        "for a box; SAM proposes the mask (blue). *Add region* keeps it."
    )
    with gr.Row():
        view.file = gr.File(label="Image to label", file_types=["image"], elem_id="label-file", scale=2)
        view.example = gr.Dropdown(
            [(Path(p).stem, p) for p in examples()],
            label="or an example",
            value=None,
            elem_id="label-example",
            scale=1,
        )
    view.image = gr.Image(label="Click on the image", interactive=False, elem_id="label-view", format="png", height=420)
    with gr.Row():
        view.mode = gr.Radio(list(labeller.MODES), value=labeller.MODES[0], label="Click adds", scale=2)
        view.lab_class = gr.Dropdown(["object"], label="Class of the region", visible=False, scale=1)
        view.model = gr.Dropdown(backbones_for("dichotomous"), value="tiny-sam", label="Click model", scale=1)
    with gr.Row():
        view.undo = gr.Button("Undo click", size="sm")
        view.clear = gr.Button("Clear clicks", size="sm")
        view.add = gr.Button("Add region", size="sm", elem_id="add-region")
        view.save = gr.Button("Save pair to set", variant="primary", size="sm", elem_id="save-pair")
    with gr.Accordion("Brush fix-ups", open=False):
        gr.Markdown("Paint green to add to the current class, red to erase; then *Apply brush*.")
        view.brush = gr.ImageEditor(
            label="Brush",
            type="numpy",
            sources=(),
            transforms=(),
            layers=False,
            brush=gr.Brush(
                colors=[labeller.BRUSH_ADD, labeller.BRUSH_ERASE],
                default_color=labeller.BRUSH_ADD,
                color_mode="fixed",
            ),
            format="png",
        )
        with gr.Row():
            view.brush_open = gr.Button("Edit the current image with the brush", size="sm")
            view.brush_apply = gr.Button("Apply brush", size="sm")


def _labelled_set(view: SimpleNamespace) -> None:
    view.msg = gr.Markdown(elem_id="data-msg", elem_classes="studio-msg")
    view.gallery = gr.Gallery(
        label="Labelled set",
        columns=8,
        height=220,
        allow_preview=False,
        fit_columns=False,
        object_fit="contain",
        elem_id="label-gallery",
    )
    with gr.Row():
        view.use_set = gr.Button("Use the labelled set for training", variant="primary", elem_id="use-set")
        view.set_zip = download_button("Download the labelled set (zip)", "download-set")
        view.clear_set = gr.Button("Empty the labelled set", variant="stop", size="sm")


def _wire_labelling(studio: Studio, owner, task, view: SimpleNamespace) -> None:
    """Open an image, click (SAM proposes), undo / clear / add the region, fix it with the brush."""

    def shown(state, t, names, clicks=True):
        return labeller.render(state, len(_classes(t, names)), clicks=clicks)

    @user_errors
    def open_image(o, path, t, names):
        if not path:
            return gr.skip(), gr.skip(), gr.skip()
        check_owner(o)
        state = labeller.new_state(studio.load_image(path), Path(path).name)
        return state, shown(state, t, names), f"Labelling **{Path(path).name}**."

    def on_click(o, state, m, model, t, names, evt: gr.SelectData):
        if state is None:
            return gr.skip(), gr.skip()
        labeller.click(state, evt.index[0], evt.index[1], m)
        labeller.propose(state, model)
        if state.get("device_note") and state.get("device_note") != state.get("device_note_shown"):
            state["device_note_shown"] = state["device_note"]
            gr.Info(f"Click labelling: {state['device_note']}")  # once per image and reason
        return state, shown(state, t, names)

    def edit(action):
        def run(state, model, t, names, lab):
            if state is None:
                return gr.skip(), gr.skip()
            if action == "undo":
                labeller.propose(labeller.undo(state), model)
            elif action == "clear":
                labeller.clear_clicks(state)
            else:
                labeller.add_region(state, _class_id(t, names, lab))
            return state, shown(state, t, names)

        return run

    def open_brush(state, t, names):
        if state is None:
            return gr.skip()
        return {"background": shown(state, t, names, clicks=False), "layers": [], "composite": None}

    def apply(state, value, t, names, lab):
        if state is None or not value or not value.get("layers"):
            return gr.skip(), gr.skip()
        labeller.apply_brush(state, value["layers"][0], _class_id(t, names, lab))
        return state, shown(state, t, names)

    v, ctx = view, [view.model, task, view.classes]
    opened = [v.state, v.image, v.msg]
    v.file.upload(open_image, [owner, v.file, task, v.classes], opened, api_visibility="private")
    v.example.input(
        lambda o, p, t, n: open_image(o, example_path(p), t, n),
        [owner, v.example, task, v.classes],
        opened,
        api_visibility="private",
    )
    v.image.select(on_click, [owner, v.state, v.mode, *ctx], [v.state, v.image], api_visibility="private")
    for button, action in ((v.undo, "undo"), (v.clear, "clear"), (v.add, "add")):
        button.click(edit(action), [v.state, *ctx, v.lab_class], [v.state, v.image], api_visibility="private")
    v.brush_open.click(open_brush, [v.state, task, v.classes], v.brush, api_visibility="private")
    v.brush_apply.click(
        apply, [v.state, v.brush, task, v.classes, v.lab_class], [v.state, v.image], api_visibility="private"
    )


def _wire_set(studio: Studio, owner, task, view: SimpleNamespace):
    """Save the labelled image to the browser's labelled set (one per browser, a standard dataset
    folder); download, empty or train on it. Returns the train-on-it action (the Train tab wires it)
    and the save event (the Label-the-rest tab follows it)."""

    def set_dir(o):
        return studio.paths.labelled_set(check_owner(o))

    @user_errors
    def save_pair(o, state, t, names, lab):
        if state is None:
            raise UserError("open an image to label first")
        try:
            stem = labeller.save_pair(state, set_dir(o), t, _classes(t, names), _class_id(t, names, lab))
        except ValueError as e:
            raise UserError(str(e)) from None
        return (
            state,
            labeller.render(state, len(_classes(t, names))),
            labeller.gallery(set_dir(o), t),
            f"Saved **{stem}** to the labelled set.",
        )

    @user_errors
    def use_labelled(o, t):
        folder = set_dir(o)
        if not (folder / "images").exists():
            raise UserError("the labelled set is empty: label and save at least two images")
        dest, summary = studio.stage_upload(o, t, zip_file=str(_zip_set(studio, o)))
        return (
            outbox(dest, dest.name),
            f"Labelled set checked and ready to train on.\n\n{summary}",
            gr.Tabs(selected="train"),
        )

    @user_errors
    def download_set(o):
        return outbox(_zip_set(studio, o), "labelled-set.zip")

    def empty_set(o, t):
        shutil.rmtree(set_dir(o), ignore_errors=True)
        return [], "The labelled set is empty."

    v = view
    saved = v.save.click(
        save_pair,
        [owner, v.state, task, v.classes, v.lab_class],
        [v.state, v.image, v.gallery, v.msg],
        api_visibility="private",
    )
    one_click_download(v.set_zip, download_set, owner, api_visibility="private")
    v.clear_set.click(empty_set, [owner, task], [v.gallery, v.msg], api_visibility="private")
    v.classes.change(
        lambda t, n: gr.Dropdown(choices=_classes(t, n)[1:] or ["object"]),
        [task, v.classes],
        v.lab_class,
        api_visibility="private",
    )
    return use_labelled, saved


def _classes(task: str, names: str) -> list[str]:
    """The classes a label map is saved with: the task's fixed ones, or the names the user gave
    (background first; only background while they do not parse)."""
    kind = TASKS[task].mask
    if not kind.needs_class_names:
        return kind.classes([])
    try:
        return parse_classes(names, background=True)
    except UserError:
        return kind.classes([])


def _class_id(task: str, names: str, chosen: str | None) -> int:
    """The id a region is painted with: the foreground of a binary mask, or the chosen class."""
    if not TASKS[task].mask.needs_class_names:
        return 1
    classes = _classes(task, names)
    if chosen in classes[1:]:
        return classes.index(chosen)
    if len(classes) < 2:
        raise UserError("name the classes first (the box above the upload), e.g. background, cell, debris")
    return 1


def _zip_set(studio: Studio, owner: str) -> Path:
    folder = studio.paths.labelled_set(check_owner(owner))
    if not (folder / "images").exists():
        raise UserError("the labelled set is empty")
    return zip_folder(folder, studio.paths.labelled_set_zip(owner))
