"""Reading ahead of a sequential reader, and of a folder's next files.

* Sequential reading (a read that continues the one before) fetches the next chunks ahead from
  origins, or, where they are cached, loads them into memory ahead in the pool's preload lane
  (a few workers for the cache disk). A file's first read alone reads nothing ahead.
  An origin that pays a lot per request (Origin.span_chunks > 1: S3) is asked for several
  consecutive chunks ahead in ONE request; the bytes are split into the usual chunks, each
  hashed, stored and handed to its readers on its own, and the one request proves the version
  of all of them (the same check as a single chunk's).
* Where an origin pays round trips per file (Origin.prefetch_next_files: sftp, s3), reading a
  file whose first chunk was not cached also starts fetching the first chunk of the next few
  files of its folder, as a library scanner or a player going through an album will read them
  next; reading one of those carries this on. Beyond that, no bytes are fetched that were not
  asked for.
"""
from __future__ import annotations

import functools
import logging

from ..cas.store import chunk_count
from ..catalog import decode_entry
from ..errors import OriginUnavailable
from ..pool import CACHE_DISK, PRELOAD_LANE
from .failover import Failover
from .fetch import Fetch, Fetcher
from .files import FileStates, OpenFile, Source, Sources

log = logging.getLogger(__name__)

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
# Cached chunks loaded into memory ahead of a sequential reader, whatever the origin's fetch
# window: they land in the store's small memory of verified chunks (8 MiB), where loading much
# further ahead would evict them before the reader gets to them.
PRELOAD_AHEAD = 6


class ReadAhead:
    def __init__(self, fetcher: Fetcher, failover: Failover, sources: Sources, files: FileStates,
                 kernel_readahead: int = 0):
        self.fetcher = fetcher
        self.failover = failover
        self.sources = sources
        self.files = files
        self.store = fetcher.store
        self.chunk_size = fetcher.chunk_size
        # Reads up to this chunk may still be a tag reader's (see TAG_READER_EXTRA_CHUNKS).
        self.tag_reader_chunks = 1 + -(-(kernel_readahead or KERNEL_READAHEAD) // self.chunk_size)

    def after(self, handle: OpenFile, index: int) -> None:
        """Start what a sequential reader about to read chunk `index` of `handle` needs next."""
        count = chunk_count(handle.size, self.chunk_size)
        source = handle.copy   # the copy the file is being read from (a replica, after a failover)
        if source not in handle.sources:
            return   # gone from the catalog: the next read's failover picks (and proves) another
        origin = self.fetcher.settings.origins.get(source.origin)
        depth = getattr(origin, "readahead_chunks", READAHEAD_CHUNKS)
        span = getattr(origin, "span_chunks", 1)
        tag_reader = index <= self.tag_reader_chunks
        if tag_reader:
            # Maybe a tag reader going on to the cover art, which stops soon; past this point,
            # a player or a copy, which reads to the end.
            depth = min(depth, self.tag_reader_chunks + TAG_READER_EXTRA_CHUNKS + 1 - index)
        if self.store.disk.passthrough:
            # What is read ahead now waits in memory for its read (the store's memory of
            # verified chunks): no further ahead than it holds, with room for the reader.
            held = max(self.store.verified.capacity // self.chunk_size // 2, 1)
            depth, span = min(depth, held), min(span, held)
        # Chunks kept in memory only matter while the cache disk does not serve them.
        in_memory = self._in_memory if self.store.disk.passthrough or self.store.disk.loads_suspended else _never
        missing = []
        for ahead in range(index, min(index + depth, count)):
            digest = handle.digests[ahead]
            if digest is not None and not self.store.disk.loads_suspended:
                # Cached: load and verify it in the background, so the reader does not wait
                # for one chunk file after another (the kernel reads ahead only within a file).
                if handle.preloaded < ahead < index + PRELOAD_AHEAD:
                    handle.preloaded = ahead
                    self.fetcher.pool.submit(CACHE_DISK, self.store.preload, digest,
                                             self.fetcher.chunk_length(handle.size, ahead), lane=PRELOAD_LANE)
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
            for run in self.fetcher.free_runs(source, missing, span):
                fetches = self.fetcher.fetch_run(source, run, handle)
                for ahead, fetch in zip(run, fetches):
                    fetch.when_done(functools.partial(_learn, handle, source, ahead))
        except Exception:  # readahead is an optimisation; the real read reports errors
            return

    def _in_memory(self, handle: OpenFile, index: int) -> bool:
        """Whether a chunk that is not to be had from the cache disk (passthrough) is in memory,
        served or read ahead before."""
        held = (handle.passed.get(index) or handle.digests[index]
                or self.fetcher.passed_through_digest(handle.copy, index))
        return held is not None and self.store.verified.get(held) is not None

    def next_files(self, handle: OpenFile) -> None:
        """Start fetching the first chunk of the next files in this file's folder (at most the
        origin's prefetch_next_files), where it is not cached: called when this file's first
        chunk was not cached (or came from such a prefetch), so a scan of the folder finds its
        next files fetched or on their way instead of paying each one's round trips in turn."""
        origins = self.fetcher.settings.origins
        count = getattr(origins.get(handle.sources[0].origin), "prefetch_next_files", 0)
        if not count:
            return
        catalog = self.sources.catalog
        try:
            for path in catalog.next_files(handle.path, count):
                raw = catalog.raw(path)
                if raw is None:
                    continue
                source: Source = self.failover.ordered(self.sources.of(decode_entry(raw)))[0]
                if (source.size == 0 or not getattr(origins.get(source.origin), "prefetch_next_files", 0)
                        or self.store.manifest(source.key, source.size, source.mtime_ns)[0] is not None):
                    continue
                try:
                    self.fetcher.fetch(source, 0)
                except OriginUnavailable:   # known to be down: a replica is the read's business
                    continue
                self.files.mark_prefetched(path)
        except Exception:   # an optimisation: the files' own reads report errors
            log.debug("prefetching the files after %r failed", handle.path, exc_info=True)


def _learn(handle: OpenFile, copy: Source, index: int, fetch: Fetch) -> None:
    """A chunk read ahead from `copy`: known from now on, if the file is being read from that
    copy (a read may have moved to a replica meanwhile; see Failover.agrees). One read ahead in
    passthrough is not cached: the fetcher kept it in memory for the read to come."""
    if fetch.failed() or handle.copy != copy:
        return
    digest = fetch.result()[0]
    if digest is not None and handle.digests[index] is None:
        handle.digests[index] = digest


def _never(*_) -> bool:
    return False
