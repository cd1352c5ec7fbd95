"""``ovseg prepare``: convert benchmark downloads into the layouts ``ovseg eval`` reads."""

from __future__ import annotations

import argparse

TARGETS = {
    "ade20k-full": "ADE20K_2021_17_01 release -> 847-class TIFFs (ade20k-847)",
    "pascal-context": "VOC2010 + Pascal Context trainval/*.mat -> pc59 PNGs and pc459 TIFFs",
    "pascal-voc": "VOC2012 SegmentationClass palette PNGs -> PAS-20 index PNGs",
    "coco-stuff": "coco/stuffthingmaps -> 171-class PNGs (coco-stuff-171)",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="prepare a benchmark's original download for `ovseg eval`",
        description="\n".join(f"{name}: {what}" for name, what in TARGETS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", choices=list(TARGETS))
    parser.add_argument("--root", required=True, help="the dataset folder to read and write in")
    parser.add_argument(
        "--split",
        default="val",
        help="val (default) or train; for ade20k-full also 'all'",
    )
    parser.add_argument(
        "--list", help="pascal-context: image-id list (default pascalcontext_<split>.txt)"
    )
    parser.add_argument("--max-size", type=int, default=512, help="ade20k-full: shorter-side limit")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ovseg.data import prepare

    show = not args.quiet
    if args.target == "ade20k-full":
        splits = {"val": ("validation",), "train": ("training",), "all": ("validation", "training")}
        if args.split not in splits:
            raise ValueError(
                f"--split for ade20k-full is one of {list(splits)}, got {args.split!r}"
            )
        counts = prepare.prepare_ade20k_full(
            args.root, splits[args.split], args.max_size, args.overwrite, show
        )
        print("ade20k-847: " + ", ".join(f"{n} {s} images" for s, n in counts.items()))
    elif args.target == "pascal-context":
        n = prepare.prepare_pascal_context(args.root, args.split, args.list, args.overwrite, show)
        print(f"pascal-context: {n} {args.split} label maps (pc59 and pc459)")
    elif args.target == "pascal-voc":
        n = prepare.prepare_pascal_voc(
            args.root, args.split, overwrite=args.overwrite, show_progress=show
        )
        print(f"pascal-voc-20: {n} {args.split} label maps")
    else:
        n = prepare.prepare_coco_stuff(args.root, args.split, args.overwrite, show)
        print(f"coco-stuff-171: {n} {args.split} label maps")
    return 0
