"""The daemon speaks systemd's notify protocol to a real datagram socket: READY=1 only once the
mount answers (with MAINPID naming the daemon, also when it forked), STATUS= lines that follow
the origins and the cache, WATCHDOG=1 only while the mount answers, STOPPING=1 on unmount and
SIGTERM. The socket is bound here and handed over in $NOTIFY_SOCKET, as systemd does."""
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from musicfs.daemon.systemd import Notifier, Watchdog, watchdog_interval

from testkit.configs import toml_config
from testkit.process import run_bounded, wait_until
from tests.support.mounts import MUSICFS, ROOT, Daemon, alive, daemon_pid, force_unmount, is_mounted, read_file


class NotifyListener:
    """The receiving end systemd would hold: an AF_UNIX datagram socket, bound at a path or in
    the abstract namespace ('@name'). Messages are kept in order, each as a dict."""

    def __init__(self, address: str):
        self.address = address
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages: list[dict] = []

    def receive(self, timeout: float) -> dict | None:
        """The next message, or None if none arrives within `timeout` seconds."""
        ready, _, _ = select.select([self.socket], [], [], max(0.0, timeout))
        if not ready:
            return None
        data = self.socket.recv(65536).decode()
        message = dict(line.split("=", 1) for line in data.split("\n") if line)
        self.messages.append(message)
        return message

    def wait_for(self, wanted, timeout: float, what: str) -> dict:
        """The first message for which wanted(message) is true, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(deadline - time.monotonic())
            if message is None:
                raise AssertionError(f"no {what} within {timeout}s; received so far: {self.messages}")
            if wanted(message):
                return message

    def quiet_for(self, key: str, seconds: float) -> list[dict]:
        """Everything received within `seconds`, failing if a message with `key` is among it."""
        deadline = time.monotonic() + seconds
        received = []
        while (message := self.receive(deadline - time.monotonic())) is not None:
            assert key not in message, f"{key} arrived while it should not: {message}"
            received.append(message)
        return received

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def abstract_listener():
    listener = NotifyListener(f"@musicfs-test-{os.getpid()}-{secrets.token_hex(4)}")
    yield listener
    listener.close()


@pytest.fixture
def path_listener():
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    directory = tempfile.mkdtemp(prefix="mfs-notify-")
    listener = NotifyListener(os.path.join(directory, "notify"))
    yield listener
    listener.close()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def private_runtime_dir(tmp_path, monkeypatch):
    """Status files of this test only (`musicfs unmount` finds its daemon there)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()


def files_under(root) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


# -- the protocol, without a mount ------------------------------------------------------------

def test_one_datagram_per_message_to_a_path_socket(path_listener):
    notifier = Notifier(path_listener.address)
    assert notifier.send(READY=1, STATUS="two\nlines")
    assert path_listener.receive(5) == {"READY": "1", "STATUS": "two lines"}
    assert notifier.send(WATCHDOG=1)
    assert path_listener.receive(5) == {"WATCHDOG": "1"}
    notifier.close()


def test_abstract_socket_names_start_with_an_at_sign(abstract_listener):
    assert Notifier(abstract_listener.address).send(STOPPING=1)
    assert abstract_listener.receive(5) == {"STOPPING": "1"}


def test_notify_uses_the_socket_named_in_the_environment(abstract_listener, monkeypatch):
    import musicfs.daemon.systemd
    monkeypatch.setattr(musicfs.daemon.systemd, "_default", None)   # read $NOTIFY_SOCKET afresh
    monkeypatch.setenv("NOTIFY_SOCKET", abstract_listener.address)
    assert musicfs.daemon.systemd.notify(STATUS="hello", MAINPID=42)
    assert abstract_listener.receive(5) == {"STATUS": "hello", "MAINPID": "42"}


def test_without_a_socket_nothing_is_sent_and_failures_never_raise(tmp_path):
    assert not Notifier.from_environment({}).enabled
    assert Notifier(None).send(READY=1) is False
    assert not Notifier("relative/path").enabled            # neither a path nor an abstract name
    nobody = Notifier(f"@musicfs-test-nobody-{secrets.token_hex(4)}")
    assert nobody.enabled and nobody.send(READY=1) is False  # ECONNREFUSED: dropped, not raised
    assert Notifier(str(tmp_path / "missing.sock")).send(READY=1) is False


def test_the_watchdog_is_for_the_process_systemd_started_or_the_daemon_it_forked():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "nonsense"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, pid=42, parent=1) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, pid=43, parent=42) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, pid=43, parent=1) is None


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_watchdog_pings_stop_while_the_mount_does_not_answer(abstract_listener, hung_origin):
    """A real FUSE server that stops answering (tests/support/hangfs.py): no pings while it hangs,
    pings again once it answers."""
    hung = hung_origin().start()
    watchdog = Watchdog(Notifier(abstract_listener.address), hung.path, interval=0.4)
    watchdog.start()
    try:
        abstract_listener.wait_for(lambda m: "WATCHDOG" in m, 5, "a first ping")
        hung.hang()
        wait_until(lambda: hung.held() >= 1, message="the watchdog's statvfs to be held by the hung server")
        # Any ping already queued was sent before the held statvfs began.
        while abstract_listener.receive(0) is not None:
            pass
        abstract_listener.quiet_for("WATCHDOG", 2.0)   # ten ping periods
        hung.release()
        abstract_listener.wait_for(lambda m: "WATCHDOG" in m, 5, "a ping once the mount answers again")
    finally:
        watchdog.stop()
        hung.release()


# -- a real daemon -----------------------------------------------------------------------------

@pytest.mark.mount
@pytest.mark.timeout(90)
def test_foreground_daemon_reports_ready_status_watchdog_and_stopping(tmp_path, origins_copy, abstract_listener):
    a, b = origins_copy
    daemon = Daemon(tmp_path, [("a", a), ("b", b)], health={"timeout": 5, "interval": 0.2},
                    fuse={"read_ahead": 0})   # no read-ahead tuning, which would stat the mount first
    env = dict(os.environ, NOTIFY_SOCKET=abstract_listener.address, WATCHDOG_USEC="1000000")
    env.pop("WATCHDOG_PID", None)
    output = open(tmp_path / "foreground.out", "wb")
    process = subprocess.Popen([*MUSICFS, str(daemon.mountpoint), "-f", "-c", str(daemon.config)], cwd=ROOT,
                               env=env, stdout=output, stderr=subprocess.STDOUT)
    daemon.pid = process.pid
    try:
        ready = abstract_listener.wait_for(lambda m: "READY" in m, 30, "READY=1")
        assert is_mounted(daemon.mountpoint) and os.path.ismount(daemon.mountpoint)
        assert abstract_listener.messages[0] is ready, "something was sent before READY=1"
        assert ready["READY"] == "1" and ready["MAINPID"] == str(process.pid)
        files = files_under(daemon.mountpoint)
        assert files > 0
        # (an origin whose first check has not answered yet is named "unknown")
        assert re.fullmatch(rf"serving {files} files from (2/2 origins|[01]/2 origins \([ab] unknown(, b unknown)?\))"
                            rf"; cache 0 B of 1 GiB", ready["STATUS"]), ready

        abstract_listener.wait_for(lambda m: "WATCHDOG" in m, 5, "a first WATCHDOG=1")
        abstract_listener.wait_for(lambda m: "WATCHDOG" in m, 5, "a second WATCHDOG=1")

        read_file(daemon.path("Test Pattern/Signals/01 Sine 440.flac"))
        cached = abstract_listener.wait_for(lambda m: " cache 0 B " not in m.get("STATUS", " cache 0 B "), 10,
                                            "a STATUS= after a file was cached")
        assert re.fullmatch(rf"serving {files} files from .*; cache [\d.]+ (B|KiB|MiB) of 1 GiB",
                            cached["STATUS"]), cached

        away = b.with_name("origin-b-away")
        b.rename(away)
        try:
            abstract_listener.wait_for(lambda m: "from 1/2 origins (b unhealthy)" in m.get("STATUS", ""), 15,
                                       "a STATUS= naming origin b unhealthy")
        finally:
            away.rename(b)
        abstract_listener.wait_for(lambda m: "from 2/2 origins;" in m.get("STATUS", ""), 15,
                                   "a STATUS= with origin b back")

        # systemctl reload: RELOADING=1 (with the monotonic time systemd matches it by), then READY=1.
        os.kill(process.pid, signal.SIGHUP)
        reloading = abstract_listener.wait_for(lambda m: "RELOADING" in m, 10, "RELOADING=1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        abstract_listener.wait_for(lambda m: "READY" in m, 20, "READY=1 after the reload")   # (only newer ones)
        assert "configuration reloaded" in daemon.log()

        result = run_bounded([*MUSICFS, "unmount", str(daemon.mountpoint)], 60, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        stopping = abstract_listener.wait_for(lambda m: "STOPPING" in m, 10, "STOPPING=1")
        assert stopping["STOPPING"] == "1"
        assert process.wait(timeout=20) == 0
        # Nothing after STOPPING=1: the status and watchdog threads ended with it.
        abstract_listener.quiet_for("WATCHDOG", 0)
        assert abstract_listener.messages[-1] is stopping, abstract_listener.messages[-3:]
        # ... and it was sent when the stop began, not once the cache was closed.
        log = daemon.log()
        assert log.index("told systemd the daemon is stopping") < log.index("musicfs stopped cleanly")
    finally:
        daemon.stop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        output.close()


@pytest.mark.mount
@pytest.mark.timeout(90)
def test_forked_daemon_names_itself_mainpid_and_keeps_the_watchdog(tmp_path, origins_copy, path_listener):
    """Without -f: systemd started the CLI (WATCHDOG_PID=its PID), which forks the daemon and
    exits. READY=1 and MAINPID=<daemon> must be queued before the CLI exits; the daemon pings
    the watchdog in its place, and says STOPPING=1 on SIGTERM."""
    a, _ = origins_copy
    daemon = Daemon(tmp_path, [("a", a)])
    env = dict(os.environ, NOTIFY_SOCKET=path_listener.address, WATCHDOG_USEC="1000000")
    # As systemd does: WATCHDOG_PID is the PID of the process it executes.
    command = " ".join(f"'{arg}'" for arg in [*MUSICFS, daemon.mountpoint, "-c", daemon.config])
    try:
        result = run_bounded(["sh", "-c", f"WATCHDOG_PID=$$ exec {command}"], 60, cwd=ROOT, env=env)
        assert result.returncode == 0, result.stderr
        daemon.pid = daemon_pid(daemon.cache_dir)
        assert daemon.pid and alive(daemon.pid)
        ready = path_listener.wait_for(lambda m: "READY" in m, 0, "READY=1 queued before the CLI exited")
        assert ready["MAINPID"] == str(daemon.pid)
        first = path_listener.wait_for(lambda m: "WATCHDOG" in m, 5, "a WATCHDOG=1 from the forked daemon")
        assert first == {"WATCHDOG": "1"}
        os.kill(daemon.pid, signal.SIGTERM)
        path_listener.wait_for(lambda m: "STOPPING" in m, 10, "STOPPING=1 on SIGTERM")
        wait_until(lambda: not alive(daemon.pid) and not is_mounted(daemon.mountpoint), timeout=20,
                   message="the daemon to exit")
        log = daemon.log()
        assert log.index("told systemd the daemon is stopping") < log.index("musicfs stopped cleanly")
    finally:
        daemon.stop()


@pytest.mark.parametrize("unit, scope", [("musicfs.service", []), ("musicfs-user.service", ["--user"])])
def test_the_contrib_units_pass_systemd_analyze_verify(tmp_path, unit, scope):
    """systemd itself parses the units (every key known, commands absolute and executable),
    with the musicfs of this checkout in place of the installed one."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze")
    musicfs = os.path.join(os.path.dirname(sys.executable), "musicfs")   # the console script of this venv
    assert os.access(musicfs, os.X_OK), musicfs
    text = (ROOT / "contrib" / unit).read_text()
    text = text.replace("/usr/local/bin/musicfs", musicfs).replace("%h/.local/bin/musicfs", musicfs)
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "musicfs.service").write_text(text)
    env = dict(os.environ, HOME=str(tmp_path), XDG_RUNTIME_DIR=str(tmp_path / "run"))
    result = run_bounded(["systemd-analyze", *scope, "verify", str(tmp_path / "musicfs.service")], 60, env=env)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_the_system_unit_started_by_systemd_is_ready_once_mounted_pinged_and_unmounted_by_stop(tmp_path):
    """The contrib unit under a real systemd: `systemctl start` returns once the mount serves
    (Type=notify: READY=1), the watchdog hears from it, `systemctl stop` unmounts."""
    if not os.path.isdir("/run/systemd/system") or shutil.which("systemctl") is None:
        pytest.skip("systemd is not this machine's init (no /run/systemd/system): no manager to start a unit; "
                    "the units are still checked by systemd-analyze verify")
    if os.geteuid() != 0:
        pytest.skip("installing a system unit needs root")
    musicfs = os.path.join(os.path.dirname(sys.executable), "musicfs")
    origin, mountpoint = tmp_path / "music", tmp_path / "mnt"
    origin.mkdir()
    (origin / "a.flac").write_bytes(b"a" * 1000)
    mountpoint.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(toml_config([("music", origin)], tmp_path / "cache", tmp_path / "musicfs.log"))
    unit = f"musicfs-test-{os.getpid()}.service"
    text = (ROOT / "contrib" / "musicfs.service").read_text()
    text = (text.replace("/usr/local/bin/musicfs", musicfs).replace("/mnt/music", str(mountpoint))
            .replace("/etc/musicfs/config.toml", str(config)).replace("WatchdogSec=60", "WatchdogSec=4"))
    unit_path = Path("/run/systemd/system") / unit
    unit_path.write_text(text)
    try:
        run_bounded(["systemctl", "daemon-reload"], 60)
        started = run_bounded(["systemctl", "start", unit], 60)
        assert started.returncode == 0, started.stderr
        # start returned: READY=1 came, which the daemon sends only once the mount serves
        assert (mountpoint / "a.flac").read_bytes() == b"a" * 1000

        def watchdog_ping() -> str:
            shown = run_bounded(["systemctl", "show", "-p", "WatchdogTimestampMonotonic", unit], 10).stdout
            return shown.strip().partition("=")[2]
        first = watchdog_ping()
        wait_until(lambda: watchdog_ping() not in ("", "0", first), timeout=10, message="a watchdog ping")
        assert run_bounded(["systemctl", "is-active", unit], 10).stdout.strip() == "active"
        stopped = run_bounded(["systemctl", "stop", unit], 60)
        assert stopped.returncode == 0, stopped.stderr
        assert not is_mounted(mountpoint)
    finally:
        run_bounded(["systemctl", "stop", unit], 60)
        unit_path.unlink()
        run_bounded(["systemctl", "daemon-reload"], 60)
        if is_mounted(mountpoint):
            force_unmount(mountpoint)
