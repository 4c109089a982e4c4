"""Every backbone the library knows, one entry each: its family, its architecture and where its
weights come from. This is the one place a backbone is declared.

    CATALOG["sam-vit-b"].family    -> "sam"
    family_of("tiny-clip")         -> "clip"   (no model is built, nothing heavy is imported)

Three kinds of entry:
- official SAM (Meta's ViT-B/L/H): encoder sizes + the released checkpoint (URL, sha256, size);
- official CLIP (open_clip ViT-B/16, ViT-L/14): open_clip's architecture name and the pretrained
  tags offered; download locations come from open_clip's own registry (adapt.weights);
- official SAM 2.1 (Meta's Hiera-T/S/B+/L, image mode): the trunk's settings + the released file;
- tiny models: discovered from configs/*.json (each names its family), with weights committed in
  weights/ and described by weights/manifest.json, or ("bundled": false) random-init test configs.

A new official backbone of a known architecture is one entry below; a new tiny one is one JSON
file. The architecture modules (sam.py, tinyvit.py, sam2.py, clip.py) build models from entries;
adapt.weights resolves their files. This module
imports only the standard library, so anything may ask it questions.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"
FAMILIES = ("sam", "clip")


@dataclass(frozen=True)
class Checkpoint:
    """One official checkpoint file.

    ``sources`` are ``(url, file name)`` pairs tried in order: the first that the server has is
    downloaded and saved under its file name in the weights folder; a cached copy under any of the
    names counts. ``sha256``/``bytes`` are ``None`` where no published value is known (then only
    what the server announces is checked).
    """

    name: str  # backbone name, as the catalog knows it
    family: str  # "sam" | "clip"
    sources: tuple[tuple[str, str], ...]
    sha256: str | None
    bytes: int | None
    description: str
    # CLIP only: open_clip architecture and pretrained tag, and what building it needs.
    open_clip_model: str | None = None
    pretrained: str | None = None
    # OpenAI's CLIP weights were trained with QuickGELU (x * sigmoid(1.702 x)); open_clip's plain
    # "ViT-B-16"/"ViT-L-14" configs use nn.GELU. GELU has no parameters, so loading the weights
    # into the wrong activation succeeds silently and gives wrong features: the builder must pass
    # quick_gelu=True to CLIP(...) when this is set.
    quick_gelu: bool = False
    mean: tuple[float, ...] | None = None  # image normalisation the weights expect
    std: tuple[float, ...] | None = None
    # the Hugging Face repository whose licence must be accepted before its files download (with a
    # token: $HF_TOKEN or `hf auth login`), or None for an open download
    gated: str | None = None

    @property
    def url(self) -> str:
        return self.sources[0][0]

    @property
    def file(self) -> str:
        return self.sources[0][1]


@dataclass(frozen=True)
class BackboneEntry:
    """What the library knows about one backbone before building it.

    arch: the architecture's settings (SAM: the image encoder's and decoder's sizes; CLIP:
    ``open_clip_name`` for official models, or the whole open_clip config for tiny ones); its
    "kind" names the architecture where the family has several (``kind``).
    checkpoint: the official SAM file; pretrained: the open_clip tags offered (default first);
    bundled: the weights ship with the project (weights/manifest.json).
    """

    name: str
    family: str
    arch: dict = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    pretrained: tuple[str, ...] = ()
    bundled: bool = False

    @property
    def official(self) -> bool:
        return self.checkpoint is not None or bool(self.pretrained)

    @property
    def kind(self) -> str:
        """The architecture (adapt.backbones.ARCHITECTURES): arch["kind"], else the family's own."""
        return self.arch.get("kind", self.family)


CATALOG: dict[str, BackboneEntry] = {}


@dataclass(frozen=True)
class Extra:
    """An architecture whose code is an optional extra, under its own licence (not the project's):
    the package imported, how to add it, and the licence its models and adapters carry."""

    package: str
    install: str
    licence: str
    licence_url: str


EXTRAS = {
    "sam3": Extra(
        "sam3",
        "pip install --no-deps -r requirements-sam3.txt",
        "SAM License",
        "https://github.com/facebookresearch/sam3/blob/main/LICENSE",
    )
}


def register(entry: BackboneEntry) -> BackboneEntry:
    if entry.family not in FAMILIES:
        raise ValueError(f"backbone {entry.name!r}: unknown family {entry.family!r}; known: {', '.join(FAMILIES)}")
    if entry.name in CATALOG:
        raise ValueError(f"backbone {entry.name!r} is declared twice")
    CATALOG[entry.name] = entry
    return entry


def family_of(name: str) -> str:
    """The family ("sam" or "clip") of a backbone name, without building anything."""
    return get(name).family


def missing_extra(name: str) -> str | None:
    """Why a backbone cannot be built here (its architecture's optional package is not installed,
    and how to add it), or None when nothing is missing."""
    extra = extra_of(name)
    if extra is None or importlib.util.find_spec(extra.package) is not None:
        return None
    return f"{name} needs the optional `{extra.package}` package, not installed here: {extra.install}"


def extra_of(name: str) -> Extra | None:
    """The optional extra a backbone's architecture comes from (its package and licence), if any."""
    return EXTRAS.get(get(name).kind) if name in CATALOG else None


def get(name: str) -> BackboneEntry:
    if name not in CATALOG:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(CATALOG)}")
    return CATALOG[name]


def names(family: str | None = None) -> list[str]:
    """Backbone names, optionally of one family, in declaration order (bundled last)."""
    return [n for n, e in CATALOG.items() if family is None or e.family == family]


def bundled(family: str) -> str:
    """The bundled tiny backbone of a family (what works offline: tests, selfcheck, demos)."""
    for name, entry in CATALOG.items():
        if entry.bundled and entry.family == family:
            return name
    raise ValueError(f"no bundled {family!r} backbone")


# --- official SAM (segment_anything/build_sam.py's three sizes; the rest is shared) -------------

_SAM_SHARED = dict(
    img_size=1024,
    patch_size=16,
    window_size=14,
    prompt_embed_dim=256,
    decoder_mlp_dim=2048,
    decoder_num_heads=8,
    iou_head_hidden_dim=256,
)
_SAM_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"


def _sam(name: str, file: str, sha256: str, size: int, description: str, **encoder) -> BackboneEntry:
    checkpoint = Checkpoint(
        name, "sam", ((_SAM_BASE + file, file),), sha256=sha256, bytes=size, description=description
    )
    return register(BackboneEntry(name, "sam", arch={**_SAM_SHARED, **encoder}, checkpoint=checkpoint))


# Meta does not print checksums on its release page; these sha256 values and sizes are the ones
# independent public projects verify downloads against, e.g. the pooch registry in
# computational-cell-analytics/micro-sam (micro_sam/util.py), which checks every download of these
# three URLs, and many download manifests that record the same sha256 with these byte counts
# (vit_b's size also matches the Content-Length in a published wget log of the download).
_sam(
    "sam-vit-b",
    "sam_vit_b_01ec64.pth",
    "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    375_042_383,
    "SAM ViT-B (Meta, Apache-2.0)",
    encoder_embed_dim=768,
    encoder_depth=12,
    encoder_num_heads=12,
    encoder_global_attn_indexes=[2, 5, 8, 11],
)
_sam(
    "sam-vit-l",
    "sam_vit_l_0b3195.pth",
    "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    1_249_524_607,
    "SAM ViT-L (Meta, Apache-2.0)",
    encoder_embed_dim=1024,
    encoder_depth=24,
    encoder_num_heads=16,
    encoder_global_attn_indexes=[5, 11, 17, 23],
)
_sam(
    "sam-vit-h",
    "sam_vit_h_4b8939.pth",
    "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    2_564_550_879,
    "SAM ViT-H (Meta, Apache-2.0)",
    encoder_embed_dim=1280,
    encoder_depth=32,
    encoder_num_heads=16,
    encoder_global_attn_indexes=[7, 15, 23, 31],
)

# --- MobileSAM: SAM's prompt encoder and mask decoder behind a TinyViT-5M encoder ---------------

register(
    BackboneEntry(
        "mobile-sam",
        "sam",
        arch={
            **_SAM_SHARED,
            "kind": "tinyvit",
            "tinyvit_widths": [64, 128, 160, 320],
            "tinyvit_depths": [2, 2, 6, 2],
            "tinyvit_heads": [2, 4, 5, 10],
            "tinyvit_windows": [7, 7, 14, 7],
        },
        # no published checksum or size either (see _sam2 below)
        checkpoint=Checkpoint(
            "mobile-sam",
            "sam",
            (("https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt", "mobile_sam.pt"),),
            sha256=None,
            bytes=None,
            description="MobileSAM, TinyViT-5M encoder (Kyung Hee University, Apache-2.0)",
        ),
    )
)

# --- official SAM 2.1 (Meta's configs/sam2.1/*.yaml; image mode) --------------------------------

_SAM2_SHARED = dict(
    kind="sam2",
    image_size=1024,
    d_model=256,
    memory_dim=64,
    memory_ffn=2048,
    memory_layers=4,
    window_spec=[8, 4, 14, 7],
)
_SAM2_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"


def _sam2(name: str, file: str, description: str, **trunk) -> BackboneEntry:
    # Meta publishes neither checksums nor sizes for these files, and no independent registry we could
    # find records them: like an open_clip download, only what the server announces is checked.
    checkpoint = Checkpoint(name, "sam", ((_SAM2_BASE + file, file),), sha256=None, bytes=None, description=description)
    return register(BackboneEntry(name, "sam", arch={**_SAM2_SHARED, **trunk}, checkpoint=checkpoint))


_sam2(
    "sam2.1-hiera-tiny",
    "sam2.1_hiera_tiny.pt",
    "SAM 2.1 Hiera-T (Meta, Apache-2.0)",
    embed_dim=96,
    num_heads=1,
    stages=[1, 2, 7, 2],
    global_att_blocks=[5, 7, 9],
    window_pos_embed_bkg_spatial_size=[7, 7],
)
_sam2(
    "sam2.1-hiera-small",
    "sam2.1_hiera_small.pt",
    "SAM 2.1 Hiera-S (Meta, Apache-2.0)",
    embed_dim=96,
    num_heads=1,
    stages=[1, 2, 11, 2],
    global_att_blocks=[7, 10, 13],
    window_pos_embed_bkg_spatial_size=[7, 7],
)
_sam2(
    "sam2.1-hiera-base-plus",
    "sam2.1_hiera_base_plus.pt",
    "SAM 2.1 Hiera-B+ (Meta, Apache-2.0)",
    embed_dim=112,
    num_heads=2,
    stages=[2, 3, 16, 3],
    global_att_blocks=[12, 16, 20],
    window_pos_embed_bkg_spatial_size=[14, 14],
)
_sam2(
    "sam2.1-hiera-large",
    "sam2.1_hiera_large.pt",
    "SAM 2.1 Hiera-L (Meta, Apache-2.0)",
    embed_dim=144,
    num_heads=2,
    stages=[2, 6, 36, 4],
    global_att_blocks=[23, 33, 43],
    window_pos_embed_bkg_spatial_size=[7, 7],
    window_spec=[8, 4, 16, 8],
)

# --- official SAM 3 (Meta's sam3 package, sam3/model_builder.py's sizes; the optional extra) ----

register(
    BackboneEntry(
        "sam3",
        "sam",
        arch=dict(
            kind="sam3",
            image_size=1008,
            patch_size=14,
            pretrain_image_size=336,
            embed_dim=1024,
            depth=32,
            num_heads=16,
            mlp_ratio=4.625,
            window_size=24,
            global_att_blocks=[7, 15, 23, 31],
            drop_path_rate=0.1,
            d_model=256,
            heads=8,
            ffn=2048,
            encoder_layers=6,
            decoder_layers=6,
            queries=200,
            geometry_layers=3,
            text_width=1024,
            text_heads=16,
            text_layers=24,
            memory_dim=64,
            memory_layers=4,
            mask_interpolation=1152,
        ),
        # gated on the Hub (the SAM License is accepted there first); Meta publishes no checksum or size
        checkpoint=Checkpoint(
            "sam3",
            "sam",
            (("https://huggingface.co/facebook/sam3/resolve/main/sam3.pt", "sam3.pt"),),
            sha256=None,
            bytes=None,
            description="SAM 3 (Meta, SAM License)",
            gated="facebook/sam3",
        ),
    )
)

# --- official CLIP (open_clip architecture, default pretrained tag first) ------------------------

register(
    BackboneEntry(
        "clip-vit-b-16", "clip", arch={"open_clip_name": "ViT-B-16"}, pretrained=("openai", "laion2b_s34b_b88k")
    )
)
register(
    BackboneEntry(
        "clip-vit-l-14", "clip", arch={"open_clip_name": "ViT-L-14"}, pretrained=("openai", "laion2b_s32b_b82k")
    )
)

# --- tiny models: one JSON file each -----------------------------------------------------------
# bundled (the default): weights committed in weights/; "bundled": false: a random-init test config

for _path in sorted(CONFIG_DIR.glob("*.json")):
    _arch = json.loads(_path.read_text())
    register(BackboneEntry(_path.stem, _arch.pop("family"), arch=_arch, bundled=_arch.pop("bundled", True)))
