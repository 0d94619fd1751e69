"""Each origin type's own options: the keys of its [[origins]] table besides name, type, path,
connections and timeout. A frozen dataclass per type; each field's metadata says which TOML
types it takes and how the value is checked, and a field without a default is required. The
config module validates a table against its type's class and builds it; origins read their
options by attribute. (No heavy imports here: the config reads this before any origin is built.)"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import ConfigError


def _port(value, key):
    if not 0 < value < 65536:
        raise ConfigError(f"{key}: must be a TCP port (1-65535), got {value}")
    return value


def _url(value, key):
    if not re.fullmatch(r"https?://[^/\s]+(/.*)?", value):
        raise ConfigError(f"{key}: must be a URL such as http://127.0.0.1:9000, got {value!r}")
    return value


def _path(value, key):
    return Path(os.path.expanduser(value))


def _option(types, check=None, **default):
    """A field taking TOML values of `types`, checked (and converted) by check(value, key)."""
    return field(metadata={"toml": (types, check)}, **default)


@dataclass(frozen=True)
class LocalOptions:
    """A local directory (or a NAS mounted here): nothing beyond its path."""


@dataclass(frozen=True)
class SftpOptions:
    host: str = _option((str,))
    port: int = _option((int,), _port, default=22)
    user: str | None = _option((str,), default=None)          # default: the user running musicfs
    key_file: Path | None = _option((str,), _path, default=None)   # default: ssh-agent, then ~/.ssh keys
    known_hosts: Path | None = _option((str,), _path, default=None)  # default: ~/.ssh/known_hosts


@dataclass(frozen=True)
class S3Options:
    bucket: str = _option((str,))
    prefix: str = _option((str,), default="")
    endpoint_url: str | None = _option((str,), _url, default=None)   # default: AWS
    region: str | None = _option((str,), default=None)
    profile: str | None = _option((str,), default=None)               # an ~/.aws profile


OPTIONS = {"local": LocalOptions, "sftp": SftpOptions, "s3": S3Options}


def schema(kind: str) -> dict:
    """key -> (accepted TOML types, check) of an origin type's own keys."""
    return {f.name: f.metadata["toml"] for f in fields(OPTIONS[kind])}


def required(kind: str) -> tuple[str, ...]:
    from dataclasses import MISSING
    return tuple(f.name for f in fields(OPTIONS[kind]) if f.default is MISSING and f.default_factory is MISSING)
