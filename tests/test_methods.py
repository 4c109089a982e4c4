"""The contract, checked for every method: identity at step 0, merge/unmerge, detach, groups."""

import pytest
import torch
from conftest import frozen_output, perturb, tiny_backbone

from adapt.methods import METHODS, attach, make_config

ADAPTER_MODULE_NAMES = (
    "LoraQV",
    "SpectralCoefficients",
    "InProjTransform",
    "OutProjTransform",
    "LowRankDelta",
    "CobotCoefficients",
    "HypersphericalTransforms",
)


def module_types(model):
    return {type(m).__name__ for m in model.modules()}


def test_identity_at_step0(case):
    method, family, options = case
    backbone = tiny_backbone(family)
    inputs = backbone.example_inputs()
    reference = frozen_output(backbone, inputs)
    attach(backbone, method, **options)
    with torch.no_grad():
        out = backbone.forward(inputs)
    assert (out - reference).abs().max().item() <= 1e-5


def test_merge_unmerge_round_trip(case):
    method, family, options = case
    backbone = tiny_backbone(family)
    inputs = backbone.example_inputs()
    reference = frozen_output(backbone, inputs)
    handle = attach(backbone, method, **options)
    perturb(handle)
    with torch.no_grad():
        adapted = backbone.forward(inputs)
        handle.merge()
        merged = backbone.forward(inputs)
        merged_types = module_types(backbone.model)
        handle.unmerge()
        unmerged = backbone.forward(inputs)
    if handle.adapter_parameters() or handle.head_parameters():
        assert (adapted - reference).abs().max().item() > 1e-4, "perturbation did not change the output"
    assert (merged - adapted).abs().max().item() <= 1e-4
    assert (unmerged - adapted).abs().max().item() <= 1e-6
    if handle.fully_mergeable:
        assert not merged_types & set(ADAPTER_MODULE_NAMES), merged_types & set(ADAPTER_MODULE_NAMES)
        assert (
            not any(
                k.startswith("parametrizations") or ".parametrizations." in k
                for k, _ in backbone.model.named_parameters()
            )
            or not handle.merged
        )


def test_merged_weights_are_plain_and_frozen(case):
    method, family, options = case
    handle = attach(tiny_backbone(family), method, **options)
    handle.merge()
    if handle.fully_mergeable and method not in ("full",):
        assert not any(
            p.requires_grad
            for p in handle.model.parameters()
            if id(p) not in {id(q) for q in handle.head_parameters().values()}
        )
    handle.unmerge()
    assert all(p.requires_grad for p in handle.adapter_parameters().values())


def test_detach_restores_the_backbone(case):
    method, family, options = case
    backbone = tiny_backbone(family)
    inputs = backbone.example_inputs()
    names_before = [n for n, _ in backbone.model.named_modules()]
    state_before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    reference = frozen_output(backbone, inputs)
    handle = attach(backbone, method, **options)
    handle.merge()
    handle.detach()
    assert [n for n, _ in backbone.model.named_modules()] == names_before
    if method != "full":  # full fine-tuning trains the base weights themselves (none moved here)
        for k, v in backbone.model.state_dict().items():
            assert torch.equal(v, state_before[k]), k
    with torch.no_grad():
        assert torch.equal(backbone.forward(inputs), reference)


def test_trainable_groups_and_freezing(case):
    method, family, options = case
    backbone = tiny_backbone(family)
    handle = attach(backbone, method, **options)
    groups = {g.kind: g for g in handle.trainable_groups()}
    grouped = [p for g in groups.values() for p in g.params]
    assert len({id(p) for p in grouped}) == len(grouped), "a parameter sits in two groups"
    trainable = [p for p in backbone.model.parameters() if p.requires_grad]
    trainable += [p for h in backbone.heads for p in h.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in grouped}
    counts = handle.count()
    assert counts["trainable"] == sum(g.numel() for g in groups.values())
    assert counts["adapter"] == sum(p.numel() for p in handle.adapter_parameters().values())
    if method in ("parser", "cobot-lora", "cobot-adaptformer", "hclip"):
        assert "coefficients" in groups
    if "coefficients" in groups and method != "hclip":
        assert groups["coefficients"].lr_scale == make_config(method, **options).coefficient_lr_scale


@pytest.mark.parametrize("method", ["parser", "lora", "cobot-lora", "adaptformer", "cobot-adaptformer"])
def test_sam_methods_refuse_clip(method):
    with pytest.raises(ValueError, match="adapts SAM backbones"):
        attach(tiny_backbone("clip"), method)


def test_unknown_method_and_option():
    backbone = tiny_backbone("sam")
    with pytest.raises(ValueError, match="unknown method"):
        attach(backbone, "prompt-tuning")
    with pytest.raises(ValueError, match="has no option"):
        attach(backbone, "parser", rank=4)
    with pytest.raises(ValueError, match="scope must be"):
        attach(backbone, "parser", scope="everything")


def test_gradients_reach_every_adapter_tensor(case):
    method, family, options = case
    backbone = tiny_backbone(family)
    handle = attach(backbone, method, **options)
    if not handle.trainable_groups():
        pytest.skip("nothing to train")
    perturb(handle)  # from zero-initialised B / up, A gets no gradient on the first step
    inputs = backbone.example_inputs()
    backbone.forward(inputs).pow(2).mean().backward()
    # (heads are left out: SAM's IoU head and unused multimask tokens take no part in this output)
    for name, p in handle.adapter_parameters().items():
        if method == "full" and not name.startswith(("image_encoder.", "visual.", "transformer.")):
            continue  # prompt-encoder embeddings for unused prompt kinds, CLIP's logit scale
        assert p.grad is not None, f"{name} received no gradient"


def test_registry_is_complete():
    assert set(METHODS) >= {
        "parser",
        "lora",
        "adaptformer",
        "cobot-lora",
        "cobot-adaptformer",
        "hclip",
        "lora-clip",
        "full",
        "decoder",
        "frozen",
    }
