"""The read engine's front: byte ranges of shown files, from verified chunks or, on a miss, from
origins (see the package docstring for the guarantees)."""
from __future__ import annotations

import errno
import time

import xxhash

from ..cas.store import CacheWriteError, ChunkStore, chunk_count, digest_of
from ..catalog.tags import ogg_picture
from ..errors import ChunkCorrupt, ChunkMissing, OriginChanged, OriginUnavailable
from ..pool import OriginPool
from .failover import Failover
from .fetch import Fetcher, ReadSettings
from .files import FileStates, OpenFile, Source, Sources, new_state
from .readahead import ReadAhead


class Reader:
    def __init__(self, catalog, store: ChunkStore, settings: ReadSettings, pool: OriginPool, health=None,
                 scanner=None, kernel_readahead: int = 0):
        self.catalog = catalog
        self.store = store
        self.chunk_size = store.chunk_size
        self.files = FileStates()
        self.fetcher = Fetcher(catalog, store, settings, pool, health=health, scanner=scanner)
        self.sources = Sources(catalog, lambda: self.fetcher.settings.origins, self.chunk_size)
        self.failover = Failover(self.fetcher, health)
        self.readahead = ReadAhead(self.fetcher, self.failover, self.sources, self.files, kernel_readahead)

    def apply(self, settings: ReadSettings) -> None:
        """A reload's origins and timeouts, swapped whole: reads under way finish with the old ones."""
        self.fetcher.settings = settings

    @property
    def origins(self):
        """The configured origins by name (read-only)."""
        return self.fetcher.settings.origins

    @property
    def tag_reader_chunks(self) -> int:
        return self.readahead.tag_reader_chunks

    def sources_of(self, entry) -> list[Source]:
        """The copies of a file a read would use, preferred first (OriginUnavailable if none)."""
        return self.sources.of(entry)

    # -- reading -------------------------------------------------------------------------------

    def read_path(self, path: bytes, offset: int, size: int, tag: int | None = None) -> bytes:
        """The bytes of `path` at offset; see read_span."""
        data, start, length = self.read_span(path, offset, size, tag)
        return data[start:start + length]

    def read_span(self, path: bytes, offset: int, size: int, tag: int | None = None) -> tuple[bytes, int, int]:
        """(buffer, start, length): the bytes are buffer[start:start+length], so the FUSE layer
        copies a piece of a cached chunk straight into the kernel's buffer. The per-file state
        is checked against the catalog on every read, so a rescan that changed the file is seen
        at once; with `tag` (from the open), the read fails if the file is no longer that version.

        The hot path, a read of a cached chunk already in memory, costs per request: one LMDB
        lookup of the file's stored entry (catalog.raw), one uncontended lock for the file-state
        LRU, the chunk from the store's memory of verified chunks (a dict hit and a counter under
        a lock), readahead's check of the next few chunks' digests, and no pool task; a chunk not
        in memory adds one load in the cache disk's lane (a pread of up to 1 MiB and its XXH3-128
        check) and the wait for it."""
        handle = self.files.state(path, self.catalog.raw(path))
        if tag and tag != handle.tag:
            raise OriginChanged(f"{path.decode(errors='replace')} changed since it was opened; open it again")
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

    def _resolve(self, handle: OpenFile) -> None:
        store = self.store
        self.sources.resolve(handle, lambda source: store.manifest(source.key, source.size, source.mtime_ns))

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
        deadline = time.monotonic() + self.fetcher.settings.read_timeout
        follow = (first == 0 and not handle.followed
                  and (handle.digests[0] is None or self.files.was_prefetched(handle.path)))
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
            self.readahead.after(handle, last + 1)
        handle.next_offset = end
        handle.last_read = time.monotonic()
        if follow:
            handle.followed = True
            self.readahead.next_files(handle)
        return result

    def _chunk(self, handle: OpenFile, index: int, deadline: float) -> bytes:
        digest = handle.digests[index]
        if digest is not None:
            try:
                return self.fetcher.cached(digest, self.fetcher.chunk_length(handle.size, index), deadline)
            except (ChunkMissing, ChunkCorrupt):
                # Dropped by the store, or its disk hangs: fetched below, and must be the same
                # bytes. Until it is cached again, reads do not try the cache disk for it.
                handle.passed.setdefault(index, digest)
                handle.digests[index] = None
        else:
            # Passthrough: the chunk may be in memory, served to the read before (the kernel
            # asks for a chunk in 128 KiB pieces) or read ahead.
            held = handle.passed.get(index) or self.fetcher.passed_through_digest(handle.copy, index)
            data = self.store.get_verified(held) if held is not None else None
            if data is not None:
                handle.passed[index] = held
                return data
        digest, data = self.failover.chunk(handle, index, deadline)
        if digest is not None:
            handle.digests[index] = digest
        else:   # not cached (passthrough): what was served must stay known all the same (agrees);
            # the fetch noted its digest and kept it in memory, unless noted too long ago
            handle.passed[index] = self.fetcher.passed_through_digest(handle.copy, index) or digest_of(data)
        return data

    # -- caching whole files (musicfs pin) -----------------------------------------------------

    def cache_file(self, path: bytes, progress=None) -> int:
        """Fetch every chunk of `path` that is not cached into the cache (for `musicfs pin`).
        Returns the bytes fetched; `progress(bytes)` after each chunk. Raises what a read would
        (OriginUnavailable, ReadTimeout, OriginChanged...), or CacheWriteError when the cache
        does not take the chunks (passthrough)."""
        handle = new_state(path, self.catalog.raw(path))
        self._resolve(handle)
        return self._cache_whole(handle, progress)

    def cache_copy(self, origin: str, relpath: bytes) -> int:
        """Like cache_file, for one origin's copy of a file as the catalog has it now (pins
        name copies: a retag may have moved the file in the tree). Returns the bytes fetched."""
        source = self.sources.one(origin, relpath)
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
            length = self.fetcher.chunk_length(handle.size, index)
            if digest is not None and self.store.contains(digest) == length:
                continue
            handle.digests[index] = None
            digest, _ = self.failover.chunk(handle, index, time.monotonic() + self.fetcher.settings.read_timeout)
            if digest is None:
                raise CacheWriteError(errno.EIO, "the cache does not take chunks now (passthrough)")
            fetched += length
            if progress is not None:
                progress(length)
        return fetched
