"""The chunk store without FUSE: put/get/verify, dedup, exact accounting, LRU, recovery."""
import os
import time
from pathlib import Path

import pytest

from musicfs.cas import CacheChecker, ChunkStore, digest_of, recover
from musicfs.errors import ChunkCorrupt, ChunkMissing, ReadTimeout
from musicfs.database import FORMAT_VERSION, Storage

from testkit.library import chunk_bytes_on_disk, chunk_files
from testkit.process import wait_until


def bytes_on_disk(cache_dir: Path) -> int:
    return chunk_bytes_on_disk(cache_dir / "chunks")


@pytest.fixture
def store(tmp_path):
    storage = Storage(tmp_path / "cache")
    s = ChunkStore(storage, max_size=1 << 30)
    yield s
    storage.close()


def test_put_get_round_trip_and_layout(store, tmp_path):
    data = os.urandom(5000)
    digest = store.put(data)
    assert digest == digest_of(data) and len(digest) == 16
    h = digest.hex()
    assert (tmp_path / "cache" / "chunks" / h[:2] / h[2:4] / h).read_bytes() == data
    store.verified.clear()
    assert store.get(digest, len(data)) == data


def test_identical_content_is_stored_once(store, tmp_path):
    data = os.urandom(10000)
    a = store.put(data, manifest=(b"o1\0a.flac", 10000, 1, 0))
    b = store.put(data, manifest=(b"o2\0b.flac", 10000, 2, 0))
    assert a == b
    assert len(chunk_files(tmp_path / "cache" / "chunks")) == 1
    assert store.total() == 10000
    assert store.manifest(b"o1\0a.flac", 10000, 1) == [a]
    assert store.manifest(b"o2\0b.flac", 10000, 2) == [a]


def test_index_total_equals_bytes_on_disk_after_put_and_evict_sequences(tmp_path):
    storage = Storage(tmp_path / "cache")
    store = ChunkStore(storage, max_size=100_000)
    sizes = [7000, 13000, 1, 25000, 9999, 31000, 4096, 20000, 17000, 8000] * 3
    for i, size in enumerate(sizes):
        store.put(os.urandom(size))
        assert store.total() == bytes_on_disk(tmp_path / "cache"), f"after put {i}"
        assert store.total() <= 100_000
    store.evict(target=0)
    assert store.total() == 0 == bytes_on_disk(tmp_path / "cache")
    storage.close()


def test_eviction_is_lru_and_skips_pinned(tmp_path):
    storage = Storage(tmp_path / "cache")
    store = ChunkStore(storage, max_size=10 * 1000)
    chunks = [store.put(bytes([i]) * 1000) for i in range(8)]
    store.verified.clear()
    store.get(chunks[0], 1000)          # chunk 0 becomes the most recently used
    store.flush_access_times()
    with store.held([chunks[1]]):     # chunk 1 is in use by a read
        store.evict(target=5000)
    remaining = {d for d in chunks if store.contains(d) is not None}
    assert chunks[0] in remaining and chunks[1] in remaining
    assert chunks[2] not in remaining and chunks[3] not in remaining and chunks[4] not in remaining
    assert chunks[7] in remaining
    assert store.total() == bytes_on_disk(tmp_path / "cache") == 5000
    storage.close()


def test_corrupt_chunk_is_dropped_not_served(store, tmp_path):
    data = os.urandom(3000)
    digest = store.put(data)
    store.verified.clear()
    path = Path(os.fsdecode(store.path_of(digest)))
    path.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])   # (b"X" was the same byte 1 time in 256)
    with pytest.raises(ChunkCorrupt):
        store.get(digest, len(data))
    assert store.contains(digest) is None and not path.exists()
    assert store.total() == 0


def test_truncated_and_missing_chunks(store):
    a, b = os.urandom(3000), os.urandom(4000)
    da, db = store.put(a), store.put(b)
    store.verified.clear()
    Path(os.fsdecode(store.path_of(da))).write_bytes(a[:100])
    os.unlink(store.path_of(db))
    with pytest.raises(ChunkCorrupt):
        store.get(da, 3000)
    with pytest.raises(ChunkMissing):
        store.get(db, 4000)
    assert store.total() == 0


def test_manifest_of_a_changed_file_is_empty(store):
    digest = store.put(b"a" * 100, manifest=(b"o\0f", 100, 5, 0))
    assert store.manifest(b"o\0f", 100, 5) == [digest]
    assert store.manifest(b"o\0f", 100, 6) == [None]      # mtime changed
    assert store.manifest(b"o\0f", 101, 5) == [None]      # size changed


def test_recovery_removes_temp_orphan_and_dangling(tmp_path):
    cache = tmp_path / "cache"
    storage = Storage(cache)
    store = ChunkStore(storage, max_size=1 << 30)
    keep = store.put(os.urandom(2000))
    gone = store.put(os.urandom(3000))
    storage.close()
    (cache / "chunks" / ".tmp" / "123.1.1").write_bytes(b"half a chunk")
    orphan = bytes(range(16))
    orphan_path = cache / "chunks" / orphan.hex()[:2] / orphan.hex()[2:4] / orphan.hex()
    orphan_path.parent.mkdir(parents=True, exist_ok=True)
    orphan_path.write_bytes(b"nobody knows me")
    os.unlink(os.fsdecode(store.path_of(gone)))

    storage = Storage(cache)
    report = recover(storage)
    kinds = sorted(f.invariant for f in report.findings)
    assert kinds == ["dangling-record", "orphan-file", "temp-file"]
    store = ChunkStore(storage, max_size=1 << 30)
    assert store.total() == 2000 == bytes_on_disk(cache)
    assert store.contains(keep) == 2000 and store.contains(gone) is None
    assert not orphan_path.exists() and not list((cache / "chunks" / ".tmp").iterdir())
    assert CacheChecker(storage, repair=False).run(digests=True).consistent
    storage.close()


def test_total_drift_is_found_and_repaired(tmp_path):
    storage = Storage(tmp_path / "cache")
    store = ChunkStore(storage, max_size=1 << 30)
    store.put(os.urandom(1234))
    with storage.begin(write=True) as txn:
        storage.put_u64(txn, b"total", 999_999)
    report = CacheChecker(storage, repair=False).run(digests=True)
    assert [f.invariant for f in report.findings] == ["total-drift"]
    CacheChecker(storage, repair=True).run(digests=True)
    assert store.total() == 1234
    assert CacheChecker(storage, repair=False).run(digests=True).consistent
    storage.close()


def test_unreadable_index_is_rebuilt_not_a_crash(tmp_path):
    cache = tmp_path / "cache"
    storage = Storage(cache)
    ChunkStore(storage, max_size=1 << 30).put(os.urandom(100))
    storage.close()
    (cache / "index.lmdb" / "data.mdb").write_bytes(b"this is not an LMDB file" * 1000)
    storage = Storage(cache)
    assert storage.rebuilt
    store = ChunkStore(storage, max_size=1 << 30)
    assert store.total() == 0 == bytes_on_disk(cache)
    assert list(cache.glob("index.lmdb.broken-*"))
    storage.close()


def test_other_format_version_is_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    storage = Storage(cache)
    with storage.begin(write=True) as txn:
        txn.put(b"format", b"999", db=storage.meta)
    storage.close()
    storage = Storage(cache)
    assert storage.rebuilt
    with storage.begin() as txn:
        assert txn.get(b"format", db=storage.meta) == str(FORMAT_VERSION).encode()
    storage.close()


def slow_link_service(tmp_path, files: dict, *, span: int, per_chunk: float, **overrides):
    """A Service over a local origin that reads ahead in spans of `span` chunks, each chunk
    arriving `per_chunk` seconds after the one before (a slow link); (service, origin), where
    origin.delivered counts the chunks that came."""
    from musicfs.origins.local import LocalOrigin
    from musicfs.daemon.service import Service

    from tests.conftest import make_config

    class SlowLink(LocalOrigin):
        readahead_chunks = span_chunks = span
        delivered = 0

        def read_pieces(self, relpath, offset, lengths, expect=None):
            for piece in super().read_pieces(relpath, offset, lengths, expect):
                time.sleep(per_chunk)   # the link's speed, not a synchronisation
                self.delivered += 1
                yield piece

    (tmp_path / "o").mkdir()
    for name, data in files.items():
        (tmp_path / "o" / name).write_bytes(data)
    origin = SlowLink("o", tmp_path / "o")
    service = Service.open(make_config(tmp_path, [("o", tmp_path / "o")], **overrides), origins={"o": origin})
    service.initial_scan()
    return service, origin


def test_a_span_slower_in_all_than_the_read_timeout_is_not_a_timeout(tmp_path):
    """A span of chunks fetched in one request on a slow link may take longer in all than the
    read timeout; as long as each chunk comes within it after the one before, no read fails."""
    chunk, piece = 1 << 20, 128 << 10
    data = os.urandom(16 * chunk)
    # the read timeout is 1 s: an 8-chunk span takes 2.4 s
    service, _ = slow_link_service(tmp_path, {"f.flac": data, "g.flac": data}, span=8, per_chunk=0.3,
                                   fuse={"read_timeout": 1})
    try:
        assert b"".join(service.reader.read_path(b"/f.flac", off, piece)
                        for off in range(0, len(data), piece)) == data
        # A reader skipping far ahead into a span still arriving waits for its chunk no longer
        # than a read may; that is the link's slowness, not the origin failing.
        for off in range(0, 4 * chunk, piece):     # starts the span of chunks 8-15
            service.reader.read_path(b"/g.flac", off, piece)
        with pytest.raises(ReadTimeout, match="too slowly"):
            service.reader.read_path(b"/g.flac", 15 * chunk, piece)
        assert service.health.status["o"].state == "healthy"
        # The kernel then asks again page by page: those reads do not each wait anew.
        started = time.monotonic()
        with pytest.raises(ReadTimeout):
            service.reader.read_path(b"/g.flac", 15 * chunk, 4096)
        assert time.monotonic() - started < 0.2
    finally:
        service.stop()


def test_a_span_nobody_reads_any_more_stops(tmp_path):
    """A reader that went away (or paused) leaves no long span holding the origin's worker: the
    span stops once the file has not been read for a while, and a read coming back asks for
    the rest on its own."""
    chunk, piece = 1 << 20, 128 << 10
    data = os.urandom(24 * chunk)
    service, origin = slow_link_service(tmp_path, {"f.flac": data}, span=16, per_chunk=0.2)
    try:
        service.reader.fetcher.readahead_idle = 0.5
        for offset in range(0, 3 * chunk, piece):      # starts a span of chunks 4-15, then stops
            assert service.reader.read_path(b"/f.flac", offset, piece) == data[offset:offset + piece]
        wait_until(lambda: service.pool.busy("o") == 0, timeout=5, message="the span to stop")
        assert origin.delivered < 4 + 12       # its chunks 4-15 did not all come
        assert service.reader.read_path(b"/f.flac", 3 * chunk, len(data)) == data[3 * chunk:]
    finally:
        service.stop()


def test_sequential_read_of_a_cached_file_loads_the_next_chunks_in_background(tmp_path, service_factory):
    from musicfs.pool import CACHE_DISK, PRELOAD_LANE
    from musicfs.read import READAHEAD_CHUNKS
    chunk = 1 << 20
    data = os.urandom(5 * chunk)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "f.flac").write_bytes(data)
    service = service_factory([("o", tmp_path / "o")], faulty={"o"})
    service.initial_scan()
    reader, store = service.reader, service.store
    piece = 128 << 10  # the kernel's request size
    first_pass = b"".join(reader.read_path(b"/f.flac", off, piece) for off in range(0, len(data), piece))
    assert first_pass == data   # fetched and cached
    wait_until(lambda: service.pool.busy("o") == 0)   # the first pass's read-ahead fetches
    digests = store.manifest(b"o\0f.flac", len(data), (tmp_path / "o" / "f.flac").stat().st_mtime_ns)
    assert None not in digests
    # An earlier reading of the cached file, start to end...
    assert b"".join(reader.read_path(b"/f.flac", off, piece) for off in range(0, len(data), piece)) == data
    wait_until(lambda: service.pool.busy(CACHE_DISK, PRELOAD_LANE) == 0)
    store.verified.clear()    # ...then memory reclaimed; the reader's per-file state is kept
    origin_reads = service.origins["o"].calls["read"]

    assert reader.read_path(b"/f.flac", 0, 4096) == data[:4096]
    # A first read alone may be all there is (a tag scanner's): nothing is loaded ahead of it...
    assert service.pool.busy(CACHE_DISK, PRELOAD_LANE) == 0 and store.verified.get(digests[1]) is None
    assert reader.read_path(b"/f.flac", 4096, 4096) == data[4096:8192]
    ahead = digests[1:1 + READAHEAD_CHUNKS]
    # ...once a read continues it, the next chunks come off the cache disk into memory without
    # anyone reading them...
    wait_until(lambda: all(store.verified.get(d) is not None for d in ahead))
    # ...and no further than the read-ahead, and never from the origin.
    assert store.verified.get(digests[1 + READAHEAD_CHUNKS]) is None
    assert service.origins["o"].calls["read"] == origin_reads
    assert reader.read_path(b"/f.flac", chunk, 4096) == data[chunk:chunk + 4096]
