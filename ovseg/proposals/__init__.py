"""Pluggable proposal generators.

A generator is any callable ``generator(image_chw_uint8) -> Proposals`` (see
``ovseg.modeling.proposals``). ``build_generator(name, model, **options)`` makes one by name;
each module here registers its factory with ``@register("name")``.
"""

from __future__ import annotations

from collections.abc import Callable

from ovseg.modeling.proposals import ProposalGenerator, Proposals

_FACTORIES: dict[str, Callable[..., ProposalGenerator]] = {}


def register(name: str):
    def wrap(factory):
        _FACTORIES[name] = factory
        return factory

    return wrap


def list_generators() -> list[str]:
    return sorted(_FACTORIES)


def build_generator(name: str, model, **options) -> ProposalGenerator:
    """Build the proposal generator ``name`` for ``model`` (an ``OVSeg``)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown proposal generator {name!r}; choose one of {list_generators()}")
    return _FACTORIES[name](model, **options)


@register("maskformer")
def _maskformer(model, **options) -> ProposalGenerator:
    if options:
        raise ValueError(f"the maskformer generator takes no options, got {sorted(options)}")
    return model.propose


# The built-in generators register themselves; their heavy dependencies load on first use.
from ovseg.proposals import ground_truth, sam, superpixels  # noqa: E402, F401

__all__ = ["Proposals", "ProposalGenerator", "build_generator", "list_generators", "register"]
