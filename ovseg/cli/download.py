"""``ovseg download NAME``: fetch released weights into the cache folder."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download released weights into the cache ($OVSEG_HOME)",
        description="Download released weights (official OVSeg checkpoints, OpenAI CLIP) into "
        "$OVSEG_HOME (default: the platform cache folder). Interrupted downloads resume.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="what to download (see --list)")
    parser.add_argument("--list", action="store_true", help="list the names and exit")
    parser.add_argument("--force", action="store_true", help="download again even if cached")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ovseg import hub

    if args.list or not args.names:
        print(f"cache folder: {hub.ovseg_home()}")
        for name, entry in hub.REGISTRY.items():
            cached = "cached" if hub.find_cached(name) else ""
            print(f"  {name:30s} {entry.filename:36s} {cached:7s} {entry.description}")
        return 0
    unknown = [n for n in args.names if n not in hub.REGISTRY]
    if unknown:
        raise ValueError(f"unknown name(s) {unknown}; choose from {sorted(hub.REGISTRY)}")
    for name in args.names:
        path = hub.download(name, force=args.force)
        print(path)
    return 0
