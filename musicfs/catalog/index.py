"""The catalog's read side: the lookups the FUSE layer, the reader and the commands make.

Each lookup is one LMDB read transaction; nothing here writes. The shown tree (``entries`` and
``children``) is whatever the view in use made of the origins' records (:mod:`.views`).
"""
from __future__ import annotations

import array
import collections
import heapq
import threading
import time

import xxhash

from ..errors import NotFound
from ..origins.base import KIND_DIR
from ..database import Storage
from .query import Query
from .records import (DISC, FIRST_SEEN, GENERATION, ROOT, SEARCH, SEARCHED, TRACK, UNPLACED, CatalogEntry, decode_placement, decode_search, placed_key, children_prefix, decode_entry, entry_attrs, entry_kind,
                      origin_key, record_version, split, version_tag)


class Found:
    """A track a query matched: its path in the tag view and the fields it was matched on
    (kept as its record, ~200 bytes, and decoded when asked for: a collection of 100k tracks
    is kept while it is listed)."""
    __slots__ = ("path", "record")

    def __init__(self, path: bytes, record: bytes):
        self.path, self.record = path, record

    @property
    def fields(self) -> dict:
        return decode_search(self.record)


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _first(item: tuple):
    return item[0]


class OpenedVersions:
    """The version each path was last opened at, for every path opened: the kernel keeps a
    file's pages across opens only when told the file is the same (FOPEN_KEEP_CACHE); libfuse's
    auto_cache would decide that from size and mtime, which a replacement may keep (a tagger
    keeping the mtime, an S3 object rewritten within the second) while its bytes differ. The
    version tag does not.

    It must hold every file of the library: a path forgotten is opened without its pages, and a
    scan of a library larger than what is kept reads every file from Python again (a bounded
    LRU of 16k paths made a warm scan of 20k files 3x slower per file than of 2k). So it is an
    open-addressing table in two flat arrays of 64-bit words, 16 bytes a path (XXH3-64 of the
    path, the tag), doubling as it fills: 4 MB for 200k paths. A path whose hash equals another's
    (odds ~1e-8 at a million) at worst answers "not the same" and costs that file its pages,
    never the reverse: tags differ between files. At MAX_SLOTS (64 MB) it starts afresh."""

    INITIAL_SLOTS = 1 << 14
    MAX_SLOTS = 1 << 22
    LOAD = 0.7

    def __init__(self):
        self._lock = threading.Lock()
        self._reset(self.INITIAL_SLOTS)

    def _reset(self, slots: int) -> None:
        self._keys = array.array("Q", bytes(8 * slots))
        self._tags = array.array("Q", bytes(8 * slots))
        self._mask = slots - 1
        self._used = 0

    def __len__(self) -> int:
        return self._used

    def same_as_before(self, path: bytes, tag: int) -> bool:
        """Whether the last open of `path` was of version `tag` (then its pages may be kept);
        remembers `tag` as the last."""
        key = xxhash.xxh3_64_intdigest(path) or 1       # 0 marks a free slot
        with self._lock:
            keys, mask = self._keys, self._mask
            slot = key & mask
            while keys[slot] not in (key, 0):
                slot = (slot + 1) & mask
            if keys[slot] == key:
                before, self._tags[slot] = self._tags[slot], tag
                return before == tag
            keys[slot], self._tags[slot] = key, tag
            self._used += 1
            if self._used > self.LOAD * (mask + 1):
                self._grow()
            return False

    def _grow(self) -> None:
        keys, tags = self._keys, self._tags
        slots = 2 * len(keys)
        if slots > self.MAX_SLOTS:
            self._reset(self.INITIAL_SLOTS)   # (every file then keeps its pages from its next open on)
            return
        self._reset(slots)
        mask = self._mask
        for key, tag in zip(keys, tags):
            if key:
                slot = key & mask
                while self._keys[slot]:
                    slot = (slot + 1) & mask
                self._keys[slot], self._tags[slot] = key, tag
                self._used += 1


class RecentChanges:
    """Shown paths whose entry changed lately, and when (monotonic seconds).

    The kernel keeps a file's attributes and pages for up to its attribute timeout; during that
    window a new open must not combine the kernel's old size or old pages with new bytes. The
    FUSE layer asks `recent` on open. Bounded: the oldest entries go first."""

    LIMIT = 100_000

    def __init__(self, window: float = 31.0):
        self.window = window
        self._changed: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def note(self, path: bytes) -> None:
        with self._lock:
            self._changed.pop(path, None)
            self._changed[path] = time.monotonic()
            while len(self._changed) > self.LIMIT:
                self._changed.popitem(last=False)

    def recent(self, path: bytes) -> bool:
        if not self._changed:
            return False
        with self._lock:
            when = self._changed.get(path)
            if when is None:
                return False
            if time.monotonic() - when < self.window:
                return True
            del self._changed[path]
            return False


class Catalog:
    """Read side: lookups and listings straight from LMDB (one read transaction each)."""

    def __init__(self, storage: Storage, recent: RecentChanges | None = None):
        self.storage = storage
        self.recent = recent or RecentChanges()
        self.opened = OpenedVersions()
        self._root_entry = CatalogEntry(KIND_DIR, 0, time.time_ns(), ())

    def lookup(self, path: bytes, txn=None) -> CatalogEntry | None:
        raw = self.raw(path) if txn is None else txn.get(path, db=self.storage.entries)
        if raw is None:
            return self._root_entry if path == ROOT else None
        return decode_entry(raw)

    def raw(self, path: bytes) -> bytes | None:
        """The stored entry of `path`, undecoded: equal bytes mean an unchanged entry."""
        with self.storage.env.begin(db=self.storage.entries) as txn:
            return txn.get(path)

    def open_version(self, path: bytes) -> tuple[int, bool, bool]:
        """(version tag, changed lately, same version as the open before) of a file being
        opened; NotFound if it is not listed."""
        raw = self.raw(path)
        if raw is None:
            raise NotFound(path.decode(errors="replace"))
        if entry_kind(raw) == KIND_DIR:
            raise IsADirectoryError(21, "is a directory")
        tag = version_tag(raw)
        return tag, self.recent.recent(path), self.opened.same_as_before(path, tag)

    def attrs(self, path: bytes) -> tuple[int, int, int] | None:
        """(kind, size, mtime_ns) without decoding sources: the getattr fast path."""
        with self.storage.env.begin(db=self.storage.entries) as txn:
            raw = txn.get(path)
            if raw is None:
                return (KIND_DIR, 0, self._root_entry.mtime_ns) if path == ROOT else None
            return entry_attrs(raw)

    def list(self, path: bytes) -> list[bytes] | None:
        """Names in a directory, sorted; None if `path` is not a directory."""
        children = self.children(path)
        return None if children is None else [name for name, _ in children]

    def children(self, path: bytes) -> list[tuple[bytes, int]] | None:
        """(name, kind) of each entry of a directory, sorted; None if `path` is not a directory."""
        prefix = children_prefix(path)
        cut = len(prefix)
        with self.storage.env.begin() as txn:   # one transaction: this is the readdir hot path
            raw = txn.get(path, db=self.storage.entries)
            if raw is None:
                if path != ROOT:   # the root exists before the first scan has stored it
                    return None
            elif entry_kind(raw) != KIND_DIR:
                return None
            cursor = txn.cursor(db=self.storage.children)
            if not cursor.set_range(prefix):
                return []
            found = []
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                found.append((key[cut:], value[0]))
        return found

    def next_files(self, path: bytes, count: int) -> list[bytes]:
        """Up to `count` files listed after `path` in its directory, in listing order."""
        parent, name = split(path)
        prefix = children_prefix(parent)
        found = []
        with self.storage.env.begin(db=self.storage.children) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix + name + b"\0"):   # the first key after `name`'s
                return found
            for key, value in cursor:
                if not key.startswith(prefix) or len(found) == count:
                    break
                if value[0] != KIND_DIR:
                    found.append(parent.rstrip(b"/") + b"/" + key[len(prefix):])
        return found

    def counts(self) -> tuple[int, int]:
        """(files, directories) in the merged tree."""
        files = dirs = 0
        with self.storage.env.begin(db=self.storage.entries) as txn:
            for raw in txn.cursor().iternext(keys=False, values=True):
                if entry_kind(raw) == KIND_DIR:
                    dirs += 1
                else:
                    files += 1
        return files, dirs

    def last_scan(self, origin: str) -> int:
        with self.storage.begin() as txn:
            return self.storage.get_u64(txn, b"scanned:" + origin.encode())

    def tagged(self, origin: str) -> int:
        """The tag reader version of the last complete scan of `origin` in the tag view (0:
        none yet, e.g. the library was only ever mounted in the paths layout)."""
        with self.storage.begin() as txn:
            return self.storage.get_u64(txn, b"tagged:" + origin.encode())


    def origin_record(self, origin: str, relpath: bytes, txn=None) -> tuple[int, int, int, bytes] | None:
        """(kind, size, mtime_ns, token) of an origin's file as its last scan or refresh saw it.
        With `txn`, asked in that transaction (one that records a chunk, say)."""
        if txn is None:
            with self.storage.env.begin(db=self.storage.origin_files) as own:
                raw = own.get(origin_key(origin, relpath))
        else:
            raw = txn.get(origin_key(origin, relpath), db=self.storage.origin_files)
        return None if raw is None else record_version(raw)

    def unplaced(self, limit: int | None = None) -> tuple[int, list[tuple[str, bytes]]]:
        """(how many, (origin, path on it) of the first `limit`) audio-named files the tag view
        left out because mutagen cannot read them as audio (not tracks)."""
        if self.storage.tagview is None:
            return 0, []
        count, found = 0, []
        with self.storage.env.begin(db=self.storage.tagview) as txn:
            cursor = txn.cursor()
            if cursor.set_range(UNPLACED):
                for key, origin in cursor:
                    if not key.startswith(UNPLACED):
                        break
                    count += 1
                    if limit is None or len(found) < limit:
                        found.append((bytes(origin).decode(), bytes(key[len(UNPLACED):])))
        return count, found

    def search(self, query: Query, limit: int | None = None) -> tuple[int, list[Found]]:
        """(how many tracks of the tag view match, `limit` of them in album artist, album, disc,
        track order), from the tag view's search records, in one read transaction. The first
        `limit` in that order; for a query on added:, the `limit` added last (Recently Added
        shows what came last, not the first artists of the alphabet). Only `limit` matches are
        held at a time (a query that matches a million tracks must not hold a million)."""
        if self.storage.tagview is None:
            return 0, []
        count = 0
        with self.storage.env.begin() as txn:
            def matches():
                nonlocal count
                for relpath, values, raw, added in self._matching(txn, query):
                    count += 1
                    yield (values[1].casefold(), values[2].casefold(), _int(values[DISC]), _int(values[TRACK]),
                           relpath), raw, added
            if limit is None:
                kept = sorted(matches(), key=_first)
            elif query.uses_added:
                kept = sorted(heapq.nlargest(limit, matches(), key=lambda match: match[2]), key=_first)
            else:
                kept = heapq.nsmallest(limit, matches(), key=_first)
            found = []
            for (*_, relpath), raw, _ in kept:
                placed = txn.get(placed_key(relpath), db=self.storage.tagview)
                final = decode_placement(placed).final if placed is not None else b""
                if final:
                    found.append(Found(final, bytes(raw)))
        return count, found

    def _matching(self, txn, query: Query):
        """(relpath, fields, record, added) of each track `query` matches, in the catalog's order."""
        now = time.time_ns()
        words = query.required_text()
        with_path = query.looks_at("path")
        cursor = txn.cursor(db=self.storage.tagview)
        if not cursor.set_range(SEARCH):
            return
        skip = len(SEARCH)
        # The hot loop of every search (100k tracks: every step costs): plain strings, a
        # substring test before anything is split, fields taken by position.
        for key, raw in cursor:
            if not key.startswith(SEARCH):
                break
            text = raw.decode()
            path = key[skip:].decode(errors="replace") if with_path else ""
            if words and not query.may_match(text.casefold() + "\x1f" + path.casefold()):
                continue   # (a term's text is nowhere in the track: no need to look closer)
            values = text.split("\x1f")
            order = values[:SEARCHED + 4]
            added = 0
            if query.uses_added:
                stamp = txn.get(key[skip:], db=self.storage.first_seen)
                added = FIRST_SEEN.unpack(stamp)[0] if stamp is not None else 0
            values[SEARCHED:] = (path, added)   # (Track's fields, in its order)
            if query.matches(values, now):
                yield bytes(key[skip:]), order, raw, added

    def generation(self) -> int:
        """A number that changes whenever the tag view's records change (what search results
        and the files not placed depend on)."""
        if self.storage.tagview is None:
            return 0
        with self.storage.env.begin(db=self.storage.tagview) as txn:
            raw = txn.get(GENERATION)
        return FIRST_SEEN.unpack(raw)[0] if raw is not None else 0
