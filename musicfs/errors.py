"""Domain errors, and the one place that turns any exception into an errno.

Expected failures (an origin gone, a read timing out, a chunk that fails verification) log one
rate-limited line; anything else is a bug and logs a traceback - and still becomes EIO, because
fusepy would turn an escaped exception into a silent EINVAL.
"""
from __future__ import annotations

import errno
import logging
import threading
import time

log = logging.getLogger("musicfs")


class MusicfsError(Exception):
    """Base of every error musicfs raises on purpose."""

    errno = errno.EIO


class ConfigError(MusicfsError):
    """The configuration or the command line is wrong; the message says which key and how to fix it."""


class CommandError(MusicfsError):
    """A command cannot do what was asked (no daemon serves that mount, a path outside any
    mount, a pin the cache cannot take...); the message is the one line the user sees."""


class StartupError(CommandError):
    """The daemon cannot start (lock held, mountpoint missing...); the message says what to do."""


class OriginUnavailable(MusicfsError):
    """An origin could not answer (missing, unreachable, failing I/O)."""


class OriginMisconfigured(OriginUnavailable):
    """The origin cannot work as configured (its directory or bucket is not there, an unknown
    host key, credentials refused): on a first mount a mistake to fix, not an outage to wait out."""


class OriginMissing(OriginMisconfigured):
    """The origin's directory (or bucket) is not there."""


class OriginTransient(OriginUnavailable):
    """One attempt failed in a way the next may not: the connection was reset or dropped, no
    answer came in time, the server said it is overloaded. The only kind origins retry
    (origins/retry.py)."""


class OriginChanged(MusicfsError):
    """The origin's file is not the version the catalog describes (rewritten, replaced, gone).
    `current` is the origin's entry for it now, None when it is gone or unknown."""

    def __init__(self, message: str, current=None):
        super().__init__(message)
        self.current = current


class ShuttingDown(MusicfsError):
    """musicfs is stopping: what was waiting gives up now (not a failure of any origin)."""


class ReadTimeout(MusicfsError):
    """A read waited longer than [fuse].read_timeout for an origin."""


class ChunkCorrupt(MusicfsError):
    """A cached chunk failed verification (digest mismatch, wrong size)."""


class ChunkMissing(MusicfsError):
    """A chunk recorded in the index has no file on disk."""


class NotFound(MusicfsError):
    errno = errno.ENOENT


_EXPECTED_OS_ERRNOS = {errno.ENOENT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                       errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EIO, errno.ETIMEDOUT, errno.EBADF,
                       errno.ENODATA, errno.EINVAL, errno.ESTALE, errno.ENOTCONN, errno.EHOSTDOWN}


class RateLimitedLog:
    """Log a given (kind, key) at most once per `interval` seconds, counting what was suppressed."""

    def __init__(self, interval: float = 10.0):
        self.interval = interval
        self._last: dict[tuple, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def __call__(self, level: int, key: tuple, message: str, *args) -> None:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (-1e9, 0))
            if now - last < self.interval:
                self._last[key] = (last, suppressed + 1)
                return
            self._last[key] = (now, 0)
            if len(self._last) > 10_000:  # keys include paths; keep the table bounded
                self._last.clear()
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        log.log(level, message, *args)


rate_limited = RateLimitedLog()


def to_errno(exc: BaseException, operation: str = "", path: str = "") -> int:
    """Map an exception to a positive errno, logging it once in a rate-limited way."""
    if isinstance(exc, MusicfsError):
        if not isinstance(exc, NotFound):
            rate_limited(logging.WARNING, (type(exc).__name__, operation, path),
                         "%s %s: %s", operation, path, exc)
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        if exc.errno not in (errno.ENOENT, errno.EROFS):
            rate_limited(logging.WARNING, ("OSError", exc.errno, operation),
                         "%s %s: %s", operation, path, exc)
        # Errors that mean "this path" on an origin are an I/O error on our side, except the
        # few a caller can act on.
        return exc.errno if exc.errno in _EXPECTED_OS_ERRNOS else errno.EIO
    log.error("bug: %s %s raised %r", operation, path, exc, exc_info=exc)
    return errno.EIO
