"""Telling systemd how the daemon is doing: readiness, a status line, stopping, the watchdog.

The protocol (sd_notify(3)) is small enough to write out instead of depending on libsystemd:
each message is one datagram of newline-separated ``KEY=VALUE`` lines, sent to the AF_UNIX
SOCK_DGRAM socket named by ``$NOTIFY_SOCKET`` (a filesystem path, or a name in the abstract
namespace written with a leading ``@``). Without ``$NOTIFY_SOCKET`` everything here is a no-op.
Sending never raises into the daemon: a message that cannot be sent is dropped, and the first
such failure is logged at debug level (a systemd that does not listen is not musicfs's problem).

What the daemon sends (``SystemdReporter``):

* ``READY=1`` with ``MAINPID=`` (this process) once the mount answers a ``statvfs``. Run the
  daemon with ``-f`` under ``Type=notify``; without it the daemon forks, ``MAINPID`` then names
  the child and the unit needs ``NotifyAccess=all`` (systemd ignores the child otherwise).
* ``STATUS=`` (``serving N files from K/M origins; cache X of Y``) whenever that line changes,
  looked at as often as the status file is written (``service.STATUS_INTERVAL``).
* ``STOPPING=1`` as soon as a stop begins: a stop signal, or an unmount (``destroy``).
* ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` (when ``$WATCHDOG_PID`` is unset or names this
  process or the one that forked it), and only after a ``statvfs`` of the mountpoint was
  answered: statfs is never answered from a kernel cache, so the answer proves the daemon's
  FUSE threads still serve requests. A wedged FUSE loop stops the pings and systemd restarts
  the service.

Not supported: ``vsock:`` notify addresses, ``BARRIER=1`` (sd_notify_barrier), the file
descriptor store.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

from ..config import format_size
from ..health.monitor import HEALTHY
from .service import STATUS_INTERVAL

log = logging.getLogger(__name__)

# A datagram waits at most this long for room in systemd's receive queue, then it is dropped:
# a stuck service manager must not stall the daemon's threads.
SEND_TIMEOUT = 1.0


class Notifier:
    """Sends sd_notify messages to one socket address; `enabled` is False without one."""

    def __init__(self, address: str | None):
        self.address = address or None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._failure_logged = False
        if self.address is not None and not self.address.startswith(("/", "@")):
            log.debug("NOTIFY_SOCKET=%s is neither a path nor an abstract name; not notifying systemd", self.address)
            self.address = None

    @classmethod
    def from_environment(cls, environ=os.environ) -> "Notifier":
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields) -> bool:
        """Send one message, e.g. send(READY=1, STATUS="...") -> "READY=1\\nSTATUS=...". True
        if it was handed to the socket; False when disabled or it could not be sent."""
        if self.address is None or not fields:
            return False
        # A newline inside a value would start another assignment.
        message = "\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with self._lock:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._socket.settimeout(SEND_TIMEOUT)
                self._socket.sendto(message.encode(), target)
            return True
        except OSError as e:
            if not self._failure_logged:
                self._failure_logged = True
                log.debug("cannot notify systemd at %s (%s); messages that fail are dropped", self.address, e)
            return False

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


_default: Notifier | None = None


def notify(**fields) -> bool:
    """Send one message to the socket named by $NOTIFY_SOCKET (read at the first call)."""
    global _default
    if _default is None:
        _default = Notifier.from_environment()
    return _default.send(**fields)


def watchdog_interval(environ=os.environ, pid: int | None = None, parent: int | None = None) -> float | None:
    """Seconds of systemd's watchdog for this process ($WATCHDOG_USEC), or None when there is
    none or it is meant for another process. $WATCHDOG_PID names the process systemd started;
    the daemon forked from it (musicfs without -f) takes its place, announcing itself with MAINPID."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner:
        pid = os.getpid() if pid is None else pid
        parent = os.getppid() if parent is None else parent
        if not owner.isdigit() or int(owner) not in (pid, parent):
            return None
    return usec / 1_000_000


class Watchdog:
    """Sends WATCHDOG=1 every `interval`/2 seconds, each time only after a statvfs of the
    mountpoint was answered within `interval`/4. The statvfs runs in a helper thread so that a
    wedged mount cannot wedge the watchdog; while a helper is still stuck no other is started
    (one stuck thread at most) and no ping is sent."""

    def __init__(self, notifier: Notifier, mountpoint, interval: float):
        self.notifier = notifier
        self.mountpoint = os.fspath(mountpoint)
        self.period = interval / 2
        self.answer_within = interval / 4
        self._stop = threading.Event()
        # Held while deciding to ping and pinging: after stop() returns no ping follows.
        self._ping_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stuck: threading.Thread | None = None
        self._withholding = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="systemd-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._ping_lock:
            self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            problem = self.mount_problem()
            if problem is None:
                if self._withholding:
                    self._withholding = False
                    log.info("the mount answers again; watchdog pings resume")
                with self._ping_lock:
                    if self._stop.is_set():
                        break
                    self.notifier.send(WATCHDOG=1)
            elif not self._withholding:
                self._withholding = True
                log.warning("withholding systemd's watchdog ping: %s (systemd restarts musicfs if this lasts)",
                            problem)
            self._stop.wait(self.period)

    def mount_problem(self) -> str | None:
        """None if statvfs(mountpoint) was answered in time, else why not."""
        if self._stuck is not None and self._stuck.is_alive():
            return f"a statvfs of {self.mountpoint} is still unanswered"
        answered = threading.Event()
        outcome: list[str] = []

        def probe():
            try:
                os.statvfs(self.mountpoint)
            except OSError as e:
                outcome.append(f"statvfs of {self.mountpoint} failed: {e.strerror}")
            finally:
                answered.set()
        thread = threading.Thread(target=probe, name="watchdog-statvfs", daemon=True)
        thread.start()
        if not answered.wait(self.answer_within):
            self._stuck = thread
            return f"{self.mountpoint} did not answer statvfs within {self.answer_within:g}s"
        return outcome[0] if outcome else None


class SystemdReporter:
    """What the daemon tells systemd over its whole life; a no-op without $NOTIFY_SOCKET."""

    def __init__(self, notifier: Notifier, mountpoint, service, watchdog: float | None):
        self.notifier = notifier
        self.mountpoint = os.fspath(mountpoint)
        self.service = service
        self.watchdog = Watchdog(notifier, mountpoint, watchdog) if watchdog and notifier.enabled else None
        self._stopping = threading.Event()
        # Held while sending a status line and while stopping: nothing follows STOPPING=1.
        self._send_lock = threading.Lock()
        self._last_status: str | None = None
        self._files_key = None
        self._files = 0

    @classmethod
    def from_environment(cls, mountpoint, service, environ=os.environ) -> "SystemdReporter":
        """Call early in the daemon: the watchdog check compares $WATCHDOG_PID with the parent
        process, which is still the one systemd started while it waits for the daemon to mount."""
        return cls(Notifier.from_environment(environ), mountpoint, service, watchdog_interval(environ))

    # -- the daemon's life ---------------------------------------------------------------------

    def ready(self) -> None:
        """The mount is up: READY=1, MAINPID and the first status, then the status and watchdog
        threads. Waits for the mount to answer (the kernel has finished INIT then)."""
        if not self.notifier.enabled or self._stopping.is_set():
            return
        try:
            os.statvfs(self.mountpoint)
        except OSError as e:
            log.warning("not telling systemd the mount is ready: statvfs of %s failed (%s)",
                        self.mountpoint, e.strerror)
            return
        # Never raise from here: the daemon reports "ready" to its parent right after.
        try:
            status = self.status_line()
        except Exception as e:  # noqa: BLE001 - readiness matters more than the line
            log.debug("no systemd status yet: %s", e)
            status = "serving"
        self._last_status = status
        self.notifier.send(READY=1, MAINPID=os.getpid(), STATUS=status)
        threading.Thread(target=self._status_loop, name="systemd-status", daemon=True).start()
        if self.watchdog is not None:
            self.watchdog.start()

    def reloading(self) -> None:
        """A reload (SIGHUP) began: RELOADING=1 with the time systemd needs to match it to the
        request (Type=notify-reload); reloaded() says READY=1 again when it is done."""
        with self._send_lock:
            if self.notifier.enabled and not self._stopping.is_set():
                usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                self.notifier.send(RELOADING=1, MONOTONIC_USEC=usec, STATUS="reloading the configuration")

    def reloaded(self) -> None:
        with self._send_lock:
            if self.notifier.enabled and not self._stopping.is_set():
                self.notifier.send(READY=1, STATUS=self._last_status or "serving")

    def stopping(self) -> None:
        """A stop began: STOPPING=1 (once), and the status and watchdog threads end."""
        with self._send_lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            if self.watchdog is not None:
                self.watchdog.stop()
            if self.notifier.send(STOPPING=1, STATUS="stopping"):
                log.debug("told systemd the daemon is stopping")

    # -- the status line -----------------------------------------------------------------------

    def _status_loop(self) -> None:
        while not self._stopping.wait(STATUS_INTERVAL):
            if self.service.stopping:
                return
            try:
                status = self.status_line()
            except Exception as e:  # noqa: BLE001 - a closed or reopened index: next round
                log.debug("no systemd status this round: %s", e)
                continue
            with self._send_lock:
                if status != self._last_status and not self._stopping.is_set():
                    self._last_status = status
                    self.notifier.send(STATUS=status)

    def status_line(self) -> str:
        """e.g. "serving 1234 files from 1/2 origins (nas unhealthy); cache 1.2 GiB of 10.0 GiB"."""
        service = self.service
        origins = service.health.snapshot()
        healthy = sum(view.status == HEALTHY for view in origins.values())
        others = [f"{name} {view.status}" for name, view in origins.items() if view.status != HEALTHY]
        line = f"serving {self.file_count()} files from {healthy}/{len(origins)} origins"
        if others:
            line += f" ({', '.join(others)})"
        line += f"; cache {format_size(service.store.total())} of {format_size(service.store.max_size)}"
        if service.store.disk.passthrough:
            line += " (passthrough: reads go to the origins)"
        return line

    def file_count(self) -> int:
        """Files in the merged tree. Counting them walks every entry, so it is redone only when
        the number of entries (one LMDB stat) or the last scans changed."""
        storage = self.service.storage
        with storage.begin() as txn:
            entries = txn.stat(storage.entries)["entries"]
        results = list(self.service.scanner.last_results.items())
        scans = tuple(sorted((name, result.finished) for name, result in results))
        key = (entries, scans)
        if key != self._files_key:
            self._files = self.service.catalog.counts()[0]
            self._files_key = key
        return self._files
