"""Checks that may hang forever, each in a forked child process the cron probe can abandon.

A thread waiting on a hung NAS (a FUSE or NFS server that received the request and never
answers) is in an uninterruptible kernel wait: it cannot be killed, and a process cannot finish
exiting while one of its threads is in it. So the probe never touches an origin, its own mount
or the cache dir itself. Each such check runs in a child forked before any thread exists; the
child reports one JSON line through a pipe, and the parent waits for all of them until one
deadline. A child that has not answered by then is sent SIGKILL (which ends any killable wait
at once) and abandoned: never waited for. Its stdin/stdout/stderr are /dev/null, so a child
stuck for hours holds no pipe its caller (cron) waits on.

No pile-up: each check has a record file (``<runtime dir>/musicfs-<scope>.check-<key>.json``)
holding the checking child's PID and start time. While that process is alive, the next probe
does not start the same check again; it reports "previous check still stuck for N s". A child
that finishes removes its record; a record whose process is gone (killed, then released by the
server) is stale and replaced. So a probe run every minute leaves at most one stuck process per
check, whatever the NAS does.
"""
from __future__ import annotations

import errno
import json
import os
import select
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ..status import process_start_ticks, runtime_dir, runtime_name


@dataclass
class Outcome:
    """What became of one check. Exactly one of `value`, `error`, `timed_out`, `stuck` holds."""
    value: dict | None = None          # the child's result
    error: str | None = None           # the check raised: its message
    error_code: int | None = None      # ... and its errno, if it was an OSError
    timed_out: bool = False            # no answer before the deadline (the child is abandoned)
    stuck: float | None = None         # seconds an earlier probe's check has been stuck
    stuck_pid: int | None = None


def record_path(scope, key: str) -> Path:
    return runtime_dir() / f"{runtime_name(scope)}.check-{key}.json"


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def still_stuck(path: Path) -> tuple[int, float] | None:
    """(PID, seconds) of the earlier check recorded at `path` if that process is still alive;
    otherwise the record is stale (its process finished or was killed): remove it, None."""
    record = _read_record(path)
    if record is None:
        return None
    pid, ticks = record.get("pid"), record.get("start_ticks")
    if isinstance(pid, int) and ticks is not None and process_start_ticks(pid) == ticks:
        return pid, max(0.0, time.time() - float(record.get("started") or time.time()))
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    return None


def _describe(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


class Checks:
    """Start checks (callables returning a JSON-able dict), then `collect` them by a deadline.

    `scope` (a cache dir or a mountpoint) and each check's key name its record file."""

    def __init__(self, scope):
        self.scope = scope
        self._running: dict[str, tuple[int, int]] = {}   # key -> (pid, read end of its pipe)
        self.outcomes: dict[str, Outcome] = {}

    def start(self, key: str, check) -> None:
        record = record_path(self.scope, key)
        stuck = still_stuck(record)
        if stuck is not None:
            self.outcomes[key] = Outcome(stuck=stuck[1], stuck_pid=stuck[0])
            return
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            _child(check, record, key, read_end, write_end)   # never returns
        os.close(write_end)
        self._running[key] = (pid, read_end)

    def collect(self, deadline: float) -> dict[str, Outcome]:
        """Wait for the running checks until `deadline` (time.monotonic()); abandon the rest."""
        buffers = {key: b"" for key in self._running}
        open_ends = {fd: key for key, (_, fd) in self._running.items()}
        poller = select.poll()
        for fd in open_ends:
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while open_ends:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ in poller.poll(left * 1000):
                key = open_ends[fd]
                data = os.read(fd, 65536)
                if data:
                    buffers[key] += data
                    continue
                poller.unregister(fd)
                os.close(fd)
                del open_ends[fd]
                self.outcomes[key] = _parse(buffers[key])
                _reap(self._running[key][0])
        for fd, key in open_ends.items():
            pid = self._running[key][0]
            # Ends a killable wait at once; a child in an uninterruptible one dies when its
            # server answers. Either way: not waited for, and its record stops the next probe
            # from starting the same check while it lives.
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(fd)
            self.outcomes[key] = Outcome(timed_out=True)
        self._running.clear()
        return self.outcomes


def _parse(data: bytes) -> Outcome:
    try:
        report = json.loads(data.decode())
    except ValueError:
        return Outcome(error="the check process ended without reporting")
    if "busy" in report:
        return Outcome(stuck=0.0, stuck_pid=report["busy"])
    if "error" in report:
        return Outcome(error=report["error"], error_code=report.get("errno"))
    return Outcome(value=report.get("value") or {})


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _child(check, record: Path, key: str, read_end: int, write_end: int) -> None:
    """In the forked child: hold no descriptor of the caller's, claim the record, run, report."""
    report: dict = {}
    claimed = False
    try:
        os.close(read_end)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, write_end)
        os.closerange(write_end + 1, max(write_end + 1, os.sysconf("SC_OPEN_MAX")))
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        holder = _claim(record, key)
        if holder is not None:
            report = {"busy": holder}
        else:
            claimed = True
            report = {"value": check()}
    except BaseException as e:  # noqa: BLE001 - any failure is the check's answer
        report = {"error": _describe(e), "errno": getattr(e, "errno", None)}
    finally:
        if claimed:
            _release(record)
        try:
            os.write(write_end, json.dumps(report).encode())
        except BaseException:  # noqa: BLE001 - the probe has gone; nobody to tell
            pass
        os._exit(0)


def _claim(record: Path, key: str) -> int | None:
    """Create the record atomically with its contents (link of a temp file): None when this
    child holds it now, else the PID in the record another probe's child made first."""
    me = os.getpid()
    tmp = record.with_name(f"{record.name}.{me}.tmp")
    try:
        tmp.write_text(json.dumps({"pid": me, "start_ticks": process_start_ticks(me), "started": time.time(),
                                   "key": key}))
    except OSError:
        return None   # an unwritable runtime dir must not fail the check itself: run unrecorded
    try:
        os.link(tmp, record)
        return None
    except FileExistsError:
        other = _read_record(record) or {}
        return other.get("pid") if isinstance(other.get("pid"), int) else -1
    finally:
        tmp.unlink()


def _release(record: Path) -> None:
    record_now = _read_record(record)
    if record_now and record_now.get("pid") == os.getpid():
        try:
            record.unlink()
        except OSError:
            pass


def is_enotconn(outcome: Outcome) -> bool:
    return outcome.error_code == errno.ENOTCONN
