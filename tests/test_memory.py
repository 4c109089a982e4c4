"""Fitting the memory: activation checkpointing (the same gradients, every method on both tiny
backbones) and gradient accumulation (the same update as one batch)."""

from __future__ import annotations

import pytest
import torch
from conftest import CASE_IDS, CASES, perturb, tiny_backbone

from adapt.methods import attach


def _grads(family, method, options, checkpointing: bool):
    backbone = tiny_backbone(family)
    handle = attach(backbone, method, **options)
    perturb(handle)  # away from the identity: every trainable tensor gets a gradient
    assert backbone.set_checkpointing(checkpointing) == len(backbone.blocks())
    assert backbone.checkpointing == checkpointing
    backbone.model.train()
    inputs = backbone.example_inputs(batch=2)
    out = backbone.forward(inputs)
    loss = out.float().square().mean() + out.float().mean()
    if loss.requires_grad:  # "frozen" trains nothing
        loss.backward()
    params = {**handle.adapter_parameters(), **handle.head_parameters()}
    return {k: p.grad.detach().clone() for k, p in params.items() if p.grad is not None}, out.detach()


@pytest.mark.parametrize("method,family,options", CASES, ids=CASE_IDS)
def test_checkpointing_gives_the_same_gradients(method, family, options):
    plain, out_plain = _grads(family, method, options, checkpointing=False)
    ckpt, out_ckpt = _grads(family, method, options, checkpointing=True)
    assert torch.equal(out_plain, out_ckpt)
    assert plain.keys() == ckpt.keys() and (plain or method == "frozen")
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-7, msg=k)


def test_checkpointing_is_off_in_eval_and_can_be_undone():
    backbone = tiny_backbone("sam")
    backbone.set_checkpointing(True)
    backbone.set_checkpointing(True)  # twice: still one wrapper per block
    block = backbone.blocks()[0]
    assert type(vars(block)["forward"]).__name__ == "_Checkpointed"
    assert not hasattr(vars(block)["forward"].forward, "forward")  # not wrapped twice
    backbone.set_checkpointing(False)
    assert "forward" not in vars(block) and not backbone.checkpointing
    assert set(backbone.model.state_dict()) == set(tiny_backbone("sam").model.state_dict())


def _train(tmp_path, name, **kw):
    from adapt.data.synthetic import make_dataset
    from adapt.train import TrainConfig, train

    class S:
        def __init__(self, scene, i):
            self.image, self.stem = scene.image, f"s{i}"
            self.mask = scene.foreground.astype("uint8")

    samples = [S(s, i) for i, s in enumerate(make_dataset("camouflage", n=6, size=96, seed=4))]
    cfg = TrainConfig(steps=3, batch_size=4, warmup=1, checkpoint_every=0, seed=3, **kw)
    result = train(cfg, samples[:4], [], tmp_path / name)
    if kw.get("lr") == 0:  # the last step's gradients (nothing moved, so every step saw the same model)
        params = {**result["run"].handle.adapter_parameters(), **result["run"].handle.head_parameters()}
        return {k: p.grad.detach().clone() for k, p in params.items() if p.grad is not None}, result
    return {k: v.detach().clone() for k, v in result["run"].handle.state_dict().items()}, result


@pytest.mark.parametrize("method", ["parser", "lora", "cobot-lora"])
def test_accumulating_four_micro_batches_of_one_is_one_batch_of_four(tmp_path, method):
    """The same gradient (compared with lr 0: Adam turns the float noise of a gradient that is
    exactly zero in theory, e.g. an attention key's bias, into full-size steps of either sign)."""
    whole, _ = _train(tmp_path, "whole", method=method, lr=0, head_lr=0)
    pieces, result = _train(tmp_path, "pieces", method=method, accumulate=4, lr=0, head_lr=0)
    assert result["step"] == 3  # optimizer steps, not micro-batches
    assert whole.keys() == pieces.keys() and whole
    for k in whole:
        torch.testing.assert_close(pieces[k], whole[k], rtol=1e-4, atol=1e-7, msg=k)
    events = (tmp_path / "pieces" / "events.jsonl").read_text()
    assert events.count('"type": "step"') == 3


def test_training_with_checkpointing_gives_the_same_gradients(tmp_path):
    plain, _ = _train(tmp_path, "plain", method="parser", lr=0, head_lr=0)
    ckpt, _ = _train(tmp_path, "ckpt", method="parser", checkpointing=True, lr=0, head_lr=0)
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-7, msg=k)


def test_accumulation_is_bounded_by_the_batch():
    from adapt.train import Run, TrainConfig, TrainingError

    with pytest.raises(TrainingError, match="accumulate must be between 1 and the batch size"):
        Run(TrainConfig(batch_size=2, accumulate=3))


def test_precision_follows_the_hardware(monkeypatch):
    from adapt.train import TrainConfig, TrainingError, resolve_precision

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision(TrainConfig(), cpu) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(TrainConfig(), gpu) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a T4, a V100
    assert resolve_precision(TrainConfig(), gpu) == "fp16"
    assert resolve_precision(TrainConfig(amp=False), gpu) == "fp32"
    assert resolve_precision(TrainConfig(precision="fp32"), gpu) == "fp32"
    with pytest.raises(TrainingError, match="precision must be one of"):
        resolve_precision(TrainConfig(precision="int8"), cpu)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_runs_and_is_recorded(tmp_path, precision):
    """fp16 goes through the gradient scaler (CPU autocast here; a GPU without bf16 in use); the
    methods' maths stay fp32; the precision is in the log and the summary."""
    _, result = _train(tmp_path, precision, method="parser", precision=precision)
    assert result["precision"] == precision and result["step"] == 3
    assert (result["run"].scaler is not None) == (precision == "fp16")
    assert f'"precision": "{precision}"' in (tmp_path / precision / "events.jsonl").read_text()
    for p in result["run"].handle.adapter_parameters().values():
        assert p.dtype == torch.float32 and torch.isfinite(p).all()


def test_out_of_memory_halves_the_micro_batch_and_retries_then_says_what_to_change(tmp_path, monkeypatch):
    from adapt.tasks.dichotomous import DichotomousTask
    from adapt.train import TrainingError

    real = DichotomousTask.loss
    calls = []

    def tight(self, prepared, rng, device):  # a card that holds one image at a time
        calls.append(len(prepared))
        if len(prepared) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, prepared, rng, device)

    monkeypatch.setattr(DichotomousTask, "loss", tight)
    _, result = _train(tmp_path, "oom", method="parser")
    assert result["step"] == 3 and result["accumulate"] == 4  # 4 -> 2 -> 1 image per micro-batch
    events = (tmp_path / "oom" / "events.jsonl").read_text()
    assert events.count('"type": "oom"') == 2 and "micro-batches of 1" in events

    def hopeless(self, prepared, rng, device):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(DichotomousTask, "loss", hopeless)
    with pytest.raises(TrainingError, match="out of GPU memory at step 1 with micro-batches of 1 image"):
        _train(tmp_path, "hopeless", method="parser")
    assert '"type": "error"' in (tmp_path / "hopeless" / "events.jsonl").read_text()


def test_out_of_memory_retries_give_the_same_update_as_no_retry(tmp_path, monkeypatch):
    from adapt.tasks.dichotomous import DichotomousTask

    plain, _ = _train(tmp_path, "plain", method="parser", lr=0, head_lr=0)
    real = DichotomousTask.loss
    failed = []

    def once(self, prepared, rng, device):
        if not failed:
            failed.append(1)
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(self, prepared, rng, device)

    monkeypatch.setattr(DichotomousTask, "loss", once)
    retried, result = _train(tmp_path, "retried", method="parser", lr=0, head_lr=0)
    assert result["accumulate"] == 2
    for k in plain:
        torch.testing.assert_close(retried[k], plain[k], rtol=1e-4, atol=1e-7, msg=k)
