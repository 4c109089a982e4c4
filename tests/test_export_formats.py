"""The adapted model outside the studio: segment-anything's and open_clip's own checkpoint format
(export --official), ONNX graphs with their onnxruntime runner (export --onnx, predict --onnx)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import perturb, tiny_backbone

from adapt.__main__ import main
from adapt.data.synthetic import make_dataset, write_folder
from adapt.export import AdapterError, save_adapter
from adapt.methods import attach
from adapt.official import openvocab_from_open_clip, save_official
from adapt.onnx_graphs import OnnxError, load_onnx
from adapt.pipeline import export_onnx, inference_task

CLASSES = ["red", "blue", "green"]


def adapter(tmp_path, family: str, method: str, name: str | None = None):
    """A tiny adapter moved away from its initialisation (a few steps' worth of change)."""
    handle = attach(tiny_backbone(family), method)
    perturb(handle)
    task = "openvocab" if family == "clip" else "dichotomous"
    return save_adapter(
        handle, tmp_path / (name or f"{method}-{family}"), task=task, classes=CLASSES if family == "clip" else None
    )


@pytest.fixture(scope="module")
def trained_sam(tmp_path_factory):
    """tiny-sam + PARSER trained a few steps with the project's command."""
    tmp = tmp_path_factory.mktemp("trained")
    data = write_folder(make_dataset("camouflage", n=6, size=96, seed=3), tmp / "data", task="dichotomous")
    args = ["train", "--data", str(data), "--steps", "4", "--batch-size", "2", "--holdout", "2", "--lr", "1e-2"]
    assert main(args + ["--out", str(tmp / "run"), "--json"]) == 0
    return tmp / "run" / "adapter"


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


# --- official formats ------------------------------------------------------------------------------


def segment_anything_sam(spec: dict, checkpoint):
    """A Sam of `spec`'s sizes built from segment-anything's own classes (as its build_sam does),
    loading the file with torch.load as its builder does."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    s, patch, dim = spec["img_size"], spec["patch_size"], spec["prompt_embed_dim"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=spec["encoder_depth"],
            embed_dim=spec["encoder_embed_dim"],
            img_size=s,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec["encoder_num_heads"],
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec["encoder_global_attn_indexes"],
            window_size=spec["window_size"],
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(s // patch, s // patch), input_image_size=(s, s), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=dim, mlp_dim=spec["decoder_mlp_dim"], num_heads=spec["decoder_num_heads"]
            ),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=spec["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    with open(checkpoint, "rb") as f:
        sam.load_state_dict(torch.load(f))
    return sam.eval()


def test_a_sam_adapter_loads_into_segment_anything_and_predicts_the_same(tmp_path, trained_sam):
    from segment_anything import SamPredictor

    files, how = save_official(trained_sam, tmp_path / "sam.pth")
    assert files == [tmp_path / "sam.pth"] and "load_state_dict" in how
    ours, _ = inference_task(adapter=trained_sam)
    sam = segment_anything_sam(ours.backbone.spec, tmp_path / "sam.pth")
    predictor = SamPredictor(sam)
    s = ours.size
    picture = image(s, s, seed=4)  # at the model's input size: neither side resizes
    predictor.set_image(picture)
    box = np.array([20.0, 30.0, 200.0, 180.0])
    clicks = np.array([[60.0, 90.0], [150.0, 40.0]]), np.array([1, 0])
    for prompt, theirs in (
        ({"box": box}, {"box": box}),
        ({"points": clicks}, {"point_coords": clicks[0], "point_labels": clicks[1]}),
        ({"box": box, "points": clicks}, {"box": box, "point_coords": clicks[0], "point_labels": clicks[1]}),
    ):
        logits, _, _ = predictor.predict(**theirs, multimask_output=False, return_logits=True)
        expected = torch.sigmoid(torch.from_numpy(logits[0])).numpy()
        got = ours.predict(picture, refine=False, **prompt)
        assert np.abs(got - expected).max() < 1e-4, list(prompt)


def test_a_clip_adapter_loads_into_open_clip_and_labels_the_same(tmp_path):
    import open_clip

    folder = adapter(tmp_path, "clip", "hclip")
    files, how = save_official(folder, tmp_path / "clip.pth")
    assert [f.name for f in files] == ["clip.pth", "clip.head.safetensors", "clip.json"]
    assert "create_model('clip'" in how
    open_clip.add_model_config(tmp_path / "clip.json")
    model = open_clip.create_model("clip", pretrained=str(tmp_path / "clip.pth"))
    theirs = openvocab_from_open_clip(model, tmp_path / "clip.head.safetensors")
    ours, _ = inference_task(adapter=folder)
    for h, w in ((128, 128), (150, 260)):
        picture = image(h, w, seed=h)
        assert np.array_equal(theirs.predict(picture)[0], ours.predict(picture)[0])
        assert torch.allclose(theirs.class_scores(picture, CLASSES), ours.class_scores(picture, CLASSES), atol=1e-5)


def test_adaptformer_is_refused_with_what_to_export_instead(tmp_path):
    folder = adapter(tmp_path, "sam", "adaptformer")
    with pytest.raises(AdapterError, match="non-linear.*export ONNX graphs"):
        save_official(folder, tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


# --- ONNX ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,method", [("sam", "parser"), ("sam", "lora"), ("clip", "hclip")])
def test_onnx_graphs_pass_the_checker_and_predict_like_pytorch(tmp_path, family, method):
    import onnx

    folder = adapter(tmp_path, family, method)
    out = export_onnx(folder, tmp_path / "onnx")
    config = json.loads((out / "onnx_config.json").read_text())
    for graph in config["graphs"]:
        onnx.checker.check_model(str(out / graph))
    ours, _ = inference_task(adapter=folder)
    runner = load_onnx(out)
    sizes = [(200, 300), (256, 256), (640, 480)] if family == "sam" else [(128, 128), (150, 260), (300, 200)]
    for h, w in sizes:
        picture = image(h, w, seed=w)
        if family == "sam":  # prompt-free, box, clicks, box + clicks; 640 px is refined with crops
            box = [10.0, 20.0, 150.0, 180.0]
            clicks = np.array([[50.0, 60.0], [100.0, 30.0], [120.0, 90.0]]), np.array([1, 0, 1])
            for prompt in (
                {},
                {"box": box},
                {"points": clicks},
                {"box": box, "points": (clicks[0][:1], clicks[1][:1])},
            ):
                assert np.abs(runner.predict(picture, **prompt) - ours.predict(picture, **prompt)).max() < 1e-4
        else:
            names = ours.vocabulary()  # background first, as the graph was exported
            assert torch.allclose(runner.class_scores(picture, names), ours.class_scores(picture, names), atol=1e-4)
            assert np.array_equal(runner.predict(picture)[0], ours.predict(picture)[0])
    if family == "clip":
        meta = {p.key: p.value for p in onnx.load(str(out / "openvocab.onnx")).metadata_props}
        assert json.loads(meta["classes"]) == ["background"] + CLASSES
        with pytest.raises(OnnxError, match="exported for the classes background, red, blue, green"):
            runner.predict(image(64, 64), classes=["cat"])


def test_fp16_graphs_and_bad_folders(tmp_path):
    import onnx

    folder = adapter(tmp_path, "sam", "lora")
    out = export_onnx(folder, tmp_path / "half", fp16=True)
    graph = onnx.load(str(out / "image_encoder.onnx"))
    onnx.checker.check_model(graph)
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    with pytest.raises(OnnxError, match="fp16"):
        load_onnx(out)
    with pytest.raises(OnnxError, match="has no onnx_config.json"):
        load_onnx(tmp_path)
    (out / "mask_decoder.onnx").unlink()
    (out / "onnx_config.json").write_text(json.dumps({**json.loads((out / "onnx_config.json").read_text())}))
    with pytest.raises(OnnxError, match="lacks mask_decoder.onnx"):
        load_onnx(out)


def test_cli_exports_and_predicts_with_onnx(tmp_path, capsys):
    import cv2

    folder = adapter(tmp_path, "sam", "parser")
    assert (
        main(["export", "--adapter", str(folder), "--onnx", str(tmp_path / "g"), "--official", str(tmp_path / "o.pth")])
        == 0
    )
    printed = capsys.readouterr().out
    assert "image_encoder.onnx" in printed and "o.pth" in printed
    picture = tmp_path / "p.png"
    cv2.imwrite(str(picture), image(120, 160)[..., ::-1])  # RGB -> the BGR cv2 writes
    assert (
        main(
            [
                "predict",
                "--onnx",
                str(tmp_path / "g"),
                "--image",
                str(picture),
                "--out",
                str(tmp_path / "m.png"),
                "--box",
                "5,5,100,90",
            ]
        )
        == 0
    )
    ours, _ = inference_task(adapter=folder)
    mask = cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_GRAYSCALE)
    expected = ours.predict_outputs(image(120, 160), box=[5.0, 5.0, 100.0, 90.0])["main"]
    assert mask.shape == (120, 160) and np.array_equal(mask, expected)


@pytest.mark.slow
def test_a_full_size_sam_adapter_loads_with_segment_anythings_registry(tmp_path):
    """sam-vit-b's architecture (random init, no download): the file goes through
    sam_model_registry["vit_b"](checkpoint=...) exactly as a user would load it."""
    from segment_anything import sam_model_registry

    from adapt.backbones import build_backbone
    from adapt.tasks import attach_task_head

    backbone = build_backbone("sam-vit-b", seed=0)
    attach_task_head(backbone)
    handle = attach(backbone, "lora")
    perturb(handle)
    folder = save_adapter(handle, tmp_path / "vitb", task="dichotomous")
    files, how = save_official(folder, tmp_path / "vitb.pth")
    assert "sam_model_registry['vit_b']" in how
    sam = sam_model_registry["vit_b"](checkpoint=str(files[0])).eval()
    handle.merge()
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(sam.image_encoder(x), handle.model.image_encoder(x), atol=1e-4)
