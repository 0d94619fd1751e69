"""The sftp origin against a real OpenSSH server on loopback (testkit.servers.SshServer)."""
import errno
import os
import shutil
import signal
import time

import paramiko
import pytest

from musicfs import config as config_module
from musicfs.errors import OriginChanged, OriginMisconfigured, OriginTransient
from musicfs.origins import build
from musicfs.origins.sftp import _translate
from musicfs.daemon.service import Service

from testkit.configs import origin_toml, toml_config
from testkit.process import wait_until
from tests.support.audio import FIXTURES
from tests.support.mounts import Daemon, is_mounted, read_outcome, run_musicfs
from tests.support.origins import BadServer

pytestmark = [pytest.mark.mount, pytest.mark.slow]

MiB = 1 << 20


def sftp_config(tmp_path, sshd, remote, layout="paths", **sections):
    document = {"cache": {"dir": str(tmp_path / "cache")}, "log": {"file": str(tmp_path / "musicfs.log")},
                "layout": {"mode": layout}, "origins": [sshd.origin_table("ssh", remote)]}
    document.update(sections)
    return config_module.parse(document)


@pytest.fixture
def remote_library(tmp_path):
    remote = tmp_path / "remote"
    shutil.copytree(FIXTURES / "origin-a", remote)
    big = os.urandom(3 * MiB + 4321)
    (remote / "big.flac").write_bytes(big)
    return remote, big


@pytest.fixture
def sftp_mount(tmp_path, sshd, remote_library, in_process_mount):
    services = []

    def make(layout="paths", **sections):
        service = Service.open(sftp_config(tmp_path, sshd, remote_library[0], layout, **sections))
        services.append(service)
        service.initial_scan()
        mount = in_process_mount(service)
        assert service.rescanned.wait(30), "the first background rescan did not finish"
        return service, mount
    yield make


def test_byte_exact_reads_and_ranges_over_sftp(sftp_mount, remote_library):
    remote, big = remote_library
    service, mount = sftp_mount()
    for path in remote.rglob("*"):
        if path.is_file():
            assert (mount.mountpoint / path.relative_to(remote)).read_bytes() == path.read_bytes(), path
    with open(mount.mountpoint / "big.flac", "rb", buffering=0) as f:
        f.seek(MiB + 17)
        assert f.read(100_000) == big[MiB + 17:MiB + 17 + 100_000]


def test_reads_use_the_request_size_the_server_states(tmp_path, sshd, remote_library):
    """OpenSSH's sftp-server states how much one read may ask (limits@openssh.com): reads use
    that, not paramiko's 32 KiB, and still come back byte-exact, whole and in pieces; the
    cipher is the cheaper AES-GCM the server offers."""
    remote, big = remote_library
    origin = build(sftp_config(tmp_path, sshd, remote).origins[0])
    try:
        assert origin.read(b"big.flac", 0, 2 * MiB) == big[:2 * MiB]
        with origin._session(10) as client:
            stated = client.musicfs_read_request
        assert 32 * 1024 < stated <= MiB, stated
        # AES-GCM, offered by OpenSSH, is taken over paramiko's default CTR + separate MAC
        assert origin._transport.remote_cipher == origin._transport.local_cipher == "aes128-gcm@openssh.com"
        assert origin.read(b"big.flac", 3 * MiB, len(big) - 3 * MiB) == big[3 * MiB:]
        assert origin.read(b"big.flac", 12345, stated + 1) == big[12345:12345 + stated + 1]
    finally:
        origin.close()


def test_ranged_reads_are_whole_however_the_server_splits_its_answers(tmp_path, sshd, remote_library):
    """A read's requests go out at once; an answer shorter than asked (the server caps each at
    its own limit) is completed, one past the end is just shorter, and a file that changed
    under the read is reported, never returned as the catalogued version."""
    remote, big = remote_library
    origin = build(sftp_config(tmp_path, sshd, remote).origins[0])
    try:
        with origin._session(10) as client:
            client.musicfs_read_request = 2 * MiB     # more than OpenSSH answers in one go
        assert origin.read(b"big.flac", 5, 3 * MiB) == big[5:5 + 3 * MiB]
        assert origin.read(b"big.flac", len(big) - 10, 100) == big[-10:]
        assert origin.read(b"big.flac", len(big) + 5, 100) == b""
        catalogued = origin.stat(b"big.flac")
        assert origin.read(b"big.flac", 0, 1000, catalogued) == big[:1000]
        with open(remote / "big.flac", "r+b") as f:
            f.truncate(MiB)
        os.utime(remote / "big.flac", (catalogued.mtime_ns // 10**9 + 7,) * 2)
        with pytest.raises(OriginChanged):
            origin.read(b"big.flac", 0, 2 * MiB, catalogued)
    finally:
        origin.close()


def test_a_session_opens_a_file_once_and_sees_it_renamed_over(tmp_path, sshd, remote_library):
    """A version-checked read leaves the file open in its session: the next chunks of it cost
    no OPEN. A file renamed over the one held open (a retag) is still seen as changed, and read
    as the new version once catalogued, never from the old handle."""
    from paramiko.sftp import CMD_OPEN
    remote, big = remote_library
    origin = build(sftp_config(tmp_path, sshd, remote).origins[0])
    try:
        catalogued = origin.stat(b"big.flac")
        opens = []
        with origin._session(10) as client:
            request = client._request
            client._request = lambda kind, *args: (opens.append(kind) if kind == CMD_OPEN else None,
                                                   request(kind, *args))[1]
        for index in range(3):
            assert origin.read(b"big.flac", index * MiB, MiB, catalogued) == big[index * MiB:(index + 1) * MiB]
        assert opens == [CMD_OPEN], "one OPEN for three chunks of one file"
        new = os.urandom(len(big))
        (remote / "big.tmp").write_bytes(new)
        os.utime(remote / "big.tmp", (catalogued.mtime_ns // 10**9 + 7,) * 2)
        os.replace(remote / "big.tmp", remote / "big.flac")
        with pytest.raises(OriginChanged):
            origin.read(b"big.flac", 0, MiB, catalogued)
        assert origin.read(b"big.flac", 0, MiB, origin.stat(b"big.flac")) == new[:MiB]
    finally:
        origin.close()


def first_chunk_cached(service, path: bytes) -> bool:
    source = service.reader.sources_of(service.catalog.lookup(path))[0]
    return service.store.manifest(source.key, source.size, source.mtime_ns)[0] is not None


def test_reading_an_uncached_file_fetches_the_next_files_of_its_folder(tmp_path, sshd, remote_library,
                                                                         in_process_mount):
    """A scanner or a player going through a folder finds the next files' first chunks fetched
    or on their way (four after an uncached one), instead of paying their round trips in turn;
    reading a file fetched that way carries the prefetch on."""
    remote, _ = remote_library
    (remote / "Album").mkdir()
    tracks = {f"{n:02} Track.flac": os.urandom(5000 + n) for n in range(1, 8)}
    for name, data in tracks.items():
        (remote / "Album" / name).write_bytes(data)
    service = Service.open(sftp_config(tmp_path, sshd, remote))
    service.initial_scan()
    mount = in_process_mount(service)
    shown = [f"/Album/{name}".encode() for name in tracks]
    assert (mount.mountpoint / "Album" / "01 Track.flac").read_bytes() == tracks["01 Track.flac"]
    wait_until(lambda: all(first_chunk_cached(service, path) for path in shown[1:5]), message="tracks 2-5 fetched")
    assert not first_chunk_cached(service, shown[5]) and not first_chunk_cached(service, shown[6])
    assert (mount.mountpoint / "Album" / "02 Track.flac").read_bytes() == tracks["02 Track.flac"]
    wait_until(lambda: first_chunk_cached(service, shown[5]), message="track 6 fetched")
    assert not first_chunk_cached(service, shown[6])
    for name, data in tracks.items():
        assert (mount.mountpoint / "Album" / name).read_bytes() == data


def test_a_header_read_fetches_only_the_chunk_it_reads(sftp_mount, remote_library):
    """A tag scanner reads a few KiB of each file: nothing is read ahead of a file's first read,
    only once a read continues it (a player, a copy)."""
    remote, big = remote_library
    service, mount = sftp_mount()
    with open(mount.mountpoint / "big.flac", "rb", buffering=0) as f:
        assert f.read(4096) == big[:4096]
    source = service.reader.sources_of(service.catalog.lookup(b"/big.flac"))[0]
    assert not [key for key in service.reader.fetcher.in_flight() if key[0] == source.version]
    digests = service.store.manifest(source.key, source.size, source.mtime_ns)
    assert digests[0] is not None and digests[1:] == [None] * (len(digests) - 1)
    assert (mount.mountpoint / "big.flac").read_bytes() == big
    # each chunk a read waits for is stored before the read returns
    assert None not in service.store.manifest(source.key, source.size, source.mtime_ns)


def test_tag_view_from_remote_tags(sftp_mount):
    service, mount = sftp_mount("tags")
    assert sorted(os.listdir(mount.mountpoint / "Test Pattern" / "Signals (2019)")) == [
        "01 Sine 440.flac", "02 Sine 880.flac", "03 AC_DC.mp3"]
    with service.storage.begin() as txn:      # read from the server: 5 fixtures and big.flac
        assert txn.stat(service.storage.tags)["entries"] == 6


def test_rescans_see_added_changed_and_removed_files(sftp_mount, remote_library):
    remote, _ = remote_library
    service, mount = sftp_mount()
    (remote / "new.flac").write_bytes(b"new" * 1000)
    (remote / "big.flac").unlink()
    os.utime(remote / "Test Pattern/Signals/01 Sine 440.flac", (1, 1))
    result, = service.scanner.scan()   # (or the mount's first background rescan, if still running)
    assert result.complete, result.error
    assert service.catalog.lookup(b"/new.flac") is not None and service.catalog.lookup(b"/big.flac") is None
    assert service.catalog.lookup(b"/Test Pattern/Signals/01 Sine 440.flac").mtime_ns == 1_000_000_000
    assert (mount.mountpoint / "new.flac").read_bytes() == b"new" * 1000
    assert not (mount.mountpoint / "big.flac").exists()


def test_a_file_changed_between_scan_and_read_is_never_mixed(sftp_mount, remote_library):
    remote, big = remote_library
    service, mount = sftp_mount()
    new = os.urandom(len(big) + 10)
    (remote / "big.tmp").write_bytes(new)
    os.replace(remote / "big.tmp", remote / "big.flac")
    os.utime(remote / "big.flac", (time.time() + 5, time.time() + 5))   # SFTP mtimes are whole seconds
    assert read_outcome(mount.mountpoint / "big.flac") in (big, new, errno.EIO)
    assert (mount.mountpoint / "big.flac").read_bytes() == new


def test_sshd_killed_mid_read_fails_within_the_timeout_and_recovers(sftp_mount, sshd, remote_library):
    remote, big = remote_library
    service, mount = sftp_mount(health={"interval": 0.5, "timeout": 2})
    sshd.stop()
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        (mount.mountpoint / "big.flac").read_bytes()
    assert info.value.errno == errno.EIO
    assert time.monotonic() - started < 5 + 2
    sshd.start()     # the same port and keys: the NAS is back
    wait_until(lambda: read_outcome(mount.mountpoint / "big.flac") == big, timeout=20, interval=0.5,
               message="reads to work again once sshd is back")


def test_a_server_that_stops_answering_is_bounded_by_the_timeout(sftp_mount, sshd, remote_library):
    remote, big = remote_library
    service, mount = sftp_mount(health={"interval": 60})
    assert (mount.mountpoint / "Test Pattern/Signals/02 Sine 880.flac").read_bytes()
    sessions = sshd.sessions()
    assert sessions, "no sshd session process found"
    for pid in sessions:
        os.kill(pid, signal.SIGSTOP)    # the peer stops answering; the TCP connection stays up
    try:
        started = time.monotonic()
        # the stuck connection is given up after one attempt (a little under half of `timeout`,
        # 5 s) and the retry, on a new connection, serves the read
        assert read_outcome(mount.mountpoint / "big.flac") == big
        assert time.monotonic() - started < 5 + 1
        assert service.pool.busy("ssh") <= service.config.health.workers_per_origin
    finally:
        for pid in sessions:
            os.kill(pid, signal.SIGCONT)


def test_wrong_host_key_is_a_clear_error_never_accepted(tmp_path, sshd, remote_library):
    remote, _ = remote_library
    wrong = tmp_path / "wrong_known_hosts"
    other = tmp_path / "other"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {other}")
    wrong.write_text(f"[127.0.0.1]:{sshd.port} " + " ".join((tmp_path / "other.pub").read_text().split()[:2]) + "\n")
    table = {**sshd.origin_table("ssh", remote), "known_hosts": str(wrong)}
    origin = build(config_module.parse({"origins": [table]}).origins[0])
    with pytest.raises(OriginMisconfigured, match="CHANGED"):
        origin.check()
    table["known_hosts"] = str(tmp_path / "no_known_hosts")
    origin = build(config_module.parse({"origins": [table]}).origins[0])
    with pytest.raises(OriginMisconfigured, match=r"is unknown: .*/no_known_hosts does not exist; check it and add it"):
        origin.check()
    (tmp_path / "empty_known_hosts").write_text("")
    table["known_hosts"] = str(tmp_path / "empty_known_hosts")
    origin = build(config_module.parse({"origins": [table]}).origins[0])
    with pytest.raises(OriginMisconfigured, match=r"is unknown: it is not in .*/empty_known_hosts; check it"):
        origin.check()

    # on a first mount it is one line and no mount
    daemon = Daemon(tmp_path, [])
    daemon.config.write_text(toml_config([], daemon.cache_dir, daemon.log_file) + origin_toml(table))
    result = run_musicfs(daemon.mountpoint, "-c", daemon.config)
    assert result.returncode == 1 and "is not in" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not is_mounted(daemon.mountpoint)


def test_wrong_user_key_is_a_clear_error(tmp_path, sshd, remote_library):
    other = tmp_path / "stranger"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {other}")
    table = {**sshd.origin_table("ssh", remote_library[0]), "key_file": str(other)}
    origin = build(config_module.parse({"origins": [table]}).origins[0])
    with pytest.raises(OriginMisconfigured, match="no key was accepted|authentication failed"):
        origin.check()


def test_sftp_config_errors_name_the_key():
    with pytest.raises(config_module.ConfigError, match=r"origins\[0\]\.hots: unknown key for an sftp origin"):
        config_module.parse({"origins": [{"type": "sftp", "hots": "x", "path": "/m"}]})
    with pytest.raises(config_module.ConfigError, match=r"origins\[0\]\.host: missing"):
        config_module.parse({"origins": [{"type": "sftp", "path": "/m"}]})
    with pytest.raises(config_module.ConfigError, match="secrets never go in the config file"):
        config_module.parse({"origins": [{"type": "sftp", "host": "h", "path": "/m", "password": "x"}]})


def test_a_server_restart_does_not_fail_the_next_read(sftp_mount, sshd, remote_library):
    remote, big = remote_library
    service, mount = sftp_mount(health={"interval": 3600})
    for name in ("01 Sine 440.flac", "02 Sine 880.flac", "03 AC-DC.mp3"):   # several pooled sessions
        (mount.mountpoint / "Test Pattern/Signals" / name).read_bytes()
    sshd.stop()
    sshd.start()          # back at once, same port and keys: every pooled session is dead
    assert (mount.mountpoint / "big.flac").read_bytes() == big


def test_key_file_problems_are_named(tmp_path, sshd, remote_library):
    table = {**sshd.origin_table("ssh", remote_library[0]), "key_file": str(tmp_path / "no-such-key")}
    with pytest.raises(OriginMisconfigured, match="key_file .*no-such-key cannot be used"):
        build(config_module.parse({"origins": [table]}).origins[0]).check()
    protected = tmp_path / "protected"
    os.system(f"ssh-keygen -q -t ed25519 -N 'secret words' -f {protected}")
    table["key_file"] = str(protected)
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    os.environ.pop("SSH_AUTH_SOCK", None)
    try:
        with pytest.raises(OriginMisconfigured, match="protected by a passphrase: load it into ssh-agent"):
            build(config_module.parse({"origins": [table]}).origins[0]).check()
    finally:
        os.environ.clear()
        os.environ.update(env)


@pytest.mark.parametrize("hold", [False, True], ids=["drops-connections", "never-answers"])
def test_reconnects_are_retried_within_the_timeout(tmp_path, sshd, hold):
    """A server that drops every connection is tried three times; one that never sends its
    banner twice (an attempt is a little under half the timeout), all within `timeout`."""
    server = BadServer(hold=hold)
    try:
        table = {**sshd.origin_table("ssh", tmp_path), "port": server.port, "timeout": 3}
        origin = build(config_module.parse({"origins": [table]}).origins[0])
        started = time.monotonic()
        with pytest.raises(OriginTransient):
            origin.check()
        assert time.monotonic() - started < 3 + 0.5
        assert server.accepted == (2 if hold else 3)
    finally:
        server.stop()


def test_paramiko_errors_without_words_are_named():
    """paramiko raises some failures with an empty message ("Server connection dropped: ",
    "No existing session"): the error says what happened."""
    for error in (EOFError(), paramiko.SSHException("No existing session"),
                  paramiko.SSHException("Server connection dropped: ")):
        translated = _translate(error, "nas:22", 4.5)
        assert isinstance(translated, OriginTransient)
        assert str(translated) in ("nas:22: the connection to the server was lost", "nas:22: Server connection dropped")
