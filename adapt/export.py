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
from adapt.backbones.catalog import extra_of
from adapt.counts import trainable_tensors
from adapt.files import atomic_folder, atomic_path, zip_folder
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
    extra = extra_of(base["name"])
    if extra:  # the base model's own licence (SAM 3's), which the adapter inherits
        meta.update(license="other", license_name=extra.licence, license_link=extra.licence_url)
    if cfg.get("metrics"):
        meta["metrics_heldout"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in cfg["metrics"].items()}
    return meta


def _card_warning(cfg: dict) -> str | None:
    """The not-better-than-frozen sentence (adapt.metrics) from the card's own metrics."""
    from adapt.metrics import not_better_warning

    metrics = cfg.get("metrics") or {}
    frozen = {k[len("frozen_") :]: v for k, v in metrics.items() if k.startswith("frozen_")}
    adapted = {k[len("adapted_") :]: v for k, v in metrics.items() if k.startswith("adapted_")}
    steps = (cfg.get("data") or {}).get("steps")
    return not_better_warning(frozen, adapted, steps=steps, method=cfg.get("method", ""))


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
    extra = extra_of(cfg["base_model"]["name"])
    if extra:
        licence = f"The base model is under the {extra.licence} ({extra.licence_url}), not this project's licence"
        lines += [
            "",
            "## Licence",
            "",
            licence + "; this adapter derives from it and is distributed on the same terms.",
        ]
    warning = _card_warning(cfg)
    if warning:
        lines += ["", "## Warning", "", warning]
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


def local_adapter(path: str | Path) -> Path:
    """An adapter's local path: a Hub reference "hf://user/repo[@revision]" is downloaded first
    (adapt.hub, into the Hugging Face cache); anything else is taken as it is."""
    from adapt.hub import download, is_hub_ref

    if is_hub_ref(path):
        return download(path, [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME], required=[CONFIG_NAME, WEIGHTS_NAME])
    return Path(path)


def zip_adapter(folder: str | Path, zip_path: str | Path) -> Path:
    names = {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME}  # a Hub repository may lack the card
    return zip_folder(local_adapter(folder), zip_path, keep=lambda rel: rel.as_posix() in names)


def push_to_hub(adapter: str | Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload an adapter (folder or zip) to a Hub model repository (adapt.hub.upload); returns its
    URL. What goes up is the adapter folder: config, tensors and its model card, rewritten from
    the config so the Hub metadata is current. Checked like any adapter first."""
    from adapt.hub import check_repo_id, upload

    check_repo_id(repo_id)
    cfg, _ = read_adapter(adapter)
    with tempfile.TemporaryDirectory(prefix="adapt-hub-") as tmp:
        source = Path(adapter) if Path(adapter).is_dir() else _unpack(Path(adapter), Path(tmp) / "unpacked")
        folder = Path(tmp) / "adapter"
        folder.mkdir()
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            (folder / name).write_bytes((source / name).read_bytes())
        (folder / CARD_NAME).write_text(model_card(cfg))
        message = f"{cfg['method']} adapter for {cfg['base_model']['name']} (segmentation adaptation studio)"
        return upload(folder, repo_id, message, token=token, private=private)


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
    path = local_adapter(path)
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
        raise AdapterError(f"{CONFIG_NAME} is not valid JSON: {e}") from e
    except RecursionError:
        raise AdapterError(f"{CONFIG_NAME} is nested too deeply to be an adapter config") from None
    validate_config(cfg)
    try:
        tensors = load_file(str(path / WEIGHTS_NAME))
    except Exception as e:
        raise AdapterError(f"{WEIGHTS_NAME} cannot be read: {e}") from e
    check_tensors(cfg, tensors)
    return cfg, tensors


def check_tensors(cfg: dict, tensors: dict[str, torch.Tensor], where: str = WEIGHTS_NAME) -> None:
    """The adapter's tensors are exactly what its method trains on its base model (names, shapes and
    dtypes, from the architecture built on the meta device: no memory, no weights) and finite, so
    a bad file is refused when it is read, never at predict time or silently as an empty mask."""
    expected = trainable_tensors(cfg["base_model"]["name"], cfg["method"], cfg.get("task"), **cfg.get("config", {}))
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterError(
            f"{where}: the tensors do not fit a {cfg['method']!r} adapter on {cfg['base_model']['name']!r}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for name, (shape, dtype) in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise AdapterError(f"{where}: tensor {name} has shape {tuple(t.shape)}, expected {shape}")
        if t.dtype != dtype:
            raise AdapterError(f"{where}: tensor {name} is {t.dtype}, expected {dtype}")
        if not torch.isfinite(t).all():
            raise AdapterError(
                f"{where}: tensor {name} holds NaN or infinite values (the run that wrote it diverged); "
                "retrain with a lower learning rate"
            )


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
    if classes is not None and task is not None and not TASKS[task].mask.needs_class_names:
        raise AdapterError(f"{where}: a {task} adapter has no classes (its masks are foreground/background)")
    for field in ("counts", "metrics", "data"):
        _check(isinstance(cfg.get(field, {}), dict), where, field, "an object", cfg.get(field))
    metrics = cfg.get("metrics", {})
    _check(
        all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in metrics.values()),
        where,
        "metrics",
        "an object of numbers",
        metrics,
    )
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
    """Attach a saved adapter to `backbone` (built from the adapter's config when not given); the
    handle keeps the adapter's config as `handle.info`."""
    cfg, tensors = read_adapter(path)
    if backbone is None:
        backbone = base_backbone(cfg, checkpoint)
    check_compatible(cfg, backbone, method)
    attach_task_head(backbone, cfg.get("task"))
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


def safetensors_metadata(path: Path, what: str) -> dict:
    """The metadata of a .safetensors file written by adapt; a file that cannot be read is an
    AdapterError naming `what` it was read as."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:
        raise AdapterError(f"{path.name} cannot be read as {what}: {e}") from e


def load_merged(path: str | Path) -> tuple[Backbone, dict]:
    """(backbone with its task head, info {method, backbone, task, classes, merged_from}) from a
    file written by `save_merged`: the plain architecture, no method attached."""
    path = Path(path)
    metadata = safetensors_metadata(path, "a merged checkpoint")
    if metadata.get("format") != MERGED_FORMAT or "backbone" not in metadata:
        raise AdapterError(f"{path.name} is not a merged checkpoint written by adapt (export --merged)")
    state, _ = load_state_dict_file(path)
    heads = {k: v for k, v in state.items() if k.startswith("heads.")}
    backbone = build_backbone(metadata["backbone"])
    load_into(backbone.model, {k: v for k, v in state.items() if k not in heads}, path)
    attach_task_head(backbone, json.loads(metadata.get("task", "null")))
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
