"""Looking at a cache from outside the daemon: `musicfs cache stats` and `musicfs cache verify`.

Both work whether or not a daemon is running (LMDB allows several processes); the daemon's
in-memory state (passthrough, origin health) comes from the status file it refreshes.
"""
from __future__ import annotations

from pathlib import Path

import lmdb

from ..cas.check import CacheChecker
from ..config import Config
from ..errors import StartupError
from ..cache_lock import CacheLock
from ..status import read_status
from ..terminal import StatusLine, bar
from ..database import ENV_NAME, Storage

# While a daemon runs, a chunk file may sit between its rename and its index transaction for
# a moment; verify leaves files younger than this alone.
SETTLE_SECONDS = 10.0


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
            pinned = storage.get_u64(txn, b"pinned")
            chunk_size = storage.get_u64(txn, b"chunk_size")
            hits = storage.get_u64(txn, b"hits")
            misses = storage.get_u64(txn, b"misses")
    finally:
        storage.env.close()
    status = read_status(config.cache.dir)
    return {"chunks": chunks, "bytes": total, "pinned_bytes": pinned, "max_bytes": config.cache.max_size, "chunk_size": chunk_size,
            "hits": hits, "misses": misses, "passthrough": status is not None and status.passthrough,
            "daemon_pid": status.pid if status is not None else None, "cache_dir": str(config.cache.dir)}


def verify_cache(config: Config, *, repair: bool, progress: bool):
    daemon = CacheLock.holder(config.cache.dir)
    storage = open_existing(config.cache.dir, readonly=not repair)

    line = StatusLine()

    def show(done: int, total: int) -> None:
        if progress and (done == total or done % 256 == 0):
            line.show(f"verifying chunks {bar(done, total, 30)} {done}/{total}")
            if done == total:
                line.end()

    try:
        checker = CacheChecker(storage, repair=repair, settle_seconds=SETTLE_SECONDS if daemon else 0.0,
                               progress=show)
        return checker.run(digests=True)
    finally:
        if repair:
            storage.close()
        else:
            storage.env.close()
