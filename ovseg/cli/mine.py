"""``ovseg mine``: mask-category pairs from captioned images, for adapting CLIP.

Single process::

    ovseg mine --images train2017 --captions captions_train2017.json \\
        --mode proposal-caption --captions-per-image 1 --out pairs --model ovseg-swinB-vitL14

Several processes (rank r mines shards r, r + world, ...; rank 0 merges at the end)::

    torchrun --nproc_per_node 4 -m ovseg mine ... (same options)

Re-running the same command resumes: finished shards are kept.
"""

from __future__ import annotations

import argparse
import json
import os

from ovseg.cli._common import add_model_args
from ovseg.cli._proposals import add_proposal_args
from ovseg.cli._spec import model_source, proposal_source


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "mine",
        help="mine (masked region, noun) pairs from captions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", required=True, help="folder of the images")
    parser.add_argument("--captions", required=True, help="COCO-format caption JSON")
    parser.add_argument("--instances", help="COCO instance JSON (needed by the gt-* modes)")
    parser.add_argument(
        "--mode",
        default="proposal-caption",
        choices=["gt-gt", "gt-caption", "proposal-caption"],
        help="masks and names: GT masks + GT classes, GT masks + caption nouns, or model "
        "proposals + caption nouns (default, the paper's choice)",
    )
    parser.add_argument(
        "--captions-per-image",
        default="1",
        choices=["1", "all"],
        help="use the first caption of each image, or all of them (default: 1)",
    )
    parser.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    parser.add_argument(
        "--images-per-shard", type=int, default=1000, help="images per tar shard (default 1000)"
    )
    parser.add_argument(
        "--mask-threshold",
        type=float,
        default=None,
        help="binarisation threshold of the masks (default: the model's, 0.4 for eval)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_args(parser)
    add_proposal_args(parser)
    parser.set_defaults(func=run)


def _distributed() -> tuple[int, int]:
    """(rank, world size); starts a gloo process group under torchrun with several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=48))
    return dist.get_rank(), dist.get_world_size()


def run(args: argparse.Namespace) -> int:
    from ovseg.data.coco_captions import CocoCaptions
    from ovseg.train.mining import mine
    from ovseg.train.pair_shards import merge_shards

    if not os.path.isdir(args.images):
        raise FileNotFoundError(f"--images folder not found: {args.images}")
    for option, path in (("--captions", args.captions), ("--instances", args.instances)):
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(f"{option} file not found: {path}")
    if args.mode != "proposal-caption" and args.instances is None:
        raise ValueError(f"--mode {args.mode} needs --instances (COCO instance JSON)")
    if args.mode != "proposal-caption" and args.proposals != "maskformer":
        raise ValueError(f"--proposals applies to --mode proposal-caption, not {args.mode}")
    dataset = CocoCaptions(
        args.captions, args.instances if args.mode != "proposal-caption" else None
    )
    rank, world = _distributed()
    model = model_source(args).load()
    generator = None
    if args.mode == "proposal-caption":
        generator = proposal_source(args).build(model, "eval")  # masks as before the space mode
    run_info = {
        "model": args.model or args.config,
        "checkpoint": args.checkpoint or args.weights,
        "proposals": args.proposals if args.mode == "proposal-caption" else None,
    }
    num_shards = mine(
        model,
        dataset,
        args.images,
        args.out,
        args.mode,
        args.captions_per_image,
        args.images_per_shard,
        generator,
        args.mask_threshold,
        run_info,
        rank,
        world,
        progress=not args.no_progress,
    )
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if rank == 0:
        stats = merge_shards(args.out, num_shards)
        summary = {k: stats[k] for k in ("images", "pairs", "unique_nouns", "skipped")}
        print(json.dumps(summary, sort_keys=True))
        print(f"wrote {args.out}/pairs.jsonl, stats.json and {num_shards} shard(s)")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0
