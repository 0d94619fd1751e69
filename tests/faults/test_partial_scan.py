"""One folder that cannot be listed (a real FUSE origin answering EIO) hides nothing else."""
import os

import pytest

from testkit.process import wait_until
from tests.support.mounts import TAGS, Daemon, run_musicfs

pytestmark = [pytest.mark.mount, pytest.mark.slow]


def fill(root, files):
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def shown_files(mountpoint):
    found = set()
    for directory, _, names in os.walk(mountpoint):
        for name in names:
            found.add(os.path.relpath(os.path.join(directory, name), mountpoint))
    return found


LIBRARY = {"A/one.flac": b"1" * 5000, "B/two.flac": b"2" * 5000, "B/deep/three.flac": b"3" * 5000,
           "C/four.flac": b"4" * 5000}


def test_unreadable_folder_at_first_scan_hides_only_itself(tmp_path, hung_origin):
    nas = hung_origin().start()
    fill(nas.backing, LIBRARY)
    nas.fail_with_eio("B")
    daemon = Daemon(tmp_path, [("nas", nas.path)])
    try:
        daemon.mount()
        assert shown_files(daemon.mountpoint) == {"A/one.flac", "C/four.flac"}
        assert (daemon.path("A/one.flac")).read_bytes() == LIBRARY["A/one.flac"]
        log = daemon.log()
        assert "cannot list B (Input/output error)" in log
        assert "incomplete" not in log
        # the cron probe reports it, from the daemon's own scan
        probe = run_musicfs("health", daemon.mountpoint)
        assert probe.returncode == 1, probe.stdout
        assert "B: Input/output error" in probe.stdout.splitlines()[0]
    finally:
        daemon.stop()

    # once the folder can be read again, the next mount's rescan lists it
    nas.fail_with_eio()
    try:
        daemon.mount()
        wait_until(lambda: shown_files(daemon.mountpoint) == set(LIBRARY), timeout=20,
                   message="the rescan after mount to list B")
    finally:
        daemon.stop()


def test_unreadable_folder_at_rescan_keeps_its_entries_and_updates_the_rest(tmp_path, hung_origin, service_factory,
                                                                            caplog):
    nas = hung_origin().start()
    fill(nas.backing, LIBRARY)
    service = service_factory([("nas", nas.path)])
    result, = service.scanner.scan()
    assert result.complete and result.entries == 8   # 4 folders, 4 files

    nas.fail_with_eio("B")
    (nas.backing / "A/one.flac").unlink()
    (nas.backing / "C/five.flac").write_bytes(b"5" * 100)
    result, = service.scanner.scan()

    assert result.complete, result.error
    assert [path for path, _ in result.unreadable] == [b"B"]
    catalog = service.catalog
    assert catalog.lookup(b"/A/one.flac") is None                 # removed: A was listed
    assert catalog.lookup(b"/C/five.flac") is not None            # added: C was listed
    assert catalog.lookup(b"/B/two.flac") is not None             # kept: B could not be listed
    assert catalog.lookup(b"/B/deep/three.flac") is not None
    assert "origin nas: cannot list B (Input/output error)" in caplog.text
    assert service.scanner.last_results["nas"].as_status().unreadable == ("B: Input/output error",)


def test_a_remote_origin_gone_while_tags_are_read_leaves_its_files_to_read_again_not_junk(
        tmp_path, library, service_factory):
    """An S3 or SFTP server that goes away after the listing fails the tag reads with
    OriginTransient (not an OSError): that says nothing about the files. They were recorded as
    "not audio" for good (hidden, never read again); now the scan is incomplete and the next one
    reads them."""
    for n in range(3):
        library("nas", f"{n}.flac", {"artist": "A", "album": "B", "title": f"T{n}"})
    service = service_factory([("nas", tmp_path / "nas")], faulty={"nas"}, **TAGS)
    origin = service.origins["nas"]
    origin.fail(only={"read"}, remote=True)
    result, = service.scanner.scan()
    assert not result.complete and "connection refused" in result.error
    assert service.catalog.unplaced()[0] == 0           # nothing taken for junk
    origin.healthy()
    result, = service.scanner.scan()
    assert result.complete and result.tags_read == 3
    assert service.catalog.unplaced()[0] == 0
    assert all(service.catalog.lookup(f"/A/B/T{n}.flac".encode()) is not None for n in range(3))
