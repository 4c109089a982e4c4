"""The merged model in the upstream projects' own checkpoint formats (export --official).

    files, how = save_official("runs/x/adapter", "sam-adapted.pth")   # segment-anything's state dict
    files, how = save_official("runs/y/adapter", "clip-adapted.pth")  # open_clip's, + the head file
    task = openvocab_from_open_clip(model, "clip-adapted.head.safetensors")

segment-anything loads the file with `sam_model_registry[...](checkpoint=...)`, sam2 with
`build_sam2(config, ...)`, open_clip with `create_model(name, pretrained=...)`: what the file holds
and how to load it the architecture says (its Backbone subclass's upstream_checkpoint /
upstream_config / upstream_usage). A task head outside the model (CLIP's open-vocabulary head, which
a label map needs) goes beside the checkpoint as safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from adapt.backbones import BACKBONES, architecture, load_into, load_state_dict_file, spec_of
from adapt.counts import meta_backbone
from adapt.export import FORMAT, AdapterError, _head_tensors, merged_handle, safetensors_metadata
from adapt.files import atomic_path
from adapt.tasks import attach_task_head

HEAD_SUFFIX = ".head.safetensors"


def official_head_path(dest: str | Path) -> Path:
    """Where save_official puts a CLIP adapter's open-vocabulary head: beside the checkpoint."""
    dest = Path(dest)
    return dest.with_name(dest.stem + HEAD_SUFFIX)


def upstream_config_path(dest: str | Path) -> Path:
    """Where save_official puts the model config of an architecture the upstream project does not
    name (the bundled tiny CLIP, for open_clip): DEST with .json, registered under DEST's stem."""
    return Path(dest).with_suffix(".json")


def save_official(adapter: str | Path, dest: str | Path, checkpoint: str | Path | None = None) -> tuple[list, str]:
    """The merged model in the upstream project's own checkpoint format, a plain state dict saved
    with torch.save: segment-anything's Sam (load it with `sam_model_registry[...](checkpoint=dest)`),
    sam2's SAM2Base as Meta's files hold it, {"model": state dict} (`build_sam2(config, dest)`),
    or open_clip's CLIP (`open_clip.create_model(name, pretrained=dest)`); a CLIP adapter's
    open-vocabulary head goes beside it as DEST.head.safetensors (a label map needs both; read it
    with `openvocab_from_open_clip`). Returns (files written, how to load them). The state dict's
    keys and shapes are checked against a fresh build of the base architecture first, so a file
    that the upstream builder would refuse is never written."""
    handle = merged_handle(adapter, checkpoint, why="exported in the upstream format")
    cfg = handle.info
    state = {k: v.detach().contiguous().cpu() for k, v in handle.model.state_dict().items()}
    name = cfg["base_model"]["name"]
    expected = {k: tuple(v.shape) for k, v in meta_backbone(name).model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
        raise AdapterError(
            f"the merged {cfg['method']} model does not have {name}'s plain layout ({len(extra)} extra tensors, "
            f"e.g. {extra[:2]}; {len(missing)} missing, e.g. {missing[:2]}): it cannot be saved in the upstream format"
        )
    backbone, dest = handle.backbone, Path(dest)
    with atomic_path(dest) as tmp:
        torch.save(backbone.upstream_checkpoint(state), tmp)
    written = [dest]
    head = _head_tensors(handle)
    if head:
        meta = {
            "format": f"{FORMAT}/openvocab-head",
            "backbone": name,
            "task": json.dumps(cfg.get("task")),
            "classes": json.dumps(cfg.get("classes")),
            # the weights' own settings (OpenAI's QuickGELU and normalisation), which the name alone does not give
            "settings": json.dumps(backbone.weights_settings()),
        }
        with atomic_path(official_head_path(dest)) as tmp:
            save_file(head, str(tmp), metadata=meta)
        written.append(official_head_path(dest))
    config, config_path = backbone.upstream_config(), None
    if config is not None:
        config_path = upstream_config_path(dest)
        with atomic_path(config_path) as tmp:
            tmp.write_text(json.dumps(config, indent=2) + "\n")
        written.append(config_path)
    how = backbone.upstream_usage(dest, config_path)
    if head:
        how += (
            "\nfrom adapt.official import openvocab_from_open_clip  # the label-map head"
            f"\ntask = openvocab_from_open_clip(model, {str(official_head_path(dest))!r})"
        )
    return written, how


def openvocab_from_open_clip(model, head_path: str | Path, classes: list[str] | None = None):
    """The open-vocabulary task around an open_clip CLIP model (e.g. loaded from a file written by
    save_official) and the head file saved beside it: label maps as the adapter predicts them."""
    from open_clip.tokenizer import SimpleTokenizer

    from adapt.tasks.openvocab import OpenVocabTask

    head_path = Path(head_path)
    meta = safetensors_metadata(head_path, "an open-vocabulary head")
    if meta.get("format") != f"{FORMAT}/openvocab-head" or meta.get("backbone") not in BACKBONES:
        raise AdapterError(f"{head_path.name} is not a head file written by adapt (export --official)")
    spec = {**spec_of(meta["backbone"]), **json.loads(meta.get("settings", "{}"))}
    tokenizer = SimpleTokenizer(context_length=spec["text_cfg"].get("context_length", 77))
    backbone = architecture(spec)(
        name=meta["backbone"], family="clip", model=model.eval(), spec=spec, weights_id="open_clip", tokenizer=tokenizer
    )
    attach_task_head(backbone)
    state, _ = load_state_dict_file(head_path)
    load_into(backbone.heads[0], {k.split(".", 2)[2]: v for k, v in state.items()}, head_path)
    backbone.heads[0].eval()
    return OpenVocabTask(backbone, classes=classes or json.loads(meta.get("classes", "null")))
