"""Origins: where files come from. `build` is the factory from configuration to objects."""
from __future__ import annotations

from ..config import OriginConfig
from .base import KIND_DIR, KIND_FILE, Origin, OriginEntry, join
from .local import LocalOrigin

__all__ = ["KIND_DIR", "KIND_FILE", "Origin", "OriginEntry", "LocalOrigin", "build", "join"]


def build(config: OriginConfig) -> Origin:
    if config.type == "local":
        return LocalOrigin(config.name, config.path)
    raise ValueError(f"unknown origin type {config.type!r}")
