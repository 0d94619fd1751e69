"""The cron probe tells the truth and always exits: a killed daemon, the daemon's own view of an
origin, the mount answering, `musicfs health MOUNTPOINT`, parseable perfdata, and hung NAS
origins that leave at most one stuck process behind (none when a daemon already knows)."""
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from musicfs.health.isolated import record_path
from musicfs.health.monitor import HEALTHY
from musicfs.health.probe import OriginVerdict, Verdict, scan_problems
from musicfs.status import OriginView, ScanReport, status_path

from testkit.configs import toml_config
from testkit.process import run_bounded, wait_until
from tests.support.mounts import MUSICFS, ROOT, Daemon, alive, force_unmount, is_mounted

TIMEOUT = 1
# One perfdata item: 'label'=value[unit];[warn];[crit];[min];[max], value a plain decimal or U.
PERFDATA_ITEM = re.compile(r"^('[^'=]+'|[^'= ]+)=(U|-?\d+(\.\d+)?(s|ms|us|%|B|KB|MB|GB|TB|c)?)"
                           r"(;(-?\d+(\.\d+)?)?){0,4}$")


# Status files, check records and default log of each test only (tests.conftest).
pytestmark = pytest.mark.usefixtures("private_runtime_dir")


def one_file_origins(tmp_path, *names):
    """Origin directories tmp_path/NAME, each holding NAME.flac."""
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.flac").write_bytes(b"x")


def health(*args, timeout=TIMEOUT):
    """`musicfs health ARGS`, failing the test if it does not exit within timeout + 1 s."""
    started = time.monotonic()
    result = run_bounded([*MUSICFS, "health", *map(str, args)], timeout + 5, cwd=ROOT)
    elapsed = time.monotonic() - started
    assert elapsed < timeout + 1.0, f"the probe took {elapsed:.2f}s: {result.stdout}{result.stderr}"
    return result


def probe_config(tmp_path, origins, **sections):
    config = tmp_path / "probe.toml"
    config.write_text(toml_config(origins, tmp_path / "probe-cache", tmp_path / "probe.log",
                                  health={"timeout": TIMEOUT}, **sections))
    (tmp_path / "probe-cache").mkdir(exist_ok=True)
    return config


def probe_processes(marker: str) -> list[int]:
    """Live (non-zombie) `musicfs health` processes whose command line contains `marker`: the
    probes and the check processes they forked (a fork keeps its parent's command line)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "musicfs.cli" in args and "health" in args and any(marker in a for a in args) and alive(int(entry)):
            found.append(int(entry))
    return found


def status_of(cache_dir) -> dict:
    try:
        return json.loads(status_path(cache_dir).read_text())
    except (OSError, ValueError):
        return {}


def perfdata(line: str) -> list[str]:
    assert " | " in line, line
    return line.split(" | ", 1)[1].split()


# -- perfdata and scan reports (no daemon) ---------------------------------------------------

def test_perfdata_parses_with_unknown_bytes_and_tiny_latencies(tmp_path):
    (tmp_path / "a").mkdir()
    result = health("-c", probe_config(tmp_path, [("a", tmp_path / "a")]))
    assert result.returncode == 0, result.stdout + result.stderr
    items = perfdata(result.stdout.splitlines()[0])
    assert all(PERFDATA_ITEM.match(item) for item in items), items
    assert "cache_bytes=U;;;0;1073741824" in items     # no index yet: unknown, with no unit
    assert re.fullmatch(r"'latency_a'=\d+\.\d{6}s;;;0", items[1]), items
    verdict = Verdict(0, [OriginVerdict("fast", HEALTHY, latency=6.5e-05)], {"bytes": None, "max_bytes": 10},
                      {}, "1/1 origins healthy")
    assert verdict.perfdata() == ["origins_healthy=1;;;0;1", "'latency_fast'=0.000065s;;;0", "cache_bytes=U;;;0;10"]


def test_scan_problems_name_the_unreadable_directories():
    assert scan_problems("nas", ScanReport(complete=True, finished=1.0)) == []
    assert scan_problems("nas", ScanReport(unreadable=("Artist/Foo: Input/output error",))) == \
        ["origin nas: 1 directory could not be listed at the last scan (Artist/Foo: Input/output error)"]
    assert scan_problems("nas", ScanReport(error="scan stalled")) == \
        ["origin nas: the last scan failed (scan stalled)"]
    assert scan_problems("nas", None) == []


def test_mountpoint_without_musicfs_is_unknown(tmp_path):
    (tmp_path / "plain").mkdir()
    result = health(tmp_path / "plain")
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout == f"MUSICFS UNKNOWN - no musicfs is mounted at {tmp_path / 'plain'}\n"


# -- with a daemon -----------------------------------------------------------------------------

@pytest.mark.mount
def test_killed_daemon_is_critical(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.flac").write_bytes(b"x")
    daemon = Daemon(tmp_path, [("a", tmp_path / "a")], health={"timeout": TIMEOUT}).mount()
    try:
        result = health("-c", daemon.config)
        assert result.returncode == 0 and result.stdout.startswith("MUSICFS OK - 1/1 origins healthy"), result.stdout
        os.kill(daemon.pid, 9)
        wait_until(lambda: not alive(daemon.pid), message="the daemon to die")
        for args in (["-c", daemon.config], [daemon.mountpoint], [daemon.mountpoint, "--json"]):
            result = health(*args)
            assert result.returncode == 2, result.stdout + result.stderr
            if "--json" in args:
                verdict = json.loads(result.stdout)
                assert verdict["daemon"]["died"] and verdict["daemon"]["pid"] == daemon.pid
                assert verdict["mount"]["answers"] is False
            else:
                assert result.stdout.startswith("MUSICFS CRITICAL - ")
                assert f"daemon PID {daemon.pid} died" in result.stdout
                assert f"mount {daemon.mountpoint} is dead (Transport endpoint is not connected)" in result.stdout
        # A status file damaged (a disk that lost its last write) still does not pass for health.
        status_path(daemon.cache_dir).write_text("")
        result = health("-c", daemon.config)
        assert result.returncode == 1 and "names no daemon" in result.stdout, result.stdout
    finally:
        force_unmount(daemon.mountpoint)
        daemon.stop()


@pytest.mark.mount
def test_daemon_view_of_an_unhealthy_origin_is_reported_and_not_touched(tmp_path):
    one_file_origins(tmp_path, "a", "b")
    daemon = Daemon(tmp_path, [("a", tmp_path / "a"), ("b", tmp_path / "b")],
                    health={"timeout": TIMEOUT, "interval": 0.2}).mount()
    try:
        (tmp_path / "b").rename(tmp_path / "b-away")
        wait_until(lambda: status_of(daemon.cache_dir).get("origins", {}).get("b", {}).get("status") == "unhealthy",
                   message="the daemon to hold origin b unhealthy")
        result = health("-c", daemon.config, "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        verdict = json.loads(result.stdout)
        b = verdict["origins"]["b"]
        assert b["status"] == "unhealthy" and b["daemon"]["status"] == "unhealthy"
        assert b["probe"] is None and b["not_checked"].startswith("the daemon holds it unhealthy (its check ")
        a = verdict["origins"]["a"]
        assert a["daemon"]["status"] == "healthy" and a["probe"] is None
        result = health(daemon.mountpoint)
        assert result.returncode == 1 and result.stdout.startswith("MUSICFS WARNING - 1/2 origins healthy; "
                                                                   "origin b unhealthy (daemon: "), result.stdout
        assert "2/2" not in result.stdout
    finally:
        (tmp_path / "b-away").rename(tmp_path / "b")
        daemon.stop()


@pytest.mark.mount
def test_health_mountpoint_of_a_mount_started_with_origin_options(tmp_path):
    one_file_origins(tmp_path, "one", "two")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mount = run_bounded([*MUSICFS, str(mountpoint), "-O", str(tmp_path / "one"), "-O", str(tmp_path / "two"),
                         "--cache-dir", str(tmp_path / "cache")], 60, cwd=ROOT)
    assert mount.returncode == 0, mount.stderr
    try:
        result = health(mountpoint, timeout=5)   # the daemon's config: the default [health].timeout
        assert result.returncode == 0, result.stdout + result.stderr
        line = result.stdout.splitlines()[0]
        assert line.startswith("MUSICFS OK - 2/2 origins healthy; daemon PID ")
        assert "'latency_origin1'=" in line and "'latency_origin2'=" in line
        assert all(PERFDATA_ITEM.match(item) for item in perfdata(line))
        verdict = json.loads(health(mountpoint, "--json", timeout=5).stdout)
        assert set(verdict["origins"]) == {"origin1", "origin2"} and verdict["mount"]["answers"]
        assert verdict["cache"]["dir"] == str(tmp_path / "cache")
        assert "health probe: MUSICFS OK" in (tmp_path / "xdg-state" / "musicfs" / "musicfs.log").read_text()
    finally:
        run_bounded([*MUSICFS, "unmount", str(mountpoint)], 60, cwd=ROOT)
        if is_mounted(mountpoint):
            force_unmount(mountpoint)


@pytest.mark.mount
@pytest.mark.slow
def test_mount_that_does_not_answer_is_critical(tmp_path):
    """A SIGSTOPped daemon: its status is still fresh, but its mount answers nothing."""
    (tmp_path / "a").mkdir()
    daemon = Daemon(tmp_path, [("a", tmp_path / "a")], health={"timeout": TIMEOUT}).mount()
    os.kill(daemon.pid, 19)   # SIGSTOP
    try:
        result = health("-c", daemon.config)
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"mount {daemon.mountpoint} does not answer: no answer within 1s" in result.stdout
        # the abandoned statvfs was killed: its request had not reached the stopped daemon
        wait_until(lambda: not probe_processes(str(daemon.config)), timeout=5, message="no probe process left")
    finally:
        os.kill(daemon.pid, 18)   # SIGCONT
        daemon.stop()


# -- hung NAS origins ------------------------------------------------------------------------

@pytest.mark.mount
@pytest.mark.slow
def test_hung_origin_without_daemon_leaves_at_most_one_stuck_check(tmp_path, hung_origin):
    h = hung_origin().start()
    (h.backing / "x.flac").write_bytes(b"x")
    (tmp_path / "ok").mkdir()
    config = probe_config(tmp_path, [("ok", tmp_path / "ok"), ("nas", h.path)])
    h.hang()
    lines = []
    for _ in range(3):
        result = health("-c", config)
        assert result.returncode == 1, result.stdout + result.stderr
        lines.append(result.stdout)
    assert "origin nas unhealthy (probe: no answer within 1s)" in lines[0]
    assert all("origin nas unhealthy (probe: previous check still stuck for" in line for line in lines[1:]), lines
    stuck = probe_processes(str(config))
    assert len(stuck) == 1, f"stuck check processes: {stuck}"
    assert h.held() == 1, "the hung server received more than one check"
    record = json.loads(record_path(tmp_path / "probe-cache", "origin-nas").read_text())
    assert record["pid"] == stuck[0]
    h.release()
    wait_until(lambda: not probe_processes(str(config)), message="the stuck check to end once the NAS answers")
    result = health("-c", config)
    assert result.returncode == 0 and result.stdout.startswith("MUSICFS OK - 2/2 origins healthy"), result.stdout
    assert not record_path(tmp_path / "probe-cache", "origin-nas").exists()


def test_with_a_live_daemon_the_probe_takes_its_recent_verdict_and_needs_no_access_to_the_origins(tmp_path):
    # cron's environment rarely holds the remote origins' credentials: the probe must not need
    # them while the daemon checks its origins itself. Here cron's config names a path the probe
    # cannot reach; the daemon's recent verdict on the origin stands.
    one_file_origins(tmp_path, "a")
    daemon = Daemon(tmp_path, [("a", tmp_path / "a")], health={"timeout": TIMEOUT, "interval": 0.5}).mount()
    cron_config = tmp_path / "cron.toml"
    cron_config.write_text(toml_config([("a", tmp_path / "not-reachable-from-cron")], daemon.cache_dir,
                                       tmp_path / "cron.log", health={"timeout": TIMEOUT, "interval": 0.5}))
    try:
        wait_until(lambda: (status_of(daemon.cache_dir).get("origins", {}).get("a") or {}).get("decided_at"),
                   message="the daemon's first verdict on origin a")
        result = health("-c", cron_config, "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        a = json.loads(result.stdout)["origins"]["a"]
        assert a["status"] == "healthy" and a["probe"] is None, a
        assert a["not_checked"].startswith("the daemon holds it healthy (its check "), a
    finally:
        daemon.stop()
    # without a daemon the probe checks the origins itself, and says what it found
    result = health("-c", cron_config)
    assert result.returncode == 2 and "origin a unhealthy (probe: " in result.stdout, result.stdout


@pytest.mark.mount
@pytest.mark.slow
def test_hung_origin_known_to_the_daemon_is_not_touched(tmp_path, hung_origin):
    h = hung_origin().start()
    (h.backing / "x.flac").write_bytes(b"x")
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "y.flac").write_bytes(b"y")
    daemon = Daemon(tmp_path, [("ok", tmp_path / "ok"), ("nas", h.path)],
                    health={"timeout": TIMEOUT, "interval": 0.2}).mount()
    try:
        h.hang()
        wait_until(lambda: status_of(daemon.cache_dir).get("origins", {}).get("nas", {}).get("status") == "unhealthy",
                   message="the daemon to hold the hung origin unhealthy")
        held = h.held()
        for args in (["-c", daemon.config], [daemon.mountpoint], ["-c", daemon.config]):
            result = health(*args)
            assert result.returncode == 1, result.stdout + result.stderr
            assert "1/2 origins healthy; origin nas unhealthy (daemon: " in result.stdout
            assert "'latency_nas'=U;;;0" in result.stdout   # no current answer, not a stale latency
            wait_until(lambda: not probe_processes(str(tmp_path)), timeout=2, message="no probe process left")
        assert h.held() == held, "a probe touched the hung origin the daemon already knew about"
    finally:
        h.release()
        daemon.stop()


@pytest.mark.mount
def test_health_and_unmount_of_a_mount_whose_daemon_stopped_answering_do_not_hang(tmp_path):
    """The commands take the mountpoint as given: nothing stat()s it in the command's own
    process (typer did, for every Path argument, and hung with the daemon)."""
    one_file_origins(tmp_path, "a")
    daemon = Daemon(tmp_path, [("a", tmp_path / "a")], health={"timeout": TIMEOUT}).mount(
        "-o", "attr_timeout=0,entry_timeout=0")        # (no kernel cache answers for it)
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        result = health(daemon.mountpoint)
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"mount {daemon.mountpoint} does not answer" in result.stdout, result.stdout
        result = run_bounded([*MUSICFS, "unmount", str(daemon.mountpoint)], 45, cwd=ROOT)
        assert not is_mounted(daemon.mountpoint), result.stdout + result.stderr
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
        daemon.stop()


def test_a_verdict_or_status_dated_in_the_future_is_not_taken_as_current():
    from musicfs.config import HealthConfig
    from musicfs.health.probe import _standing_verdict
    health = HealthConfig(timeout=1, interval=5)
    now = time.time()
    assert _standing_verdict(OriginView("healthy", decided_at=now - 3), now, health).startswith(
        "the daemon holds it healthy")
    assert _standing_verdict(OriginView("healthy", decided_at=now + 86400), now, health) is None
    assert _standing_verdict(OriginView("healthy", decided_at=now - 60), now, health) is None
