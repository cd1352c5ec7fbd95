"""The ``--proposals`` option shared by ``segment``, ``eval`` and ``mine``."""

from __future__ import annotations

import argparse

_SAM_TYPES = ["vit_b", "vit_l", "vit_h", "test_tiny"]
_OVERLAP = ["smallest_wins", "sum"]


def _scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 100,300,1000, got {text!r}"
        ) from None
    if not scales or min(scales) <= 0:
        raise argparse.ArgumentTypeError(f"scales must be positive numbers, got {text!r}")
    return scales


def add_proposal_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--proposals`` and the options of the SAM and superpixel generators."""
    group = parser.add_argument_group("proposals")
    group.add_argument(
        "--proposals",
        default="maskformer",
        choices=["maskformer", "sam", "superpixels"],
        help="mask proposal source (default: the model's own MaskFormer head); sam and "
        "superpixels masks are classified by CLIP alone",
    )
    group.add_argument(
        "--sam-checkpoint",
        metavar="PATH",
        help="SAM weights for --proposals sam: a file (e.g. sam_vit_b_01ec64.pth) or a "
        "download name (sam-vit-l, sam-vit-h; see `ovseg download --list`)",
    )
    group.add_argument(
        "--sam-model-type",
        choices=_SAM_TYPES,
        help="SAM variant (default: read from the checkpoint); test_tiny without a checkpoint "
        "is a small random SAM for smoke runs",
    )
    group.add_argument(
        "--sam-points-per-side",
        type=int,
        metavar="N",
        help="SAM prompt grid is N x N points (default 32)",
    )
    group.add_argument(
        "--sam-pred-iou-thresh", type=float, metavar="T", help="SAM mask quality filter (0.88)"
    )
    group.add_argument(
        "--sam-stability-thresh", type=float, metavar="T", help="SAM stability filter (0.95)"
    )
    group.add_argument(
        "--sam-min-region",
        type=int,
        metavar="PIXELS",
        help="SAM's clean-up of holes and islands smaller than this many pixels (needs "
        "opencv; default 0, or 100 for --refine sam)",
    )
    group.add_argument(
        "--sam-box-nms-thresh",
        type=float,
        metavar="T",
        help="SAM drops a mask whose box overlaps a better one's above this IoU (0.7)",
    )
    group.add_argument(
        "--superpixel-scales",
        type=_scales,
        metavar="S1,S2,...",
        help="Felzenszwalb scales for --proposals superpixels (default 100,300,1000)",
    )
    group.add_argument(
        "--max-proposals",
        type=int,
        metavar="N",
        help="keep at most N masks (sam: best predicted IoU; superpixels: largest, default 100)",
    )
    group.add_argument(
        "--proposal-overlap",
        choices=_OVERLAP,
        help="how overlapping sam/superpixel masks vote: smallest_wins (sam default) or sum "
        "(superpixels default)",
    )


_SAM_ONLY = {
    "sam_min_region": "min_mask_region_area",
    "sam_checkpoint": "checkpoint",
    "sam_model_type": "model_type",
    "sam_points_per_side": "points_per_side",
    "sam_pred_iou_thresh": "pred_iou_thresh",
    "sam_stability_thresh": "stability_score_thresh",
    "sam_box_nms_thresh": "box_nms_thresh",
}
_SUPERPIXELS_ONLY = {"superpixel_scales": "scales"}
_SHARED = {"max_proposals": "max_masks", "proposal_overlap": "overlap"}


def proposal_options_from_args(args: argparse.Namespace) -> dict:
    """Keyword options for ``build_generator(args.proposals, model, **options)``.

    Options that do not belong to the chosen generator are an error, not silently ignored.
    """
    name = getattr(args, "proposals", "maskformer")
    own = {"sam": _SAM_ONLY, "superpixels": _SUPERPIXELS_ONLY}.get(name, {})
    if name != "maskformer":
        own = {**own, **_SHARED}
    refine = getattr(args, "refine", None) == "sam"
    options = {}
    for attr, option in {**_SAM_ONLY, **_SUPERPIXELS_ONLY, **_SHARED}.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        if attr not in own:
            if refine and attr in _SAM_ONLY:
                continue  # the refinement's SAM takes it (refine_options_from_args)
            flag = "--" + attr.replace("_", "-")
            raise ValueError(f"{flag} does not apply to --proposals {name}")
        options[option] = value
    return options


def add_refine_args(parser: argparse.ArgumentParser) -> None:
    """``--refine sam`` (segment); its SAM takes the ``--sam-*`` flags of
    ``add_proposal_args``."""
    group = parser.add_argument_group("refinement")
    group.add_argument(
        "--refine",
        choices=["sam"],
        help="sam: refine the prediction with SAM's masks on the photo, SegmentAnyRGBD's rule "
        "(each mask takes the majority label inside it). The --sam-* flags set its SAM "
        "(default --sam-checkpoint sam-vit-h, ViT-H as SegmentAnyRGBD); unset ones default to "
        "SegmentAnyRGBD's: 64 points per side, pred IoU 0.8, stability 0.8, min region 100",
    )


def refine_options_from_args(args: argparse.Namespace) -> dict | None:
    """SAM options for ``--refine sam`` (the ``--sam-*`` flags given), or None without it."""
    if getattr(args, "refine", None) != "sam":
        return None
    options = {}
    for attr, option in _SAM_ONLY.items():
        value = getattr(args, attr, None)
        if value is not None:
            options[option] = value
    return options
