"""A cache disk that hangs or vanishes: reads stay bounded and correct, and caching resumes by
itself once the disk is back (read-only at start: tests/test_faults.py)."""
import os
import shutil
import subprocess
import time

import pytest

from musicfs.cas import CacheChecker

from testkit.library import chunk_files
from testkit.process import wait_until
from tests.support.mounts import Daemon, read_file

pytestmark = [pytest.mark.mount, pytest.mark.slow]

MiB = 1 << 20


def library(root, count):
    root.mkdir(parents=True, exist_ok=True)
    files = {f"{i}.flac": os.urandom(MiB + 1000 * i) for i in range(count)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def cached_digest(service, root, name):
    size = (root / name).stat().st_size
    digest = service.store.manifest(b"o\0" + name.encode(), size, (root / name).stat().st_mtime_ns)[0]
    return digest if digest is not None and service.store.contains(digest) else None


def test_hung_cache_disk_does_not_hang_reads_and_caching_resumes(tmp_path, hung_origin, mounted):
    # chunks/ lives on a disk whose server receives requests and stops answering
    disk = hung_origin("chunkdisk").start(writable=True)
    chunks = tmp_path / "cache" / "chunks"
    chunks.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(disk.path), str(chunks)], check=True)
    try:
        root = tmp_path / "o"
        files = library(root, 4)
        service, mount = mounted([("o", root)], health={"interval": 0.3, "timeout": 1},
                                 fuse={"read_timeout": 10}, fuse_options={"direct_io": True})
        assert read_file(mount.mountpoint / "0.flac") == files["0.flac"]
        assert cached_digest(service, root, "0.flac") is not None
        service.store.verified.clear()     # nothing of it left in memory: a read must load from disk

        disk.hang()
        started = time.monotonic()    # a miss: its chunk write hangs, not the read
        assert read_file(mount.mountpoint / "1.flac") == files["1.flac"]
        assert time.monotonic() - started < 1 + 3
        assert disk.held() > 0, "the chunk write never reached the hung disk: this test proves nothing"
        assert service.store.disk.passthrough
        assert service.health.status["o"].state == "healthy"                 # the origin is not blamed
        started = time.monotonic()
        assert read_file(mount.mountpoint / "0.flac") == files["0.flac"]     # cached: from the origin instead
        assert time.monotonic() - started < 1 + 3
        assert service.store.disk.loads_suspended
        assert read_file(mount.mountpoint / "3.flac") == files["3.flac"]     # misses pass through
        assert os.statvfs(mount.mountpoint).f_namemax == 255                 # df does not hang either
        assert service.health.status["o"].state == "healthy"
        held = disk.held()
        for _ in range(3):
            service.probe_cache()     # waits at most [health].timeout
        assert disk.held() <= held + 1, "each probe of the hung disk left one more worker waiting on it"

        disk.release()
        wait_until(lambda: not service.store.disk.passthrough, timeout=10, message="caching to resume")
        assert read_file(mount.mountpoint / "2.flac") == files["2.flac"]
        assert cached_digest(service, root, "2.flac") is not None
    finally:
        disk.release()
        subprocess.run(["umount", "-l", str(chunks)], capture_output=True)


def test_a_chunk_disk_that_hangs_before_the_start_does_not_hold_the_mount(tmp_path, hung_origin):
    """chunks/ on a disk whose server stopped answering before musicfs starts: the mount comes up
    within the health timeout, serving from the origin; once the disk answers, the skipped
    start-up check of the cache runs and caching resumes by itself."""
    disk = hung_origin("chunkdisk").start(writable=True)
    chunks = tmp_path / "cache" / "chunks"
    chunks.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(disk.path), str(chunks)], check=True)
    root = tmp_path / "o"
    files = library(root, 3)
    daemon = Daemon(tmp_path, [("o", root)], health={"interval": 0.3, "timeout": 1})
    try:
        daemon.mount()
        assert read_file(daemon.path("0.flac")) == files["0.flac"]
        daemon.stop()
        cached = chunk_files(chunks)
        assert cached

        disk.hang()
        started = time.monotonic()
        result = daemon.start()
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 1 + 10      # the health timeout, and Python's start-up
        assert disk.held() > 0, "the start never reached the hung disk: this test proves nothing"
        assert read_file(daemon.path("0.flac")) == files["0.flac"]      # cached, but from the origin now
        assert read_file(daemon.path("1.flac")) == files["1.flac"]
        assert "does not answer" in daemon.log()

        disk.release()
        wait_until(lambda: "cache checked" in daemon.log() and "caching resumed" in daemon.log(), timeout=15,
                   message="the start-up check to run and caching to resume")
        assert read_file(daemon.path("2.flac")) == files["2.flac"]
        assert len(chunk_files(chunks)) > len(cached)     # a read's chunks are stored before it returns
    finally:
        disk.release()
        daemon.stop()
        subprocess.run(["umount", "-l", str(chunks)], capture_output=True)


def test_a_cache_dir_that_hangs_before_the_start_is_a_clear_error_not_a_hang(tmp_path, hung_origin):
    """The whole cache dir (the index with the stored catalog) on a disk that stopped answering:
    without the index there is no library to show, so `musicfs MOUNTPOINT` says so, in one
    line, within the read timeout - it does not wait for the disk."""
    disk = hung_origin("cachedisk").start(writable=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["mount", "--bind", str(disk.path), str(cache)], check=True)
    daemon = Daemon(tmp_path, [("o", tmp_path / "o")], fuse={"read_timeout": 2})
    library(tmp_path / "o", 1)
    try:
        disk.hang()
        started = time.monotonic()
        result = daemon.start()
        assert result.returncode != 0
        assert time.monotonic() - started < 2 + 10       # the read timeout, and Python's start-up
        assert disk.held() > 0, "the start never reached the hung disk: this test proves nothing"
        assert f"the cache dir {cache} does not answer" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    finally:
        disk.release()
        daemon.stop()
        subprocess.run(["umount", "-l", str(cache)], capture_output=True)


def test_cache_dir_deleted_under_the_daemon_is_made_again(tmp_path, mounted):
    root = tmp_path / "o"
    files = library(root, 4)
    service, mount = mounted([("o", root)], health={"interval": 0.3}, fuse_options={"direct_io": True})
    assert read_file(mount.mountpoint / "0.flac") == files["0.flac"]
    cache = tmp_path / "cache"
    shutil.rmtree(cache)

    assert read_file(mount.mountpoint / "1.flac") == files["1.flac"]
    assert os.statvfs(mount.mountpoint).f_namemax == 255     # df on the mount still answers
    wait_until(lambda: (cache / "index.lmdb" / "data.mdb").exists() and not service.store.disk.passthrough,
               timeout=10, message="the cache to be made again")
    assert sorted(os.listdir(mount.mountpoint)) == sorted(files)      # the catalog survived
    service.store.verified.clear()
    for name, data in files.items():
        assert read_file(mount.mountpoint / name) == data
    assert cached_digest(service, root, "3.flac") is not None
    assert chunk_files(cache / "chunks")
    assert CacheChecker(service.storage, repair=False).run(digests=True).consistent
