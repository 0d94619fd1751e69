"""Configuration: a TOML file read with tomllib into frozen dataclasses.

Every key is declared in ``_SCHEMA``; an unknown key or a value of the wrong type raises
:class:`ConfigError` naming the key, so a typo never silently falls back to a default.
Command-line options override the file (see :func:`load`).
"""
from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .origins.options import OPTIONS as ORIGIN_OPTIONS
from .origins.options import LocalOptions, required as required_options, schema as option_schema
from .catalog.layout import (DEFAULT_COMP_TEMPLATE, DEFAULT_IGNORE, DEFAULT_SINGLETON_TEMPLATE, DEFAULT_TEMPLATE,
                             IgnoreRules, Layout, Template)

# Why 30 s: long enough for a NAS waking its disks from spin-down (10-20 s is common), short
# enough that a player stuck on a dead origin gets EIO and moves on instead of hanging forever.
DEFAULT_READ_TIMEOUT = 30.0
# The kernel reads a FUSE file ahead by 128 KiB unless told otherwise; 1 MiB (one chunk) keeps
# several 128 KiB requests in flight, which is what lets the daemon's threads overlap work.
DEFAULT_READ_AHEAD = 1 << 20
# Why 5 s: a healthy origin answers a stat in milliseconds; 5 s tolerates a busy NAS without
# letting one dead origin stall the cron probe (which must finish within timeout + 1 s).
DEFAULT_HEALTH_TIMEOUT = 5.0
DEFAULT_HEALTH_INTERVAL = 30.0
DEFAULT_MAX_SIZE = 10 << 30
# A rescan once an hour keeps the catalog fresh without walking a NAS constantly.
DEFAULT_RESCAN_INTERVAL = 3600.0
# At most this many pool workers may be busy with one origin's I/O at once, so reads stuck in a
# dead NFS syscall can never take the whole pool.
DEFAULT_WORKERS_PER_ORIGIN = 4
# Remote origins: sessions (SFTP channels, S3 HTTP connections) per origin, and how long one
# request may take before it counts as failed (its own deadline, below [fuse].read_timeout).
DEFAULT_CONNECTIONS = 4
DEFAULT_ORIGIN_TIMEOUT = 10.0

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def xdg_dir(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def xdg_music_dir() -> Path:
    """The XDG music directory: XDG_MUSIC_DIR from user-dirs.dirs, else ~/Music."""
    user_dirs = xdg_dir("XDG_CONFIG_HOME", ".config") / "user-dirs.dirs"
    try:
        for line in user_dirs.read_text().splitlines():
            match = re.fullmatch(r'\s*XDG_MUSIC_DIR="(.*)"\s*', line)
            if match:
                return Path(match.group(1).replace("$HOME", str(Path.home())))
    except OSError:
        pass
    return Path.home() / "Music"


def default_config_path() -> Path:
    return xdg_dir("XDG_CONFIG_HOME", ".config") / "musicfs" / "config.toml"


def format_size(count: int | None) -> str:
    """1288490188 -> '1.2 GiB': binary units, as parse_size counts them ('?' for unknown)."""
    if count is None:
        return "?"
    value, unit = float(count), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if round(value, 1) < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{count} B" if unit == "B" else f"{value:.1f}".removesuffix(".0") + f" {unit}"


def parse_size(value: str | int, key: str = "size") -> int:
    """'500M' -> 524288000. Accepts an int (bytes) or a number with a K/M/G/T suffix."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size such as 500M or 10G, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: size must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a size such as 500M or 10G, got {value!r}")
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", value.upper())
    if not match:
        raise ConfigError(f"{key}: cannot read size {value!r}; use a number with K, M, G or T, e.g. 10G")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


# The smallest cache that holds one chunk (cas.store's chunk size): anything less caches nothing.
MIN_CACHE_SIZE = 1 << 20


def _cache_size(value, key: str) -> int:
    size = parse_size(value, key)
    if size < MIN_CACHE_SIZE:
        raise ConfigError(f"{key}: {format_size(size)} does not hold one 1 MiB chunk; give a size such as "
                          f"500M or 10G (K, M, G, T are powers of 1024)")
    return size


@dataclass(frozen=True)
class OriginConfig:
    """One [[origins]] table. `path`: a local directory, or the directory on an SFTP server
    ("" for S3, whose place is `bucket` + `prefix`). `options`: the type's own keys (host,
    bucket...) as its frozen options class (musicfs.origins.options), read by attribute."""
    name: str
    path: Path | str
    type: str = "local"
    connections: int = DEFAULT_CONNECTIONS
    timeout: float = DEFAULT_ORIGIN_TIMEOUT
    options: object = None   # the type's own frozen options (origins.options), None for a bare local one


@dataclass(frozen=True)
class CacheConfig:
    dir: Path = field(default_factory=lambda: xdg_dir("XDG_CACHE_HOME", ".cache") / "musicfs")
    max_size: int = DEFAULT_MAX_SIZE


@dataclass(frozen=True)
class FuseConfig:
    read_timeout: float = DEFAULT_READ_TIMEOUT
    read_ahead: int = DEFAULT_READ_AHEAD


@dataclass(frozen=True)
class HealthConfig:
    timeout: float = DEFAULT_HEALTH_TIMEOUT
    interval: float = DEFAULT_HEALTH_INTERVAL
    workers_per_origin: int = DEFAULT_WORKERS_PER_ORIGIN


@dataclass(frozen=True)
class CatalogConfig:
    rescan_interval: float = DEFAULT_RESCAN_INTERVAL


@dataclass(frozen=True)
class LayoutConfig:
    mode: str = "tags"
    template: str = DEFAULT_TEMPLATE
    comp_template: str = DEFAULT_COMP_TEMPLATE
    singleton_template: str = DEFAULT_SINGLETON_TEMPLATE
    ignore: tuple[str, ...] = DEFAULT_IGNORE

    def parsed(self) -> Layout:
        return Layout.parse(self.template, self.comp_template, self.singleton_template, self.ignore)


@dataclass(frozen=True)
class SearchConfig:
    limit: int = 500          # tracks listed in a .search/QUERY/ folder or a collection at most


# When no [[collections]] are configured.
DEFAULT_COLLECTIONS = (("Recently Added", "added:30d"),)


@dataclass(frozen=True)
class LogConfig:
    file: Path = field(default_factory=lambda: xdg_dir("XDG_STATE_HOME", ".local/state") / "musicfs" / "musicfs.log")
    level: str = "info"


@dataclass(frozen=True)
class Config:
    origins: tuple[OriginConfig, ...]
    cache: CacheConfig = field(default_factory=CacheConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    log: LogConfig = field(default_factory=LogConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    collections: tuple[tuple[str, str], ...] = DEFAULT_COLLECTIONS   # (name, query), in order
    source: Path | None = None  # the file this came from, None for the embedded default


def config_differences(old: Config, new: Config) -> list[str]:
    """One line per setting that differs between two configs, in the config file's terms:
    "[fuse] read_timeout: 30 -> 10", "origin nas2 added", "origin nas: path /a -> /b"."""
    lines = []
    before, after = {o.name: o for o in old.origins}, {o.name: o for o in new.origins}
    for name in after.keys() - before.keys():
        lines.append(f"origin {name} added ({after[name].type})")
    for name in before.keys() - after.keys():
        lines.append(f"origin {name} removed")
    for name in before.keys() & after.keys():
        a, b = dataclasses.asdict(before[name]), dataclasses.asdict(after[name])
        a.update(a.pop("options") or {}), b.update(b.pop("options") or {})
        for key in sorted(a.keys() | b.keys()):
            if a.get(key) != b.get(key):
                if any(word in key for word in ("secret", "password", "token")):
                    lines.append(f"origin {name}: {key} changed")   # (not printed: a credential)
                else:
                    lines.append(f"origin {name}: {key} {_shown(a.get(key))} -> {_shown(b.get(key))}")
    if [o.name for o in old.origins] != [o.name for o in new.origins] and not lines:
        lines.append(f"origins reordered: {', '.join(o.name for o in new.origins)}")
    for section in ("cache", "fuse", "health", "catalog", "layout", "search", "log"):
        a, b = dataclasses.asdict(getattr(old, section)), dataclasses.asdict(getattr(new, section))
        for key in a:
            if a[key] != b[key]:
                shown = format_size if key in _SIZES else _shown
                lines.append(f"[{section}] {key}: {shown(a[key])} -> {shown(b[key])}")
    if old.collections != new.collections:
        lines.append(f"collections: {', '.join(name for name, _ in new.collections) or 'none'}")
    return lines


_SIZES = ("max_size", "read_ahead")   # shown as sizes (200.0 MiB), not byte counts


def _shown(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(map(str, value)) + "]"
    return "(none)" if value is None else str(value)


_LOG_LEVELS = ("debug", "info", "warning", "error")
# "tags": the tree comes from audio tags through the template; "paths": the origins' folders merged.
LAYOUT_MODES = ("tags", "paths")
# section -> key -> (accepted TOML types, converter)
_Number = (int, float)


def _path(value, key):
    return Path(os.path.expanduser(value))


# The longest time any setting may give (30 days): TOML takes nan, inf and 1e308, which no timer
# or deadline can hold (time.monotonic() + inf overflows a thread wait).
LONGEST_SECONDS = 30 * 86400


def _seconds(value, key):
    if not 0 < value <= LONGEST_SECONDS:   # (false for nan too)
        raise ConfigError(f"{key}: must be a positive number of seconds up to {LONGEST_SECONDS} (30 days), "
                          f"got {value}")
    return float(value)


def _positive_int(value, key):
    if value < 1:
        raise ConfigError(f"{key}: must be at least 1, got {value}")
    return value


def _mode(value, key):
    if value not in LAYOUT_MODES:
        raise ConfigError(f"{key}: must be one of {', '.join(LAYOUT_MODES)}, got {value!r}")
    return value


def _template(value, key):
    Template(value, key)   # names the key the user wrote (the file's or --template)
    return value


def _patterns(value, key):
    if not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{key}: must be a list of strings (file name globs), got {value!r}")
    IgnoreRules(value, key)
    return tuple(value)


def _level(value, key):
    if value.lower() not in _LOG_LEVELS:
        raise ConfigError(f"{key}: must be one of {', '.join(_LOG_LEVELS)}, got {value!r}")
    return value.lower()


_SCHEMA = {
    "cache": {"dir": ((str,), _path), "max_size": ((str, int), _cache_size)},
    "fuse": {"read_timeout": (_Number, _seconds), "read_ahead": ((str, int), parse_size)},
    "health": {"timeout": (_Number, _seconds), "interval": (_Number, _seconds),
               "workers_per_origin": ((int,), _positive_int)},
    "catalog": {"rescan_interval": (_Number, _seconds)},
    "layout": {"mode": ((str,), _mode), "template": ((str,), _template), "comp_template": ((str,), _template),
               "singleton_template": ((str,), _template), "ignore": ((list,), _patterns)},
    "log": {"file": ((str,), _path), "level": ((str,), _level)},
    "search": {"limit": ((int,), _positive_int)},
}
# Keys every origin takes (each type's own are its options class's fields: origins.options).
_ORIGIN_COMMON = {"name": ((str,), None), "type": ((str,), None), "connections": ((int,), _positive_int),
                  "timeout": (_Number, _seconds)}
# Where each type's files are: a local directory, a directory on the SFTP server (S3: bucket
# and prefix, no path).
_ORIGIN_PATH = {"local": ((str,), _path), "sftp": ((str,), None)}
ORIGIN_TYPES = tuple(ORIGIN_OPTIONS)
# Secrets that users may try to put in the file: never accepted there.
_SECRETS = {"password": "use a key file or ssh-agent", "passphrase": "use ssh-agent for a key with a passphrase",
            "secret_access_key": "use the standard AWS credential chain (environment, ~/.aws, profile)",
            "aws_secret_access_key": "use the standard AWS credential chain (environment, ~/.aws, profile)",
            "access_key_id": "use the standard AWS credential chain (environment, ~/.aws, profile)"}


def _typename(types) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list"}
    return " or ".join(dict.fromkeys(names[t] for t in types))


def _convert(key: str, value, types, converter):
    if isinstance(value, bool) or not isinstance(value, types):
        raise ConfigError(f"{key}: expected {_typename(types)}, got {value!r}")
    return converter(value, key) if converter else value


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiosx" else "a ") + kind   # an s3 / an sftp / a local


def _parse_origins(raw) -> tuple[OriginConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"origins: expected [[origins]] tables, got {raw!r}")
    origins = []
    for index, table in enumerate(raw):
        prefix = f"origins[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{prefix}: expected a table")
        if isinstance(table.get("name"), str):
            prefix += f" ({table['name']})"   # which origin, without counting tables
        kind = table.get("type", "local")
        if kind not in ORIGIN_OPTIONS:
            raise ConfigError(f"{prefix}.type: unknown origin type {kind!r} (known: {', '.join(ORIGIN_TYPES)})")
        own = option_schema(kind)
        schema = {**_ORIGIN_COMMON, **({"path": _ORIGIN_PATH[kind]} if kind in _ORIGIN_PATH else {}), **own}
        needed = ("path",) * (kind in _ORIGIN_PATH) + required_options(kind)
        for key in table:
            if key in _SECRETS:
                raise ConfigError(f"{prefix}.{key}: secrets never go in the config file; {_SECRETS[key]}")
            if key not in schema:
                raise ConfigError(f"{prefix}.{key}: unknown key for {_a(kind)} origin (known: {', '.join(schema)})")
        for key in needed:
            if key not in table:
                raise ConfigError(f"{prefix}.{key}: missing; {_a(kind)} origin needs {' and '.join(needed)}")
        values = {k: _convert(f"{prefix}.{k}", v, *schema[k]) for k, v in table.items()}
        name = values.pop("name", f"origin{index + 1}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise ConfigError(f"{prefix}.name: {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        values.pop("type", None)
        common = {k: values.pop(k) for k in ("connections", "timeout") if k in values}
        path = values.pop("path", "")
        options = ORIGIN_OPTIONS[kind](**values)   # (what is left: the type's own keys, all checked)
        origins.append(OriginConfig(name=name, path=path, type=kind, options=options, **common))
    names = [o.name for o in origins]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ConfigError(f"origins: the name {duplicate!r} is used twice; names must be unique")
    return tuple(origins)


def _parse_collections(raw) -> tuple[tuple[str, str], ...]:
    from .catalog.layout import safe_segment
    from .catalog.query import QueryError, parse as parse_query
    if not isinstance(raw, list):
        raise ConfigError(f"collections: expected [[collections]] tables, got {raw!r}")
    found = []
    for index, table in enumerate(raw):
        prefix = f"collections[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{prefix}: expected a table with name and query")
        for key in table:
            if key not in ("name", "query"):
                raise ConfigError(f"{prefix}.{key}: unknown key (known: name, query)")
        for key in ("name", "query"):
            if not isinstance(table.get(key), str) or not table[key].strip():
                raise ConfigError(f"{prefix}.{key}: missing; a collection needs a name and a query")
        prefix = f"{prefix} ({table['name']})"
        if safe_segment(table["name"]).lower().endswith(".m3u8"):
            raise ConfigError(f"{prefix}.name: may not end in .m3u8 (each collection has a NAME.m3u8 beside its folder)")
        try:
            parse_query(table["query"])
        except QueryError as e:
            raise ConfigError(f"{prefix}.query: {e}") from None
        found.append((table["name"], table["query"]))
    names = [safe_segment(name) for name, _ in found]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ConfigError(f"collections: two collections are named {duplicate!r}; names must be unique")
    return tuple(found)


def parse(document: dict, source: Path | None = None) -> Config:
    """Turn a parsed TOML document into a Config, rejecting unknown keys and wrong types. An
    error names the file it is in (`source`), then the key."""
    try:
        return _parse(document, source)
    except ConfigError as e:
        if source is None:
            raise
        raise ConfigError(f"{source}: {e}") from None


def _parse(document: dict, source: Path | None) -> Config:
    sections = {}
    origins = None
    collections = DEFAULT_COLLECTIONS
    for section, body in document.items():
        if section == "origins":
            origins = _parse_origins(body)
            continue
        if section == "collections":
            collections = _parse_collections(body)
            continue
        if section not in _SCHEMA:
            raise ConfigError(f"{section}: unknown section (known: {', '.join([*_SCHEMA, 'origins', 'collections'])})")
        if not isinstance(body, dict):
            raise ConfigError(f"{section}: expected a [{section}] table")
        values = {}
        for key, value in body.items():
            if key not in _SCHEMA[section]:
                raise ConfigError(f"{section}.{key}: unknown key (known: {', '.join(_SCHEMA[section])})")
            values[key] = _convert(f"{section}.{key}", value, *_SCHEMA[section][key])
        sections[section] = values
    if origins is None:
        origins = (OriginConfig(name="music", path=xdg_music_dir(), options=LocalOptions()),)
    if not origins:
        raise ConfigError("origins: the list is empty; add at least one [[origins]] table")
    return Config(
        origins=origins,
        cache=CacheConfig(**sections.get("cache", {})),
        fuse=FuseConfig(**sections.get("fuse", {})),
        health=HealthConfig(**sections.get("health", {})),
        catalog=CatalogConfig(**sections.get("catalog", {})),
        layout=LayoutConfig(**sections.get("layout", {})),
        log=LogConfig(**sections.get("log", {})),
        search=SearchConfig(**sections.get("search", {})),
        collections=collections,
        source=source,
    )


def load(path: Path | None = None, *, origins: list[Path] | None = None, cache_dir: Path | None = None,
         cache_size: str | None = None, read_timeout: float | None = None, layout: str | None = None,
         template: str | None = None) -> Config:
    """Read the config file (explicit, else the XDG default if present) and apply CLI overrides."""
    document: dict = {}
    source = None
    if path is not None or default_config_path().exists():
        # Absolute: the daemon reads it again on SIGHUP, and status shows where it is.
        source = Path(os.path.abspath(path if path is not None else default_config_path()))
        try:
            with open(source, "rb") as f:
                document = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist; create it or drop -c") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {source} is not valid TOML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {source} is not UTF-8 text (byte {e.start}: {e.reason}); "
                              f"save it as UTF-8") from None
        except OSError as e:
            raise ConfigError(f"cannot read config file {source}: {e.strerror}") from None
    if template is not None and isinstance(document.get("layout"), dict):
        # --template replaces the file's: a broken one there must not stand in the way.
        document["layout"] = {k: v for k, v in document["layout"].items() if k != "template"}
    config = parse(document, source)
    if origins:
        given = [os.path.abspath(os.path.expanduser(p)) for p in origins]
        twice = next((p for i, p in enumerate(given) if p in given[:i]), None)
        if twice is not None:
            raise ConfigError(f"-O {twice} is given twice; give each origin directory once")
        config = dataclasses.replace(config, origins=tuple(
            OriginConfig(name=f"origin{i + 1}", path=Path(os.path.abspath(os.path.expanduser(p))),
                         options=LocalOptions())
            for i, p in enumerate(origins)))
    if cache_dir is not None:
        config = dataclasses.replace(config, cache=dataclasses.replace(config.cache, dir=Path(os.path.abspath(cache_dir))))
    if cache_size is not None:
        config = dataclasses.replace(config, cache=dataclasses.replace(
            config.cache, max_size=_cache_size(cache_size, "--cache-size")))
    if read_timeout is not None:
        config = dataclasses.replace(config, fuse=dataclasses.replace(
            config.fuse, read_timeout=_seconds(read_timeout, "--read-timeout")))
    if layout is not None:
        config = dataclasses.replace(config, layout=dataclasses.replace(config.layout, mode=_mode(layout, "--layout")))
    if template is not None:
        config = dataclasses.replace(config, layout=dataclasses.replace(
            config.layout, template=_template(template, "--template")))
    return config
