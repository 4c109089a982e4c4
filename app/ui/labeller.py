"""The studio's Data tab: upload image/mask pairs, or label images by clicking with SAM into the
owner's labelled set (actions in app.studio and app.labeller)."""

from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr

from app import labeller
from app.studio import Studio, UserError, backbones_for, check_owner, parse_classes
from app.ui.common import example_path, examples, outbox, user_errors

# --- Data ----------------------------------------------------------------------------------------


def data_tab(studio: Studio, owner, task) -> dict:
    with gr.Tab("1. Data", id="data"):
        classes = gr.Textbox(
            label="Class names (open-vocabulary), comma-separated; background is class 0",
            placeholder="background, cell, debris",
            visible=False,
            elem_id="classes",
        )
        with gr.Row():
            with gr.Column(scale=1):
                gr.Markdown(
                    "### Upload image/mask pairs\nA zip (images/ + masks/, COCO JSON, ...) or the files: "
                    "masks share their image's name (cat.jpg + cat.png)."
                )
                up_zip = gr.File(label="Dataset zip", file_types=[".zip"], elem_id="upload-zip", height=140)
                up_images = gr.File(
                    label="Images", file_count="multiple", file_types=["image"], elem_id="upload-images", height=140
                )
                up_masks = gr.File(
                    label="Masks", file_count="multiple", file_types=["image"], elem_id="upload-masks", height=140
                )
                check = gr.Button("Check and use these pairs", elem_id="check-data")
            with gr.Column(scale=2):
                gr.Markdown(
                    "### Or label by clicking\nGreen dots: object, red dots: background, or two clicks "
                    "for a box; SAM proposes the mask (blue). *Add region* keeps it."
                )
                with gr.Row():
                    lab_file = gr.File(label="Image to label", file_types=["image"], elem_id="label-file", scale=2)
                    lab_example = gr.Dropdown(
                        [(Path(p).stem, p) for p in examples()],
                        label="or an example",
                        value=None,
                        elem_id="label-example",
                        scale=1,
                    )
                lab_view = gr.Image(
                    label="Click on the image", interactive=False, elem_id="label-view", format="png", height=420
                )
                with gr.Row():
                    mode = gr.Radio(list(labeller.MODES), value=labeller.MODES[0], label="Click adds", scale=2)
                    lab_class = gr.Dropdown(["object"], label="Class of the region", visible=False, scale=1)
                    lab_model = gr.Dropdown(
                        backbones_for("dichotomous"), value="tiny-sam", label="Click model", scale=1
                    )
                with gr.Row():
                    undo = gr.Button("Undo click", size="sm")
                    clear = gr.Button("Clear clicks", size="sm")
                    add = gr.Button("Add region", size="sm", elem_id="add-region")
                    save = gr.Button("Save pair to set", variant="primary", size="sm", elem_id="save-pair")
                with gr.Accordion("Brush fix-ups", open=False):
                    gr.Markdown("Paint green to add to the current class, red to erase; then *Apply brush*.")
                    brush = gr.ImageEditor(
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
                        brush_open = gr.Button("Edit the current image with the brush", size="sm")
                        brush_apply = gr.Button("Apply brush", size="sm")
        data_msg = gr.Markdown(elem_id="data-msg", elem_classes="studio-msg")
        lab_gallery = gr.Gallery(
            label="Labelled set",
            columns=8,
            height=220,
            allow_preview=False,
            fit_columns=False,
            object_fit="contain",
            elem_id="label-gallery",
        )
        with gr.Row():
            use_set = gr.Button("Use the labelled set for training", variant="primary", elem_id="use-set")
            set_zip = gr.DownloadButton("Download the labelled set (zip)", elem_id="download-set")
            clear_set = gr.Button("Empty the labelled set", variant="stop", size="sm")
        lab_state = gr.State(None)

    # one labelled set per browser, a standard dataset folder
    def set_dir(o):
        return studio.paths.labelled_set(check_owner(o))

    def n_classes(t, names):
        return len(_classes(t, names))

    @user_errors
    def open_image(o, path, t, names):
        if not path:
            return gr.skip(), gr.skip(), gr.skip()
        check_owner(o)
        state = labeller.new_state(studio.load_image(path), Path(path).name)
        return state, labeller.render(state, n_classes(t, names)), f"Labelling **{Path(path).name}**."

    def on_click(o, state, m, model, t, names, evt: gr.SelectData):
        if state is None:
            return gr.skip(), gr.skip()
        labeller.click(state, evt.index[0], evt.index[1], m)
        labeller.propose(state, model)
        if state.get("device_note") and state.get("device_note") != state.get("device_note_shown"):
            state["device_note_shown"] = state["device_note"]
            gr.Info(f"Click labelling: {state['device_note']}")  # once per image and reason
        return state, labeller.render(state, n_classes(t, names))

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
            return state, labeller.render(state, n_classes(t, names))

        return run

    def open_brush(state, t, names):
        if state is None:
            return gr.skip()
        return {
            "background": labeller.render(state, n_classes(t, names), clicks=False),
            "layers": [],
            "composite": None,
        }

    def apply(state, value, t, names, lab):
        if state is None or not value or not value.get("layers"):
            return gr.skip(), gr.skip()
        labeller.apply_brush(state, value["layers"][0], _class_id(t, names, lab))
        return state, labeller.render(state, n_classes(t, names))

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
            labeller.render(state, n_classes(t, names)),
            labeller.gallery(set_dir(o), t),
            f"Saved **{stem}** to the labelled set.",
        )

    @user_errors
    def use_labelled(o, t):
        folder = set_dir(o)
        if not (folder / "images").exists():
            raise UserError("the labelled set is empty: label and save at least two images")
        dest, summary = studio.stage_upload(o, t, zip_file=str(_zip_set(studio, o)))
        return str(dest), f"Labelled set checked and ready to train on.\n\n{summary}", gr.Tabs(selected="train")

    @user_errors
    def download_set(o):
        return outbox(_zip_set(studio, o), "labelled-set.zip")

    def empty_set(o, t):
        shutil.rmtree(set_dir(o), ignore_errors=True)
        return [], "The labelled set is empty."

    ctx = [lab_model, task, classes]
    lab_file.upload(
        open_image, [owner, lab_file, task, classes], [lab_state, lab_view, data_msg], api_visibility="private"
    )
    lab_example.input(
        lambda o, p, t, n: open_image(o, example_path(p), t, n),
        [owner, lab_example, task, classes],
        [lab_state, lab_view, data_msg],
        api_visibility="private",
    )
    lab_view.select(on_click, [owner, lab_state, mode, *ctx], [lab_state, lab_view], api_visibility="private")
    for button, action in ((undo, "undo"), (clear, "clear"), (add, "add")):
        button.click(edit(action), [lab_state, *ctx, lab_class], [lab_state, lab_view], api_visibility="private")
    brush_open.click(open_brush, [lab_state, task, classes], brush, api_visibility="private")
    brush_apply.click(
        apply, [lab_state, brush, task, classes, lab_class], [lab_state, lab_view], api_visibility="private"
    )
    save.click(
        save_pair,
        [owner, lab_state, task, classes, lab_class],
        [lab_state, lab_view, lab_gallery, data_msg],
        api_visibility="private",
    )
    set_zip.click(download_set, owner, set_zip, api_visibility="private")
    clear_set.click(empty_set, [owner, task], [lab_gallery, data_msg], api_visibility="private")
    classes.change(
        lambda t, n: gr.Dropdown(choices=_classes(t, n)[1:] or ["object"]),
        [task, classes],
        lab_class,
        api_visibility="private",
    )
    return {
        "classes": classes,
        "lab_class": lab_class,
        "check": check,
        "use_set": use_set,
        "msg": data_msg,
        "zip": up_zip,
        "images": up_images,
        "masks": up_masks,
        "owner": owner,
        "use_labelled": use_labelled,
        "lab_state": lab_state,  # the labeller, which the Label-the-rest tab opens results in
        "lab_view": lab_view,
    }


def _classes(task: str, names: str) -> list[str]:
    if task != "openvocab":
        return ["background", "foreground"]
    try:
        return parse_classes(names, background=True)
    except UserError:
        return ["background"]


def _class_id(task: str, names: str, chosen: str | None) -> int:
    classes = _classes(task, names)
    if task != "openvocab":
        return 1
    if chosen in classes[1:]:
        return classes.index(chosen)
    if len(classes) < 2:
        raise UserError("name the classes first (the box above the upload), e.g. background, cell, debris")
    return 1


def _zip_set(studio: Studio, owner: str) -> Path:
    from app.studio import zip_folder

    folder = studio.paths.labelled_set(check_owner(owner))
    if not (folder / "images").exists():
        raise UserError("the labelled set is empty")
    return zip_folder(folder, studio.paths.labelled_set_zip(owner))
