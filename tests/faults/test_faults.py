"""Fault injection on real mounts: hung, failing, corrupting origins; a dying cache disk."""
import errno
import fcntl
import os
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from musicfs.cas import CacheChecker
from musicfs.cache_lock import CacheLock
from musicfs.read import OPEN_FILES

from testkit.library import chunk_bytes_on_disk, chunk_files
from testkit.process import wait_until
from tests.support.mounts import DT_DIR, DT_REG, Daemon, dirent_types, read_file, read_outcome, run_musicfs

pytestmark = pytest.mark.mount

MiB = 1 << 20


def library(tmp_path, name="o", files=None):
    root = tmp_path / name
    root.mkdir()
    for rel, data in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def expect_errno(path: Path, expected: set[int]) -> float:
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        read_file(path)
    assert info.value.errno in expected, info.value
    return time.monotonic() - started


def test_fuse_read_timeout_returns_eio(tmp_path, mounted):
    slow = library(tmp_path, "slow", {"a/hung.flac": os.urandom(100_000)})
    fast_data = os.urandom(300_000)
    fast = library(tmp_path, "fast", {"b/ok.flac": fast_data})
    service, mount = mounted([("slow", slow), ("fast", fast)], faulty={"slow"},
                              fuse={"read_timeout": 1.5}, health={"interval": 60})
    service.origins["slow"].hang(only={"read"})
    outcome = {}

    def hung_reader():
        outcome["elapsed"] = expect_errno(mount.mountpoint / "a/hung.flac", {errno.EIO})
    thread = threading.Thread(target=hung_reader)
    thread.start()
    # while the hung read waits, the other origin's files read normally
    assert read_file(mount.mountpoint / "b/ok.flac") == fast_data
    thread.join(10)
    assert not thread.is_alive()
    assert outcome["elapsed"] < 1.5 + 1.0, outcome
    service.origins["slow"].release()


def test_unhealthy_origin_fails_fast_and_recovers(tmp_path, mounted):
    data = os.urandom(200_000)
    root = library(tmp_path, "nas", {"x.flac": data, "y.flac": data[:1000]})
    service, mount = mounted([("nas", root)], faulty={"nas"}, fuse={"read_timeout": 20},
                              health={"interval": 0.2, "timeout": 0.3})
    status = service.health.status["nas"]
    service.origins["nas"].hang()
    wait_until(lambda: status.state == "unhealthy", message="the monitor to judge the hung origin")
    elapsed = expect_errno(mount.mountpoint / "x.flac", {errno.EIO})
    assert elapsed < 1.5, f"a read of a known-dead origin took {elapsed:.2f}s"
    service.origins["nas"].release()
    wait_until(lambda: status.state == "healthy", message="the origin to be judged healthy again")
    assert read_file(mount.mountpoint / "x.flac") == data     # reads resume without a restart


def test_failover_to_a_replica(tmp_path, mounted):
    data = os.urandom(2 * MiB + 5)
    primary = library(tmp_path, "primary", {"al/t.flac": data})
    replica = library(tmp_path, "replica", {"al/t.flac": data})
    service, mount = mounted([("primary", primary), ("replica", replica)], faulty={"primary", "replica"},
                              health={"interval": 0.2, "timeout": 0.3})
    service.origins["primary"].fail(errno.EIO, only={"read", "check"})
    assert read_file(mount.mountpoint / "al/t.flac") == data
    assert service.origins["replica"].calls["read"] >= 3
    # once the primary is judged unhealthy, reads go to the replica without asking it
    wait_until(lambda: service.health.status["primary"].state == "unhealthy", message="primary judged unhealthy")
    before = service.origins["primary"].calls["read"]
    service.store.evict(target=0)
    service.store.verified.clear()
    with open(mount.mountpoint / "al/t.flac", "rb", buffering=0) as f:
        f.seek(MiB)
        assert f.read(100) == data[MiB:MiB + 100]
    assert service.origins["primary"].calls["read"] == before


def test_a_replica_of_another_version_never_completes_a_file(tmp_path, mounted, caplog):
    """Replicas of the same size may be different versions (a retag that kept the size on one
    origin, a backup not synced yet). A failover in the middle of a file takes the replica only
    if it has the same bytes in every chunk already read from the first copy - the file is then
    exactly the replica's - and fails with EIO otherwise: never a mix of the two."""
    old = os.urandom(4 * MiB + 7)
    new = bytearray(old)
    new[MiB + 1000:MiB + 5000] = os.urandom(4000)            # chunk 1 differs, same size
    primary = library(tmp_path, "primary", {"retagged.flac": bytes(new), "same.flac": old})
    replica = library(tmp_path, "replica", {"retagged.flac": old, "same.flac": old})
    service, mount = mounted([("primary", primary), ("replica", replica)], faulty={"primary"},
                             health={"interval": 0.2, "timeout": 0.3})
    for name in ("retagged.flac", "same.flac"):              # chunk 1 read (and cached) from the primary
        with open(mount.mountpoint / name, "rb", buffering=0) as f:
            f.seek(MiB)
            assert f.read(4096) == (new if name == "retagged.flac" else old)[MiB:MiB + 4096]
    service.origins["primary"].fail(errno.EIO, only={"read", "check"})
    assert read_outcome(mount.mountpoint / "retagged.flac") == errno.EIO
    assert "replica: holds another version of this file than the one read so far" in caplog.text
    assert read_outcome(mount.mountpoint / "same.flac") == old   # proven the same: served from the replica
    service.origins["primary"].healthy()
    wait_until(lambda: service.health.status["primary"].state == "healthy", message="primary healthy again")
    assert read_outcome(mount.mountpoint / "retagged.flac") == bytes(new)


def test_an_open_file_read_from_a_replica_goes_on_from_it(tmp_path, mounted):
    """A file being read from a replica after a failover (the preferred copy differs) keeps
    reading from the replica when the preferred origin returns, even after the per-file read
    state was made again (here: a third origin got a file at that path, which changes its
    catalog entry but not its version): the open gets one copy's bytes, never a mix."""
    preferred, stale = os.urandom(8 * MiB), os.urandom(8 * MiB)
    p = library(tmp_path, "p", {"v.flac": preferred})
    r = library(tmp_path, "r", {"v.flac": stale})
    other = library(tmp_path, "other", {"x.flac": b"x"})
    service, mount = mounted([("p", p), ("r", r), ("other", other)], faulty={"p"},
                             health={"interval": 0.2, "timeout": 0.3}, fuse_options={"direct_io": True})
    service.origins["p"].fail(errno.EIO, only={"read", "check"})
    with open(mount.mountpoint / "v.flac", "rb", buffering=0) as f:
        assert f.read(4 * MiB) == stale[:4 * MiB]                 # from the replica
        (other / "v.flac").write_bytes(b"not a replica")          # another size: a new source only
        assert all(result.complete for result in service.scanner.scan())
        service.origins["p"].healthy()
        wait_until(lambda: service.health.status["p"].state == "healthy", message="p healthy again")
        rest = b""
        try:
            while chunk := f.read(MiB):
                rest += chunk
        except OSError as e:
            assert e.errno == errno.EIO
        else:
            assert rest == stale[4 * MiB:], "the open went on with the preferred copy's bytes"
    assert read_outcome(mount.mountpoint / "v.flac") in (stale, errno.EIO)


def test_offline_playback_of_cached_files_with_every_origin_hung(tmp_path, mounted):
    a_data, b_data = os.urandom(3 * MiB), os.urandom(500_000)
    a = library(tmp_path, "a", {"one.flac": a_data})
    b = library(tmp_path, "b", {"two.flac": b_data, "uncached.flac": b"zz"})
    service, mount = mounted([("a", a), ("b", b)], faulty={"a", "b"}, fuse={"read_timeout": 1})
    assert read_file(mount.mountpoint / "one.flac") == a_data
    assert read_file(mount.mountpoint / "two.flac") == b_data
    service.origins["a"].hang()
    service.origins["b"].hang()
    service.store.verified.clear()
    for _ in range(3):
        assert read_file(mount.mountpoint / "one.flac") == a_data
        assert read_file(mount.mountpoint / "two.flac") == b_data
    assert sorted(os.listdir(mount.mountpoint)) == ["one.flac", "two.flac", "uncached.flac"]
    expect_errno(mount.mountpoint / "uncached.flac", {errno.EIO})
    service.origins["a"].release()
    service.origins["b"].release()


def test_corrupt_chunk_auto_refetched(tmp_path, mounted):
    data = os.urandom(3 * MiB + 777)
    root = library(tmp_path, "o", {"f.flac": data})
    service, mount = mounted([("o", root)], faulty={"o"}, fuse_options={"direct_io": True})   # no page cache: every read reaches us
    assert read_file(mount.mountpoint / "f.flac") == data
    reads_before = service.origins["o"].calls["read"]
    # corrupt the second chunk on disk (flip bytes in place, keep its size)
    digest = service.store.manifest(b"o\0f.flac", len(data), os.stat(root / "f.flac").st_mtime_ns)[1]
    path = Path(os.fsdecode(service.store.path_of(digest)))
    chunk = bytearray(path.read_bytes())
    chunk[1000:1010] = bytes(b ^ 0x55 for b in chunk[1000:1010])
    path.write_bytes(bytes(chunk))
    service.store.verified.clear()
    assert read_file(mount.mountpoint / "f.flac") == data
    assert service.origins["o"].calls["read"] == reads_before + 1, "only the bad chunk is fetched again"
    assert CacheChecker(service.storage, repair=False).run(digests=True).consistent


def test_missing_chunk_triggers_origin_fetch(tmp_path, mounted):
    data = os.urandom(2 * MiB + 10)
    root = library(tmp_path, "o", {"f.flac": data})
    service, mount = mounted([("o", root)], faulty={"o"}, fuse_options={"direct_io": True})
    assert read_file(mount.mountpoint / "f.flac") == data
    reads_before = service.origins["o"].calls["read"]
    digest = service.store.manifest(b"o\0f.flac", len(data), os.stat(root / "f.flac").st_mtime_ns)[0]
    os.unlink(service.store.path_of(digest))
    service.store.verified.clear()
    assert read_file(mount.mountpoint / "f.flac") == data
    assert service.origins["o"].calls["read"] == reads_before + 1
    assert service.store.total() == chunk_bytes_on_disk(service.storage.chunks_dir)


def test_chunk_no_origin_can_supply_is_eio_never_wrong_bytes(tmp_path, mounted):
    data = os.urandom(MiB + 10)
    root = library(tmp_path, "o", {"f.flac": data})
    service, mount = mounted([("o", root)], faulty={"o"}, fuse_options={"direct_io": True})
    service.origins["o"].corrupt()
    first = read_file(mount.mountpoint / "f.flac")   # no known digest yet: the origin is trusted
    assert len(first) == len(data)
    service.origins["o"].partial()                    # a truncated answer is never served
    service.store.evict(target=0)
    service.store.verified.clear()
    expect_errno(mount.mountpoint / "f.flac", {errno.EIO})


def test_cas_size_tracking_is_correct(tmp_path, mounted):
    files = {f"{i}.flac": os.urandom(MiB // 2 + i * 100_003) for i in range(12)}
    root = library(tmp_path, "o", files)
    service, mount = mounted([("o", root)], max_size="3M", fuse_options={"direct_io": True})
    for name, data in files.items():
        assert read_file(mount.mountpoint / name) == data
        on_disk = chunk_bytes_on_disk(service.storage.chunks_dir)
        assert service.store.total() == on_disk
        assert service.store.total() <= 3 * MiB
    assert CacheChecker(service.storage, repair=False).run(digests=True).consistent


@pytest.fixture
def chunk_disk(tmp_path):
    """Put a cache's chunks/ on a small tmpfs of its own, so a test can make that
    disk read-only or full for real (the LMDB index, open for writing, would keep the kernel
    from remounting its filesystem read-only)."""
    mounted = []

    def make(cache_dir: Path, size: str) -> Path:
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
        mounted.append(disk)
        (cache_dir / "chunks").mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(disk), str(cache_dir / "chunks")], check=True)
        mounted.append(cache_dir / "chunks")
        return disk
    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_passthrough_mode_when_cache_disk_dead(tmp_path, chunk_disk, mounted):
    disk = chunk_disk(tmp_path / "cache", "64M")
    files = {f"{i}.flac": os.urandom(MiB + i) for i in range(4)}
    root = library(tmp_path, "o", files)
    service, mount = mounted([("o", root)], health={"interval": 0.2}, fuse_options={"direct_io": True})
    assert read_file(mount.mountpoint / "0.flac") == files["0.flac"]
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    try:
        assert read_file(mount.mountpoint / "1.flac") == files["1.flac"]   # from the origin
        assert service.store.disk.passthrough
        service.store.verified.clear()
        assert read_file(mount.mountpoint / "0.flac") == files["0.flac"]   # cached still served
        assert read_file(mount.mountpoint / "2.flac") == files["2.flac"]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    wait_until(lambda: not service.store.disk.passthrough, timeout=10, message="caching to resume")
    assert read_file(mount.mountpoint / "3.flac") == files["3.flac"]
    digest = service.store.manifest(b"o\x003.flac", MiB + 3, os.stat(root / "3.flac").st_mtime_ns)[0]
    assert digest is not None and service.store.contains(digest) == MiB   # its first chunk, cached again
    assert CacheChecker(service.storage, repair=False).run(digests=True).consistent


def test_passthrough_asks_the_origin_for_each_chunk_once(tmp_path, chunk_disk, mounted):
    """With the cache disk dead, a chunk served to one read (the kernel asks for a chunk in
    128 KiB pieces) or read ahead stays in memory for the reads to come: the origin is asked
    for each chunk once, not once a piece."""
    disk = chunk_disk(tmp_path / "cache", "64M")
    files = {"first.flac": os.urandom(MiB), "long.flac": os.urandom(6 * MiB + 5)}
    root = library(tmp_path, "o", files)
    service, mount = mounted([("o", root)], faulty={"o"}, fuse_options={"direct_io": True})
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    try:
        assert read_file(mount.mountpoint / "first.flac") == files["first.flac"]
        assert service.store.disk.passthrough
        origin = service.origins["o"]
        before = origin.calls["read"]
        assert read_file(mount.mountpoint / "long.flac") == files["long.flac"]
        assert origin.calls["read"] - before == 7
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)


@pytest.mark.parametrize("scan_meanwhile", [False, True], ids=["open", "read-state-dropped-by-a-scan"])
def test_no_mix_of_replicas_in_passthrough_either(tmp_path, chunk_disk, mounted, scan_meanwhile):
    """With the cache disk dead nothing is cached, but what a file served is still remembered -
    also when its read state is dropped meanwhile (a media server reading more files than the
    reader keeps states for): a replica of another version does not complete it after a
    failover."""
    disk = chunk_disk(tmp_path / "cache", "64M")
    old = os.urandom(3 * MiB + 7)
    new = bytearray(old)
    new[MiB + 10:MiB + 4000] = os.urandom(3990)                # chunk 1 differs, same size
    others = {f"other/{i}.flac": b"o" for i in range(OPEN_FILES + 10)} if scan_meanwhile else {}
    primary = library(tmp_path, "primary", {"f.flac": bytes(new), **others})
    replica = library(tmp_path, "replica", {"f.flac": old})
    service, mount = mounted([("primary", primary), ("replica", replica)], faulty={"primary"},
                             health={"interval": 0.2, "timeout": 0.3}, fuse_options={"direct_io": True})
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    try:
        with open(mount.mountpoint / "f.flac", "rb", buffering=0) as f:
            f.seek(MiB)
            assert f.read(4096) == new[MiB:MiB + 4096]
            assert service.store.disk.passthrough
            for name in others:
                assert service.reader.read_path(f"/{name}".encode(), 0, 10) == b"o"
            service.origins["primary"].fail(errno.EIO, only={"read", "check"})
            f.seek(0)
            with pytest.raises(OSError) as raised:
                f.read(MiB)
            assert raised.value.errno == errno.EIO
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)


def test_full_cache_disk_evicts_then_passes_through(tmp_path, chunk_disk, mounted):
    chunk_disk(tmp_path / "cache", "6M")   # smaller than max_size: the disk fills before the limit
    files = {f"{i}.flac": os.urandom(MiB + i) for i in range(10)}
    root = library(tmp_path, "o", files)
    service, mount = mounted([("o", root)], max_size="100M", fuse_options={"direct_io": True})
    for name, data in files.items():
        assert read_file(mount.mountpoint / name) == data
    on_disk = chunk_bytes_on_disk(service.storage.chunks_dir)
    assert service.store.total() == on_disk


def test_pid_file_prevents_concurrent_mount(tmp_path):
    root = library(tmp_path, "o", {"f.flac": b"x"})
    first = Daemon(tmp_path, [("o", root)])
    try:
        first.mount()
        assert (first.cache_dir / "musicfs.lock").read_text().strip() == str(first.pid)
        second_mnt = tmp_path / "mnt-second"
        second_mnt.mkdir()
        result = run_musicfs(second_mnt, "-c", first.config)
        assert result.returncode == 1
        assert result.stderr.strip() == (f"musicfs: cache {first.cache_dir} is in use by another musicfs "
                                         f"(PID {first.pid}); unmount it first or give this one another --cache-dir")
        assert read_file(first.path("f.flac")) == b"x"
    finally:
        first.stop()


def test_fd_exhaustion_handling(tmp_path):
    files = {f"{i}.flac": os.urandom(200_000 + i) for i in range(20)}
    root = library(tmp_path, "o", files)
    d = Daemon(tmp_path, [("o", root)])
    try:
        d.mount("-o", "direct_io")
        assert read_file(d.path("0.flac")) == files["0.flac"]
        open_fds = len(os.listdir(f"/proc/{d.pid}/fd"))
        # No new descriptor at all: a limit at today's count could still be met by a number freed
        # by a health check or the status writer in the meantime (the kernel hands out the lowest
        # free number). Only the soft limit: raising a hard limit again needs CAP_SYS_RESOURCE.
        subprocess.run(["prlimit", f"--pid={d.pid}", "--nofile=0:"], check=True)
        failures = 0
        for i in range(1, 11):
            try:
                assert read_file(d.path(f"{i}.flac")) == files[f"{i}.flac"]
            except OSError as e:
                assert e.errno in (errno.EMFILE, errno.EIO), e
                failures += 1
        assert failures > 0, "the lowered limit did not bite"
        subprocess.run(["prlimit", f"--pid={d.pid}", "--nofile=1024:"], check=True)
        for i in range(1, 20):
            assert read_file(d.path(f"{i}.flac")) == files[f"{i}.flac"]
        log = d.log()
        assert "Traceback" not in log
        assert log.count("Too many open files") < 10, "EMFILE was not rate-limited"
        assert len(os.listdir(f"/proc/{d.pid}/fd")) <= open_fds + 2, "descriptors leaked"
    finally:
        d.stop()


def test_no_descriptor_leak_over_many_reads(tmp_path, mounted):
    files = {f"{i}.flac": os.urandom(300_000) for i in range(30)}
    root = library(tmp_path, "o", files)
    service, mount = mounted([("o", root)], max_size="2M", fuse_options={"direct_io": True})
    for name in files:
        read_file(mount.mountpoint / name)
    baseline = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        for name, data in files.items():
            assert read_file(mount.mountpoint / name) == data
    assert len(os.listdir("/proc/self/fd")) == baseline


def test_file_changed_on_origin_is_served_new_after_rescan(tmp_path, mounted):
    """With the daemon's kernel caching (pages kept per version, attribute timeouts), a rescan that sees a
    change makes the mount serve the new bytes, not stale pages or stale chunks."""
    from musicfs.daemon.process import DEFAULT_FUSE_OPTIONS
    root = library(tmp_path, "o", {"song.flac": b"old" * 100_000})
    options = {k: v for k, v in DEFAULT_FUSE_OPTIONS.items() if k not in ("fsname", "ro")}
    options.update(attr_timeout=0.2, entry_timeout=0.2)
    service, mount = mounted([("o", root)], fuse_options=options)
    path = mount.mountpoint / "song.flac"
    assert read_file(path) == b"old" * 100_000
    new = b"new!" * 120_000
    (root / "song.flac").write_bytes(new)
    assert read_file(path) == b"old" * 100_000      # not rescanned yet: the catalogued version
    service.scanner.scan()
    wait_until(lambda: read_file(path) == new, timeout=5, message="the new bytes after the rescan")


def test_cache_disk_read_only_at_start_serves_catalog_cache_and_passthrough_then_resumes(tmp_path):
    """After a reboot with the cache disk read-only (fsck, a failing SSD), musicfs still mounts:
    the stored catalog, cached chunks, and misses straight from the origin; once the disk takes
    writes again, caching resumes without a restart."""
    files = {"cached.flac": os.urandom(MiB + 7), "uncached.flac": os.urandom(300_000),
             "later.flac": os.urandom(MiB + 3)}
    root = library(tmp_path, "o", files)
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64M", "tmpfs", str(cache)], check=True)
    d = Daemon(tmp_path, [("o", root)], health={"interval": 0.3})
    try:
        d.mount()
        assert read_file(d.path("cached.flac")) == files["cached.flac"]
        d.stop()
        subprocess.run(["mount", "-o", "remount,ro", str(cache)], check=True)
        d.mount()
        assert sorted(os.listdir(d.mountpoint)) == ["cached.flac", "later.flac", "uncached.flac"]
        assert read_file(d.path("cached.flac")) == files["cached.flac"]
        assert read_file(d.path("uncached.flac")) == files["uncached.flac"]
        assert "refuses writes" in d.log()
        stats = run_musicfs("cache", "stats", "--json", "-c", d.config)
        assert stats.returncode == 0 and '"passthrough": true' in stats.stdout, stats.stdout + stats.stderr
        probe = run_musicfs("health", "-c", d.config)
        assert probe.returncode == 1 and "passthrough" in probe.stdout, probe.stdout
        before = len(chunk_files(cache / "chunks"))

        subprocess.run(["mount", "-o", "remount,rw", str(cache)], check=True)
        wait_until(lambda: "caching resumed" in d.log(), timeout=10, message="caching to resume")
        assert read_file(d.path("later.flac")) == files["later.flac"]
        assert len(chunk_files(cache / "chunks")) > before
        wait_until(lambda: '"passthrough": false' in run_musicfs("cache", "stats", "--json", "-c", d.config).stdout,
                   message="cache stats to show passthrough off")
        d.stop()
        verify = run_musicfs("cache", "verify", "-c", d.config)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        d.stop()
        subprocess.run(["umount", "-l", str(cache)], capture_output=True)


def test_listing_gives_raw_names_and_entry_types(tmp_path, mounted):
    raw_name = b"caf\xe9.flac"  # Latin-1, not UTF-8
    root = library(tmp_path, "o", {"Album/1.flac": b"one"})
    with open(os.path.join(os.fsencode(root), raw_name), "wb") as f:
        f.write(b"latin1")
    _, mount = mounted([("o", root)])
    # Each entry's type comes with the listing (d_type), so walkers need no lookup per entry.
    assert dirent_types(mount.mountpoint) == {b".": DT_DIR, b"..": DT_DIR, b"Album": DT_DIR, raw_name: DT_REG}
    with open(os.path.join(os.fsencode(mount.mountpoint), raw_name), "rb") as f:
        assert f.read() == b"latin1"
    assert os.listdir(mount.mountpoint / "Album") == ["1.flac"]


EXT4_IOC_SHUTDOWN = 0x8004587D    # _IOR('X', 125, __u32): the filesystem answers EIO from now on
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


def test_the_cache_lock_of_a_dead_cache_disk_is_no_traceback(tmp_path):
    """`musicfs unmount` and the probe ask who holds the cache; a cache disk that died (every
    access EIO) cannot tell, which is an answer, not a crash."""
    image, disk = tmp_path / "disk.img", tmp_path / "disk"
    disk.mkdir()
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"no loop device here: {mounted.stderr.strip()}")
    try:
        lock = CacheLock(disk)
        lock.acquire()
        assert CacheLock.holder(disk) == os.getpid()
        fd = os.open(disk, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)
        assert CacheLock.holder(disk) in (None, -1)
        lock.release()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
