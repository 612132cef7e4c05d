"""Embedded models shipped with the package (filled in by the embedded-zoo work)."""
from __future__ import annotations

EMBEDDED_PREFIX = "embedded/"


def is_embedded(name: str) -> bool:
    return str(name).lower().startswith(EMBEDDED_PREFIX)


def load_embedded(name: str):
    raise NotImplementedError("embedded models are not shipped yet")
