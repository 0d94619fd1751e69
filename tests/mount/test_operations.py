"""Living with a mount: `musicfs status`, `rescan` (and SIGUSR1), `pin`, SIGHUP reload, stable
inode numbers. Every test runs the real commands against a real daemonized mount."""
import json
import os
import shutil
import signal

import pytest

from testkit.configs import toml_config
from testkit.library import make_library
from testkit.process import wait_until
from tests.support.mounts import Daemon, is_mounted, read_file, read_outcome, run_musicfs

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

KIB = 1024


@pytest.fixture
def daemons():
    started = []

    def start(tmp, origins, **sections) -> Daemon:
        daemon = Daemon(tmp, origins, **sections)
        started.append(daemon)
        return daemon.mount()

    yield start
    for daemon in started:
        daemon.stop()


def status_json(*args) -> dict | list:
    result = run_musicfs("status", "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def status_file(daemon) -> dict:
    return status_json(daemon.mountpoint)


def test_status_of_a_mount_in_text_and_json(tmp_path, daemons):
    origin = tmp_path / "lib"
    make_library(origin, 6, 64 * KIB)
    daemon = daemons(tmp_path, [("nas", origin)], max_size="7M")
    read_file(daemon.path("Artist 0000/Album 00/01 Track.flac"))
    # The status file is refreshed about once a second.
    wait_until(lambda: status_file(daemon)["cache"]["bytes"] > 0, message="the read in the status")

    text = run_musicfs("status", daemon.mountpoint)
    assert text.returncode == 0, text.stderr
    assert f"PID {daemon.pid}" in text.stdout
    assert f"mounted at {daemon.mountpoint}" in text.stdout
    assert "nas" in text.stdout and "healthy" in text.stdout
    assert "of 7 MiB" in text.stdout   # the running daemon's limit, human

    with open(daemon.path("Artist 0000/Album 00/02 Track.flac"), "rb"):
        held = status_file(daemon)["open_files"]
    assert held["count"] == 1 and held["processes"][0]["pid"] == os.getpid(), held
    assert status_file(daemon)["open_files"]["count"] == 0

    report = status_file(daemon)
    assert report["pid"] == daemon.pid
    assert report["mountpoint"] == str(daemon.mountpoint)
    assert report["cache"]["max_bytes"] == 7 * 1024 * 1024
    assert report["uptime"] >= 0
    assert report["origins"]["nas"]["status"] == "healthy"
    assert report["layout"]["mode"] == "paths"


def test_status_of_files_names_origin_source_replicas_and_cached_bytes(tmp_path, daemons):
    first, second = tmp_path / "a", tmp_path / "b"
    for root in (first, second):
        make_library(root, 2, 300 * KIB)   # same paths and bytes in both: replicas
    daemon = daemons(tmp_path, [("a", first), ("b", second)], health={"interval": 0.3, "timeout": 2})
    read_path = daemon.path("Artist 0000/Album 00/01 Track.flac")
    read_file(read_path)
    unread = daemon.path("Artist 0000/Album 00/02 Track.flac")

    reports = status_json(read_path, unread)
    by_path = {r["path"]: r for r in reports}
    read_report, unread_report = by_path[str(read_path)], by_path[str(unread)]
    assert read_report["origin"] == "a"
    assert read_report["source"] == "Artist 0000/Album 00/01 Track.flac"
    assert read_report["cached"] == read_report["size"] == os.path.getsize(first / "Artist 0000/Album 00/01 Track.flac")
    assert [r["origin"] for r in read_report["replicas"]] == ["b"]
    assert unread_report["cached"] == 0

    # with the preferred origin down, reads are the replica's: so are the cached bytes shown
    first.rename(tmp_path / "a-away")
    wait_until(lambda: status_file(daemon)["origins"]["a"]["status"] == "unhealthy", message="origin a down")
    assert read_file(unread) == (second / "Artist 0000/Album 00/02 Track.flac").read_bytes()
    failed_over = status_json(unread)
    assert failed_over["origin"] == "b" and failed_over["cached"] == failed_over["size"]
    assert failed_over["replicas"] == [{"origin": "a", "source": "Artist 0000/Album 00/02 Track.flac",
                                        "state": "unhealthy", "cached": 0}]
    text = run_musicfs("status", read_path).stdout    # read from a before: a's chunks still serve it
    assert "  served by  b (healthy): Artist 0000/Album 00/01 Track.flac" in text, text
    assert "  cached     300.1 KiB of 300.1 KiB (100%)" in text, text
    assert "  replica    a (unhealthy): Artist 0000/Album 00/01 Track.flac, 300.1 KiB cached" in text, text

    missing = run_musicfs("status", daemon.path("no such file.flac"))
    assert missing.returncode == 1 and missing.stderr.strip() == f"musicfs: {daemon.path('no such file.flac')}: not in the library"
    outside = run_musicfs("status", "--json", tmp_path / "a", read_path)   # one bad path, one good
    assert outside.returncode == 1
    bad, good = json.loads(outside.stdout)
    assert bad["error"].endswith("is not inside a running musicfs mount") and good["origin"] == "b"


def test_rescan_prints_what_changed(tmp_path, daemons):
    origin = tmp_path / "lib"
    make_library(origin, 3, 16 * KIB)
    daemon = daemons(tmp_path, [("nas", origin)])
    (origin / "Artist 0000/Album 00/new.flac").write_bytes(b"x" * 100)
    (origin / "Artist 0000/Album 00/01 Track.flac").unlink()

    result = run_musicfs("rescan", daemon.mountpoint)
    assert result.returncode == 0, result.stderr
    # (the folder holding them changed too)
    assert result.stdout.startswith("nas: 1 added, ") and ", 1 removed; " in result.stdout, result.stdout
    assert "new.flac" in os.listdir(daemon.path("Artist 0000/Album 00"))
    assert "01 Track.flac" not in os.listdir(daemon.path("Artist 0000/Album 00"))
    assert "rescan" in daemon.log() and "1 added" in daemon.log()


def test_sigusr1_rescans_in_the_background(tmp_path, daemons):
    origin = tmp_path / "lib"
    make_library(origin, 2, 16 * KIB)
    daemon = daemons(tmp_path, [("nas", origin)])
    folder = daemon.path("Artist 0000/Album 00")
    (origin / "Artist 0000/Album 00/late.flac").write_bytes(b"y" * 100)
    assert "late.flac" not in os.listdir(folder)   # the default rescan interval is long

    os.kill(daemon.pid, signal.SIGUSR1)
    wait_until(lambda: "late.flac" in os.listdir(folder), timeout=20, message="the SIGUSR1 rescan")
    assert is_mounted(daemon.mountpoint)


def test_pinned_album_plays_with_every_origin_gone_and_survives_eviction(tmp_path, daemons):
    origin = tmp_path / "lib"
    make_library(origin, 16, 400 * KIB, per_album=4)   # albums of 4 x 400 KiB
    originals = {p.relative_to(origin): p.read_bytes() for p in origin.rglob("*.flac")}
    daemon = daemons(tmp_path, [("nas", origin)], max_size="3M")
    album = daemon.path("Artist 0000/Album 00")

    pinned = run_musicfs("pin", album)
    assert pinned.returncode == 0, pinned.stderr + pinned.stdout
    assert "pinned 4 files" in pinned.stdout

    # Other albums read through a 3 MiB cache evict whatever is not pinned.
    for other in ("Artist 0000/Album 01", "Artist 0000/Album 02"):
        for path in sorted(daemon.path(other).iterdir()):
            read_file(path)
    for report in status_json(*sorted(album.iterdir())):
        assert report["pinned"] and report["cached"] == report["size"], report
    album_bytes = sum(len(data) for rel, data in originals.items() if str(rel).startswith("Artist 0000/Album 00/"))
    wait_until(lambda: status_file(daemon)["cache"]["pinned_bytes"] == album_bytes, message="pinned bytes")
    assert status_file(daemon)["cache"]["bytes"] <= 3 * 1024 * 1024

    shutil.move(origin, tmp_path / "gone")   # every origin gone
    for path in sorted(album.iterdir()):
        assert read_file(path) == originals[path.relative_to(daemon.mountpoint)]
    uncached = daemon.path("Artist 0000/Album 03/01 Track.flac")   # never read
    assert read_outcome(uncached) in (5, 2)   # EIO (or ENOENT once the refresh saw it go)


def test_pin_reports_what_does_not_fit_and_pins_survive_a_restart(tmp_path, daemons):
    origin = tmp_path / "lib"
    make_library(origin, 8, 500 * KIB, per_album=8)
    daemon = daemons(tmp_path, [("nas", origin)], max_size="2M")
    album = daemon.path("Artist 0000/Album 00")

    result = run_musicfs("pin", "--json", album)
    assert result.returncode == 1   # not everything fitted
    report = json.loads(result.stdout)
    assert report["files"] == report["pinned_files"] == 3
    # The album's first tracks are the ones pinned.
    assert [path.rsplit("/", 1)[1] for path in report["not_fitting"]] == [f"0{n} Track.flac" for n in range(4, 9)]
    assert report["pinned_bytes"] <= report["pin_limit_bytes"] == int(2 * 1024 * 1024 * 0.9)
    pinned_before = report["pinned_bytes"]

    daemon.stop()
    daemon.mount()
    assert status_file(daemon)["cache"]["pinned_bytes"] == pinned_before
    verify = run_musicfs("cache", "verify", "-c", daemon.config)
    assert verify.returncode == 0, verify.stdout   # pins counted exactly (check_pins)

    released = run_musicfs("pin", "--unpin", "--json", album)
    assert released.returncode == 0, released.stderr
    assert json.loads(released.stdout)["released_bytes"] == pinned_before
    wait_until(lambda: status_file(daemon)["cache"]["pinned_bytes"] == 0, message="pins released")


def test_a_pinned_file_changed_on_its_origin_is_fetched_again_after_the_rescan(tmp_path, daemons):
    origin = tmp_path / "lib"
    make_library(origin, 2, 200 * KIB)
    daemon = daemons(tmp_path, [("nas", origin)])
    relative = "Artist 0000/Album 00/01 Track.flac"
    assert run_musicfs("pin", daemon.path(relative)).returncode == 0

    # A retag as tag editors do it: a new file renamed over the old one.
    new = os.urandom(300 * KIB)
    (origin / "retag.tmp").write_bytes(new)
    os.replace(origin / "retag.tmp", origin / relative)
    assert run_musicfs("rescan", daemon.mountpoint).returncode == 0

    def complete():
        report = status_json(daemon.path(relative))
        return report["pinned"] and report["size"] == len(new) and report["cached"] == len(new)
    wait_until(complete, timeout=30, message="the pinned file's new version in the cache")
    shutil.move(origin, tmp_path / "gone")
    assert read_file(daemon.path(relative)) == new


def test_a_pin_made_while_the_origin_was_down_completes_when_it_is_back(tmp_path, daemons):
    origin = tmp_path / "lib"
    make_library(origin, 2, 300 * KIB)
    daemon = daemons(tmp_path, [("nas", origin)], health={"interval": 0.3, "timeout": 2})
    relative = "Artist 0000/Album 00/01 Track.flac"
    expected = (origin / relative).read_bytes()
    away = tmp_path / "away"
    origin.rename(away)
    wait_until(lambda: status_file(daemon)["origins"]["nas"]["status"] == "unhealthy", message="origin down")

    result = run_musicfs("pin", daemon.path(relative))
    assert result.returncode == 1 and "not all cached yet" in result.stdout, result.stdout
    assert status_json(daemon.path(relative))["cached"] == 0

    away.rename(origin)   # back: the health loop sees it, and the pin is completed without a rescan
    wait_until(lambda: status_json(daemon.path(relative))["cached"] == len(expected), timeout=20,
               message="the pinned file fetched once its origin is back")
    origin.rename(away)
    assert read_file(daemon.path(relative)) == expected


def test_pin_outside_a_mount_is_one_clear_line(tmp_path):
    result = run_musicfs("pin", tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == f"musicfs: {tmp_path} is not inside a running musicfs mount"


def _library_and_extra(tmp_path):
    """Origin a: a small library; origin b: one more file, Other/extra.flac (1000 bytes of z)."""
    first, second = tmp_path / "a", tmp_path / "b"
    make_library(first, 2, 16 * KIB)
    (second / "Other").mkdir(parents=True)
    (second / "Other/extra.flac").write_bytes(b"z" * 1000)
    return first, second


def _reloads(daemon) -> int:
    return (status_file(daemon).get("reloads") or {}).get("count", 0)


def test_a_reload_swaps_the_read_settings_whole_and_leaves_those_a_read_took_unchanged(tmp_path, service_factory):
    from tests.conftest import make_config
    for name in ("a", "b"):
        make_library(tmp_path / name, 1, KIB)
    service = service_factory([("a", tmp_path / "a"), ("b", tmp_path / "b")], fuse={"read_timeout": 30})
    taken = service.reader.fetcher.settings       # what a read under way holds
    service.reload(make_config(tmp_path, [("a", tmp_path / "a")], fuse={"read_timeout": 7}), warn=print)
    assert set(taken.origins) == {"a", "b"} and taken.read_timeout == 30
    assert set(service.reader.origins) == {"a"} and service.reader.fetcher.settings.read_timeout == 7
    with pytest.raises(TypeError):
        service.reader.origins["b"] = taken.origins["b"]   # read-only: only a reload changes them


def test_sighup_reload_adds_an_origin_and_refuses_a_broken_config(tmp_path, daemons):
    first, second = _library_and_extra(tmp_path)
    daemon = daemons(tmp_path, [("a", first)])
    # (a listing, not a lookup: the kernel would remember "no such file" for negative_timeout)
    assert "Other" not in os.listdir(daemon.mountpoint)

    daemon.config.write_text(toml_config([("a", first), ("b", second)], daemon.cache_dir, daemon.log_file))
    os.kill(daemon.pid, signal.SIGHUP)
    wait_until(lambda: _reloads(daemon) == 1, timeout=30, message="the reload")
    assert status_file(daemon)["reloads"]["error"] is None
    assert read_file(daemon.path("Other/extra.flac")) == b"z" * 1000
    assert set(status_file(daemon)["origins"]) == {"a", "b"}
    assert "reload: origin b added (local)" in daemon.log()   # what changed: SIGHUP's only report

    daemon.config.write_text(daemon.config.read_text() + "\n[cache]\nbogus = 1\n")
    os.kill(daemon.pid, signal.SIGHUP)
    wait_until(lambda: _reloads(daemon) == 2, timeout=30, message="the refused reload")
    assert "reload refused" in daemon.log()
    assert status_file(daemon)["reloads"]["error"]
    assert is_mounted(daemon.mountpoint)   # SIGHUP no longer unmounts (libfuse's default did)
    assert read_file(daemon.path("Other/extra.flac")) == b"z" * 1000
    assert read_file(daemon.path("Artist 0000/Album 00/01 Track.flac")) == \
        (first / "Artist 0000/Album 00/01 Track.flac").read_bytes()


def test_reload_command_applies_the_config_and_says_what_changed_or_refuses_naming_the_key(tmp_path, daemons):
    first, second = _library_and_extra(tmp_path)
    daemon = daemons(tmp_path, [("a", first)])

    daemon.config.write_text(toml_config([("a", first), ("b", second)], daemon.cache_dir, daemon.log_file,
                                         fuse={"read_timeout": 12}))
    result = run_musicfs("reload", daemon.mountpoint)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("configuration reloaded: 1 origins added"), result.stdout
    assert sorted(lines[1:]) == ["  [fuse] read_timeout: 30 -> 12", "  origin b added (local)"], result.stdout
    assert read_file(daemon.path("Other/extra.flac")) == b"z" * 1000      # applied before it answered

    good = daemon.config.read_text()
    daemon.config.write_text(good.replace("[fuse]", "[fuse]\nread_timout = 5"))
    result = run_musicfs("reload", daemon.mountpoint)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"musicfs: reload refused, {daemon.mountpoint} keeps its configuration: "), \
        result.stderr
    assert str(daemon.config) in result.stderr and "read_timout" in result.stderr, result.stderr
    assert "reload refused" in daemon.log() and "read_timout" in daemon.log()
    assert read_file(daemon.path("Other/extra.flac")) == b"z" * 1000

    daemon.config.write_text(good)     # the running config stayed: nothing differs from it
    result = run_musicfs("reload", daemon.mountpoint)
    assert result.returncode == 0 and result.stdout.splitlines()[1:] == ["  (no setting changed)"], result.stdout


def test_sighup_reload_removes_an_origin_and_switches_the_layout(tmp_path, daemons):
    first, second = _library_and_extra(tmp_path)
    daemon = daemons(tmp_path, [("a", first), ("b", second)])
    assert daemon.path("Other/extra.flac").exists()

    daemon.config.write_text(toml_config([("a", first)], daemon.cache_dir, daemon.log_file,
                                         layout={"mode": "tags", "template": "$artist/$album/$title"}))
    os.kill(daemon.pid, signal.SIGHUP)
    wait_until(lambda: _reloads(daemon) == 1, timeout=30, message="the reload")
    assert status_file(daemon)["reloads"]["error"] is None
    assert sorted(os.listdir(daemon.mountpoint)) == [".collections", ".search", "Artist 0000"]
    assert sorted(os.listdir(daemon.path("Artist 0000/Album 00"))) == ["Track 1.flac", "Track 2.flac"]
    assert read_file(daemon.path("Artist 0000/Album 00/Track 1.flac")) == \
        (first / "Artist 0000/Album 00/01 Track.flac").read_bytes()


def test_inode_numbers_are_stable_across_a_remount(tmp_path, daemons):
    origin = tmp_path / "lib"
    make_library(origin, 4, 4 * KIB)
    daemon = daemons(tmp_path, [("nas", origin)])

    def inodes() -> dict:
        found = {}
        for root, dirs, files in os.walk(daemon.mountpoint):
            with os.scandir(root) as entries:
                for entry in entries:
                    number = os.stat(entry.path).st_ino
                    assert entry.inode() == number, entry.path   # readdir agrees with stat
                    found[os.path.relpath(entry.path, daemon.mountpoint)] = number
        return found

    before = inodes()
    assert len(set(before.values())) == len(before) == 4 + 2   # four files, an album, an artist: all distinct
    daemon.stop()
    daemon.mount()
    assert inodes() == before


def test_completing_pins_fetches_only_the_preferred_copy_not_every_replica(tmp_path, service_factory):
    first, second = tmp_path / "a", tmp_path / "b"
    for root in (first, second):
        make_library(root, 2, 300 * KIB)   # the same files in both: replicas
    service = service_factory([("a", first), ("b", second)])
    service.initial_scan()
    album = b"/Artist 0000/Album 00"
    result = service.pinner.pin([album])
    assert result["files"] == 2 and result["fetched_bytes"] > 0
    # Both copies are pinned, but only the preferred one was fetched; completing the pins must
    # not download the replicas' bytes again (on S3 that is paid traffic).
    assert service.pinner.refresh() == 0


def test_commands_run_without_the_daemons_runtime_dir_say_so(tmp_path, daemons):
    # The daemon publishes its status in its $XDG_RUNTIME_DIR; a command run with another one
    # (cron, another shell) must not claim the mount is not musicfs's.
    origin = tmp_path / "lib"
    make_library(origin, 1, 1 * KIB)
    daemon = daemons(tmp_path, [("nas", origin)])
    (tmp_path / "elsewhere").mkdir()
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "elsewhere")}
    for args in (["status", daemon.mountpoint], ["reload", daemon.mountpoint]):
        result = run_musicfs(*args, env=env)
        assert result.returncode == 1, result.stdout
        assert f"{daemon.mountpoint} is a musicfs mount but no daemon status names it in " in result.stderr, \
            result.stderr
        assert "another XDG_RUNTIME_DIR" in result.stderr


def test_reload_of_a_mount_started_without_a_config_file_says_there_is_nothing_to_read(tmp_path):
    origin, mountpoint = tmp_path / "lib", tmp_path / "mnt"
    make_library(origin, 1, 1 * KIB)
    mountpoint.mkdir()
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "no-config")}   # (no default config file)
    result = run_musicfs(mountpoint, "-O", origin, "--cache-dir", tmp_path / "cache", "--layout", "paths", env=env)
    assert result.returncode == 0, result.stderr
    try:
        result = run_musicfs("reload", mountpoint, env=env)
        assert result.returncode == 1 and "there is nothing to read again" in result.stderr, result.stderr
    finally:
        run_musicfs("unmount", mountpoint, env=env)
