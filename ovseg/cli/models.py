"""``ovseg models``: list the model variants."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the model variants")
    parser.set_defaults(func=run)


def run(args) -> int:
    import ovseg

    for name in ovseg.list_models():
        print(name)
    return 0
