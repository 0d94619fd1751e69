"""Failover: a chunk from the preferred copy of a file, or from a replica when that fails.

Replicas are other origins' copies of the same path and size, tried in the health monitor's
order. Bytes from a replica must match any digest already known for that chunk, and a replica
takes over a file only if its chunks equal every chunk already known from the copy read so far
(a replica of the same size may be another version: see Failover.agrees)."""
from __future__ import annotations

import errno
import time
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout

from ..cas.store import digest_of
from ..errors import OriginChanged, OriginUnavailable, ReadTimeout
from .fetch import Fetch, Fetcher
from .files import OpenFile, Source

# Errors that say this process is short of resources, not that the origin is failing.
LOCAL_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM}
# Errors about one file, not about the origin serving it: no health failure (a replica may do).
FILE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG}


class Failover:
    def __init__(self, fetcher: Fetcher, health=None):
        self.fetcher = fetcher
        self.health = health

    def chunk(self, handle: OpenFile, index: int, deadline: float) -> tuple[bytes | None, bytes]:
        """(digest or None if not cached, bytes) of chunk `index`, from the first copy that
        serves it and agrees with what was served of the file so far."""
        known = handle.digests[index] or handle.passed.get(index)
        errors = []
        for source in self.ordered(handle.sources):
            try:
                fetch = self.fetcher.fetch(source, index)
            except OriginUnavailable as e:  # known to be down: next replica, without waiting
                errors.append(str(e))
                continue
            try:
                digest, data = self._wait_or_refetch(fetch, source, index, deadline)
            except FutureTimeout:
                # The kernel retries a failed read page by page: those retries must not each
                # wait again for this fetch (one read() of the program's would take that long).
                fetch.gave_up = True
                read_timeout = self.fetcher.settings.read_timeout
                if time.monotonic() - fetch.started < read_timeout:
                    # A span still arriving, too slowly for this read (one that skipped ahead
                    # into it): slow, not failing.
                    raise ReadTimeout(f"origin {source.origin} is sending this part of the file too slowly; "
                                      f"it did not come within {read_timeout:g}s") from None
                self._report(source.origin, ReadTimeout("read timed out"))
                raise ReadTimeout(f"origin {source.origin} did not answer within {read_timeout:g}s") from None
            except CancelledError:
                raise ReadTimeout("read abandoned while shutting down") from None
            except OriginChanged as e:
                if e.current is not None:
                    raise  # another version of the file: none of it may be served now
                errors.append(f"{source.origin}: {e}")   # gone from this origin: try a replica
                continue
            except OSError as e:
                if e.errno in LOCAL_ERRNOS:
                    raise  # this process is out of descriptors or memory: not the origin's fault
                if e.errno not in FILE_ERRNOS:
                    self._report(source.origin, e)
                errors.append(f"{source.origin}: {e.strerror or e}")
                continue
            except OriginUnavailable as e:
                self._report(source.origin, e)
                errors.append(f"{source.origin}: {e}")
                continue
            if known is not None and digest_of(data) != known:
                errors.append(f"{source.origin}: bytes differ from the preferred copy")
                continue
            if source != handle.copy:
                if not self.agrees(handle, source, index, deadline):
                    errors.append(f"{source.origin}: holds another version of this file than the one read so far")
                    continue
                handle.copy = source   # reads of this file go on from it (see FileStates._remember_served)
            return digest, data
        raise OriginUnavailable("; ".join(errors) or "no origin can serve this file")

    def _wait_or_refetch(self, fetch: Fetch, source: Source, index: int, deadline: float):
        """The result of a fetch; if it was a span whose request broke off after some of its
        chunks came but before this one (a dropped connection), this chunk alone, asked for
        again with the usual retries: the server answers, and its other chunks arrived."""
        try:
            return self._wait(fetch, deadline)
        except FutureTimeout:
            raise   # (an OSError since Python 3.11)
        except (OriginUnavailable, OSError):
            # Only when the span's request was answered: one that got no answer at all (a hung
            # or dead server) would be asked again for as long once more.
            if not fetch.span_answered:
                raise
        return self._wait(self.fetcher.fetch(source, index), deadline)

    def _wait(self, fetch: Fetch, deadline: float):
        """The result of a fetch. A fetch gets read_timeout, however many reads wait on it: the
        kernel retries a failed readahead page by page, and each retry must not wait anew. A
        chunk of a span gets it from when the chunk before it arrived (see Fetcher._fetch_span)."""
        while True:
            if fetch.gave_up and not fetch.done():
                raise FutureTimeout
            started = fetch.started
            until = min(deadline, started + self.fetcher.settings.read_timeout)
            try:
                return fetch.result(timeout=max(until - time.monotonic(), 0))
            except FutureTimeout:
                if fetch.started == started or time.monotonic() >= deadline:
                    raise

    def agrees(self, handle: OpenFile, source: Source, index: int, deadline: float) -> bool:
        """Whether `source` (another copy than the one read so far) has the same bytes in every
        chunk the file has known digests for, besides `index`. A replica of the same size may be
        another version (a retag that kept the size, a backup not synced yet): its chunks may
        then only be served if all the chunks known from the other copy are its own too, so that
        the file as read is exactly this copy. Its digests come from its own manifest where
        cached, else the chunks are fetched from it (and cached under it): the price of
        changing copies in the middle of a file, paid once per open file."""
        theirs = self.fetcher.store.manifest(source.key, source.size, source.mtime_ns)
        pending = []
        for other, ours in handle.served().items():
            if other == index:
                continue
            if theirs[other] is not None:
                if theirs[other] != ours:
                    return False
                continue
            try:
                pending.append((ours, self.fetcher.fetch(source, other)))
            except OriginUnavailable:
                return False
        for ours, fetch in pending:
            try:
                digest, data = fetch.result(timeout=max(deadline - time.monotonic(), 0))
            except Exception:   # noqa: BLE001 - this copy cannot prove itself now: not used
                return False
            if (digest if digest is not None else digest_of(data)) != ours:
                return False
        return True

    def _report(self, origin: str, error: BaseException) -> None:
        if self.health is not None:
            self.health.report_failure(origin, error)

    def ordered(self, sources):
        if self.health is None or len(sources) == 1:
            return sources
        return self.health.order(sources)
