"""`musicfs health --prometheus FILE` writes node_exporter textfile metrics that tell the truth
about a real mount (its cache, its origins, one made unavailable), a daemon that is not running
or was killed, and a probe that could not even start; written atomically, in every verdict."""
import json
import os
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from musicfs.health.monitor import DEGRADED, HEALTHY, UNHEALTHY
from musicfs.health.probe import CRITICAL, OriginVerdict, Verdict, status_path
from musicfs.metrics import metric_families, write_textfile
from musicfs.database import Storage

from testkit.configs import toml_config
from testkit.library import chunk_bytes_on_disk
from testkit.process import run_bounded, wait_until
from tests.support.mounts import MUSICFS, ROOT, Daemon, alive, force_unmount, read_file

# Nothing here hangs; a generous health timeout keeps a loaded machine from making a check
# "slow" (degraded, WARNING).
TIMEOUT = 5


# Status files, check records and default log of each test only (tests.conftest).
pytestmark = pytest.mark.usefixtures("private_runtime_dir")


def health(*args):
    return run_bounded([*MUSICFS, "health", *map(str, args)], 60, cwd=ROOT)


class Metrics:
    """A textfile parsed by prometheus_client's own parser: value(name, **labels)."""

    def __init__(self, path):
        self.text = path.read_text()
        self.samples = {}
        self.types = {}
        for family in text_string_to_metric_families(self.text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name, mountpoint, **labels):
        """The sample's value, or None if the file has no such sample."""
        return self.samples.get((name, frozenset({"mountpoint": str(mountpoint), **labels}.items())))

    def names(self) -> set:
        return {name for name, _ in self.samples}


def daemon_view(cache_dir, origin) -> str | None:
    """The daemon's state of `origin`, from the status file it publishes."""
    try:
        return json.loads(status_path(cache_dir).read_text())["origins"][origin]["status"]
    except (OSError, ValueError, KeyError):
        return None


def cache_stats(config) -> dict:
    result = run_bounded([*MUSICFS, "cache", "stats", "--json", "-c", str(config)], 30, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- the families of a verdict, without a probe ------------------------------------------------

def test_names_units_and_missing_values_follow_the_conventions(tmp_path):
    verdict = Verdict(CRITICAL, [OriginVerdict("nas", UNHEALTHY, None, "no answer within 5s", last_scan=1.7e9),
                                 OriginVerdict("usb", DEGRADED, 0.25)],
                      {"bytes": 3 << 20, "max_bytes": 10 << 30, "pinned_bytes": 1 << 20, "free_bytes": None,
                       "writable": True, "passthrough": False, "hits": 7, "misses": 2},
                      {"running": True, "mountpoint": "/mnt/music"}, seconds=0.5,
                      mount={"mountpoint": "/mnt/music", "answers": True, "mounted": True})
    write_textfile(tmp_path / "musicfs.prom", verdict)
    metrics = Metrics(tmp_path / "musicfs.prom")
    assert all(name.startswith("musicfs_") for name in metrics.names())
    assert metrics.types["musicfs_cache_hits"] == "counter" and metrics.types["musicfs_cache_misses"] == "counter"
    assert "musicfs_cache_hits_total" in metrics.names() and "musicfs_cache_misses_total" in metrics.names()
    assert {"musicfs_origin_latency_seconds", "musicfs_probe_duration_seconds", "musicfs_cache_bytes",
            "musicfs_cache_max_bytes", "musicfs_origin_last_scan_timestamp_seconds"} <= metrics.names()
    mnt = "/mnt/music"
    assert metrics.value("musicfs_probe_status", mnt) == 2
    assert metrics.value("musicfs_origin_up", mnt, origin="nas") == 0
    # degraded: a check failed (a NAS just unmounted is degraded for a round): not up
    assert metrics.value("musicfs_origin_up", mnt, origin="usb") == 0
    assert metrics.value("musicfs_origin_state", mnt, origin="usb", state=DEGRADED) == 1
    assert metrics.value("musicfs_origin_state", mnt, origin="usb", state=HEALTHY) == 0
    assert metrics.value("musicfs_origin_latency_seconds", mnt, origin="nas") is None   # unknown: no sample
    assert metrics.value("musicfs_origin_latency_seconds", mnt, origin="usb") == 0.25
    assert metrics.value("musicfs_origin_last_scan_timestamp_seconds", mnt, origin="nas") == 1.7e9
    assert metrics.value("musicfs_cache_free_disk_bytes", mnt) is None
    assert metrics.value("musicfs_cache_pinned_bytes", mnt) == 1 << 20
    assert metrics.value("musicfs_cache_hits_total", mnt) == 7


def test_without_a_verdict_only_unknown_is_reported():
    families = metric_families(None, "/mnt/music")
    assert [(f.name, [s.value for s in f.samples]) for f in families] == [("musicfs_probe_status", [3])]


# -- the real probe ---------------------------------------------------------------------------

@pytest.mark.mount
@pytest.mark.timeout(120)
def test_metrics_of_a_real_mount_then_of_no_daemon(tmp_path, origins_copy):
    a, b = origins_copy
    daemon = Daemon(tmp_path, [("a", a), ("b", b)], health={"timeout": TIMEOUT, "interval": 0.2})
    prom = tmp_path / "textfile" / "musicfs.prom"
    prom.parent.mkdir()
    mnt = daemon.mountpoint
    started = time.time()
    try:
        daemon.mount()
        read_file(daemon.path("Test Pattern/Signals/01 Sine 440.flac"))   # one file cached

        result = health(mnt, "--prometheus", prom)
        assert result.returncode == 0, result.stdout + result.stderr
        metrics = Metrics(prom)
        assert metrics.value("musicfs_probe_status", mnt) == 0
        assert metrics.value("musicfs_up", mnt) == 1 and metrics.value("musicfs_mount_up", mnt) == 1
        for origin in ("a", "b"):
            assert metrics.value("musicfs_origin_up", mnt, origin=origin) == 1
            assert metrics.value("musicfs_origin_latency_seconds", mnt, origin=origin) >= 0
            scanned = metrics.value("musicfs_origin_last_scan_timestamp_seconds", mnt, origin=origin)
            assert started - 1 <= scanned <= time.time(), (origin, scanned, started)
        on_disk = chunk_bytes_on_disk(daemon.cache_dir / "chunks")
        assert on_disk > 0 and metrics.value("musicfs_cache_bytes", mnt) == on_disk
        assert metrics.value("musicfs_cache_max_bytes", mnt) == 1 << 30
        assert metrics.value("musicfs_cache_pinned_bytes", mnt) == 0    # no pins recorded
        assert metrics.value("musicfs_passthrough", mnt) == 0
        assert metrics.value("musicfs_cache_writable", mnt) == 1

        away = b.with_name("origin-b-away")
        b.rename(away)
        try:
            # Until the daemon holds b unhealthy it may hold it degraded, which still answers.
            wait_until(lambda: daemon_view(daemon.cache_dir, "b") == UNHEALTHY, timeout=20,
                       message="the daemon to hold origin b unhealthy")
            inode = prom.stat().st_ino
            result = health(mnt, "--prometheus", prom)
            assert result.returncode == 1, result.stdout + result.stderr   # WARNING, and the file is written
        finally:
            away.rename(b)
        assert prom.stat().st_ino != inode, "the file was rewritten in place, not replaced by a rename"
        assert sorted(p.name for p in prom.parent.iterdir()) == ["musicfs.prom"]   # no temp file left
        metrics = Metrics(prom)
        assert metrics.value("musicfs_probe_status", mnt) == 1
        assert metrics.value("musicfs_origin_up", mnt, origin="b") == 0
        assert metrics.value("musicfs_origin_state", mnt, origin="b", state=UNHEALTHY) == 1
        assert metrics.value("musicfs_origin_latency_seconds", mnt, origin="b") is None
        assert metrics.value("musicfs_origin_up", mnt, origin="a") == 1
    finally:
        daemon.stop()

    # No daemon: the probe checks the origins itself and reads the index the daemon left, pinned
    # bytes included (recorded by the pinning code as b"pinned", a u64 beside b"total").
    storage = Storage(daemon.cache_dir)
    with storage.begin(write=True) as txn:
        storage.put_u64(txn, b"pinned", 123456)
    storage.close()
    result = health("-c", daemon.config, "--prometheus", prom)
    metrics = Metrics(prom)
    assert metrics.value("musicfs_probe_status", "") == result.returncode, result.stdout
    assert metrics.value("musicfs_up", "") == 0
    assert metrics.value("musicfs_origin_up", "", origin="a") == 1
    assert metrics.value("musicfs_cache_bytes", "") == chunk_bytes_on_disk(daemon.cache_dir / "chunks")
    assert metrics.value("musicfs_cache_pinned_bytes", "") == 123456
    stats = cache_stats(daemon.config)   # the counters the daemon saved when it stopped
    assert stats["misses"] >= 1
    assert metrics.value("musicfs_cache_hits_total", "") == stats["hits"]
    assert metrics.value("musicfs_cache_misses_total", "") == stats["misses"]


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_a_killed_daemon_and_an_unknown_mountpoint_are_written_too(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.flac").write_bytes(b"x")
    daemon = Daemon(tmp_path, [("a", tmp_path / "a")], health={"timeout": TIMEOUT})
    prom = tmp_path / "musicfs.prom"
    try:
        daemon.mount()
        os.kill(daemon.pid, signal.SIGKILL)
        wait_until(lambda: not alive(daemon.pid), message="the daemon to die")
        result = health(daemon.mountpoint, "--prometheus", prom)
        assert result.returncode == 2, result.stdout + result.stderr
        metrics = Metrics(prom)
        assert metrics.value("musicfs_probe_status", daemon.mountpoint) == 2
        assert metrics.value("musicfs_up", daemon.mountpoint) == 0
        assert metrics.value("musicfs_mount_up", daemon.mountpoint) == 0
    finally:
        force_unmount(daemon.mountpoint)
        daemon.stop()

    (tmp_path / "plain").mkdir()
    result = health(tmp_path / "plain", "--prometheus", prom)
    assert result.returncode == 3, result.stdout + result.stderr
    metrics = Metrics(prom)
    assert metrics.value("musicfs_probe_status", tmp_path / "plain") == 3
    assert metrics.value("musicfs_up", tmp_path / "plain") == 0
    assert metrics.value("musicfs_mount_up", tmp_path / "plain") == 0   # a directory, not a mount


def test_a_probe_that_cannot_start_still_writes_unknown(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[cache]\nmax_sise = 1\n")
    prom = tmp_path / "musicfs.prom"
    result = health("-c", bad, "--prometheus", prom)
    assert result.returncode == 3 and "configuration" in result.stdout, result.stdout + result.stderr
    metrics = Metrics(prom)
    assert metrics.names() == {"musicfs_probe_status"} and metrics.value("musicfs_probe_status", "") == 3


def test_an_unwritable_metrics_file_is_one_line_on_stderr_and_keeps_the_exit_code(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "probe-cache").mkdir()
    config = tmp_path / "probe.toml"
    config.write_text(toml_config([("a", tmp_path / "a")], tmp_path / "probe-cache", tmp_path / "probe.log",
                                  health={"timeout": TIMEOUT}))
    plain = health("-c", config)
    assert plain.returncode == 0, plain.stdout + plain.stderr   # no daemon, a healthy origin: OK
    missing = tmp_path / "no-such-dir" / "musicfs.prom"
    result = health("-c", config, "--prometheus", missing)
    assert result.returncode == plain.returncode
    assert result.stdout.startswith("MUSICFS OK - "), result.stdout
    assert result.stderr == f"musicfs: metrics not written to {missing}: No such file or directory\n"
    assert not missing.parent.exists()
