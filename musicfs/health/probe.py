"""`musicfs health`: the cron probe, speaking the Nagios plugin convention.

What it looks at:

* The daemon, through the status file it refreshes every second (``Service.publish_status``).
  A status file whose PID is no longer alive was left by a daemon that died (a clean stop
  removes it): CRITICAL, whether or not the origins answer. A live daemon whose file is older
  than ``FRESH_SECONDS`` is wedged somewhere: WARNING, and its view is not trusted.
* Its mount: statvfs of the mountpoint must answer (ENOTCONN = a dead mount; no answer within
  ``[health].timeout`` = a hung one; both CRITICAL).
* Each origin: with a live daemon, its own verdict, when it is at most two health rounds old
  (``VERDICT_INTERVALS``): the probe then needs no credentials of remote origins (cron rarely
  has them), and a hung NAS costs it nothing. The probe checks an origin itself only when no
  daemon runs, the daemon is stale, or it has no recent verdict for that origin; then either
  view finding it not healthy is a problem.
* The cache dir: writable, free space against ``max_size``, index total, lock holder.

Two steps: ``gather`` reads the status file and runs the checks (the only I/O, bounded by the
timeout) into ``Findings``; ``judge`` turns them into the ``Verdict`` without touching anything.

Everything that can hang (an origin, the mount, the cache dir) is checked in a forked child
(see ``isolated``), abandoned at the deadline, and never checked twice at once across runs. The
probe itself touches only local files (the config, the status files, the log), so it finishes
within ``timeout`` plus its own start-up, whatever the NAS does.

Exit codes: 0 OK, 1 WARNING (an origin not healthy, the cache cannot take writes, a stale
daemon), 2 CRITICAL (no origin healthy, the daemon died, the mount is dead or hung), 3 UNKNOWN
(bad config, internal error, no musicfs at the given mountpoint).
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from functools import partial

from .. import origins as origin_factory
from ..config import DEFAULT_HEALTH_TIMEOUT, Config, OriginConfig
from ..cache_lock import CacheLock
from ..status import (DaemonStatus, OriginView, ScanReport, mounted_fstype, read_status_file, runtime_dir,
                      status_path, statuses_of_mountpoint)
from ..database import ENV_NAME, TMP_DIR, U64, Storage
from .isolated import Checks, Outcome, is_enotconn
from .monitor import DEGRADED, HEALTHY, UNHEALTHY

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
# The daemon rewrites its status file every second; older than this, its view is not current.
FRESH_SECONDS = 10.0
_RANK = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
# A live daemon's verdict on an origin stands for the probe's own check while it is at most this
# many health rounds old: a round is [health].interval plus the check's own time (up to
# [health].timeout), and the status file that carries it is rewritten every STATUS_LAG seconds.
VERDICT_INTERVALS = 2
STATUS_LAG = 1.0


def _standing_verdict(view: OriginView | None, now: float, health) -> str | None:
    """Why the daemon's verdict on an origin stands in for the probe's check, or None."""
    if view is None or view.status not in _RANK:
        return None
    if view.decided_at is None:
        # (a daemon from before verdicts were dated: trusted only when it found a problem)
        return f"the daemon holds it {view.status}" if view.status != HEALTHY else None
    age = now - view.decided_at
    # (dated in the future: the clock stepped back, or the file is not the daemon's; not trusted)
    if not -STATUS_LAG <= age <= VERDICT_INTERVALS * (health.interval + health.timeout) + STATUS_LAG:
        return None
    age = max(age, 0.0)
    return f"the daemon holds it {view.status} (its check {age:.0f}s ago)"


@dataclass(frozen=True)
class ProbeCheck:
    """The probe's own check of an origin."""
    status: str
    latency: float | None
    error: str | None


@dataclass
class OriginVerdict:
    name: str
    status: str = UNHEALTHY           # the worse of the two views
    latency: float | None = None
    error: str | None = None
    daemon: OriginView | None = None  # the live daemon's view (its status-file entry), if fresh
    probe: ProbeCheck | None = None   # the probe's own check; None = not checked
    not_checked: str | None = None    # why the probe left it alone
    last_scan: float | None = None    # unix time of its last complete scan (the index), if any

    def as_dict(self) -> dict:
        return {"status": self.status, "latency": self.latency, "error": self.error,
                "daemon": self.daemon.to_json() if self.daemon is not None else None,
                "probe": dataclasses.asdict(self.probe) if self.probe is not None else None,
                "not_checked": self.not_checked, "last_scan": self.last_scan}


@dataclass
class Verdict:
    code: int
    origins: list[OriginVerdict]
    cache: dict
    daemon: dict
    summary: str = ""
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    mount: dict | None = None
    config: Config | None = None      # what was checked (the log goes to its log file)

    def perfdata(self) -> list[str]:
        """Nagios perfdata: 'label'=value[unit];warn;crit;min;max, `U` for an unknown value."""
        if not self.origins and not self.cache:
            return []
        healthy = sum(o.status == HEALTHY for o in self.origins)
        perf = [f"origins_healthy={healthy};;;0;{len(self.origins)}"]
        for o in self.origins:
            perf.append(f"'latency_{o.name}'={_number(o.latency, 's', 6)};;;0")
        if self.cache:
            limit = self.cache.get("max_bytes")
            perf.append(f"cache_bytes={_number(self.cache.get('bytes'), 'B', 0)};;;0"
                        + (f";{limit}" if limit is not None else ""))
        return perf

    def first_line(self) -> str:
        perf = self.perfdata()
        return f"MUSICFS {STATUS_NAMES[self.code]} - {self.summary}" + (f" | {' '.join(perf)}" if perf else "")

    def as_dict(self) -> dict:
        return {"status": STATUS_NAMES[self.code], "exit_code": self.code, "summary": self.summary,
                "origins": {o.name: o.as_dict() for o in self.origins}, "problems": self.problems,
                "cache": self.cache, "daemon": self.daemon, "mount": self.mount, "seconds": round(self.seconds, 3)}


def _number(value, unit: str, decimals: int) -> str:
    """Fixed decimals (never 6.5e-05), and a bare `U` when unknown."""
    if value is None:
        return "U"
    return f"{value:.{decimals}f}{unit}"


# -- the checks, run in forked children ------------------------------------------------------

def _check_origin(origin_config: OriginConfig) -> dict:
    origin = origin_factory.build(origin_config)
    started = time.monotonic()
    origin.check()
    return {"latency": round(time.monotonic() - started, 6)}


def _check_mount(mountpoint: str) -> dict:
    # statfs always reaches the filesystem's server (a stat may come from the attribute cache).
    os.statvfs(mountpoint)
    return {}


def _check_cache(cache_dir) -> dict:
    result = {"writable": False, "free_bytes": None, "error": None, "holder": None}
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
    result.update(_index_figures(cache_dir))
    try:
        result["holder"] = CacheLock.holder(cache_dir)
    except OSError:
        pass
    return result


def _index_figures(cache_dir) -> dict:
    """The index's totals: bytes, pinned bytes, hit and miss counters (the daemon adds its
    own every few seconds), and each origin's last complete scan; None where unreadable."""
    figures = {"bytes": None, "pinned_bytes": None, "hits": None, "misses": None, "scanned": {}}
    if not (cache_dir / ENV_NAME).is_dir():
        return figures
    try:
        # Without LMDB's lock file: the probe must work on a read-only cache disk too, and a
        # few integers read beside a live writer are at worst a moment old.
        storage = Storage(cache_dir, disk_readonly=True)
    except Exception:  # noqa: BLE001 - the cache check reports what it can
        return figures
    try:
        with storage.begin() as txn:
            figures.update(bytes=storage.get_u64(txn, b"total"), pinned_bytes=storage.get_u64(txn, b"pinned"),
                           hits=storage.get_u64(txn, b"hits"), misses=storage.get_u64(txn, b"misses"))
            cursor = txn.cursor(db=storage.meta)
            if cursor.set_range(b"scanned:"):
                for key, value in cursor:
                    if not key.startswith(b"scanned:"):
                        break
                    figures["scanned"][key[len(b"scanned:"):].decode(errors="replace")] = \
                        U64.unpack(value)[0] / 1e9
    finally:
        storage.env.close()
    return figures


def _failure(outcome: Outcome, timeout: float) -> str | None:
    """Why an isolated check did not succeed, in words; None if it did."""
    if outcome.timed_out:
        return f"no answer within {timeout:g}s"
    if outcome.stuck is not None:
        return f"previous check still stuck for {outcome.stuck:.0f}s (PID {outcome.stuck_pid})"
    return outcome.error


def scan_problems(name: str, scan: ScanReport | None) -> list[str]:
    """What the daemon's last scan of origin `name` could not do (its status entry's `scan`)."""
    if scan is None:
        return []
    problems = []
    unreadable = scan.unreadable
    if unreadable:
        count = len(unreadable)
        shown = ", ".join(unreadable[:3]) + (f", and {count - 3} more" if count > 3 else "")
        problems.append(f"origin {name}: {count} director{'y' if count == 1 else 'ies'} could not be listed "
                        f"at the last scan ({shown})")
    if scan.error:
        problems.append(f"origin {name}: the last scan failed ({scan.error})")
    return problems


# -- the probe -------------------------------------------------------------------------------

def probe(config: Config | None, mountpoint=None) -> Verdict:
    """Check the daemon of `mountpoint` (if given: its status file names it) or of `config`'s
    cache. `config` may be None only with a mountpoint; the daemon's published config is used."""
    started = time.monotonic()
    if mountpoint is not None:
        mountpoint = os.path.abspath(mountpoint)
        statuses = statuses_of_mountpoint(mountpoint)
        if not statuses:
            return _unserved(mountpoint, config, started)
        status = statuses[0]
        config = status.config or config
        if config is None:
            return Verdict(UNKNOWN, [], {}, {}, f"the daemon of {mountpoint} publishes no configuration; "
                           f"give its config file with -c", time.monotonic() - started)
    else:
        status = read_status_file(config.cache.dir)
    return judge(gather(config, status, mountpoint, started))


@dataclass
class Findings:
    """What the probe saw, before any judgement: the daemon's status file (and what it says of
    the daemon), the daemon's standing verdicts on origins, and the outcomes of the checks the
    probe ran itself (each in an abandonable process)."""
    config: Config
    started: float                    # time.monotonic() when the probe began
    status: DaemonStatus | None       # the daemon's status file, if any
    daemon: dict                      # running, pid, fresh, died, status_age, mountpoint, started, status_file
    watched_mount: str | None         # the mountpoint checked, if any
    views: dict[str, OriginView]      # origin -> the daemon's view (live daemon), fresh or not
    standing: dict                    # origin -> why the daemon's verdict stands for the probe's check
    outcomes: dict                    # "mount" / "cache" / "origin-NAME" -> Outcome

    @property
    def fresh_views(self) -> dict[str, OriginView]:
        """The daemon's views, if its status file is fresh."""
        return self.views if self.daemon["fresh"] else {}


def gather(config: Config, status: DaemonStatus | None, mountpoint: str | None, started: float) -> Findings:
    """Read the daemon's status and run, in parallel and bounded by [health].timeout, the checks
    it cannot answer for itself: its mount answering, the cache dir, and each origin it has no
    recent verdict on."""
    now = time.time()
    daemon = {"running": False, "pid": None, "fresh": False, "died": False, "status_age": None,
              "mountpoint": None, "started": None, "status_file": str(status_path(config.cache.dir)),
              # a file there that names no daemon: a live one replaces it whole every second
              "status_unreadable": status is None and status_path(config.cache.dir).exists()}
    if status is not None:
        age = now - status.updated
        # dated in the future (the clock stepped back): nothing says the daemon wrote it lately
        future = age < -STATUS_LAG
        daemon.update(pid=status.pid, mountpoint=status.mountpoint,
                      status_age=None if future else round(max(age, 0.0), 3), started=status.started)
        if status.alive:
            daemon.update(running=True, fresh=not future and age < FRESH_SECONDS)
        else:
            daemon["died"] = True
    views = status.origins if daemon["running"] else {}
    fresh_views = views if daemon["fresh"] else {}

    checks = Checks(config.cache.dir)
    watched_mount = mountpoint or daemon["mountpoint"]
    if status is not None and watched_mount:
        checks.start("mount", partial(_check_mount, watched_mount))
    checks.start("cache", partial(_check_cache, config.cache.dir))
    standing = {}
    for origin_config in config.origins:
        reason = _standing_verdict(fresh_views.get(origin_config.name), now, config.health)
        if reason is not None:
            standing[origin_config.name] = reason
            continue
        checks.start(f"origin-{origin_config.name}", partial(_check_origin, origin_config))
    outcomes = checks.collect(started + config.health.timeout)
    return Findings(config, started, status, daemon, watched_mount, views, standing, outcomes)


def judge(findings: Findings) -> Verdict:
    """The verdict on what was found: no I/O, nothing waited for."""
    critical: list[str] = []
    problems: list[str] = []
    mount = _judge_daemon_and_mount(findings, critical, problems)
    verdicts = _judge_origins(findings, problems)
    cache = _judge_cache(findings, verdicts, problems)
    daemon = findings.daemon
    healthy = sum(o.status == HEALTHY for o in verdicts)
    code = CRITICAL if critical or healthy == 0 else WARNING if problems else OK
    parts = [f"{healthy}/{len(verdicts)} origins healthy", *critical, *problems]
    if not daemon["died"]:
        parts.append(f"daemon PID {daemon['pid']}" if daemon["running"] else "daemon not running")
    return Verdict(code, verdicts, cache, daemon, "; ".join(parts), time.monotonic() - findings.started,
                   critical + problems, mount, findings.config)


def _judge_daemon_and_mount(findings: Findings, critical: list, problems: list) -> dict | None:
    daemon, timeout = findings.daemon, findings.config.health.timeout
    if daemon["died"]:
        critical.append(f"daemon PID {daemon['pid']} died (killed or crashed: it left its status file behind)")
    elif daemon["running"] and not daemon["fresh"]:
        problems.append(f"daemon PID {daemon['pid']} has not refreshed its status for {daemon['status_age']:.0f}s"
                        if daemon["status_age"] is not None else
                        f"daemon PID {daemon['pid']}'s status file is dated in the future (the clock went back?)")
    if daemon["status_unreadable"]:
        problems.append(f"the status file {daemon['status_file']} names no daemon (damaged, or not musicfs's): "
                        f"its daemon may have died; check its mount, then remove the file")
    outcome = findings.outcomes.get("mount")
    if outcome is None:
        return None
    watched = findings.watched_mount
    fstype = mounted_fstype(watched)
    failure = _failure(outcome, timeout)
    if is_enotconn(outcome):
        critical.append(f"mount {watched} is dead ({outcome.error})")
    elif failure is not None:
        critical.append(f"mount {watched} does not answer: {failure}")
    elif fstype is None:
        critical.append(f"{watched} is {'no longer' if daemon['died'] else 'not'} mounted")
    return {"mountpoint": watched, "answers": failure is None, "mounted": fstype is not None,
            "fstype": fstype, "error": failure}


def _judge_origins(findings: Findings, problems: list) -> list[OriginVerdict]:
    """Each origin: the worse of the daemon's view and the probe's own check (either may be
    missing); a current latency only from a side that finds it healthy."""
    verdicts = []
    for origin_config in findings.config.origins:
        name = origin_config.name
        verdict = OriginVerdict(name)
        view = findings.fresh_views.get(name)
        if view is not None and view.status in _RANK:
            verdict.daemon = view
        outcome = findings.outcomes.get(f"origin-{name}")
        if outcome is None:
            verdict.not_checked = findings.standing[name]
        else:
            verdict.probe = _probe_view(outcome, findings.config.health.timeout)
        seen = [v for v in (verdict.daemon, verdict.probe) if v is not None]
        verdict.status = max((v.status for v in seen), key=_RANK.__getitem__)
        # A current answer's latency: the daemon keeps its last good one while an origin is down.
        # None when either side finds it failing: a latency says the origin answers.
        verdict.latency = None if verdict.status == UNHEALTHY else next(
            (v.latency for v in (verdict.probe, verdict.daemon)
             if v is not None and v.status == HEALTHY and v.latency is not None), None)
        reasons = [f"{who}: {v.error or v.status}" for who, v in (("daemon", verdict.daemon), ("probe", verdict.probe))
                   if v is not None and v.status != HEALTHY]
        verdict.error = "; ".join(reasons) or None
        if verdict.status != HEALTHY:
            problems.append(f"origin {verdict.name} {verdict.status} ({verdict.error})")
        if name in findings.views:
            problems.extend(scan_problems(name, findings.views[name].scan))
        verdicts.append(verdict)
    return verdicts


def _judge_cache(findings: Findings, verdicts: list[OriginVerdict], problems: list) -> dict:
    config, daemon, status = findings.config, findings.daemon, findings.status
    cache = {"dir": str(config.cache.dir), "writable": False,
             "passthrough": bool(daemon["running"] and status.passthrough),
             "max_bytes": config.cache.max_size, "bytes": None, "free_bytes": None, "error": None,
             "pinned_bytes": None, "hits": None, "misses": None}
    outcome = findings.outcomes["cache"]
    if outcome.value is not None:
        holder = outcome.value.pop("holder", None)
        scanned = outcome.value.pop("scanned", {})
        for verdict in verdicts:
            verdict.last_scan = scanned.get(verdict.name)
        cache.update(outcome.value)
        if holder is not None and not daemon["running"]:
            daemon.update(running=True, pid=holder)   # holds the lock but publishes no status
    else:
        cache["error"] = _failure(outcome, config.health.timeout)
    if not cache["writable"]:
        problems.append(f"cache not writable ({cache['error']})")
    if cache["passthrough"]:
        problems.append("cache in passthrough" + (f" ({status.passthrough_reason})"
                                                  if status.passthrough_reason else ""))
    if cache["free_bytes"] is not None and cache["bytes"] is not None and \
            cache["free_bytes"] < config.cache.max_size - cache["bytes"]:
        problems.append(f"cache disk has {cache['free_bytes'] >> 20} MiB free, less than max_size still needs")
    return cache


def _probe_view(outcome: Outcome, timeout: float) -> ProbeCheck:
    if outcome.value is not None:
        latency = outcome.value.get("latency")
        slow = latency is not None and latency >= timeout / 2
        return ProbeCheck(DEGRADED if slow else HEALTHY, latency, f"slow: answered in {latency:.3f}s" if slow else None)
    return ProbeCheck(UNHEALTHY, None, _failure(outcome, timeout))


def _unserved(mountpoint: str, config: Config | None, started: float) -> Verdict:
    """No status file names `mountpoint`: a dead FUSE mount is CRITICAL, anything else UNKNOWN."""
    timeout = config.health.timeout if config is not None else DEFAULT_HEALTH_TIMEOUT
    checks = Checks(mountpoint)
    checks.start("mount", partial(_check_mount, mountpoint))
    outcome = checks.collect(started + timeout)["mount"]
    fstype = mounted_fstype(mountpoint)
    failure = _failure(outcome, timeout)
    mount = {"mountpoint": mountpoint, "answers": failure is None, "mounted": fstype is not None,
             "fstype": fstype, "error": failure}
    daemon = {"running": False, "pid": None}
    if is_enotconn(outcome):
        code, summary = CRITICAL, f"{mountpoint} is a dead FUSE mount ({outcome.error}); no musicfs daemon serves it"
    elif fstype is not None and "musicfs" in fstype:
        code = CRITICAL if failure else UNKNOWN
        summary = (f"{mountpoint} is a musicfs mount that does not answer ({failure})" if failure else
                   f"{mountpoint} is a musicfs mount but no daemon status names it in {runtime_dir()} "
                   f"(started with another XDG_RUNTIME_DIR?)")
    else:
        code = UNKNOWN
        summary = f"no musicfs is mounted at {mountpoint}" + (f" ({failure})" if failure else "")
    return Verdict(code, [], {}, daemon, summary, time.monotonic() - started, [summary], mount, config)
