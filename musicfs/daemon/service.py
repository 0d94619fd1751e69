"""Everything a mounted musicfs runs, wired together, with its background threads.

``Service.open`` builds the parts from a Config (no threads yet, so the daemon may still fork);
``start`` starts the background work (FUSE's ``init``); ``stop`` ends it (FUSE's ``destroy``).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import logging
import os
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout

import lmdb

from .. import __version__, logs, origins as origin_factory
from ..cas import CacheChecker, ChunkStore, recover
from ..cas.disk import CacheDisk
from ..catalog import Catalog
from ..catalog.scanner import Scanner
from ..config import Config
from ..errors import CommandError, ConfigError, OriginMisconfigured, ShuttingDown, StartupError
from ..health import HealthMonitor
from ..status import (CacheFigures, DaemonStatus, LayoutStatus, Reloads, UnplacedFile, process_started_at,
                      status_path, write_status)
from ..origins import LocalOrigin
from .pinning import Pinner
from ..pool import CACHE_DISK, CHECK_LANE, LOAD_LANE, LOAD_WORKERS, PRELOAD_WORKERS, OriginPool, finished_within
from ..read import ReadSettings, Reader
from ..database import ENV_NAME, Storage
from ..catalog.smart import SmartFolders, collections_of
from ..catalog.views import view_for

log = logging.getLogger(__name__)
# Files the tag view left out (not audio to mutagen) listed by name in the status file.
NOT_PLACED_LISTED = 1000

# Access times and counters are written this often (and on shutdown): one write transaction
# per interval instead of one per read.
MAINTENANCE_INTERVAL = 5.0
# The status file (passthrough, origin states) that the cron probe reads is refreshed this often.
STATUS_INTERVAL = 1.0
# Enough workers that every origin can use its whole budget and checks still find a thread.
MIN_POOL_WORKERS = 16
# An origin that answers its health checks but fails its scans (a folder it cannot list at the
# root, a server that drops long listings) is scanned again at its first answer, then after
# this many seconds, doubling up to [catalog].rescan_interval.
SCAN_RETRY_FIRST_DELAY = 30.0


class Service:
    def __init__(self, config: Config, storage: Storage, store: ChunkStore, catalog: Catalog,
                 scanner: Scanner, origins: dict, pool: OriginPool, reader: Reader, health: HealthMonitor, *,
                 mountpoint: str | None = None, lock=None):
        self.config = config
        self.storage = storage
        self.store = store
        self.cache_disk = store.disk   # passthrough and suspended loads: one state object (cas/disk.py)
        self.catalog = catalog
        self.scanner = scanner
        self.origins = origins
        self.pool = pool
        self.reader = reader
        self.health = health
        self._stopping = threading.Event()
        self._stop_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.mountpoint = mountpoint   # published for `musicfs unmount` (None: not mounted, in tests)
        # the file a reload reads again (None: mounted with -O only)
        self.config_file: str | None = str(config.source) if config.source else None
        self.lock = lock   # the daemon's CacheLock, renewed if the cache dir is made anew
        # The chunk directory did not answer at start: its check waits for it (_probe_cache),
        # and a shutdown before then leaves the cache marked unclean, so the next start checks it.
        self.recovery_pending = False
        self._probing = threading.Lock()   # held while a probe of the cache disk runs (probe_cache)
        # statvfs of the cache disk (what `df` on the mount shows), refreshed by probe_cache
        self.cache_disk_stats = os.statvfs(config.cache.dir)
        # Bytes in the cache as of the last status write (each second): what `df` on the mount
        # reports as used, without asking the cache's index from a statfs (see MusicFuse.statfs).
        self.cached_bytes = store.total() if not storage.index_gone() else 0
        self._rescanning = False
        # Set after each pass of the background rescan (the first runs right after mount).
        self.rescanned = threading.Event()
        # One rescan at a time: the background loop, `musicfs rescan` and SIGUSR1 take turns.
        self._scan_lock = threading.Lock()
        self._rescan_wanted = threading.Event()
        # What the next rescan covers: every origin, or the names asked for (see request_rescan).
        self._rescan_everything = True
        self._rescan_names: set[str] = set()
        self._rescan_request_lock = threading.Lock()
        # origin -> (monotonic time before which a failed scan is not retried, the delay used):
        # an origin that answers its checks but fails every scan is retried less and less often
        self._scan_retry: dict[str, tuple[float, float]] = {}
        self.started_at = time.time()
        self.reloads = Reloads()   # published: did the last reload work?
        self.pinner = Pinner(catalog, store, reader)
        self._not_placed: tuple[int | None, int, tuple] = (None, 0, ())   # (view generation, count, files)
        self.smart = SmartFolders(catalog, collections_of(config.collections), config.search.limit,
                                  enabled=config.layout.mode == "tags")
        self.on_stop: list = []   # called once when the stop begins (systemd's STOPPING=1, the control socket)
        self.in_progress = lambda: 0   # FUSE calls in progress (set by the FUSE layer)

    @classmethod
    def open(cls, config: Config, origins: dict | None = None, *, mountpoint: str | None = None,
             lock=None) -> "Service":
        """Build the parts; `origins` replaces the configured ones (tests inject faulty origins);
        `mountpoint` and the cache's `lock` are the daemon's (None in tests)."""
        storage, refused = cls._open_storage(config)
        silent = None
        if not storage.readonly:
            with storage.begin() as txn:
                dirty = txn.get(b"dirty", db=storage.meta) == b"1"
            silent = _silent_chunk_dir(storage, config.health.timeout)
            if silent is not None:
                log.warning("the chunk directory %s does not answer (%s): serving from origins (passthrough); "
                            "the cache is checked and used once it answers", storage.chunks_dir, silent)
            elif dirty or storage.rebuilt:
                if dirty:
                    log.warning("the last musicfs on %s did not shut down cleanly; checking the cache",
                                config.cache.dir)
                recover(storage)
            else:
                # A clean shutdown leaves no temp files, but a failed write might have.
                CacheChecker(storage, repair=True).check_temp_files()
            with storage.begin(write=True) as txn:
                txn.put(b"dirty", b"1", db=storage.meta)
            storage.sync()
        cache_disk = CacheDisk()
        store = ChunkStore(storage, config.cache.max_size, disk=cache_disk)
        if refused is not None:   # (the warning above said so)
            cache_disk.refuses_writes(f"cache disk read-only at start ({refused}); caching resumes once it is writable",
                                      logged=False)
        if silent is not None:
            cache_disk.stops_answering(f"the chunk directory did not answer at start ({silent})")
        catalog = Catalog(storage)
        if origins is None:
            origins = {o.name: origin_factory.build(o) for o in config.origins}
        view = view_for(config.layout)
        scanner = Scanner(storage, store, list(origins.values()), stall_timeout=config.fuse.read_timeout,
                          recent=catalog.recent, view=view)
        if not storage.readonly:
            scanner.reconcile_origins()
        pool = OriginPool(max_workers=cls._pool_size(config, len(origins)),
                          per_origin=config.health.workers_per_origin)
        health = HealthMonitor(list(origins.values()), pool, config.health)
        reader = Reader(catalog, store, ReadSettings.of(origins, config.fuse.read_timeout, config.health.timeout),
                        pool, health, scanner, kernel_readahead=config.fuse.read_ahead)
        service = cls(config, storage, store, catalog, scanner, origins, pool, reader, health,
                      mountpoint=mountpoint, lock=lock)
        service.recovery_pending = silent is not None
        health.cache_probe = service.probe_cache
        health.on_recovered.append(service.refresh_pins_soon)
        health.on_recovered.append(service._scan_if_never_scanned)
        health.on_answered.append(service._scan_again_if_it_failed)
        return service

    @staticmethod
    def _open_storage(config: Config) -> tuple[Storage, str | None]:
        """The cache index, writable if the disk allows. On a read-only cache disk the stored
        catalog and chunks are still served (read-only, no rescans) and misses pass through."""
        try:
            return Storage(config.cache.dir, chunk_dirs=False), None
        except (OSError, lmdb.Error) as e:
            reason = getattr(e, "strerror", None) or str(e)
            if not (config.cache.dir / ENV_NAME).is_dir() or \
                    getattr(_write_error(config.cache.dir), "errno", None) != errno.EROFS:
                raise
        log.warning("cache disk %s refuses writes (%s): serving the stored catalog read-only, passing "
                    "misses through to origins, no rescans", config.cache.dir, reason)
        return Storage(config.cache.dir, disk_readonly=True), reason

    def never_scanned(self) -> list:
        return [o for o in self.origins.values() if not self.catalog.last_scan(o.name)]

    def check_origins(self, origins: list, warn) -> list:
        """Check origins never seen before, all in parallel, bounded by [health].timeout. One
        that is not there is a configuration mistake (StartupError); one that does not answer
        or fails is left out for now (`warn` tells the user; its files appear once it answers).
        Returns those that answered."""
        if not origins:
            return []
        timeout = self.config.health.timeout
        futures = {origin.name: self.pool.submit(origin.name, origin.check, lane=CHECK_LANE) for origin in origins}
        concurrent.futures.wait(futures.values(), timeout=timeout)
        answered = []
        for origin in origins:
            future = futures[origin.name]
            if not future.done():
                warn(f"origin {origin.describe()} does not answer within {timeout:g}s; mounting without it "
                     f"(its files appear once it answers)")
                continue
            error = future.exception()
            if error is None:
                answered.append(origin)
            elif isinstance(error, OriginMisconfigured):
                raise StartupError(f"origin {origin.describe()}: {error}" + (
                    "; fix its path in the config (or -O), or mount the NAS first" if isinstance(origin, LocalOrigin)
                    else ""))
            else:
                reason = getattr(error, "strerror", None) or str(error)
                warn(f"origin {origin.describe()} fails ({reason}); mounting without it "
                     f"(its files appear once it works)")
        return answered

    def untagged(self) -> list:
        """Origins scanned before, but never with the tag view's current tag reader (mounted in
        the paths layout until now): their tags are read before mounting, as on a first mount,
        rather than showing every file under "Unknown Artist" until the next rescan."""
        view = self.scanner.view
        if not view.tag_version or self.storage.readonly:
            return []
        return [o for o in self.origins.values()
                if self.catalog.last_scan(o.name) and self.catalog.tagged(o.name) != view.tag_version]

    def initial_scan(self, origins=None, *, first_answer: float | None = None, warn=None, progress=None) -> None:
        """Before the first mount of an origin there is nothing stored to show: scan it now so
        the mount does not appear empty (default: every origin never scanned). One that does
        not answer within `first_answer` seconds is not waited for (see Scanner.scan)."""
        if self.storage.readonly:
            return
        todo = self.never_scanned() if origins is None else origins
        if not todo:
            return
        for result in self.scanner.scan(todo, first_answer=first_answer, progress=progress):
            if not result.complete and warn is not None:
                warn(f"first scan of origin {result.origin} incomplete ({result.error or 'cancelled'}); "
                     f"mounting with what it listed, the rest appears once it answers")

    def start(self) -> None:
        self.publish_status()
        self._spawn("maintenance", self._maintenance_loop)
        if not self.storage.readonly:
            self._start_rescans()
        self.health.start()

    def _start_rescans(self) -> None:
        if not self._rescanning:
            self._rescanning = True
            self._spawn("rescan", self._rescan_loop)

    def _spawn(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _maintenance_loop(self) -> None:
        last_flush = time.monotonic()
        while not self._stopping.wait(STATUS_INTERVAL):
            self.publish_status()
            if time.monotonic() - last_flush < MAINTENANCE_INTERVAL or self.cache_disk.passthrough:
                continue
            last_flush = time.monotonic()
            try:
                self.store.flush_access_times()
                self.store.save_counters()
                self.storage.sync()
            except Exception as e:
                log.warning("cache maintenance failed: %s", e)

    # -- the cache disk coming back ---------------------------------------------------------

    def probe_cache(self) -> None:
        """Each health round: see whether a cache disk that failed works again, and whether
        the cache dir is still there. Bounded: the cache disk may be what hangs."""
        if self.stopping:
            return
        # One probe at a time: one that has not come back is waiting on a disk that still does
        # not answer, and the next must neither pile up beside it nor, when the disk answers,
        # run the cache's deferred check at the same time as it.
        if not self._probing.acquire(blocking=False):
            return
        future = self.pool.submit(CACHE_DISK, self._probe_cache, lane=LOAD_LANE)
        future.add_done_callback(lambda _: self._probing.release())
        try:
            future.result(timeout=self.config.health.timeout)
        except FutureTimeout:
            future.cancel()
            self.cache_disk.stops_answering(f"a probe of the cache disk took more than {self.config.health.timeout:g}s")
        except ShuttingDown:
            pass
        except Exception as e:  # noqa: BLE001 - the next round tries again
            log.warning("probing the cache disk failed: %s", e)

    def _probe_cache(self) -> None:
        storage, store = self.storage, self.store
        with contextlib.suppress(OSError):
            self.cache_disk_stats = os.statvfs(self.config.cache.dir)
        if storage.disk_readonly or storage.index_gone():
            if not storage.disk_readonly and not self.cache_disk.passthrough:
                self.cache_disk.refuses_writes(f"cache index {storage.env_path} is gone")
            if _write_error(self.config.cache.dir) is None:
                self._reopen_cache()
        elif self.cache_disk.passthrough:
            if self.recovery_pending:
                # The chunk directory did not answer at start: the start-up check was skipped.
                # It runs now that it answers, before anything is cached again (this runs in the
                # cache disk's lane, bounded by the caller: it may hang again).
                storage.make_chunk_dirs()
                report = recover(storage)
                self.recovery_pending = False
                log.info("chunk directory %s answers: cache checked (%d problems repaired)",
                         storage.chunks_dir, len(report.findings))
            store.probe_writable()

    def _reopen_cache(self) -> None:
        """The cache disk takes writes again after it was read-only at start, or the cache dir
        was deleted: continue on a writable index at the same path, repaired, and cache again."""
        storage = self.storage
        gone = storage.index_gone()
        if gone and self.lock is not None:
            self.lock.renew()   # StartupError if another musicfs took the new directory: stay passthrough
        storage.reopen_writable()
        report = recover(storage)
        with storage.begin(write=True) as txn:
            txn.put(b"dirty", b"1", db=storage.meta)
        self.cache_disk.works_again(logged=False)
        log.info("cache %s %s: index reopened for writing (%d problems repaired); caching resumed",
                 self.config.cache.dir, "was made anew" if gone else "takes writes again", len(report.findings))
        self._start_rescans()

    def publish_status(self) -> None:
        """The status file: what `musicfs health`, `cache stats` and `unmount` know of this
        daemon. `started` (when this process started) lets a reader tell this daemon from a
        later process reusing its PID; `cache_dir` and `config` let `musicfs health MOUNTPOINT`
        check a mount started without a config file. A clean stop removes the file, so one
        whose PID is gone was left by a daemon that died."""
        try:
            origins = self.health.snapshot()
            for name, result in list(self.scanner.last_results.items()):
                if name in origins:
                    origins[name] = dataclasses.replace(origins[name], scan=result.as_status())
            write_status(self.config.cache.dir, DaemonStatus(
                pid=os.getpid(), mountpoint=self.mountpoint, started=process_started_at(os.getpid()),
                updated=time.time(), version=__version__, cache_dir=os.path.abspath(self.config.cache.dir),
                config_file=self.config_file, config=self.config, passthrough=self.cache_disk.passthrough,
                passthrough_reason=self.cache_disk.reason or None if self.cache_disk.passthrough else None,
                origins=origins, cache=self._cache_figures(), layout=self._layout_status(),
                reloads=self.reloads, requests_in_progress=self.in_progress()))
        except (OSError, lmdb.Error) as e:
            log.debug("cannot publish status: %s", e)

    def _layout_status(self) -> LayoutStatus:
        layout = self.config.layout
        if layout.mode != "tags":
            return LayoutStatus(layout.mode, layout.template)
        # (the status file is written every second: the list is read again only when the
        # view's records changed, not by every write)
        generation = self.catalog.generation()
        if self._not_placed[0] != generation:
            count, files = self.catalog.unplaced(NOT_PLACED_LISTED)
            self._not_placed = (generation, count, tuple(UnplacedFile(origin, os.fsdecode(path))
                                                         for origin, path in files))
        return LayoutStatus(layout.mode, layout.template, self._not_placed[1], self._not_placed[2])

    # -- reload (SIGHUP) --------------------------------------------------------------------------

    def reload(self, new: Config, warn) -> str:
        """Apply a new configuration without unmounting: origins added, removed or changed
        (in order), layout and template, health, timeouts, cache size, log settings. Raises
        ConfigError/StartupError, changing nothing, when the new config cannot be applied; once
        the new origins have answered their check the swap cannot fail half way. Returns a
        summary line."""
        old = self.config
        if new.cache.dir != old.cache.dir:
            raise ConfigError(f"[cache].dir cannot change while mounted ({old.cache.dir} -> {new.cache.dir}); "
                              f"unmount and mount again to move the cache")
        before = {o.name: o for o in old.origins}
        added = [o for o in new.origins if o.name not in before]
        changed = [o for o in new.origins if o.name in before and before[o.name] != o]
        removed = [name for name in before if name not in {o.name for o in new.origins}]
        reshaped = added or changed or removed or [o.name for o in old.origins] != [o.name for o in new.origins] \
            or new.layout != old.layout
        if reshaped and self.storage.readonly:
            raise CommandError("the cache index is read-only (its disk refuses writes): origins and layout "
                               "cannot change until it takes writes again")
        view = view_for(new.layout)
        built = {o.name: origin_factory.build(o) for o in added + changed}
        try:
            # Never-seen origins are checked like on a first mount: a typo refuses the reload.
            self.check_origins(list(built.values()), warn)
        except BaseException:
            for origin in built.values():
                origin.close()
            raise
        retired = [self.origins[o.name] for o in changed] + [self.origins[name] for name in removed]
        with self._scan_lock:   # no scan runs while the origins and the view change under it
            origins = {o.name: built.get(o.name) or self.origins[o.name] for o in new.origins}
            self.origins = origins   # (a new dict: reads under way keep the one they took)
            self.scanner.set_origins(list(origins.values()), view)
            self.scanner.stall_timeout = new.fuse.read_timeout
            self.health.set_origins(list(origins.values()), new.health)
            self.pool.resize(self._pool_size(new, len(origins)), new.health.workers_per_origin)
            self.reader.apply(ReadSettings.of(origins, new.fuse.read_timeout, new.health.timeout))
            self.store.max_size = new.cache.max_size
            self.smart.configure(collections_of(new.collections), new.search.limit, enabled=new.layout.mode == "tags")
            self.config = new
            # Switching to the tag view: read the tags first, so the tree changes once, from
            # folders to tags, rather than through "Unknown Artist".
            untagged = self.untagged()
            if untagged:
                self.scanner.scan(untagged, first_answer=new.health.timeout)
            self.scanner.reconcile_origins()   # drops removed origins, rebuilds the view in one transaction
            fresh = [origins[o.name] for o in added + changed]
            # A new origin that does not answer is not waited for: its scan goes on in the
            # background and its files appear when it answers (as on a first mount).
            results = self.scanner.scan(fresh, first_answer=new.health.timeout) if fresh else []
        for origin in retired:
            origin.close()
        if new.layout.mode == "tags" and new.layout.ignore != old.layout.ignore:
            # Files an ignore pattern hid were never read for tags: a rescan reads them.
            self.request_rescan()
        if new.log != old.log:
            logs.reconfigure(new.log.file, new.log.level)
        summary = (f"configuration reloaded: {len(added)} origins added, {len(changed)} changed, "
                   f"{len(removed)} removed; layout {new.layout.mode}"
                   + (f"; {sum(r.entries for r in results)} entries scanned in the origins added or changed" if results else ""))
        log.info("%s", summary)
        return summary

    def note_reload(self, error: str | None) -> None:
        self.reloads = Reloads(self.reloads.count + 1, time.time(), error)
        self.publish_status()

    @staticmethod
    def _pool_size(config: Config, origins: int) -> int:
        # Enough that every origin can hold its whole read budget and its check at once, with
        # threads left for the cache disk's lanes: a hung origin never takes the whole pool.
        per_origin = config.health.workers_per_origin
        return max(MIN_POOL_WORKERS, (per_origin + 1) * origins + PRELOAD_WORKERS + LOAD_WORKERS + 4)

    def _cache_figures(self) -> CacheFigures:
        """Cache size, limit, pinned bytes and hit counters (one LMDB read transaction)."""
        if self.storage.index_gone():
            return CacheFigures()
        stats = self.store.stats()
        self.cached_bytes = stats["bytes"]
        return CacheFigures(chunks=stats["chunks"], bytes=stats["bytes"], pinned_bytes=stats["pinned_bytes"],
                            max_bytes=stats["max_bytes"], hits=stats["hits"], misses=stats["misses"])

    def _rescan_loop(self) -> None:
        # The first pass refreshes the stored catalog right after mount; later passes run every
        # [catalog].rescan_interval, or sooner when asked (SIGUSR1).
        while not self._stopping.is_set():
            with self._rescan_request_lock:
                everything, names = self._rescan_everything, self._rescan_names
                self._rescan_everything, self._rescan_names = False, set()
            try:
                if everything or names:
                    self._rescan(None if everything else [o for o in self.origins.values() if o.name in names])
                    self.pinner.refresh(stopping=lambda: self._stopping.is_set())
            except Exception:
                log.exception("rescan failed")
            self.rescanned.set()
            if not self._rescan_wanted.wait(self.config.catalog.rescan_interval):
                with self._rescan_request_lock:
                    self._rescan_everything = True   # the periodic rescan
            # Cleared before the requests are taken: one made after this wakes the next wait.
            self._rescan_wanted.clear()

    def request_rescan(self, origin: str | None = None) -> None:
        """Rescan every origin (or just `origin`) soon, in the background (SIGUSR1)."""
        with self._rescan_request_lock:
            if origin is None:
                self._rescan_everything = True
            else:
                self._rescan_names.add(origin)
        if origin is None:
            log.info("rescan requested")
        self._rescan_wanted.set()

    def rescan_now(self) -> list:
        """Rescan every origin now and return the ScanResults (`musicfs rescan`)."""
        if self.storage.readonly:
            raise CommandError("the cache index is read-only (its disk refuses writes): no rescans until it "
                               "takes writes again")
        results = self._rescan()
        # Pinned files that changed are fetched again in the background, not before answering.
        self.refresh_pins_soon()
        return results

    def _rescan(self, origins: list | None = None) -> list:
        """One rescan of every origin (or of `origins`), the background loop's and `musicfs
        rescan`'s alike."""
        with self._scan_lock:
            results = self.scanner.scan(origins)
        for result in results:
            if result.complete:
                self._scan_retry.pop(result.origin, None)
                self.health.answered(result.origin)   # a complete scan proves the origin answers
        self.publish_status()   # a `musicfs status` right after shows this scan
        return results

    def _scan_if_never_scanned(self, origin: str) -> None:
        """An origin left out of the first mount (it did not answer, refused the connection)
        answers now: its files appear with a rescan now, not at the next rescan interval."""
        if not self.storage.readonly and not self.catalog.last_scan(origin):
            log.info("origin %s answers for the first time: rescanning", origin)
            self.request_rescan(origin)

    def scanning(self) -> bool:
        """Whether a scan (rescan, first scan of a new origin) is under way now."""
        return self._scan_lock.locked()

    def _scan_again_if_it_failed(self, origin: str) -> None:
        """An origin whose last scan failed (it went away during the scan) answers a health
        check: scan it again now rather than at the next rescan interval, which may be an hour
        of `musicfs health` warning about a blip long over."""
        result = self.scanner.last_results.get(origin)
        if (self.storage.readonly or result is None or result.complete or self.scanning()
                or not self.catalog.last_scan(origin)):   # (never scanned: _scan_if_never_scanned's)
            return
        now = time.monotonic()
        with self._rescan_request_lock:
            next_at, delay = self._scan_retry.get(origin, (0.0, 0.0))
            if origin in self._rescan_names or now < next_at:
                return
            delay = min(max(2 * delay, SCAN_RETRY_FIRST_DELAY), self.config.catalog.rescan_interval)
            self._scan_retry[origin] = (now + delay, delay)
        log.info("origin %s answers again after its last scan failed (%s): rescanning it", origin,
                 result.error or "incomplete")
        self.request_rescan(origin)

    def refresh_pins_soon(self, origin: str | None = None) -> None:
        """Fetch what pinned files lack, in the background: after a rescan, and when an origin
        is healthy again (pins it could not serve before)."""
        if self.stopping or not self.store.pins_exist():
            return
        threading.Thread(target=self.pinner.refresh, kwargs={"stopping": lambda: self._stopping.is_set()},
                         name="pins", daemon=True).start()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self, before_close=None) -> None:
        """Stop background work, abandon in-flight origin I/O, write what is pending, close LMDB.

        Returns promptly even with threads stuck in a hung origin: reads waiting on them fail
        at once, and nothing here waits for them (they end whenever the origin answers).
        `before_close()` runs before the index is closed; if it returns False (callers still
        inside the index), the index is left open for the process's exit to close."""
        with self._stop_lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
        for callback in self.on_stop:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a failing announcement must not keep the cache open
                log.exception("stop callback failed")
        self._rescan_wanted.set()
        self.pool.shutdown(error=ShuttingDown("musicfs is shutting down"))
        self.scanner.cancel_all()
        self.health.stop()
        # Scans in progress stop at their next batch; a thread stuck in a dead origin is a
        # daemon thread and dies with the process.
        for thread in self._threads:
            thread.join(timeout=2.0)
        if before_close is not None and not before_close():
            log.warning("requests still in progress after the stop; leaving the cache index to close at exit")
            with contextlib.suppress(OSError):
                status_path(self.config.cache.dir).unlink()
            return
        try:
            self.store.flush_access_times()
            self.store.save_counters()
            if not self.recovery_pending:
                with self.storage.begin(write=True) as txn:
                    txn.delete(b"dirty", db=self.storage.meta)
        except Exception as e:  # a dead cache disk: the next start runs recovery instead
            log.warning("could not record a clean shutdown (%s); the next start will check the cache", e)
        finally:
            self.storage.close()
            for origin in self.origins.values():
                origin.close()
        with contextlib.suppress(OSError):
            status_path(self.config.cache.dir).unlink()
        log.info("musicfs stopped cleanly")


def _silent_chunk_dir(storage: Storage, timeout: float) -> str | None:
    """Make the chunk directories and list the temp one, waiting at most `timeout`: None if
    that answered (its errors are raised), else why not. chunks/ may live on a disk of its own
    that hangs (a dead NAS, a dying USB disk), and musicfs must then mount all the same."""
    def probe():
        storage.make_chunk_dirs()
        with os.scandir(storage.tmp_dir) as entries:
            next(entries, None)
    return None if finished_within(timeout, probe) else f"no answer within {timeout:g}s"


def _write_error(path) -> OSError | None:
    """Why a file cannot be created (and removed) in `path`, made if missing; None if it can."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".musicfs-write-probe.{os.getpid()}")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return e
    return None
