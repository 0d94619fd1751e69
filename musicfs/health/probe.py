"""`musicfs health`: the cron probe, speaking the Nagios plugin convention.

Every origin is checked in parallel, each in its own daemon thread, and the probe stops
waiting after ``[health].timeout``: a check stuck in a dead NAS is abandoned (the process exits
without joining it), so the probe always finishes within timeout + about a second.

Exit codes: 0 OK, 1 WARNING (an origin not healthy, or the cache cannot take writes),
2 CRITICAL (no origin healthy), 3 UNKNOWN (bad config, internal error).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from .. import origins as origin_factory
from ..config import Config
from ..daemon import CacheLock
from ..inspect import read_status
from ..storage import ENV_NAME, TMP_DIR, Storage
from .monitor import DEGRADED, HEALTHY, UNHEALTHY

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


@dataclass
class OriginVerdict:
    name: str
    status: str = UNHEALTHY
    latency: float | None = None
    error: str | None = None


@dataclass
class Verdict:
    code: int
    origins: list[OriginVerdict]
    cache: dict
    daemon: dict
    summary: str = ""
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def first_line(self) -> str:
        healthy = sum(o.status == HEALTHY for o in self.origins)
        perf = [f"origins_healthy={healthy};;;0;{len(self.origins)}"]
        for o in self.origins:
            perf.append(f"'latency_{o.name}'={o.latency if o.latency is not None else 'U'}"
                        f"{'s' if o.latency is not None else ''};;;0")
        perf.append(f"cache_bytes={self.cache.get('bytes', 'U')}B;;;0;{self.cache.get('max_bytes', '')}")
        return f"MUSICFS {STATUS_NAMES[self.code]} - {self.summary} | {' '.join(perf)}"

    def as_dict(self) -> dict:
        return {"status": STATUS_NAMES[self.code], "exit_code": self.code, "summary": self.summary,
                "origins": {o.name: {"status": o.status, "latency": o.latency, "error": o.error}
                            for o in self.origins},
                "cache": self.cache, "daemon": self.daemon, "seconds": round(self.seconds, 3)}


def check_origins(config: Config) -> list[OriginVerdict]:
    """Check every origin at once; whatever has not answered after the timeout is unhealthy."""
    verdicts = [OriginVerdict(o.name) for o in config.origins]
    done = [threading.Event() for _ in verdicts]

    def run(index: int, origin) -> None:
        started = time.monotonic()
        try:
            origin.check()
        except BaseException as e:  # noqa: BLE001 - any failure is the verdict
            verdicts[index].error = getattr(e, "strerror", None) or str(e) or type(e).__name__
        else:
            verdicts[index].latency = round(time.monotonic() - started, 6)
            verdicts[index].status = HEALTHY if verdicts[index].latency < config.health.timeout / 2 else DEGRADED
        finally:
            done[index].set()

    for index, origin_config in enumerate(config.origins):
        origin = origin_factory.build(origin_config)
        threading.Thread(target=run, args=(index, origin), name=f"probe-{origin.name}", daemon=True).start()
    deadline = time.monotonic() + config.health.timeout
    for index, event in enumerate(done):
        if not event.wait(max(0.0, deadline - time.monotonic())):
            verdicts[index].error = f"no answer within {config.health.timeout:g}s"
    return verdicts


def check_cache(config: Config, daemon: dict | None) -> dict:
    cache_dir = config.cache.dir
    result = {"dir": str(cache_dir), "writable": False, "passthrough": bool(daemon and daemon.get("passthrough")),
              "max_bytes": config.cache.max_size, "bytes": None, "free_bytes": None, "error": None}
    try:
        st = os.statvfs(cache_dir)
        result["free_bytes"] = st.f_bavail * st.f_frsize
        probe = cache_dir / TMP_DIR if (cache_dir / TMP_DIR).is_dir() else cache_dir
        path = probe / f"health-probe.{os.getpid()}"
        with open(path, "wb") as f:
            f.write(b"musicfs health probe\n")
        os.unlink(path)
        result["writable"] = True
    except OSError as e:
        result["error"] = f"{e.strerror}: {e.filename or cache_dir}"
    result["bytes"] = _index_total(cache_dir)
    return result


def _index_total(cache_dir) -> int | None:
    if not (cache_dir / ENV_NAME).is_dir():
        return None
    try:
        # Without LMDB's lock file: the probe must work on a read-only cache disk too, and one
        # integer read beside a live writer is at worst a moment old.
        storage = Storage(cache_dir, disk_readonly=True)
    except Exception:  # noqa: BLE001 - the cache check reports what it can
        return None
    try:
        with storage.begin() as txn:
            return storage.get_u64(txn, b"total")
    finally:
        storage.env.close()


def probe(config: Config) -> Verdict:
    started = time.monotonic()
    daemon_status = read_status(config.cache.dir)
    origins = check_origins(config)
    cache = check_cache(config, daemon_status)
    pid = CacheLock.holder(config.cache.dir)
    daemon = {"running": pid is not None, "pid": pid}
    healthy = sum(o.status == HEALTHY for o in origins)
    problems = [f"origin {o.name} {o.status}" + (f" ({o.error})" if o.error else "")
                for o in origins if o.status != HEALTHY]
    if not cache["writable"]:
        problems.append(f"cache not writable ({cache['error']})")
    if cache["passthrough"]:
        problems.append("cache in passthrough")
    if cache["free_bytes"] is not None and cache["bytes"] is not None and \
            cache["free_bytes"] < config.cache.max_size - cache["bytes"]:
        problems.append(f"cache disk has {cache['free_bytes'] >> 20} MiB free, less than max_size still needs")
    if healthy == 0:
        code = CRITICAL
    elif problems:
        code = WARNING
    else:
        code = OK
    summary = f"{healthy}/{len(origins)} origins healthy"
    if problems:
        summary += "; " + "; ".join(problems)
    summary += f"; daemon {'PID ' + str(pid) if pid is not None else 'not running'}"
    return Verdict(code, origins, cache, daemon, summary, time.monotonic() - started, problems)
