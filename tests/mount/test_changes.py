"""Files that change or vanish on their origin: never two versions mixed, never a healthy origin
taken down for one missing file. Real mounts with the daemon's kernel caching options."""
import errno
import os
import shutil
import threading
from pathlib import Path

import pytest

from musicfs.cas.store import digest_of
from musicfs.health import HEALTHY
from musicfs.origins import LocalOrigin
from musicfs.daemon.service import Service

from tests.conftest import make_config
from tests.support.audio import FIXTURES
from tests.support.mounts import read_file as read_all, read_outcome

pytestmark = pytest.mark.mount

MiB = 1 << 20
# What `musicfs MOUNTPOINT` asks the kernel for (daemon.DEFAULT_FUSE_OPTIONS): the kernel keeps
# attributes and lookups, and pages where an open says so, which is what makes a mixed read
# possible at all.
KERNEL_CACHING = {"attr_timeout": 30, "entry_timeout": 30}


def rename_over(path: Path, data: bytes) -> None:
    """What taggers (and ffmpeg) do: write a temp file beside the original, rename it over."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_retag_by_rename_after_listing_is_never_served_mixed(tmp_path, mounted, caplog):
    origin = tmp_path / "nas"
    shutil.copytree(FIXTURES / "origin-a", origin)
    track = origin / "Test Pattern" / "Signals" / "01 Sine 440.flac"
    old = track.read_bytes()
    service, mount = mounted([("nas", origin)], fuse_options=KERNEL_CACHING)
    shown = mount.mountpoint / "Test Pattern" / "Signals" / "01 Sine 440.flac"
    assert shown.stat().st_size == len(old)          # `ls -l`: the kernel now holds the old size

    # a retag that makes the file longer (a bigger tag block after the 4-byte magic)
    new = old[:4] + b"\x04\x00\x10\x00" + b"T" * 4096 + old[4:]
    rename_over(track, new)

    first = read_outcome(shown)
    assert first in (old, new, errno.EIO), "a read returned bytes of neither version alone"
    # whatever the first read saw, the catalog now knows the new version, and the next open
    # reads it whole although the kernel still caches the old size
    assert read_all(shown) == new
    assert service.catalog.lookup(b"/Test Pattern/Signals/01 Sine 440.flac").size == len(new)
    assert "changed since the last scan; catalog entry refreshed" in caplog.text


def test_half_cached_file_changed_in_place_gives_one_version_or_an_error(tmp_path, mounted):
    origin = tmp_path / "nas"
    origin.mkdir()
    big = origin / "big.flac"
    old = os.urandom(16 * MiB + 12345)
    big.write_bytes(old)
    service, mount = mounted([("nas", origin)], fuse_options=KERNEL_CACHING)
    shown = mount.mountpoint / "big.flac"
    with open(shown, "rb", buffering=0) as f:
        assert f.read(2 * MiB) == old[:2 * MiB]       # the first chunks (and a few ahead) are cached now
    digests = service.store.manifest(b"nas\0big.flac", len(old), big.stat().st_mtime_ns)
    assert digests[0] is not None and digests[-1] is None
    opened_before = open(shown, "rb", buffering=0)
    try:
        # rewritten in place, same size: both its cached and its uncached part change
        new = bytearray(old)
        new[100:200] = os.urandom(100)
        new[14 * MiB:14 * MiB + 100] = os.urandom(100)
        new = bytes(new)
        with open(big, "r+b") as f:
            f.write(new)

        outcomes = [read_outcome(shown) for _ in range(2)]
        for outcome in outcomes:
            assert outcome in (old, new, errno.EIO), "a read mixed cached old chunks with new origin bytes"
        assert read_all(shown) == new                 # once detected, the new version whole

        # the open from before the change never gets bytes of the new version
        try:
            rest = opened_before.read()
        except OSError as e:
            assert e.errno == errno.EIO
        else:
            assert rest == old, "an open of the old version was given new bytes"
    finally:
        opened_before.close()


def test_fully_cached_file_changed_on_origin_is_served_whole_until_rescanned(tmp_path, mounted):
    origin = tmp_path / "nas"
    origin.mkdir()
    old = os.urandom(2 * MiB + 7)
    (origin / "song.flac").write_bytes(old)
    service, mount = mounted([("nas", origin)], fuse_options=KERNEL_CACHING)
    shown = mount.mountpoint / "song.flac"
    assert read_all(shown) == old
    new = os.urandom(len(old))
    rename_over(origin / "song.flac", new)
    assert read_all(shown) == old    # every chunk cached: the old version, whole, never a mix
    service.scanner.scan()
    assert read_all(shown) == new


def test_deleted_file_is_a_catalog_change_not_an_origin_failure(tmp_path, mounted):
    origin = tmp_path / "nas"
    origin.mkdir()
    files = {f"album/{i:02d}.flac": os.urandom(300_000) for i in range(4)}
    for rel, data in files.items():
        (origin / rel).parent.mkdir(parents=True, exist_ok=True)
        (origin / rel).write_bytes(data)
    service, mount = mounted([("nas", origin)], fuse_options=KERNEL_CACHING, health={"interval": 3600})
    (origin / "album/00.flac").unlink()

    assert read_outcome(mount.mountpoint / "album/00.flac") in (errno.EIO, errno.ENOENT)
    # every other file of that origin reads at once, and the origin was never judged down
    for rel in ("album/01.flac", "album/02.flac", "album/03.flac"):
        assert read_all(mount.mountpoint / rel) == files[rel]
    assert service.health.status["nas"].state == HEALTHY
    assert service.health.status["nas"].consecutive_failures == 0
    # the vanished entry is gone from the catalog without waiting for a rescan
    assert service.catalog.lookup(b"/album/00.flac") is None
    assert service.catalog.lookup(b"/album/01.flac") is not None

    # put back: it is listed again at the next scan and reads
    (origin / "album/00.flac").write_bytes(files["album/00.flac"])
    service.scanner.scan()
    assert read_all(mount.mountpoint / "album/00.flac") == files["album/00.flac"]


def test_vanished_folder_is_refreshed_and_replica_serves(tmp_path, mounted):
    a, b = tmp_path / "a", tmp_path / "b"
    data = os.urandom(500_000)
    for root in (a, b):
        (root / "x" / "y").mkdir(parents=True)
        (root / "x" / "y" / "t.flac").write_bytes(data)
    (a / "keep.flac").write_bytes(b"k" * 1000)
    service, mount = mounted([("a", a), ("b", b)], fuse_options=KERNEL_CACHING, health={"interval": 3600})
    shutil.rmtree(a / "x")
    # the preferred copy is gone with its folder: the replica serves the same bytes
    assert read_all(mount.mountpoint / "x/y/t.flac") == data
    assert service.health.status["a"].state == HEALTHY
    entry = service.catalog.lookup(b"/x/y/t.flac")
    assert [origin for origin, _ in entry.sources] == ["b"]


def test_origin_whose_root_lists_empty_keeps_its_files_listed(tmp_path, mounted):
    # a NAS share that is not mounted: its mountpoint is an empty directory
    origin = tmp_path / "nas"
    origin.mkdir()
    (origin / "a.flac").write_bytes(os.urandom(100_000))
    (origin / "b.flac").write_bytes(os.urandom(100_000))
    service, mount = mounted([("nas", origin)], health={"interval": 3600})
    origin.rename(tmp_path / "nas-away")
    origin.mkdir()

    assert read_outcome(mount.mountpoint / "a.flac") == errno.EIO
    result, = service.scanner.scan()
    assert not result.complete and "lists empty" in result.error
    assert sorted(os.listdir(mount.mountpoint)) == ["a.flac", "b.flac"]
    assert service.health.status["nas"].state != HEALTHY     # this one is the origin's failure


class BytesOnTheWire(LocalOrigin):
    """A local origin whose first read of chunk 1 has its bytes in hand but does not hand them
    over until the test says so: an old version's bytes still on the wire (a slow GET whose
    If-Match matched) when the file is replaced."""

    def __init__(self, name, path):
        super().__init__(name, path)
        self.read_done, self.deliver = threading.Event(), threading.Event()

    def read(self, relpath, offset, size, expect=None):
        data = super().read(relpath, offset, size, expect)
        if offset == MiB and not self.read_done.is_set():
            self.read_done.set()
            assert self.deliver.wait(10)
        return data


def test_a_fetch_of_the_old_version_in_flight_serves_no_read_of_the_new_one(tmp_path):
    """Fetches are shared per version: a read of the new version does not join a fetch of the
    old one still under way, and the old one's bytes, arriving late, are not recorded in the
    chunk list of the new version (same size and mtime: only the version token differs)."""
    root = tmp_path / "o"
    root.mkdir()
    old = os.urandom(2 * MiB + 100)
    new = old[:MiB] + os.urandom(MiB) + old[2 * MiB:]
    (root / "f.flac").write_bytes(old)
    origin = BytesOnTheWire("o", root)
    service = Service.open(make_config(tmp_path, [("o", root)]), origins={"o": origin})
    try:
        service.initial_scan()
        stale = {}
        early = threading.Thread(target=lambda: stale.update(data=service.reader.read_path(b"/f.flac", MiB, 4096)))
        early.start()
        assert origin.read_done.wait(10)
        mtime = os.stat(root / "f.flac").st_mtime_ns
        rename_over(root / "f.flac", new)
        os.utime(root / "f.flac", ns=(mtime, mtime))               # a tagger that keeps the mtime
        result, = service.scanner.scan()
        assert result.complete and service.catalog.lookup(b"/f.flac").mtime_ns == mtime
        assert service.reader.read_path(b"/f.flac", MiB, 4096) == new[MiB:MiB + 4096]
        origin.deliver.set()
        early.join(10)
        assert stale["data"] == old[MiB:MiB + 4096]                # the read begun before the change
        source, = service.reader.sources_of(service.catalog.lookup(b"/f.flac"))
        assert service.store.manifest(source.key, source.size, source.mtime_ns)[1] == digest_of(new[MiB:2 * MiB])
        service.store.verified.clear()
        assert service.reader.read_path(b"/f.flac", 0, len(new)) == new
    finally:
        origin.deliver.set()
        service.stop()


def test_a_replacement_keeping_size_and_mtime_drops_the_kernels_pages(tmp_path, mounted):
    """A tagger that keeps the mtime, same size: the rescan sees the change (ctime), and once
    the kernel's attribute timeout has passed a new open reads the new version whole - the
    pages the kernel kept from the old one are dropped, not mixed in."""
    origin = tmp_path / "nas"
    origin.mkdir()
    track = origin / "b.flac"
    old, new = os.urandom(6 * MiB), os.urandom(6 * MiB)
    track.write_bytes(old)
    service, mount = mounted([("nas", origin)], fuse_options=KERNEL_CACHING)
    shown = mount.mountpoint / "b.flac"
    with open(shown, "rb") as f:
        assert f.read(2 * MiB) == old[:2 * MiB]        # in the kernel's page cache now
    mtime = track.stat().st_mtime_ns
    rename_over(track, new)
    os.utime(track, ns=(mtime, mtime))
    result, = service.scanner.scan()
    assert result.complete and result.changed
    service.catalog.recent.window = 0     # as if the attribute timeout had passed: no direct I/O
    assert read_all(shown) == new


def test_pages_of_an_unchanged_file_stay_in_the_kernel(tmp_path, mounted):
    """The other half: opening the same version again keeps the kernel's pages (a warm re-read
    does not reach the daemon)."""
    origin = tmp_path / "nas"
    origin.mkdir()
    (origin / "b.flac").write_bytes(os.urandom(3 * MiB))
    service, mount = mounted([("nas", origin)], fuse_options=KERNEL_CACHING)
    shown = mount.mountpoint / "b.flac"
    first = read_all(shown)
    hits = service.store.hits.value
    assert read_all(shown) == first
    assert service.store.hits.value == hits      # nothing asked of the daemon's cache: the kernel had it


def test_the_preferred_copy_deleted_under_an_open_file_never_mixes_in_a_different_replica(tmp_path, mounted):
    """The preferred copy is deleted while a file is being read and a replica of the same size
    but other bytes takes over the entry: the open does not go on with the replica's bytes
    (they do not agree with what it read), while a replica with the same bytes serves on."""
    a_version, b_version = os.urandom(8 * MiB), os.urandom(8 * MiB)
    o1, o2 = tmp_path / "o1", tmp_path / "o2"
    for root in (o1, o2):
        root.mkdir()
    (o1 / "keep.flac").write_bytes(b"k" * 1000)            # o1's root does not go empty
    (o1 / "d.flac").write_bytes(a_version)
    (o2 / "d.flac").write_bytes(b_version)
    (o1 / "same.flac").write_bytes(a_version)
    (o2 / "same.flac").write_bytes(a_version)
    service, mount = mounted([("o1", o1), ("o2", o2)], fuse_options={"direct_io": True})
    for name, replica in (("d.flac", b_version), ("same.flac", a_version)):
        with open(mount.mountpoint / name, "rb", buffering=0) as f:
            assert f.read(2 * MiB) == a_version[:2 * MiB]
            (o1 / name).unlink()
            rest = b""
            try:
                while chunk := f.read(MiB):
                    rest += chunk
            except OSError as e:
                assert e.errno == errno.EIO and replica != a_version, e
            else:
                assert rest == a_version[2 * MiB:], "the open went on with another version's bytes"
    assert read_all(mount.mountpoint / "same.flac") == a_version
