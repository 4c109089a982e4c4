"""SAM 2.1 backbones (Meta's sam2 package, image mode): the catalog builds Meta's architectures, our
predictions equal SAM2ImagePredictor's, and the product runs on the tiny random-init config."""

import numpy as np
import pytest
import torch
from conftest import reference_prompts, sam3_installed

from adapt.backbones import build_backbone
from adapt.tasks.dichotomous import DichotomousTask

CONFIGS = {
    "sam2.1-hiera-tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1-hiera-small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1-hiera-base-plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1-hiera-large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "name",
    ["sam2.1-hiera-tiny", pytest.param("sam2.1-hiera-base-plus", marks=pytest.mark.slow)],
)
def test_catalog_builds_metas_architecture(name):
    """Every tensor of Meta's own build (sam2.build_sam.build_sam2 on its config file, which is what
    its checkpoints load into, strictly) has the same name and shape in ours, and nothing else."""
    from sam2.build_sam import build_sam2

    with torch.device("meta"):
        ours = build_backbone(name)
    theirs = build_sam2(CONFIGS[name], ckpt_path=None, device="cpu")
    assert shapes(ours.model) == shapes(theirs)
    assert ours.model.sam_mask_decoder.dynamic_multimask_via_stability  # build_sam2's default post-processing


def predictor(backbone):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    p = SAM2ImagePredictor(backbone.model)
    grid = backbone.input_size // 16  # the predictor's feature sizes assume 1024 px inputs
    p._bb_feat_sizes = [(grid * 4, grid * 4), (grid * 2, grid * 2), (grid, grid)]
    return p


@pytest.mark.parametrize("size", [(256, 256), (180, 300), (413, 97)])
def test_prediction_equals_sam2_image_predictor(size):
    """The same weights, image and prompt: our dichotomous prediction (stretch resize, feature
    pyramid, box as labelled corners) equals SAM2ImagePredictor's mask probabilities."""
    backbone = build_backbone("tiny-sam2", seed=3)
    task, reference = DichotomousTask(backbone), predictor(backbone)
    image, cases = reference_prompts(*size, backbone.input_size)
    h, w = size
    reference.set_image(image)
    for theirs, ours in cases:
        logits, _, _ = reference.predict(**theirs, multimask_output=False, return_logits=True)
        expected = 1 / (1 + np.exp(-logits[0]))
        got = task.predict(image, refine=False, **ours)
        assert got.shape == (h, w)
        assert np.abs(got - expected).max() < 1e-3, (size, list(theirs))
    assert expected.std() > 1e-3  # a prediction with structure, not a constant


# SAM 3's interactive path is SAM 2's prompt encoder and mask decoder on a ViT: the same checks
PYRAMID = ["tiny-sam2", pytest.param("tiny-sam3", marks=pytest.mark.skipif(not sam3_installed(), reason="no sam3"))]


@pytest.mark.parametrize("name", PYRAMID)
def test_cached_clicks_and_batches_match_one_off_predictions(name):
    from adapt.predictor import InteractivePredictor

    backbone = build_backbone(name, seed=1)
    task = DichotomousTask(backbone, prompt="clicks")
    images = [np.random.default_rng(i).integers(0, 255, (120 + 40 * i, 200, 3), dtype=np.uint8) for i in range(2)]
    clicks = (np.array([[50.0, 60.0]]), np.array([1]))
    interactive = InteractivePredictor(task)
    first = interactive.predict(images[0], points=clicks[0], labels=clicks[1], whole_box=True)
    again = interactive.predict(images[0], points=clicks[0], labels=clicks[1], whole_box=True)
    assert interactive.hits == 1 and np.allclose(first, again)
    assert np.abs(first - task.predict(images[0], points=clicks, whole_box=True, refine=False)).max() < 1e-5
    batch = task.predict_many(images, refine=False)
    for image, (outputs, _) in zip(images, batch):
        single = task.predict(image, refine=False)
        assert np.abs(outputs["alpha"].astype(int) - np.round(single * 255)).max() <= 1


@pytest.mark.parametrize("name", PYRAMID)
def test_full_resolution_refinement_runs(name):
    backbone = build_backbone(name, seed=2)
    task = DichotomousTask(backbone)
    image = np.random.default_rng(0).integers(0, 255, (700, 520, 3), dtype=np.uint8)
    prob, plan = task.predict_refined(image, box=[100, 120, 400, 600], refine=True)
    assert prob.shape == (700, 520) and plan is not None and np.isfinite(prob).all()


def test_video_memory_is_neither_trained_nor_counted():
    from adapt.methods import attach

    backbone = build_backbone("tiny-sam2")
    handle = attach(backbone, "full")
    trained = {id(p) for p in handle.adapter_parameters().values()}
    assert not trained & backbone.inactive_parameter_ids()
    image_path = sum(
        p.numel()
        for name in ("image_encoder", "sam_prompt_encoder", "sam_mask_decoder")
        for p in backbone.model.get_submodule(name).parameters()
    )
    assert handle.count()["trainable"] == image_path + backbone.model.no_mem_embed.numel()
    handle.detach()
    assert attach(backbone, "decoder").count()["base"] == handle.count()["trainable"]


def test_cli_train_predict_and_official_export(tmp_path, capsys):
    """The CLI loop on tiny-sam2 (random init, nothing downloaded): train PARSER, predict, and export
    in sam2's own checkpoint format, which Meta's SAM2ImagePredictor then reads to the same mask."""
    import json

    from PIL import Image

    from adapt.__main__ import main
    from adapt.backbones.catalog import CATALOG
    from adapt.backbones.sam2 import Sam2Backbone, build_sam2_model
    from adapt.data.synthetic import make_dataset, write_folder

    data = tmp_path / "data"
    write_folder(make_dataset("grayscale-noise", n=6, size=96, seed=3), data, task="dichotomous")
    run = tmp_path / "run"
    argv = ["train", "--backbone", "tiny-sam2", "--method", "parser", "--data", str(data), "--steps", "3"]
    assert main(argv + ["--batch-size", "2", "--validation", "0", "--lr", "0.05", "--out", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    card = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert card["base_model"]["name"] == "tiny-sam2" and report["counts"]["adapter"] == 1408

    image = np.random.default_rng(0).integers(0, 255, (150, 230, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    box = "20,30,160,120"
    assert main(["predict", "--adapter", str(run / "adapter"), "--image", str(tmp_path / "x.png"), "--box", box,
                 "--out", str(tmp_path / "mask.png"), "--all"]) == 0  # fmt: skip
    ours = np.array(Image.open(tmp_path / "mask_alpha.png")).astype(float) / 255

    official = tmp_path / "merged.pt"
    assert main(["export", "--adapter", str(run / "adapter"), "--official", str(official)]) == 0
    assert "model.load_state_dict" in capsys.readouterr().out
    spec = {"family": "sam", **CATALOG["tiny-sam2"].arch}
    model = build_sam2_model(spec)
    model.load_state_dict(torch.load(official, weights_only=True)["model"])
    reference = predictor(Sam2Backbone("tiny-sam2", "sam", model.eval(), spec, "file"))
    reference.set_image(image)
    logits, _, _ = reference.predict(box=np.array([20, 30, 160, 120.0]), multimask_output=False, return_logits=True)
    assert np.abs(1 / (1 + np.exp(-logits[0])) - ours).max() < 1 / 255 + 1e-3
