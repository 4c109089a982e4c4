"""Adapter files: one folder (or a zip of it) that holds everything needed to reuse an adapter.

    adapter_config.json        method, its hyperparameters, base model name + weights id, task,
                               classes, parameter counts, library version
    adapter_model.safetensors  the trainable tensors only (adapter + trained head), never pickle
    README.md                  a model card: what it is, data, metrics, how to load it

Writes go to a temporary folder beside the target and are renamed into place at the end, so a
failure never leaves a half-written adapter.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import adapt
from adapt.archive import ArchiveError, safe_extract
from adapt.backbones import BACKBONES, Backbone, build_backbone, load_into, load_state_dict_file
from adapt.files import atomic_folder, atomic_path
from adapt.methods import METHODS, Handle, attach, make_config
from adapt.tasks import TASKS, attach_task_head
from adapt.weights import resolve_checkpoint

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
CARD_NAME = "README.md"
FORMAT = "adapt-adapter"
FORMAT_VERSION = 1


class AdapterError(ValueError):
    """An adapter file that cannot be used as asked; the message says why."""


def adapter_config(
    handle: Handle,
    task: str | None = None,
    classes: list[str] | None = None,
    metrics: dict | None = None,
    data: dict | None = None,
) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": adapt.__version__,
        "method": handle.name,
        "config": handle.config.to_dict(),
        "base_model": {"name": handle.backbone.name, "weights_id": handle.backbone.weights_id},
        "task": task,
        "classes": classes,
        "counts": handle.count(),
        "metrics": metrics or {},
        "data": data or {},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# Hub ids of the official base weights (for the model card's `base_model`; the tiny ones have none)
HUB_BASE_MODELS = {
    "sam-vit-b": "facebook/sam-vit-base",
    "sam-vit-l": "facebook/sam-vit-large",
    "sam-vit-h": "facebook/sam-vit-huge",
    ("clip-vit-b-16", "openai"): "openai/clip-vit-base-patch16",
    ("clip-vit-l-14", "openai"): "openai/clip-vit-large-patch14",
    ("clip-vit-b-16", "laion2b"): "laion/CLIP-ViT-B-16-laion2B-s34B-b88K",
    ("clip-vit-l-14", "laion2b"): "laion/CLIP-ViT-L-14-laion2B-s32B-b82K",
}


def hub_metadata(cfg: dict) -> dict:
    """The model card's front matter, the Hugging Face Hub's metadata: library, task, tags, base
    model (official weights only) and the held-out metrics before and after adaptation."""
    base = cfg["base_model"]
    sam = base["name"].startswith(("sam", "tiny-sam"))
    weights = str(base.get("weights_id") or "")
    found = HUB_BASE_MODELS.get(base["name"]) or next(
        (
            hub
            for key, hub in HUB_BASE_MODELS.items()
            if isinstance(key, tuple) and key[0] == base["name"] and key[1] in weights
        ),
        None,
    )
    meta = {
        "library_name": "segmentation-adaptation-studio",
        "pipeline_tag": "mask-generation" if sam else "image-segmentation",
        "tags": [
            "segmentation-adaptation-studio",
            "peft",
            cfg["method"],
            cfg.get("task") or "segmentation",
            "segment-anything" if sam else "open_clip",
        ],
    }
    if found and weights != "random-init":
        meta["base_model"] = found
    if cfg.get("metrics"):
        meta["metrics_heldout"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in cfg["metrics"].items()}
    return meta


def model_card(cfg: dict) -> str:
    counts = cfg["counts"]
    lines = ["---", *json.dumps(hub_metadata(cfg), indent=1).splitlines(), "---", ""]  # JSON is YAML
    lines += [
        f"# {cfg['method']} adapter for {cfg['base_model']['name']}",
        "",
        f"A parameter-efficient adapter made with `adapt` {cfg['library_version']}.",
        "",
        f"- Method: `{cfg['method']}` with `{json.dumps(cfg['config'], sort_keys=True)}`",
        f"- Base model: `{cfg['base_model']['name']}` (weights `{cfg['base_model']['weights_id']}`)",
        f"- Task: {cfg['task'] or 'not set'}"
        + (f"; classes: {', '.join(cfg['classes'])}" if cfg.get("classes") else ""),
        f"- Trainable parameters: {counts['adapter']:,} in the adapter, {counts['trainable']:,} with the trained head",
    ]
    if cfg.get("data"):
        lines += ["", "## Data", ""] + [f"- {k}: {v}" for k, v in cfg["data"].items()]
    if cfg.get("metrics"):
        lines += ["", "## Metrics (held-out split)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in cfg["metrics"].items()]
    lines += [
        "",
        "## Use it",
        "",
        "```python",
        "from adapt.export import load_adapter",
        "handle = load_adapter('path/to/this/folder')  # or 'hf://USER/REPO' from the Hub",
        "handle.merge()  # optional: fold into plain weights for inference",
        "```",
        "",
    ]
    return "\n".join(lines)


def save_adapter(handle: Handle, out_dir: str | Path, **info) -> Path:
    """Write the adapter folder `out_dir` atomically; returns its path."""
    out_dir = Path(out_dir)
    cfg = adapter_config(handle, **info)
    tensors = {k: v.cpu() for k, v in handle.state_dict().items()}
    with atomic_folder(out_dir) as tmp:
        # a single metadata key keeps the file byte-identical across runs (keys are written in hash order)
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": f"{FORMAT}/{handle.name}"})
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(model_card(cfg))
    return out_dir


def zip_adapter(folder: str | Path, zip_path: str | Path) -> Path:
    folder, zip_path = Path(folder), Path(zip_path)
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME):
            z.write(folder / name, name)
    return zip_path


def _unpack(zip_path: Path, dest: Path) -> Path:
    """Extract an adapter zip through the archive guard (adapt.archive); the folder holding its
    one adapter_config.json."""
    try:
        written = safe_extract(zip_path, dest)
    except ArchiveError as e:
        raise AdapterError(f"not a usable adapter zip: {e}") from None
    config = [p for p in written if p.name == CONFIG_NAME]
    if len(config) != 1:
        raise AdapterError(f"{zip_path.name}: expected one {CONFIG_NAME} in the zip, found {len(config)}")
    return config[0].parent


def read_adapter(path: str | Path) -> tuple[dict, dict]:
    """(config, tensors) from an adapter folder or zip, or a Hub reference "hf://user/repo"
    (downloaded first, adapt.hub), with a clear error for anything off."""
    from adapt.hub import download, is_hub_ref

    if is_hub_ref(path):
        path = download(path)
    path = Path(path)
    if not path.exists():
        raise AdapterError(f"adapter {path} does not exist")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise AdapterError(f"{path.name} is neither an adapter folder nor a zip of one")
        with tempfile.TemporaryDirectory() as tmp:
            folder = _unpack(path, Path(tmp))
            return read_adapter(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise AdapterError(f"adapter folder {path} has no {name}")
    try:
        cfg = json.loads((path / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path / CONFIG_NAME} is not valid JSON: {e}") from e
    validate_config(cfg, where=str(path / CONFIG_NAME))
    try:
        tensors = load_file(str(path / WEIGHTS_NAME))
    except Exception as e:
        raise AdapterError(f"{path / WEIGHTS_NAME} cannot be read: {e}") from e
    return cfg, tensors


def _check(ok: bool, where: str, field: str, expected: str, value) -> None:
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise AdapterError(f"{where}: {field} must be {expected}, not {shown}")


def validate_config(cfg, where: str = CONFIG_NAME) -> dict:
    """Check an adapter config against the format (one schema, at load): the types of every field
    the library reads, a method it knows with options that method takes, a known backbone and task.
    An AdapterError names the field and what it should be; nothing fails later at predict time."""
    _check(isinstance(cfg, dict), where, "the config", "a JSON object", type(cfg).__name__)
    if cfg.get("format") != FORMAT:
        raise AdapterError(f"{where} is not an adapt adapter (format {cfg.get('format')!r})")
    version = cfg.get("format_version", FORMAT_VERSION)
    _check(isinstance(version, int) and not isinstance(version, bool), where, "format_version", "an integer", version)
    if version > FORMAT_VERSION:
        raise AdapterError(
            f"adapter format version {version} is newer than this library reads ({FORMAT_VERSION}); upgrade adapt"
        )
    method = cfg.get("method")
    _check(isinstance(method, str) and method in METHODS, where, "method", f"one of {', '.join(METHODS)}", method)
    options = cfg.get("config", {})
    _check(isinstance(options, dict), where, "config", "an object of method options", options)
    try:
        make_config(method, **options)
    except (TypeError, ValueError) as e:
        raise AdapterError(f"{where}: config does not fit method {method!r}: {e}") from None
    base = cfg.get("base_model")
    _check(isinstance(base, dict), where, "base_model", "an object {name, weights_id}", base)
    _check(base.get("name") in BACKBONES, where, "base_model.name", "a known backbone", base.get("name"))
    _check(isinstance(base.get("weights_id"), str), where, "base_model.weights_id", "a string", base.get("weights_id"))
    task = cfg.get("task")
    _check(task is None or task in TASKS, where, "task", f"null or one of {', '.join(TASKS)}", task)
    classes = cfg.get("classes")
    _check(
        classes is None or (isinstance(classes, list) and all(isinstance(c, str) and c for c in classes)),
        where,
        "classes",
        "null or a list of names",
        classes,
    )
    for field in ("counts", "metrics", "data"):
        _check(isinstance(cfg.get(field, {}), dict), where, field, "an object", cfg.get(field))
    counts = cfg.get("counts", {})
    _check(
        all(isinstance(v, int) and not isinstance(v, bool) for v in counts.values()),
        where,
        "counts",
        "an object of integers",
        counts,
    )
    return cfg


def check_compatible(cfg: dict, backbone: Backbone, method: str | None = None) -> None:
    base = cfg["base_model"]
    if base["name"] != backbone.name:
        raise AdapterError(
            f"this adapter was trained on {base['name']!r}, not {backbone.name!r}; load it onto {base['name']!r}"
        )
    if base["weights_id"] != backbone.weights_id:
        raise AdapterError(
            f"this adapter was trained on {base['name']!r} weights {base['weights_id'][:16]}, but the loaded "
            f"weights are {backbone.weights_id[:16]}; load the same base checkpoint it was trained on"
        )
    if method is not None and method != cfg["method"]:
        raise AdapterError(f"this adapter is a {cfg['method']!r} adapter, not {method!r}")


def base_backbone(cfg: dict, checkpoint: str | Path | None = None) -> Backbone:
    """Build the base model an adapter config names: its random init, the given checkpoint, or the
    bundled / official weights resolved by adapt.weights."""
    name = cfg["base_model"]["name"]
    if checkpoint is None and cfg["base_model"]["weights_id"] == "random-init":
        return build_backbone(name)
    return build_backbone(name, checkpoint=resolve_checkpoint(name, checkpoint))


def load_adapter(
    path: str | Path, backbone: Backbone | None = None, method: str | None = None, checkpoint: str | Path | None = None
) -> Handle:
    """Attach a saved adapter to `backbone` (built from the adapter's config when not given)."""
    cfg, tensors = read_adapter(path)
    if backbone is None:
        backbone = base_backbone(cfg, checkpoint)
    check_compatible(cfg, backbone, method)
    attach_task_head(backbone)
    handle = attach(backbone, cfg["method"], **cfg["config"])
    handle.load_state_dict(tensors)
    handle.info = cfg
    return handle


MERGED_FORMAT = "adapt-merged"


def merged_handle(adapter: str | Path, checkpoint: str | Path | None = None, why: str = "merged") -> Handle:
    """An adapter loaded onto its base model and folded into plain weights (handle.merge()).

    Methods with a non-linear branch (the AdaptFormer family) cannot be folded into the base
    architecture: refused with the reason, since a file that no builder can load is worse than none.
    """
    handle = load_adapter(adapter, checkpoint=checkpoint)
    cfg = handle.info
    if not handle.fully_mergeable:
        raise AdapterError(
            f"a {cfg['method']!r} adapter cannot be {why}: its bottleneck branch is non-linear (LayerNorm, "
            f"ReLU) and cannot be folded into {cfg['base_model']['name']}'s weights. Use the adapter itself "
            "(the adapter folder or zip), which loads onto the base model with adapt.export.load_adapter, "
            "or export ONNX graphs (export --onnx), which run the branch."
        )
    handle.merge()
    return handle


def _head_tensors(handle: Handle) -> dict[str, torch.Tensor]:
    """The trained task heads that are not part of the model (CLIP's open-vocabulary head), as
    "heads.<i>.<name>" tensors; SAM's decoder is in the model already."""
    state = {}
    for i, head in enumerate(handle.backbone.heads):
        if not any(head is m for m in handle.model.modules()):
            state.update({f"heads.{i}.{k}": v.detach().contiguous().cpu() for k, v in head.state_dict().items()})
    return state


def save_merged(
    adapter: str | Path, dest: str | Path, checkpoint: str | Path | None = None, source: str | None = None
) -> Path:
    """Base model + adapter folded into one .safetensors file of plain weights (atomically), with
    the trained task head (CLIP's open-vocabulary head is not part of the CLIP model: its tensors
    are stored under "heads.<i>."), and what `load_merged` needs in the metadata (backbone, task,
    classes). `source` names the adapter there (default: its path)."""
    handle = merged_handle(adapter, checkpoint)
    cfg = handle.info
    state = {k: v.detach().contiguous().cpu() for k, v in handle.model.state_dict().items()}
    state.update(_head_tensors(handle))
    metadata = {
        "format": MERGED_FORMAT,
        "merged_from": source or str(adapter),
        "method": handle.name,
        "backbone": cfg["base_model"]["name"],
        "task": json.dumps(cfg.get("task")),
        "classes": json.dumps(cfg.get("classes")),
    }
    with atomic_path(dest) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(dest)


HEAD_SUFFIX = ".head.safetensors"
CLIP_SETTINGS = ("quick_gelu", "image_mean", "image_std")


def official_head_path(dest: str | Path) -> Path:
    """Where save_official puts a CLIP adapter's open-vocabulary head: beside the checkpoint."""
    dest = Path(dest)
    return dest.with_name(dest.stem + HEAD_SUFFIX)


def open_clip_config_path(dest: str | Path) -> Path:
    """Where save_official puts the open_clip model config of a CLIP that open_clip does not name
    (the bundled tiny one): DEST with .json, registered under DEST's stem."""
    return Path(dest).with_suffix(".json")


def save_official(adapter: str | Path, dest: str | Path, checkpoint: str | Path | None = None) -> tuple[list, str]:
    """The merged model in the upstream project's own checkpoint format, a plain state dict saved
    with torch.save: segment-anything's Sam (load it with `sam_model_registry[...](checkpoint=dest)`)
    or open_clip's CLIP (`open_clip.create_model(name, pretrained=dest)`); a CLIP adapter's
    open-vocabulary head goes beside it as DEST.head.safetensors (a label map needs both; read it
    with `openvocab_from_open_clip`). Returns (files written, how to load them). The state dict's
    keys and shapes are checked against a fresh build of the base architecture first, so a file
    that the upstream builder would refuse is never written."""
    handle = merged_handle(adapter, checkpoint, why="exported in the upstream format")
    cfg = handle.info
    state = {k: v.detach().contiguous().cpu() for k, v in handle.model.state_dict().items()}
    name = cfg["base_model"]["name"]
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_backbone(name).model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
        raise AdapterError(
            f"the merged {cfg['method']} model does not have {name}'s plain layout ({len(extra)} extra tensors, "
            f"e.g. {extra[:2]}; {len(missing)} missing, e.g. {missing[:2]}): it cannot be saved in the upstream format"
        )
    dest = Path(dest)
    written = [dest]
    with atomic_path(dest) as tmp:
        torch.save(state, tmp)
    if handle.backbone.family == "sam":
        how = _sam_usage(handle.backbone, dest)
    else:
        head = _head_tensors(handle)
        meta = {
            "format": f"{FORMAT}/openvocab-head",
            "backbone": name,
            "task": json.dumps(cfg.get("task")),
            "classes": json.dumps(cfg.get("classes")),
            # the weights' own settings (OpenAI's QuickGELU and normalisation), which the name alone does not give
            "settings": json.dumps({k: v for k, v in handle.backbone.spec.items() if k in CLIP_SETTINGS}),
        }
        with atomic_path(official_head_path(dest)) as tmp:
            save_file(head, str(tmp), metadata=meta)
        written.append(official_head_path(dest))
        if "open_clip_name" not in handle.backbone.spec:  # not an open_clip architecture: its config goes along
            arch = {k: handle.backbone.spec.get(k) for k in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")}
            with atomic_path(open_clip_config_path(dest)) as tmp:
                tmp.write_text(json.dumps({k: v for k, v in arch.items() if v is not None}, indent=2) + "\n")
            written.append(open_clip_config_path(dest))
        how = _clip_usage(handle.backbone, dest)
    return written, how


def _sam_usage(backbone: Backbone, dest: Path) -> str:
    spec = backbone.spec
    registry = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}.get(spec["encoder_embed_dim"])
    if registry and spec["img_size"] == 1024 and spec["encoder_depth"] in (12, 24, 32):
        return (
            "from segment_anything import sam_model_registry, SamPredictor\n"
            f"sam = sam_model_registry[{registry!r}](checkpoint={str(dest)!r})"
        )
    return (
        f"# {backbone.name} is not one of segment-anything's registry sizes: build its Sam with the same classes\n"
        f"# (encoder {json.dumps({k: spec[k] for k in spec if k.startswith('encoder_') or k == 'img_size'})})\n"
        f"sam.load_state_dict(torch.load({str(dest)!r}))"
    )


def _clip_usage(backbone: Backbone, dest: Path) -> str:
    name = backbone.spec.get("open_clip_name") or dest.stem
    quick = ", force_quick_gelu=True" if backbone.spec.get("quick_gelu") else ""
    lines = ["import open_clip"]
    if "open_clip_name" not in backbone.spec:
        lines.append(f"open_clip.add_model_config({str(open_clip_config_path(dest))!r})  # its architecture")
    lines.append(f"model = open_clip.create_model({name!r}, pretrained={str(dest)!r}{quick})")
    lines.append("from adapt.export import openvocab_from_open_clip  # the label-map head")
    lines.append(f"task = openvocab_from_open_clip(model, {str(official_head_path(dest))!r})")
    return "\n".join(lines)


def openvocab_from_open_clip(model, head_path: str | Path, classes: list[str] | None = None):
    """The open-vocabulary task around an open_clip CLIP model (e.g. loaded from a file written by
    save_official) and the head file saved beside it: label maps as the adapter predicts them."""
    from open_clip.tokenizer import SimpleTokenizer

    from adapt.backbones import BACKBONES
    from adapt.backbones.clip import ClipBackbone, spec_for
    from adapt.tasks.openvocab import OpenVocabTask

    head_path = Path(head_path)
    try:
        with safe_open(str(head_path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise AdapterError(f"{head_path.name} cannot be read as an open-vocabulary head: {e}") from e
    if meta.get("format") != f"{FORMAT}/openvocab-head" or meta.get("backbone") not in BACKBONES:
        raise AdapterError(f"{head_path.name} is not a head file written by adapt (export --official)")
    spec = {**spec_for(BACKBONES[meta["backbone"]]), **json.loads(meta.get("settings", "{}"))}
    tokenizer = SimpleTokenizer(context_length=spec["text_cfg"].get("context_length", 77))
    backbone = ClipBackbone(
        name=meta["backbone"], family="clip", model=model.eval(), spec=spec, weights_id="open_clip", tokenizer=tokenizer
    )
    attach_task_head(backbone)
    state, _ = load_state_dict_file(head_path)
    load_into(backbone.heads[0], {k.split(".", 2)[2]: v for k, v in state.items()}, head_path)
    backbone.heads[0].eval()
    return OpenVocabTask(backbone, classes=classes or json.loads(meta.get("classes", "null")))


def load_merged(path: str | Path) -> tuple[Backbone, dict]:
    """(backbone with its task head, info {method, backbone, task, classes, merged_from}) from a
    file written by `save_merged`: the plain architecture, no method attached."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:
        raise AdapterError(f"{path.name} cannot be read as a merged checkpoint: {e}") from e
    if metadata.get("format") != MERGED_FORMAT or "backbone" not in metadata:
        raise AdapterError(f"{path.name} is not a merged checkpoint written by adapt (export --merged)")
    state, _ = load_state_dict_file(path)
    heads = {k: v for k, v in state.items() if k.startswith("heads.")}
    backbone = build_backbone(metadata["backbone"])
    load_into(backbone.model, {k: v for k, v in state.items() if k not in heads}, path)
    attach_task_head(backbone)
    for i, head in enumerate(backbone.heads):
        prefix = f"heads.{i}."
        if any(k.startswith(prefix) for k in heads):
            load_into(head, {k[len(prefix) :]: v for k, v in heads.items() if k.startswith(prefix)}, path)
    backbone.model.eval()
    info = {
        "method": metadata.get("method"),
        "backbone": metadata["backbone"],
        "task": json.loads(metadata.get("task", "null")),
        "classes": json.loads(metadata.get("classes", "null")),
        "merged_from": metadata.get("merged_from"),
    }
    return backbone, info
