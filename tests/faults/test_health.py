"""Health checks: bounded, parallel, no pile-up; the state machine reads consult; the probe."""
import json
import sys
import time

import pytest

from musicfs.config import HealthConfig
from musicfs.health import DEGRADED, HEALTHY, UNHEALTHY, HealthMonitor
from musicfs.origins import LocalOrigin
from musicfs.pool import OriginPool

from tests.support.origins import FaultyOrigin
from testkit.configs import toml_config
from testkit.process import run_bounded, wait_until
from tests.support.mounts import ROOT


def monitor_for(origins, timeout=0.3, pool=None):
    pool = pool or OriginPool(max_workers=16, per_origin=2)
    return HealthMonitor(origins, pool, HealthConfig(timeout=timeout, interval=60)), pool


def test_local_origin_health_check_has_timeout(tmp_path):
    origin = FaultyOrigin(LocalOrigin("nas", tmp_path))
    origin.delay(5.0)
    monitor, pool = monitor_for([origin], timeout=0.5)
    started = time.monotonic()
    monitor.check_all()
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"a 5 s hang took {elapsed:.2f}s to judge"
    assert monitor.status["nas"].state in (DEGRADED, UNHEALTHY)
    assert "no answer" in monitor.status["nas"].error
    monitor.check_all()   # the next round: still stuck -> unhealthy
    assert monitor.status["nas"].state == UNHEALTHY
    pool.shutdown()


def test_health_checks_run_in_parallel(tmp_path):
    origins = []
    for i in range(3):
        (tmp_path / str(i)).mkdir()
        origin = FaultyOrigin(LocalOrigin(f"o{i}", tmp_path / str(i)))
        origin.delay(0.2)
        origins.append(origin)
    monitor, pool = monitor_for(origins, timeout=1.0)
    started = time.monotonic()
    monitor.check_all()
    elapsed = time.monotonic() - started
    assert elapsed < 0.5, f"3 origins of 200 ms took {elapsed:.3f}s: not parallel (one after another: 0.6 s)"
    assert all(monitor.status[o.name].state == HEALTHY for o in origins)
    pool.shutdown()


def test_stuck_check_is_not_submitted_again(tmp_path):
    origin = FaultyOrigin(LocalOrigin("nas", tmp_path))
    origin.hang()
    monitor, pool = monitor_for([origin], timeout=0.1)
    for _ in range(5):
        monitor.check_all()
    assert origin.calls["check"] == 1, "a stuck check was submitted again"
    assert pool.busy("nas", "check") == 1
    assert monitor.status["nas"].state == UNHEALTHY and monitor.status["nas"].consecutive_failures == 5
    origin.release()
    wait_until(lambda: monitor.status["nas"].pending.done(), message="the stuck check to return")
    monitor.check_all()   # the old check finished; a new one runs and succeeds
    assert monitor.status["nas"].state == HEALTHY
    pool.shutdown()


def test_hung_origin_cannot_starve_other_origins(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    dead = FaultyOrigin(LocalOrigin("dead", tmp_path / "a"))
    dead.hang()
    live = LocalOrigin("live", tmp_path / "b")
    (tmp_path / "b" / "f").write_bytes(b"hello")
    pool = OriginPool(max_workers=6, per_origin=2)
    stuck = [pool.submit("dead", dead.read, b"x", 0, 1) for _ in range(50)]
    assert pool.busy("dead") == 2          # the rest wait in the queue without a thread
    answers = [pool.submit("live", live.read, b"f", 0, 5) for _ in range(20)]
    assert [f.result(timeout=5) for f in answers] == [b"hello"] * 20
    monitor, _ = monitor_for([dead, live], timeout=0.3, pool=pool)
    monitor.check_all()
    assert monitor.status["live"].state == HEALTHY
    for f in stuck:
        f.cancel()
    dead.release()
    pool.shutdown()


def test_transitions_are_logged_once(tmp_path, caplog):
    origin = FaultyOrigin(LocalOrigin("nas", tmp_path))
    monitor, pool = monitor_for([origin])
    origin.fail()
    with caplog.at_level("INFO", logger="musicfs.health.monitor"):
        for _ in range(6):
            monitor.check_all()
        origin.healthy()
        monitor.check_all()
        monitor.check_all()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is degraded" in m for m in messages) == 1
    assert sum("is unhealthy" in m for m in messages) == 1
    assert sum("healthy again" in m for m in messages) == 1
    pool.shutdown()


# -- the cron probe -----------------------------------------------------------------------

def run_probe(config, *args, timeout=30):
    started = time.monotonic()
    result = run_bounded([sys.executable, "-m", "musicfs.cli", "health", "-c", str(config), *args], timeout,
                         cwd=ROOT)
    return result, time.monotonic() - started


def write_config(tmp_path, origins, timeout=1):
    config = tmp_path / "config.toml"
    config.write_text(toml_config(origins, tmp_path / "cache", tmp_path / "probe.log",
                                  health={"timeout": timeout}))
    (tmp_path / "cache").mkdir(exist_ok=True)
    return config


def test_probe_ok_warning_critical(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ok = write_config(tmp_path, [("a", tmp_path / "a"), ("b", tmp_path / "b")])
    result, _ = run_probe(ok)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("MUSICFS OK - 2/2 origins healthy") and " | origins_healthy=2" in result.stdout
    warn = write_config(tmp_path, [("a", tmp_path / "a"), ("gone", tmp_path / "missing")])
    result, _ = run_probe(warn)
    assert result.returncode == 1 and result.stdout.startswith("MUSICFS WARNING - 1/2 origins healthy")
    crit = write_config(tmp_path, [("gone", tmp_path / "missing")])
    result, _ = run_probe(crit, "--json")
    assert result.returncode == 2
    verdict = json.loads(result.stdout)
    assert verdict["status"] == "CRITICAL"
    assert verdict["origins"]["gone"]["status"] == "unhealthy" and verdict["origins"]["gone"]["error"]
    assert {"cache", "daemon", "origins"} <= set(verdict)
    assert "health probe: MUSICFS CRITICAL" in (tmp_path / "probe.log").read_text()


def test_probe_unknown_on_bad_config(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[health]\ntimeout = 'five'\n")
    result, _ = run_probe(config)
    assert result.returncode == 3 and result.stdout.startswith(f"MUSICFS UNKNOWN - configuration: {config}: health.timeout")


@pytest.mark.slow
@pytest.mark.mount
def test_probe_finishes_within_timeout_plus_one_second_with_hung_origins(tmp_path, hung_origin):
    """Real hangs: two origins on a FUSE server that receives every request and never answers,
    judged together within one timeout."""
    nas = hung_origin().start()
    (nas.backing / "sub").mkdir()
    (nas.backing / "sub" / "x.flac").write_bytes(b"x")
    probe_dir = tmp_path / "probe"
    (probe_dir / "ok").mkdir(parents=True)
    config = write_config(probe_dir, [("ok", probe_dir / "ok"), ("dead1", nas.path), ("dead2", nas.path / "sub")],
                          timeout=2)
    nas.hang()
    result, elapsed = run_probe(config)
    assert elapsed < 2 + 1.0, f"probe took {elapsed:.2f}s"
    assert result.returncode == 1 and "1/3 origins healthy" in result.stdout
    assert nas.held() >= 1, "the checks never reached the hung server"


def test_an_origin_whose_last_scan_failed_is_scanned_again_once_it_answers(tmp_path, service_factory):
    # A blip during a rescan (the NAS or S3 server away for seconds) must not leave `musicfs
    # health` warning "the last scan failed" until the next periodic rescan, an hour later.
    origin_dir = tmp_path / "o"
    origin_dir.mkdir()
    (origin_dir / "a.flac").write_bytes(b"a" * 1000)
    service = service_factory([("o", origin_dir)], faulty={"o"}, catalog={"rescan_interval": 3600},
                              health={"interval": 3600})
    service.initial_scan()
    service.start()
    assert service.rescanned.wait(30), "the first background rescan did not finish"
    origin = service.origins["o"]
    origin.fail(only={"list_dir"})              # away while the rescan lists it...
    (origin_dir / "b.flac").write_bytes(b"b" * 1000)
    result, = service.rescan_now()
    assert not result.complete
    origin.healthy()                            # ...and back: its next health check passes
    service.health.check_all()
    wait_until(lambda: service.scanner.last_results["o"].complete, timeout=20,
               message="a rescan of the origin once it answered")
    assert service.catalog.lookup(b"/b.flac") is not None


def test_an_origin_that_answers_but_fails_every_scan_is_retried_less_and_less_often(tmp_path, service_factory):
    origin_dir = tmp_path / "o"
    origin_dir.mkdir()
    (origin_dir / "a.flac").write_bytes(b"a" * 1000)
    service = service_factory([("o", origin_dir)], faulty={"o"}, health={"interval": 3600})
    service.initial_scan()
    service.origins["o"].fail(only={"list_dir"})      # its checks pass, its scans fail
    result, = service.rescan_now()
    assert not result.complete
    service.health.check_all()
    assert service._rescan_names == {"o"}             # the first answer: scanned again at once
    service._rescan_names.clear()                     # (as the rescan loop takes it; that scan fails too)
    service.health.check_all()
    assert service._rescan_names == set()             # not at every check after that
