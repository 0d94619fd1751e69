"""The read engine: byte ranges of catalog files, from verified chunks or, on a miss, from origins.

* A cached chunk is served from memory when it is there; otherwise it is loaded and verified
  in the pool's load lane and waited for at most [health].timeout: a hung cache disk must not
  hang a read. On that timeout the cache disk counts as hung (passthrough, no loads) and the
  chunk is read from an origin instead, until the health loop sees the disk answer again.
* A missing (or corrupt) chunk is fetched by itself - a range read of that chunk, never the
  whole file - in the shared pool, within the origin's worker budget. The caller waits on the
  future until the read's deadline ([fuse].read_timeout) and then gives up with ReadTimeout.
* Concurrent readers of the same missing chunk share one fetch (single flight).
* Sequential reading (a read that continues the one before) fetches the next chunks ahead from
  origins, or, where they are cached, loads them into memory ahead in the pool's preload lane
  (a few workers for the cache disk). A file's first read alone reads nothing ahead.
  An origin that pays a lot per request (Origin.span_chunks > 1: S3) is asked for several
  consecutive chunks ahead in ONE request; the bytes are split into the usual chunks, each
  hashed, stored and handed to its readers on its own, and the one request proves the version
  of all of them (the same check as a single chunk's). Reads that are not sequential, and the
  chunk a read waits for, are still fetched alone.
* Where an origin pays round trips per file (Origin.prefetch_next_files: sftp, s3), reading a
  file whose first chunk was not cached also starts fetching the first chunk of the next few
  files of its folder, as a library scanner or a player going through an album will read them
  next; reading one of those carries this on. Beyond that, no bytes are fetched that were not
  asked for.
* If the preferred origin fails, replicas (other origins with the same path and size) are
  tried in order; bytes from a replica must match any digest already known for that chunk,
  and a replica takes over a file only if its chunks equal every chunk already known from the
  copy read so far (a replica of the same size may be another version: see _agrees).
* If the cache disk refuses a chunk, the bytes are served anyway (passthrough).
* Every origin read proves that the origin file is still the version the catalog describes
  (size, mtime, version token). If it is not, no byte of it is served: the read fails, the
  catalog entry is refreshed at once and the old version's chunk list dropped, so the next
  open reads the new version whole. A file gone from its origin refreshes its directory and
  tries the replicas; neither is counted against the origin's health.
* A read carries the version tag its open was given (see :func:`version_tag`); once the file's
  entry has changed, reads of an earlier open fail instead of mixing two versions.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import functools
import logging
import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import xxhash

from .cas.store import CacheWriteError, ChunkStore, chunk_count, digest_of, manifest_key
from .catalog import Catalog, CatalogEntry, decode_entry, version_tag
from .catalog.tags import ogg_picture
from .errors import (ChunkCorrupt, ChunkMissing, NotFound, OriginChanged, OriginTransient, OriginUnavailable,
                     ReadTimeout)
from .origins import KIND_FILE, Origin, OriginEntry
from .pool import CACHE_DISK, LOAD_LANE, PRELOAD_LANE, OriginPool

log = logging.getLogger(__name__)

# Errors that say this process is short of resources, not that the origin is failing.
LOCAL_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM}
# Errors about one file, not about the origin serving it: no health failure (a replica may do).
FILE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG}
VANISHED_ERRNOS = {errno.ENOENT, errno.ENOTDIR}
# Files whose read state (known chunk digests, sequential position) is kept between reads.
OPEN_FILES = 1024
# Files whose read state was dropped while it knew what the cache index cannot tell again
# (see Reader._remember_served): few at a time.
MOVED_FILES = 4096
# Chunks fetched ahead of a sequential reader: enough to hide one origin round trip. An origin
# may ask for more (Origin.readahead_chunks): a remote one is limited by latency, not bandwidth.
READAHEAD_CHUNKS = 2
# A sequential reader may be a tag reader going on to the embedded cover art (mostly well under
# 1 MiB), which stops soon, until its reads are past the first chunk plus the kernel's
# read-ahead (the kernel reads that far ahead of a program that is about to stop). Until then
# readahead goes no further than this many chunks past that point, in one request: a library
# scan must not fetch every file's readahead window. After it, the origin's full window.
TAG_READER_EXTRA_CHUNKS = 1
# The kernel's read-ahead of a FUSE mount unless [fuse] read_ahead raises it.
KERNEL_READAHEAD = 128 << 10
# A span read ahead stops when its file has not been read for this long (seconds): its reader
# went away, or paused (it asks for the rest when it comes back).
READAHEAD_IDLE = 10.0
# Chunks fetched while the cache is in passthrough whose digests are kept, for their reads to
# find them in the store's memory of verified chunks (8 MiB, 8 chunks: a few more than fit).
PASSED_THROUGH_KEPT = 64
# Cached chunks loaded into memory ahead of a sequential reader, whatever the origin's fetch
# window: they land in the store's small memory of verified chunks (8 MiB), where loading much
# further ahead would evict them before the reader gets to them.
PRELOAD_AHEAD = 6


@dataclass(frozen=True, slots=True)
class Source:
    """One origin's copy of a file, as the catalog last saw it."""
    origin: str
    relpath: bytes
    size: int
    mtime_ns: int
    key: bytes          # manifest key
    expect: OriginEntry  # the version the catalog describes: origin reads must match it

    @property
    def version(self) -> tuple:
        """This copy in this version: fetches are shared per version, never across a change."""
        return self.key, self.size, self.mtime_ns, self.expect.token


@dataclass(slots=True)
class OpenFile:
    path: bytes
    size: int
    entry: CatalogEntry | None   # None for a copy cached by cache_copy (no shown entry)
    raw: bytes               # the catalog's stored entry this state belongs to
    tag: int                 # version_tag(raw): what an open of this version was given
    sources: tuple[Source, ...] | None = None   # resolved on the first read
    digests: list | None = None  # known chunk digests of the copy below (None = unknown)
    # The copy `digests` belong to: the file as read so far. Set before the first read when an
    # earlier state of this version was reading another copy than the preferred one.
    copy: Source | None = None
    # index -> digest of chunks served but not (or no longer) in `digests`: served in passthrough,
    # or from another copy before a failover
    passed: dict = field(default_factory=dict)
    next_offset: int = -1    # where a sequential reader will read next
    last_read: float = 0.0   # time.monotonic() of the last read
    preloaded: int = -1      # highest cached chunk already handed to a background load
    followed: bool = False   # the files after it in its folder were considered (_prefetch_next_files)
    # (offset, length) when the shown file is that piece of its source (a cover embedded in a
    # track); `size` is then the source's. Reads are of the piece; chunks are the source's.
    window: tuple[int, int] | None = None
    # (length, XXH3-64) of a picture decoded from the piece (an Ogg comment's base64), and the
    # picture once decoded and checked
    decoded_as: tuple[int, int] | None = None
    picture: bytes | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def served(self) -> dict:
        """index -> digest of every chunk known to have been served for this version."""
        served = dict(self.passed)
        served.update((i, d) for i, d in enumerate(self.digests or ()) if d is not None)
        return served


class Reader:
    def __init__(self, catalog: Catalog, store: ChunkStore, origins: dict[str, Origin],
                 pool: OriginPool, read_timeout: float, health=None, scanner=None,
                 cache_timeout: float = 5.0, kernel_readahead: int = 0):
        self.catalog = catalog
        self.scanner = scanner   # refreshes catalog entries a read found changed or gone
        self.store = store
        self.origins = origins
        self.pool = pool
        self.read_timeout = read_timeout
        self.cache_timeout = cache_timeout   # how long a load from the cache disk may take
        self.health = health
        self.chunk_size = store.chunk_size
        # Reads up to this chunk may still be a tag reader's (see TAG_READER_EXTRA_CHUNKS).
        self.tag_reader_chunks = 1 + -(-(kernel_readahead or KERNEL_READAHEAD) // self.chunk_size)
        self.readahead_idle = READAHEAD_IDLE
        self._inflight: dict[tuple[bytes, int], Future] = {}
        # (version, index) -> digest of the chunks last fetched in passthrough (see _store)
        self._passed_through: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
        self._inflight_lock = threading.Lock()
        self._files: collections.OrderedDict[bytes, OpenFile] = collections.OrderedDict()
        self._files_lock = threading.Lock()
        # Files whose first chunk a _prefetch_next_files fetched: reading one carries the
        # prefetch on to the files after it, as reading an uncached one does.
        self._prefetched: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        # path -> (version tag, copy, digests of the chunks served) of dropped read states
        # (see _remember_served)
        self._moved: collections.OrderedDict[bytes, tuple] = collections.OrderedDict()

    # -- open ------------------------------------------------------------------------------

    def read_path(self, path: bytes, offset: int, size: int, tag: int | None = None) -> bytes:
        """Read by path: the per-file state lives in a small LRU keyed by path, checked against
        the catalog on every read so a rescan that changed the file is seen at once. With
        `tag` (from the open), the read fails if the file is no longer that version."""
        data, start, length = self.read_span(path, offset, size, tag)
        return data[start:start + length]

    def read_span(self, path: bytes, offset: int, size: int, tag: int | None = None) -> tuple[bytes, int, int]:
        """Like read_path, as (buffer, start, length): the bytes are buffer[start:start+length].
        Lets the FUSE layer copy a piece of a cached chunk straight into the kernel's buffer."""
        # Comparing the stored bytes keeps decoding out of the per-read path: an entry is
        # decoded only when a file is first read or has changed.
        raw = self.catalog.raw(path)
        with self._files_lock:
            handle = self._files.get(path)
            if handle is not None and handle.raw == raw:
                self._files.move_to_end(path)
                before = None
            else:
                before, handle = handle, None
        if handle is None:
            handle = self._new_handle(path, raw)
            with self._files_lock:
                moved = self._moved.get(path)
                if before is not None and before.tag == handle.tag and before.sources is not None:
                    # The entry changed but not its version (its list of copies did: the
                    # preferred copy went away, a replica came): opens of it go on from the copy
                    # they read, and any other copy must first agree with what was served.
                    self._carry(before, handle)
                elif moved is not None and moved[0] == handle.tag:
                    # This version's state was dropped for room while it was read from a
                    # replica or in passthrough: opens of it go on from there.
                    handle.copy, handle.passed = moved[1], moved[2]
                    del self._moved[path]
                self._files[path] = handle
                if len(self._files) > OPEN_FILES:
                    _, evicted = self._files.popitem(last=False)
                    self._remember_served(evicted)
        if tag and tag != handle.tag:
            raise OriginChanged(f"{path.decode(errors='replace')} changed since it was opened; open it again")
        return self.read(handle, offset, size)

    def _remember_served(self, handle: OpenFile) -> None:
        """A read state dropped from memory while its file may still be open: what it served
        that the cache index cannot tell again (chunks served in passthrough, or a copy other
        than the preferred one) is kept beside it (bounded), for the state made next. Called
        with _files_lock held."""
        if handle.sources is None or (not handle.passed and handle.copy == handle.sources[0]):
            return
        self._moved[handle.path] = (handle.tag, handle.copy, handle.served())
        self._moved.move_to_end(handle.path)
        if len(self._moved) > MOVED_FILES:
            self._moved.popitem(last=False)

    @staticmethod
    def _carry(before: OpenFile, after: OpenFile) -> None:
        """What `before` served, and from which copy, into `after` (same version, new entry)."""
        after.copy, after.passed = before.copy, before.served()

    @staticmethod
    def _new_handle(path: bytes, raw: bytes | None) -> OpenFile:
        """Read state for the catalog's stored entry `raw` of `path` (NotFound, EISDIR)."""
        if raw is None:
            raise NotFound(path)
        entry = decode_entry(raw)
        if entry.is_dir:
            raise IsADirectoryError(21, "is a directory")
        if entry.is_slice and entry.window:
            return OpenFile(path, entry.source_size, entry, raw, version_tag(raw), window=(entry.offset, entry.window),
                            decoded_as=(entry.size, entry.digest))
        if entry.is_slice:
            return OpenFile(path, entry.source_size, entry, raw, version_tag(raw), window=(entry.offset, entry.size))
        return OpenFile(path, entry.size, entry, raw, version_tag(raw))

    def cache_file(self, path: bytes, progress=None) -> int:
        """Fetch every chunk of `path` that is not cached into the cache (for `musicfs pin`).
        Returns the bytes fetched; `progress(bytes)` after each chunk. Raises what a read would
        (OriginUnavailable, ReadTimeout, OriginChanged...), or CacheWriteError when the cache
        does not take the chunks (passthrough)."""
        handle = self._new_handle(path, self.catalog.raw(path))
        self._resolve(handle)
        return self._cache_whole(handle, progress)

    def cache_copy(self, origin: str, relpath: bytes) -> int:
        """Like cache_file, for one origin's copy of a file as the catalog has it now (pins
        name copies: a retag may have moved the file in the tree). Returns the bytes fetched."""
        source = self._source(origin, relpath)
        if source is None:
            raise OriginUnavailable(f"origin {origin} no longer holds {relpath.decode(errors='replace')}")
        handle = OpenFile(relpath, source.size, None, b"", 0, sources=(source,),
                          digests=self.store.manifest(source.key, source.size, source.mtime_ns),
                          copy=source)
        return self._cache_whole(handle, None)

    def _cache_whole(self, handle: OpenFile, progress) -> int:
        fetched = 0
        for index in range(chunk_count(handle.size, self.chunk_size)):
            digest = handle.digests[index]
            length = self._chunk_length(handle.size, index)
            if digest is not None and self.store.contains(digest) == length:
                continue
            handle.digests[index] = None
            digest, _ = self._fetch_with_failover(handle, index, time.monotonic() + self.read_timeout)
            if digest is None:
                raise CacheWriteError(errno.EIO, "the cache does not take chunks now (passthrough)")
            fetched += length
            if progress is not None:
                progress(length)
        return fetched

    def _source(self, origin: str, relpath: bytes) -> Source | None:
        if origin not in self.origins:
            return None
        record = self.catalog.origin_record(origin, relpath)
        if record is None:
            return None
        kind, size, mtime_ns, token = record
        if kind != KIND_FILE:
            return None
        expect = OriginEntry(b"", KIND_FILE, size, mtime_ns, token=token)
        return Source(origin, relpath, size, mtime_ns, manifest_key(origin, relpath), expect)

    def _resolve(self, handle: OpenFile) -> None:
        with handle.lock:
            if handle.sources is not None:
                return
            sources = self.sources_of(handle.entry)
            first = handle.copy or sources[0]   # the copy reads of this version have used
            if first in sources:
                handle.digests = self.store.manifest(first.key, first.size, first.mtime_ns)
            else:   # that copy is gone: what it served is in `passed`, every other must agree
                handle.digests = [None] * chunk_count(sources[0].size, self.chunk_size)
            handle.copy = first
            handle.size = sources[0].size
            handle.sources = tuple(sources)

    def sources_of(self, entry: CatalogEntry) -> list[Source]:
        """The copies of a file a read would use, preferred first (OriginUnavailable if none)."""
        sources = [s for s in (self._source(origin, relpath) for origin, relpath in entry.sources) if s is not None]
        if not sources:
            raise OriginUnavailable("no configured origin holds this file any more")
        # Replicas count only when they are the same size as the preferred copy.
        return [s for s in sources if s.size == sources[0].size]

    # -- read ------------------------------------------------------------------------------

    def read(self, handle: OpenFile, offset: int, size: int) -> tuple[bytes, int, int]:
        """(buffer, start, length) of the bytes at offset; see read_span."""
        if handle.decoded_as is not None:
            return self._read_decoded(handle, offset, size)
        return self._read_piece(handle, offset, size)

    def _read_decoded(self, handle: OpenFile, offset: int, size: int) -> tuple[bytes, int, int]:
        """A picture decoded from the piece of the track it lies in (read like any bytes of the
        track: cached, verified), checked against what the scan saw: never other bytes."""
        picture = handle.picture
        if picture is None:
            window = handle.window[1]
            parts, done = [], 0
            while done < window:
                data, start, length = self._read_piece(handle, done, window - done)
                if not length:
                    break
                parts.append(data[start:start + length])
                done += length
            picture = ogg_picture(b"".join(parts))
            length, digest = handle.decoded_as
            if picture is None or len(picture) != length or xxhash.xxh3_64_intdigest(picture) != digest:
                raise ChunkCorrupt(f"{handle.path.decode(errors='replace')}: the picture decoded from its track "
                                   f"is not the one its tags were read with")
            handle.picture = picture
        return picture, min(offset, len(picture)), max(0, min(size, len(picture) - offset))

    def _read_piece(self, handle: OpenFile, offset: int, size: int) -> tuple[bytes, int, int]:
        if handle.sources is None:
            self._resolve(handle)
        if handle.window is not None:
            start, length = handle.window
            if offset >= length:
                return b"", 0, 0
            offset, size = start + offset, min(size, length - offset)
        if offset >= handle.size or size <= 0:
            return b"", 0, 0
        end = min(offset + size, handle.size)
        cs = self.chunk_size
        first, last = offset // cs, (end - 1) // cs
        deadline = time.monotonic() + self.read_timeout
        follow = (first == 0 and not handle.followed
                  and (handle.digests[0] is None or self._was_prefetched(handle.path)))
        if first == last:
            # No copy: the caller copies this piece of the chunk where it is needed.
            result = (self._chunk(handle, first, deadline), offset - first * cs, end - offset)
        else:
            parts = []
            for index in range(first, last + 1):
                data = self._chunk(handle, index, deadline)
                lo = max(offset - index * cs, 0)
                hi = min(end - index * cs, len(data))
                parts.append(data[lo:hi])
            joined = b"".join(parts)
            result = (joined, 0, len(joined))
        # FUSE threads may deliver a sequential reader's requests slightly out of order.
        sequential = abs(offset - handle.next_offset) <= cs
        if not sequential:
            # A new run (a re-read from the start, a seek): chunks preloaded for an earlier
            # run may long be gone from memory.
            handle.preloaded = last
        if sequential and handle.next_offset > 0:
            # Only once a read continues the one before: a file's first read may be all there
            # is (a tag scanner reads a few KiB of each file), and reading ahead then would
            # fetch chunks nobody reads - 6 MiB a file over SFTP, 16 over S3.
            self._read_ahead(handle, last + 1)
        handle.next_offset = end
        handle.last_read = time.monotonic()
        if follow:
            handle.followed = True
            self._prefetch_next_files(handle)
        return result

    def _chunk_length(self, size: int, index: int) -> int:
        return min(self.chunk_size, size - index * self.chunk_size)

    def _chunk(self, handle: OpenFile, index: int, deadline: float) -> bytes:
        digest = handle.digests[index]
        if digest is not None:
            try:
                return self._cached(digest, self._chunk_length(handle.size, index), deadline)
            except (ChunkMissing, ChunkCorrupt):
                # Dropped by the store, or its disk hangs: fetched below, and must be the same
                # bytes. Until it is cached again, reads do not try the cache disk for it.
                handle.passed.setdefault(index, digest)
                handle.digests[index] = None
        else:
            # Passthrough: the chunk may be in memory, served to the read before (the kernel
            # asks for a chunk in 128 KiB pieces) or read ahead.
            held = handle.passed.get(index) or self._passed_through_digest(handle.copy, index)
            data = self.store.get_verified(held) if held is not None else None
            if data is not None:
                handle.passed[index] = held
                return data
        digest, data = self._fetch_with_failover(handle, index, deadline)
        if digest is not None:
            handle.digests[index] = digest
        else:   # not cached (passthrough): what was served must stay known all the same (_agrees);
            # the fetch noted its digest and kept it in memory (_store), unless noted too long ago
            handle.passed[index] = self._passed_through_digest(handle.copy, index) or digest_of(data)
        return data

    def _cached(self, digest: bytes, length: int, deadline: float) -> bytes:
        """A cached chunk: from memory, or loaded from the cache disk in the pool, waiting at most
        `cache_timeout` - a hung cache disk must not hang the read (it goes to an origin)."""
        data = self.store.get_verified(digest)
        if data is not None:
            return data
        if self.store.loads_suspended:
            raise ChunkMissing("the cache disk does not answer")
        future = self.pool.submit(CACHE_DISK, self.store.get, digest, length, lane=LOAD_LANE)
        try:
            return future.result(timeout=max(min(deadline - time.monotonic(), self.cache_timeout), 0))
        except FutureTimeout:
            future.cancel()
            self.store.suspend_loads(f"loading a chunk took more than {self.cache_timeout:g}s")
            raise ChunkMissing("the cache disk did not answer") from None

    def _fetch_with_failover(self, handle: OpenFile, index: int, deadline: float):
        known = handle.digests[index] or handle.passed.get(index)
        errors = []
        for source in self._ordered(handle.sources):
            try:
                future = self._fetch(source, index)
            except OriginUnavailable as e:  # known to be down: next replica, without waiting
                errors.append(str(e))
                continue
            try:
                digest, data = self._wait_or_refetch(future, source, index, deadline)
            except FutureTimeout:
                # The kernel retries a failed read page by page: those retries must not each
                # wait again for this fetch (one read() of the program's would take that long).
                future.gave_up = True
                if time.monotonic() - future.started < self.read_timeout:
                    # A span still arriving, too slowly for this read (one that skipped ahead
                    # into it): slow, not failing.
                    raise ReadTimeout(f"origin {source.origin} is sending this part of the file too slowly; "
                                      f"it did not come within {self.read_timeout:g}s") from None
                self._report(source.origin, ReadTimeout("read timed out"))
                raise ReadTimeout(f"origin {source.origin} did not answer within {self.read_timeout:g}s") from None
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
                if not self._agrees(handle, source, index, deadline):
                    errors.append(f"{source.origin}: holds another version of this file than the one read so far")
                    continue
                handle.copy = source   # reads of this file go on from it (see _remember_served)
            return digest, data
        raise OriginUnavailable("; ".join(errors) or "no origin can serve this file")

    def _wait_or_refetch(self, future: Future, source: Source, index: int, deadline: float):
        """The result of a fetch; if it was a span whose request broke off after some of its
        chunks came but before this one (a dropped connection), this chunk alone, asked for
        again with the usual retries: the server answers, and its other chunks arrived."""
        try:
            return self._wait(future, deadline)
        except FutureTimeout:
            raise   # (an OSError since Python 3.11)
        except (OriginUnavailable, OSError):
            # Only when the span's request was answered: one that got no answer at all (a hung
            # or dead server) would be asked again for as long once more.
            if not getattr(future, "span_answered", False):
                raise
        return self._wait(self._fetch(source, index), deadline)

    def _wait(self, future: Future, deadline: float):
        """The result of a fetch. A fetch gets read_timeout, however many reads wait on it: the
        kernel retries a failed readahead page by page, and each retry must not wait anew. A
        chunk of a span gets it from when the chunk before it arrived (see _fetch_span)."""
        while True:
            if getattr(future, "gave_up", False) and not future.done():
                raise FutureTimeout
            started = future.started
            until = min(deadline, started + self.read_timeout)
            try:
                return future.result(timeout=max(until - time.monotonic(), 0))
            except FutureTimeout:
                if future.started == started or time.monotonic() >= deadline:
                    raise

    def _agrees(self, handle: OpenFile, source: Source, index: int, deadline: float) -> bool:
        """Whether `source` (another copy than the one read so far) has the same bytes in every
        chunk the file has known digests for, besides `index`. A replica of the same size may be
        another version (a retag that kept the size, a backup not synced yet): its chunks may
        then only be served if all the chunks known from the other copy are its own too, so that
        the file as read is exactly this copy. Its digests come from its own manifest where
        cached, else the chunks are fetched from it (and cached under it): the price of
        changing copies in the middle of a file, paid once per open file."""
        theirs = self.store.manifest(source.key, source.size, source.mtime_ns)
        pending = []
        for other, ours in handle.served().items():
            if other == index:
                continue
            if theirs[other] is not None:
                if theirs[other] != ours:
                    return False
                continue
            try:
                pending.append((ours, self._fetch(source, other)))
            except OriginUnavailable:
                return False
        for ours, future in pending:
            try:
                digest, data = future.result(timeout=max(deadline - time.monotonic(), 0))
            except Exception:   # noqa: BLE001 - this copy cannot prove itself now: not used
                return False
            if (digest if digest is not None else digest_of(data)) != ours:
                return False
        return True

    def _report(self, origin: str, error: BaseException) -> None:
        if self.health is not None:
            self.health.report_failure(origin, error)

    def _ordered(self, sources):
        if self.health is None or len(sources) == 1:
            return sources
        return self.health.order(sources)

    def _fetch(self, source: Source, index: int) -> Future:
        """The shared fetch of one chunk of one source (started if nobody is fetching it)."""
        key = (source.version, index)
        with self._inflight_lock:
            future = self._inflight.get(key)
            # A failed fetch is forgotten by a callback that may run after its waiters woke:
            # one asking again gets a new fetch, not the old failure.
            if future is not None and not (future.done() and (future.cancelled() or future.exception())):
                return future
            if self.health is not None:
                self.health.admit(source.origin)  # raises OriginUnavailable when known dead
            future = self.pool.submit(source.origin, self._fetch_chunk, source, index)
            future.started = time.monotonic()
            self._inflight[key] = future
        future.add_done_callback(functools.partial(self._forget, key))
        return future

    def _fetch_chunk(self, source: Source, index: int):
        """Runs in the pool: one range read of one chunk, stored if the cache takes it."""
        length = self._chunk_length(source.size, index)
        known = self.store.manifest(source.key, source.size, source.mtime_ns)[index]
        if known is not None and not self.store.loads_suspended:  # cached meanwhile (a readahead, or a read that waited elsewhere)
            try:
                return known, self._cached(known, length, time.monotonic() + self.cache_timeout)
            except (ChunkMissing, ChunkCorrupt):
                pass
        data = self._origin_read(source, index, length)
        self.store.misses += 1
        return self._store(source, index, data), data

    def _fetch_span(self, source: Source, first: int, futures: list[Future], handle: OpenFile) -> None:
        """Runs in the pool: chunks first.. (one future each) with one origin request, each
        stored and handed to its readers as soon as its bytes are there; a failure fails every
        chunk not handed out yet. Stops once nobody has read the file for readahead_idle: a
        long span from a slow server must not hold the origin's worker for a reader that
        went away (a reader that comes back asks for the rest on its own)."""
        origin = self.origins[source.origin]
        try:
            lengths = [self._chunk_length(source.size, index) for index in range(first, first + len(futures))]
            pieces = origin.read_pieces(source.relpath, first * self.chunk_size, lengths, source.expect)
            with self._origin_errors(source), contextlib.closing(pieces):
                for index, (length, future) in enumerate(zip(lengths, futures), first):
                    piece = next(pieces, b"")
                    self._check_length(origin, source, index, piece, length)
                    self.store.misses += 1
                    future.set_result((self._store(source, index, piece), piece))
                    # A span that is making progress is not hung: the time its chunks take to
                    # arrive counts from the last one that did (a large span on a slow link
                    # takes longer than read_timeout in all).
                    now = time.monotonic()
                    for waiting in futures[index + 1 - first:]:
                        waiting.started = now
                        waiting.span_answered = True
                    if now - handle.last_read > self.readahead_idle and index + 1 - first < len(futures):
                        raise OriginTransient(f"readahead of {source.relpath.decode(errors='replace')} stopped: "
                                              f"not read for {self.readahead_idle:g}s")
        except BaseException as e:
            for future in futures:
                if not future.done():
                    future.set_exception(e)

    def _origin_read(self, source: Source, index: int, length: int) -> bytes:
        """`length` bytes from chunk `index` on, of exactly the version the catalog describes."""
        origin = self.origins[source.origin]
        with self._origin_errors(source):
            data = origin.read(source.relpath, index * self.chunk_size, length, source.expect)
            self._check_length(origin, source, index, data, length)
        return data

    @staticmethod
    def _check_length(origin: Origin, source: Source, index: int, data: bytes, length: int) -> None:
        if len(data) != length:
            raise OriginChanged(f"{source.relpath.decode(errors='replace')} on {source.origin} returned "
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
            raise OriginChanged(f"{source.relpath.decode(errors='replace')} is no longer on origin "
                                f"{source.origin}") from None

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
            with self._inflight_lock:
                self._passed_through[(source.version, index)] = passed
                self._passed_through.move_to_end((source.version, index))
                if len(self._passed_through) > PASSED_THROUGH_KEPT:
                    self._passed_through.popitem(last=False)
        return digest

    def _passed_through_digest(self, source: Source, index: int) -> bytes | None:
        with self._inflight_lock:
            return self._passed_through.get((source.version, index))

    def _cache(self, source: Source, index: int, data: bytes) -> bytes | None:
        if self.store.passthrough:
            return None
        put = functools.partial(self.store.put, data, manifest=(source.key, source.size, source.mtime_ns, index),
                                record_if=functools.partial(self._still_catalogued, source))
        future = self.pool.submit(CACHE_DISK, put, lane=LOAD_LANE)
        try:
            return future.result(timeout=self.cache_timeout)
        except CacheWriteError:
            return None   # the store logged the transition to passthrough
        except FutureTimeout:
            self.store.suspend_loads(f"writing a chunk took more than {self.cache_timeout:g}s")
            return None

    def _still_catalogued(self, source: Source, txn) -> bool:
        """Whether the catalog still describes `source`'s version (asked in the transaction that
        records a chunk of it): a fetch that was under way when a rescan saw the file change
        must not put the old version's bytes into the chunk list of a new version of the same
        size and mtime (an S3 object replaced within the same second differs only in its ETag)."""
        return self.catalog.origin_record(source.origin, source.relpath, txn) == \
            (KIND_FILE, source.size, source.mtime_ns, source.expect.token)

    def _read_ahead(self, handle: OpenFile, index: int) -> None:
        count = chunk_count(handle.size, self.chunk_size)
        source = handle.copy   # the copy the file is being read from (a replica, after a failover)
        if source not in handle.sources:
            return   # gone from the catalog: the next read's failover picks (and proves) another
        origin = self.origins.get(source.origin)
        depth = getattr(origin, "readahead_chunks", READAHEAD_CHUNKS)
        span = getattr(origin, "span_chunks", 1)
        tag_reader = index <= self.tag_reader_chunks
        if tag_reader:
            # Maybe a tag reader going on to the cover art, which stops soon; past this point,
            # a player or a copy, which reads to the end.
            depth = min(depth, self.tag_reader_chunks + TAG_READER_EXTRA_CHUNKS + 1 - index)
        if self.store.passthrough:
            # What is read ahead now waits in memory for its read (the store's memory of
            # verified chunks): no further ahead than it holds, with room for the reader.
            held = max(self.store.verified.capacity // self.chunk_size // 2, 1)
            depth, span = min(depth, held), min(span, held)
        # Chunks kept in memory only matter while the cache disk does not serve them.
        in_memory = self._in_memory if self.store.passthrough or self.store.loads_suspended else _never
        missing = []
        for ahead in range(index, min(index + depth, count)):
            digest = handle.digests[ahead]
            if digest is not None and not self.store.loads_suspended:
                # Cached: load and verify it in the background, so the reader does not wait
                # for one chunk file after another (the kernel reads ahead only within a file).
                if handle.preloaded < ahead < index + PRELOAD_AHEAD:
                    handle.preloaded = ahead
                    self.pool.submit(CACHE_DISK, self.store.preload, digest,
                                     self._chunk_length(handle.size, ahead), lane=PRELOAD_LANE)
                continue
            if not in_memory(handle, ahead):
                missing.append(ahead)
        if span > 1 and missing and not tag_reader:
            # Whole spans, aligned to multiples of `span`: a reader moving one chunk at a time
            # would otherwise start a one-chunk request at the window's edge each step.
            groups = sorted({ahead // span for ahead in missing})
            missing = [ahead for group in groups
                       for ahead in range(max(group * span, index), min((group + 1) * span, count))
                       if handle.digests[ahead] is None and not in_memory(handle, ahead)]
        try:
            for run in self._runs(source, missing, span):
                futures = self._fetch_run(source, run, handle)
                for ahead, future in zip(run, futures):
                    future.add_done_callback(functools.partial(self._learn, handle, source, ahead))
        except Exception:  # readahead is an optimisation; the real read reports errors
            return

    def _in_memory(self, handle: OpenFile, index: int) -> bool:
        """Whether a chunk that is not to be had from the cache disk (passthrough) is in memory,
        served or read ahead before."""
        held = handle.passed.get(index) or handle.digests[index] or self._passed_through_digest(handle.copy, index)
        return held is not None and self.store.verified.get(held) is not None

    def _prefetch_next_files(self, handle: OpenFile) -> None:
        """Start fetching the first chunk of the next files in this file's folder (at most the
        origin's prefetch_next_files), where it is not cached: called when this file's first
        chunk was not cached (or came from such a prefetch), so a scan of the folder finds its
        next files fetched or on their way instead of paying each one's round trips in turn."""
        count = getattr(self.origins.get(handle.sources[0].origin), "prefetch_next_files", 0)
        if not count:
            return
        try:
            for path in self.catalog.next_files(handle.path, count):
                raw = self.catalog.raw(path)
                if raw is None:
                    continue
                source = self._ordered(self.sources_of(decode_entry(raw)))[0]
                if (source.size == 0 or not getattr(self.origins.get(source.origin), "prefetch_next_files", 0)
                        or self.store.manifest(source.key, source.size, source.mtime_ns)[0] is not None):
                    continue
                try:
                    self._fetch(source, 0)
                except OriginUnavailable:   # known to be down: a replica is the read's business
                    continue
                with self._files_lock:
                    self._prefetched[path] = None
                    if len(self._prefetched) > OPEN_FILES:
                        self._prefetched.popitem(last=False)
        except Exception:   # an optimisation: the files' own reads report errors
            log.debug("prefetching the files after %r failed", handle.path, exc_info=True)

    def _was_prefetched(self, path: bytes) -> bool:
        if not self._prefetched:   # (no remote origin read yet: no lock on the local read path)
            return False
        with self._files_lock:
            if path not in self._prefetched:
                return False
            del self._prefetched[path]
            return True

    def _runs(self, source: Source, indices: list[int], span: int):
        """The chunks among `indices` nobody is fetching yet, as runs of consecutive ones within
        one span (aligned to multiples of `span`), one origin request each."""
        run: list[int] = []
        with self._inflight_lock:
            free = [index for index in indices if (source.version, index) not in self._inflight]
        for index in free:
            if run and (index != run[-1] + 1 or index % span == 0):
                yield run
                run = []
            run.append(index)
        if run:
            yield run

    def _fetch_run(self, source: Source, run: list[int], handle: OpenFile) -> list[Future]:
        """The shared fetches of consecutive chunks of one source: one request for all of them,
        unless it is one chunk or another reader started fetching some of them meanwhile."""
        futures = self._start_span(source, run, handle) if len(run) > 1 else None
        if futures is None:
            return [self._fetch(source, index) for index in run]
        return futures

    def _start_span(self, source: Source, run: list[int], handle: OpenFile) -> list[Future] | None:
        with self._inflight_lock:
            if any((source.version, index) in self._inflight for index in run):
                return None
            if self.health is not None:
                self.health.admit(source.origin)  # raises OriginUnavailable when known dead
            futures = [Future() for _ in run]
            now = time.monotonic()
            for index, future in zip(run, futures):
                future.started = now
                self._inflight[(source.version, index)] = future
        for index, future in zip(run, futures):
            future.add_done_callback(functools.partial(self._forget, (source.version, index)))
        task = self.pool.submit(source.origin, self._fetch_span, source, run[0], futures, handle)
        task.add_done_callback(functools.partial(self._abandoned, futures))
        return futures

    @staticmethod
    def _abandoned(futures: list[Future], task: Future) -> None:
        """A span task that never ran (dropped at shutdown) leaves no reader waiting on its chunks."""
        if task.cancelled():
            for future in futures:
                future.cancel()
        elif task.exception() is not None:
            for future in futures:
                if not future.done():
                    future.set_exception(task.exception())

    def _forget(self, key, done: Future) -> None:
        with self._inflight_lock:
            if self._inflight.get(key) is done:
                del self._inflight[key]

    @staticmethod
    def _learn(handle: OpenFile, copy: Source, index: int, future: Future) -> None:
        """A chunk read ahead from `copy`: known from now on, if the file is being read from
        that copy (a read may have moved to a replica meanwhile; see _agrees). One read ahead
        in passthrough is not cached: _store kept it in memory for the read to come."""
        if future.cancelled() or future.exception() is not None or handle.copy != copy:
            return
        digest = future.result()[0]
        if digest is not None and handle.digests[index] is None:
            handle.digests[index] = digest


def _never(*_) -> bool:
    return False
