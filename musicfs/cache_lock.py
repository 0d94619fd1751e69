"""The cache's lock: ``<cache.dir>/musicfs.lock`` is flock()ed by the daemon that owns the cache,
with its PID inside. One daemon per cache; any process may ask who holds it."""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .database import LOCK_NAME
from .errors import StartupError


class CacheLock:
    """flock() on <cache.dir>/musicfs.lock, holding the PID of the daemon that owns the cache."""

    def __init__(self, cache_dir: Path):
        self.path = Path(cache_dir) / LOCK_NAME
        self.fd: int | None = None
        self.writable = True

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self.writable = True
        except OSError as e:
            if e.errno != errno.EROFS or not self.path.exists():
                raise
            # A read-only cache disk: flock works on a read-only descriptor; the PID cannot be
            # recorded in the file (the status file still has it).
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            self.writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StartupError(f"cache {self.path.parent} is in use by another musicfs (PID {holder}); "
                               f"unmount it first or give this one another --cache-dir") from None
        self.fd = fd
        self.write_pid(os.getpid())

    def renew(self) -> None:
        """Lock the lock file that is at the path now (the cache dir was deleted and made
        again under the running daemon, taking the old file with it)."""
        old, self.fd = self.fd, None
        try:
            self.acquire()
        except BaseException:
            self.fd = old
            raise
        if old is not None:
            os.close(old)

    def write_pid(self, pid: int) -> None:
        if not self.writable:
            return
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)   # explicit: a copy of the descriptor may live on
            os.close(fd)

    @staticmethod
    def holder(cache_dir: Path) -> int | None:
        """PID of the daemon holding the cache, or None if no daemon holds it (or the cache
        disk cannot tell any more: a dead disk answers EIO; the callers go on without it)."""
        path = Path(cache_dir) / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            except OSError:
                return -1        # held, by a PID the dead disk will not give
            return int(text) if text.isdigit() else -1
        except OSError:
            return None
        finally:
            os.close(fd)
        return None
