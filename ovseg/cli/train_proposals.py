"""``ovseg train-proposals``: train the proposal model with MaskFormer's set criterion."""

from __future__ import annotations

import json
import os

from ovseg.cli._training import add_training_args, train_config_from_args


def _override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ValueError(f"--set takes KEY=VALUE (VALUE in JSON), got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-proposals",
        help="train the proposal model (MaskFormer set loss) on a semantic-segmentation set",
        description="Train backbone, pixel decoder and open-vocabulary decoder with Hungarian "
        "matching, CE (down-weighted no-object), focal and dice losses; classes are CLIP text "
        "embeddings of the dataset's names. Data: any `ovseg eval` reader (--dataset NAME), or "
        "a folder with classes.txt and {train,val}/{images,labels} index PNGs (255 ignore). "
        "Paper recipe: AdamW lr 6e-5 wd 1e-2, poly, crop 640, batch 32. "
        "Multi-process: torchrun --nproc_per_node N -m ovseg train-proposals ...",
    )
    parser.add_argument("--data", required=True, help="dataset root")
    parser.add_argument(
        "--dataset",
        default="folder",
        help="reader: a name of `ovseg eval` (coco-stuff-171, camvid, ade20k-150, ...) or "
        "'folder' (ROOT/classes.txt + ROOT/{train,val}/{images,labels}, any names)",
    )
    start = parser.add_argument_group("starting model (one of)")
    start.add_argument("--model", help="architecture to train from scratch, e.g. ovseg-test-tiny")
    start.add_argument("--init", help="ovseg .safetensors checkpoint to continue from")
    start.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="OVSegConfig override with --model, e.g. --set num_queries=50",
    )
    start.add_argument(
        "--clip-weights",
        help="CLIP for the text side: OpenAI/OpenCLIP weights, or an ovseg .safetensors "
        "checkpoint whose CLIP is copied",
    )
    aug = parser.add_argument_group("data and loss")
    aug.add_argument("--crop", type=int, default=512, help="square training crop (paper 640)")
    aug.add_argument("--short-side", type=int, default=512, help="short side before scaling")
    aug.add_argument("--scale-range", type=float, nargs=2, default=(0.5, 2.0))
    aug.add_argument("--no-deep-supervision", action="store_true")
    aug.add_argument("--no-object-weight", type=float, default=0.1)
    aug.add_argument("--mask-weight", type=float, default=20.0)
    aug.add_argument("--dice-weight", type=float, default=1.0)
    aug.add_argument("--class-weight", type=float, default=1.0)
    aug.add_argument(
        "--backbone-lr-mult",
        type=float,
        default=0.1,
        help="backbone lr factor (0.1 for a pretrained backbone, 1 from scratch)",
    )
    ev = parser.add_argument_group("validation (oracle mIoU, mask recall, mIoU on ROOT/val)")
    ev.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0: none)")
    ev.add_argument("--eval-images", type=int, default=None, help="first N val images (all)")
    ev.add_argument("--eval-short-side", type=int, default=256)
    add_training_args(parser, {"batch_size": 4, "epochs": 10.0, "schedule": "poly"})
    parser.set_defaults(func=run)
    # fmt: skip


def run(args) -> int:
    from ovseg.train.proposal_training import RECIPE, train_proposals

    config = train_config_from_args(args, RECIPE, eval_every=args.eval_every)
    path = train_proposals(
        args.data,
        config,
        dataset=args.dataset,
        model_name=args.model,
        init=args.init,
        overrides=dict(_override(s) for s in args.set),
        clip_weights=args.clip_weights,
        crop=args.crop,
        short_side=args.short_side,
        scale_range=tuple(args.scale_range),
        deep_supervision=not args.no_deep_supervision,
        no_object_weight=args.no_object_weight,
        loss_weights={
            "loss_ce": args.class_weight,
            "loss_mask": args.mask_weight,
            "loss_dice": args.dice_weight,
        },
        backbone_lr_mult=args.backbone_lr_mult,
        eval_images=args.eval_images,
        eval_short_side=args.eval_short_side,
    )
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({"model": str(path)}))
    return 0
