"""Per-file read state: which copies of a file a read may use, what is known of its chunks,
and where a sequential reader is. One state per shown file, kept in a small LRU keyed by path
and checked against the catalog's stored entry on every read."""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

from ..cas.store import chunk_count, manifest_key
from ..catalog import CatalogEntry, decode_entry, version_tag
from ..errors import NotFound, OriginUnavailable
from ..origins import KIND_FILE, OriginEntry

# Files whose read state (known chunk digests, sequential position) is kept between reads.
OPEN_FILES = 1024
# Files whose read state was dropped while it knew what the cache index cannot tell again
# (see FileStates._remember_served): few at a time.
MOVED_FILES = 4096


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

    @property
    def name(self) -> str:
        return self.relpath.decode(errors="replace")


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
    followed: bool = False   # the files after it in its folder were considered (ReadAhead.next_files)
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


class Sources:
    """The copies of catalog files, as Source objects, from the catalog's methods."""

    def __init__(self, catalog, configured, chunk_size: int):
        self.catalog = catalog
        self.configured = configured   # () -> the configured origins by name, now (a reload replaces them)
        self.chunk_size = chunk_size

    def one(self, origin: str, relpath: bytes) -> Source | None:
        """`origin`'s copy of `relpath` as the catalog has it now, if it is a configured origin's file."""
        if origin not in self.configured():
            return None
        record = self.catalog.origin_record(origin, relpath)
        if record is None:
            return None
        kind, size, mtime_ns, token = record
        if kind != KIND_FILE:
            return None
        expect = OriginEntry(b"", KIND_FILE, size, mtime_ns, token=token)
        return Source(origin, relpath, size, mtime_ns, manifest_key(origin, relpath), expect)

    def of(self, entry: CatalogEntry) -> list[Source]:
        """The copies of a file a read would use, preferred first (OriginUnavailable if none)."""
        sources = [s for s in (self.one(origin, relpath) for origin, relpath in entry.sources) if s is not None]
        if not sources:
            raise OriginUnavailable("no configured origin holds this file any more")
        # Replicas count only when they are the same size as the preferred copy.
        return [s for s in sources if s.size == sources[0].size]

    def resolve(self, handle: OpenFile, manifest) -> None:
        """Fill in a state's copies and known chunk digests (`manifest(source)`), once."""
        with handle.lock:
            if handle.sources is not None:
                return
            sources = self.of(handle.entry)
            first = handle.copy or sources[0]   # the copy reads of this version have used
            if first in sources:
                handle.digests = manifest(first)
            else:   # that copy is gone: what it served is in `passed`, every other must agree
                handle.digests = [None] * chunk_count(sources[0].size, self.chunk_size)
            handle.copy = first
            handle.size = sources[0].size
            handle.sources = tuple(sources)


def new_state(path: bytes, raw: bytes | None) -> OpenFile:
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


class FileStates:
    """The read states of recently read files, by path (an LRU of OPEN_FILES), and what the
    ones dropped for room knew that the cache index cannot tell again."""

    def __init__(self):
        self._files: collections.OrderedDict[bytes, OpenFile] = collections.OrderedDict()
        self._lock = threading.Lock()
        # path -> (version tag, copy, digests of the chunks served) of dropped states
        self._moved: collections.OrderedDict[bytes, tuple] = collections.OrderedDict()
        # Files whose first chunk was prefetched (ReadAhead.next_files): reading one carries
        # the prefetch on to the files after it, as reading an uncached one does.
        self._prefetched: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def state(self, path: bytes, raw: bytes | None) -> OpenFile:
        """The read state of `path` for the catalog's stored entry `raw`: the kept one if the
        entry is unchanged (comparing the stored bytes keeps decoding out of the per-read path),
        else a new one, carrying on what an earlier state of the same version served."""
        with self._lock:
            handle = self._files.get(path)
            if handle is not None and handle.raw == raw:
                self._files.move_to_end(path)
                return handle
            before = handle
        handle = new_state(path, raw)
        with self._lock:
            moved = self._moved.get(path)
            if before is not None and before.tag == handle.tag and before.sources is not None:
                # The entry changed but not its version (its list of copies did: the preferred
                # copy went away, a replica came): opens of it go on from the copy they read,
                # and any other copy must first agree with what was served.
                handle.copy, handle.passed = before.copy, before.served()
            elif moved is not None and moved[0] == handle.tag:
                # This version's state was dropped for room while it was read from a replica or
                # in passthrough: opens of it go on from there.
                handle.copy, handle.passed = moved[1], moved[2]
                del self._moved[path]
            self._files[path] = handle
            if len(self._files) > OPEN_FILES:
                _, evicted = self._files.popitem(last=False)
                self._remember_served(evicted)
        return handle

    def _remember_served(self, handle: OpenFile) -> None:
        """A state dropped from memory while its file may still be open: what it served that the
        cache index cannot tell again (chunks served in passthrough, or a copy other than the
        preferred one) is kept beside it (bounded), for the state made next. Lock held."""
        if handle.sources is None or (not handle.passed and handle.copy == handle.sources[0]):
            return
        self._moved[handle.path] = (handle.tag, handle.copy, handle.served())
        self._moved.move_to_end(handle.path)
        if len(self._moved) > MOVED_FILES:
            self._moved.popitem(last=False)

    def mark_prefetched(self, path: bytes) -> None:
        with self._lock:
            self._prefetched[path] = None
            if len(self._prefetched) > OPEN_FILES:
                self._prefetched.popitem(last=False)

    def was_prefetched(self, path: bytes) -> bool:
        """Whether `path`'s first chunk was prefetched (asked once: the mark goes)."""
        if not self._prefetched:   # (no remote origin read yet: no lock on the local read path)
            return False
        with self._lock:
            if path not in self._prefetched:
                return False
            del self._prefetched[path]
            return True
