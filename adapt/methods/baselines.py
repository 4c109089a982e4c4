"""Baselines with no adapter module: `full` fine-tuning, `decoder` (head only) and `frozen`.

- full: every backbone weight is trained (the "adapter" count is the whole backbone, heads apart,
  and what its image path never runs: SAM 2's video memory).
- decoder: only the task head (SAM's mask decoder / the open-vocabulary head); adapter count 0.
- frozen: nothing is trained (zero-shot reference).
Merge is a no-op for all three: there is nothing to fold.
"""

from __future__ import annotations

from adapt.methods.base import Handle, MemoryProfile, MethodConfig


class _NoModules(Handle):
    def _merge(self) -> None:
        pass

    def _unmerge(self) -> None:
        pass

    def _detach(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)


class Full(_NoModules):
    name = "full"
    summary = "Full fine-tuning of the whole backbone (the costly reference)."
    memory = MemoryProfile("all")
    baseline_for = ("sam",)

    def _attach(self) -> None:
        skip = {id(p) for h in self.backbone.heads for p in h.parameters()} | self.backbone.inactive_parameter_ids()
        for p in self.model.parameters():
            if id(p) not in skip:
                self._add_adapter_param(p)


class Decoder(_NoModules):
    name = "decoder"
    summary = "Train only the task head (SAM's mask decoder / the open-vocabulary head)."
    memory = MemoryProfile("none")

    def _attach(self) -> None:
        pass


class Frozen(_NoModules):
    name = "frozen"
    summary = "No training: the pretrained model as it is (zero-shot reference)."
    memory = MemoryProfile("none")
    baseline_for = ("clip",)

    def __init__(self, backbone, config: MethodConfig):
        config.train_heads = False
        super().__init__(backbone, config)

    def _attach(self) -> None:
        pass
