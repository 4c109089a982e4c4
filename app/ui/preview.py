"""The studio's Preview tab: predict on an image at full resolution with one of this browser's
adapters or a frozen backbone, optionally with clicks or a text prompt (SAM 3: a binary mask of a
phrase's instances) or class names (a class map) and, for the tasks that take them (SAM 3's
concept task), exemplar boxes typed or drawn by two clicks; and, for the tasks that name classes, Compare:
frozen CLIP, frozen SAM 3 and the adapter side by side on the same classes. The actions are
app.studio's and app.compare's."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import gradio as gr

from adapt.tasks import TASKS
from app import labeller
from app.catalog import backbone_choices, backbones_for
from app.compare import MAX_COMPARE, SAM3_TASK, compare
from app.studio import (
    MAX_BOXES,
    Studio,
    UserError,
    as_phrase,
    boxes_taken,
    parse_boxes,
    parse_classes,
    parse_clicks,
)
from app.ui.common import (
    example_path,
    examples,
    model_pickers,
    text_field,
    text_field_follows,
    user_errors,
    valid_owner,
)
from app.ui.messages import api_endpoint, in_page, message

# the open-vocabulary preview's default classes: the objects of assets/examples/colours.jpg, which
# the bundled tiny-clip tells apart zero-shot (see assets/examples/README.md)
EXAMPLE_CLASSES = "background, red object, cyan object, yellow object, white object"
# what the exemplar boxes field says under it, until a first corner is clicked
BOXES_INFO = f"Image pixels, at most {MAX_BOXES}; or click two opposite corners on the image above"


def preview_tab(studio: Studio, owner, task) -> dict:
    with gr.Tab("4. Preview", id="preview"):
        with gr.Row():
            with gr.Column():
                form = _request_form()
            with gr.Column():
                form.main = gr.Image(label="Mask / label map (full resolution)", format="png", elem_id="predict-main")
                form.extra = gr.Image(label="Cut-out / legend", format="png", image_mode=None, elem_id="predict-extra")
                form.over = gr.Image(label="Overlay", format="png", elem_id="predict-overlay")
                form.info = gr.Markdown(elem_id="predict-info")
        form.scale = gr.State(1.0)
        _compare_area(form)
        _wire(studio, owner, task, form)  # in the tab: its hidden API trigger too
        _wire_compare(studio, owner, task, form)
    return {"adapter": form.adapter, "classes": form.classes, "backbone": form.backbone}


def _request_form() -> SimpleNamespace:
    """The image (an upload or an example), its clicks, the model and the class names."""
    with gr.Row():
        image = gr.File(
            label="Image (any size up to the pixel limit)",
            file_types=["image"],
            elem_id="predict-image",
            scale=2,
        )
        example = gr.Dropdown(
            [(Path(p).stem, p) for p in examples()],
            label="or an example",
            scale=1,
            elem_id="predict-example",
        )
    view = gr.Image(
        label="Optional: click to add points (dichotomous) or two corners of an exemplar box (concept)",
        interactive=False,
        format="png",
        height=320,
        elem_id="predict-view",
    )
    with gr.Row():
        mode = gr.Radio(["foreground point", "background point"], value="foreground point", label="Click adds")
        clicks = gr.Textbox(
            label="clicks", placeholder="x,y,label; ... (label 1 object, 0 background)", elem_id="clicks"
        )
    adapter, backbone = model_pickers("adapter", "predict-backbone", "backbone (used when no adapter is chosen)")
    text = text_field("Text prompt (SAM 3: every instance of a phrase, instead of clicks)", "predict-text")
    classes = gr.Textbox(
        EXAMPLE_CLASSES,
        label="classes (with tiny-clip: colour names, as for colours.jpg)",
        placeholder="background, sky, road, car",
        visible=False,
        elem_id="predict-classes",
    )
    boxes = gr.Textbox(
        "",  # "": optional in the API
        label="Exemplar boxes (SAM 3 concept: examples of the classes)",
        info=BOXES_INFO,
        placeholder="x0,y0,x1,y1; x0,y0,x1,y1",
        visible=False,
        elem_id="predict-boxes",
    )
    with gr.Row(equal_height=True):
        run = gr.Button("Predict", variant="primary", elem_id="predict", scale=1)
        runs = message("predict-runs", "Runs: frozen " + backbone.value + " (no adapter)")
    msg = message("predict-msg")
    return SimpleNamespace(
        runs=runs,
        msg=msg,
        image=image,
        example=example,
        view=view,
        mode=mode,
        clicks=clicks,
        adapter=adapter,
        backbone=backbone,
        text=text,
        classes=classes,
        boxes=boxes,
        corner=gr.State(None),  # an exemplar box's first corner (image pixels) until the second is clicked
        run=run,
    )


def _wire(studio: Studio, owner, task, form: SimpleNamespace) -> None:
    @user_errors
    def show(path):
        """The image shown to click on, its display scale; a new image clears its clicks and boxes."""
        if not path:
            return (gr.skip(),) * 5
        img = studio.load_image(path)
        s = min(1.0, labeller.DISPLAY / max(img.shape[:2]))
        shown = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else img
        return shown, s, "", gr.Textbox(value="", info=BOXES_INFO), None

    def pick(path):
        path = example_path(path)
        return (path,) + show(path)

    def on_click(task, clicks, boxes, corner, m, s, evt: gr.SelectData):
        """A click on the image: a corner of an exemplar box for a task that takes them, else a point."""
        x, y = evt.index[0] / s, evt.index[1] / s
        if task in TASKS and TASKS[task].exemplars:
            return (gr.skip(), *add_corner(boxes, corner, x, y))
        return add_click(clicks, m.startswith("foreground"), x, y), gr.skip(), None

    def predict(owner, image, adapter, backbone, task, classes, clicks, text="", boxes=""):
        outputs, desc = studio.predict(owner, image, adapter, backbone, task, classes, clicks, text, boxes)
        second = outputs.get("cutout", outputs.get("legend"))
        return outputs["main"], second, outputs["overlay"], desc

    def predict_in_page(*args):
        return (*predict(*args), "Done: the results are on the right.")

    f = form
    shown = [f.view, f.scale, f.clicks, f.boxes, f.corner]
    f.image.upload(show, f.image, shown, api_visibility="private")
    f.example.input(pick, f.example, [f.image, *shown], api_visibility="private")
    f.view.select(
        on_click,
        [task, f.clicks, f.boxes, f.corner, f.mode, f.scale],
        [f.clicks, f.boxes, f.corner],
        api_visibility="private",
    )
    request = [owner, f.image, f.adapter, f.backbone, task, f.classes, f.clicks, f.text, f.boxes]
    api_endpoint(predict, request, [f.main, f.extra, f.over, f.info], "predict")
    f.run.click(
        in_page(predict_in_page, 5), request, [f.main, f.extra, f.over, f.info, f.msg], api_visibility="private"
    )
    choice = [owner, f.adapter, f.backbone, task, f.classes, f.clicks, f.text, f.boxes]
    fields = (f.adapter, f.backbone, task, f.classes, f.clicks, f.text, f.boxes)
    for trigger in (field.change for field in fields):
        trigger(lambda *a: what_runs(studio, *a), choice, f.runs, api_visibility="private", show_progress="hidden")
    text_field_follows(studio, owner, task, f.adapter, f.backbone, f.text)
    task.change(boxes_shown, task, [f.boxes, f.corner], api_visibility="private", show_progress="hidden")


def boxes_shown(task: str) -> tuple:
    """The exemplar boxes field, shown while the task takes them (Task.exemplars); hidden, it is
    emptied, so nothing hidden is sent; either way a half-drawn box is forgotten."""
    takes = task in TASKS and TASKS[task].exemplars
    emptied = {} if takes else {"value": ""}
    return gr.Textbox(visible=takes, info=BOXES_INFO, **emptied), None


def appended(text: str, part: str) -> str:
    """A prompt field's text with one more ';'-separated part."""
    return f"{text}; {part}" if text and text.strip() else part


def add_click(text: str, foreground: bool, x: float, y: float) -> str:
    """The clicks field after a click at (x, y) in image pixels."""
    return appended(text, f"{x:.0f},{y:.0f},{1 if foreground else 0}")


def add_corner(text: str, corner, x: float, y: float) -> tuple:
    """(the exemplar boxes field, the pending corner) after a click at (x, y) in image pixels: the
    first click of a box is kept as its corner (said under the field), the second draws the box
    between the two, in either order, and appends it; one with no width or height is not drawn."""
    if corner is None:
        return gr.Textbox(info=f"Corner ({x:.0f}, {y:.0f}) set: click the opposite corner"), (x, y)
    (x0, x1), (y0, y1) = sorted((round(corner[0]), round(x))), sorted((round(corner[1]), round(y)))
    if x0 == x1 or y0 == y1:
        said = f"A box needs width and height: click a corner away from ({corner[0]:.0f}, {corner[1]:.0f})"
        return gr.Textbox(info=said), corner
    return gr.Textbox(value=appended(text, f"{x0},{y0},{x1},{y1}"), info=BOXES_INFO), None


def what_runs(studio: Studio, owner, adapter, backbone, task, classes, clicks, text="", boxes="") -> str:
    """The line beside Predict that says plainly what will run: the model (an adapter of this
    browser, or a frozen backbone), the task, and its classes, text prompt or clicks, and its
    exemplar boxes; or why it will not run (an adapter trained for another task is refused by the
    studio too, and so are boxes for a task that takes none)."""
    if task not in TASKS:
        return ""
    kind = TASKS[task]
    title = kind.title.split(" (")[0].lower()
    if adapter:
        fitting = {ref: label for label, ref in studio.adapters(owner, task)} if valid_owner(owner or "") else {}
        if adapter not in fitting:
            return f"**Will not run:** adapter {adapter[:16]} is not for the {title} task: choose another, or none."
        model = f"adapter {fitting[adapter]}"
    else:
        model = f"frozen {backbone}"
    try:
        exemplars = parse_boxes(boxes)
        boxes_taken(exemplars, kind)
        if kind.mask.needs_class_names:
            names = parse_classes(classes, background=False)
            detail = f"{len(names)} classes" if names else ("the adapter's classes" if adapter else "no classes given")
        elif phrase := as_phrase(text, "the text prompt"):
            detail = f"every {phrase!r}"
        else:
            points = parse_clicks(clicks)
            detail = f"{len(points[0])} click(s)" if points is not None else "no clicks"
    except UserError as e:
        return f"**Will not run:** {e}"
    if exemplars is not None:
        detail += f", {len(exemplars)} exemplar box(es)"
    return f"Runs: {model}, {title}, {detail}"


# --- Compare: three models side by side on the same classes ------------------------------------------


def _compare_area(form: SimpleNamespace) -> None:
    """Shown for the tasks that name classes: the frozen SAM 3 to compare with, the Compare button
    and its message, and three panels (label map, legend, which model)."""
    sam3 = backbone_choices(SAM3_TASK)
    with gr.Group(visible=False) as form.compare_box:
        gr.Markdown(
            "### Compare\nThe image and classes above, side by side: **frozen CLIP**, **frozen SAM 3** and the "
            f"**adapter** chosen above (if any), each a label map of the same classes (at most {MAX_COMPARE})."
        )
        with gr.Row(equal_height=True):
            form.compare_sam3 = gr.Dropdown(
                sam3, value=backbones_for(SAM3_TASK)[0], label="Frozen SAM 3", allow_custom_value=True, scale=1
            )
            form.compare = gr.Button("Compare", elem_id="compare", scale=1)
            form.compare_msg = message("compare-msg")
        form.panels = []
        with gr.Row():
            for k in range(3):
                with gr.Column():
                    form.panels.append(
                        (
                            gr.Image(label="label map", format="png", elem_id=f"compare-map-{k}"),
                            gr.Image(label="legend", format="png", image_mode=None, elem_id=f"compare-legend-{k}"),
                            gr.Markdown(elem_id=f"compare-title-{k}"),
                        )
                    )


def _wire_compare(studio: Studio, owner, task, form: SimpleNamespace) -> None:
    def run_compare(owner, image, classes, adapter, sam3):
        panels = compare(studio, owner, image, classes, adapter, sam3)
        shown = [(p.outputs["main"], p.outputs["legend"], p.title) for p in panels]
        shown += [(None, None, "**Adapted**: choose an adapter above to see it here")] * (3 - len(shown))
        return (*[x for panel in shown for x in panel], f"Done: {len(panels)} models, the same classes.")

    f = form
    outputs = [x for panel in f.panels for x in panel] + [f.compare_msg]
    f.compare.click(
        in_page(run_compare, len(outputs)),
        [owner, f.image, f.classes, f.adapter, f.compare_sam3],
        outputs,
        api_visibility="private",
    )
    task.change(
        lambda t: gr.Group(visible=t in TASKS and TASKS[t].mask.needs_class_names),
        task,
        f.compare_box,
        api_visibility="private",
    )
