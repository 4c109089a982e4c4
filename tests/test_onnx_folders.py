"""An ONNX export folder is checked before onnxruntime sees it (adapt.onnx_graphs.load_onnx): every key
of onnx_config.json, each graph's protobuf, its external-data locations and its inputs and outputs;
whatever is wrong is one OnnxError line naming the folder's file, never a traceback or an allocation
sized by the file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_backbone

from adapt.export import save_adapter
from adapt.methods import attach
from adapt.onnx_graphs import CONFIG, ENCODER, OPENVOCAB, OnnxError, load_onnx
from adapt.pipeline import export_onnx

DROP = object()  # a key removed from the config


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The good export of a tiny SAM and of a tiny CLIP (classes red, blue: 3 logits with background)."""
    tmp = tmp_path_factory.mktemp("exports")
    out = {}
    for family, method, task, classes in (
        ("sam", "lora", "dichotomous", None),
        ("clip", "hclip", "openvocab", ["red", "blue"]),
    ):
        folder = save_adapter(attach(tiny_backbone(family), method), tmp / family, task=task, classes=classes)
        out[family] = export_onnx(folder, tmp / f"{family}-onnx")
    return out


def copy_of(exports, family: str, tmp_path):
    return shutil.copytree(exports[family], tmp_path / "export")


def refused(folder, *words) -> str:
    """load_onnx refuses the folder with one line holding `words`."""
    with pytest.raises(OnnxError) as e:
        load_onnx(folder)
    message = str(e.value)
    assert "\n" not in message and len(message) < 400, message
    for word in words:
        assert word in message, message
    return message


BAD_KEYS = [
    ("sam", "size", 1000000, "size must be 256 (the input size of tiny-sam)"),
    ("sam", "size", -5, "size must be 256"),
    ("sam", "size", "256", "size must be 256"),
    ("sam", "size", 256.0, "size must be 256"),
    ("sam", "size", True, "size must be 256"),
    ("sam", "backbone", "sam-vit-b", "size must be 1024 (the input size of sam-vit-b)"),
    ("sam", "backbone", "sam-vit-z", "backbone must be a sam backbone"),
    ("sam", "backbone", "tiny-clip", "backbone must be a sam backbone"),
    ("sam", "backbone", ["tiny-sam"], "backbone must be a sam backbone"),
    ("sam", "backbone", "tiny-sam2", "backbone tiny-sam2: ONNX export of SAM 2"),
    ("sam", "dtype", "int8", "dtype must be float32 or float16"),
    ("sam", "dtype", ["float32"], "dtype must be float32 or float16"),
    ("sam", "task", "panoptic", "task must be one of dichotomous, openvocab"),
    ("sam", "task", ["dichotomous"], "task must be one of"),
    ("sam", "format", "other", "does not describe an adapt ONNX export"),
    ("sam", "adapter", "x", "adapter must be an object"),
    ("sam", "graphs", ["../../etc/passwd", "mask_decoder.onnx"], "graphs must be ['image_encoder.onnx'"),
    ("sam", "graphs", ["image_encoder.onnx"], "graphs must be"),
    ("sam", "pixel_mean", [1, 2], "pixel_mean must be 3 numbers in [0, 255]"),
    ("sam", "pixel_mean", [float("nan"), 0, 0], "pixel_mean must be"),
    ("sam", "pixel_std", [0, 1, 1], "pixel_std must be 3 numbers in (0, 255]"),
    ("sam", "embedding_grid", 17, "embedding_grid must be 16"),
    ("sam", "embedding_channels", 10**9, "embedding_channels must be 1 to 4096"),
    ("sam", "embedding_channels", 65, "image_encoder.onnx: output image_embeddings is not the (N, 65, 16, 16) tensor"),
    ("sam", "extra", 1, "has keys that a dichotomous export's config does not: extra"),
    ("sam", "pixel_std", DROP, "lacks pixel_std"),
    ("clip", "classes", "red", "classes must be a list of 2 to 255 distinct names"),
    ("clip", "classes", ["background"], "classes must be a list of 2 to 255"),
    ("clip", "classes", ["background"] + [f"c{i}" for i in range(300)], "classes must be a list of 2 to 255"),
    ("clip", "classes", ["background", "red", ""], "each class must be a name of 1 to 200 characters"),
    ("clip", "classes", ["background", "red", 5], "each class must be a name"),
    ("clip", "classes", ["background", "red", "x" * 500], "each class must be a name"),
    ("clip", "classes", ["background", "red", "red"], "classes must be a list of 2 to 255 distinct names"),
    ("clip", "classes", ["red", "blue", "green"], "classes must be a list of 2 to 255 distinct names (background"),
    ("clip", "classes", ["background", "red"], "openvocab.onnx: output logits is not the (N, 2, 128, 128) tensor"),
    ("clip", "mean", [0.5, 0.5, 300], "mean must be 3 numbers in [0, 1]"),
    ("clip", "std", [0, 0.5, 0.5], "std must be 3 numbers in (0, 1]"),
    ("clip", "threshold", 2, "threshold must be null or a number in [0, 1]"),
    ("clip", "threshold", "high", "threshold must be null"),
    ("clip", "overlap_stride", 0, "overlap_stride must be an integer in [1, 128]"),
    ("clip", "overlap_stride", 10**6, "overlap_stride must be an integer in [1, 128]"),
    ("clip", "scale", 1e9, "scale must be a number in (0, 8]"),
    ("clip", "scale", 0, "scale must be a number in (0, 8]"),
    ("clip", "size", 1000000, "size must be 128 (the input size of tiny-clip)"),
    ("clip", "backbone", "tiny-sam", "backbone must be a clip backbone"),
]


@pytest.mark.parametrize(
    "family,key,value,words", BAD_KEYS, ids=[f"{f}-{k}-{i}" for i, (f, k, _, _) in enumerate(BAD_KEYS)]
)
def test_each_bad_key_of_the_config_is_refused_in_one_line(exports, tmp_path, family, key, value, words):
    folder = copy_of(exports, family, tmp_path)
    config = json.loads((folder / CONFIG).read_text())
    if value is DROP:
        del config[key]
    else:
        config[key] = value
    (folder / CONFIG).write_text(json.dumps(config))
    refused(folder, str(folder / CONFIG) if "tensor" not in words else str(folder), words)


@pytest.mark.parametrize(
    "text,words",
    [
        ("[1, 2]", "the file must be a JSON object, not 'list'"),
        ("[" * 100000, "is not valid JSON"),
        (json.dumps({"pad": "x" * (2 << 20)}), "over 1048576 bytes"),
    ],
    ids=["list", "deep", "huge"],
)
def test_a_config_that_is_not_an_object_is_refused_in_one_line(exports, tmp_path, text, words):
    folder = copy_of(exports, "sam", tmp_path)
    (folder / CONFIG).write_text(text)
    refused(folder, CONFIG, words)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_corrupt_graph_is_refused_in_one_line(exports, tmp_path, damage):
    folder = copy_of(exports, "sam", tmp_path)
    graph = folder / ENCODER
    data = graph.read_bytes()
    graph.write_bytes(
        {"garbage": b"\xff\xfenot a protobuf" * 9, "truncated": data[: len(data) // 2], "empty": b""}[damage]
    )
    refused(folder, str(graph), "is not a valid ONNX graph", "export the adapter again")


def tiny_graph(path, location: str | None = None, inputs=("images",), gather=(0, 1, 2)) -> None:
    """A one-node graph written as `path`: images (N, 3, 128, 128) -> logits (N, 3, 128, 128), its
    initializer inline or, with `location`, in external data at that location."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    weight = numpy_helper.from_array(np.full((1, 3, 1, 1), 2.0, np.float32), "w")
    if location is not None:
        set_external_data(weight, location=location, offset=0, length=12)
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
    index = numpy_helper.from_array(np.array(gather, np.int64), "index")
    shape = ["batch", 3, 128, 128]
    graph = helper.make_graph(
        [
            helper.make_node("Gather", [inputs[0], "index"], ["picked"], axis=1),
            helper.make_node("Mul", ["picked", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in inputs],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)],
        initializer=[weight, index],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path.write_bytes(model.SerializeToString())


def no_onnxruntime(monkeypatch):
    """The refusal must come from our own check: onnxruntime is never asked to load the graph."""
    import onnxruntime

    def refuse(*args, **kwargs):
        raise AssertionError("onnxruntime was handed a graph that should have been refused before")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)


@pytest.mark.parametrize("where", ["parent", "absolute", "through-sub", "symlink", "symlinked-folder", "none"])
def test_external_data_outside_the_folder_is_refused_before_onnxruntime(exports, tmp_path, monkeypatch, where):
    folder = copy_of(exports, "clip", tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.full(3, 7.0, np.float32).tobytes())
    (folder / "sub").mkdir()
    (folder / "link.bin").symlink_to(secret)
    (folder / "linked").symlink_to(tmp_path)
    location = {
        "parent": "../secret.bin",
        "absolute": str(secret),
        "through-sub": "sub/../../secret.bin",
        "symlink": "link.bin",
        "symlinked-folder": "linked/secret.bin",
        "none": "",
    }[where]
    tiny_graph(folder / OPENVOCAB, location)
    no_onnxruntime(monkeypatch)
    refused(folder, str(folder / OPENVOCAB), f"names external data {location!r} that is not a plain file inside")


def test_external_data_inside_the_folder_still_loads_and_runs(exports, tmp_path):
    folder = copy_of(exports, "clip", tmp_path)
    (folder / "weights.bin").write_bytes(np.full(3, 2.0, np.float32).tobytes())
    tiny_graph(folder / OPENVOCAB, "weights.bin")
    images = torch.rand(1, 3, 128, 128)
    assert torch.allclose(load_onnx(folder).logits(images), 2 * images)
    (folder / "weights.bin").unlink()
    refused(folder, str(folder / OPENVOCAB), "needs its external data 'weights.bin', which is not in")


def test_wrong_inputs_a_symlinked_graph_and_a_failing_run_are_one_line(exports, tmp_path):
    folder = copy_of(exports, "clip", tmp_path)
    tiny_graph(folder / OPENVOCAB, inputs=("x",))
    refused(folder, str(folder / OPENVOCAB), "has inputs x; the runner uses images")
    tiny_graph(tmp_path / "elsewhere.onnx")
    (folder / OPENVOCAB).unlink()
    (folder / OPENVOCAB).symlink_to(tmp_path / "elsewhere.onnx")
    refused(folder, str(folder / OPENVOCAB), "is a symbolic link")
    (folder / OPENVOCAB).unlink()
    tiny_graph(folder / OPENVOCAB, gather=(0, 1, 5))  # channel 5 of 3: onnxruntime fails while running
    runner = load_onnx(folder)
    with pytest.raises(OnnxError) as e:
        runner.logits(torch.zeros(1, 3, 128, 128))
    assert str(folder / OPENVOCAB) in str(e.value) and "failed running it" in str(e.value)
    assert "\n" not in str(e.value)


def test_the_good_exports_still_load_and_predict(exports):
    picture = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    assert load_onnx(exports["sam"]).predict(picture, box=[5.0, 5.0, 80.0, 70.0]).shape == (90, 120)
    assert load_onnx(exports["clip"]).predict(picture)[0].shape == (90, 120)
