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
