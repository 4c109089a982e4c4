"""Compare, in the studio's Preview tab: one image and one class list, side by side, from three
models: frozen CLIP (the open-vocabulary task on the bundled CLIP, which runs anywhere, offline),
frozen SAM 3 (the concept task on a SAM 3 backbone: tiny-sam3 on the CPU unless chosen) and an
adapted model of this browser (a concept or open-vocabulary adapter). Each panel is the colour
label map of the same classes with its legend; a class keeps its colour in every panel (the
colours follow the class list alone), so the panels read against each other.

    panels = compare(studio, owner, "photo.jpg", "cell, debris", adapter_ref, "tiny-sam3")
    [p.title for p in panels]   # frozen CLIP, frozen SAM 3, the adapter (when one is chosen)
    panels[1].outputs["main"]   # the colour label map at the image's size; "legend", "index" beside

The models come from the studio's cache (Studio.model) and predict where it placed them
(app.studio.predict_on), as Predict does.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapt.backbones import bundled
from adapt.tasks import TASKS
from app.catalog import backbone_for, backbones_for
from app.studio import MAX_ID, Studio, UserError, as_text, check_owner, parse_classes, predict_on

MAX_COMPARE = 32  # classes at once: each of three models prompts every one (the tasks stop at 255)
CLIP_TASK = "openvocab"  # frozen CLIP names the classes zero-shot
SAM3_TASK = "concept"  # frozen SAM 3 finds every instance of each class's phrase


@dataclass(frozen=True)
class Panel:
    title: str  # which model, in words
    classes: list[str]  # what the label map's ids are, background first: the same in every panel
    outputs: dict  # the task's label outputs: "main" the colour map, "legend", "index", "overlay"


def compare(
    studio: Studio, owner: str, image_path: str, classes: str, adapter_ref: str = "", sam3: str = ""
) -> list[Panel]:
    """Frozen CLIP, frozen SAM 3 (`sam3`: one of the concept task's backbones, the first offered
    when empty) and, when `adapter_ref` names one, the adapter: each predicting `classes` (the
    adapter's own when none are typed) on the image at its full resolution."""
    check_owner(owner)
    typed = parse_classes(classes, background=True)  # background first, as the tasks number the classes
    if len(typed) - 1 > MAX_COMPARE:
        raise UserError(f"{len(typed) - 1} classes; Compare runs three models over each: give at most {MAX_COMPARE}")
    sam3 = backbone_for(SAM3_TASK, as_text(sam3, "the SAM 3 backbone", MAX_ID).strip() or backbones_for(SAM3_TASK)[0])
    adapted = _adapter(studio, owner, adapter_ref)
    names = typed if len(typed) > 1 else (list(adapted[0].classes or []) if adapted else [])
    if not [n for n in names if n != typed[0]]:  # only the background
        raise UserError("name the classes to compare, separated by commas (e.g. background, cell, debris)")
    image = studio.load_image(image_path)
    models = [
        ("Frozen CLIP", studio.model(owner, "", bundled("clip"), CLIP_TASK)),
        ("Frozen SAM 3", studio.model(owner, "", sam3, SAM3_TASK)),
    ] + ([("Adapted", adapted)] if adapted else [])
    vocabulary = TASKS[SAM3_TASK].mask.classes(names)  # as every label-map task numbers them
    return [Panel(f"**{role}**: {e[1]}", vocabulary, predict_on(e, image, classes=names)) for role, e in models]


def _adapter(studio: Studio, owner: str, ref) -> tuple | None:
    """The studio's cached model of one of this browser's adapters, if `ref` names one; an adapter
    whose task draws no label map (a dichotomous one) is refused before it is loaded."""
    ref = as_text(ref, "the adapter id", MAX_ID).strip()
    if not ref:
        return None
    tasks = {r: task for _, r, task, _ in studio.adapter_rows(owner)}
    if ref not in tasks:
        raise UserError(f"no adapter {ref!r} for this browser: choose one of yours, or none")
    if tasks[ref] not in TASKS or not TASKS[tasks[ref]].mask.needs_class_names:
        raise UserError(
            f"the chosen adapter is for the {tasks[ref]} task, which draws no label map: "
            f"Compare takes a {SAM3_TASK} or {CLIP_TASK} adapter, or none"
        )
    return studio.model(owner, ref, "", tasks[ref])


__all__ = ["MAX_COMPARE", "SAM3_TASK", "Panel", "compare"]
