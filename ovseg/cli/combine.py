"""``ovseg combine``: adapted CLIP + trained proposal model -> one OVSeg checkpoint."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "combine",
        help="merge an adapted CLIP and a proposal model into one checkpoint",
        description="Take backbone, pixel decoder, decoder and no-object embedding from "
        "--proposals, and the CLIP towers with their mask prompts from --clip (both ovseg "
        ".safetensors checkpoints); write one checkpoint that carries its own config.",
    )
    parser.add_argument("--clip", required=True, help="output of `ovseg train-clip`")
    parser.add_argument("--proposals", required=True, help="output of `ovseg train-proposals`")
    parser.add_argument("--out", required=True, help="combined .safetensors to write")
    parser.add_argument(
        "--allow-text-mismatch",
        action="store_true",
        help="combine even if the CLIP text towers differ (the proposal classifier then "
        "scores against text embeddings it was not trained with)",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ovseg.train.combine import combine_checkpoints

    path = combine_checkpoints(args.clip, args.proposals, args.out, args.allow_text_mismatch)
    print(path)
    return 0
