"""Pluggable proposal generators.

A generator is any callable ``generator(image_chw_uint8) -> Proposals`` (see
``ovseg.modeling.proposals``). ``build_generator(name, model, **options)`` makes one by name;
each module here registers its factory with ``@register("name")``.
"""

from __future__ import annotations

from ovseg.modeling.proposals import ProposalGenerator, Proposals
from ovseg.proposals import ground_truth, sam, superpixels  # noqa: F401  (they register)
from ovseg.proposals.registry import build_generator, list_generators, register

__all__ = ["Proposals", "ProposalGenerator", "build_generator", "list_generators", "register"]
