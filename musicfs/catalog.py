"""The persistent catalog: what the library looks like, stored in LMDB, served without origins.

Two layers (format: :mod:`musicfs.storage`):

* ``origin_files`` is what each origin had at its last scan, keyed by (origin, path on origin).
* ``entries``/``children`` is the merged tree users see. Each shown path carries its sources:
  the (origin, path on origin) pairs holding it, in configuration order; the first is read, the
  others are replicas. Today the shown path is ``/`` + the path on the origin; the mapping is
  stored explicitly so a tag-based layout can differ without touching readers.

A scan walks one origin, writes its records in small batches (so chunk writes are never blocked
long by the single LMDB writer), updates the merged entries of what changed, and only when the
walk completes removes what the origin no longer has. A scan that fails, hangs or is cancelled
therefore removes nothing: files of an unreachable origin stay listed.
"""
from __future__ import annotations

import logging
import struct
import threading
import time
from dataclasses import dataclass

from .cas.store import ChunkStore
from .origins import KIND_DIR, KIND_FILE, Origin, join
from .storage import Storage

log = logging.getLogger(__name__)

ENTRY_HEAD = struct.Struct(">BQQB")        # kind, size, mtime_ns, number of sources
ORIGIN_RECORD = struct.Struct(">BQQQ")     # kind, size, mtime_ns, scan generation
LEN16 = struct.Struct(">H")
ROOT = b"/"
# Records written per transaction during a scan: big enough to be efficient, small enough that
# the chunk store's writers never wait long for the LMDB write lock.
SCAN_BATCH = 2000


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    kind: int
    size: int
    mtime_ns: int
    sources: tuple[tuple[str, bytes], ...]   # (origin name, path on the origin), preferred first

    @property
    def is_dir(self) -> bool:
        return self.kind == KIND_DIR


def encode_entry(kind: int, size: int, mtime_ns: int, sources) -> bytes:
    parts = [ENTRY_HEAD.pack(kind, size, mtime_ns, len(sources))]
    for origin, relpath in sources:
        name = origin.encode()
        parts += [LEN16.pack(len(name)), name, LEN16.pack(len(relpath)), relpath]
    return b"".join(parts)


def decode_entry(raw: bytes) -> CatalogEntry:
    kind, size, mtime_ns, count = ENTRY_HEAD.unpack_from(raw)
    pos = ENTRY_HEAD.size
    sources = []
    for _ in range(count):
        (n,) = LEN16.unpack_from(raw, pos)
        origin = raw[pos + 2:pos + 2 + n].decode()
        pos += 2 + n
        (n,) = LEN16.unpack_from(raw, pos)
        relpath = bytes(raw[pos + 2:pos + 2 + n])
        pos += 2 + n
        sources.append((origin, relpath))
    return CatalogEntry(kind, size, mtime_ns, tuple(sources))


def shown_path(relpath: bytes) -> bytes:
    """Where a path on an origin appears in the mounted tree (identity layout)."""
    return ROOT + relpath


def split(path: bytes) -> tuple[bytes, bytes]:
    parent, _, name = path.rpartition(b"/")
    return (parent or ROOT), name


class Catalog:
    """Read side: lookups and listings straight from LMDB (one read transaction each)."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self._root_entry = CatalogEntry(KIND_DIR, 0, time.time_ns(), ())

    def lookup(self, path: bytes) -> CatalogEntry | None:
        raw = self.raw(path)
        if raw is None:
            return self._root_entry if path == ROOT else None
        return decode_entry(raw)

    def raw(self, path: bytes) -> bytes | None:
        """The stored entry of `path`, undecoded: equal bytes mean an unchanged entry."""
        with self.storage.env.begin(db=self.storage.entries) as txn:
            return txn.get(path)

    def attrs(self, path: bytes) -> tuple[int, int, int] | None:
        """(kind, size, mtime_ns) without decoding sources: the getattr fast path."""
        with self.storage.env.begin(db=self.storage.entries) as txn:
            raw = txn.get(path)
            if raw is None:
                return (KIND_DIR, 0, self._root_entry.mtime_ns) if path == ROOT else None
            return ENTRY_HEAD.unpack_from(raw)[:3]

    def list(self, path: bytes) -> list[bytes] | None:
        """Names in a directory, sorted; None if `path` is not a directory."""
        children = self.children(path)
        return None if children is None else [name for name, _ in children]

    def children(self, path: bytes) -> list[tuple[bytes, int]] | None:
        """(name, kind) of each entry of a directory, sorted; None if `path` is not a directory."""
        prefix = path + b"\0"
        cut = len(prefix)
        with self.storage.env.begin() as txn:   # one transaction: this is the readdir hot path
            raw = txn.get(path, db=self.storage.entries)
            if raw is None:
                if path != ROOT:   # the root exists before the first scan has stored it
                    return None
            elif raw[0] != KIND_DIR:
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

    def counts(self) -> tuple[int, int]:
        """(files, directories) in the merged tree."""
        files = dirs = 0
        with self.storage.env.begin(db=self.storage.entries) as txn:
            for raw in txn.cursor().iternext(keys=False, values=True):
                if raw[0] == KIND_DIR:
                    dirs += 1
                else:
                    files += 1
        return files, dirs

    def last_scan(self, origin: str) -> int:
        with self.storage.begin() as txn:
            return self.storage.get_u64(txn, b"scanned:" + origin.encode())


@dataclass
class ScanResult:
    origin: str
    complete: bool
    entries: int = 0
    changed: int = 0
    removed: int = 0
    error: str = ""
    seconds: float = 0.0


class _Cancelled(Exception):
    pass


class Scanner:
    """Write side: walks origins and folds what it finds into the catalog."""

    def __init__(self, storage: Storage, store: ChunkStore, origins: list[Origin], *,
                 stall_timeout: float):
        self.storage = storage
        self.store = store
        self.origins = list(origins)
        self.order = [o.name for o in self.origins]
        self.stall_timeout = stall_timeout
        self._write_lock = threading.Lock()  # one catalog writer at a time (merges read all origins)

    # -- merged view -------------------------------------------------------------------------

    def _merge(self, txn, relpath: bytes) -> None:
        """Recompute the merged entry of one relative path from every origin's record."""
        sources, winner = [], None
        for name in self.order:
            raw = txn.get(name.encode() + b"\0" + relpath, db=self.storage.origin_files)
            if raw is None:
                continue
            record = ORIGIN_RECORD.unpack(raw)
            if winner is None:
                winner = record
            elif record[0] != winner[0]:
                continue  # a file in one origin and a directory in another: the first one wins
            sources.append((name, relpath))
        path = shown_path(relpath)
        parent, name = split(path)
        if winner is None:
            txn.delete(path, db=self.storage.entries)
            txn.delete(parent + b"\0" + name, db=self.storage.children)
            return
        kind, size, mtime_ns, _ = winner
        txn.put(path, encode_entry(kind, size, mtime_ns, sources), db=self.storage.entries)
        txn.put(parent + b"\0" + name, bytes((kind,)), db=self.storage.children)

    def reconcile_origins(self) -> bool:
        """Make the merged view match the configured origins and their order. Records of origins
        no longer configured, or whose identity changed (same name, another path), are dropped.
        Returns True if anything had to be rebuilt."""
        identities = [o.describe().encode() for o in self.origins]
        fingerprint = b"\0".join(identities)
        with self.storage.begin() as txn:
            previous = txn.get(b"origins", db=self.storage.meta)
        if previous == fingerprint:
            return False
        before = set(previous.split(b"\0")) if previous else set()
        started = time.monotonic()
        with self._write_lock, self.storage.begin(write=True) as txn:
            known = {o.name for o, identity in zip(self.origins, identities) if identity in before}
            cursor = txn.cursor(db=self.storage.origin_files)
            relpaths = set()
            stale = []
            for key in cursor.iternext(keys=True, values=False):
                origin, _, relpath = key.partition(b"\0")
                if origin.decode() in known:
                    relpaths.add(relpath)
                else:
                    stale.append(key)
            for key in stale:
                txn.delete(key, db=self.storage.origin_files)
                self.store.drop_manifest(key, txn)
            txn.drop(self.storage.entries, delete=False)
            txn.drop(self.storage.children, delete=False)
            for relpath in relpaths:
                if relpath:
                    self._merge(txn, relpath)
            for key, _ in list(txn.cursor(db=self.storage.meta)):
                if key.startswith(b"scanned:") and key[8:].decode() not in known:
                    txn.delete(key, db=self.storage.meta)
            txn.put(b"origins", fingerprint, db=self.storage.meta)
        log.info("catalog rebuilt for origins %s in %.2fs", ", ".join(self.order), time.monotonic() - started)
        return True

    # -- scanning ----------------------------------------------------------------------------

    def scan(self, origins: list[Origin] | None = None) -> list[ScanResult]:
        """Scan origins in parallel, each in its own thread, each abandoned if it makes no
        progress for `stall_timeout` seconds (its stored files stay listed)."""
        targets = origins if origins is not None else self.origins
        workers = []
        for origin in targets:
            worker = _ScanWorker(self, origin)
            worker.start()
            workers.append(worker)
        results = []
        for worker in workers:
            results.append(worker.wait(self.stall_timeout))
        return results

    def _next_generation(self, origin: str) -> int:
        with self.storage.begin(write=True) as txn:
            key = b"generation:" + origin.encode()
            generation = self.storage.get_u64(txn, key) + 1
            self.storage.put_u64(txn, key, generation)
        return generation

    def _apply_batch(self, origin: str, generation: int, batch, result: ScanResult) -> None:
        prefix = origin.encode() + b"\0"
        with self._write_lock, self.storage.begin(write=True) as txn:
            for relpath, kind, size, mtime_ns in batch:
                key = prefix + relpath
                old = txn.get(key, db=self.storage.origin_files)
                txn.put(key, ORIGIN_RECORD.pack(kind, size, mtime_ns, generation), db=self.storage.origin_files)
                if old is not None and ORIGIN_RECORD.unpack(old)[:3] == (kind, size, mtime_ns):
                    continue
                if old is not None:
                    # The file changed on the origin: its cached chunks describe old bytes.
                    self.store.drop_manifest(key, txn)
                self._merge(txn, relpath)
                result.changed += 1

    def _sweep(self, origin: str, generation: int, result: ScanResult) -> None:
        """After a complete walk: remove what the origin no longer has."""
        prefix = origin.encode() + b"\0"
        with self._write_lock, self.storage.begin(write=True) as txn:
            gone = []
            cursor = txn.cursor(db=self.storage.origin_files)
            if cursor.set_range(prefix):
                for key, raw in cursor:
                    if not key.startswith(prefix):
                        break
                    if ORIGIN_RECORD.unpack(raw)[3] != generation:
                        gone.append(key)
            for key in gone:
                txn.delete(key, db=self.storage.origin_files)
                self.store.drop_manifest(key, txn)
                self._merge(txn, key[len(prefix):])
            result.removed = len(gone)
            self.storage.put_u64(txn, b"scanned:" + origin.encode(), time.time_ns())

    def walk(self, origin: Origin, generation: int, result: ScanResult, worker: "_ScanWorker") -> None:
        batch = []
        pending = [b""]
        seen_dirs = set()
        while pending:
            relpath = pending.pop()
            entries = origin.list_dir(relpath)
            worker.progress()
            for entry in entries:
                child = join(relpath, entry.name)
                if entry.kind == KIND_DIR:
                    if entry.identity is not None:
                        if entry.identity in seen_dirs:
                            log.info("origin %s: not following %s again (a symlink loop)",
                                     origin.name, child.decode(errors="replace"))
                            continue
                        seen_dirs.add(entry.identity)
                    pending.append(child)
                elif entry.kind != KIND_FILE:
                    continue
                batch.append((child, entry.kind, entry.size, entry.mtime_ns))
                result.entries += 1
                if len(batch) >= SCAN_BATCH:
                    if worker.cancelled:
                        raise _Cancelled()
                    self._apply_batch(origin.name, generation, batch, result)
                    batch = []
        if worker.cancelled:
            raise _Cancelled()
        if batch:
            self._apply_batch(origin.name, generation, batch, result)


class _ScanWorker(threading.Thread):
    def __init__(self, scanner: Scanner, origin: Origin):
        super().__init__(name=f"scan-{origin.name}", daemon=True)
        self.scanner = scanner
        self.origin = origin
        self.result = ScanResult(origin.name, complete=False)
        self.cancelled = False
        self._last_progress = time.monotonic()
        self._done = threading.Event()

    def progress(self) -> None:
        self._last_progress = time.monotonic()

    def run(self) -> None:
        started = time.monotonic()
        try:
            generation = self.scanner._next_generation(self.origin.name)
            self.scanner.walk(self.origin, generation, self.result, self)
            if self.cancelled:
                raise _Cancelled()
            self.scanner._sweep(self.origin.name, generation, self.result)
            self.result.complete = True
        except _Cancelled:
            pass
        except Exception as e:  # an origin failing mid-walk: keep what is stored
            self.result.error = f"{type(e).__name__}: {e}"
            if not isinstance(e, OSError):
                log.exception("scan of origin %s failed", self.origin.name)
        finally:
            self.result.seconds = time.monotonic() - started
            self._done.set()

    def wait(self, stall_timeout: float) -> ScanResult:
        while not self._done.wait(min(1.0, stall_timeout)):
            if time.monotonic() - self._last_progress > stall_timeout:
                self.cancelled = True
                self.result.error = f"no answer for {stall_timeout:g}s"
                break
        result = self.result
        if result.complete:
            log.info("scanned origin %s: %d entries, %d changed, %d removed in %.2fs",
                     result.origin, result.entries, result.changed, result.removed, result.seconds)
        else:
            log.warning("scan of origin %s incomplete (%s); its stored files stay listed",
                        result.origin, result.error or "cancelled")
        return result
