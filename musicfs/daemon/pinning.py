"""`musicfs pin`: keep files of the library in the cache, whatever eviction wants, so they play
with every origin gone (a laptop going offline with an album).

A pin names a file's manifest (each copy's: the preferred origin's and its replicas'), see
:mod:`musicfs.cas.store` for the accounting. Pinning fetches every chunk not cached yet. Pins
may take at most ``PIN_SHARE`` of the cache's size, so that unpinned files still find room;
what would go beyond is reported as not fitting and left unpinned. A pinned file that changes
on its origin keeps its pin: its old chunks are released, and pinning it again fetches the new
version.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from ..cas.store import LOW_WATERMARK, CacheWriteError, manifest_key
from ..origins import KIND_DIR
from ..errors import MusicfsError, NotFound, OriginUnavailable, ReadTimeout, CommandError

log = logging.getLogger(__name__)

# Pins may fill the cache up to eviction's low watermark: above it, every new unpinned chunk
# would evict another at once.
PIN_SHARE = LOW_WATERMARK
# Progress is sent at most this often (the CLI redraws its bar from it).
PROGRESS_INTERVAL = 0.25


@dataclass
class PinReport:
    pinned: int = 0                # files pinned now (complete or not)
    files: int = 0                 # ... of which every byte is cached
    fetched: int = 0               # bytes fetched from origins for them
    not_fitting: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)     # no configured origin holds them
    failed: list[dict] = field(default_factory=list)    # {"path", "error"}: pinned, not all cached

    def as_dict(self, store) -> dict:
        return {"pinned_files": self.pinned, "files": self.files, "fetched_bytes": self.fetched,
                "not_fitting": self.not_fitting, "skipped": self.skipped,
                "failed": self.failed, "pinned_bytes": store.pinned_bytes(),
                "pin_limit_bytes": int(store.max_size * PIN_SHARE)}


class Pinner:
    def __init__(self, catalog, store, reader):
        self.catalog = catalog
        self.store = store
        self.reader = reader

    def files_under(self, paths: list[bytes]) -> list[tuple[bytes, int]]:
        """(shown path, size) of every file at or below `paths`, in tree order, each once."""
        found: dict[bytes, int] = {}
        for path in paths:
            entry = self.catalog.lookup(path)
            if entry is None:
                raise CommandError(f"{_text(path)} is not in the library (a path inside the mount)")
            if not entry.is_dir:
                found.setdefault(path, entry.size)
                continue
            self._walk(path, found)
        return list(found.items())

    def _walk(self, folder: bytes, found: dict) -> None:
        # In listing order, so that when an album does not fit whole its first tracks are the
        # ones pinned. Folders nest a few levels deep at most: recursion is fine.
        for name, kind in self.catalog.children(folder) or []:
            child = folder.rstrip(b"/") + b"/" + name
            if kind == KIND_DIR:
                self._walk(child, found)
            else:
                attrs = self.catalog.attrs(child)
                if attrs is not None:
                    found.setdefault(child, attrs[1])

    def pin(self, paths: list[bytes], progress=None) -> dict:
        if self.store.disk.passthrough:
            raise CommandError(f"the cache does not take writes now ({self.store.disk.reason}); "
                               f"nothing can be pinned until it does")
        files = self.files_under(paths)
        limit = int(self.store.max_size * PIN_SHARE)
        report = PinReport()
        planned = self.store.pinned_bytes()
        already = {key for key, _ in self.store.pins()}
        todo = []
        for path, size in files:
            keys = self._keys(path)
            if keys is None:
                report.skipped.append(_text(path))
                continue
            pinned = all(key in already for key, _, _ in keys)
            need = size - (self.store.cached_bytes(keys[0][0], keys[0][1], keys[0][2]) if pinned else 0)
            if planned + need > limit:
                report.not_fitting.append(_text(path))
                continue
            planned += need
            todo.append((path, size, keys))
        total = sum(size for _, size, _ in todo)
        done = 0
        started = last_sent = time.monotonic()

        def advance(nbytes: int, current: bytes) -> None:
            nonlocal done, last_sent
            done += nbytes
            now = time.monotonic()
            if progress is not None and (now - last_sent >= PROGRESS_INTERVAL or done >= total):
                last_sent = now
                progress({"done": done, "total": total, "seconds": round(now - started, 3),
                          "path": _text(current)})

        for path, size, keys in todo:
            for key, _, _ in keys:
                self.store.pin(key, path)
            report.pinned += 1
            fetched = [0]

            def fetched_chunk(nbytes: int, current: bytes = path) -> None:
                fetched[0] += nbytes
                advance(nbytes, current)
            try:
                self.reader.cache_file(path, progress=fetched_chunk)
            except CacheWriteError as e:
                report.failed.append({"path": _text(path), "error": e.strerror or str(e)})
                break   # passthrough now: no other file can be cached either
            except (MusicfsError, OSError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                report.failed.append({"path": _text(path), "error": reason})
            else:
                report.files += 1
            finally:
                report.fetched += fetched[0]
            advance(size - fetched[0], path)   # the rest was cached already (or failed): done for the bar
        result = report.as_dict(self.store)
        log.info("pinned %d files (%d bytes fetched); %d did not fit, %d failed; %d bytes pinned of %d allowed",
                 report.files, report.fetched, len(report.not_fitting), len(report.failed),
                 result["pinned_bytes"], result["pin_limit_bytes"])
        return result

    def unpin(self, paths: list[bytes]) -> dict:
        before = self.store.pinned_bytes()
        released = 0
        for key, shown in self.store.pins():
            if any(_inside(shown, path) for path in paths):
                released += self.store.unpin(key)
        result = {"files": released, "released_bytes": before - self.store.pinned_bytes(),
                  "pinned_bytes": self.store.pinned_bytes()}
        log.info("unpinned %d file copies, %d bytes released", released, result["released_bytes"])
        return result

    def refresh(self, stopping=lambda: False) -> int:
        """Fetch what pinned files lack (a pinned file changed on its origin, or its origin was
        down when it was pinned). Run after each rescan; returns the bytes fetched. Only the
        preferred copy of each file is completed: it is the one reads take from the cache, and
        fetching every replica again would download the same bytes once per replica."""
        copies: dict[bytes, list[bytes]] = {}
        for key, shown in self.store.pins():
            if key.partition(b"\0")[0].decode() in self.reader.origins:   # (a removed origin's go with it)
                copies.setdefault(shown, []).append(key)
        fetched = 0
        for shown, keys in copies.items():
            if stopping() or self.store.disk.passthrough:
                break
            key = self._preferred(shown, keys)
            origin, _, relpath = key.partition(b"\0")
            try:
                fetched += self.reader.cache_copy(origin.decode(), relpath)
            except (MusicfsError, OSError) as e:
                log.info("pinned %s (%s on %s) not complete yet: %s", _text(shown), _text(relpath),
                         origin.decode(), e)
        if fetched:
            log.info("pins refreshed: %d bytes fetched for changed or incomplete pinned files", fetched)
        return fetched

    def _preferred(self, shown: bytes, keys: list[bytes]) -> bytes:
        """The copy reads prefer among a pinned file's copies (the catalog's source order; the
        first one pinned if a retag moved the file since)."""
        entry = self.catalog.lookup(shown)
        if entry is None or entry.is_dir:
            return keys[0]
        order = [manifest_key(origin, relpath) for origin, relpath in entry.sources]
        return min(keys, key=lambda k: order.index(k) if k in order else len(order))

    def _keys(self, path: bytes):
        """(manifest key, size, mtime_ns) of each copy of the file at `path`, preferred first."""
        entry = self.catalog.lookup(path)
        if entry is None:
            return None
        try:
            sources = self.reader.sources_of(entry)
        except (OriginUnavailable, NotFound, ReadTimeout):
            return None
        return [(s.key, s.size, s.mtime_ns) for s in sources]


def _inside(path: bytes, folder: bytes) -> bool:
    return folder == b"/" or path == folder or path.startswith(folder.rstrip(b"/") + b"/")


def _text(path: bytes) -> str:
    return path.decode(errors="surrogateescape")
