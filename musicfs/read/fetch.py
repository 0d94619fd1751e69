"""Fetches: one chunk (or a span of consecutive chunks) of one copy of a file, from its origin,
verified, cached, and shared by every reader that wants it meanwhile (single flight).

A Fetch is the typed handle readers wait on. Its `started` moves on while a span is arriving
(a span that makes progress is slow, not hung), `gave_up` makes later waiters fail at once (the
kernel retries a failed read page by page: the retries must not each wait again), and
`span_answered` says the origin answered the span's request before it broke off, so one chunk
may be asked for again by itself (see Failover.wait_or_refetch)."""
from __future__ import annotations

import contextlib
import errno
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from types import MappingProxyType

from ..cas.store import CacheWriteError, ChunkStore, digest_of
from ..errors import ChunkCorrupt, ChunkMissing, OriginChanged, OriginTransient
from ..origins import KIND_FILE
from ..pool import CACHE_DISK, LOAD_LANE, OriginPool
from .files import OpenFile, Source

log = logging.getLogger(__name__)

VANISHED_ERRNOS = {errno.ENOENT, errno.ENOTDIR}
# Chunks fetched while the cache is in passthrough whose digests are kept, for their reads to
# find them in the store's memory of verified chunks (8 MiB, 8 chunks: a few more than fit).
PASSED_THROUGH_KEPT = 64
# A span read ahead stops when its file has not been read for this long (seconds): its reader
# went away, or paused (it asks for the rest when it comes back).
READAHEAD_IDLE = 10.0


class Fetch:
    """One chunk of one copy on its way: its result is (digest or None when the cache did not
    take it, bytes)."""
    __slots__ = ("future", "started", "gave_up", "span_answered")

    def __init__(self, future: Future, started: float):
        self.future = future
        self.started = started        # when the wait for this chunk began (see the module docstring)
        self.gave_up = False          # a reader timed out on it: later readers do not wait again
        self.span_answered = False    # part of a span whose request the origin answered

    def result(self, timeout: float | None = None) -> tuple[bytes | None, bytes]:
        return self.future.result(timeout=timeout)

    def done(self) -> bool:
        return self.future.done()

    def failed(self) -> bool:
        return self.future.done() and (self.future.cancelled() or self.future.exception() is not None)

    def when_done(self, callback) -> None:
        """callback(self) once the fetch ends (at once if it has)."""
        self.future.add_done_callback(lambda _: callback(self))


@dataclass(frozen=True)
class ReadSettings:
    """What a reload may change under the read engine, swapped whole (`Reader.apply`): a read
    takes it once, so it never sees half of an old configuration and half of a new one."""
    origins: Mapping[str, object]   # configured origins by name (read-only)
    read_timeout: float             # [fuse].read_timeout: how long a read waits for its bytes
    cache_timeout: float            # [health].timeout: how long a load from or write to the cache disk may take

    @classmethod
    def of(cls, origins: dict, read_timeout: float, cache_timeout: float) -> ReadSettings:
        return cls(MappingProxyType(dict(origins)), read_timeout, cache_timeout)


class Fetcher:
    def __init__(self, catalog, store: ChunkStore, settings: ReadSettings, pool: OriginPool, *, health=None,
                 scanner=None):
        self.catalog = catalog
        self.store = store
        self.settings = settings   # replaced whole by a reload, never changed in place
        self.pool = pool
        self.health = health
        self.scanner = scanner   # refreshes catalog entries a fetch found changed or gone
        self.readahead_idle = READAHEAD_IDLE
        self.chunk_size = store.chunk_size
        self._inflight: dict[tuple, Fetch] = {}
        # (version, index) -> digest of the chunks last fetched in passthrough (see _store)
        self._passed_through: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def chunk_length(self, size: int, index: int) -> int:
        return min(self.chunk_size, size - index * self.chunk_size)

    def in_flight(self) -> list[tuple]:
        """(version, index) of every chunk being fetched now."""
        with self._lock:
            return list(self._inflight)

    # -- the cache disk ----------------------------------------------------------------------

    def cached(self, digest: bytes, length: int, deadline: float) -> bytes:
        """A cached chunk: from memory, or loaded from the cache disk in the pool, waiting at most
        `cache_timeout` - a hung cache disk must not hang the read (it goes to an origin)."""
        data = self.store.get_verified(digest)
        if data is not None:
            return data
        if self.store.disk.loads_suspended:
            raise ChunkMissing("the cache disk does not answer")
        # A preload of it under way (the usual case for a sequential reader) is waited for
        # itself: one thread handoff instead of two (a load task that would wait for it too).
        preloading = self.store.loading(digest)
        future = preloading or self.pool.submit(CACHE_DISK, self.store.get, digest, length, lane=LOAD_LANE)
        try:
            return future.result(timeout=max(min(deadline - time.monotonic(), self.settings.cache_timeout), 0))
        except FutureTimeout:
            if preloading is None:   # (the store's own load is not ours to drop)
                future.cancel()
            self.store.disk.stops_answering(f"loading a chunk took more than {self.settings.cache_timeout:g}s")
            raise ChunkMissing("the cache disk did not answer") from None

    def passed_through_digest(self, source: Source, index: int) -> bytes | None:
        """The digest of a chunk fetched lately while the cache took none (kept in memory)."""
        with self._lock:
            return self._passed_through.get((source.version, index))

    # -- starting fetches --------------------------------------------------------------------

    def fetch(self, source: Source, index: int) -> Fetch:
        """The shared fetch of one chunk of one source (started if nobody is fetching it)."""
        key = (source.version, index)
        with self._lock:
            fetch = self._inflight.get(key)
            # A failed fetch is forgotten by a callback that may run after its waiters woke:
            # one asking again gets a new fetch, not the old failure.
            if fetch is not None and not fetch.failed():
                return fetch
            if self.health is not None:
                self.health.admit(source.origin)  # raises OriginUnavailable when known dead
            fetch = Fetch(self.pool.submit(source.origin, self._fetch_chunk, source, index), time.monotonic())
            self._inflight[key] = fetch
        fetch.when_done(functools.partial(self._forget, key))
        return fetch

    def free_runs(self, source: Source, indices: list[int], span: int):
        """The chunks among `indices` nobody is fetching yet, as runs of consecutive ones within
        one span (aligned to multiples of `span`), one origin request each."""
        run: list[int] = []
        with self._lock:
            free = [index for index in indices if (source.version, index) not in self._inflight]
        for index in free:
            if run and (index != run[-1] + 1 or index % span == 0):
                yield run
                run = []
            run.append(index)
        if run:
            yield run

    def fetch_run(self, source: Source, run: list[int], handle: OpenFile) -> list[Fetch]:
        """The shared fetches of consecutive chunks of one source: one request for all of them,
        unless it is one chunk or another reader started fetching some of them meanwhile."""
        fetches = self._start_span(source, run, handle) if len(run) > 1 else None
        if fetches is None:
            return [self.fetch(source, index) for index in run]
        return fetches

    def _start_span(self, source: Source, run: list[int], handle: OpenFile) -> list[Fetch] | None:
        with self._lock:
            if any((source.version, index) in self._inflight for index in run):
                return None
            if self.health is not None:
                self.health.admit(source.origin)  # raises OriginUnavailable when known dead
            now = time.monotonic()
            fetches = [Fetch(Future(), now) for _ in run]
            for index, fetch in zip(run, fetches):
                self._inflight[(source.version, index)] = fetch
        for index, fetch in zip(run, fetches):
            fetch.when_done(functools.partial(self._forget, (source.version, index)))
        task = self.pool.submit(source.origin, self._fetch_span, source, run[0], fetches, handle)
        task.add_done_callback(functools.partial(self._abandoned, fetches))
        return fetches

    @staticmethod
    def _abandoned(fetches: list[Fetch], task: Future) -> None:
        """A span task that never ran (dropped at shutdown) leaves no reader waiting on its chunks."""
        if task.cancelled():
            for fetch in fetches:
                fetch.future.cancel()
        elif task.exception() is not None:
            for fetch in fetches:
                if not fetch.done():
                    fetch.future.set_exception(task.exception())

    def _forget(self, key, fetch: Fetch) -> None:
        with self._lock:
            if self._inflight.get(key) is fetch:
                del self._inflight[key]

    # -- in the pool -------------------------------------------------------------------------

    def _fetch_chunk(self, source: Source, index: int):
        """Runs in the pool: one range read of one chunk, stored if the cache takes it."""
        length = self.chunk_length(source.size, index)
        known = self.store.manifest(source.key, source.size, source.mtime_ns)[index]
        if known is not None and not self.store.disk.loads_suspended:  # cached meanwhile (a readahead, or a read that waited elsewhere)
            try:
                return known, self.cached(known, length, time.monotonic() + self.settings.cache_timeout)
            except (ChunkMissing, ChunkCorrupt):
                pass
        data = self._origin_read(source, index, length)
        self.store.count_miss()
        return self._store(source, index, data), data

    def _fetch_span(self, source: Source, first: int, fetches: list[Fetch], handle: OpenFile) -> None:
        """Runs in the pool: chunks first.. (one Fetch each) with one origin request, each stored
        and handed to its readers as soon as its bytes are there; a failure fails every chunk
        not handed out yet. Stops once nobody has read the file for readahead_idle: a long span
        from a slow server must not hold the origin's worker for a reader that went away (a
        reader that comes back asks for the rest on its own)."""
        origin = self.settings.origins[source.origin]
        try:
            lengths = [self.chunk_length(source.size, index) for index in range(first, first + len(fetches))]
            pieces = origin.read_pieces(source.relpath, first * self.chunk_size, lengths, source.expect)
            with self._origin_errors(source), contextlib.closing(pieces):
                for index, (length, fetch) in enumerate(zip(lengths, fetches), first):
                    piece = next(pieces, b"")
                    self._check_length(origin, source, index, piece, length)
                    self.store.count_miss()
                    fetch.future.set_result((self._store(source, index, piece), piece))
                    # A span that is making progress is not hung: the time its chunks take to
                    # arrive counts from the last one that did (a large span on a slow link
                    # takes longer than read_timeout in all).
                    now = time.monotonic()
                    for waiting in fetches[index + 1 - first:]:
                        waiting.started = now
                        waiting.span_answered = True
                    if now - handle.last_read > self.readahead_idle and index + 1 - first < len(fetches):
                        raise OriginTransient(f"readahead of {source.name} stopped: "
                                              f"not read for {self.readahead_idle:g}s")
        except BaseException as e:
            for fetch in fetches:
                if not fetch.done():
                    fetch.future.set_exception(e)

    def _origin_read(self, source: Source, index: int, length: int) -> bytes:
        """`length` bytes from chunk `index` on, of exactly the version the catalog describes."""
        origin = self.settings.origins[source.origin]
        with self._origin_errors(source):
            data = origin.read(source.relpath, index * self.chunk_size, length, source.expect)
            self._check_length(origin, source, index, data, length)
        return data

    @staticmethod
    def _check_length(origin, source: Source, index: int, data: bytes, length: int) -> None:
        if len(data) != length:
            raise OriginChanged(f"{source.name} on {source.origin} returned "
                                f"{len(data)} bytes at chunk {index}, expected {length}",
                                origin.stat(source.relpath))

    @contextlib.contextmanager
    def _origin_errors(self, source: Source):
        """What an origin read's failure means for the catalog: a changed file is refreshed at
        once; a vanished one is a catalog change (OriginChanged), not an origin failure."""
        try:
            yield
        except OriginChanged as e:
            if self.scanner is not None:
                self.scanner.refresh_file(source.origin, source.relpath, e.current)
            raise
        except OSError as e:
            if e.errno not in VANISHED_ERRNOS:
                raise
            # Gone from the origin: a catalog change, not an origin failure - unless the origin
            # itself is gone (refresh_vanished raises OriginUnavailable then).
            if self.scanner is not None:
                self.scanner.refresh_vanished(source.origin, source.relpath)
            raise OriginChanged(f"{source.name} is no longer on origin {source.origin}") from None

    def _store(self, source: Source, index: int, data: bytes) -> bytes | None:
        """Cache a fetched chunk; its digest, or None if the cache did not take it (the bytes
        are served anyway: passthrough, and kept in memory for the reads to come - noted
        before the fetch completes, so a read that finds the fetch gone finds the chunk). The
        write runs in the cache disk's lane and is waited for at most `cache_timeout`: a hung
        cache disk must not hold the origin's workers, nor make the origin look slow."""
        digest = self._cache(source, index, data)
        if digest is None:
            passed = digest_of(data)
            self.store.verified.add(passed, data)
            with self._lock:
                self._passed_through[(source.version, index)] = passed
                self._passed_through.move_to_end((source.version, index))
                if len(self._passed_through) > PASSED_THROUGH_KEPT:
                    self._passed_through.popitem(last=False)
        return digest

    def _cache(self, source: Source, index: int, data: bytes) -> bytes | None:
        if self.store.disk.passthrough:
            return None
        put = functools.partial(self.store.put, data, manifest=(source.key, source.size, source.mtime_ns, index),
                                record_if=functools.partial(self._still_catalogued, source))
        future = self.pool.submit(CACHE_DISK, put, lane=LOAD_LANE)
        try:
            return future.result(timeout=self.settings.cache_timeout)
        except CacheWriteError:
            return None   # the store logged the transition to passthrough
        except FutureTimeout:
            self.store.disk.stops_answering(f"writing a chunk took more than {self.settings.cache_timeout:g}s")
            return None

    def _still_catalogued(self, source: Source, txn) -> bool:
        """Whether the catalog still describes `source`'s version (asked in the transaction that
        records a chunk of it): a fetch that was under way when a rescan saw the file change
        must not put the old version's bytes into the chunk list of a new version of the same
        size and mtime (an S3 object replaced within the same second differs only in its ETag)."""
        return self.catalog.origin_record(source.origin, source.relpath, txn) == \
            (KIND_FILE, source.size, source.mtime_ns, source.expect.token)
