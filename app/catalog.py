"""What the studio offers: the tasks, their backbones (the one to propose first), the methods with
what each trains, and whether a backbone's weights are here. The page draws its choices from here;
the request facade (app.studio) checks a request's task and backbone against the same lists."""

from __future__ import annotations

from functools import lru_cache

import adapt.evidence as evidence
from adapt.backbones import BACKBONES, Backbone, architecture, family_of, missing_extra
from adapt.methods import METHODS
from adapt.tasks import TASKS, runs_on
from app.checks import MAX_ID, UserError, as_text, choice
from app.gpus import gpu_count


@lru_cache(maxsize=1)
def has_gpu() -> bool:
    return gpu_count() > 0


@lru_cache(maxsize=64)
def _count(backbone: str, method: str) -> dict:
    from adapt.pipeline import count_params

    return count_params(backbone, method)


def describe_method(backbone: str, method: str) -> tuple[str, dict]:
    """A method's summary, its parameter counts on `backbone`, and what was measured of it."""
    if method not in METHODS:
        return f"Unknown method {method!r}.", {}
    try:
        info = dict(_count(backbone, method))
    except ValueError as e:
        return f"**{method}** cannot be used here: {e}", {}
    text = (
        f"**{method}**: {METHODS[method].summary}\n\n"
        f"Trains **{info['adapter']:,}** adapter parameters "
        f"({100 * info['adapter'] / info['base']:.3f}% of {backbone}), "
        f"**{info['trainable']:,}** with the task head."
    )
    measured = evidence.describe(family_of(backbone), method)
    return text + (f"\n\n{measured}" if measured else ""), info


def family_for_task(task: str) -> str:
    """The backbone family a task runs on; an unknown task is a UserError."""
    return TASKS[choice(task, "task", TASKS)].family


def backbones_for(task: str) -> list[str]:
    """The backbones the task runs on (adapt.tasks.runs_on: its family, and the architecture it
    needs: the concept task SAM 3's), the one to propose first: on a GPU the official models
    (their weights are downloaded on first use), smallest first; on the CPU what runs there in
    seconds with no download: the bundled tiny model, then the tiny test architectures (random
    weights), then the official ones."""
    names = [n for n in BACKBONES if runs_on(choice(task, "task", TASKS), n)]  # catalog order: official by size
    if has_gpu():
        return sorted(names, key=lambda n: BACKBONES[n].bundled)
    return sorted(names, key=lambda n: (not BACKBONES[n].bundled, BACKBONES[n].official))


def backbone_for(task: str, backbone) -> str:
    """`backbone`, checked to be text and one of the task's backbones."""
    backbone = as_text(backbone, "backbone", MAX_ID)
    names = backbones_for(task)
    if backbone in BACKBONES and backbone not in names:  # another family, or not the architecture it needs
        raise UserError(f"{backbone!r} is not a backbone for {task}: the {task} task runs on {', '.join(names)} only")
    if backbone not in names:
        raise UserError(f"{backbone!r} is not a backbone for {task}; choose one of {', '.join(names)}")
    missing = missing_extra(backbone)  # refused here, not after the job waited in the queue
    if missing:
        raise UserError(missing)
    return backbone


def takes_text(backbone: str) -> bool:
    """Whether a catalog backbone's model segments a text phrase, every instance of it (SAM 3's):
    asked of its architecture, which then has its own Backbone.segment_text."""
    return backbone in BACKBONES and architecture(backbone).segment_text is not Backbone.segment_text


def check_text_prompt(task: str, backbone: str) -> None:
    """A text prompt is for a task that makes binary masks (a label map's phrases are its classes)
    with a model that segments phrases (takes_text); anything else is refused, saying what to do."""
    if TASKS[task].mask.needs_class_names:
        raise UserError(f"the {task} task takes its phrases as its classes: give them there, not as a text prompt")
    if not takes_text(backbone):
        which = ", ".join(n for n in BACKBONES if takes_text(n))
        raise UserError(
            f"{backbone} takes no text prompt; {which} and their adapters do: clear it, or choose one of those"
        )


def on_disk(name: str) -> str:
    """A backbone's weights in a few words for its picker: "on disk", or what a download takes."""
    from adapt.files import format_bytes
    from adapt.weights import available

    info = available(name)
    if info["ready"]:
        return "random weights, for tests" if info["kind"] == "random-init" else "on disk"
    if info["downloadable"]:
        return f"download {format_bytes(info['bytes'])}" if info["bytes"] else "download, size unknown"
    return "no weights here"


def backbone_choices(task: str) -> list[tuple[str, str]]:
    """The backbone pickers' (label, name) choices: backbones_for(task), each saying whether its
    weights are on disk ("sam-vit-b (download 357.7 MB)", "tiny-sam (on disk)")."""
    return [(f"{name} ({on_disk(name)})", name) for name in backbones_for(task)]


def free_memory() -> tuple[int | None, str]:
    """(free bytes, what) where this machine trains: the first GPU's free memory on a GPU machine,
    else the RAM the kernel can give (MemAvailable); None when it cannot be read."""
    if has_gpu():
        import torch

        try:
            return int(torch.cuda.mem_get_info()[0]), "GPU memory"
        except RuntimeError:
            return None, "GPU memory"
    try:
        with open("/proc/meminfo") as f:
            line = next(x for x in f if x.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024, "RAM"
    except (OSError, StopIteration, ValueError, IndexError):
        return None, "RAM"


def fit_warning(needed: int, free: tuple[int | None, str] | None = None) -> str:
    """A warning when `needed` bytes exceed this machine's free memory (free_memory()), else ""."""
    from adapt.files import format_bytes

    available, what = free or free_memory()
    if available is None or needed <= available:
        return ""
    return (
        f"\n\n**Will not fit here:** the estimate ({format_bytes(needed)}) is more than this machine's free "
        f"{what} ({format_bytes(available)}). Choose a smaller backbone or batch, a lighter method, or free memory."
    )


def backbone_status(name: str) -> str:
    from adapt.weights import available

    info = available(name)
    if info["ready"]:
        return f"`{name}`: {info['message']}."
    if info["downloadable"]:
        return f"`{name}`: {info['message']}. Click *Download weights* (or train: the worker downloads them)."
    return f"`{name}`: {info['message'] or 'no weights available'}."


def download_weights(name: str) -> str:
    """Fetch an official checkpoint (tqdm progress, which the UI mirrors); the message says where."""
    from adapt.weights import WeightsUnavailable, resolve_checkpoint

    try:
        path = resolve_checkpoint(name, download=True, progress=True)
    except (WeightsUnavailable, ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    return f"`{name}` weights ready: {path}"
