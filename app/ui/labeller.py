"""The studio's Data tab: upload image/mask pairs, or label images by clicking with SAM into the
owner's labelled set (actions in app.studio and app.labeller; what the masks are, the task's
mask kind)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from adapt.tasks import TASKS
from app import labeller
from app.catalog import backbones_for
from app.studio import Studio, UserError, check_owner, parse_classes, zip_folder
from app.ui.common import download_button, example_path, examples, one_click_download, outbox
from app.ui.messages import in_page, message

# The labeller's keys: each presses the page's own button (or picks the click mode), so a key and
# its button are one action; bound only while the Data tab shows and no text field has the focus.
KEYS = {
    "f": "mode:0",
    "b": "mode:1",
    "x": "mode:2",
    "z": "label-undo",
    "a": "add-region",
    "s": "save-pair",
    "n": "label-next",
    "p": "label-prev",
    "+": "label-zoom-in",
    "=": "label-zoom-in",
    "-": "label-zoom-out",
    "0": "label-fit",
    "arrowleft": "label-pan-left",
    "arrowright": "label-pan-right",
    "arrowup": "label-pan-up",
    "arrowdown": "label-pan-down",
}
KEYS_JS = """
if (!window.labellerKeys) {
  window.labellerKeys = KEYMAP;
  const typing = (el) => el && (el.isContentEditable || el.tagName === 'TEXTAREA' || el.tagName === 'SELECT' ||
    (el.tagName === 'INPUT' && !['radio', 'checkbox', 'button', 'range', 'file'].includes(el.type)));
  document.addEventListener('keydown', (e) => {
    const view = document.getElementById('label-view');
    const key = e.key.toLowerCase();
    if (!view || !view.offsetParent || typing(e.target) || e.altKey || e.metaKey || e.repeat) return;
    if (e.ctrlKey && key !== 'z') return;
    const target = window.labellerKeys[key];
    const el = !target ? null : target.startsWith('mode:')
      ? document.querySelectorAll('#label-mode input[type=radio]')[Number(target.slice(5))]
      : document.getElementById(target);
    if (el) { el.click(); e.preventDefault(); }
  });
}
""".replace("KEYMAP", json.dumps(KEYS))
KEYS_HELP = (
    "Keys: <kbd>F</kbd> / <kbd>B</kbd> / <kbd>X</kbd> object point, background point, box · <kbd>Z</kbd> or "
    "<kbd>Ctrl</kbd>+<kbd>Z</kbd> undo · <kbd>A</kbd> add region · <kbd>S</kbd> save · <kbd>N</kbd> / <kbd>P</kbd> "
    "next / previous image · <kbd>+</kbd> / <kbd>-</kbd> zoom, <kbd>0</kbd> whole image · arrows pan"
)
ZOOM_STEP = 2.0
VIEW_BUTTONS = (  # (label, elem_id, what it does to the state)
    ("−", "label-zoom-out", lambda s: labeller.zoom(s, 1 / ZOOM_STEP)),
    ("+", "label-zoom-in", lambda s: labeller.zoom(s, ZOOM_STEP)),
    ("Whole image", "label-fit", lambda s: labeller.zoom(s, 0)),
    ("←", "label-pan-left", lambda s: labeller.pan(s, -1, 0)),
    ("↑", "label-pan-up", lambda s: labeller.pan(s, 0, -1)),
    ("↓", "label-pan-down", lambda s: labeller.pan(s, 0, 1)),
    ("→", "label-pan-right", lambda s: labeller.pan(s, 1, 0)),
)


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
        "check_msg": view.check_msg,  # beside the check button
        "use_set": view.use_set,
        "set_msg": view.set_msg,  # beside the labelled set's buttons
        "msg": view.msg,  # the labeller's, beside its buttons (the Label-the-rest tab writes there too)
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
    check_msg = message("data-msg")
    return SimpleNamespace(zip=up_zip, images=up_images, masks=up_masks, check=check, check_msg=check_msg)


def _click_labeller(view: SimpleNamespace) -> None:
    """The queue of images to label, the image (zoomed and panned by the buttons under it), the
    clicks' meaning, the click model, the edit buttons, the keys and the brush; each row's message
    beside it."""
    gr.Markdown(
        "### Or label by clicking\nGreen dots: object, red dots: background, or two clicks "
        "for a box; SAM proposes the mask (blue). *Add region* keeps it."
    )
    with gr.Row():
        view.file = gr.File(
            label="Images to label (one or many: a queue)",
            file_count="multiple",
            file_types=["image"],
            elem_id="label-file",
            height=140,
            scale=2,
        )
        view.example = gr.Dropdown(
            [(Path(p).stem, p) for p in examples()],
            label="or an example",
            value=None,
            elem_id="label-example",
            scale=1,
        )
    view.upload_msg = message("label-upload-msg")
    with gr.Row(equal_height=True):
        view.prev = gr.Button("◀ Previous (P)", size="sm", elem_id="label-prev", scale=0, min_width=120)
        view.where = message("label-where")
        view.next = gr.Button("Next (N) ▶", size="sm", elem_id="label-next", scale=0, min_width=120)
    view.image = gr.Image(label="Click on the image", interactive=False, elem_id="label-view", format="png", height=420)
    with gr.Row():
        view.view_buttons = [
            gr.Button(text, size="sm", elem_id=elem_id, min_width=40) for text, elem_id, _ in VIEW_BUTTONS
        ]
    with gr.Row():
        view.mode = gr.Radio(
            list(labeller.MODES), value=labeller.MODES[0], label="Click adds (F / B / X)", elem_id="label-mode", scale=2
        )
        view.lab_class = gr.Dropdown(["object"], label="Class of the region", visible=False, scale=1)
        view.model = gr.Dropdown(backbones_for("dichotomous"), value="tiny-sam", label="Click model", scale=1)
    with gr.Row():
        view.undo = gr.Button("Undo (Z)", size="sm", elem_id="label-undo")
        view.clear = gr.Button("Clear clicks", size="sm", elem_id="label-clear")
        view.add = gr.Button("Add region (A)", size="sm", elem_id="add-region")
        view.save = gr.Button("Save pair to set (S)", variant="primary", size="sm", elem_id="save-pair")
    view.msg = message("label-msg")
    gr.HTML(KEYS_HELP, js_on_load=KEYS_JS, elem_id="label-keys")
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
        view.clear_set = gr.Button("Empty the labelled set", variant="stop", size="sm", elem_id="empty-set")
    view.set_msg = message("set-msg")


def _on(trigger, fn, inputs, outputs, failed: str):
    """Wire a labeller event: private, its errors said in its own message (its last output), and
    progress shown minimal: Gradio's full progress overlay is what blanked the image out on every
    click (a white cover over it while SAM ran; the image itself stays shown while its next one loads).
    Returns the event (others may follow it)."""
    return trigger(
        in_page(fn, len(outputs), failed=failed),
        inputs,
        outputs,
        api_visibility="private",
        show_progress="minimal",
    )


def _wire_labelling(studio: Studio, owner, task, view: SimpleNamespace) -> None:
    """Open a queue of images, move along it, click (SAM proposes), zoom and pan, undo / clear /
    add the region, fix it with the brush."""
    _wire_queue(studio, owner, task, view)

    def shown(state, t, names):
        return labeller.render(state, len(_classes(t, names)))

    def on_click(o, state, m, model, t, names, evt: gr.SelectData):
        if state is None:
            return gr.skip(), gr.skip(), gr.skip()
        labeller.click(state, evt.index[0], evt.index[1], m)
        labeller.propose(state, model)
        note = gr.skip()
        if state.get("device_note") and state.get("device_note") != state.get("device_note_shown"):
            state["device_note_shown"] = state["device_note"]
            note = f"Click labelling: {state['device_note']}"  # once per image and reason
        return state, shown(state, t, names), note

    def edit(action):
        def run(state, model, t, names, lab):
            if state is None:
                return gr.skip(), gr.skip(), gr.skip()
            if action == "undo":
                labeller.propose(labeller.undo(state), model)
            elif action == "clear":
                labeller.clear_clicks(state)
            else:
                labeller.add_region(state, _class_id(t, names, lab))
                return state, shown(state, t, names), _added(t, names, lab)
            return state, shown(state, t, names), gr.skip()

        return run

    def view_change(change):
        def run(state, t, names):
            return (gr.skip(),) * 3 if state is None else (change(state), shown(state, t, names), gr.skip())

        return run

    def open_brush(state, t, names):
        if state is None:
            return gr.skip(), gr.skip()
        background = labeller.render(state, len(_classes(t, names)), clicks=False, whole=True)
        return {"background": background, "layers": [], "composite": None}, gr.skip()

    def apply(state, value, t, names, lab):
        if state is None or not value or not value.get("layers"):
            return gr.skip(), gr.skip(), gr.skip()
        labeller.apply_brush(state, value["layers"][0], _class_id(t, names, lab))
        return state, shown(state, t, names), "Brush applied."

    v, ctx, edited = view, [view.model, task, view.classes], [view.state, view.image, view.msg]
    _on(v.image.select, on_click, [owner, v.state, v.mode, *ctx], edited, "Cannot propose a mask")
    for button, action in ((v.undo, "undo"), (v.clear, "clear"), (v.add, "add")):
        _on(button.click, edit(action), [v.state, *ctx, v.lab_class], edited, f"Cannot {action}")
    for button, (_, _, change) in zip(v.view_buttons, VIEW_BUTTONS):
        _on(button.click, view_change(change), [v.state, task, v.classes], edited, "Cannot change the view")
    _on(v.brush_open.click, open_brush, [v.state, task, v.classes], [v.brush, v.msg], "Cannot open the brush")
    _on(v.brush_apply.click, apply, [v.state, v.brush, task, v.classes, v.lab_class], edited, "Cannot apply")


def _wire_queue(studio: Studio, owner, task, view: SimpleNamespace) -> None:
    """Upload images (or pick an example) into a queue of images to label; Previous / Next move
    along it, each image's work kept."""

    def open_queue(o, files, state, t, names):
        if not files:
            return (gr.skip(),) * 4
        check_owner(o)
        queue, skipped, added = labeller.queue_files(state, files, studio.load_image, studio.limits.max_images)
        if queue is None:
            raise UserError("none of these images can be opened: " + "; ".join(skipped))
        n = len(queue["queue"])
        notes = [f"{n} image{'s' if n > 1 else ''} to label" + (f" ({added} added)." if queue is state else ".")]
        if skipped:
            notes.append("Left out:\n" + "\n".join(f"- {s}" for s in skipped))
        image = gr.skip() if queue is state else labeller.render(queue, len(_classes(t, names)))
        return queue, image, labeller.position(queue), "\n\n".join(notes)

    def move(step):
        def run(state, t, names):
            if state is None:
                return gr.skip(), gr.skip(), gr.skip()
            if not labeller.go(state, step, studio.load_image):
                end = "the last image" if step > 0 else "the first image"
                return gr.skip(), gr.skip(), f"{labeller.position(state)}: this is {end}."
            return state, labeller.render(state, len(_classes(t, names))), labeller.position(state)

        return run

    v, opened = view, [view.state, view.image, view.where, view.upload_msg]
    _on(v.file.upload, open_queue, [owner, v.file, v.state, task, v.classes], opened, "Cannot open these images")
    _on(
        v.example.input,
        lambda o, p, t, n: open_queue(o, [example_path(p)] if example_path(p) else None, None, t, n),
        [owner, v.example, task, v.classes],
        opened,
        "Cannot open the example",
    )
    for button, step in ((v.prev, -1), (v.next, 1)):
        _on(button.click, move(step), [v.state, task, v.classes], [v.state, v.image, v.where], "Cannot open it")
    v.image.change(  # an image opened from elsewhere (a correction from the Label-the-rest tab)
        lambda state: labeller.position(state) if state else gr.skip(),
        v.state,
        v.where,
        api_visibility="private",
        show_progress="hidden",
    )


def _wire_set(studio: Studio, owner, task, view: SimpleNamespace):
    """Save the labelled image to the browser's labelled set (one per browser, a standard dataset
    folder), shown again when the page is loaded; download, empty or train on it. Returns the
    train-on-it action (the Train tab wires it) and the save event (the Label-the-rest tab follows it)."""

    def set_dir(o):
        return studio.paths.labelled_set(check_owner(o))

    def save_pair(o, state, t, names, lab):
        if state is None:
            raise UserError("open an image to label first")
        try:
            stem = labeller.save_pair(state, set_dir(o), t, _classes(t, names), _class_id(t, names, lab))
        except ValueError as e:
            raise UserError(str(e)) from None
        shown = labeller.render(state, len(_classes(t, names)))
        gallery = labeller.gallery(set_dir(o), t)
        return state, shown, gallery, labeller.position(state), f"Saved **{stem}** to the labelled set."

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

    def download_set(o):
        return outbox(_zip_set(studio, o), "labelled-set.zip"), gr.skip()

    def empty_set(o, state):
        shutil.rmtree(set_dir(o), ignore_errors=True)
        labeller.forget_saved(state)
        return state, [], labeller.position(state) if state else gr.skip(), "The labelled set is empty."

    def redraw(o, t):
        """The owner's labelled set, drawn when the page (re)loads and when the task changes."""
        try:
            return labeller.gallery(set_dir(o), t)
        except UserError:  # no owner token yet
            return []

    v = view
    saved = _on(
        v.save.click,
        save_pair,
        [owner, v.state, task, v.classes, v.lab_class],
        [v.state, v.image, v.gallery, v.where, v.msg],
        "Cannot save the pair",
    )
    one_click_download(
        v.set_zip,
        in_page(download_set, 2, failed="Cannot download the set"),
        owner,
        message=v.set_msg,
        api_visibility="private",
    )
    _on(v.clear_set.click, empty_set, [owner, v.state], [v.state, v.gallery, v.where, v.set_msg], "Cannot empty it")
    for trigger in (owner.change, task.change):
        trigger(redraw, [owner, task], v.gallery, api_visibility="private", show_progress="hidden")
    v.classes.change(
        lambda t, n: gr.Dropdown(choices=_classes(t, n)[1:] or ["object"]),
        [task, v.classes],
        v.lab_class,
        api_visibility="private",
    )
    return in_page(use_labelled, 3, failed="Cannot use the labelled set", at=1), saved


def _added(task: str, names: str, chosen: str | None) -> str:
    """What *Add region* says: the class the region was painted with, where there are classes."""
    if not TASKS[task].mask.needs_class_names:
        return "Region added."
    return f"Region added as **{_classes(task, names)[_class_id(task, names, chosen)]}**."


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
