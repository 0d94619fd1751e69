"""A NAS that hangs, for real: tests/support/hangfs.py receives each request and never answers, so the
threads waiting on it cannot be interrupted or killed. musicfs must mount, serve what it can,
unmount and remount without waiting on it, and recover when it answers again."""
import errno
import json
import os
import signal
import subprocess
import time

import pytest

from testkit.configs import toml_config
from testkit.library import make_library
from testkit.process import run_bounded, wait_until
from tests.support.mounts import MUSICFS, ROOT, Daemon, alive, is_mounted, read_outcome

pytestmark = [pytest.mark.mount, pytest.mark.slow]

READ_TIMEOUT = 3
SETTINGS = {"fuse": {"read_timeout": READ_TIMEOUT}, "health": {"timeout": 1, "interval": 1}}


def musicfs(*args, timeout=20):
    return run_bounded([*MUSICFS, *map(str, args)], timeout, cwd=ROOT)


def mount(daemon: Daemon, timeout=20):
    started = time.monotonic()
    result = musicfs(daemon.mountpoint, "-c", daemon.config, timeout=timeout)
    assert result.returncode == 0, f"mount failed: {result.stderr}\n{daemon.log()}"
    daemon.pid = int((daemon.cache_dir / "musicfs.lock").read_text())
    return time.monotonic() - started, result


def listing(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names)


@pytest.fixture
def library_on_hung_nas(tmp_path, hung_origin):
    nas = hung_origin().start()
    tracks = make_library(nas.backing, 12, 200_000)
    daemon = Daemon(tmp_path, [("nas", nas.path)], **SETTINGS)
    yield nas, daemon, [t.relative_to(nas.backing) for t in tracks]
    nas.release()
    daemon.stop()


def test_mount_with_the_origin_hung_serves_the_stored_catalog_at_once(library_on_hung_nas):
    nas, daemon, tracks = library_on_hung_nas
    mount(daemon)
    stored = listing(daemon.mountpoint)
    cached = daemon.path(str(tracks[0])).read_bytes()
    musicfs("unmount", daemon.mountpoint)

    nas.hang()   # after a reboot, the NAS is hung
    seconds, _ = mount(daemon)
    assert seconds < 5, f"mount took {seconds:.1f}s with a hung origin"
    assert listing(daemon.mountpoint) == stored
    assert daemon.path(str(tracks[0])).read_bytes() == cached           # cached: plays
    started = time.monotonic()
    assert read_outcome(daemon.path(str(tracks[5]))) == errno.EIO      # uncached: EIO, bounded
    assert time.monotonic() - started < READ_TIMEOUT + 2
    assert nas.held() > 0, "the hung origin never received a request: this test proves nothing"

    nas.release()   # the NAS answers again: uncached files read once a check sees it
    wait_until(lambda: isinstance(read_outcome(daemon.path(str(tracks[5]))), bytes), timeout=15, interval=0.3,
               message="reads to work again after the origin answers")


def local_origin(tmp_path):
    """A local origin beside the hung one: Local Artist/song.flac, 1000 bytes of x."""
    local = tmp_path / "local"
    (local / "Local Artist").mkdir(parents=True)
    (local / "Local Artist" / "song.flac").write_bytes(b"x" * 1000)
    return local


def test_first_mount_of_a_hung_origin_comes_up_without_it(tmp_path, hung_origin):
    nas = hung_origin().start()
    make_library(nas.backing, 5, 10_000)
    local = local_origin(tmp_path)
    daemon = Daemon(tmp_path, [("local", local), ("nas", nas.path)], **SETTINGS)
    nas.hang()
    try:
        seconds, result = mount(daemon)
        assert seconds < 1 + 5, f"mount took {seconds:.1f}s"
        assert "origin nas" in result.stderr and "does not answer within 1s" in result.stderr
        assert listing(daemon.mountpoint) == ["Local Artist/song.flac"]
        nas.release()
        wait_until(lambda: len(listing(daemon.mountpoint)) == 6, timeout=20, interval=0.2,
                   message="the hung origin's files to appear once it answers")
    finally:
        nas.release()
        daemon.stop()


def test_unmount_with_reads_stuck_in_a_hung_origin_and_remount_at_once(library_on_hung_nas):
    nas, daemon, tracks = library_on_hung_nas
    mount(daemon)
    cached = daemon.path(str(tracks[0])).read_bytes()
    nas.hang()
    readers = [subprocess.Popen(["cat", str(daemon.path(str(t)))], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE) for t in tracks[3:6]]
    wait_until(lambda: nas.held() >= 1, message="the readers' requests to reach the hung origin")
    first_pid = daemon.pid

    started = time.monotonic()
    result = musicfs("unmount", daemon.mountpoint)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 2
    assert not is_mounted(daemon.mountpoint)
    for reader in readers:   # the stuck readers were let go with an error
        assert reader.wait(timeout=5) != 0

    seconds, _ = mount(daemon)        # right after: the lock is free, the cache opens
    assert seconds < 5
    assert daemon.pid != first_pid
    assert daemon.path(str(tracks[0])).read_bytes() == cached

    nas.release()    # the old process, held only by threads stuck in the origin, goes away
    wait_until(lambda: not alive(first_pid), timeout=15, message="the old daemon to exit")


def test_stop_signal_stops_a_daemon_stuck_on_a_hung_origin(library_on_hung_nas):
    nas, daemon, tracks = library_on_hung_nas
    mount(daemon)
    nas.hang()
    reader = subprocess.Popen(["cat", str(daemon.path(str(tracks[4])))], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_until(lambda: nas.held() >= 1, message="the read to reach the hung origin")
    os.kill(daemon.pid, 15)
    assert reader.wait(timeout=5) != 0
    wait_until(lambda: not is_mounted(daemon.mountpoint), timeout=5, message="the mount to go")
    log = daemon.log()
    assert "received SIGTERM: stopping" in log and "musicfs stopped cleanly" in log


def test_a_reload_adding_a_hung_origin_finishes_and_the_mount_keeps_serving(tmp_path, hung_origin):
    nas = hung_origin().start()
    make_library(nas.backing, 3, 10_000)
    local = local_origin(tmp_path)
    daemon = Daemon(tmp_path, [("local", local)], **SETTINGS)
    try:
        mount(daemon)
        nas.hang()
        daemon.config.write_text(toml_config([("local", local), ("nas", nas.path)], daemon.cache_dir,
                                             daemon.log_file, **SETTINGS))

        def reloads():
            result = musicfs("status", "--json", daemon.mountpoint)
            return (json.loads(result.stdout).get("reloads") or {}).get("count", 0) if result.returncode == 0 else -1
        os.kill(daemon.pid, signal.SIGHUP)
        wait_until(lambda: reloads() == 1, timeout=20, interval=0.2, message="the reload to finish")
        assert "does not answer within" in daemon.log()
        assert nas.held() > 0, "the hung origin never received a request: this test proves nothing"
        assert (daemon.mountpoint / "Local Artist" / "song.flac").read_bytes() == b"x" * 1000

        started = time.monotonic()
        assert musicfs("unmount", daemon.mountpoint).returncode == 0
        assert time.monotonic() - started < 10
        assert not is_mounted(daemon.mountpoint)
    finally:
        nas.release()
        daemon.stop()


def test_a_reload_waiting_for_a_scan_stuck_in_a_hung_origin_says_so_and_then_applies(tmp_path, hung_origin):
    # The reload swaps origins and the view, never under a scan: it waits for the scan (at most
    # the stall timeout, read_timeout) - and says so rather than hang without a word.
    nas = hung_origin().start()
    make_library(nas.backing, 3, 10_000)
    local = local_origin(tmp_path)
    daemon = Daemon(tmp_path, [("local", local), ("nas", nas.path)], **SETTINGS)
    try:
        mount(daemon)
        nas.hang()
        held = nas.held()
        os.kill(daemon.pid, signal.SIGUSR1)                   # a rescan, which the hung NAS holds
        wait_until(lambda: nas.held() > held, timeout=10, message="the rescan to reach the hung origin")
        daemon.config.write_text(toml_config([("local", local), ("nas", nas.path)], daemon.cache_dir,
                                             daemon.log_file, fuse={"read_timeout": READ_TIMEOUT + 1},
                                             health=SETTINGS["health"]))
        result = musicfs("reload", daemon.mountpoint, timeout=READ_TIMEOUT * 4 + 10)
        assert result.returncode == 0, result.stderr
        assert result.stderr == "musicfs: waiting for a scan under way; the reload is applied when it ends\n"
        assert f"[fuse] read_timeout: {READ_TIMEOUT:g} -> {READ_TIMEOUT + 1:g}" in result.stdout, result.stdout
    finally:
        nas.release()
        daemon.stop()
