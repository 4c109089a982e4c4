"""Fused attention (adapt/backbones/fused_attention.py) is exact: outputs and gradients equal
segment-anything's eager attention for every method on tiny-sam and in sam-vit-b's blocks at
1024 px, and a fused prediction equals SamPredictor's on the stock model."""

import numpy as np
import pytest
import torch
from conftest import CASE_IDS, CASES, perturb, reference_prompts, tiny_backbone
from segment_anything.modeling.image_encoder import Attention

import adapt.backbones.fused_attention as fa
from adapt.backbones import build_backbone, spec_of
from adapt.backbones.fused_attention import FusedAttention, fused_attention, set_attention
from adapt.backbones.sam import SamBackbone, build_sam_model
from adapt.methods import attach
from adapt.tasks.dichotomous import DichotomousTask

SAM_CASES = [(c, i) for c, i in zip(CASES, CASE_IDS, strict=True) if c[1] == "sam"]


def randomise_rel_pos(module: torch.nn.Module, seed: int = 5) -> None:
    """SAM initialises the relative-position tables at zero: give them values, so that the folding
    into q and k is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("rel_pos_h", "rel_pos_w")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def forward_backward(fn, x: torch.Tensor, params: dict) -> tuple[torch.Tensor, dict]:
    """Output, and gradients of a fixed random projection of it w.r.t. the input and `params`."""
    x = x.detach().clone().requires_grad_(True)
    for p in params.values():
        p.grad = None
    out = fn(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    (out * weights).sum().backward()
    grads = {"input": x.grad.clone(), **{n: p.grad.clone() for n, p in params.items() if p.grad is not None}}
    return out.detach(), grads


def assert_close(eager: tuple, fused: tuple, tol: float = 1e-4) -> None:
    (out_e, grads_e), (out_f, grads_f) = eager, fused
    assert (out_e - out_f).abs().max().item() <= tol * max(1.0, out_e.abs().max().item())
    assert grads_e.keys() == grads_f.keys()
    for name, g in grads_e.items():
        scale = max(1.0, g.abs().max().item())
        assert (g - grads_f[name]).abs().max().item() <= tol * scale, name


FORMS = {"blockwise": "cpu", "folded": "cuda"}  # the CPU's form; the accelerators' (and a traced model's)


@pytest.fixture(params=list(FORMS))
def form(request, monkeypatch):
    """Every fused block in the test runs this form (its device's), whatever the device."""
    monkeypatch.setattr(fa, "_device_of", lambda x: FORMS[request.param])
    return request.param


# every method with the CPU's form; the folded form with a weight-reparametrizing and a wrapping
# method (the forms differ in the attention core, not in how a method reaches qkv and proj)
CASE_FORMS = [(c, "blockwise", i) for c, i in SAM_CASES]
CASE_FORMS += [(c, "folded", i) for c, i in SAM_CASES if c[0] in ("parser", "lora") and c[1:] == ("sam", {})]


@pytest.mark.parametrize(
    "case,form", [(c, f) for c, f, _ in CASE_FORMS], ids=[f"{i}-{f}" for _, f, i in CASE_FORMS], indirect=["form"]
)
def test_every_sam_method_fused_equals_eager(case, form):
    method, family, options = case
    backbone = tiny_backbone(family)
    randomise_rel_pos(backbone.model)
    handle = attach(backbone, method, **options)
    perturb(handle)
    encoder = backbone.model.image_encoder
    params = {**dict(backbone.model.named_parameters()), **handle.adapter_parameters()}  # rel_pos_h/w included
    inputs = backbone.example_inputs()
    run = {}
    for mode in ("eager", "fused"):
        assert set_attention(encoder, mode, windowed=True) == (len(encoder.blocks) if mode == "fused" else 0)
        run[mode] = forward_backward(lambda x: backbone.forward({**inputs, "images": x}), inputs["images"], params)
    assert_close(run["eager"], run["fused"])
    trained = [n for n, p in params.items() if p.requires_grad]
    assert not trained or set(trained) & set(run["fused"][1]), "no parameter received a gradient"


@pytest.mark.parametrize("kind,index", [("global", 2), ("windowed", 0)])
def test_a_sam_vit_b_block_at_1024_px(kind, index, form):
    spec = spec_of("sam-vit-b")
    torch.manual_seed(0)
    block = SamBackbone.build_block(spec, index)
    assert (block.window_size == 0) == (kind == "global")
    randomise_rel_pos(block)
    grid = spec["img_size"] // spec["patch_size"]
    x = torch.randn(1, grid, grid, spec["encoder_embed_dim"], generator=torch.Generator().manual_seed(1))
    params = dict(block.attn.named_parameters())  # the attention's own: qkv, proj, rel_pos_h/w
    run = {}
    for mode in ("eager", "fused"):
        set_attention(block, mode, windowed=True)
        run[mode] = forward_backward(block, x, params)
    assert_close(run["eager"], run["fused"])
    assert {"input", "qkv.weight", "proj.weight", "rel_pos_h", "rel_pos_w"} <= run["fused"][1].keys()


def test_fused_is_the_default_and_keeps_no_n_by_n_matrix(monkeypatch):
    backbone = build_backbone("tiny-sam")
    encoder = backbone.model.image_encoder
    assert {type(b.attn) for b in encoder.blocks} == {FusedAttention}
    assert {b.attn.windowed: b.window_size > 0 for b in encoder.blocks} == {True: True, False: False}
    # the form each block runs: blockwise on the CPU (windowed blocks too, as measured), elsewhere folded
    assert [fa.fused_form("fused", "cpu", w) for w in (False, True)] == ["blockwise", "blockwise"]
    assert fa.fused_form("fused", "cpu", True, windowed_on_cpu=False) == "eager"
    assert [fa.fused_form("fused", d, True) for d in ("cuda", "traced")] == ["folded", "folded"]
    assert fa.fused_form("eager", "cuda", False) == "eager"
    assert backbone.attention == "fused"
    assert build_backbone("tiny-sam", attention="eager").attention == "eager"
    eager_keys = build_backbone("tiny-sam", attention="eager").model.state_dict().keys()
    assert list(backbone.model.state_dict().keys()) == list(eager_keys)  # same names, same order
    with pytest.raises(ValueError, match="attention must be"):
        build_backbone("tiny-sam", attention="flash")
    block = next(b for b in encoder.blocks if b.window_size == 0)
    x = torch.randn(1, 16, 16, 96, requires_grad=True)
    n = 16 * 16
    assert fa.query_chunk(2, n) == n  # tiny: one query block
    for form, chunk in [("eager", None), ("blockwise", 32), ("folded", None)]:
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t.shape) or t, lambda t: t):
            if form == "eager":
                out = Attention.forward(block.attn, x)
            else:
                monkeypatch.setattr(fa, "CHUNK_SCORES", (chunk or n) * n * block.attn.num_heads)
                out = fused_attention(block.attn, x, form=form)
        out.sum().backward()
        squares = [s for s in saved if len(s) >= 2 and s[-1] == s[-2] == n]
        assert bool(squares) == (form == "eager"), (form, squares)  # only eager keeps N x N for backward
    with torch.profiler.profile() as prof:
        fused_attention(block.attn, x, form="folded").sum().backward()
    ops = {e.key for e in prof.key_averages()}
    assert {"aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_flash_attention_for_cpu_backward"} <= ops  # fmt: skip


def test_the_blockwise_form_in_several_query_blocks_equals_eager(monkeypatch):
    """Query blocks that do not divide N (the last one shorter) give eager's outputs and gradients."""
    block = build_backbone("tiny-sam").model.image_encoder.blocks[-1]
    randomise_rel_pos(block)
    x = torch.randn(2, 15, 15, 96, generator=torch.Generator().manual_seed(2))
    params = dict(block.attn.named_parameters())
    monkeypatch.setattr(fa, "CHUNK_SCORES", 2 * block.attn.num_heads * 225 * 40)  # blocks of 32 queries
    assert fa.query_chunk(2 * block.attn.num_heads, 225) == 32
    eager = forward_backward(lambda t: Attention.forward(block.attn, t), x, params)
    assert_close(eager, forward_backward(lambda t: fused_attention(block.attn, t, form="blockwise"), x, params))


def test_other_architectures_accept_both_names():
    for name in ("tiny-mobile-sam", "tiny-sam2", "tiny-clip"):
        for mode in ("fused", "eager"):
            build_backbone(name, attention=mode)


def test_fused_prediction_equals_sam_predictor_on_the_stock_model():
    from segment_anything import SamPredictor

    backbone = build_backbone("tiny-sam", seed=3)
    randomise_rel_pos(backbone.model)
    assert backbone.attention == "fused"
    stock = build_sam_model(backbone.spec)  # segment-anything's own classes, eager attention
    stock.load_state_dict(backbone.model.state_dict())
    assert not any(isinstance(m, FusedAttention) for m in stock.modules())
    task, reference = DichotomousTask(backbone), SamPredictor(stock.eval())
    s = backbone.input_size
    image, cases = reference_prompts(s, s, s, seed=0)
    reference.set_image(image)
    for theirs, ours in (cases[0], cases[2]):  # a box; a box and clicks
        logits, _, _ = reference.predict(**theirs, multimask_output=False, return_logits=True)
        expected = 1 / (1 + np.exp(-logits[0]))
        got = task.predict(image, refine=False, **ours)
        assert np.abs(got - expected).max() < 1e-4, list(theirs)
    assert expected.std() > 1e-3


def test_a_run_builds_and_records_its_attention():
    from adapt.__main__ import build_parser
    from adapt.train import TrainConfig, build_model

    args = build_parser().parse_args(["train", "--data", "d", "--attention", "eager"])
    assert args.attention == "eager"
    assert build_parser().parse_args(["train", "--data", "d"]).attention == "fused"
    for mode in ("fused", "eager"):
        backbone, _, _ = build_model(TrainConfig(backbone="tiny-sam", checkpoint="random", attention=mode))
        assert backbone.attention == mode


def test_compile_and_the_cache_flags_reach_the_run():
    from adapt.__main__ import build_parser
    from adapt.train import Run, TrainConfig, TrainingError

    args = build_parser().parse_args(
        ["train", "--data", "d", "--compile", "--no-embedding-cache", "--cache-views", "2"]
    )
    assert (args.compile, args.embedding_cache, args.cache_views) == (True, False, 2)
    defaults = build_parser().parse_args(["train", "--data", "d"])
    assert (defaults.compile, defaults.embedding_cache) == (False, True)
    run = Run(TrainConfig(backbone="tiny-sam", checkpoint="random", compile=True, device="cpu"))
    assert all(b._compiled_call_impl is not None for b in run.backbone.blocks())  # compiled lazily, in place
    plain = Run(TrainConfig(backbone="tiny-sam", checkpoint="random", device="cpu"))
    assert list(run.backbone.model.state_dict()) == list(plain.backbone.model.state_dict())
    with pytest.raises(TrainingError, match="cache_views"):
        Run(TrainConfig(backbone="tiny-sam", checkpoint="random", cache_views=0, device="cpu"))
