"""The cache disk's state, and its one set of transitions.

Three states: *working*; *passthrough* (the disk refuses writes: read-only, full, the index
gone; chunks already cached are still loaded, misses are served straight from origins and not
cached); *not answering* (a load or a write took longer than [health].timeout: nothing is loaded
from it or written to it, every chunk comes from an origin). Each step into a worse state is
logged once; the health loop's probe of the disk (Service.probe_cache) is what brings it back.
Everyone who must know (the store, the read engine, pins, status, systemd) asks this object."""
from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class CacheDisk:
    def __init__(self):
        self._lock = threading.Lock()
        self.passthrough = False       # no chunk is written: misses go straight from origins
        self.loads_suspended = False   # no chunk is loaded either: the disk does not answer
        self.reason = ""               # why, for status and health (kept current while it lasts)

    def refuses_writes(self, reason: str, *, logged: bool = True) -> None:
        """A write failed (EROFS, ENOSPC, EIO, the index is gone): passthrough."""
        with self._lock:
            entered = not self.passthrough
            self.passthrough, self.reason = True, reason
        if entered and logged:
            log.warning("cache disk refuses writes (%s): serving straight from origins (passthrough) "
                        "until it works again", reason)

    def stops_answering(self, reason: str) -> None:
        """A load or write did not come back in time: no loads, no writes."""
        with self._lock:
            entered = not self.loads_suspended
            self.loads_suspended = True
        if entered:
            log.warning("cache disk does not answer (%s): reading from origins instead until it does", reason)
        self.refuses_writes(reason)

    def still_refusing(self, reason: str) -> None:
        """A probe found it still failing: the reason, as it is now."""
        with self._lock:
            if self.passthrough:
                self.reason = reason

    def works_again(self, *, logged: bool = True) -> bool:
        """A probe wrote to it (or it was made anew): caching resumes. True if it was not working."""
        with self._lock:
            was = self.passthrough or self.loads_suspended
            self.passthrough = self.loads_suspended = False
            self.reason = ""
        if was and logged:
            log.info("cache disk takes writes again: caching resumed")
        return was
