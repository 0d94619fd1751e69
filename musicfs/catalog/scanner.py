"""The persistent catalog: what the library looks like, stored in LMDB, served without origins.

Two layers (format: :mod:`musicfs.database`):

* ``origin_files`` is what each origin had at its last scan, keyed by (origin, path on origin).
* ``entries``/``children`` is the merged tree users see. Each shown path carries its sources:
  the (origin, path on origin) pairs holding it, in configuration order; the first is read, the
  others are replicas. Today the shown path is ``/`` + the path on the origin; the mapping is
  stored explicitly so a tag-based layout can differ without touching readers.

A scan walks one origin, writes its records in small batches (so chunk writes are never blocked
long by the single LMDB writer), updates the merged entries of what changed, and only when the
walk completes removes what the origin no longer has. A scan that fails, hangs or is cancelled
therefore removes nothing: files of an unreachable origin stay listed. A directory that cannot
be listed (EIO, EACCES...) keeps what was stored below it while the rest of the origin is
scanned and swept; an origin whose root lists empty while files of it are stored (a NAS share
not mounted on its mountpoint) is not swept at all.

Between scans, a read that finds an origin file changed or gone refreshes that one entry (or
the directory it was in) at once: see :meth:`Scanner.refresh_file`. Paths whose entry changed
are remembered for a while (:class:`RecentChanges`), so the FUSE layer can keep the kernel from
combining its cached view of the old version with bytes of the new one.
"""
from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from ..cas.store import ChunkStore
from ..errors import OriginChanged, OriginUnavailable
from ..origins.base import KIND_DIR, KIND_FILE, Origin, OriginEntry, join
from ..origins.local import LocalOrigin
from ..database import Storage
from ..status import ScanReport
from .index import RecentChanges
from .layout import PATH_MAX, split_ext
from .records import (encode_record, encode_tags, entry_version, origin_prefix, record_generation,
                      record_version, split_origin_key, tags_are_current, with_generation)
from .tags import AUDIO_EXTENSIONS, TAG_VERSION, read_local_tags, read_tags
from .views import PathsView

log = logging.getLogger(__name__)
# Records written per transaction during a scan: big enough to be efficient, small enough that
# the chunk store's writers never wait long for the LMDB write lock.
SCAN_BATCH = 2000
# Threads reading tags of one origin during a scan. Parsing holds the GIL, so on a warm local
# disk one thread is fastest; a cold disk or a NAS answers several range reads at once (20k
# files, cold: 1 thread 6.5 s, 4 threads 5.9 s, a plain mutagen loop 5.5 s).
TAG_READERS = 4
# A local origin's tags are parsed in this many processes (parsing holds the GIL), for batches
# of at least PROCESS_MIN_FILES files (fewer are not worth starting processes for), in tasks of
# PROCESS_SHARE files.
TAG_PROCESSES = min(os.cpu_count() or 1, 4)
PROCESS_MIN_FILES = 64
PROCESS_SHARE = 32
# Refreshes remembered for ordering against scans before old ones are pruned.
REFRESHED_KEPT = 10_000


@dataclass
class ScanResult:
    origin: str
    complete: bool
    entries: int = 0
    added: int = 0                    # files and folders new since the last scan
    changed: int = 0                  # ... changed since the last scan
    removed: int = 0
    error: str = ""
    seconds: float = 0.0
    tags_read: int = 0                # audio files whose tags were read (new or changed ones)
    finished: float | None = None     # time.time() when the scan ended
    # Directories that could not be listed: (path on the origin, reason). Their stored entries
    # were kept; everything else of the origin was scanned.
    unreadable: list[tuple[bytes, str]] = field(default_factory=list)
    too_long: list[bytes] = field(default_factory=list)   # paths left out: longer than PATH_MAX

    def as_status(self) -> ScanReport:
        return ScanReport(complete=self.complete, finished=self.finished, error=self.error or None,
                          entries=self.entries, tags_read=self.tags_read, added=self.added, changed=self.changed,
                          removed=self.removed, seconds=round(self.seconds, 3),
                          unreadable=tuple(f"{path.decode(errors='replace') or '/'}: {reason}"
                                           for path, reason in self.unreadable))


def _no_tags() -> dict[bytes, bytes]:
    return {}


class _Cancelled(Exception):
    pass


class Scanner:
    """Write side: walks origins and folds what it finds into the catalog."""

    def __init__(self, storage: Storage, store: ChunkStore, origins: list[Origin], *,
                 stall_timeout: float, recent: RecentChanges | None = None, view=None):
        self.storage = storage
        self.store = store
        self.origins = list(origins)
        self.by_name = {o.name: o for o in self.origins}
        self.order = [o.name for o in self.origins]
        self.stall_timeout = stall_timeout
        self.recent = recent or RecentChanges()
        self.last_results: dict[str, ScanResult] = {}
        # What makes the shown tree out of the records (musicfs.catalog.views).
        self.view = view or PathsView()
        self.view.attach(storage, self.order, self.recent)
        self._write_lock = threading.Lock()  # one catalog writer at a time (merges read all origins)
        self._workers: dict[str, _ScanWorker] = {}
        self._workers_lock = threading.Lock()
        # Records a read's refresh wrote (or removed), key -> time.monotonic(): a scan whose
        # listing was taken before that must not put back what the listing saw (see walk).
        self._refreshed: dict[bytes, float] = {}

    def set_origins(self, origins: list[Origin], view) -> None:
        """A reload: scan these origins, in this order, into this view from now on (the caller
        holds off scans meanwhile and then reconciles the catalog)."""
        with self._write_lock:
            self.origins = list(origins)
            self.by_name = {o.name: o for o in self.origins}
            self.order = [o.name for o in self.origins]
            self.view = view or PathsView()
            self.view.attach(self.storage, self.order, self.recent)

    # -- the shown tree ----------------------------------------------------------------------

    def _placed(self, txn, relpath: bytes) -> None:
        """An origin record of `relpath` changed (in `txn`): the view places it."""
        self.view.placed(txn, relpath)

    def _settle(self, txn) -> None:
        """End of a writing transaction: a view that follows records as they change brings the
        shown tree up to date in it; a deferring one waits for finish_view."""
        if not self.view.deferred:
            self.view.settle(txn)

    def finish_view(self) -> None:
        """After a scan or refresh: bring a deferring view up to date, in one write
        transaction (readers see the old tree or the new one)."""
        if not self.view.pending:
            return
        started = time.monotonic()
        with self._write_lock, self.storage.begin(write=True) as txn:
            changed = self.view.settle(txn)
        log.log(logging.INFO if changed else logging.DEBUG, "%s view: %d entries changed in %.2fs",
                self.view.name, changed, time.monotonic() - started)

    def reconcile_origins(self) -> bool:
        """Make the shown tree match the configured origins, their order and the layout.
        Records of origins no longer configured, or whose identity changed (same name, another
        path), are dropped. Returns True if anything had to be rebuilt."""
        identities = [o.describe().encode() for o in self.origins]
        view_spec = self.view.spec
        fingerprint = b"\0".join(identities) + b"\0view:" + view_spec
        with self.storage.begin() as txn:
            previous = txn.get(b"origins", db=self.storage.meta)
        if previous == fingerprint:
            return False
        before = set(previous.split(b"\0view:")[0].split(b"\0")) if previous else set()
        started = time.monotonic()
        with self._write_lock:
            with self.storage.begin(write=True) as txn:
                known = {o.name for o, identity in zip(self.origins, identities) if identity in before}
                cursor = txn.cursor(db=self.storage.origin_files)
                stale = [key for key in cursor.iternext(keys=True, values=False)
                         if split_origin_key(key)[0] not in known]
                for key in stale:
                    txn.delete(key, db=self.storage.origin_files)
                    txn.delete(key, db=self.storage.tags)
                    self.store.drop_manifest(key, txn)
                    self.store.forget_pin(key, txn)
                for key, _ in list(txn.cursor(db=self.storage.meta)):
                    prefix, _, name = key.partition(b":")
                    if prefix in (b"scanned", b"tagged") and name.decode() not in known:
                        txn.delete(key, db=self.storage.meta)
            # In transactions of its own (bounded memory at a million files); what it was
            # built for is recorded only once it is complete, so a crash halfway rebuilds again.
            self.view.rebuild()
            with self.storage.begin(write=True) as txn:
                txn.put(b"origins", fingerprint, db=self.storage.meta)
        log.info("catalog rebuilt for origins %s in %.2fs", ", ".join(self.order), time.monotonic() - started)
        return True

    # -- scanning ----------------------------------------------------------------------------

    def scan(self, origins: list[Origin] | None = None, *, first_answer: float | None = None,
             progress=None) -> list[ScanResult]:
        """Scan origins in parallel, each in its own thread, each abandoned if it makes no
        progress for `stall_timeout` seconds (its stored files stay listed).

        With `first_answer`, an origin that has not listed its root within that many seconds is
        not waited for: its scan goes on in the background and its files appear when it answers.
        An origin whose previous scan is still stuck in it is not scanned again. `progress`
        is called with each running scan's ScanResult about twice a second while waiting."""
        targets = origins if origins is not None else self.origins
        workers = []
        results = []
        for origin in targets:
            with self._workers_lock:
                previous = self._workers.get(origin.name)
            if previous is not None and previous.is_alive() and not previous.stalled(self.stall_timeout):
                previous.wait(self.stall_timeout)   # a scan under way: let it finish, then scan anew
            with self._workers_lock:
                previous = self._workers.get(origin.name)
                if previous is not None and previous.is_alive():
                    result = ScanResult(origin.name, complete=False, finished=time.time(),
                                        error=f"the previous scan has been stuck in it for "
                                              f"{time.monotonic() - previous.started:.0f}s")
                    log.warning("not scanning origin %s: %s", origin.name, result.error)
                    results.append(result)
                    continue
                worker = _ScanWorker(self, origin)
                self._workers[origin.name] = worker
            worker.start()
            workers.append(worker)
        for worker in workers:
            results.append(worker.wait(self.stall_timeout, first_answer, progress))
        return results

    def cancel_all(self) -> None:
        """Ask every scan in progress to stop at its next batch (a stuck one stays stuck)."""
        with self._workers_lock:
            for worker in self._workers.values():
                worker.cancel()

    def _next_generation(self, origin: str) -> int:
        with self._write_lock, self.storage.begin(write=True) as txn:
            key = b"generation:" + origin.encode()
            generation = self.storage.get_u64(txn, key) + 1
            self.storage.put_u64(txn, key, generation)
        return generation

    def _apply_batch(self, origin: str, generation: int, batch, result: ScanResult, worker=None,
                     listed_at: float | None = None, tags=None) -> None:
        """Store a batch's records and tag records (`tags`: a _read_tags result under way, or
        None: read them now) and settle the view, in one write transaction."""
        prefix = origin_prefix(origin)
        if tags is None:
            tags = self._read_tags(origin, batch, result, worker)
        tags = tags()
        with self._write_lock, self.storage.begin(write=True) as txn:
            for relpath, entry in batch:
                if listed_at is not None and self._refreshed_since(prefix + relpath, listed_at):
                    # A read refreshed this record after the listing was taken: what the read
                    # saw is newer. Keep it (stamped with this scan, so the sweep keeps it too).
                    self._restamp(txn, prefix + relpath, generation)
                    continue
                new = txn.get(prefix + relpath, db=self.storage.origin_files) is None
                if self._put_record(txn, prefix + relpath, relpath, entry, generation):
                    if new:
                        result.added += 1
                    else:
                        result.changed += 1
            for relpath, record in tags.items():
                if listed_at is not None and self._refreshed_since(prefix + relpath, listed_at):
                    continue   # read from the version the refresh replaced
                txn.put(prefix + relpath, record, db=self.storage.tags)
                self._placed(txn, relpath)
            self._settle(txn)

    def _refreshed_since(self, key: bytes, since: float) -> bool:
        return self._refreshed.get(key, float("-inf")) >= since

    def _restamp(self, txn, key: bytes, generation: int) -> None:
        raw = txn.get(key, db=self.storage.origin_files)
        if raw is not None:
            txn.put(key, with_generation(raw, generation), db=self.storage.origin_files)

    def _note_refreshed(self, key: bytes) -> None:
        """Called under the write lock by the refreshes a read triggers."""
        now = time.monotonic()
        self._refreshed[key] = now
        if len(self._refreshed) > REFRESHED_KEPT:
            # Older than any scan still running (a scan that stalls this long is abandoned).
            horizon = now - max(self.stall_timeout * 4, 3600.0)
            self._refreshed = {k: t for k, t in self._refreshed.items() if t >= horizon}

    def _read_tags(self, origin_name: str, batch, result: ScanResult, worker=None):
        """Tag records for the audio files of a batch whose stored tags are missing or were
        read from another version of the file, read in parallel (the origin's latency, not its
        bandwidth, is the limit; a local origin's parsing, CPU) and outside the write
        transaction: a function returning {relpath: record}. A local origin's are read in
        worker processes, and that function waits for them: the scan goes on meanwhile."""
        if not self.view.tag_version:
            return _no_tags
        prefix = origin_prefix(origin_name)
        with self.storage.begin() as txn:
            todo = [(relpath, entry) for relpath, entry in batch
                    if entry.kind == KIND_FILE and split_ext(relpath.rpartition(b"/")[2])[1] in AUDIO_EXTENSIONS
                    and not self.view.ignored(relpath)
                    and not tags_are_current(txn.get(prefix + relpath, db=self.storage.tags), TAG_VERSION, entry)]
        if not todo:
            return _no_tags
        origin = self.by_name[origin_name]
        result.tags_read += len(todo)
        if worker is not None and isinstance(origin, LocalOrigin) and len(todo) >= PROCESS_MIN_FILES \
                and TAG_PROCESSES > 1 and not worker.processes_failed:
            collect = self._read_tags_in_processes(origin, todo, worker)

            def collected() -> dict[bytes, bytes]:
                try:
                    return collect()
                except BrokenProcessPool as e:   # (killed, out of memory...): threads do it
                    log.warning("origin %s: tag reading processes failed (%s); reading tags in threads",
                                origin_name, e)
                    worker.processes_failed = True
                    return self._read_tags_in_threads(origin, todo, worker)
            return collected
        records = self._read_tags_in_threads(origin, todo, worker)
        return lambda: records

    def _read_tags_in_threads(self, origin: Origin, todo, worker) -> dict[bytes, bytes]:
        origin_name = origin.name

        def read(share):
            done = {}
            for relpath, entry in share:
                try:
                    tags, _ = read_tags(origin, relpath, entry.size, entry)
                except OriginUnavailable:
                    raise   # the origin went away: this scan is incomplete, not its files junk
                except (OSError, OriginChanged) as e:   # read again at the next scan
                    log.info("origin %s: cannot read the tags of %s (%s)", origin_name,
                             relpath.decode(errors="replace"), getattr(e, "strerror", None) or e)
                    continue
                done[relpath] = encode_tags(TAG_VERSION, entry, tags)
                if worker is not None:
                    worker.progress()
            return done

        # A few long-running shares, not a task per file: parsing holds the GIL, and handing
        # every file back and forth between threads made a local scan several times slower.
        readers = max(1, min(TAG_READERS, len(todo) // 16))
        records = {}
        with concurrent.futures.ThreadPoolExecutor(readers, thread_name_prefix=f"tags-{origin_name}") as pool:
            for done in pool.map(read, [todo[i::readers] for i in range(readers)]):
                records.update(done)
        return records

    def _read_tags_in_processes(self, origin: LocalOrigin, todo, worker: "_ScanWorker"):
        """read_tags of a local origin's files in worker processes, started now: parsing is
        CPU work that holds the GIL, which threads cannot share (a first scan of 20k warm files
        was 3x slower than a plain mutagen loop). Returns the function that waits for them (in
        slices, so a cancelled scan returns)."""
        entries = dict(todo)
        pool = worker.tag_pool()
        futures = {pool.submit(read_local_tags, origin.name, origin.root,
                               [(relpath, e.size, e.mtime_ns, e.token) for relpath, e in todo[i:i + PROCESS_SHARE]])
                   for i in range(0, len(todo), PROCESS_SHARE)}
        return lambda: self._collect_tags(origin, futures, entries, worker)

    def _collect_tags(self, origin: LocalOrigin, pending: set, entries: dict, worker) -> dict[bytes, bytes]:
        records = {}
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=0.5,
                                                    return_when=concurrent.futures.FIRST_COMPLETED)
            if worker.cancelled:
                raise _Cancelled()
            for future in done:
                for relpath, encoded, error, notes in future.result():
                    for note in notes:
                        log.info("origin %s: %s", origin.name, note)
                    if error is not None:   # read again at the next scan
                        log.info("origin %s: cannot read the tags of %s (%s)", origin.name,
                                 relpath.decode(errors="replace"), error)
                        continue
                    records[relpath] = encode_tags(TAG_VERSION, entries[relpath], None, encoded)
                worker.progress()
        return records

    def _put_record(self, txn, key: bytes, relpath: bytes, entry: OriginEntry, generation: int) -> bool:
        """Store one origin record; True if that file or directory changed (or is new)."""
        old = txn.get(key, db=self.storage.origin_files)
        txn.put(key, encode_record(*entry_version(entry)[:3], generation, entry.token),
                db=self.storage.origin_files)
        if old is not None and record_version(old) == entry_version(entry):
            return False
        if old is not None:
            # The file changed on the origin: its cached chunks describe old bytes.
            self.store.drop_manifest(key, txn)
        self._placed(txn, relpath)
        return True

    def _forget(self, txn, key: bytes, prefix: bytes) -> None:
        txn.delete(key, db=self.storage.origin_files)
        self.store.drop_manifest(key, txn)
        txn.delete(key, db=self.storage.tags)
        self._placed(txn, key[len(prefix):])

    def _sweep(self, origin: str, generation: int, result: ScanResult, under: bytes = b"",
               keep: tuple[bytes, ...] = (), since: float | None = None) -> None:
        """After a walk: remove what the origin no longer has below `under` (b"": everything),
        except below the directories in `keep` (those that could not be listed)."""
        prefix = origin_prefix(origin)
        start = prefix + (under + b"/" if under else b"")
        kept = tuple(prefix + k + b"/" for k in keep)
        with self._write_lock, self.storage.begin(write=True) as txn:
            gone = []
            cursor = txn.cursor(db=self.storage.origin_files)
            if cursor.set_range(start):
                for key, raw in cursor:
                    if not key.startswith(start):
                        break
                    if record_generation(raw) != generation and not (kept and key.startswith(kept)) \
                            and not (since is not None and self._refreshed_since(key, since)):
                        gone.append(key)   # (one a read recorded after the walk began is newer)
            for key in gone:
                self._forget(txn, key, prefix)
            result.removed += len(gone)
            self._settle(txn)
            if not under:
                self.storage.put_u64(txn, b"scanned:" + origin.encode(), time.time_ns())
                if self.view.tag_version:
                    self.storage.put_u64(txn, b"tagged:" + origin.encode(), self.view.tag_version)
                else:
                    # The paths layout reads no tags: what changed meanwhile has stale ones, so
                    # a switch back to the tag view reads them first (Service.untagged).
                    txn.delete(b"tagged:" + origin.encode(), db=self.storage.meta)

    def _stored_count(self, origin: str, limit: int = 1) -> int:
        prefix = origin_prefix(origin)
        count = 0
        with self.storage.begin() as txn:
            cursor = txn.cursor(db=self.storage.origin_files)
            if cursor.set_range(prefix):
                for key in cursor.iternext(keys=True, values=False):
                    if not key.startswith(prefix) or count >= limit:
                        break
                    count += 1
        return count

    def walk(self, origin: Origin, generation: int, result: ScanResult, worker: "_ScanWorker",
             top: bytes = b"", recursive: bool = True) -> None:
        batch = []
        batch_listed_at = None   # when the oldest listing of this batch was asked for
        ahead = None             # the batch before, whose tags are being read
        pending = [top]
        seen_dirs = set()
        while pending:
            relpath = pending.pop()
            listed_at = time.monotonic()
            try:
                entries = origin.list_dir(relpath)
            except OSError as e:
                if relpath == top:
                    raise  # the origin itself (or this refresh's directory) fails: nothing to sweep
                # One unreadable folder must not hide or freeze the whole origin: keep what is
                # stored below it, scan the rest.
                reason = e.strerror or str(e)
                log.warning("origin %s: cannot list %s (%s); keeping what was stored below it",
                            origin.name, relpath.decode(errors="replace"), reason)
                result.unreadable.append((relpath, reason))
                continue
            worker.progress()
            if relpath == b"" and not entries and self._stored_count(origin.name):
                raise OriginUnavailable("its root lists empty although files of it are stored "
                                        "(a share not mounted?); keeping the stored files")
            for entry in entries:
                child = join(relpath, entry.name)
                if len(child) > PATH_MAX - 1:
                    # Catalog keys are LMDB keys (511 bytes at most): a longer path is left
                    # out, not allowed to fail the whole scan.
                    result.too_long.append(child)
                    continue
                if entry.kind == KIND_DIR:
                    if entry.identity is not None:
                        if entry.identity in seen_dirs:
                            log.info("origin %s: not following %s again (a symlink loop)",
                                     origin.name, child.decode(errors="replace"))
                            continue
                        seen_dirs.add(entry.identity)
                    if recursive:
                        pending.append(child)
                elif entry.kind != KIND_FILE:
                    continue
                if not batch:
                    batch_listed_at = listed_at
                batch.append((child, entry))
                result.entries += 1
                if len(batch) >= SCAN_BATCH:
                    if worker.cancelled:
                        raise _Cancelled()
                    # This batch's tags are read while the one before is stored (pipelined).
                    tags = self._read_tags(origin.name, batch, result, worker)
                    if ahead is not None:
                        self._apply_batch(origin.name, generation, *ahead)
                    ahead = (batch, result, worker, batch_listed_at, tags)
                    batch = []
        if worker.cancelled:
            raise _Cancelled()
        if ahead is not None:
            self._apply_batch(origin.name, generation, *ahead)
        if batch:
            self._apply_batch(origin.name, generation, batch, result, worker, batch_listed_at)
        for path in result.too_long[:10]:
            log.warning("origin %s: left out %s: its path is longer than the %d bytes the catalog takes",
                        origin.name, path.decode(errors="replace"), PATH_MAX - 1)
        if len(result.too_long) > 10:
            log.warning("origin %s: %d more paths left out for their length", origin.name, len(result.too_long) - 10)

    # -- refreshing single entries between scans ---------------------------------------------

    def refresh_file(self, origin_name: str, relpath: bytes, current: OriginEntry | None) -> None:
        """A read found this origin file changed (`current` is what the origin has now) or gone
        (None, after the caller made sure its directory is there): update its record at once,
        so the next open sees the new version, and drop the old version's chunk list."""
        prefix = origin_prefix(origin_name)
        key = prefix + relpath
        with self._write_lock, self.storage.begin(write=True) as txn:
            old = txn.get(key, db=self.storage.origin_files)
            generation = record_generation(old) if old is not None else 0
            if current is None:
                if old is not None:
                    self._forget(txn, key, prefix)
            else:
                self._put_record(txn, key, relpath, current, generation)
            self._note_refreshed(key)
            self._settle(txn)
        self.finish_view()
        log.warning("origin %s: %s %s since the last scan; catalog entry refreshed",
                    origin_name, relpath.decode(errors="replace"), "changed" if current else "vanished")

    def refresh_vanished(self, origin_name: str, relpath: bytes) -> None:
        """A file the catalog lists is not on its origin. Refresh the nearest directory above it
        that still exists (one level, not the whole origin). If even the origin's root cannot be
        listed, or lists empty, the origin is the problem, not the file: OriginUnavailable."""
        origin = self.by_name[origin_name]
        directory = relpath
        while True:
            directory = directory.rpartition(b"/")[0] if b"/" in directory else b""
            try:
                entries = origin.list_dir(directory)
            except (FileNotFoundError, NotADirectoryError):
                if directory == b"":
                    raise OriginUnavailable(f"origin {origin_name}: its root is gone") from None
                continue
            if directory == b"" and not entries:
                raise OriginUnavailable(f"origin {origin_name}: its root lists empty (a share not mounted?)")
            break
        self._refresh_listing(origin_name, directory, entries)

    def _refresh_listing(self, origin_name: str, directory: bytes, entries: list[OriginEntry]) -> None:
        prefix = origin_prefix(origin_name)
        start = prefix + (directory + b"/" if directory else b"")
        present = {join(directory, e.name): e for e in entries if e.kind in (KIND_FILE, KIND_DIR)}
        changed = removed = 0
        with self._write_lock, self.storage.begin(write=True) as txn:
            generation = self.storage.get_u64(txn, b"generation:" + origin_name.encode())
            gone = []
            cursor = txn.cursor(db=self.storage.origin_files)
            if cursor.set_range(start):
                for key in cursor.iternext(keys=True, values=False):
                    if not key.startswith(start):
                        break
                    relpath = key[len(prefix):]
                    top = relpath[len(start) - len(prefix):].partition(b"/")[0]
                    if join(directory, top) not in present:
                        gone.append(key)   # this entry, or anything below a vanished folder
            for key in gone:
                self._forget(txn, key, prefix)
                self._note_refreshed(key)
                removed += 1
            for relpath, entry in present.items():
                old = txn.get(prefix + relpath, db=self.storage.origin_files)
                if old is None or record_version(old) != entry_version(entry):
                    # New folders are listed at the next scan; files are recorded now.
                    if entry.kind == KIND_FILE or old is None:
                        self._put_record(txn, prefix + relpath, relpath, entry, generation)
                        self._note_refreshed(prefix + relpath)
                        changed += 1
            self._settle(txn)
        self.finish_view()
        log.warning("origin %s: refreshed %s after a file vanished: %d entries removed, %d changed",
                    origin_name, directory.decode(errors="replace") or "/", removed, changed)


class _ScanWorker(threading.Thread):
    def __init__(self, scanner: Scanner, origin: Origin):
        super().__init__(name=f"scan-{origin.name}", daemon=True)
        self.scanner = scanner
        self.origin = origin
        self.result = ScanResult(origin.name, complete=False)
        self.cancelled = False
        self.started = time.monotonic()
        self._last_progress = self.started
        self._answered = threading.Event()
        self._done = threading.Event()
        self._tag_pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.processes_failed = False

    def tag_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        """Processes reading tags for this scan, started on first use, ended with the scan.
        forkserver: forking this process (FUSE and pool threads, an LMDB environment) is unsafe."""
        if self._tag_pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["musicfs.catalog.tags", "mutagen"])
            self._tag_pool = concurrent.futures.ProcessPoolExecutor(TAG_PROCESSES, mp_context=context)
        return self._tag_pool

    def progress(self) -> None:
        self._last_progress = time.monotonic()
        self._answered.set()

    def cancel(self) -> None:
        """Stop at the next batch; whoever waits for this scan (the rescan loop) returns now."""
        self.cancelled = True
        self._done.set()

    def stalled(self, stall_timeout: float) -> bool:
        return self.cancelled or time.monotonic() - self._last_progress > stall_timeout

    def run(self) -> None:
        started = time.monotonic()
        try:
            generation = self.scanner._next_generation(self.origin.name)
            self.scanner.walk(self.origin, generation, self.result, self)
            if self.cancelled:
                raise _Cancelled()
            keep = tuple(path for path, _ in self.result.unreadable)
            self.scanner._sweep(self.origin.name, generation, self.result, keep=keep, since=self.started)
            self.result.complete = True
        except _Cancelled:
            pass
        except Exception as e:  # an origin failing mid-walk: keep what is stored
            self.result.error = (e.strerror or str(e)) if isinstance(e, OSError) else str(e) or type(e).__name__
            if not isinstance(e, (OSError, OriginUnavailable)):
                log.exception("scan of origin %s failed", self.origin.name)
        finally:
            if self._tag_pool is not None:
                # Not waited for: a process stuck on a hung origin must not hold the scan.
                self._tag_pool.shutdown(wait=False, cancel_futures=True)
                self._tag_pool = None
            try:
                self.scanner.finish_view()   # what was scanned shows, also after a partial walk
            except Exception as e:  # noqa: BLE001 - the next scan tries again
                if self.cancelled:   # stopping: the index may be closed already
                    log.debug("tag view not rebuilt after the scan of %s: %s", self.origin.name, e)
                else:
                    log.exception("tag view not rebuilt after the scan of %s", self.origin.name)
                    self.result.error = self.result.error or f"the tag view could not be rebuilt: {e}"
                    self.result.complete = False
            self.result.seconds = time.monotonic() - started
            self.result.finished = time.time()
            self.scanner.last_results[self.origin.name] = self.result
            self._done.set()
            self._answered.set()

    def wait(self, stall_timeout: float, first_answer: float | None = None, progress=None) -> ScanResult:
        if first_answer is not None and not self._answered.wait(first_answer):
            log.warning("origin %s did not answer within %gs; its scan goes on in the background",
                        self.origin.name, first_answer)
            return ScanResult(self.origin.name, complete=False, error=f"no answer within {first_answer:g}s")
        while not self._done.wait(min(0.5, stall_timeout)):
            if progress is not None:
                progress(self.result)
            if time.monotonic() - self._last_progress > stall_timeout:
                self.cancelled = True
                self.result.error = f"no answer for {stall_timeout:g}s"
                self.result.finished = time.time()
                self.scanner.last_results[self.origin.name] = self.result
                break
        if progress is not None:
            progress(self.result)
        result = self.result
        if result.complete:
            log.info("scanned origin %s: %d entries, %d added, %d changed, %d removed, %d tags read in %.2fs%s",
                     result.origin, result.entries, result.added, result.changed, result.removed, result.tags_read,
                     result.seconds,
                     f"; {len(result.unreadable)} could not be listed" if result.unreadable else "")
        else:
            log.warning("scan of origin %s incomplete (%s); its stored files stay listed",
                        result.origin, result.error or "cancelled")
        return result
