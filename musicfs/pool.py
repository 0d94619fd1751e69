"""One shared thread pool for all origin I/O, with a per-origin budget of workers.

A timed-out future does not stop its thread: a read stuck in a dead NFS syscall keeps its
worker until the kernel gives up. So each origin (and each lane of it: reads, health checks)
may have at most ``limit`` tasks *running* in the shared pool; further tasks wait in that
origin's queue without holding any thread. A dead origin can therefore tie up at most its
budget of workers, and reads of other origins and their health checks always find a worker.
"""
from __future__ import annotations

import collections
import threading
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor

from .errors import ShuttingDown

READ_LANE = "read"
CHECK_LANE = "check"
# Loads of cached chunks ahead of a sequential reader: cache-disk work, budgeted like an
# origin's so a slow or hung cache disk can hold at most this many workers.
PRELOAD_LANE = "preload"
CACHE_DISK = "(cache disk)"
PRELOAD_WORKERS = 4
# Loads of cached chunks a read waits for, and probes of the cache disk: cache-disk work that
# must be bounded by a timeout like origin I/O (a hung cache disk holds at most these workers).
LOAD_LANE = "load"
LOAD_WORKERS = 4


class OriginPool:
    def __init__(self, max_workers: int, per_origin: int, *, per_origin_checks: int = 1):
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="io")
        self.max_workers = max_workers
        self.limits = {READ_LANE: per_origin, CHECK_LANE: per_origin_checks, PRELOAD_LANE: PRELOAD_WORKERS,
                       LOAD_LANE: LOAD_WORKERS}
        self._running: collections.Counter[tuple[str, str]] = collections.Counter()
        self._queued: dict[tuple[str, str], collections.deque] = collections.defaultdict(collections.deque)
        self._started: set[Future] = set()   # tasks handed to a thread and not finished yet
        self._lock = threading.Lock()
        self._closed = False

    def resize(self, max_workers: int, per_origin: int) -> None:
        """A reload changed the origins or their budget: at least `max_workers` threads from
        now on. ThreadPoolExecutor starts threads lazily up to its _max_workers, so raising it
        is all that growing takes; it never shrinks (idle threads cost little)."""
        with self._lock:
            self.limits[READ_LANE] = per_origin
            if max_workers > self.max_workers:
                self.max_workers = max_workers
                self.executor._max_workers = max_workers

    def submit(self, origin: str, fn, *args, lane: str = READ_LANE) -> Future:
        """Run fn(*args) in the pool within the origin's budget. Cancel the returned future to
        drop a task that has not started yet."""
        future: Future = Future()
        slot = (origin, lane)
        with self._lock:
            if self._closed:
                future.set_exception(ShuttingDown("musicfs is shutting down"))
                return future
            if self._running[slot] < self.limits[lane]:
                self._running[slot] += 1
                start = True
            else:
                self._queued[slot].append((future, fn, args))
                start = False
        if start:
            self._start(slot, future, fn, args)
        return future

    def busy(self, origin: str, lane: str = READ_LANE) -> int:
        """Tasks of this origin running now (stuck ones included)."""
        with self._lock:
            return self._running[(origin, lane)]

    def _start(self, slot, future, fn, args) -> None:
        with self._lock:
            self._started.add(future)
        try:
            self.executor.submit(self._run, slot, future, fn, args)
        except RuntimeError as e:  # the executor is shut down
            if future.set_running_or_notify_cancel():
                future.set_exception(e)
            self._release(slot)

    def _run(self, slot, future: Future, fn, args) -> None:
        try:
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as e:
                    outcome = (future.set_exception, e)
                else:
                    outcome = (future.set_result, result)
                try:
                    outcome[0](outcome[1])
                except InvalidStateError:
                    pass  # failed by shutdown() while it ran: its waiters are long gone
        finally:
            with self._lock:
                self._started.discard(future)
            self._release(slot)

    def _release(self, slot) -> None:
        while True:
            with self._lock:
                queue = self._queued.get(slot)
                if not queue:
                    self._running[slot] -= 1
                    return
                future, fn, args = queue.popleft()
            if future.cancelled():
                continue  # its waiter gave up before it started: skip without a thread hop
            self._start(slot, future, fn, args)
            return

    def shutdown(self, error: BaseException | None = None) -> None:
        """Stop accepting work; queued tasks are cancelled, running ones are abandoned (a thread
        stuck in a dead origin's syscall cannot be interrupted). With `error`, whoever waits on
        a running task gets that error now instead of waiting out its timeout."""
        with self._lock:
            self._closed = True
            queued = [item for q in self._queued.values() for item in q]
            self._queued.clear()
            running = list(self._started)
        for future, _, _ in queued:
            future.cancel()
        if error is not None:
            for future in running:
                try:
                    future.set_exception(error)
                except InvalidStateError:
                    pass  # it finished meanwhile
        self.executor.shutdown(wait=False, cancel_futures=True)


def finished_within(timeout: float, fn, *args) -> bool:
    """Run fn(*args) in a thread of its own, waiting at most `timeout`: True if it returned
    (what it raised is raised here), False if it is still running - waiting on a disk that
    does not answer. For start-up, before the pool exists; the thread is a daemon thread and
    ends whenever the disk answers, or with the process."""
    outcome: list = []

    def run():
        try:
            fn(*args)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            outcome.append(e)
    thread = threading.Thread(target=run, name=f"bounded-{getattr(fn, '__name__', 'call')}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return False
    if outcome[0] is not None:
        raise outcome[0]
    return True
