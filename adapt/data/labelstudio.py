"""Label Studio's formats: its brush RLE, its JSON export read as a dataset, and masks written back
as Label Studio tasks (annotations or predictions).

Label Studio stores a brush mask as its own run-length code (thi.ng rle-pack over the mask's RGBA
bytes; label-studio-sdk's `converter.brush` encodes and decodes it) and a polygon as points in
percent of the image's width and height. A JSON export is a list of tasks:

    [{"id": 3, "data": {"image": "/data/upload/1/8f2a1c3d-cat.png"},
      "annotations": [{"result": [{"type": "brushlabels", "original_width": 640, "original_height": 480,
                                   "value": {"format": "rle", "rle": [...], "brushlabels": ["cat"]}}, ...]}]}]

`export_to_coco` turns such a list into the COCO document the dataset loader already checks (image
sizes against the files, empty masks, limits: adapt.data.layout reads a folder holding a Label Studio
export and its images exactly as one holding a COCO file), so an export is one more way to give a
dataset, never a second loader. `mask_results` / `tasks_from_masks` go the other way: a label map
becomes one brush result per class present, and images become tasks carrying them.
"""

from __future__ import annotations

import re
import uuid
from pathlib import PurePosixPath
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from adapt.data.coco import rle_encode

__all__ = [
    "BRUSH",
    "POLYGON",
    "brush_decode",
    "brush_encode",
    "export_to_coco",
    "is_export",
    "mask_results",
    "parse_config",
    "results_mask",
    "task_image",
    "tasks_from_masks",
]

BRUSH = "brushlabels"
POLYGON = "polygonlabels"
MASK_TYPES = (BRUSH, POLYGON)
MAX_RLE_BYTES = 64 << 20  # a brush code longer than this is refused before it is decoded
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")  # Label Studio renames an uploaded cat.png 8f2a1c3d-cat.png
FOREGROUND = "foreground"  # the label of a brush or polygon without one, and a binary mask's


MAX_CONFIG = 100_000  # characters in a labelling config


def parse_config(xml: str) -> dict:
    """What a Label Studio labelling config asks for: the first BrushLabels or PolygonLabels control
    ("from_name", its label values "labels") and the Image it labels ("to_name", and "image_key",
    the task data field its value "$image" names). Raises ValueError saying what is missing."""
    import xml.etree.ElementTree as ET

    if not isinstance(xml, str) or not xml.strip():
        raise ValueError("the labelling config is empty")
    if len(xml) > MAX_CONFIG:
        raise ValueError(f"the labelling config has {len(xml):,} characters; at most {MAX_CONFIG:,} are read")
    if "<!DOCTYPE" in xml.upper() or "<!ENTITY" in xml.upper():
        raise ValueError("the labelling config declares a DOCTYPE or entities, which Label Studio configs never do")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise ValueError(f"the labelling config is not XML ({e})") from None
    controls = [el for el in root.iter() if el.tag.lower() in ("brushlabels", "polygonlabels")]
    if not controls:
        raise ValueError("the labelling config has no <BrushLabels> or <PolygonLabels>: nothing a mask can fill")
    control = controls[0]
    labels = [str(el.get("value")) for el in control if el.tag.lower() == "label" and el.get("value")]
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"<{control.tag} name={control.get('name')!r}> needs distinct <Label value=...> children")
    images = {el.get("name"): el for el in root.iter() if el.tag.lower() == "image"}
    image = images.get(control.get("toName"))
    value = image.get("value", "") if image is not None else ""
    if image is None or not value.startswith("$"):
        raise ValueError(f"<{control.tag}> labels {control.get('toName')!r}, which is not an <Image value=\"$field\">")
    return {"from_name": control.get("name"), "to_name": image.get("name"), "image_key": value[1:], "labels": labels}


def brush_decode(rle, height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE (a list of byte values) -> HxW uint8 0/1 mask (alpha > 0).

    The code's header is checked before label-studio-sdk's decoder sees it: that decoder allocates
    as many values as the header says and reads bits past the end as an error only by chance."""
    from label_studio_sdk.converter.brush import decode_rle

    if not isinstance(rle, list) or not rle:
        raise ValueError("the brush 'rle' is not a non-empty list of byte values")
    if len(rle) > MAX_RLE_BYTES:
        raise ValueError(f"the brush 'rle' has {len(rle):,} bytes; at most {MAX_RLE_BYTES:,} are read")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in rle):
        raise ValueError("the brush 'rle' holds values that are not bytes (integers 0-255)")
    if len(rle) < 6:
        raise ValueError("the brush 'rle' ends before its header does")
    count = int.from_bytes(bytes(rle[:4]), "big")
    if count != 4 * height * width:
        raise ValueError(
            f"the brush 'rle' holds {count:,} values but a {width}x{height} image needs {4 * height * width:,} "
            "(4 per pixel): it was drawn on an image of another size"
        )
    try:
        values = decode_rle(bytes(rle))
    except (ValueError, IndexError) as e:  # the bit stream ends inside a run
        raise ValueError(f"the brush 'rle' does not decode ({e or 'it ends inside a run'})") from None
    return (values.reshape(height, width, 4)[:, :, 3] > 0).astype(np.uint8)


def brush_encode(mask: np.ndarray) -> list[int]:
    """HxW mask (nonzero = painted) -> Label Studio brush RLE; the inverse of `brush_decode`."""
    from label_studio_sdk.converter.brush import mask2rle

    return [int(v) for v in mask2rle(np.where(np.asarray(mask) != 0, 255, 0).astype(np.uint8))]


def is_export(doc) -> bool:
    """Whether a parsed JSON document is a Label Studio task list (export or import file)."""
    return isinstance(doc, list) and bool(doc) and all(isinstance(t, dict) and "data" in t for t in doc)


def task_image(data) -> str | None:
    """The image reference of a task's data: its "image" field, else its one string field."""
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("image"), str):
        return data["image"]
    strings = [v for v in data.values() if isinstance(v, str)]
    return strings[0] if len(strings) == 1 else None


def image_names(ref: str) -> list[str]:
    """The file names an image reference may stand for: its last path component (a local-storage
    URL's ?d= path included), then that name without the prefix Label Studio gives uploads."""
    parsed = urlparse(ref)
    path = parse_qs(parsed.query).get("d", [parsed.path])[0]
    name = PurePosixPath(unquote(path).replace("\\", "/")).name
    match = UPLOAD_PREFIX.match(name)
    return [name] + ([match.group(1)] if match else [])


def _chosen_annotation(task: dict):
    """The annotation a task's mask comes from: a ground-truth one, else the last one not cancelled."""
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    truth = [a for a in annotations if a.get("ground_truth")]
    return (truth or annotations or [None])[-1]


def _result_segmentation(result: dict, where: str):
    """(label, COCO segmentation, (w, h)) of one brush or polygon result, or a reason string."""
    value = result.get("value")
    width, height = result.get("original_width"), result.get("original_height")
    if not isinstance(value, dict):
        return f"{where} has no 'value' object"
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        return f"{where} has no 'original_width' and 'original_height' (positive integers)"
    kind = result["type"]
    labels = value.get(kind) or [FOREGROUND]
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels) or len(labels) != 1:
        return f"{where} must name exactly one label in value.{kind}, not {str(labels)[:60]}"
    if kind == BRUSH:
        if value.get("format", "rle") != "rle":
            return f"{where} has brush format {str(value.get('format'))[:20]!r}; only 'rle' is read"
        try:
            mask = brush_decode(value.get("rle"), height, width)
        except ValueError as e:
            return f"{where}: {e}"
        return labels[0], rle_encode(mask), (width, height)
    points = value.get("points")
    if not (isinstance(points, list) and len(points) >= 3) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in points
    ):
        return f"{where} needs 'points': at least 3 [x, y] pairs in percent of the image"
    flat = [float(v) for x, y in points for v in (x * width / 100.0, y * height / 100.0)]
    return labels[0], [flat], (width, height)


def export_to_coco(tasks: list) -> tuple[dict, list[str], list[tuple[str, str]]]:
    """A Label Studio export -> (COCO document, problems, skipped).

    Each task with an annotation (`_chosen_annotation`) becomes a COCO image named after its image
    reference (`image_names`: the first is file_name, the others `other_names`) and one COCO
    annotation per brush or polygon result; labels become categories in the order first met.
    Problems (a malformed result, an annotation with no mask in it, an image referenced twice) are
    returned as messages; tasks with no annotation are skipped, and their images listed under
    "ignored_file_names" so that a folder holding every task's image still loads."""
    images, annotations, problems, skipped, ignored = [], [], [], [], []
    labels: dict[str, int] = {}
    seen: dict[str, object] = {}
    for k, task in enumerate(tasks):
        tid = task.get("id", f"#{k}")
        ref = task_image(task.get("data"))
        if ref is None:
            problems.append(f"task {tid}: its data has no 'image' field (a URL or path)")
            continue
        names = image_names(ref)
        annotation = _chosen_annotation(task)
        if annotation is None:
            skipped.append((names[0], f"task {tid} has no annotation"))
            ignored.extend(names)
            continue
        if names[0] in seen:
            problems.append(f"tasks {seen[names[0]]} and {tid} both reference an image named '{names[0]}'")
            continue
        seen[names[0]] = tid
        results = annotation.get("result")
        if not isinstance(results, list):
            problems.append(f"task {tid}: its annotation has no 'result' list")
            continue
        kept, sizes = [], set()
        for j, r in enumerate(results):
            if not isinstance(r, dict) or r.get("type") not in MASK_TYPES:
                continue  # rectangles, choices, text: nothing a mask can learn from
            got = _result_segmentation(r, f"task {tid}, result {r.get('id', j)}")
            if isinstance(got, str):
                problems.append(got)
                continue
            kept.append(got)
            sizes.add(got[2])
        if len(sizes) > 1:
            problems.append(f"task {tid}: its results were drawn on images of different sizes {sorted(sizes)}")
            continue
        if not kept and not any(p.startswith(f"task {tid}") for p in problems):
            problems.append(f"task {tid}: its annotation has no brush or polygon result (boxes cannot train a mask)")
        if not kept:
            continue
        (width, height), image_id = sizes.pop(), len(images) + 1
        images.append(
            {"id": image_id, "file_name": names[0], "other_names": names[1:], "width": width, "height": height}
        )
        for label, segmentation, _ in kept:
            category = labels.setdefault(label, len(labels) + 1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": segmentation,
                }
            )
    categories = [{"id": i, "name": name} for name, i in labels.items()]
    doc = {"images": images, "annotations": annotations, "categories": categories, "ignored_file_names": ignored}
    return doc, problems, skipped


def results_mask(results: list, height: int, width: int, values: dict[str, int]) -> np.ndarray:
    """An annotation's brush and polygon results drawn as one HxW label map (`values`: label -> value;
    results whose label is not there are refused). Raises ValueError saying what is wrong."""
    from adapt.data.coco import _coco_mask

    drawn = []
    for j, r in enumerate(results if isinstance(results, list) else []):
        if not isinstance(r, dict) or r.get("type") not in MASK_TYPES:
            continue
        got = _result_segmentation(r, f"result {r.get('id', j)}")
        if isinstance(got, str):
            raise ValueError(got)
        label, segmentation, size = got
        if size != (width, height):
            raise ValueError(f"result {r.get('id', j)} was drawn on a {size[0]}x{size[1]} image, not {width}x{height}")
        if label not in values:
            raise ValueError(f"result {r.get('id', j)} has the label {label!r}; this project has {', '.join(values)}")
        drawn.append((values[label], segmentation))
    if not drawn:
        raise ValueError("the annotation has no brush or polygon result")
    return _coco_mask(drawn, height, width, "openvocab")


def mask_results(mask: np.ndarray, labels: list[str], from_name: str, to_name: str) -> list[dict]:
    """A label map (value k = labels[k - 1]; 0 is background) as Label Studio brush results, one per
    label present."""
    mask = np.asarray(mask)
    height, width = mask.shape[:2]
    out = []
    for k, label in enumerate(labels, 1):
        painted = mask == k
        if painted.any():
            out.append(
                {
                    "id": uuid.uuid4().hex[:10],
                    "from_name": from_name,
                    "to_name": to_name,
                    "type": BRUSH,
                    "original_width": int(width),
                    "original_height": int(height),
                    "image_rotation": 0,
                    "value": {"format": "rle", "rle": brush_encode(painted), BRUSH: [label]},
                }
            )
    return out


def tasks_from_masks(
    items,
    labels: list[str],
    *,
    from_name: str = "tag",
    to_name: str = "image",
    image_key: str = "image",
    model_version: str | None = None,
) -> list[dict]:
    """Label Studio import tasks, one per (image reference, label map, score) in `items`, in the
    order given (Label Studio lists imported tasks in that order: give the most uncertain first).
    With `model_version`, each mask is a prediction with its score (the model's confidence, 0-1);
    without, an annotation (the user's own labels)."""
    tasks = []
    for ref, mask, score in items:
        result = mask_results(mask, labels, from_name, to_name)
        task = {"data": {image_key: ref}}
        if model_version is None:
            task["annotations"] = [{"result": result}]
        else:
            prediction = {"model_version": model_version, "result": result}
            if score is not None:
                prediction["score"] = round(float(score), 6)
            task["predictions"] = [prediction]
        tasks.append(task)
    return tasks
