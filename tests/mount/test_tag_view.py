"""The tag view on real mounts, over real audio files made by ffmpeg in every common format."""
import os
import shutil
import subprocess

import pytest

from tests.support.mounts import TAGS, read_outcome, run_musicfs, tree

pytestmark = [pytest.mark.mount,
              pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")]

def test_every_format_is_placed_by_its_tags_and_reads_byte_exact(tmp_path, library, mounted):
    album = {"artist": "Ärtist", "album": "Formats", "date": "2003-01-02", "genre": "Test"}
    made = {}
    for number, ext in enumerate(("flac", "mp3", "ogg", "opus", "m4a"), 1):
        made[ext] = library("nas", f"incoming/x{number}.{ext}",
                            {**album, "title": f"Song {ext}", "track": f"{number}/5"})
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    expected = {f"Ärtist/Formats (2003)/{n:02d} Song {ext}.{ext}" for n, ext in enumerate(made, 1)}
    assert tree(mount.mountpoint) == expected
    for n, (ext, data) in enumerate(made.items(), 1):
        shown = mount.mountpoint / f"Ärtist/Formats (2003)/{n:02d} Song {ext}.{ext}"
        assert shown.read_bytes() == data
        decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(shown), "-f", "null", "-"],
                                 capture_output=True, text=True)
        assert decoded.returncode == 0 and not decoded.stderr, decoded.stderr


def test_fallbacks_compilations_and_discs(tmp_path, library, mounted):
    library("nas", "a/untagged.flac")
    library("nas", "b/1.mp3", {"artist": "Guest", "album": "Hits", "title": "One", "compilation": "1"})
    library("nas", "b/2.m4a", {"artist": "Other", "album": "Hits", "title": "Two", "compilation": "1"})
    library("nas", "c/1.flac", {"artist": "Band", "album": "Double", "title": "A", "track": "1", "disc": "1/2"})
    library("nas", "c/2.flac", {"artist": "Band", "album": "Double", "title": "B", "track": "1", "disc": "2/2"})
    library("nas", "d/1.ogg", {"artist": "Band", "album": "Single", "title": "C", "track": "1", "disc": "1/1"})
    library("nas", "e/1.opus", {"artist": "Band", "albumartist": "The Band", "album": "Live", "title": "D"})
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    assert tree(mount.mountpoint) == {
        "Non-Album/Unknown Artist/untagged.flac",
        "Compilations/Hits/One.mp3", "Compilations/Hits/Two.m4a",
        "Band/Double/1-01 A.flac", "Band/Double/2-01 B.flac",
        "Band/Single/01 C.ogg",
        "The Band/Live/D.opus",
    }


def test_real_id3_tcmp_frame_marks_a_compilation(tmp_path, library, mounted):
    from mutagen.id3 import ID3, TCMP
    library("nas", "x.mp3", {"artist": "Guest", "album": "Hits", "title": "One"})
    tags = ID3(tmp_path / "nas" / "x.mp3")
    tags.add(TCMP(encoding=3, text=["1"]))
    tags.save()
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    assert tree(mount.mountpoint) == {"Compilations/Hits/One.mp3"}


def test_awkward_names(tmp_path, library, mounted):
    library("nas", "1.flac", {"artist": "AC/DC: *Live*?", "album": " .Hidden ", "title": "é" * 300})
    library("nas", "2.flac", {"artist": "Ångström".encode().decode(), "album": "NFD", "title":
                              "A\u0308rger"})     # A + combining diaeresis
    raw_name = os.path.join(os.fsencode(tmp_path / "nas"), b"caf\xe9.flac")
    with open(raw_name, "wb") as f:
        f.write((tmp_path / "nas" / "1.flac").read_bytes()[:4])   # not audio to mutagen: not a track
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    shown = tree(mount.mountpoint)
    long_name = next(p for p in shown if p.startswith("AC_DC_ _Live__/_Hidden/"))
    leaf = long_name.split("/")[-1]
    assert leaf.endswith(".flac") and len(leaf.encode()) <= 255 and set(leaf[:-5]) == {"é"}
    assert "Ångström/NFD/\u00c4rger.flac" in shown
    assert not any("caf" in path for path in shown)
    assert service.catalog.unplaced() == (1, [("nas", b"caf\xe9.flac")])
    for path in shown:
        path.encode("utf-8")   # the tag view is always valid UTF-8


def test_collisions_and_replicas(tmp_path, library, mounted):
    same = {"artist": "A", "album": "B", "title": "T", "track": "1"}
    library("first", "x/one.flac", same)
    library("first", "y/two.flac", same)          # same place, same origin
    library("second", "z/three.flac", same)       # same place, other origin
    replica = library("first", "r/rep.flac", {"artist": "R", "title": "Rep"})
    library("second", "r/rep.flac", {"artist": "R", "title": "Rep"})   # same relative path: a replica
    from musicfs.catalog.views import collision_suffix
    service, mount = mounted([("first", tmp_path / "first"), ("second", tmp_path / "second")], **TAGS)
    assert tree(mount.mountpoint) == {
        "A/B/01 T.flac",
        f"A/B/01 T{collision_suffix(b'y/two.flac')}.flac",
        f"A/B/01 T{collision_suffix(b'z/three.flac')}.flac",
        "Non-Album/R/Rep.flac",
    }
    entry = service.catalog.lookup("/Non-Album/R/Rep.flac".encode())
    assert [origin for origin, _ in entry.sources] == ["first", "second"]
    assert (mount.mountpoint / "Non-Album/R/Rep.flac").read_bytes() == replica
    # stable: the same names after a rescan and after a remount
    before = tree(mount.mountpoint)
    service.scanner.scan()
    assert tree(mount.mountpoint) == before


def test_sidecars_follow_their_album(tmp_path, library, mounted):
    library("nas", "rip/01.flac", {"artist": "A", "album": "Rip", "title": "One"})
    library("nas", "rip/02.flac", {"artist": "A", "album": "Rip", "title": "Two"})
    (tmp_path / "nas" / "rip" / "cover.jpg").write_bytes(b"jpeg")
    (tmp_path / "nas" / "rip" / "rip.cue").write_bytes(b"cue")
    (tmp_path / "nas" / "rip" / "Thumbs.db").write_bytes(b"junk")       # not a sidecar: left out
    library("nas", "mixed/01.flac", {"artist": "A", "album": "X", "title": "One"})
    library("nas", "mixed/02.flac", {"artist": "B", "album": "Y", "title": "Two"})
    (tmp_path / "nas" / "mixed" / "folder.jpg").write_bytes(b"which album?")
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    assert tree(mount.mountpoint) == {"A/Rip/One.flac", "A/Rip/Two.flac", "A/Rip/cover.jpg", "A/Rip/rip.cue",
                                      "A/X/One.flac", "B/Y/Two.flac"}
    assert (mount.mountpoint / "A/Rip/cover.jpg").read_bytes() == b"jpeg"


def test_directory_mtime_is_the_newest_below(tmp_path, library, mounted):
    library("nas", "1.flac", {"artist": "A", "album": "B", "title": "Old"})
    library("nas", "2.flac", {"artist": "A", "album": "B", "title": "New"})
    os.utime(tmp_path / "nas" / "1.flac", ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    os.utime(tmp_path / "nas" / "2.flac", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    assert os.stat(mount.mountpoint / "A").st_mtime_ns == 1_500_000_000_000_000_000
    assert os.stat(mount.mountpoint / "A/B").st_mtime_ns == 1_500_000_000_000_000_000
    assert os.stat(mount.mountpoint).st_mtime_ns == 1_500_000_000_000_000_000   # the root too


def test_retag_moves_the_file_at_the_next_rescan_and_unchanged_rescans_read_no_tags(
        tmp_path, library, service_factory, in_process_mount, audio_cache):
    for n in range(3):
        library("nas", f"{n}.flac", {"artist": "A", "album": "Old", "title": f"T{n}"})
    service = service_factory([("nas", tmp_path / "nas")], **TAGS)
    first, = service.scanner.scan()
    assert first.tags_read == 3
    result, = service.scanner.scan()
    assert result.complete and result.tags_read == 0          # nothing changed: no tag read
    mount = in_process_mount(service)

    retagged = audio_cache("flac", {"artist": "A", "album": "New", "title": "T0"})
    tmp = tmp_path / "nas" / "0.flac.tmp"
    tmp.write_bytes(retagged)
    os.replace(tmp, tmp_path / "nas" / "0.flac")               # how taggers save
    result, = service.scanner.scan()
    assert result.tags_read == 1
    assert tree(mount.mountpoint) == {"A/New/T0.flac", "A/Old/T1.flac", "A/Old/T2.flac"}
    assert (mount.mountpoint / "A/New/T0.flac").read_bytes() == retagged


def test_template_and_mode_changes_rebuild_the_view(tmp_path, library, service_factory, in_process_mount):
    library("nas", "folder/1.flac", {"artist": "A", "album": "B", "title": "T", "genre": "Jazz"})
    service = service_factory([("nas", tmp_path / "nas")], **TAGS)
    service.initial_scan()
    service.stop()
    service = service_factory([("nas", tmp_path / "nas")], layout={"mode": "tags", "template": "$genre/$title"})
    assert service.catalog.list(b"/") == [b"Jazz"]     # rebuilt on open, before any scan
    service.stop()
    service = service_factory([("nas", tmp_path / "nas")], layout={"mode": "paths"})
    mount = in_process_mount(service)
    assert tree(mount.mountpoint) == {"folder/1.flac"}


def test_bad_template_on_the_command_line_is_one_clear_line(tmp_path):
    (tmp_path / "mnt").mkdir()
    result = run_musicfs(tmp_path / "mnt", "-O", tmp_path, "--template", "$artist/{$album")
    assert result.returncode == 2
    assert result.stderr.strip() == "musicfs: --template: a '{' is never closed"


# -- the guarantees of the paths view hold in the tag view --------------------------------------

def test_failover_to_a_replica_in_the_tag_view(tmp_path, library, mounted):
    data = library("a", "x/song.flac", {"artist": "A", "album": "B", "title": "Song"})
    library("b", "x/song.flac", {"artist": "A", "album": "B", "title": "Song"})
    service, mount = mounted([("a", tmp_path / "a"), ("b", tmp_path / "b")], faulty={"a"}, **TAGS)
    service.origins["a"].fail(only={"read"})
    assert (mount.mountpoint / "A/B/Song.flac").read_bytes() == data


def test_cached_files_play_with_every_origin_hung_in_the_tag_view(tmp_path, library, mounted):
    data = library("nas", "x/song.flac", {"artist": "A", "album": "B", "title": "Song"})
    service, mount = mounted([("nas", tmp_path / "nas")], faulty={"nas"}, **TAGS)
    assert (mount.mountpoint / "A/B/Song.flac").read_bytes() == data
    service.origins["nas"].hang()
    try:
        service.store.verified.clear()
        assert (mount.mountpoint / "A/B/Song.flac").read_bytes() == data
        assert "Song.flac" in os.listdir(mount.mountpoint / "A/B")
    finally:
        service.origins["nas"].release()


def test_retag_by_rename_is_never_mixed_in_the_tag_view(tmp_path, library, mounted, audio_cache):
    import errno
    old = library("nas", "x/song.flac", {"artist": "A", "album": "B", "title": "Song"})
    service, mount = mounted([("nas", tmp_path / "nas")], fuse_options={"attr_timeout": 30, "entry_timeout": 30},
                             **TAGS)
    shown = mount.mountpoint / "A/B/Song.flac"
    assert shown.stat().st_size == len(old)
    new = audio_cache("flac", {"artist": "A", "album": "B", "title": "Song", "genre": "x" * 5000})
    tmp = tmp_path / "nas" / "x" / "song.tmp"
    tmp.write_bytes(new)
    os.replace(tmp, tmp_path / "nas" / "x" / "song.flac")
    assert read_outcome(shown) in (old, new, errno.EIO)
    assert read_outcome(shown) == new       # refreshed in place; it moves (if at all) at the next rescan


def test_switching_a_known_library_to_the_tag_view_reads_its_tags_before_mounting(tmp_path, library):
    from tests.support.mounts import Daemon
    library("nas", "x/1.flac", {"artist": "A", "album": "B", "title": "One"})
    library("nas", "x/2.mp3", {"artist": "A", "album": "B", "title": "Two"})
    daemon = Daemon(tmp_path, [("nas", tmp_path / "nas")])          # the paths layout first
    try:
        daemon.mount()
        assert tree(daemon.mountpoint) == {"x/1.flac", "x/2.mp3"}
        daemon.stop()
        daemon.mount("--layout", "tags")
        assert tree(daemon.mountpoint) == {"A/B/One.flac", "A/B/Two.mp3"}   # at once, not after a rescan
    finally:
        daemon.stop()


def test_long_tags_and_deep_folders_never_empty_the_view(tmp_path, library, mounted):
    # every name under 255 bytes, the whole path far over what a catalog key can hold
    library("nas", "classic/04.flac", {"artist": "A" * 115, "album": "B" * 197, "title": "C" * 225, "track": "4"})
    library("nas", "classic/05.flac", {"artist": "A" * 115, "album": "B" * 197, "title": "Short", "track": "5"})
    library("nas", "ok/ok.flac", {"artist": "Fine", "album": "Fine", "title": "fine"})
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    shown = tree(mount.mountpoint)
    assert "Fine/Fine/fine.flac" in shown and len(shown) == 3
    classic = sorted(p for p in shown if p.startswith("A"))
    assert classic[0].rsplit("/", 1)[0] == classic[1].rsplit("/", 1)[0]     # one album directory
    assert all(len(("/" + p).encode()) <= 440 for p in shown)


def test_a_path_too_long_for_the_catalog_is_left_out_alone(tmp_path, service_factory, caplog):
    deep = tmp_path / "nas" / ("d" * 200) / ("d" * 200) / ("d" * 200)
    deep.mkdir(parents=True)
    (deep / "deep.flac").write_bytes(b"x")
    (tmp_path / "nas" / "ok").mkdir()
    (tmp_path / "nas" / "ok" / "ok.flac").write_bytes(b"y")
    service = service_factory([("nas", tmp_path / "nas")])        # the paths layout
    result, = service.scanner.scan()
    assert result.complete, result.error
    assert service.catalog.lookup(b"/ok/ok.flac") is not None
    assert "its path is longer than" in caplog.text


def test_cover_above_disc_folders_follows_the_album(tmp_path, library, mounted):
    library("nas", "Album/CD1/1.flac", {"artist": "A", "album": "Double", "title": "One", "disc": "1/2"})
    library("nas", "Album/CD2/1.flac", {"artist": "A", "album": "Double", "title": "Two", "disc": "2/2"})
    (tmp_path / "nas" / "Album" / "cover.jpg").write_bytes(b"jpeg")
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    assert tree(mount.mountpoint) == {"A/Double/1- One.flac", "A/Double/2- Two.flac", "A/Double/cover.jpg"}
