"""A local origin, an SFTP origin and an S3 origin holding replicas of the same files: reads fail
over between them when one goes away, and go back when it returns."""
import shutil

import pytest

from musicfs import config as config_module
from musicfs.health import HEALTHY
from musicfs.service import Service

from .helpers import FIXTURES, wait_until

pytestmark = [pytest.mark.mount, pytest.mark.slow]


def test_failover_between_sftp_s3_and_local_replicas(tmp_path, sshd, moto, in_process_mount):
    files = tmp_path / "files"
    shutil.copytree(FIXTURES / "origin-a", files)
    remote = tmp_path / "remote"
    shutil.copytree(files, remote)
    moto.client().create_bucket(Bucket="music")
    moto.upload("music", "", files)
    local = tmp_path / "local"
    shutil.copytree(files, local)
    document = {"cache": {"dir": str(tmp_path / "cache")}, "log": {"file": str(tmp_path / "musicfs.log")},
                "layout": {"mode": "paths"}, "health": {"interval": 0.5, "timeout": 2},
                "origins": [sshd.origin_table("ssh", remote), moto.origin_table("bucket", "music"),
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
    moto.stop()                                   # and S3 too: the local disk serves
    assert_all_read()
    sshd.start()                                  # the first origin returns and is used again:
    wait_until(lambda: service.health.status["ssh"].state == HEALTHY, timeout=15, interval=0.2,
               message="the SSH origin to be healthy again")
    local.rename(tmp_path / "local-away")         # with the local disk gone too, only SSH can serve
    assert_all_read()
