"""The pretraining loop both tiny models share, and how their weights are written with their
manifest entry (sha256, bytes, command, seed, metrics)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from adapt.files import atomic_path, sha256_file, write_json
from adapt.train import lr_factor

MANIFEST = "manifest.json"


def fit(params, args, step_loss, weight_decay: float) -> float:
    """The pretraining loop both tiny models share: AdamW, warm-up + cosine, gradient clipping, a log
    line every `log_every` steps. `step_loss(step)` draws its batch and returns (loss, log text).
    Returns the training time in seconds."""
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=weight_decay)
    start = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_factor(step, args.warmup, args.steps)
        loss, text = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            el = time.time() - start
            print(
                f"step {step + 1}/{args.steps} {text} {el:.0f}s eta {el / (step + 1) * (args.steps - step - 1):.0f}s",
                flush=True,
            )
    return round(time.time() - start, 1)


def save_bundled(
    backbone, out_dir: Path, metrics: dict, command: str, seed: int, dtype: torch.dtype = torch.float32
) -> Path:
    """Write <name>.safetensors (floating tensors stored as `dtype`) and its manifest entry."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{backbone.name}.safetensors"
    state = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in backbone.model.state_dict().items()
    }
    # one metadata key: safetensors writes several keys in hash order, which would change the file's sha256
    meta = json.dumps({"name": backbone.name, "command": command, "seed": seed}, sort_keys=True)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"adapt": meta})
    manifest_path = out_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest[backbone.name] = {
        "file": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "command": command,
        "seed": seed,
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "metrics": metrics,
    }
    write_json(manifest_path, manifest, indent=2, sort_keys=True)
    return path
