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

The runner reuses the task's own pre- and post-processing (letterbox, windows, upsampling to the
source resolution, refinement), so its outputs are the PyTorch task's; only the network calls go to
onnxruntime. Graphs are fp32 by default; `fp16=True` exports half-precision graphs for GPU runtimes
(onnxruntime's CPU provider lacks fp16 kernels for some of their operators).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adapt.files import atomic_folder
from adapt.tasks.dichotomous import DichotomousTask
from adapt.tasks.openvocab import IGNORE_INDEX, OpenVocabTask, class_logits

CONFIG = "onnx_config.json"
ENCODER, DECODER, OPENVOCAB = "image_encoder.onnx", "mask_decoder.onnx", "openvocab.onnx"
OPSET = 18
FORMAT = "adapt-onnx"


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
                graphs=[ENCODER, DECODER],
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
                graphs=[OPENVOCAB],
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


# --- runner --------------------------------------------------------------------------------------


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_config(folder) -> dict:
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise OnnxError(f"{folder} is not an ONNX export of adapt: it has no {CONFIG} (export it with --onnx)")
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise OnnxError(f"{path} is not valid JSON: {e}") from None
    if config.get("format") != FORMAT or config.get("task") not in ("dichotomous", "openvocab"):
        raise OnnxError(f"{path} does not describe an adapt ONNX export")
    missing = [g for g in config.get("graphs", []) if not (folder / g).is_file()]
    if missing:
        raise OnnxError(f"{folder} lacks {', '.join(missing)}")
    return config


def load_onnx(folder):
    """A task (the dichotomous or open-vocabulary task's prediction API) whose network calls run in
    onnxruntime on the CPU, from a folder written by `write_onnx` (adapt.pipeline.export_onnx)."""
    folder = Path(folder)
    config = read_config(folder)
    if config["dtype"] != "float32":
        raise OnnxError("the runner runs fp32 graphs on the CPU; this export is fp16 (for GPU runtimes)")
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
        self.encoder, self.decoder = _session(self.folder / ENCODER), _session(self.folder / DECODER)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.encoder.run(None, {"image": _numpy(images)})[0])

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
            out.append(torch.from_numpy(self.decoder.run(None, feed)[0]))
        return torch.cat(out)


class OnnxOpenVocab(_onnx_task(OpenVocabTask)):
    def setup(self, config: dict) -> None:
        self.classes = [c for c in config["classes"] if c != "background"] or None
        self.templates, self.ignore_index = [], IGNORE_INDEX
        self.threshold, self.stride, self.scale = config["threshold"], config["overlap_stride"], config["scale"]
        self.window_batch = 4
        self.mean, self.std = torch.tensor(config["mean"]), torch.tensor(config["std"])
        self.augment_options = {"mask_fill": IGNORE_INDEX}
        self.graph = _session(self.folder / OPENVOCAB)

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
        return torch.from_numpy(self.graph.run(None, {"images": _numpy(images)})[0])
