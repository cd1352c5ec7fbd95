"""Web service and single page for ovseg (``ovseg serve``); needs the ``serve`` extra.

``create_app`` is imported on first use, so ``ovseg.serve.images`` works without FastAPI.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from ovseg.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'ovseg.serve' has no attribute {name!r}")
