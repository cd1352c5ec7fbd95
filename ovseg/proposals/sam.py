"""Segment Anything (SAM) as a proposal generator: SAM's masks, classified by the OVSeg CLIP.

SAM's automatic mask generator prompts the model with a grid of points and keeps the good,
distinct masks. SAM has no vocabulary, so the proposals carry no embeddings and the ensemble
uses the CLIP branch alone. By default the generator does what the authors' Hugging Face space
(facebook/ov-seg, ``SAMVisualizationDemo``) does: the image's longer side is resized to 1280
(``long_side``), and every mask is kept as SAM gives it, in SAM's order; in demo mode the
``Predictor`` then fuses them by the space's rule (``demo_rule = "space"``,
``ovseg.modeling.fusion.space_fusion``). Other overlap rules (``ovseg.proposals.overlaps``:
the smallest covering mask wins, plus a mask of the uncovered pixels) are options; the
command line uses them for eval mode, where every pixel gets a label.

Weights are the user's: ``load_sam("sam_vit_b_01ec64.pth")`` (the variant is read from the
tensor shapes, or given as ``model_type``). ``build_sam_test_tiny`` makes a small randomly
initialised SAM from the package's own modules for tests and smoke runs.

Needs the ``sam`` extra: ``pip install 'ovseg[sam]'``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ovseg.modeling.proposals import Proposals
from ovseg.proposals.overlaps import OVERLAP_RULES, resolve_overlaps
from ovseg.proposals.registry import register

# Width of ``image_encoder.patch_embed.proj.weight`` -> model type.
_TYPE_BY_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h", 64: "test_tiny"}
SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "test_tiny")


def _segment_anything():
    try:
        import segment_anything
    except ImportError as error:
        raise ImportError(
            "the SAM proposal generator needs the segment-anything package: "
            "pip install 'ovseg[sam]'"
        ) from error
    return segment_anything


def build_sam_test_tiny(seed: int | None = 0) -> nn.Module:
    """A small randomly initialised SAM (0.22M parameters) for tests and smoke runs.

    Built from ``segment_anything.modeling`` exactly as the real variants are, at a smaller
    size: 256x256 input, a 2-block ViT of width 64, 32-dim prompts. Its masks are arbitrary
    (random weights), and its predicted IoUs are low, so use it with
    ``pred_iou_thresh=0, stability_score_thresh=0``.

    Args:
        seed: seed for the initial weights (None: use the global RNG).
    """
    modeling = _segment_anything().modeling
    image_size, patch, prompt_dim = 256, 16, 32
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        sam = modeling.Sam(
            image_encoder=modeling.ImageEncoderViT(
                img_size=image_size,
                patch_size=patch,
                embed_dim=64,
                depth=2,
                num_heads=2,
                mlp_ratio=4,
                out_chans=prompt_dim,
                qkv_bias=True,
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=4,
                global_attn_indexes=(1,),
            ),
            prompt_encoder=modeling.PromptEncoder(
                embed_dim=prompt_dim,
                image_embedding_size=(image_size // patch, image_size // patch),
                input_image_size=(image_size, image_size),
                mask_in_chans=4,
            ),
            mask_decoder=modeling.MaskDecoder(
                num_multimask_outputs=3,
                transformer=modeling.TwoWayTransformer(
                    depth=2, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2
                ),
                transformer_dim=prompt_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=32,
            ),
        )
    finally:
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    return sam.eval()


def _read_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused or not a torch file
        raise ValueError(
            f"cannot read SAM checkpoint {path}: expected a torch state dict saved with "
            f"torch.save (e.g. sam_vit_b_01ec64.pth); {type(error).__name__}: {error}"
        ) from error
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or "image_encoder.patch_embed.proj.weight" not in state:
        raise ValueError(
            f"{path} is not a SAM checkpoint: no 'image_encoder.patch_embed.proj.weight' key"
        )
    return state


def infer_sam_model_type(state_dict: dict[str, torch.Tensor]) -> str:
    """The SAM variant (``vit_b``, ``vit_l``, ``vit_h`` or ``test_tiny``) of a state dict."""
    width = state_dict["image_encoder.patch_embed.proj.weight"].shape[0]
    if width not in _TYPE_BY_WIDTH:
        raise ValueError(
            f"unknown SAM image encoder width {width}; known: "
            + ", ".join(f"{w} ({t})" for w, t in _TYPE_BY_WIDTH.items())
        )
    return _TYPE_BY_WIDTH[width]


def load_sam(
    checkpoint: str | Path, model_type: str | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Build a SAM and load the user's checkpoint (read with ``weights_only=True``).

    Args:
        checkpoint: path to an official SAM ``.pth`` (``sam_vit_b_01ec64.pth``,
            ``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``) or a state dict saved alike.
        model_type: ``vit_b``, ``vit_l``, ``vit_h`` or ``test_tiny``; None reads it from the
            checkpoint's tensor shapes. A given type that disagrees with the file is an error.
        device: where the model goes.

    Returns:
        ``segment_anything.modeling.Sam`` in eval mode on ``device``.
    """
    if model_type is not None and model_type not in SAM_MODEL_TYPES:
        raise ValueError(f"unknown SAM model type {model_type!r}; choose one of {SAM_MODEL_TYPES}")
    state = _read_state_dict(checkpoint)
    found = infer_sam_model_type(state)
    if model_type is not None and model_type != found:
        raise ValueError(
            f"SAM model type {model_type!r} was asked for, but {checkpoint} holds a {found!r} "
            f"model (image encoder width {state['image_encoder.patch_embed.proj.weight'].shape[0]})"
        )
    if found == "test_tiny":
        sam = build_sam_test_tiny(seed=None)
        sam.load_state_dict(state, strict=True)
    else:
        # Build without allocating or initialising weights, then take the checkpoint's tensors.
        with torch.device("meta"):
            sam = _segment_anything().sam_model_registry[found]()
        sam.load_state_dict(state, strict=True, assign=True)
        _restore_pixel_stats(sam)
    return sam.to(device).eval()


def _restore_pixel_stats(sam: nn.Module) -> None:
    """Non-persistent buffers are not in the checkpoint; rebuild any left on the meta device."""
    defaults = {"pixel_mean": [123.675, 116.28, 103.53], "pixel_std": [58.395, 57.12, 57.375]}
    for name, value in defaults.items():
        if getattr(sam, name).is_meta:
            sam.register_buffer(name, torch.tensor(value).view(-1, 1, 1), persistent=False)
    left = [n for n, t in [*sam.named_parameters(), *sam.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"SAM checkpoint did not provide: {left[:5]}")


class SamProposalGenerator:
    """Proposals from SAM's automatic mask generator (binary masks, no embeddings).

    The defaults are the authors' space: SAM's own filters, every mask kept in SAM's order,
    the model input resized to 1280 on its longer side.

    Args:
        sam: a ``segment_anything.modeling.Sam`` (see ``load_sam``, ``build_sam_test_tiny``).
        points_per_side: the prompt grid is points_per_side x points_per_side.
        points_per_batch: prompts run together (memory vs speed).
        pred_iou_thresh: keep masks whose predicted IoU exceeds this.
        stability_score_thresh: keep masks at least this stable under threshold changes.
        box_nms_thresh: box IoU above which duplicate masks are suppressed.
        crop_n_layers: extra layers of image crops (0: whole image only).
        min_mask_region_area: SAM's own clean-up (``SamAutomaticMaskGenerator``): remove
            holes and islands smaller than this many pixels from every mask (needs
            opencv); 0 (default) skips it.
        min_area: drop masks of fewer pixels (at the model-input size); empty masks are
            always dropped.
        max_masks: keep at most this many masks, those of best predicted IoU (in SAM's
            order; None: all).
        overlap: ``"sum"`` (default: every mask as SAM gives it, overlapping) or
            ``"smallest_wins"`` (disjoint; see ``ovseg.proposals.overlaps``).
        fill_uncovered: add one mask for the pixels that no SAM mask covers (default False,
            as the space: those pixels stay unlabelled in demo mode).
        long_side: the ``Predictor`` resizes the image so its longer side is this before
            SAM (the space's 1280, ``ovseg.data.transforms.resize_longest_side``); None uses
            the model config's test resize.
        device: where SAM runs; None keeps the model where it is.

    Calling it on a (3, H, W) uint8 RGB image returns ``Proposals`` with masks (M, H, W)
    float32 in {0, 1} on the image's device and ``embeddings=None``.
    """

    # In demo mode the Predictor fuses these masks by the authors' space's rule.
    demo_rule = "space"

    def __init__(
        self,
        sam: nn.Module,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        min_mask_region_area: int = 0,
        min_area: int = 0,
        max_masks: int | None = None,
        overlap: str = "sum",
        fill_uncovered: bool = False,
        long_side: int | None = 1280,
        device: str | torch.device | None = None,
    ) -> None:
        if overlap not in OVERLAP_RULES:
            raise ValueError(f"unknown overlap rule {overlap!r}; choose one of {OVERLAP_RULES}")
        if points_per_side < 1:
            raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
        if max_masks is not None and max_masks < 1:
            raise ValueError(f"max_masks must be >= 1 or None, got {max_masks}")
        if long_side is not None and long_side < 1:
            raise ValueError(
                f"long_side must be a positive number of pixels or None, got {long_side}"
            )
        if min_mask_region_area > 0:
            try:
                import cv2  # noqa: F401  (segment-anything's clean-up imports it lazily)
            except ImportError as error:
                raise ImportError(
                    "SAM's min_mask_region_area clean-up needs OpenCV: "
                    "pip install opencv-python-headless (or 'ovseg[sam]')"
                ) from error
        if device is not None:
            sam = sam.to(device)
        self.sam = sam.eval()
        self.amg = _segment_anything().SamAutomaticMaskGenerator(
            self.sam,
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers,
            min_mask_region_area=min_mask_region_area,
            output_mode="binary_mask",
        )
        self.min_area = min_area
        self.max_masks = max_masks
        self.overlap = overlap
        self.fill_uncovered = fill_uncovered
        self.long_side = long_side

    @torch.no_grad()
    def mask_records(self, image: torch.Tensor) -> list[dict]:
        """SAM's records (``segmentation`` (H, W) bool, ``area``, ``predicted_iou``, ...) for
        a (3, H, W) uint8 RGB image, in SAM's order, after ``min_area`` and ``max_masks``."""
        if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(
                "the SAM generator takes a (3, H, W) uint8 RGB image, got "
                f"{tuple(image.shape)} {image.dtype}"
            )
        array = image.permute(1, 2, 0).cpu().numpy()
        height, width = array.shape[:2]
        records = self.amg.generate(_sam_sized(array, self.sam.image_encoder.img_size))
        if records and records[0]["segmentation"].shape != (height, width):
            records = [_cropped(r, height, width) for r in records]
        records = [r for r in records if r["area"] >= max(self.min_area, 1)]
        if self.max_masks is not None and len(records) > self.max_masks:
            best = sorted(range(len(records)), key=lambda i: -records[i]["predicted_iou"])
            records = [records[i] for i in sorted(best[: self.max_masks])]
        return records

    def __call__(self, image: torch.Tensor) -> Proposals:
        records = self.mask_records(image)
        height, width = image.shape[1:]
        if records:
            masks = torch.stack([torch.from_numpy(r["segmentation"]) for r in records]).float()
        else:
            masks = torch.zeros(0, height, width)
        masks = resolve_overlaps(masks, self.overlap, self.fill_uncovered)
        return Proposals(masks=masks.to(image.device), embeddings=None)


def _sam_sized(image: np.ndarray, target: int) -> np.ndarray:
    """``image``, padded (edge pixels repeated, bottom/right) where SAM's longest-side resize
    to ``target`` would round its short side to 0 pixels (a 1 x 3000 strip): the short side
    becomes at least ``ceil(long / target)``. Other images are returned as they are."""
    height, width = image.shape[:2]
    need = -(-max(height, width) // target)
    pad_h, pad_w = max(0, need - height), max(0, need - width)
    if not (pad_h or pad_w):
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _cropped(record: dict, height: int, width: int) -> dict:
    """A SAM record of a padded image cut back to ``height x width`` (area and box too)."""
    mask = record["segmentation"][:height, :width]
    x, y, w, h = record["bbox"]
    box = [min(x, width), min(y, height)]
    box += [max(0, min(x + w, width) - box[0]), max(0, min(y + h, height) - box[1])]
    return {**record, "segmentation": mask, "area": int(mask.sum()), "bbox": box}


@register("sam")
def _sam(
    model=None,
    checkpoint: str | Path | None = None,
    model_type: str | None = None,
    sam: nn.Module | None = None,
    device: str | torch.device | None = None,
    **options,
) -> SamProposalGenerator:
    """Registry factory: ``build_generator("sam", model, checkpoint=..., model_type=...)``.

    ``model_type="test_tiny"`` with no checkpoint gives the small random SAM (smoke runs), with
    its IoU and stability filters off unless given. ``sam=`` takes a ready-made SAM instead.
    The device defaults to the OVSeg model's.
    """
    if device is None and model is not None:
        device = next(model.parameters()).device
    device = device or "cpu"
    if sam is not None:
        if checkpoint is not None:
            raise ValueError("give the SAM generator either sam= or checkpoint=, not both")
    elif checkpoint is not None:
        sam = load_sam(checkpoint, model_type, device)
    elif model_type == "test_tiny":
        sam = build_sam_test_tiny()
        options.setdefault("pred_iou_thresh", 0.0)
        options.setdefault("stability_score_thresh", 0.0)
    else:
        raise ValueError(
            "the sam proposal generator needs SAM weights: pass --sam-checkpoint PATH "
            "(sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth from the "
            "segment-anything release), or --sam-model-type test_tiny for a random smoke-test SAM"
        )
    return SamProposalGenerator(sam, device=device, **options)
