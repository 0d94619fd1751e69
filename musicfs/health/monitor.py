"""Origin health: bounded checks, fanned out in parallel over the shared pool, and the state
machine reads consult (healthy -> degraded -> unhealthy, back to healthy on success).

* Each check runs in the pool's check lane (its own per-origin budget, so reads stuck on an
  origin cannot starve its checks, and a stuck check cannot pile up: one that has not returned
  is not submitted again, it simply counts as another failure).
* A round submits every origin's check, then waits once for all of them until ``timeout``:
  N hung origins are judged in one timeout, not N.
* Reads report their failures here too; an origin judged unhealthy is not asked again by reads
  (they fail fast or go to a replica) until a check succeeds.
* The cache disk's state (passthrough when chunk writes fail or loads hang) is probed in the
  same loop, through a callback that bounds the probe.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field

from ..errors import OriginUnavailable, ShuttingDown
from ..pool import CHECK_LANE, OriginPool
from ..status import OriginView

log = logging.getLogger(__name__)

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
# One failure may be a blip (degraded); this many in a row means the origin is down.
UNHEALTHY_AFTER = 2


@dataclass
class OriginHealth:
    name: str
    state: str = HEALTHY
    consecutive_failures: int = 0
    latency: float | None = None
    error: str = ""
    checked_at: float = 0.0
    answered: bool = False   # any verdict yet (a check, or a read's failure)
    decided_at: float = 0.0  # time.time() of the last verdict: how current it is, for the cron probe
    pending: concurrent.futures.Future | None = field(default=None, repr=False)

    def view(self) -> OriginView:
        # "unknown" until the first verdict: reads treat it as healthy, but nobody has asked yet.
        return OriginView(status=self.state if self.answered else "unknown", latency=self.latency,
                          error=self.error or None, consecutive_failures=self.consecutive_failures,
                          decided_at=self.decided_at or None)


def _timed_check(origin) -> float:
    started = time.monotonic()
    origin.check()
    return time.monotonic() - started


class HealthMonitor:
    def __init__(self, origins, pool: OriginPool, config, cache_probe=None):
        self.origins = {o.name: o for o in origins}
        self.names = [o.name for o in origins]
        self.pool = pool
        self.timeout = config.timeout
        self.interval = config.interval
        # Called every round: sees whether a cache disk that failed takes writes again (bounded
        # by the caller, since that disk may be the thing that hangs).
        self.cache_probe = cache_probe
        # Called with an origin's name when it answers for the first time or is healthy again.
        self.on_recovered: list = []
        # Called with an origin's name after every check it passed (cheap callbacks only).
        self.on_answered: list = []
        self.status = {name: OriginHealth(name) for name in self.names}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_origins(self, origins, config) -> None:
        """A reload: watch these origins from now on. Unchanged ones keep their state; an added
        or replaced one starts healthy (reads will tell otherwise)."""
        with self._lock:
            kept = {o.name: self.status[o.name] for o in origins
                    if o.name in self.status and self.origins.get(o.name) is o}
            self.origins = {o.name: o for o in origins}
            self.names = [o.name for o in origins]
            self.status = {name: kept.get(name) or OriginHealth(name) for name in self.names}
            self.timeout = config.timeout
            self.interval = config.interval

    # -- the background loop -----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_all()
                if self.cache_probe is not None:
                    self.cache_probe()
            except Exception:
                log.exception("health round failed")
            self._stop.wait(self.interval)

    def check_all(self) -> dict[str, OriginHealth]:
        """One round: every origin checked in parallel, the whole round bounded by `timeout`."""
        submitted = {}
        for name in self.names:
            st = self.status[name]
            if st.pending is not None and not st.pending.done():
                self._failed(name, f"previous check still unanswered after {time.monotonic() - st.checked_at:.0f}s")
                continue
            st.checked_at = time.monotonic()
            st.pending = self.pool.submit(name, _timed_check, self.origins[name], lane=CHECK_LANE)
            submitted[name] = st.pending
        if submitted:
            concurrent.futures.wait(submitted.values(), timeout=self.timeout)
        for name, future in submitted.items():
            if not future.done():
                self._failed(name, f"no answer within {self.timeout:g}s")
                continue
            try:
                latency = future.result()
            except ShuttingDown:
                continue
            except Exception as e:
                self._failed(name, _describe(e))
            else:
                self._succeeded(name, latency)
        return self.status

    # -- state transitions -------------------------------------------------------------------

    def _failed(self, name: str, error: str) -> None:
        with self._lock:
            st = self.status.get(name)
            if st is None:   # removed by a reload meanwhile
                return
            st.consecutive_failures += 1
            st.error = error
            st.answered = True
            st.decided_at = time.time()
            old = st.state
            st.state = UNHEALTHY if st.consecutive_failures >= UNHEALTHY_AFTER else DEGRADED
        if st.state != old:
            log.warning("origin %s is %s: %s", name, st.state, error)

    def _succeeded(self, name: str, latency: float | None) -> None:
        with self._lock:
            st = self.status.get(name)
            if st is None:   # removed by a reload meanwhile
                return
            old, first = st.state, not st.answered
            st.state, st.consecutive_failures, st.error, st.answered = HEALTHY, 0, "", True
            st.decided_at = time.time()
            if latency is not None:
                st.latency = latency
        if old != HEALTHY:
            log.info("origin %s is healthy again (%s)", name,
                     f"answered in {latency:.3f}s" if latency is not None else "a complete scan of it succeeded")
        callbacks = list(self.on_answered)
        if old != HEALTHY or first:   # the first answer too: nothing was known of it before
            callbacks += self.on_recovered
        for callback in callbacks:
            try:
                callback(name)
            except Exception:  # noqa: BLE001 - a follow-up must not break the health loop
                log.exception("after origin %s answered", name)

    def answered(self, name: str) -> None:
        """Something other than a check proved the origin works (a complete scan of it)."""
        self._succeeded(name, None)

    # -- what reads ask ----------------------------------------------------------------------

    def report_failure(self, name: str, error: BaseException) -> None:
        if name in self.status:
            self._failed(name, _describe(error))

    def admit(self, name: str) -> None:
        """Raise at once instead of waiting out the read timeout on an origin known to be down."""
        st = self.status.get(name)
        if st is not None and st.state == UNHEALTHY:
            raise OriginUnavailable(f"origin {name} is unhealthy ({st.error})")

    def order(self, sources):
        """Sources with usable origins first, keeping priority order within each group."""
        rank = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
        return sorted(sources, key=lambda s: rank[self.status[s.origin].state] if s.origin in self.status else 3)

    def snapshot(self) -> dict[str, OriginView]:
        with self._lock:
            return {name: self.status[name].view() for name in self.names}


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
