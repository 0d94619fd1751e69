"""FaultyOrigin: a real origin that a test can make hang, slow, fail, truncate or corrupt mid-test."""
from __future__ import annotations

import collections
import errno as errno_module
import threading
import time

from musicfs.origins import Origin


class FaultyOrigin(Origin):
    """Wraps a real origin. Modes (switch with the methods below, any time):

    healthy, hang (every call blocks until release()), delay (sleep before answering),
    fail (raise OSError(errno)), fail_every (every Nth call fails), fail_after (calls after the
    first N fail), partial (reads return only the first half), corrupt (reads flip bytes).
    `calls` counts calls per method.
    """

    def __init__(self, inner: Origin, name: str | None = None):
        super().__init__(name or inner.name)
        self.inner = inner
        self.calls: collections.Counter[str] = collections.Counter()
        self._released = threading.Event()
        self._released.set()
        self.mode = "healthy"
        self.delay_seconds = 0.0
        self.errno = errno_module.EIO
        self.every = 0
        self.after = 0
        self.only: set[str] | None = None  # methods the fault applies to (None: all)
        self._lock = threading.Lock()

    # -- switches ----------------------------------------------------------------------------
    def healthy(self):
        self.mode = "healthy"
        self._released.set()

    def hang(self, only=None):
        self._released.clear()
        self.only = set(only) if only else None
        self.mode = "hang"

    def release(self):
        self.mode = "healthy"
        self._released.set()

    def delay(self, seconds: float, only=None):
        self.delay_seconds = seconds
        self.only = set(only) if only else None
        self.mode = "delay"

    def fail(self, err: int = errno_module.EIO, only=None):
        self.errno = err
        self.only = set(only) if only else None
        self.mode = "fail"

    def fail_every(self, n: int, only=None):
        self.every = n
        self.only = set(only) if only else None
        self.mode = "fail_every"

    def fail_after(self, n: int, only=None):
        self.after = n
        self.only = set(only) if only else None
        self.mode = "fail_after"

    def partial(self):
        self.mode = "partial"

    def corrupt(self):
        self.mode = "corrupt"

    # -- the origin interface ----------------------------------------------------------------
    def _enter(self, method: str) -> None:
        with self._lock:
            self.calls[method] += 1
            count = self.calls[method]
        if self.only is not None and method not in self.only:
            return
        mode = self.mode
        if mode == "hang":
            self._released.wait()
        elif mode == "delay":
            time.sleep(self.delay_seconds)
        elif mode == "fail":
            raise OSError(self.errno, f"injected {errno_module.errorcode.get(self.errno, self.errno)}")
        elif mode == "fail_every" and count % self.every == 0:
            raise OSError(errno_module.EIO, f"injected failure of call {count}")
        elif mode == "fail_after" and count > self.after:
            raise OSError(errno_module.EIO, f"injected failure after {self.after} calls")

    def list_dir(self, relpath):
        self._enter("list_dir")
        return self.inner.list_dir(relpath)

    def stat(self, relpath):
        self._enter("stat")
        return self.inner.stat(relpath)

    def read(self, relpath, offset, size, expect=None):
        self._enter("read")
        data = self.inner.read(relpath, offset, size, expect)
        if self.mode == "partial":
            return data[: len(data) // 2]
        if self.mode == "corrupt" and data:
            return bytes(b ^ 0xFF for b in data[:16]) + data[16:]
        return data

    def check(self):
        self._enter("check")
        return self.inner.check()
