import os

import pytest
import torch

from adapt.backbones import FAMILIES, build_backbone
from adapt.backbones.catalog import bundled
from adapt.methods import configurations
from adapt.tasks import attach_task_head

torch.set_num_threads(1)  # robust on a shared 2-core machine: OpenMP spin-waits badly when oversubscribed

# (method, family, options): every configuration the library ships (defaults and declared variants).
CASES = configurations()
TINY = {family: bundled(family) for family in FAMILIES}


def sam3_installed() -> bool:
    """SAM 3's optional extra (requirements-sam3.txt) is installed, or must be (CI=true, .ci/run)."""
    try:
        import sam3  # noqa: F401
    except ImportError:
        return os.environ.get("CI") == "true"
    return True


# SAM 3 (tiny-sam3, random-init) joins every SAM configuration where its extra is installed: its
# cases name "sam3" where the others name their family
if sam3_installed():
    TINY["sam3"] = "tiny-sam3"
    CASES += [(m, "sam3", o) for m, _, o in configurations("sam")]
CASE_IDS = [f"{m}-{f}" + "".join(f"-{k}={v}" for k, v in o.items()) for m, f, o in CASES]


def tiny_backbone(family: str, seed: int = 0):
    backbone = build_backbone(TINY[family], seed=seed)
    attach_task_head(backbone)
    return backbone


def reference_prompts(h: int, w: int, input_size: int, seed: int | None = None):
    """What the tests holding a prediction against an upstream predictor share: a random (h, w)
    image (generator seeded by `seed`, default h) and the prompt pairs (the upstream predictor's
    keywords, ours): a box, two clicks, both, and the prompt-free whole-image box in source pixels
    (`input_size`: the model's square input)."""
    import numpy as np

    image = np.random.default_rng(h if seed is None else seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    box = np.array([0.2 * w, 0.1 * h, 0.7 * w, 0.8 * h], np.float32)
    clicks = np.array([[0.4 * w, 0.5 * h], [0.1 * w, 0.9 * h]], np.float32), np.array([1, 0])
    s = input_size
    whole = np.array([0, 0, w * (s - 1) / s, h * (s - 1) / s], np.float32)
    cases = [
        ({"box": box}, {"box": box}),
        ({"point_coords": clicks[0], "point_labels": clicks[1]}, {"points": clicks}),
        ({"box": box, "point_coords": clicks[0], "point_labels": clicks[1]}, {"box": box, "points": clicks}),
        ({"box": whole}, {}),
    ]
    return image, cases


def frozen_output(backbone, inputs):
    for p in backbone.model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        return backbone.forward(inputs)


def perturb(handle, scale: float = 0.05, seed: int = 1):
    """Move every trainable tensor away from its initialisation (a stand-in for training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(handle.adapter_parameters().values()) + list(handle.head_parameters().values()):
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.abs().mean() + 1e-2))


@pytest.fixture(params=CASES, ids=CASE_IDS)
def case(request):
    return request.param


@pytest.fixture(scope="session")
def studio_app(tmp_path_factory):
    """One studio process for the browser tests of the whole session (started on first use)."""
    from browser_support import need_browser
    from studio_support import App

    need_browser()
    app = App(tmp_path_factory.mktemp("studio-browser") / "studio").start()
    yield app
    app.stop()


@pytest.fixture(scope="session")
def chromium(studio_app):
    """One headless Chromium for the session; each test module opens its own page (a new owner)."""
    from browser_support import launched

    with launched() as browser:
        yield browser


@pytest.fixture(scope="module")
def page(studio_app, chromium, tmp_path_factory):
    """A browser page on the session's studio for one test module: a new owner, a work folder."""
    from browser_support import studio_page

    with studio_page(chromium, studio_app.url, tmp_path_factory.mktemp("browser")) as page:
        yield page
