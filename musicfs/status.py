"""The running daemon as other processes see it: its status file and where its control socket
is. Every command that looks at or talks to a live daemon goes through here (its cache lock:
:mod:`musicfs.cache_lock`).

* ``$XDG_RUNTIME_DIR/musicfs-<hash of cache dir>.status.json`` is the daemon's published state,
  rewritten about once a second (never in the cache dir: that disk may be what failed).
* ``$XDG_RUNTIME_DIR/musicfs-<hash of cache dir>.sock`` is its control socket (see
  :mod:`musicfs.daemon.control`): rescans, pins, reloads are asked of the daemon there.

The status file is a `DaemonStatus` (frozen dataclasses, written and read only here, as JSON).
Reading is lenient: a key missing or of the wrong type (a file from an older daemon, or not a
daemon's at all) reads as its default, never as an exception in the reader.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
import json
import os
import re
import tempfile
from pathlib import Path

from .config import CacheConfig, Config, HealthConfig, LogConfig, OriginConfig
from .cache_lock import CacheLock
from .origins.options import OPTIONS as ORIGIN_OPTIONS


def runtime_dir() -> Path:
    """Where live state is published: $XDG_RUNTIME_DIR, else the temp dir. Never the cache
    dir: that disk may be the thing that failed."""
    return Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())


def runtime_name(scope) -> str:
    """The file-name prefix for state about `scope` (a cache dir, or a mountpoint)."""
    return "musicfs-" + hashlib.sha1(os.fsencode(os.path.abspath(scope))).hexdigest()[:16]


def status_path(cache_dir: Path) -> Path:
    """Where the daemon of `cache_dir` publishes its live state (see `Service.publish_status`)."""
    return runtime_dir() / f"{runtime_name(cache_dir)}.status.json"


# -- what the file holds -----------------------------------------------------------------------

def _number(raw: dict, key: str, default=None):
    value = raw.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _integer(raw: dict, key: str, default=None):
    value = raw.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _text(raw: dict, key: str, default=None):
    value = raw.get(key)
    return value if isinstance(value, str) else default


def _mapping(raw: dict, key: str) -> dict:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class ScanReport:
    """An origin's last scan, as the daemon publishes it (from `catalog.scanner.ScanResult`)."""
    complete: bool = False
    finished: float | None = None      # time.time() when it ended
    error: str | None = None
    entries: int = 0
    tags_read: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    seconds: float = 0.0
    unreadable: tuple[str, ...] = ()   # "path: reason" of each directory that could not be listed

    def to_json(self) -> dict:
        return dict(dataclasses.asdict(self), unreadable=list(self.unreadable))

    @classmethod
    def from_json(cls, raw) -> ScanReport | None:
        if not isinstance(raw, dict):
            return None
        unreadable = raw.get("unreadable")
        return cls(complete=raw.get("complete") is True, finished=_number(raw, "finished"),
                   error=_text(raw, "error") or None, entries=_integer(raw, "entries", 0),
                   tags_read=_integer(raw, "tags_read", 0), added=_integer(raw, "added", 0),
                   changed=_integer(raw, "changed", 0), removed=_integer(raw, "removed", 0),
                   seconds=_number(raw, "seconds", 0.0),
                   unreadable=tuple(str(item) for item in unreadable) if isinstance(unreadable, list) else ())


@dataclass(frozen=True)
class OriginView:
    """The daemon's verdict on one origin: "unknown" until its first check or failed read."""
    status: str = "unknown"
    latency: float | None = None
    error: str | None = None
    consecutive_failures: int = 0
    decided_at: float | None = None    # time.time() of the verdict: how current it is
    scan: ScanReport | None = None     # its last scan since the mount, if any

    def to_json(self) -> dict:
        raw = {"status": self.status, "latency": self.latency, "error": self.error,
               "consecutive_failures": self.consecutive_failures, "decided_at": self.decided_at}
        if self.scan is not None:
            raw["scan"] = self.scan.to_json()
        return raw

    @classmethod
    def from_json(cls, raw) -> OriginView:
        if not isinstance(raw, dict):
            return cls()
        return cls(status=_text(raw, "status", "unknown"), latency=_number(raw, "latency"),
                   error=_text(raw, "error") or None, consecutive_failures=_integer(raw, "consecutive_failures", 0),
                   decided_at=_number(raw, "decided_at"), scan=ScanReport.from_json(raw.get("scan")))


@dataclass(frozen=True)
class CacheFigures:
    """The cache index's totals (None: not known, e.g. the index is gone)."""
    chunks: int | None = None
    bytes: int | None = None
    pinned_bytes: int | None = None
    max_bytes: int | None = None
    hits: int | None = None
    misses: int | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, raw) -> CacheFigures:
        raw = raw if isinstance(raw, dict) else {}
        return cls(**{f.name: _integer(raw, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class UnplacedFile:
    origin: str
    path: str


@dataclass(frozen=True)
class LayoutStatus:
    """The view's layout, and the files the tags view could not place (not audio to mutagen)."""
    mode: str = "?"
    template: str | None = None
    not_placed_count: int = 0
    not_placed: tuple[UnplacedFile, ...] = ()   # the first NOT_PLACED_LISTED of them

    def to_json(self) -> dict:
        raw = {"mode": self.mode, "template": self.template}
        if self.mode == "tags":
            raw["not_placed"] = {"count": self.not_placed_count,
                                 "files": [dataclasses.asdict(f) for f in self.not_placed]}
        return raw

    @classmethod
    def from_json(cls, raw) -> LayoutStatus:
        raw = raw if isinstance(raw, dict) else {}
        unplaced = _mapping(raw, "not_placed")
        files = unplaced.get("files") if isinstance(unplaced.get("files"), list) else []
        return cls(mode=_text(raw, "mode", "?"), template=_text(raw, "template"),
                   not_placed_count=_integer(unplaced, "count", 0),
                   not_placed=tuple(UnplacedFile(str(f.get("origin")), str(f.get("path")))
                                    for f in files if isinstance(f, dict)))


@dataclass(frozen=True)
class Reloads:
    """Config reloads since the mount, and whether the last one was refused."""
    count: int = 0
    last: float | None = None
    error: str | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw) -> Reloads:
        raw = raw if isinstance(raw, dict) else {}
        return cls(count=_integer(raw, "count", 0), last=_number(raw, "last"), error=_text(raw, "error") or None)


@dataclass(frozen=True)
class DaemonStatus:
    """The daemon's published state (`Service.publish_status`, about once a second)."""
    pid: int
    mountpoint: str | None = None
    started: float | None = None       # when the daemon's process started (unix time): tells it from a PID reuse
    updated: float = 0.0               # when the file was written
    version: str | None = None
    cache_dir: str | None = None
    config_file: str | None = None
    # What the cron probe needs of the daemon's config: origins, cache, health and log are
    # published (`config_summary`) and read back; the rest reads back as defaults.
    config: Config | None = None
    passthrough: bool = False
    passthrough_reason: str | None = None
    origins: dict[str, OriginView] = field(default_factory=dict)
    cache: CacheFigures = CacheFigures()
    layout: LayoutStatus = LayoutStatus()
    reloads: Reloads = Reloads()
    requests_in_progress: int = 0

    def to_json(self) -> dict:
        return {"pid": self.pid, "mountpoint": self.mountpoint, "started": self.started, "updated": self.updated,
                "version": self.version, "cache_dir": self.cache_dir, "config_file": self.config_file,
                "config": config_summary(self.config) if self.config is not None else None,
                "passthrough": self.passthrough, "passthrough_reason": self.passthrough_reason,
                "origins": {name: view.to_json() for name, view in self.origins.items()},
                "cache": self.cache.to_json(), "layout": self.layout.to_json(), "reloads": self.reloads.to_json(),
                "requests_in_progress": self.requests_in_progress}

    @classmethod
    def from_json(cls, raw) -> DaemonStatus | None:
        """The status in `raw` (a parsed status file), or None if it names no daemon."""
        if not isinstance(raw, dict) or _integer(raw, "pid") is None:
            return None
        cache_dir = _text(raw, "cache_dir")
        origins = _mapping(raw, "origins")
        return cls(pid=raw["pid"], mountpoint=_text(raw, "mountpoint"), started=_number(raw, "started"),
                   updated=_number(raw, "updated", 0.0), version=_text(raw, "version"), cache_dir=cache_dir,
                   config_file=_text(raw, "config_file"),
                   config=_config_from_summary(raw.get("config"), cache_dir),
                   passthrough=raw.get("passthrough") is True,
                   passthrough_reason=_text(raw, "passthrough_reason") or None,
                   origins={str(name): OriginView.from_json(view) for name, view in origins.items()},
                   cache=CacheFigures.from_json(raw.get("cache")), layout=LayoutStatus.from_json(raw.get("layout")),
                   reloads=Reloads.from_json(raw.get("reloads")),
                   requests_in_progress=_integer(raw, "requests_in_progress", 0))

    @property
    def alive(self) -> bool:
        """Is the daemon that wrote it still running? A PID alone could have been reused by
        another process since; `started` (when the daemon's process started) settles it."""
        if self.pid <= 0:
            return False
        started_at = process_started_at(self.pid)
        if started_at is None:
            return process_start_ticks(self.pid) is not None  # /proc/stat unreadable: the PID alone
        return self.started is None or abs(started_at - self.started) < 2.0

    def origin_names(self) -> list[str]:
        """The origins in priority order (the configuration's), then any the config lacks."""
        order = [o.name for o in self.config.origins] if self.config is not None else []
        return [n for n in order if n in self.origins] + sorted(n for n in self.origins if n not in order)


def write_status(cache_dir: Path, status: DaemonStatus) -> None:
    path = status_path(cache_dir)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status.to_json(), sort_keys=True))
    os.replace(tmp, path)


def _load(path: Path) -> DaemonStatus | None:
    try:
        return DaemonStatus.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, RecursionError):   # (not a daemon's: nested too deep to parse)
        return None


def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22), or None if
    there is no such process or it has exited (a zombie). Comparing it with a recorded value
    tells a live process from a new one that reuses its PID."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] in ("Z", "X"):
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_started_at(pid: int) -> float | None:
    """Process `pid`'s start as unix time (to about a second), or None if it is not alive."""
    ticks = process_start_ticks(pid)
    if ticks is None:
        return None
    try:
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def read_status_file(cache_dir: Path) -> DaemonStatus | None:
    """The status file of `cache_dir` as it is, live or left behind by a daemon that died (a
    clean stop removes it), without touching the cache dir itself. None if there is none."""
    return _load(status_path(cache_dir))


def statuses_of_mountpoint(mountpoint: Path) -> list[DaemonStatus]:
    """Every status file naming `mountpoint`, live daemons first, then newest first."""
    target = os.path.abspath(mountpoint)
    found = [status for status in map(_load, runtime_dir().glob("musicfs-*.status.json"))
             if status is not None and status.mountpoint == target]
    found.sort(key=lambda s: (not s.alive, -s.updated))
    return found


def mountpoint_status(mountpoint: Path) -> tuple[DaemonStatus | None, bool]:
    """(the status file naming `mountpoint` that counts, whether its daemon is alive): the live
    daemon's if there is one, else the newest left behind by a daemon that died, else None."""
    statuses = statuses_of_mountpoint(mountpoint)   # live daemons first
    if not statuses:
        return None, False
    return statuses[0], statuses[0].alive


def daemon_of_mountpoint(mountpoint: Path) -> tuple[int | None, Path | None]:
    """(PID, cache dir) of the live daemon serving `mountpoint`, from the status files daemons
    publish; (None, None) if no live daemon serves it."""
    status, alive = mountpoint_status(mountpoint)
    if not alive:
        return None, None
    return status.pid, Path(status.cache_dir) if status.cache_dir else None


def config_summary(config: Config) -> dict:
    """What the cron probe needs of a daemon's configuration, published in its status file, so
    that `musicfs health MOUNTPOINT` works for a mount started without a config file."""
    return {"origins": [{"name": o.name, "type": o.type, "path": str(o.path), "connections": o.connections,
                         "timeout": o.timeout, "options": _published_options(o.options)}
                        for o in config.origins],
            "health_timeout": config.health.timeout, "health_interval": config.health.interval,
            "cache_max_size": config.cache.max_size,
            "log_file": str(config.log.file), "log_level": config.log.level}


def _config_from_summary(summary, cache_dir: str | None) -> Config | None:
    """The Config a daemon published (`config_summary`), or None if the status has none."""
    if not isinstance(summary, dict) or not cache_dir:
        return None
    try:
        return Config(
            origins=tuple(_origin_from_summary(o) for o in summary["origins"]),
            cache=CacheConfig(dir=Path(cache_dir), max_size=int(summary["cache_max_size"])),
            health=HealthConfig(timeout=float(summary["health_timeout"]),
                                interval=float(summary.get("health_interval") or HealthConfig.interval)),
            log=LogConfig(file=Path(summary["log_file"]), level=summary.get("log_level", "info")))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _published_options(options) -> dict:
    """An origin's options as JSON: the keys set (a None is a default), paths as text."""
    if options is None:
        return {}
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items() if v is not None}


def _origin_from_summary(o: dict) -> OriginConfig:
    kind = o.get("type", "local")
    known = {f.name: f for f in dataclasses.fields(ORIGIN_OPTIONS[kind])}
    options = {k: v for k, v in (o.get("options") or {}).items() if k in known}
    for key in ("key_file", "known_hosts"):
        if options.get(key) is not None:
            options[key] = Path(options[key])
    extra = {k: o[k] for k in ("connections", "timeout") if k in o}
    return OriginConfig(name=o["name"], path=Path(o["path"]) if kind == "local" else o["path"], type=kind,
                        options=ORIGIN_OPTIONS[kind](**options), **extra)


def read_status(cache_dir: Path) -> DaemonStatus | None:
    """The daemon's last published state, or None when no daemon holds the cache (only its
    PID when it publishes none)."""
    pid = CacheLock.holder(cache_dir)
    if pid is None:
        return None
    status = _load(status_path(cache_dir))
    # The status file names the live daemon even when a read-only cache disk kept it from
    # writing its PID into the lock file.
    live = status is not None and os.path.exists(f"/proc/{status.pid}")
    return status if live else DaemonStatus(pid=pid)


def mounted_fstype(mountpoint: str) -> str | None:
    """The filesystem type mounted at `mountpoint` (from /proc/self/mountinfo, which never
    touches the mount), or None if nothing is mounted there."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]) == mountpoint:
            found = right.split()[0] if right.split() else "unknown"
    return found
