"""Real mounts through the `musicfs` command, as a user runs it."""
import errno
import hashlib
import os
import random
import shutil
import signal
import threading

import pytest

from testkit.process import wait_until
from tests.support.mounts import Daemon, alive, is_mounted, run_musicfs

pytestmark = pytest.mark.mount


@pytest.fixture
def daemon(tmp_path, origins_copy):
    a, b = origins_copy
    d = Daemon(tmp_path, [("a", a), ("b", b)])
    yield d
    d.stop()


def origin_files(root):
    """What a mount shows of an origin: every file but those the default [layout] ignore hides."""
    from musicfs.catalog.layout import IgnoreRules
    ignore = IgnoreRules()
    return {p.relative_to(root): p for p in root.rglob("*")
            if p.is_file() and not ignore.ignored(os.fsencode(p.relative_to(root)))}


def test_every_file_has_its_origins_bytes(daemon, origins_copy):
    daemon.mount()
    expected = {}
    for root in reversed(origins_copy):   # the first origin wins: let it overwrite
        expected.update(origin_files(root))
    shown = {p.relative_to(daemon.mountpoint) for p in daemon.mountpoint.rglob("*") if p.is_file()}
    assert shown == set(expected)
    for rel, source in expected.items():
        assert (daemon.mountpoint / rel).read_bytes() == source.read_bytes(), rel


def test_first_origin_wins_duplicate_path(tmp_path):
    a, b = tmp_path / "oa", tmp_path / "ob"
    (a / "Al").mkdir(parents=True)
    (b / "Al").mkdir(parents=True)
    (a / "Al/t.flac").write_bytes(b"A" * 5000)
    (b / "Al/t.flac").write_bytes(b"B" * 7000)
    (b / "Al/only-b.flac").write_bytes(b"b")
    d = Daemon(tmp_path, [("a", a), ("b", b)])
    try:
        d.mount()
        assert d.path("Al/t.flac").read_bytes() == b"A" * 5000
        assert d.path("Al/only-b.flac").read_bytes() == b"b"
    finally:
        d.stop()


def test_random_offset_reads_and_seeks(tmp_path):
    origin = tmp_path / "o"
    origin.mkdir()
    data = os.urandom(3 * (1 << 20) + 12345)   # spans four chunks
    (origin / "big.flac").write_bytes(data)
    d = Daemon(tmp_path, [("o", origin)])
    try:
        d.mount()
        rng = random.Random(7)
        with open(d.path("big.flac"), "rb", buffering=0) as f:
            for _ in range(200):
                offset = rng.randrange(0, len(data) + 100)
                size = rng.choice([1, 100, 4096, 65536, 1 << 20, 2 << 20])
                f.seek(offset)
                assert f.read(size) == data[offset:offset + size], (offset, size)
            f.seek(-10, os.SEEK_END)
            assert f.read() == data[-10:]
    finally:
        d.stop()


def test_writes_are_refused_with_erofs(daemon):
    daemon.mount()
    target = daemon.path("Test Pattern/Signals/01 Sine 440.flac")
    before = target.read_bytes()
    attempts = [
        lambda: open(target, "r+b"),
        lambda: open(target, "ab"),
        lambda: open(daemon.path("new.flac"), "wb"),
        lambda: os.truncate(target, 0),
        lambda: os.unlink(target),
        lambda: os.mkdir(daemon.path("newdir")),
        lambda: os.rmdir(daemon.path("loose")),
        lambda: os.rename(target, daemon.path("x.flac")),
        lambda: os.chmod(target, 0o777),
        lambda: os.chown(target, 1, 1),
        lambda: os.utime(target, (1, 1)),
        lambda: os.symlink("x", daemon.path("link")),
        lambda: os.link(target, daemon.path("hard")),
        lambda: os.setxattr(target, "user.x", b"1"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS, attempt
    assert target.read_bytes() == before


def test_32_concurrent_readers(tmp_path):
    origin = tmp_path / "o"
    origin.mkdir()
    files = {}
    for i in range(8):
        data = os.urandom((1 << 20) + i * 77777)
        (origin / f"{i}.flac").write_bytes(data)
        files[f"{i}.flac"] = hashlib.sha256(data).hexdigest()
    d = Daemon(tmp_path, [("o", origin)])
    try:
        d.mount()
        errors = []
        barrier = threading.Barrier(32)

        def reader(n):
            name = f"{n % 8}.flac"
            try:
                barrier.wait()
                with open(d.path(name), "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                if digest != files[name]:
                    errors.append(f"{name}: wrong bytes")
            except Exception as e:
                errors.append(f"{name}: {e!r}")
        threads = [threading.Thread(target=reader, args=(n,)) for n in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
    finally:
        d.stop()


def test_sigterm_unmounts_cleanly(daemon):
    daemon.mount()
    pid = daemon.pid
    assert pid and alive(pid)
    (daemon.path("loose/untagged.flac")).read_bytes()
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not alive(pid) and not is_mounted(daemon.mountpoint), timeout=20, message="clean exit")
    assert "stopped cleanly" in daemon.log()
    # clean shutdown: no recovery needed at the next start, lock released
    result = run_musicfs("cache", "stats", "--json", "-c", daemon.config)
    assert result.returncode == 0 and '"daemon_pid": null' in result.stdout


def test_fusermount_u_stops_the_daemon(daemon):
    daemon.mount()
    pid = daemon.pid
    os.system(f"fusermount -u {daemon.mountpoint}")
    wait_until(lambda: not alive(pid), timeout=20, message="daemon exit after fusermount -u")
    assert "stopped cleanly" in daemon.log()


def test_second_daemon_on_the_same_cache_is_refused(daemon, tmp_path):
    daemon.mount()
    other = tmp_path / "mnt2"
    other.mkdir()
    result = run_musicfs(other, "-c", daemon.config)
    assert result.returncode != 0
    assert f"PID {daemon.pid}" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not is_mounted(other)
    assert daemon.path("loose/untagged.flac").exists()


def test_remount_keeps_catalog_and_serves_cached_files_of_a_removed_origin(daemon, origins_copy):
    a, b = origins_copy
    daemon.mount()
    cached = daemon.path("Various/Compilation/01 no album artist.mp3")
    expected = cached.read_bytes()
    daemon.stop()
    shutil.rmtree(b)                       # origin b is gone (a NAS that did not come back)
    daemon.mount()
    assert cached.read_bytes() == expected  # still listed, still playing from the cache
    assert daemon.path("loose/untagged.flac").exists()       # listed, though not cached
    with pytest.raises(OSError) as info:
        daemon.path("loose/untagged.flac").read_bytes()
    assert info.value.errno == errno.EIO
    assert daemon.path("Test Pattern/Signals/01 Sine 440.flac").read_bytes() == \
        (a / "Test Pattern/Signals/01 Sine 440.flac").read_bytes()


def test_startup_errors_are_one_clear_line(tmp_path, origins_copy):
    a, _ = origins_copy
    cases = [
        (["/nonexistent/mnt", "-O", a, "--cache-dir", tmp_path / "c"], "does not exist; create it"),
        ([tmp_path, "-O", tmp_path / "missing", "--cache-dir", tmp_path / "c"], "origin origin1"),
        ([tmp_path, "-O", a, "--cache-size", "lots"], "--cache-size"),
    ]
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[cache]\nmax_sise = 1\n")
    cases.append(([tmp_path, "-c", bad_config], "cache.max_sise: unknown key"))
    for args, expected in cases:
        result = run_musicfs(*args)
        assert result.returncode != 0, args
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_help_everywhere():
    for args in ([], ["mount"], ["unmount"], ["cache"], ["cache", "stats"], ["cache", "verify"]):
        result = run_musicfs(*args, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout, args


def test_unmount_command_returns_after_the_daemon_exited(daemon):
    daemon.mount()
    pid = daemon.pid
    result = run_musicfs("unmount", daemon.mountpoint)
    assert result.returncode == 0, result.stderr
    assert not alive(pid) and not is_mounted(daemon.mountpoint)
    assert "stopped cleanly" in daemon.log()
    again = run_musicfs("unmount", daemon.mountpoint)
    assert again.returncode == 1 and again.stderr.strip().endswith("is not mounted"), again.stderr


def read_ahead_kb(mountpoint) -> int:
    device = os.stat(mountpoint).st_dev
    with open(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb") as f:
        return int(f.read())


def test_kernel_read_ahead_is_set_before_mount_returns(tmp_path, origins_copy):
    a, _ = origins_copy
    d = Daemon(tmp_path, [("a", a)], fuse={"read_ahead": "2M"})
    try:
        d.mount()
        # FUSE mounts start at 128 KiB; the daemon raises it once the kernel has its INIT reply.
        assert read_ahead_kb(d.mountpoint) == 2048
    finally:
        d.stop()


def test_libfuse_threads_keep_their_python_thread_state_between_calls(tmp_path, origins_copy, service_factory,
                                                                       in_process_mount):
    """Thread-local data lives in the Python thread state: if it survives from one request to
    the next on the same libfuse thread, the state was not torn down and rebuilt in between."""
    a, _ = origins_copy
    service = service_factory([("a", a)])
    service.initial_scan()
    mount = in_process_mount(service)
    local = threading.local()
    calls = {"fresh": 0, "kept": 0}
    statfs = mount.fs.statfs

    def counting_statfs(path):
        calls["kept" if getattr(local, "seen", False) else "fresh"] += 1
        local.seen = True
        return statfs(path)
    mount.fs.statfs = counting_statfs
    for _ in range(50):
        os.statvfs(mount.mountpoint)
    assert calls["kept"] + calls["fresh"] == 50
    # A handful of libfuse threads served the 50 requests: most found their state from before.
    assert calls["kept"] > calls["fresh"]


def test_a_local_origin_fetches_nothing_but_what_is_read(tmp_path, mounted):
    """Fetching a folder's next files ahead is for origins that pay round trips per file: a
    local one answers a first read faster than the bookkeeping would cost."""
    album = tmp_path / "local" / "Album"
    album.mkdir(parents=True)
    for n in range(1, 6):
        (album / f"{n:02} Track.flac").write_bytes(os.urandom(4000 + n))
    service, mount = mounted([("local", tmp_path / "local")])
    assert (mount.mountpoint / "Album" / "01 Track.flac").read_bytes() == (album / "01 Track.flac").read_bytes()
    assert not service.reader.fetcher.in_flight()
    for n in range(2, 6):
        source = service.reader.sources_of(service.catalog.lookup(f"/Album/{n:02} Track.flac".encode()))[0]
        assert service.store.manifest(source.key, source.size, source.mtime_ns) == [None]


def test_df_shows_the_cache_size_and_what_is_left_of_it_not_a_full_disk(tmp_path, mounted):
    # A read-only mount with 0 free sets off every "disk full" alert (node_exporter reads FUSE
    # mounts too): df shows the cache instead, [cache].max_size and what is left of it.
    (tmp_path / "o").mkdir()
    data = os.urandom(3 << 20)
    (tmp_path / "o" / "f.flac").write_bytes(data)
    service, mount = mounted([("o", tmp_path / "o")], max_size="64M")
    before = os.statvfs(mount.mountpoint)
    assert before.f_blocks * before.f_frsize == 64 << 20
    assert before.f_bavail * before.f_frsize == 64 << 20 and before.f_bfree == before.f_bavail
    assert (mount.mountpoint / "f.flac").read_bytes() == data       # 3 MiB now cached
    wait_until(lambda: os.statvfs(mount.mountpoint).f_bavail * before.f_frsize == (64 << 20) - service.store.total(),
               timeout=10, message="df to count the cached chunks")
    assert service.store.total() == len(data)
