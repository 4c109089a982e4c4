"""SAM 3 (Meta, Nov 2025) image model: Meta's own classes from the optional `sam3` package
(requirements-sam3.txt), built from the catalog entry (adapt/backbones/sam3_build.py), run here
through its interactive (SAM 1 style) path and its concept path.

The model is `sam3.model.sam3_image.Sam3Image` with its instance-interactivity predictor, i.e. what
`build_sam3_image_model(enable_inst_interactivity=True)` builds (the same tensors by name and
shape for the official size, tests/test_sam3.py), from these parts:
- the detector (848,311,862 parameters at full size: Meta's "848M"): a ViT trunk (32 blocks,
  width 1024, RoPE, windows of 24 with four global blocks, patch 14 at 1008 px) under a dual
  ViTDet neck (the detector's levels and a second, SAM 2 style set for the interactive path), a
  CLIP-style text encoder, the fusion encoder and DETR-style decoder, the geometry (exemplar)
  encoder, the segmentation head and the dot-product scorer;
- the tracker (11,743,362): SAM 2's prompt encoder and mask decoder (the interactive path) and the
  video memory (memory attention and encoder, object pointers), which images never run.

Built by sam3_build.py rather than through `build_sam3_image_model`, which hard-codes the full size and makes
CUDA tensors while it builds (PositionEmbeddingSine's cache, the decoder's coordinates): the same
constructors with the catalog's sizes, so that the official size and the tiny test config go
through one builder, on the CPU or the meta device (PortableBuild). The tokenizer's BPE file is
not in the `sam3` wheel; it is CLIP's, which open_clip ships.

Where the dichotomous task runs (`encode` / `decode`): the ViT trunk, the neck's SAM 2 levels
(`sam2_convs`), the tracker's no-memory embedding, prompt encoder and mask decoder, exactly as
`Sam3Image.predict_inst` does after `Sam3Processor.set_image`: a square resize (no padding),
pixels normalised with mean = std = 0.5, the decoder's two finer levels projected by its conv_s0
/ conv_s1. The methods adapt the trunk's blocks (q/k/v/proj, MLPs), its patch embedding and
those neck convs; the mask decoder is the head. The detector's own neck levels, text encoder,
fusion transformer, geometry encoder, segmentation and scoring heads, and the tracker's video
memory, are `inactive` on this path: kept so that checkpoints load and export whole, never
trained nor counted as the base model.

Where the concept task runs (`ground`, adapt/tasks/concept.py; `use_concept_path`): the same trunk
under the detector's own neck levels, the text encoder, the fusion encoder and the DETR decoder
(queries, boxes, presence token), the segmentation head and the scorer, with exemplar boxes
through the geometry encoder, as `Sam3Processor` runs them. The methods adapt the same trunk (and
the detector's neck levels); the decoder, segmentation head and scorer are the heads; the tracker
and the SAM 2 levels are the inactive parts there.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from adapt.backbones.base import (
    BlockLayout,
    EncoderLayout,
    MemoryBlock,
)
from adapt.backbones.sam2 import VIDEO_ONLY, Sam2Backbone, Sam2Features
from adapt.backbones.sam3_build import build_sam3_model, require_sam3  # noqa: F401  (sam3's builder, and its extra)

# Sam3Processor's normalisation (mean = std = 0.5 on [0, 1] pixels), on 0..255 as SAM's
PIXEL_MEAN = [127.5, 127.5, 127.5]
PIXEL_STD = [127.5, 127.5, 127.5]

TRACKER = "inst_interactive_predictor.model"
NECK = "backbone.vision_backbone"
# the detector's parts that the interactive path never runs
DETECTOR_ONLY = (
    "backbone.language_backbone",
    f"{NECK}.convs",
    "transformer",
    "geometry_encoder",
    "segmentation_head",
    "dot_prod_scoring",
)
# the tracker's parts that only video tracking runs: SAM 2's, its memory under sam3's names
TRACKER_VIDEO_ONLY = (
    "maskmem_backbone",
    "transformer",
    *(n for n in VIDEO_ONLY if n not in ("memory_attention", "memory_encoder")),
)
# RoPE keeps q and k once more (rotated, as complex pairs) for backward in every ViT block
ROPE_WIDTHS = 2


class Sam3Backbone(Sam2Backbone):
    """A built SAM 3 image model (sam3.model.sam3_image.Sam3Image with its interactive predictor):
    the ViT trunk, its patch embedding and the neck's SAM 2 levels are what the methods adapt, the
    tracker's mask decoder is the head, its prompt encoder stays frozen."""

    pixel_statistics = (PIXEL_MEAN, PIXEL_STD)
    concepts = True
    onnx_refusal = (
        "ONNX export of SAM 3 backbones is not supported yet; "
        "`export --official` writes the merged model in sam3's own checkpoint format"
    )

    @classmethod
    def build_model(cls, spec: dict):
        return build_sam3_model(spec)

    @staticmethod
    def from_upstream(state: dict) -> dict:
        return from_upstream(state)

    @classmethod
    def embedding_grid(cls, spec: dict) -> int:
        """Side of the image embedding: the input at the patch stride (14)."""
        return spec["image_size"] // spec["patch_size"]

    @classmethod
    def memory_blocks(cls, spec: dict, **attention) -> tuple[list[MemoryBlock], list[MemoryBlock]]:
        """The ViT: every block at the embedding grid, windows of window_size (padded to whole
        windows) but for global_att_blocks; PyTorch's scaled_dot_product_attention keeps no
        length^2 matrix, RoPE keeps q and k once more."""
        grid, ws = cls.embedding_grid(spec), spec["window_size"]
        blocks = []
        for i in range(spec["depth"]):
            glob = i in spec["global_att_blocks"]
            blocks.append(
                MemoryBlock(
                    tokens=grid * grid,
                    width=spec["embed_dim"],
                    mlp=spec["mlp_ratio"],
                    heads=spec["num_heads"],
                    length=grid * grid if glob else ws * ws,
                    sequences=1 if glob else math.ceil(grid / ws) ** 2,
                    explicit=False,
                    kept_widths=ROPE_WIDTHS,
                )
            )
        return blocks, []

    @classmethod
    def embedding_values(cls, spec: dict) -> int:
        """The pyramid the mask decoder reads: the embedding (d x g x g) and its two finer levels
        (d/8 channels at 4g, d/4 at 2g)."""
        grid, d = cls.embedding_grid(spec), spec["d_model"]
        return d * grid * grid + d // 8 * (4 * grid) ** 2 + d // 4 * (2 * grid) ** 2

    @classmethod
    def upstream_checkpoint(cls, state: dict) -> dict:
        """sam3's own layout (what sam3.pt holds and its builders read): the detector's tensors
        under "detector.", the tracker's under "tracker."."""
        prefix = TRACKER + "."
        return {
            "model": {
                ("tracker." + k.removeprefix(prefix)) if k.startswith(prefix) else "detector." + k: v
                for k, v in state.items()
            }
        }

    def upstream_usage(self, dest: Path, config: Path | None = None) -> str:
        """How sam3's own builder loads the file. The builder's default `bpe_path` is the git
        checkout's assets/, which the `sam3` wheel does not ship: the tokenizer's file is CLIP's,
        from open_clip (as `_tokenizer`). Without CUDA the builder still makes CUDA tensors as it
        builds; PortableBuild keeps them on the CPU (tests/test_sam3.py runs this text so)."""
        if self.name == "sam3":
            return (
                "import os, open_clip\n"
                "from sam3.model_builder import build_sam3_image_model\n"
                "bpe = os.path.join(os.path.dirname(open_clip.__file__), 'bpe_simple_vocab_16e6.txt.gz')\n"
                "# without CUDA: build inside `with adapt.backbones.base.PortableBuild():`\n"
                f"model = build_sam3_image_model(bpe_path=bpe, checkpoint_path={str(dest)!r}, load_from_HF=False, "
                "enable_inst_interactivity=True)"
            )
        return (
            f"# {self.name} is not the size sam3's builder makes: build its Sam3Image with the same classes\n"
            "# (adapt.backbones.sam3.build_sam3_model(spec) with this backbone's spec)\n"
            "from adapt.backbones.sam3 import from_upstream\n"
            f"model.load_state_dict(from_upstream(torch.load({str(dest)!r})['model']))"
        )

    @property
    def interactive(self):
        """The module holding the prompt encoder and mask decoder: SAM 3's tracker."""
        return self.model.get_submodule(TRACKER)

    @property
    def trunk(self):
        return self.model.get_submodule(NECK).trunk

    def blocks(self) -> list:
        return list(self.trunk.blocks)

    def _levels(self) -> int:
        """How many of the neck's levels the path's heads read (the coarsest is dropped)."""
        return len(self.model.get_submodule(NECK).sam2_convs) - self.model.backbone.scalp

    @property
    def _neck_levels(self) -> str:
        """The neck's level set the path reads: the detector's ("convs") or the SAM 2 set."""
        return "convs" if self.path == "concept" else "sam2_convs"

    def inactive(self) -> tuple[str, ...]:
        """Interactive path: the detector's own parts, the neck's unread level and the tracker's
        video memory. Concept path: the tracker and the SAM 2 levels, and the unread level."""
        levels = self._levels()
        if self.path == "concept":
            unread = tuple(f"{NECK}.convs.{i}" for i in range(levels, levels + 1))
            return (TRACKER, f"{NECK}.sam2_convs", *unread)
        unread = tuple(f"{NECK}.sam2_convs.{i}" for i in range(levels, levels + 1))
        return (*DETECTOR_ONLY, *unread, *(f"{TRACKER}.{n}" for n in TRACKER_VIDEO_ONLY))

    def layout(self) -> EncoderLayout:
        blocks = tuple(
            BlockLayout(
                path=f"{NECK}.trunk.blocks.{i}",
                width_in=self.spec["embed_dim"],
                width=self.spec["embed_dim"],
                mlp_linears=("mlp.fc1", "mlp.fc2"),
            )
            for i in range(len(self.trunk.blocks))
        )
        levels = self._neck_levels
        necks = tuple(
            f"{NECK}.{levels}.{i}.{name}"
            for i in range(self._levels())
            for name, module in self.model.get_submodule(f"{NECK}.{levels}.{i}").named_children()
            if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
        )
        return EncoderLayout(blocks=blocks, stem=(f"{NECK}.trunk.patch_embed.proj",), neck=necks, encoder=NECK)

    def encoder_shape(self) -> dict:
        grid = self.embedding_grid(self.spec)
        return {"tokens": grid * grid, "width": self.spec["embed_dim"], "depth": len(self.trunk.blocks)}

    # --- the concept path ----------------------------------------------------------------------
    path = "interactive"  # "concept" once the concept task runs on this model (use_concept_path)

    def use_concept_path(self) -> None:
        """Train and count the detector's concept path instead of the interactive one: the heads
        become the DETR decoder (queries, boxes, the presence token), the segmentation head and
        the dot-product scorer; the neck levels a method adapts are the detector's own (`convs`);
        the tracker and the SAM 2 levels are what this path never runs. Before a method attaches."""
        self.path = "concept"
        m = self.model
        self.heads = [m.transformer.decoder, m.segmentation_head, m.dot_prod_scoring]

    def ground(
        self,
        images: torch.Tensor,
        phrases: list[str],
        img_ids,
        text_ids,
        boxes: torch.Tensor | None = None,
        box_labels: torch.Tensor | None = None,
    ) -> dict:
        """The detector on (image, phrase) pairs, differentiable: normalised square images
        (B, 3, S, S); `phrases` encoded once each; pair p asks image img_ids[p] for phrase
        text_ids[p]. Exemplar `boxes` (P, N, 4) normalised cxcywh with `box_labels` (P, N) bool
        (True: an example of the concept, False: not one) join the phrase, as
        Sam3Processor.add_geometric_prompt adds them. Returns Sam3Image.forward_grounding's
        "pred_logits" (P, Q), "presence" (P,) logits, "pred_boxes" (P, Q, 4) cxcywh in [0, 1]
        and "pred_masks" (P, Q, m, m) logits, as its evaluation mode computes them (one-to-one
        queries, no matcher), whatever mode the trainer set."""
        from sam3.model.data_misc import FindStage
        from sam3.model.geometry_encoders import Prompt

        model, device = self.model, images.device
        img_ids = torch.as_tensor(img_ids, dtype=torch.long, device=device)
        text_ids = torch.as_tensor(text_ids, dtype=torch.long, device=device)
        find = FindStage(img_ids, text_ids, None, None, None, None, None)
        if boxes is None or boxes.shape[1] == 0:
            prompt = model._get_dummy_prompt(num_prompts=len(img_ids))
        else:
            prompt = Prompt(
                box_embeddings=boxes.transpose(0, 1).float(),  # (N, P, 4): sequence first
                box_mask=torch.zeros(boxes.shape[:2], dtype=torch.bool, device=device),
                box_labels=box_labels.transpose(0, 1).long(),
            )
        training = model.training
        model.training = False  # the top module only: evaluation's outputs, the blocks keep their mode
        try:
            with cpu_safe():
                features = model.backbone.forward_image(images)
                features.update(model.backbone.forward_text(list(phrases), device=device))
                out = model.forward_grounding(
                    backbone_out=features, find_input=find, find_target=None, geometric_prompt=prompt
                )
        finally:
            model.training = training
        return {
            "pred_logits": out["pred_logits"].squeeze(-1),
            "presence": out["presence_logit_dec"].reshape(-1),
            "pred_boxes": out["pred_boxes"],
            "pred_masks": out["pred_masks"],
        }

    def normalise(self, image: np.ndarray) -> torch.Tensor:
        """An RGB image (H, W, 3) uint8 as Sam3Processor feeds it: resized to the square input
        (uint8, bilinear, antialiased), scaled to [-1, 1]; (3, S, S) float32."""
        from torchvision.transforms.v2 import functional as tvf

        size = self.input_size
        pixels = tvf.resize(torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1), [size, size])
        return (pixels.float() / 255 - 0.5) / 0.5

    @torch.no_grad()
    def segment_text(self, image: np.ndarray, phrase: str, threshold: float = 0.5, boxes=None, box_labels=None) -> dict:
        """Concept segmentation, as Sam3Processor.set_image + set_text_prompt (+ one
        add_geometric_prompt per exemplar box) compute it: every instance of `phrase` in an RGB
        image (H, W, 3) uint8 that scores above `threshold`: "masks" (N, H, W) probabilities at the
        image's size, "scores" (N,) (the query's score times the presence score) and "boxes" (N, 4)
        xyxy in image pixels. `boxes`: exemplar boxes xyxy in image pixels, `box_labels` one bool
        each (default all True: examples of the concept; False: counter-examples)."""
        return self.segment_concepts(image, [phrase], threshold, boxes, box_labels)[0]

    @torch.no_grad()
    def segment_concepts(
        self, image: np.ndarray, phrases: list[str], threshold: float = 0.5, boxes=None, box_labels=None
    ) -> list[dict]:
        """`segment_text` for several phrases, the image encoded once: one dict per phrase."""
        h, w = image.shape[:2]
        n = len(phrases)
        scores, out = self.score_concepts(image, phrases, boxes, box_labels)
        results = []
        for k in range(n):
            keep = scores[k] > threshold
            cx, cy, bw, bh = out["pred_boxes"][k][keep].unbind(-1)
            xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * cx.new_tensor([w, h, w, h])
            logits = out["pred_masks"][k][keep][:, None]
            masks = (
                torch.nn.functional.interpolate(logits, (h, w), mode="bilinear", align_corners=False)
                if len(logits)
                else logits.new_zeros(0, 1, h, w)
            )
            results.append(
                {
                    "masks": masks[:, 0].sigmoid().cpu().numpy(),
                    "scores": scores[k][keep].cpu().numpy(),
                    "boxes": xyxy.cpu().numpy(),
                }
            )
        return results

    def score_concepts(self, image: np.ndarray, phrases: list[str], boxes=None, box_labels=None, device=None):
        """(scores (K, Q): each query's score, query x presence; `ground`'s outputs) for each phrase
        on an RGB image (H, W, 3) uint8, the image encoded once; `boxes` xyxy in image pixels with
        `box_labels` as in segment_text. On `device` (default: the model's)."""
        device = device or next(self.model.parameters()).device
        h, w = image.shape[:2]
        x = self.normalise(image)[None].to(device)
        n = len(phrases)
        exemplars = labels = None
        if boxes is not None and len(boxes):
            xyxy = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4), device=device)
            xyxy = xyxy / xyxy.new_tensor([w, h, w, h])
            cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], -1)
            exemplars = cxcywh[None].expand(n, -1, -1)
            given = np.ones(len(cxcywh), bool) if box_labels is None else np.asarray(box_labels, bool).reshape(-1)
            if len(given) != len(cxcywh):
                raise ValueError(f"{len(cxcywh)} exemplar boxes but {len(given)} box labels")
            labels = torch.as_tensor(given, device=device)[None].expand(n, -1)
        out = self.ground(x, phrases, [0] * n, list(range(n)), exemplars, labels)
        return out["pred_logits"].sigmoid() * out["presence"].sigmoid()[:, None], out

    def encoder_parameters(self) -> list:
        """The vision neck's (trunk included), the mask decoder's conv_s0 / conv_s1 and
        no_mem_embed: what `encode` reads."""
        neck, tracker = self.model.get_submodule(NECK), self.interactive
        decoder = tracker.sam_mask_decoder
        convs = [*decoder.conv_s0.parameters(), *decoder.conv_s1.parameters()]
        return [*neck.parameters(), *convs, tracker.no_mem_embed]

    def encode(self, images: torch.Tensor) -> Sam2Features:
        """What Sam3Processor.set_image computes for the interactive path, for normalised square
        images (B, 3, S, S): the trunk's last output through the neck's SAM 2 levels, the finer two
        projected by the mask decoder's conv_s0 / conv_s1, the no-memory embedding added to the
        coarsest (as Sam3Image.predict_inst)."""
        neck, tracker = self.model.get_submodule(NECK), self.interactive
        x = neck.trunk(images)[-1]
        levels = [neck.sam2_convs[i](x) for i in range(self._levels())]
        decoder = tracker.sam_mask_decoder
        embed = levels[-1] + tracker.no_mem_embed.view(1, -1, 1, 1)
        return Sam2Features(embed, (decoder.conv_s0(levels[0]), decoder.conv_s1(levels[1])))


class _PinOnlyWithCuda(TorchFunctionMode):
    """sam3's geometry encoder pins a small tensor in host memory (Tensor.pin_memory) on every
    call, which fails on a machine without CUDA; pinning only speeds a copy to the GPU, so there
    it is skipped (the tensor is returned as it is). The calling thread's own, like PortableBuild."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.pin_memory and not torch.cuda.is_available():
            return args[0]
        return func(*args, **(kwargs or {}))


def cpu_safe():
    """A context in which sam3's concept path runs without CUDA (see _PinOnlyWithCuda)."""
    return _PinOnlyWithCuda()


def from_upstream(state: dict) -> dict:
    """A state dict in sam3's own layout ("detector." / "tracker." keys, as sam3.pt) in this
    model's names; a state dict already in this model's names passes unchanged."""
    if not any(k.startswith(("detector.", "tracker.")) for k in state):
        return state
    out = {}
    for k, v in state.items():
        if k.startswith("detector."):
            out[k.removeprefix("detector.")] = v
        elif k.startswith("tracker."):
            out[f"{TRACKER}.{k.removeprefix('tracker.')}"] = v
        else:
            out[k] = v  # neither: left for the strict load to name
    return out
