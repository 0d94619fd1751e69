"""Looking at a cache from outside the daemon: `musicfs cache stats` and `musicfs cache verify`.

Both work whether or not a daemon is running (LMDB allows several processes); the daemon's
in-memory state (passthrough, origin health) comes from the status file it refreshes.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import lmdb

from .cas.check import CacheChecker
from .config import Config
from .daemon import CacheLock
from .errors import StartupError
from .storage import ENV_NAME, Storage

# While a daemon runs, a chunk file may sit between its rename and its index transaction for
# a moment; verify leaves files younger than this alone.
SETTLE_SECONDS = 10.0


def status_path(cache_dir: Path) -> Path:
    """Where the daemon of `cache_dir` publishes its live state (not in the cache dir: that
    disk may be the thing that failed)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    digest = hashlib.sha1(os.fsencode(os.path.abspath(cache_dir))).hexdigest()[:16]
    return Path(base) / f"musicfs-{digest}.status.json"


def write_status(cache_dir: Path, status: dict) -> None:
    path = status_path(cache_dir)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status, sort_keys=True))
    os.replace(tmp, path)


def daemon_of_mountpoint(mountpoint: Path) -> tuple[int | None, Path | None]:
    """(PID, cache dir) of the live daemon serving `mountpoint`, from the status files daemons
    publish; (None, None) if no live daemon serves it."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    target = os.path.abspath(mountpoint)
    for path in base.glob("musicfs-*.status.json"):
        try:
            status = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pid = status.get("pid")
        if status.get("mountpoint") == target and isinstance(pid, int) and os.path.exists(f"/proc/{pid}"):
            cache_dir = status.get("cache_dir")
            return pid, Path(cache_dir) if cache_dir else None
    return None, None


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


def open_existing(cache_dir: Path, *, readonly: bool) -> Storage:
    if not (Path(cache_dir) / ENV_NAME).is_dir():
        raise StartupError(f"no musicfs cache at {cache_dir}; check [cache].dir or --cache-dir")
    try:
        return Storage(cache_dir, readonly=readonly)
    except lmdb.Error as e:
        raise StartupError(f"cannot open the cache index in {cache_dir}: {e}") from None


def cache_stats(config: Config) -> dict:
    storage = open_existing(config.cache.dir, readonly=True)
    try:
        with storage.begin() as txn:
            chunks = txn.stat(storage.chunks)["entries"]
            total = storage.get_u64(txn, b"total")
            chunk_size = storage.get_u64(txn, b"chunk_size")
            hits = storage.get_u64(txn, b"hits")
            misses = storage.get_u64(txn, b"misses")
    finally:
        storage.env.close()
    status = read_status(config.cache.dir) or {}
    return {"chunks": chunks, "bytes": total, "max_bytes": config.cache.max_size, "chunk_size": chunk_size,
            "hits": hits, "misses": misses, "passthrough": bool(status.get("passthrough", False)),
            "daemon_pid": status.get("pid"), "cache_dir": str(config.cache.dir)}


def verify_cache(config: Config, *, repair: bool, progress: bool):
    daemon = CacheLock.holder(config.cache.dir)
    storage = open_existing(config.cache.dir, readonly=not repair)

    def show(done: int, total: int) -> None:
        if progress and (done == total or done % 256 == 0):
            width = 30
            filled = width * done // max(total, 1)
            sys.stderr.write(f"\rverifying chunks [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    try:
        checker = CacheChecker(storage, repair=repair, settle_seconds=SETTLE_SECONDS if daemon else 0.0,
                               progress=show)
        return checker.run(digests=True)
    finally:
        if repair:
            storage.close()
        else:
            storage.env.close()
