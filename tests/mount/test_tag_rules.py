"""The tag view's contract (docs: README "The tag view"), rule by rule, on real mounts of real
audio made by tests/audio.py (FLAC, MP3 with ID3v2.3 and 2.4, Ogg Vorbis, Opus, M4A)."""
import json
import os
import shutil
import subprocess

import mutagen
import pytest

from tests.support.audio import make_track, tiny_jpeg, tiny_png
from tests.support.mounts import TAGS, Daemon, run_musicfs, tree

pytestmark = [pytest.mark.mount,
              pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")]

ALBUM = {"artist": "Band", "album": "Album"}
# What macOS writes beside every file it touches on a share: an AppleDouble header, not audio.
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)


def test_junk_is_not_a_track_and_the_album_keeps_its_sidecars(tmp_path, library):
    for n, ext in enumerate(("flac", "mp3", "ogg"), 1):
        library("nas", f"Band - Album/0{n}-track.{ext}", {**ALBUM, "title": f"T{n}", "track": str(n)})
    folder = tmp_path / "nas" / "Band - Album"
    (folder / "._01-track.flac").write_bytes(APPLEDOUBLE)
    (folder / "broken.mp3").write_bytes(b"")
    (folder / "truncated.flac").write_bytes(b"fLaC\x00\x00")
    for name in ("cover.jpg", "album.cue", "rip.log", "playlist.m3u"):
        (folder / name).write_bytes(name.encode())
    daemon = Daemon(tmp_path, [("nas", tmp_path / "nas")], **TAGS)
    try:
        daemon.mount()
        assert tree(daemon.mountpoint) == {
            "Band/Album/01 T1.flac", "Band/Album/02 T2.mp3", "Band/Album/03 T3.ogg",
            "Band/Album/cover.jpg", "Band/Album/album.cue", "Band/Album/rip.log", "Band/Album/playlist.m3u"}
        status = run_musicfs("status", daemon.mountpoint)
        assert "2 files not placed" in status.stdout, status.stdout
        report = json.loads(run_musicfs("status", "--json", daemon.mountpoint).stdout)
        assert sorted(f["path"] for f in report["layout"]["not_placed"]["files"]) == [
            "Band - Album/broken.mp3", "Band - Album/truncated.flac"]
        assert {f["origin"] for f in report["layout"]["not_placed"]["files"]} == {"nas"}
        assert daemon.log().count("broken.mp3 is not a track") == 1
        assert run_musicfs("rescan", daemon.mountpoint).returncode == 0
        assert daemon.log().count("broken.mp3 is not a track") == 1     # once per file version
    finally:
        daemon.stop()


def test_an_album_whose_tracks_disagree_on_the_year_is_one_folder(tmp_path, library, mounted):
    for n, date in enumerate(("2004", "2004-03-01", "2005"), 1):
        library("nas", f"rip/{n}.flac", {**ALBUM, "title": f"T{n}", "track": str(n), "date": date})
    (tmp_path / "nas" / "rip" / "cover.jpg").write_bytes(b"the album's own cover")
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    assert tree(mount.mountpoint) == {"Band/Album (2004)/01 T1.flac", "Band/Album (2004)/02 T2.flac",
                                      "Band/Album (2004)/03 T3.flac", "Band/Album (2004)/cover.jpg"}
    assert (mount.mountpoint / "Band/Album (2004)/cover.jpg").read_bytes() == b"the album's own cover"


def test_an_album_is_one_folder_wherever_its_files_lie(tmp_path, library, mounted):
    library("a", "Band/Album/1.flac", {**ALBUM, "title": "One", "track": "1"})
    library("a", "incoming/2.mp3", {**ALBUM, "title": "Two", "track": "2"})
    library("b", "elsewhere/3.m4a", {**ALBUM, "title": "Three", "track": "3"})
    service, mount = mounted([("a", tmp_path / "a"), ("b", tmp_path / "b")], **TAGS)
    assert tree(mount.mountpoint) == {"Band/Album/01 One.flac", "Band/Album/02 Two.mp3", "Band/Album/03 Three.m4a"}


def test_compilations_and_singletons_go_where_beets_files_them(tmp_path, library, mounted):
    comp = {"album": "Hits", "compilation": "1", "date": "1999"}
    library("nas", "hits/1.mp3", {**comp, "artist": "Ann", "title": "A", "track": "1"}, id3_version=3)  # TCMP
    library("nas", "hits/2.m4a", {**comp, "artist": "Bob", "title": "B", "track": "2"})                # cpil
    library("nas", "hits/3.flac", {**comp, "artist": "Cy", "title": "C", "track": "3"})               # COMPILATION=1
    library("nas", "va/1.ogg", {"albumartist": "various artists", "artist": "Dee", "album": "Mix", "title": "D"})
    library("nas", "va/2.opus", {"albumartist": "various artists", "artist": "Eve", "album": "Mix", "title": "E"})
    library("nas", "loose/x.flac", {"artist": "Solo", "title": "Single"})
    library("nas", "loose/untitled.mp3", {"artist": "Solo"})
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    assert tree(mount.mountpoint) == {
        "Compilations/Hits (1999)/01 A.mp3", "Compilations/Hits (1999)/02 B.m4a", "Compilations/Hits (1999)/03 C.flac",
        "Compilations/Mix/D.ogg", "Compilations/Mix/E.opus",
        "Non-Album/Solo/Single.flac", "Non-Album/Solo/untitled.mp3"}


def test_a_compilation_with_one_flagged_track_is_one_compilation(tmp_path, library, mounted):
    library("nas", "x/1.flac", {"albumartist": "Various Artists", "artist": "Ann", "album": "Mix", "title": "A"})
    library("nas", "x/2.flac", {"albumartist": "Various Artists", "artist": "Bob", "album": "Mix", "title": "B",
                                "compilation": "1"})
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    assert tree(mount.mountpoint) == {"Compilations/Mix/A.flac", "Compilations/Mix/B.flac"}


def test_musicbrainz_release_ids_keep_two_releases_of_one_album_apart(tmp_path, library, mounted):
    for n in (1, 2):
        library("nas", f"orig/{n}.flac", {**ALBUM, "title": f"T{n}", "track": str(n), "date": "1999",
                                          "mb_albumid": "11111111-1111-1111-1111-111111111111"})
    library("nas", "remaster/1.flac", {**ALBUM, "title": "T1", "track": "1", "date": "2009",
                                       "mb_albumid": "22222222-2222-2222-2222-222222222222"})
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    assert tree(mount.mountpoint) == {"Band/Album (1999)/01 T1.flac", "Band/Album (1999)/02 T2.flac",
                                      "Band/Album (2009)/01 T1.flac"}


@pytest.mark.parametrize("ext, options", [("flac", {}), ("mp3", {"id3_version": 3}), ("mp3", {"id3_version": 4}),
                                          ("m4a", {}), ("ogg", {}), ("opus", {})])
def test_the_embedded_cover_is_served_byte_exact(tmp_path, library, mounted, ext, options):
    jpeg = tiny_jpeg(7)
    library("nas", f"a/1.{ext}", {**ALBUM, "title": "One", "track": "1"}, picture=jpeg, **options)
    library("nas", f"a/2.{ext}", {**ALBUM, "title": "Two", "track": "2"}, picture=tiny_jpeg(8), **options)
    library("nas", f"b/1.{ext}", {"artist": "Other", "album": "Png", "title": "P"}, picture=tiny_png(3),
            picture_mime="image/png", **options)
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    cover = mount.mountpoint / "Band/Album/cover.jpg"
    assert os.stat(cover).st_size == len(jpeg)             # known when listed, before any read
    assert cover.read_bytes() == jpeg                       # the first track's, byte-exact
    assert (mount.mountpoint / "Other/Png/cover.png").read_bytes() == tiny_png(3)
    probe = subprocess.run(["ffprobe", "-v", "error", str(cover)], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr


def test_the_front_cover_is_preferred_and_an_own_cover_wins(tmp_path, library, mounted):
    from mutagen.flac import FLAC, Picture
    data = library("nas", "a/1.flac", {**ALBUM, "title": "One"}, picture=tiny_jpeg(1), picture_type=8)  # artist
    path = tmp_path / "nas" / "a" / "1.flac"
    flac = FLAC(path)
    front = Picture()
    front.type, front.mime, front.data = 3, "image/jpeg", tiny_jpeg(2)
    flac.add_picture(front)
    flac.save()
    library("nas", "b/1.flac", {"artist": "Own", "album": "Art", "title": "X"}, picture=tiny_jpeg(3))
    (tmp_path / "nas" / "b" / "Folder.JPG").write_bytes(b"own art")
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    assert data != path.read_bytes()
    assert (mount.mountpoint / "Band/Album/cover.jpg").read_bytes() == tiny_jpeg(2)
    assert tree(mount.mountpoint) >= {"Own/Art/X.flac", "Own/Art/Folder.jpg"}   # (extensions lower case)
    assert "Own/Art/cover.jpg" not in tree(mount.mountpoint)


def test_a_cover_follows_its_track_when_the_album_changes(tmp_path, library, mounted, audio_cache):
    library("nas", "a/1.flac", {**ALBUM, "title": "One"}, picture=tiny_jpeg(1))
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    assert (mount.mountpoint / "Band/Album/cover.jpg").read_bytes() == tiny_jpeg(1)
    retagged = audio_cache("flac", {**ALBUM, "title": "One"}, picture=tiny_jpeg(9))
    tmp = tmp_path / "nas" / "a" / "1.tmp"
    tmp.write_bytes(retagged)
    os.replace(tmp, tmp_path / "nas" / "a" / "1.flac")
    service.scanner.scan()
    assert (mount.mountpoint / "Band/Album/cover.jpg").read_bytes() == tiny_jpeg(9)
    (tmp_path / "nas" / "a" / "cover.png").write_bytes(b"now its own")
    service.scanner.scan()
    assert tree(mount.mountpoint) == {"Band/Album/One.flac", "Band/Album/cover.png"}
    assert (mount.mountpoint / "Band/Album/cover.png").read_bytes() == b"now its own"


def test_several_values_are_joined_and_genre_has_a_fallback(tmp_path, library, mounted):
    library("nas", "1.flac", {"artist": ["Ann", "Bob"], "album": "Duets", "title": ["Song", "Lied"],
                              "genre": ["Jazz", "Blues"]})
    library("nas", "2.mp3", {"artist": ["Ann", "Bob"], "album": "Duets", "title": "Two"}, id3_version=4)
    library("nas", "3.m4a", {"artist": ["Ann", "Bob"], "album": "Duets", "title": "Three"})
    library("nas", "4.ogg", {"artist": "AC/DC", "album": "Duets", "title": "Four"})
    service, mount = mounted([("nas", tmp_path / "nas")],
                             layout={"mode": "tags", "template": "$genre/$artist/$title"})
    assert tree(mount.mountpoint) == {"Jazz, Blues/Ann, Bob/Song, Lied.flac", "Unknown Genre/Ann, Bob/Two.mp3",
                                      "Unknown Genre/Ann, Bob/Three.m4a", "Unknown Genre/AC_DC/Four.ogg"}


def test_ignore_replaces_the_default_list_in_both_views(tmp_path, library, mounted):
    library("nas", ".hidden/1.flac", {**ALBUM, "title": "Hidden"})
    library("nas", "a/2.flac", {**ALBUM, "title": "Kept"})
    library("nas", "a/3.tmp.flac", {**ALBUM, "title": "Partial"})
    service, mount = mounted([("nas", tmp_path / "nas")],
                             layout={"mode": "tags", "ignore": ["*.tmp.flac"]})
    assert tree(mount.mountpoint) == {"Band/Album/Hidden.flac", "Band/Album/Kept.flac"}
    service, mount = mounted([("nas", tmp_path / "nas")], layout={"mode": "paths"})
    assert tree(mount.mountpoint) == {"a/2.flac", "a/3.tmp.flac"}          # the default hides .hidden/


def test_a_bad_ignore_pattern_or_template_is_one_line_naming_it(tmp_path):
    (tmp_path / "mnt").mkdir()
    config = tmp_path / "config.toml"
    for layout, expected in (('ignore = ["a/b"]', f"musicfs: {config}: layout.ignore: 'a/b' is not a file name pattern"),
                             ('comp_template = "$nope/$title"', f"musicfs: {config}: layout.comp_template: unknown field $nope")):
        config.write_text(f'[[origins]]\nname = "nas"\ntype = "local"\npath = "{tmp_path}"\n[layout]\n{layout}\n')
        result = run_musicfs(tmp_path / "mnt", "-c", config)
        assert result.returncode == 2
        assert result.stderr.strip().startswith(expected), result.stderr


def test_a_bad_layout_on_reload_keeps_the_old_one(tmp_path, library):
    import signal
    library("nas", "a/1.flac", {**ALBUM, "title": "One"})
    daemon = Daemon(tmp_path, [("nas", tmp_path / "nas")], **TAGS)
    try:
        daemon.mount()
        config = daemon.config.read_text()
        daemon.config.write_text(config.replace('mode = "tags"', 'mode = "tags"\nignore = ["a/b"]'))
        os.kill(daemon.pid, signal.SIGHUP)
        from testkit.process import wait_until
        wait_until(lambda: "layout.ignore" in daemon.log(), message="the refused reload's log line")
        assert "is not a file name pattern" in daemon.log()
        assert tree(daemon.mountpoint) == {"Band/Album/One.flac"}
    finally:
        daemon.stop()


def test_hostile_tags_never_stall_a_scan_or_bloat_the_catalog(tmp_path, library, mounted):
    from mutagen.flac import FLAC
    library("nas", "x/1.flac", {"artist": "Ctrl\x01\x1fArtist", "album": "A\x7fB", "title": "T\ttab"})
    path = tmp_path / "nas" / "x" / "2.flac"
    make_track(path, {"album": "Many", "title": "Values"})
    flac = FLAC(path)
    flac["artist"] = [f"Artist {n}" for n in range(1000)]
    flac["comment"] = ["x" * (10 << 20)]
    flac.save()
    big_picture = os.urandom(50 << 20)
    # (a FLAC metadata block holds at most 16 MiB; an ID3v2.4 frame far more)
    library("nas", "y/1.mp3", {"artist": "Big", "album": "Picture", "title": "P"}, picture=big_picture)
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    shown = tree(mount.mountpoint)
    assert "Ctrl__Artist/A_B/T_tab.flac" in shown
    many = next(p for p in shown if p.startswith("Artist 0, Artist 1, "))
    assert len(many.split("/")[0].encode()) <= 255 and many.endswith("/Many/Values.flac")
    from musicfs.catalog.records import origin_key
    with service.storage.begin() as txn:
        record = txn.get(origin_key("nas", b"x/2.flac"), db=service.storage.tags)
    assert len(record) < 4096                      # not the 10 MB comment, not 1,000 names
    cover = mount.mountpoint / "Big/Picture/cover.jpg"
    assert os.stat(cover).st_size == len(big_picture) and cover.read_bytes() == big_picture


def test_what_mutagen_reads_of_a_track_is_what_the_view_was_built_from(tmp_path, library, mounted):
    """Decoding through the view: each format plays (ffmpeg decodes it) and its tags read the same."""
    made = {}
    for n, (ext, options) in enumerate((("flac", {}), ("mp3", {"id3_version": 3}), ("mp3", {"id3_version": 4}),
                                        ("ogg", {}), ("opus", {}), ("m4a", {})), 1):
        made[f"{n}.{ext}"] = library("nas", f"{n}.{ext}", {**ALBUM, "title": f"T{n}", "track": str(n)}, **options)
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    for n, name in enumerate(made, 1):
        shown = mount.mountpoint / f"Band/Album/{n:02d} T{n}.{name.split('.')[1]}"
        assert shown.read_bytes() == made[name]
        assert mutagen.File(shown, easy=True)["title"] == [f"T{n}"]
        decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(shown), "-f", "null", "-"],
                                 capture_output=True, text=True)
        assert decoded.returncode == 0 and not decoded.stderr, decoded.stderr


def test_a_large_scan_parses_in_processes_and_finds_what_threads_find(tmp_path, library, service_factory, caplog,
                                                                     monkeypatch):
    import logging
    from musicfs.catalog import scanner
    caplog.set_level(logging.INFO, logger="musicfs")
    for n in range(scanner.PROCESS_MIN_FILES + 6):
        library("nas", f"d{n % 4}/{n}.{('flac', 'mp3', 'ogg', 'm4a')[n % 4]}",
                {"artist": f"A{n % 3}", "album": f"Album {n % 5}", "title": f"T{n}", "track": str(n % 12 + 1)},
                **({"picture": tiny_jpeg(n % 2)} if n % 7 == 0 else {}))
    (tmp_path / "nas" / "d0" / "broken.flac").write_bytes(b"fLaC")

    def scan_records(name):
        service = service_factory([("nas", tmp_path / "nas")], cache={"dir": str(tmp_path / name)}, **TAGS)
        result, = service.scanner.scan()
        assert result.complete and result.tags_read == scanner.PROCESS_MIN_FILES + 7
        with service.storage.begin() as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor(db=service.storage.tags)}
    in_processes = scan_records("processes")
    assert "d0/broken.flac is not a track" in caplog.text         # logged by the daemon, from a note
    monkeypatch.setattr(scanner, "TAG_PROCESSES", 1)
    assert scan_records("threads") == in_processes


def test_a_daemon_reads_tags_in_processes(tmp_path, library):
    from musicfs.catalog.scanner import PROCESS_MIN_FILES
    for n in range(PROCESS_MIN_FILES + 2):
        library("nas", f"x/{n}.flac", {**ALBUM, "title": f"T{n:03d}", "track": str(n + 1)})
    (tmp_path / "nas" / "x" / "empty.mp3").write_bytes(b"")
    daemon = Daemon(tmp_path, [("nas", tmp_path / "nas")], **TAGS)
    try:
        daemon.mount()
        assert len(tree(daemon.mountpoint)) == PROCESS_MIN_FILES + 2
        assert "x/empty.mp3 is not a track" in daemon.log()
    finally:
        daemon.stop()


def test_a_cover_is_never_another_piece_of_a_changed_track(tmp_path, library, mounted, audio_cache):
    """A track replaced between scans: a read refreshes its entry before its tags are read
    again. Its cover must not be served from where the picture lay in the old version."""
    import errno
    from tests.support.mounts import read_outcome
    library("nas", "a/1.flac", {**ALBUM, "title": "One"}, picture=tiny_jpeg(1))
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    cover = mount.mountpoint / "Band/Album/cover.jpg"
    assert cover.stat().st_size == len(tiny_jpeg(1))      # listed; not read (nothing cached yet)
    moved = audio_cache("flac", {**ALBUM, "title": "One", "genre": "g" * 3000}, picture=tiny_jpeg(2))
    tmp = tmp_path / "nas" / "a" / "1.tmp"
    tmp.write_bytes(moved)
    os.replace(tmp, tmp_path / "nas" / "a" / "1.flac")          # the picture now lies further on
    assert read_outcome(mount.mountpoint / "Band/Album/One.flac") in (moved, errno.EIO)
    assert read_outcome(mount.mountpoint / "Band/Album/One.flac") == moved     # the entry is refreshed
    assert service.catalog.lookup(b"/Band/Album/cover.jpg") is None          # until the tags are read
    service.scanner.scan()
    assert cover.read_bytes() == tiny_jpeg(2)


def test_status_of_a_cover_is_its_own_size_and_piece(tmp_path, library):
    library("nas", "a/1.flac", {**ALBUM, "title": "One"}, picture=tiny_jpeg(4))
    daemon = Daemon(tmp_path, [("nas", tmp_path / "nas")], **TAGS)
    try:
        daemon.mount()
        cover = daemon.mountpoint / "Band/Album/cover.jpg"
        assert cover.read_bytes() == tiny_jpeg(4)
        report = json.loads(run_musicfs("status", "--json", cover).stdout)
        assert report["size"] == len(tiny_jpeg(4)) == report["cached"] and report["source"] == "a/1.flac"
        assert report["piece_of"]["length"] == len(tiny_jpeg(4))
        assert "the picture embedded in it" in run_musicfs("status", cover).stdout
        listing = subprocess.run(["ls", "-a", daemon.mountpoint / "Band"], capture_output=True, text=True).stdout
        assert listing.split() == [".", "..", "Album"]
    finally:
        daemon.stop()


def test_the_template_option_stands_in_for_a_broken_one_in_the_file(tmp_path, library):
    library("nas", "a/1.flac", {**ALBUM, "title": "One"})
    daemon = Daemon(tmp_path, [("nas", tmp_path / "nas")], layout={"mode": "tags", "template": "$artst/$title"})
    try:
        assert daemon.start().returncode == 2
        daemon.mount("--template", "$album/$title")
        assert tree(daemon.mountpoint) == {"Album/One.flac"}
    finally:
        daemon.stop()


def test_a_cover_never_comes_from_a_replica_of_another_version(tmp_path, library, mounted):
    """Same path and size in two origins, other bytes (a retag that kept the size): where the
    picture lies is known in the preferred copy only, so the cover never fails over to the other."""
    import errno
    from mutagen.flac import FLAC
    from tests.support.mounts import read_outcome
    library("a", "x/1.flac", {**ALBUM, "title": "One"}, picture=tiny_jpeg(1))
    library("b", "x/1.flac", {**ALBUM, "title": "One"}, picture=tiny_jpeg(1))
    replica = FLAC(tmp_path / "b" / "x" / "1.flac")
    replica["comment"] = ["old" * 300]           # the picture moves; padding keeps the size
    replica.save(padding=lambda info: info.padding)
    assert (tmp_path / "a/x/1.flac").stat().st_size == (tmp_path / "b/x/1.flac").stat().st_size
    service, mount = mounted([("a", tmp_path / "a"), ("b", tmp_path / "b")], faulty={"a"}, **TAGS)
    assert service.catalog.lookup(b"/Band/Album/cover.jpg").sources == (("a", b"x/1.flac"),)
    service.origins["a"].fail(only={"read"})
    assert read_outcome(mount.mountpoint / "Band/Album/cover.jpg") in (tiny_jpeg(1), errno.EIO)


def test_switching_back_to_the_tag_view_reads_tags_changed_meanwhile(tmp_path, library, audio_cache):
    library("nas", "a/1.flac", {**ALBUM, "title": "One"}, picture=tiny_jpeg(1))
    daemon = Daemon(tmp_path, [("nas", tmp_path / "nas")], **TAGS)
    try:
        daemon.mount()
        config = daemon.config.read_text()
        reloads = daemon.log().count("configuration reloaded")

        def reload(text):
            nonlocal reloads
            daemon.config.write_text(text)
            os.kill(daemon.pid, __import__("signal").SIGHUP)
            from testkit.process import wait_until
            wait_until(lambda: daemon.log().count("configuration reloaded") > reloads, message="the reload")
            reloads += 1
        reload(config.replace('mode = "tags"', 'mode = "paths"'))
        retagged = audio_cache("flac", {**ALBUM, "album": "New", "title": "One", "genre": "g" * 3000},
                               picture=tiny_jpeg(2))
        (tmp_path / "nas/a/1.tmp").write_bytes(retagged)
        os.replace(tmp_path / "nas/a/1.tmp", tmp_path / "nas/a/1.flac")
        assert run_musicfs("rescan", daemon.mountpoint).returncode == 0
        reload(config)
        assert tree(daemon.mountpoint) == {"Band/New/One.flac", "Band/New/cover.jpg"}
        assert (daemon.mountpoint / "Band/New/cover.jpg").read_bytes() == tiny_jpeg(2)
    finally:
        daemon.stop()


def test_an_ignore_list_emptied_on_reload_shows_what_it_hid(tmp_path, library):
    from testkit.process import wait_until
    library("nas", "a/1.flac", {**ALBUM, "title": "One"})
    library("nas", ".hidden/2.flac", {**ALBUM, "title": "Two"})
    daemon = Daemon(tmp_path, [("nas", tmp_path / "nas")], **TAGS)
    try:
        daemon.mount()
        assert tree(daemon.mountpoint) == {"Band/Album/One.flac"}
        daemon.config.write_text(daemon.config.read_text().replace('mode = "tags"', 'mode = "tags"\nignore = []'))
        os.kill(daemon.pid, __import__("signal").SIGHUP)
        wait_until(lambda: "Band/Album/Two.flac" in tree(daemon.mountpoint), timeout=30,
                   message="the file the old ignore list hid")
    finally:
        daemon.stop()


def test_a_template_without_folders_and_odd_pictures(tmp_path, library, mounted):
    library("nas", "a/1.flac", {**ALBUM, "title": "One"}, picture=tiny_png(5), picture_mime="image/x-png")
    (tmp_path / "nas" / "a" / "notes.txt").write_bytes(b"notes")
    service, mount = mounted([("nas", tmp_path / "nas")], layout={"mode": "tags", "template": "$title"})
    assert tree(mount.mountpoint) == {"One.flac", "notes.txt", "cover.png"}     # named by its bytes
    assert (mount.mountpoint / "notes.txt").read_bytes() == b"notes"
    assert (mount.mountpoint / "cover.png").read_bytes() == tiny_png(5)


@pytest.mark.parametrize("ext", ["ogg", "opus"])
def test_a_cover_stored_in_base64_over_many_ogg_pages_is_decoded_byte_exact(tmp_path, library, mounted, ext):
    """METADATA_BLOCK_PICTURE: base64 inside the comment header, which a big picture spreads
    over many Ogg pages; the cover is decoded from that piece of the track at each read."""
    picture = tiny_jpeg(6) + os.urandom(300_000)          # (a JPEG head; 400 KB of base64)
    library("nas", f"a/1.{ext}", {**ALBUM, "title": "One"}, picture=picture)
    service, mount = mounted([("nas", tmp_path / "nas")], **TAGS)
    cover = mount.mountpoint / "Band/Album/cover.jpg"
    assert os.stat(cover).st_size == len(picture)
    assert cover.read_bytes() == picture
    with open(cover, "rb") as f:
        f.seek(100_000)
        assert f.read(1000) == picture[100_000:101_000]
