"""ONNX graphs of an adapted model, and a runner that predicts with them (onnxruntime on the CPU).

    export_onnx("runs/x/adapter", "x-onnx")      # adapt.pipeline: the adapter merged into its base model
    task = load_onnx("x-onnx")                   # the task's API, its network calls in onnxruntime
    task.predict_outputs(image, box=[...])       # the same outputs as the PyTorch task

What the folder holds:
- SAM (dichotomous task), the two halves SAM's own deployments use:
  `image_encoder.onnx`: image (B, 3, S, S), normalised and padded as Sam.preprocess does
  -> image_embeddings (B, C, g, g);
  `mask_decoder.onnx`: image_embeddings (1, C, g, g), point_coords (1, N, 2) in the padded
  S x S frame, point_labels (1, N), mask_input (1, 1, 4g, 4g), has_mask_input (1,)
  -> low_res_logits (1, 1, 4g, 4g). N is dynamic. Point labels follow SAM's ONNX convention:
  1 foreground, 0 background, 2 and 3 a box's top-left and bottom-right corners, -1 padding (add
  one padding point when there is no box, as SAM's prompt encoder does).
- CLIP (open-vocabulary task): `openvocab.onnx`: images (B, 3, S, S) normalised -> logits
  (B, K, S, S) for the class list fixed at export (their text embeddings are constants of the
  graph; the names are in the graph's metadata and in onnx_config.json).
- `onnx_config.json`: what a runner needs (task, input size, normalisation, classes) and the
  adapter's own config; `README.md`: the inputs, outputs and pre/post-processing in words.

A folder is not trusted before it is read (it may come from anyone): `load_onnx` checks every key of
onnx_config.json against the backbone's architecture, parses each graph with onnx (without its
external data) to refuse external-data locations outside the folder and to compare the graph's
inputs and outputs with the config, and only then hands the graphs to onnxruntime; every failure,
onnxruntime's included, is one OnnxError line naming the folder's file.

The runner reuses the task's own pre- and post-processing (letterbox, windows, upsampling to the
source resolution, refinement), so its outputs are the PyTorch task's; only the network calls go to
onnxruntime. Graphs are fp32 by default; `fp16=True` exports half-precision graphs for GPU runtimes
(onnxruntime's CPU provider lacks fp16 kernels for some of their operators).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adapt.backbones import BACKBONES, architecture, spec_of
from adapt.backbones.catalog import names as backbone_names
from adapt.files import atomic_folder
from adapt.tasks import TASKS
from adapt.tasks.dichotomous import DichotomousTask
from adapt.tasks.openvocab import IGNORE_INDEX, OpenVocabTask, class_logits

CONFIG = "onnx_config.json"
ENCODER, DECODER, OPENVOCAB = "image_encoder.onnx", "mask_decoder.onnx", "openvocab.onnx"
OPSET = 18
FORMAT = "adapt-onnx"
GRAPHS = {"dichotomous": (ENCODER, DECODER), "openvocab": (OPENVOCAB,)}  # what a task's export holds


class OnnxError(ValueError):
    """An ONNX export or folder that cannot be used as asked; the message says why."""


# --- graphs --------------------------------------------------------------------------------------


class SamPromptDecoder(nn.Module):
    """SAM's prompt encoder + mask decoder with every prompt as labelled points (SAM's ONNX
    convention), the prompt-free and box prompts included, and an optional mask input. The same
    arithmetic as segment_anything's PromptEncoder, written without data-dependent indexing."""

    def __init__(self, sam):
        super().__init__()
        self.prompt_encoder, self.mask_decoder = sam.prompt_encoder, sam.mask_decoder
        self.size = float(sam.image_encoder.img_size)
        self.register_buffer("dense_pe", sam.prompt_encoder.get_dense_pe().detach().clone())

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        pe = self.prompt_encoder
        coords = (point_coords + 0.5) / self.size  # pixel centres, in [0, 1] of the square frame
        sparse = pe.pe_layer._pe_encoding(coords)
        labels = point_labels.unsqueeze(-1)
        sparse = sparse * (labels != -1) + pe.not_a_point_embed.weight * (labels == -1)
        for i, embed in enumerate(pe.point_embeddings):
            sparse = sparse + embed.weight * (labels == i)
        g = image_embeddings.shape[-1]
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, g, g)
        flag = has_mask_input.reshape(1, 1, 1, 1)
        dense = flag * pe.mask_downscaling(mask_input) + (1 - flag) * no_mask
        logits, _ = self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return logits


class OpenVocabGraph(nn.Module):
    """Images -> per-class logits of the open-vocabulary task, the class embeddings baked in."""

    def __init__(self, task, classes: list[str]):
        super().__init__()
        self.model, self.head = task.backbone.model, task.head
        with torch.no_grad():
            self.register_buffer("texts", task.text_features(classes).detach().clone())

    def forward(self, images):
        return class_logits(self.model, self.head, images, self.texts)


def sam_prompt_points(size: int, boxes=None, points=None) -> tuple[np.ndarray, np.ndarray]:
    """(point_coords (1, N, 2), point_labels (1, N)) float32 for mask_decoder.onnx from a prompt as
    sam_decode takes it (boxes (1, 4) xyxy, points (coords (1, n, 2), labels (1, n)), in the padded
    frame); neither: the whole frame as the box, sam_decode's prompt-free default."""
    coords, labels = [], []
    if points is not None:
        coords.append(np.asarray(points[0], np.float32).reshape(-1, 2))
        labels.append(np.asarray(points[1], np.float32).reshape(-1))
    if boxes is None and points is None:
        boxes = [[0.0, 0.0, size - 1.0, size - 1.0]]
    if boxes is not None:
        coords.append(np.asarray(boxes, np.float32).reshape(2, 2))
        labels.append(np.array([2, 3], np.float32))
    else:  # points without a box: SAM's prompt encoder pads with one "not a point"
        coords.append(np.zeros((1, 2), np.float32))
        labels.append(np.array([-1], np.float32))
    return np.concatenate(coords)[None], np.concatenate(labels)[None]


def _export(module: nn.Module, args: tuple, path: Path, names: list[str], outputs: list[str], dynamic: dict) -> None:
    import contextlib
    import io
    import warnings

    module.eval()
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > 1.5 * 2**30
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # tracer notes about segment-anything's shape checks
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=outputs,
            dynamic_shapes=dynamic,
            opset_version=OPSET,
            external_data=big,  # protobuf's 2 GB limit: ViT-H's weights go beside the graph
            dynamo=True,
            verbose=False,
        )


def _metadata(path: Path, entries: dict) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(path))


def write_onnx(task, out_dir, fp16: bool = False, classes: list[str] | None = None, info: dict | None = None) -> Path:
    """The ONNX folder (module doc) for a task already built (its model merged, in eval mode); `info` is kept in
    onnx_config.json as the adapter's config."""
    if task.backbone.onnx_refusal:
        raise OnnxError(f"{task.backbone.name}: {task.backbone.onnx_refusal}")
    dtype = torch.float16 if fp16 else torch.float32
    backbone = task.backbone.to("cpu")
    Dim = torch.export.Dim
    config = {
        "format": FORMAT,
        "task": task.name,
        "backbone": backbone.name,
        "size": task.size,
        "dtype": "float16" if fp16 else "float32",
        "adapter": info or {},
    }
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as tmp, torch.no_grad():
        if task.name == "dichotomous":
            sam, s = backbone.model, task.size
            g, c = sam.prompt_encoder.image_embedding_size[0], sam.prompt_encoder.embed_dim
            decoder = SamPromptDecoder(sam).to(dtype)  # its constants computed in fp32 first
            sam.to(dtype)
            image = torch.zeros(2, 3, s, s, dtype=dtype)
            _export(
                sam.image_encoder, (image,), tmp / ENCODER, ["image"], ["image_embeddings"], {"x": {0: Dim("batch")}}
            )
            args = (
                torch.zeros(1, c, g, g, dtype=dtype),
                torch.zeros(1, 3, 2, dtype=dtype),
                torch.tensor([[1.0, 2.0, 3.0]], dtype=dtype),
                torch.zeros(1, 1, 4 * g, 4 * g, dtype=dtype),
                torch.zeros(1, dtype=dtype),
            )
            names = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
            points = Dim("points", min=1, max=64)
            dynamic = {
                "image_embeddings": None,
                "point_coords": {1: points},
                "point_labels": {1: points},
                "mask_input": None,
                "has_mask_input": None,
            }
            _export(decoder, args, tmp / DECODER, names, ["low_res_logits"], dynamic)
            config.update(
                pixel_mean=task.pixel_mean.flatten().tolist(),
                pixel_std=task.pixel_std.flatten().tolist(),
                embedding_grid=g,
                embedding_channels=c,
                graphs=list(GRAPHS[task.name]),
            )
        else:
            names = task.vocabulary(classes)
            graph = OpenVocabGraph(task, names).to(dtype)
            image = torch.zeros(2, 3, task.size, task.size, dtype=dtype)
            _export(graph, (image,), tmp / OPENVOCAB, ["images"], ["logits"], {"images": {0: Dim("batch")}})
            _metadata(tmp / OPENVOCAB, {"classes": names})
            config.update(
                classes=names,
                mean=task.mean.tolist(),
                std=task.std.tolist(),
                threshold=task.threshold,
                overlap_stride=task.stride,
                scale=task.scale,
                graphs=list(GRAPHS[task.name]),
            )
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "README.md").write_text(_readme(config))
    return out_dir


def _readme(config: dict) -> str:
    head = f"# ONNX export of a `{config['backbone']}` model for the {config['task']} task\n\n"
    if config["task"] == "dichotomous":
        s, g, c = config["size"], config["embedding_grid"], config["embedding_channels"]
        body = f"""Two graphs ({config["dtype"]}):

- `image_encoder.onnx`: `image` (B, 3, {s}, {s}) -> `image_embeddings` (B, {c}, {g}, {g}). Resize the
  image so its longer side is {s} px (bilinear), subtract `pixel_mean` and divide by `pixel_std`
  (RGB, 0-255 scale, in onnx_config.json), and pad the bottom and right with zeros to {s} x {s}.
- `mask_decoder.onnx`: `image_embeddings`, `point_coords` (1, N, 2) xy in the padded {s}-px frame,
  `point_labels` (1, N): 1 foreground, 0 background, 2 / 3 a box's top-left / bottom-right corner,
  -1 padding (add one padding point at (0, 0) when there is no box); `mask_input`
  (1, 1, {4 * g}, {4 * g}) with `has_mask_input` 0 or 1 -> `low_res_logits` (1, 1, {4 * g}, {4 * g}).
  No prompt at all: use the whole frame as the box, (0, 0) - ({s - 1}, {s - 1}).

To the source resolution: resize the logits bilinearly to {s} x {s}, apply the sigmoid, cut the
padding off (keep the resized image's rows and columns) and resize bilinearly to the source size.
"""
    else:
        s = config["size"]
        body = f"""One graph ({config["dtype"]}): `openvocab.onnx`: `images` (B, 3, {s}, {s}), RGB scaled to
0-1 then normalised with `mean` / `std` (onnx_config.json) -> `logits` (B, K, {s}, {s}) for the classes
{", ".join(config["classes"])} (in this order; also in the graph's metadata). The studio predicts a
large image by resizing it so its shorter side is {s} px, running overlapping {s}-px windows
(stride {config["overlap_stride"]}), averaging their sigmoid probabilities and taking the most
probable class per pixel.
"""
    use = """
Predict with the studio's runner (onnxruntime on the CPU, the same pre- and post-processing as the
PyTorch model): `python -m adapt predict --onnx THIS_FOLDER --image photo.jpg --out out/`.
"""
    return head + body + use


# --- reading a folder ----------------------------------------------------------------------------

MAX_CONFIG_BYTES = 1 << 20  # an export's onnx_config.json is a few KB, the adapter's config included
MAX_CLASSES = IGNORE_INDEX  # class ids 0..254 fit the byte a class map is saved in; 255 is "ignore"
MAX_CLASS_NAME = 200  # characters (CLIP's tokenizer reads 77 tokens of a name)
MAX_CHANNELS = 4096  # embedding channels: SAM's are 256
MAX_SCALE = 8.0  # working resolution: shorter side = scale x the input size, so memory grows with its square
COMMON_KEYS = ("format", "task", "backbone", "size", "dtype", "adapter", "graphs")
TASK_KEYS = {
    "dichotomous": ("pixel_mean", "pixel_std", "embedding_grid", "embedding_channels"),
    "openvocab": ("classes", "mean", "std", "threshold", "overlap_stride", "scale"),
}


def _integer(value, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _number(value, lo: float, hi: float, above: bool = False) -> bool:
    """A finite JSON number in [lo, hi] ((lo, hi] with `above`); JSON's NaN and Infinity are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (lo < value if above else lo <= value) and value <= hi


def _rgb(value, lo: float, hi: float, above: bool = False) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(_number(v, lo, hi, above) for v in value)


def _require(ok: bool, where, key: str, expected: str, value) -> None:
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise OnnxError(f"{where}: {key} must be {expected}, not {shown}")


def _plain_file(path: Path) -> bool:
    """A regular file that is not a symbolic link (a link could point anywhere on the machine)."""
    return path.is_file() and not path.is_symlink()


def _check_classes(classes, where) -> None:
    expected = f"a list of 2 to {MAX_CLASSES} distinct names (background included)"
    _require(isinstance(classes, list) and 2 <= len(classes) <= MAX_CLASSES, where, "classes", expected, classes)
    bad = [c for c in classes if not (isinstance(c, str) and c.strip() and len(c) <= MAX_CLASS_NAME)]
    _require(not bad, where, "each class", f"a name of 1 to {MAX_CLASS_NAME} characters", bad[0] if bad else None)
    _require(len(set(classes)) == len(classes) and "background" in classes, where, "classes", expected, classes)


def _task_fields(config: dict, size: int, grid: int | None) -> list[tuple[str, bool, str]]:
    """(key, valid, what it must be) for the keys of the config's task."""
    if config["task"] == "dichotomous":
        return [
            ("pixel_mean", _rgb(config["pixel_mean"], 0, 255), "3 numbers in [0, 255] (RGB, 0-255 scale)"),
            ("pixel_std", _rgb(config["pixel_std"], 0, 255, above=True), "3 numbers in (0, 255]"),
            ("embedding_grid", _integer(config["embedding_grid"], grid, grid), f"{grid} (the input size / 16)"),
            ("embedding_channels", _integer(config["embedding_channels"], 1, MAX_CHANNELS), f"1 to {MAX_CHANNELS}"),
        ]
    threshold = config["threshold"]
    return [
        ("mean", _rgb(config["mean"], 0, 1), "3 numbers in [0, 1] (RGB, 0-1 scale)"),
        ("std", _rgb(config["std"], 0, 1, above=True), "3 numbers in (0, 1]"),
        ("threshold", threshold is None or _number(threshold, 0, 1), "null or a number in [0, 1]"),
        ("overlap_stride", _integer(config["overlap_stride"], 1, size), f"an integer in [1, {size}] (pixels)"),
        ("scale", _number(config["scale"], 0, MAX_SCALE, above=True), f"a number in (0, {MAX_SCALE:g}]"),
    ]


def check_config(config, where) -> None:
    """Every key of an onnx_config.json (`where` names the file): the keys the task's export has and
    no others, each of its type and range, the size and the embedding grid the backbone's own."""
    _require(isinstance(config, dict), where, "the file", "a JSON object", type(config).__name__)
    if config.get("format") != FORMAT:
        raise OnnxError(f"{where} does not describe an adapt ONNX export (format {config.get('format')!r})")
    task = config.get("task")
    _require(isinstance(task, str) and task in GRAPHS, where, "task", f"one of {', '.join(GRAPHS)}", task)
    keys = COMMON_KEYS + TASK_KEYS[task]
    missing, unknown = [k for k in keys if k not in config], [k for k in config if k not in keys]
    if missing:
        raise OnnxError(f"{where} lacks {', '.join(missing)}, which a {task} export's config has")
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise OnnxError(f"{where} has keys that a {task} export's config does not: {shown}")
    family = TASKS[task].family
    name = config["backbone"]
    known = isinstance(name, str) and name in BACKBONES and BACKBONES[name].family == family
    _require(known, where, "backbone", f"a {family} backbone ({', '.join(backbone_names(family))})", name)
    arch, spec = architecture(name), spec_of(name)
    if arch.onnx_refusal:
        raise OnnxError(f"{where}: backbone {name}: {arch.onnx_refusal}")
    size = arch.input_size_of(spec)
    _require(_integer(config["size"], size, size), where, "size", f"{size} (the input size of {name})", config["size"])
    _require(config["dtype"] in ("float32", "float16"), where, "dtype", "float32 or float16", config["dtype"])
    adapter = config["adapter"]
    _require(isinstance(adapter, dict), where, "adapter", "an object (the adapter's config)", adapter)
    graphs = list(GRAPHS[task])
    _require(config["graphs"] == graphs, where, "graphs", f"{graphs} (a {task} export's)", config["graphs"])
    if task == "openvocab":
        _check_classes(config["classes"], where)
    grid = arch.embedding_grid(spec) if task == "dichotomous" else None
    for key, ok, expected in _task_fields(config, size, grid):
        _require(ok, where, key, expected, config[key])


def read_config(folder) -> dict:
    """onnx_config.json of an export folder, every key checked (check_config), its graphs present."""
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise OnnxError(f"{folder} is not an ONNX export of adapt: it has no {CONFIG} (export it with --onnx)")
    if not _plain_file(path) or path.stat().st_size > MAX_CONFIG_BYTES:
        raise OnnxError(f"{path} is not an export's config (a symbolic link, or over {MAX_CONFIG_BYTES} bytes)")
    try:
        config = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:
        raise OnnxError(f"{path} is not valid JSON: {_one_line(e)}") from None
    check_config(config, path)
    missing = [g for g in config["graphs"] if not (folder / g).is_file()]
    if missing:
        raise OnnxError(f"{folder} lacks {', '.join(missing)}")
    return config


def _one_line(error: Exception) -> str:
    """An error's message as one short line (onnxruntime's span several, with its own prefix)."""
    text = " ".join(str(error).split()).replace("[ONNXRuntimeError] : ", "")
    return text if len(text) <= 200 else text[:197] + "..."


def _interfaces(config: dict) -> dict[str, tuple[dict, dict]]:
    """Per graph file: ({input: dims}, {output: dims}) as the runner feeds and reads them, from the
    config; None is a dimension of any size."""
    s = config["size"]
    if config["task"] == "dichotomous":
        g, c = config["embedding_grid"], config["embedding_channels"]
        prompt = {"point_coords": (1, None, 2), "point_labels": (1, None), "mask_input": (1, 1, 4 * g, 4 * g)}
        return {
            ENCODER: ({"image": (None, 3, s, s)}, {"image_embeddings": (None, c, g, g)}),
            DECODER: (
                {"image_embeddings": (1, c, g, g), **prompt, "has_mask_input": (1,)},
                {"low_res_logits": (1, 1, 4 * g, 4 * g)},
            ),
        }
    return {OPENVOCAB: ({"images": (None, 3, s, s)}, {"logits": (None, len(config["classes"]), s, s)})}


def _external_locations(message):
    """The external-data location of every tensor anywhere in an ONNX protobuf: initializers,
    sparse initializers, node attributes, subgraphs and functions alike ("" where a tensor stored
    outside names none)."""
    from google.protobuf.message import Message
    from onnx import TensorProto

    if isinstance(message, TensorProto):  # a tensor holds no tensors: its raw bytes are not walked
        if message.data_location == TensorProto.EXTERNAL or len(message.external_data):
            yield next((e.value for e in message.external_data if e.key == "location"), "")
        return
    for field, value in message.ListFields():
        if field.message_type is not None:
            for item in [value] if isinstance(value, Message) else value:
                yield from _external_locations(item)


def _check_location(folder: Path, graph: Path, location: str) -> None:
    """Refuse external data that is not a plain file inside the folder: no location, an absolute
    one (or a Windows drive), one with '..', one that resolves outside it, or one reached through a
    symbolic link."""
    target = folder / location
    parts = Path(location).parts
    plain = bool(location) and not any(bad in location for bad in ("\0", "..", ":"))
    if (
        not plain
        or location.startswith(("/", "\\"))
        or any(folder.joinpath(*parts[: i + 1]).is_symlink() for i in range(len(parts)))
        or not target.resolve().is_relative_to(folder.resolve())
    ):
        raise OnnxError(
            f"{graph} names external data {location!r} that is not a plain file inside {folder}; "
            "an export keeps its weights beside its graphs: export the adapter again"
        )
    if not target.is_file():
        raise OnnxError(f"{graph} needs its external data {location!r}, which is not in {folder}")


def _dims(value) -> tuple | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)


def _check_values(path: Path, kind: str, values, expected: dict, elem_type: int) -> None:
    """The graph's inputs (or outputs) are the runner's names, element type and fixed sizes."""
    declared = {v.name: v for v in values}
    if sorted(declared) != sorted(expected):
        raise OnnxError(
            f"{path} has {kind} {', '.join(declared) or 'none'}; the runner uses {', '.join(expected)} "
            "(is it a graph of this export?)"
        )
    for name, want in expected.items():
        dims = _dims(declared[name])
        fits = dims is None or (
            len(dims) == len(want) and all(d is None or w is None or d == w for d, w in zip(dims, want))
        )
        if declared[name].type.tensor_type.elem_type != elem_type or not fits:
            shown = "(" + ", ".join("N" if w is None else str(w) for w in want) + ")"
            raise OnnxError(f"{path}: {kind[:-1]} {name} is not the {shown} tensor that {CONFIG} describes")


def check_graphs(folder, config: dict) -> None:
    """Each graph of a checked config, parsed by onnx without its external data: a valid ONNX
    model, its external data plain files inside the folder (checked here, so that no outside file is
    read whatever onnxruntime allows), its inputs and outputs the ones the config describes."""
    import onnx
    from google.protobuf.message import DecodeError

    folder = Path(folder)
    elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(config["dtype"]))
    for name, (inputs, outputs) in _interfaces(config).items():
        path = folder / name
        if not _plain_file(path):
            raise OnnxError(f"{path} is a symbolic link; an export's graphs are plain files in its folder")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except (DecodeError, ValueError, OSError) as e:
            raise OnnxError(f"{path} is not a valid ONNX graph ({_one_line(e)}); export the adapter again") from None
        if not model.HasField("graph") or not model.opset_import:
            raise OnnxError(f"{path} is not a valid ONNX graph (no graph in it); export the adapter again")
        for location in _external_locations(model):
            _check_location(folder, path, location)
        stored = {t.name for t in model.graph.initializer}
        _check_values(path, "inputs", [v for v in model.graph.input if v.name not in stored], inputs, elem_type)
        _check_values(path, "outputs", model.graph.output, outputs, elem_type)


# --- runner --------------------------------------------------------------------------------------


class _Graph:
    """One graph in an onnxruntime CPU session; its errors are OnnxErrors naming the file."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        self.path = path
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's errors share no base class below Exception
            raise OnnxError(f"{path}: onnxruntime cannot load it ({_one_line(e)})") from None

    def run(self, feed: dict) -> np.ndarray:
        try:
            return self.session.run(None, feed)[0]
        except Exception as e:  # as above
            raise OnnxError(f"{self.path}: onnxruntime failed running it ({_one_line(e)})") from None


def load_onnx(folder):
    """A task (the dichotomous or open-vocabulary task's prediction API) whose network calls run in
    onnxruntime on the CPU, from a folder written by `write_onnx` (adapt.pipeline.export_onnx); the
    folder is checked first (read_config, check_graphs)."""
    folder = Path(folder)
    config = read_config(folder)
    if config["dtype"] != "float32":
        raise OnnxError("the runner runs fp32 graphs on the CPU; this export is fp16 (for GPU runtimes)")
    check_graphs(folder, config)
    return (OnnxDichotomous if config["task"] == "dichotomous" else OnnxOpenVocab)(folder, config)


class _OnnxBackbone:
    """What the tasks' pre- and post-processing read from a backbone, without the model."""

    def __init__(self, config: dict, family: str):
        self.name, self.family, self.heads = config["backbone"], family, []
        self.spec = {"img_size": config["size"]}


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().float().numpy()


def _onnx_task(base):
    """The task class `base` with its construction replaced: geometry from the export's config."""

    class Runner(base):
        def __init__(self, folder: Path, config: dict):  # no super().__init__: there is no model
            self.folder, self.config = folder, config
            self.backbone = _OnnxBackbone(config, base.family)
            self.size = config["size"]
            self.setup(config)

    Runner.__name__ = Runner.__qualname__ = f"Onnx{base.__name__}"
    return Runner


class OnnxDichotomous(_onnx_task(DichotomousTask)):
    def setup(self, config: dict) -> None:
        self.prompt, self.box_jitter, self.num_points, self.augment_options = "box", 0.0, 3, {}
        self.stretch = False  # SAM 2 has no ONNX export: every graph here is a letterboxed SAM
        self.pixel_mean = torch.tensor(config["pixel_mean"]).reshape(3, 1, 1)
        self.pixel_std = torch.tensor(config["pixel_std"]).reshape(3, 1, 1)
        self.encoder, self.decoder = _Graph(self.folder / ENCODER), _Graph(self.folder / DECODER)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.encoder.run({"image": _numpy(images)}))

    def decode(self, embeddings: torch.Tensor, boxes=None, points=None, masks=None, multimask=False) -> torch.Tensor:
        out = []
        for i in range(embeddings.shape[0]):
            coords, labels = sam_prompt_points(
                self.size,
                None if boxes is None else _numpy(boxes[i]),
                None if points is None else (_numpy(points[0][i]), _numpy(points[1][i])),
            )
            g = self.config["embedding_grid"]
            mask = np.zeros((1, 1, 4 * g, 4 * g), np.float32) if masks is None else _numpy(masks[i : i + 1])
            feed = {
                "image_embeddings": _numpy(embeddings[i : i + 1]),
                "point_coords": coords,
                "point_labels": labels,
                "mask_input": mask,
                "has_mask_input": np.array([0.0 if masks is None else 1.0], np.float32),
            }
            out.append(torch.from_numpy(self.decoder.run(feed)))
        return torch.cat(out)


class OnnxOpenVocab(_onnx_task(OpenVocabTask)):
    def setup(self, config: dict) -> None:
        self.classes = [c for c in config["classes"] if c != "background"] or None
        self.templates, self.ignore_index = [], IGNORE_INDEX
        self.threshold, self.stride, self.scale = config["threshold"], config["overlap_stride"], config["scale"]
        self.window_batch = 4
        self.mean, self.std = torch.tensor(config["mean"]), torch.tensor(config["std"])
        self.augment_options = {"mask_fill": IGNORE_INDEX}
        self.graph = _Graph(self.folder / OPENVOCAB)

    def vocabulary(self, classes: list[str] | None = None) -> list[str]:
        names = super().vocabulary(classes)
        if names != self.config["classes"]:
            raise OnnxError(
                f"this ONNX graph was exported for the classes {', '.join(self.config['classes'])}; "
                "export it again with the classes you want (export --onnx DIR --classes ...)"
            )
        return names

    def text_features(self, classes: list[str]) -> None:
        return None  # baked into the graph

    def logits(self, images: torch.Tensor, texts=None) -> torch.Tensor:
        return torch.from_numpy(self.graph.run({"images": _numpy(images)}))
