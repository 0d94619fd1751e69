"""Origins: where files come from. `build` is the factory from configuration to objects; the
remote types import their transport library (paramiko, boto3) only when one is configured."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import KIND_DIR, KIND_FILE, Origin, OriginEntry, join
from .local import LocalOrigin

if TYPE_CHECKING:
    from ..config import OriginConfig

__all__ = ["KIND_DIR", "KIND_FILE", "Origin", "OriginEntry", "LocalOrigin", "build", "join"]


def build(config: OriginConfig) -> Origin:
    if config.type == "local":
        return LocalOrigin(config.name, config.path)
    if config.type == "sftp":
        from .sftp import SftpOrigin
        return SftpOrigin(config)
    if config.type == "s3":
        from .s3 import S3Origin
        return S3Origin(config)
    raise ValueError(f"unknown origin type {config.type!r}")
