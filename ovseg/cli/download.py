"""``ovseg download NAME``: fetch released weights (Hugging Face cache or ``$OVSEG_HOME``)."""

from __future__ import annotations

_LICENCE_NOTE = (
    "Licences: the ovseg code is MIT. The released OVSeg weights (ovseg-*) are CC BY-NC 4.0: "
    "non-commercial use only (https://creativecommons.org/licenses/by-nc/4.0/). OpenAI CLIP "
    "weights are MIT, Segment Anything weights Apache-2.0."
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download released weights (Hugging Face cache, or $OVSEG_HOME for URLs)",
        description="Download released weights: official OVSeg checkpoints, the mask-adapted "
        "CLIP of the authors' SAM demo, SAM, OpenAI CLIP. Files on the Hugging Face Hub go to "
        "the Hugging Face cache ($HF_HUB_CACHE; HF_HUB_OFFLINE=1 uses it offline), other "
        "files to $OVSEG_HOME. Every file is checked against its sha256 (or published md5 "
        "prefix); mirrors are tried in turn; interrupted transfers resume. " + _LICENCE_NOTE,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="what to download (see --list)")
    parser.add_argument("--list", action="store_true", help="list the names and exit")
    parser.add_argument("--force", action="store_true", help="download again even if cached")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ovseg.weights import hub

    if args.list or not args.names:
        print(f"URL downloads and hand-copied files: {hub.ovseg_home()}")
        print("Hugging Face Hub files: the Hugging Face cache ($HF_HUB_CACHE)")
        for name, entry in hub.REGISTRY.items():
            cached = "cached" if hub.find_cached(name, verify=False) else ""
            print(
                f"  {name:28s} {entry.filename:34s} {cached:6s} {entry.license:13s} "
                f"{entry.description}"
            )
        print(_LICENCE_NOTE)
        return 0
    unknown = [n for n in args.names if n not in hub.REGISTRY]
    if unknown:
        raise ValueError(f"unknown name(s) {unknown}; choose from {sorted(hub.REGISTRY)}")
    for name in args.names:
        path = hub.download(name, force=args.force)
        print(path)
    return 0
