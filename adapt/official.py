"""The merged model in the upstream projects' own checkpoint formats (export --official).

    files, how = save_official("runs/x/adapter", "sam-adapted.pth")   # segment-anything's state dict
    files, how = save_official("runs/y/adapter", "clip-adapted.pth")  # open_clip's, + the head file
    task = openvocab_from_open_clip(model, "clip-adapted.head.safetensors")

segment-anything loads the file with `sam_model_registry[...](checkpoint=...)`, open_clip with
`create_model(name, pretrained=...)`; a CLIP label map also needs the open-vocabulary head, which
is not part of open_clip's model and goes beside the checkpoint as safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from adapt.backbones import Backbone, load_into, load_state_dict_file
from adapt.export import FORMAT, AdapterError, _head_tensors, merged_handle, safetensors_metadata
from adapt.files import atomic_path
from adapt.pipeline import _meta_backbone
from adapt.tasks import attach_task_head

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
    expected = {k: tuple(v.shape) for k, v in _meta_backbone(name).model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
        raise AdapterError(
            f"the merged {cfg['method']} model does not have {name}'s plain layout ({len(extra)} extra tensors, "
            f"e.g. {extra[:2]}; {len(missing)} missing, e.g. {missing[:2]}): it cannot be saved in the upstream format"
        )
    dest = Path(dest)
    written = [dest]
    sam2 = handle.backbone.spec.get("kind") == "sam2"
    with atomic_path(dest) as tmp:
        torch.save({"model": state} if sam2 else state, tmp)  # sam2's build_sam2 reads ckpt["model"]
    if sam2:
        how = _sam2_usage(handle.backbone, dest)
    elif handle.backbone.family == "sam":
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


SAM2_CONFIGS = {  # sam2's own config files for the official sizes
    "sam2.1-hiera-tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1-hiera-small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1-hiera-base-plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1-hiera-large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def _sam2_usage(backbone: Backbone, dest: Path) -> str:
    config = SAM2_CONFIGS.get(backbone.name)
    if config:
        return (
            "from sam2.build_sam import build_sam2\n"
            "from sam2.sam2_image_predictor import SAM2ImagePredictor\n"
            f"predictor = SAM2ImagePredictor(build_sam2({config!r}, {str(dest)!r}))"
        )
    return (
        f"# {backbone.name} is not one of sam2's config files: build its SAM2Base with the same classes\n"
        "# (adapt.backbones.sam2.build_sam2_model(spec) with this backbone's spec)\n"
        f"model.load_state_dict(torch.load({str(dest)!r})['model'])"
    )


def _clip_usage(backbone: Backbone, dest: Path) -> str:
    name = backbone.spec.get("open_clip_name") or dest.stem
    quick = ", force_quick_gelu=True" if backbone.spec.get("quick_gelu") else ""
    lines = ["import open_clip"]
    if "open_clip_name" not in backbone.spec:
        lines.append(f"open_clip.add_model_config({str(open_clip_config_path(dest))!r})  # its architecture")
    lines.append(f"model = open_clip.create_model({name!r}, pretrained={str(dest)!r}{quick})")
    lines.append("from adapt.official import openvocab_from_open_clip  # the label-map head")
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
    meta = safetensors_metadata(head_path, "an open-vocabulary head")
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
