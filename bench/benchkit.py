"""What the benchmarks share: thread and clock set-up, a training step to time, the rise of memory
over steps, FLOP counting, and the device and command lines of a report.

    import benchkit                      # from a script in bench/ (its folder is on sys.path)
    trainer = benchkit.Trainer("tiny-sam", "parser", {}, batch=2, checkpointing=False, device=device)
    benchkit.measure_rise(trainer, steps=3, device=device)

What each measurement means is in bench/step_cost.py's docstring and docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import re
import resource
import shlex
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from adapt.backbones import build_backbone
from adapt.methods import attach

LR = 1e-4


# --- set-up -------------------------------------------------------------------------------------


def set_threads(n: int) -> None:
    """n intra-op threads and one inter-op thread (where torch still allows setting it)."""
    torch.set_num_threads(n)
    try:  # only allowed before any inter-op parallel work has started
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def quiet_gc():
    """No automatic garbage collection inside timed code. A full collection over everything torch,
    segment_anything and open_clip import takes ~0.25 s here, longer than a tiny-sam forward; after
    gc.freeze() the explicit gc.collect() between measurements only walks new objects."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def count_flops(fn) -> int:
    """Matmul/conv FLOPs (FlopCounterMode: mm, bmm, addmm, convolution, attention; element-wise
    ops, norms and the optimizer are not counted) of one call: exact, unlike the timings."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class Trainer:
    """One method attached to its own fresh backbone, with its optimizer, inputs and target."""

    def __init__(
        self, backbone: str, method: str, options: dict, batch: int, checkpointing: bool, device, attention="fused"
    ):
        self.backbone = build_backbone(backbone, seed=0, attention=attention)
        self.backbone.model.to(device)
        self.handle = attach(self.backbone, method, **options)
        if checkpointing:
            self.backbone.set_checkpointing(True)
        self.inputs = {k: v.to(device) for k, v in self.backbone.example_inputs(batch, seed=0).items()}
        with torch.no_grad():
            shape = self.backbone.forward(self.inputs).shape
        self.target = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
        groups = [{"params": g.params, "lr": LR * g.lr_scale} for g in self.handle.trainable_groups()]
        self.opt = torch.optim.AdamW(groups, lr=LR)
        self.backbone.model.train()  # SAM has no dropout/batch-norm; train mode for form's sake
        self.times: list[float] = []

    autocast: torch.dtype | None = None  # bench/planner_check.py --precision bf16|fp16

    def loss(self) -> torch.Tensor:
        device = self.target.device.type
        with torch.autocast(device, dtype=self.autocast, enabled=self.autocast is not None):
            out = self.backbone.forward(self.inputs)
        return (out.float() - self.target).pow(2).mean()

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss().backward()
        self.opt.step()

    def step_flops(self) -> int:
        """FLOPs of forward + backward (the optimizer step is element-wise and not counted)."""
        flops = count_flops(lambda: self.loss().backward())
        self.opt.zero_grad(set_to_none=True)
        return flops


# --- memory -------------------------------------------------------------------------------------


def proc_status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...), in KiB (Linux)."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB on Linux


def measure_rise(trainer: Trainer, steps: int, device: torch.device) -> dict:
    """Run `steps` training steps and return how far memory rose above its level before them."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            trainer.step()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        how = "cuda max_memory_allocated - memory_allocated before the first step"
    else:
        try:
            base = proc_status_kib("VmRSS") * 1024
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            for _ in range(steps):
                trainer.step()
            peak = proc_status_kib("VmHWM") * 1024
            how = "VmHWM (reset via /proc/self/clear_refs) - VmRSS before the first step"
        except OSError:
            base = _maxrss_bytes()
            for _ in range(steps):
                trainer.step()
            peak = _maxrss_bytes()
            how = "ru_maxrss after the steps - ru_maxrss before them (lower bound)"
    return {"step_bytes": max(peak - base, 0), "peak_total_bytes": peak, "before_bytes": base, "mem_how": how}


# --- report -------------------------------------------------------------------------------------


def device_description(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and core count, for a report."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    model = platform.processor() or platform.machine()
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = m.group(1).strip() if m else model
    except OSError:
        pass
    return f"cpu ({model}, {os.cpu_count()} logical cores)"


def command_line(script: str) -> str:
    """The command that ran `script` (a benchmark's __file__), as a reader would type it."""
    exe = sys.executable
    try:
        rel = os.path.relpath(exe, os.getcwd())
        exe = rel if not rel.startswith("..") else exe
    except ValueError:
        pass
    return shlex.join([exe, os.path.relpath(Path(script).resolve(), os.getcwd()), *sys.argv[1:]])
