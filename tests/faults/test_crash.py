"""SIGKILL at any moment, the stale mount it leaves, and cache verify/repair from the CLI."""
import errno
import json
import os
import signal
import threading

import pytest

from testkit.library import chunk_bytes_on_disk, chunk_files
from testkit.process import wait_until
from tests.support.mounts import Daemon, alive, is_mounted, run_musicfs

pytestmark = [pytest.mark.mount, pytest.mark.slow]
MiB = 1 << 20


def stats(daemon):
    result = run_musicfs("cache", "stats", "--json", "-c", daemon.config)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def verify(daemon, *args):
    return run_musicfs("cache", "verify", "--json", "-c", daemon.config, *args)


@pytest.mark.parametrize("kill_after_files", [1, 3, 6])
def test_sigkill_mid_fetch_loses_nothing_and_stale_mount_is_cleaned(tmp_path, kill_after_files):
    origin = tmp_path / "o"
    origin.mkdir()
    files = {f"{i}.flac": os.urandom(2 * MiB + i) for i in range(8)}
    for name, data in files.items():
        (origin / name).write_bytes(data)
    # a small cache so eviction runs while reads are in flight
    d = Daemon(tmp_path, [("o", origin)], max_size="5M")
    try:
        d.mount()
        done = []

        def reader():
            for name in files:
                try:
                    (d.path(name)).read_bytes()
                    done.append(name)
                except OSError:
                    return
        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: len(done) >= kill_after_files, timeout=60, message="reads in progress")
        os.kill(d.pid, signal.SIGKILL)
        for t in threads:
            t.join(30)
        wait_until(lambda: not alive(d.pid), message="daemon death")
        with pytest.raises(OSError) as info:
            os.listdir(d.mountpoint)
        assert info.value.errno == errno.ENOTCONN   # "Transport endpoint is not connected"

        d.mount()                           # cleans up the stale mount, recovers the cache
        assert "did not shut down cleanly" in d.log()
        for name, data in files.items():
            assert d.path(name).read_bytes() == data
        s = stats(d)
        assert s["bytes"] == chunk_bytes_on_disk(d.cache_dir / "chunks")
        result = verify(d)
        assert result.returncode == 0, result.stdout
        assert json.loads(result.stdout)["consistent"]
    finally:
        d.stop()


def test_verify_and_repair_with_and_without_daemon(tmp_path):
    origin = tmp_path / "o"
    origin.mkdir()
    data = os.urandom(3 * MiB)
    (origin / "f.flac").write_bytes(data)
    d = Daemon(tmp_path, [("o", origin)])
    try:
        d.mount()
        assert d.path("f.flac").read_bytes() == data
        assert verify(d).returncode == 0             # while the daemon runs
        d.stop()
        files = chunk_files(d.cache_dir / "chunks")
        assert len(files) == 3
        files[0].write_bytes(b"garbage")         # size mismatch
        files[1].unlink()                        # dangling record
        orphan = d.cache_dir / "chunks" / "ab" / "cd" / ("abcd" + "0" * 28)
        orphan.parent.mkdir(parents=True)
        orphan.write_bytes(b"orphan")
        result = verify(d)
        assert result.returncode == 1
        found = {f["invariant"] for f in json.loads(result.stdout)["findings"]}
        assert found == {"size-mismatch", "dangling-record", "orphan-file"}
        assert verify(d, "--repair").returncode == 0
        assert verify(d).returncode == 0
        assert stats(d)["bytes"] == chunk_bytes_on_disk(d.cache_dir / "chunks")
        d.mount()
        assert d.path("f.flac").read_bytes() == data  # repaired chunks are fetched again
    finally:
        d.stop()


def test_cache_stats_reports_the_index(tmp_path):
    origin = tmp_path / "o"
    origin.mkdir()
    (origin / "f.flac").write_bytes(os.urandom(MiB + 5))
    d = Daemon(tmp_path, [("o", origin)])
    try:
        d.mount()
        d.path("f.flac").read_bytes()
        s = stats(d)
        assert s["bytes"] == MiB + 5 == chunk_bytes_on_disk(d.cache_dir / "chunks")
        assert s["chunks"] == 2 and s["daemon_pid"] == d.pid and s["passthrough"] is False
        text = run_musicfs("cache", "stats", "-c", d.config)
        assert text.returncode == 0 and "bytes" in text.stdout
    finally:
        d.stop()
    assert not is_mounted(d.mountpoint)


def test_two_processes_write_and_rotate_the_same_log(tmp_path):
    """The daemon and the probe log through concurrent-log-handler into one file that rotates."""
    import subprocess
    import sys
    log_file = tmp_path / "shared.log"
    script = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "from musicfs import logs\n"
        "logs.setup(Path(sys.argv[1]), 'info', max_bytes=20000)\n"
        "log = logging.getLogger('musicfs.test')\n"
        "for i in range(350):\n"
        "    log.info('writer %s line %05d ' + 'x' * 40, sys.argv[2], i)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(log_file), name]) for name in ("daemon", "probe")]
    for p in procs:
        assert p.wait(60) == 0
    files = [log_file] + sorted(tmp_path.glob("shared.log.*"))
    assert len(files) > 1, "the log never rotated"
    lines = [line for f in files if f.suffix != ".lock" and not f.name.startswith(".")
             for line in f.read_text().splitlines()]
    for name in ("daemon", "probe"):
        mine = [line for line in lines if f"writer {name} line" in line]
        # ~90 KB in all fits in the current file + logs.BACKUPS rotated ones of 20 KB: no line
        # may be lost, duplicated or torn by the two processes rotating under each other
        assert all(line.endswith("x" * 40) for line in mine)
        numbers = sorted(int(line.split("line ")[1].split()[0]) for line in mine)
        assert numbers == list(range(350)), name
