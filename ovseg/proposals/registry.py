"""The registry of proposal generators: ``register(name)`` and ``build_generator``."""

from __future__ import annotations

from collections.abc import Callable

from ovseg.modeling.proposals import ProposalGenerator

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
