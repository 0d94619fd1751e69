"""The running daemon as other processes see it: its status file and where its control socket
is. Every command that looks at or talks to a live daemon goes through here (its cache lock:
:mod:`musicfs.cache_lock`).

* ``$XDG_RUNTIME_DIR/musicfs-<hash of cache dir>.status.json`` is the daemon's published state,
  rewritten about once a second (never in the cache dir: that disk may be what failed).
* ``$XDG_RUNTIME_DIR/musicfs-<hash of cache dir>.sock`` is its control socket (see
  :mod:`musicfs.daemon.control`): rescans, pins, reloads are asked of the daemon there.
"""
from __future__ import annotations

import dataclasses
import hashlib
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


def write_status(cache_dir: Path, status: dict) -> None:
    path = status_path(cache_dir)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status, sort_keys=True))
    os.replace(tmp, path)


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


def status_pid_alive(status: dict) -> bool:
    """Is the daemon that wrote `status` still running? A PID alone could have been reused by
    another process since; the `started` key (when the daemon's process started) settles it."""
    pid = status.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    started_at = process_started_at(pid)
    if started_at is None:
        return process_start_ticks(pid) is not None  # /proc/stat unreadable: the PID alone
    recorded = status.get("started")
    return not isinstance(recorded, (int, float)) or abs(started_at - recorded) < 2.0


def read_status_file(cache_dir: Path) -> dict | None:
    """The status file of `cache_dir` as it is, live or left behind by a daemon that died (a
    clean stop removes it), without touching the cache dir itself. None if there is none."""
    try:
        status = json.loads(status_path(cache_dir).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def statuses_of_mountpoint(mountpoint: Path) -> list[dict]:
    """Every status file naming `mountpoint`, live daemons first, then newest first."""
    target = os.path.abspath(mountpoint)
    found = []
    for path in runtime_dir().glob("musicfs-*.status.json"):
        try:
            status = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(status, dict) and status.get("mountpoint") == target:
            found.append(status)
    found.sort(key=lambda s: (not status_pid_alive(s), -float(s.get("updated") or 0)))
    return found


def mountpoint_status(mountpoint: Path) -> tuple[dict | None, bool]:
    """(the status file naming `mountpoint` that counts, whether its daemon is alive): the live
    daemon's if there is one, else the newest left behind by a daemon that died, else None."""
    statuses = statuses_of_mountpoint(mountpoint)   # live daemons first
    if not statuses:
        return None, False
    return statuses[0], status_pid_alive(statuses[0])


def daemon_of_mountpoint(mountpoint: Path) -> tuple[int | None, Path | None]:
    """(PID, cache dir) of the live daemon serving `mountpoint`, from the status files daemons
    publish; (None, None) if no live daemon serves it."""
    status, alive = mountpoint_status(mountpoint)
    if not alive:
        return None, None
    cache_dir = status.get("cache_dir")
    return status["pid"], Path(cache_dir) if cache_dir else None


def config_summary(config: Config) -> dict:
    """What the cron probe needs of a daemon's configuration, published in its status file, so
    that `musicfs health MOUNTPOINT` works for a mount started without a config file."""
    return {"origins": [{"name": o.name, "type": o.type, "path": str(o.path), "connections": o.connections,
                         "timeout": o.timeout, "options": _published_options(o.options)}
                        for o in config.origins],
            "health_timeout": config.health.timeout, "health_interval": config.health.interval,
            "cache_max_size": config.cache.max_size,
            "log_file": str(config.log.file), "log_level": config.log.level}


def config_from_status(status: dict) -> Config | None:
    """The Config a daemon published (`config_summary`), or None if the status has none."""
    summary = status.get("config")
    if not isinstance(summary, dict) or not status.get("cache_dir"):
        return None
    try:
        return Config(
            origins=tuple(_origin_from_summary(o) for o in summary["origins"]),
            cache=CacheConfig(dir=Path(status["cache_dir"]), max_size=int(summary["cache_max_size"])),
            health=HealthConfig(timeout=float(summary["health_timeout"]),
                                interval=float(summary.get("health_interval") or HealthConfig.interval)),
            log=LogConfig(file=Path(summary["log_file"]), level=summary.get("log_level", "info")))
    except (KeyError, TypeError, ValueError):
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


def read_status(cache_dir: Path) -> dict | None:
    """The daemon's last published state, or None when no daemon holds the cache."""
    pid = CacheLock.holder(cache_dir)
    if pid is None:
        return None
    try:
        status = json.loads(status_path(cache_dir).read_text())
    except (OSError, ValueError):
        return {"pid": pid}
    # The status file names the live daemon even when a read-only cache disk kept it from
    # writing its PID into the lock file.
    live = isinstance(status.get("pid"), int) and os.path.exists(f"/proc/{status['pid']}")
    return status if live else {"pid": pid}


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
