"""Search and smart collections on real mounts of real audio (tests/audio.py): `musicfs search`,
MOUNTPOINT/.search/QUERY/ and MOUNTPOINT/.collections/ (README "Search and collections")."""
import errno
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from musicfs.catalog.records import FIRST_SEEN
from musicfs.database import Storage

from testkit.process import wait_until
from tests.support.mounts import TAGS, Daemon, run_musicfs, tree

pytestmark = [pytest.mark.mount,
              pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")]

LIBRARY = [
    # relpath, tags
    ("jazz/kob/1.flac", {"artist": "Miles Davis", "album": "Kind of Blue", "title": "So What", "track": "1",
                         "date": "1959", "genre": "Jazz"}),
    ("jazz/kob/2.mp3", {"artist": "Miles Davis", "album": "Kind of Blue", "title": "Freddie Freeloader",
                        "track": "2", "date": "1959", "genre": "Jazz"}),
    ("jazz/tutu/1.m4a", {"artist": "Miles Davis", "album": "Tutu", "title": "Tutu", "track": "1", "date": "1986",
                         "genre": "Jazz Fusion"}),
    ("rock/x/1.ogg", {"artist": "The Band", "album": "Stage Fright", "title": "Sleeping", "track": "1",
                      "date": "1970", "genre": "Rock"}),
    ("rock/x/2.opus", {"artist": "The Band", "album": "Stage Fright", "title": "Time to Kill", "track": "2",
                       "date": "1970", "genre": "Rock"}),
    ("mix/1.flac", {"artist": "Ann", "album": "Hits of 1984", "title": "Blue Song", "compilation": "1",
                    "date": "1984", "genre": "Pop", "disc": "2/2", "track": "1"}),
    ("mix/2.flac", {"artist": "Bob", "album": "Hits of 1984", "title": "Other", "compilation": "1",
                    "date": "1984", "genre": "Pop", "disc": "1/2", "track": "3"}),
]


@pytest.fixture
def collection(tmp_path, library):
    for relpath, tags in LIBRARY:
        library("nas", relpath, tags)
    return tmp_path / "nas"


def search(mountpoint, query, *extra):
    result = run_musicfs("search", mountpoint, query, *extra)
    lines = [os.path.relpath(line, mountpoint) for line in result.stdout.splitlines()] if "--json" not in extra \
        else result.stdout
    return result.returncode, lines, result.stderr


@pytest.fixture
def daemon(tmp_path, collection):
    d = Daemon(tmp_path, [("nas", collection)], **TAGS)
    yield d
    d.stop()


def test_every_query_form_through_the_command(daemon):
    mnt = daemon.mount().mountpoint
    kob = ["Miles Davis/Kind of Blue (1959)/01 So What.flac", "Miles Davis/Kind of Blue (1959)/02 Freddie Freeloader.mp3"]
    assert search(mnt, "miles kind")[:2] == (0, kob)                              # bare words, AND
    assert search(mnt, "artist:MILES year:1950..1960")[:2] == (0, kob)             # case, range
    assert search(mnt, "artist:MILES", "year:1950..1960")[:2] == (0, kob)          # several arguments
    assert search(mnt, "year:1980..")[1] == ["Miles Davis/Tutu (1986)/01 Tutu.m4a",      # album artist (then
                                             "Compilations/Hits of 1984 (1984)/1-03 Other.flac",  # Various Artists),
                                             "Compilations/Hits of 1984 (1984)/2-01 Blue Song.flac"]  # disc, track
    assert search(mnt, 'album:"stage fright" -title:time')[1] == ["The Band/Stage Fright (1970)/01 Sleeping.ogg"]
    assert search(mnt, '"time to"')[1] == ["The Band/Stage Fright (1970)/02 Time to Kill.opus"]
    assert search(mnt, "blue")[1] == [*kob, "Compilations/Hits of 1984 (1984)/2-01 Blue Song.flac"]  # album, title
    assert len(search(mnt, "genre:jazz")[1]) == 3 and len(search(mnt, "-genre:jazz")[1]) == 4
    assert search(mnt, "comp:1 format:flac")[1][0].startswith("Compilations/")
    assert search(mnt, "path:rock/x origin:nas format:opus")[1] == ["The Band/Stage Fright (1970)/02 Time to Kill.opus"]
    assert len(search(mnt, "added:1h")[1]) == 7
    assert search(mnt, "miles", "--limit", "1")[1] == kob[:1]
    code, output, _ = search(mnt, "genre:rock", "--json")
    report = json.loads(output)
    assert code == 0 and report["count"] == 2 and report["tracks"][0]["title"] == "Sleeping"
    assert report["tracks"][0]["path"] == str(mnt / "The Band/Stage Fright (1970)/01 Sleeping.ogg")
    assert search(mnt, "nothing-like-this")[:2] == (1, [])
    code, _, error = search(mnt, "year:1990..1980")
    assert code == 2 and error.strip() == "musicfs: bad query: year:1990..1980: the range is empty (1990 is after 1980)"
    assert search(mnt, "bogus:x")[0] == 2


def test_search_folders_hold_symlinks_that_read_byte_exact(daemon, collection):
    mnt = daemon.mount().mountpoint
    folder = mnt / ".search" / "genre:rock"
    assert sorted(os.listdir(folder)) == ["001. The Band - Sleeping.ogg", "002. The Band - Time to Kill.opus"]
    link = folder / "002. The Band - Time to Kill.opus"
    assert os.readlink(link) == "../../The Band/Stage Fright (1970)/02 Time to Kill.opus"
    assert link.read_bytes() == (collection / "rock/x/2.opus").read_bytes()
    assert os.listdir(mnt / ".search") == []                           # nothing listed in .search itself
    with pytest.raises(FileNotFoundError):
        os.listdir(mnt / ".search" / "year:1990..1980")                 # does not parse: not there
    assert sorted(os.listdir(mnt)) == [".collections", ".search", "Compilations", "Miles Davis", "The Band"]


def test_a_collection_playlist_plays_and_a_find_counts_each_track_once(tmp_path, collection):
    daemon = Daemon(tmp_path, [("nas", collection)], **TAGS)
    config = daemon.config.read_text() + '[[collections]]\nname = "Old Jazz"\nquery = "genre:jazz year:..1970"\n'
    daemon.config.write_text(config)
    try:
        mnt = daemon.mount().mountpoint
        assert sorted(os.listdir(mnt / ".collections")) == ["Old Jazz", "Old Jazz.m3u8"]
        playlist = (mnt / ".collections" / "Old Jazz.m3u8").read_text()
        lines = playlist.splitlines()
        assert lines[0] == "#EXTM3U" and lines[1] == "#EXTINF:0,Miles Davis - So What"   # (0.3 s files)
        assert lines[2] == "../Miles Davis/Kind of Blue (1959)/01 So What.flac" and len(lines) == 5
        for path in lines[2::2]:
            decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(mnt / ".collections" / path), "-f", "null",
                                      "-"], capture_output=True, text=True)
            assert decoded.returncode == 0 and not decoded.stderr, decoded.stderr
        assert [p.name for p in (mnt / ".collections" / "Old Jazz").iterdir()] == \
            ["001. Miles Davis - So What.flac", "002. Miles Davis - Freddie Freeloader.mp3"]
        found = subprocess.run(["find", str(mnt), "-type", "f"], capture_output=True, text=True, check=True)
        tracks = [line for line in found.stdout.splitlines() if not line.endswith(".m3u8")]
        assert len(tracks) == len(LIBRARY) == len(set(tracks))
    finally:
        daemon.stop()


def test_added_is_when_the_catalog_first_saw_a_track_across_remounts_and_retags(daemon, collection, library):
    mnt = daemon.mount().mountpoint
    daemon.stop()
    storage = Storage(daemon.cache_dir)          # (the daemon is stopped: the cache is ours)
    with storage.begin(write=True) as txn:
        long_ago = FIRST_SEEN.pack(time.time_ns() - 60 * 86400 * 10**9)
        for relpath, _ in LIBRARY[1:]:
            txn.put(relpath.encode(), long_ago, db=storage.first_seen)
    storage.close()
    daemon.mount()
    assert search(mnt, "added:30d")[1] == ["Miles Davis/Kind of Blue (1959)/01 So What.flac"]
    # a retag is not an addition; a new file is
    retagged = library("nas", "rock/x/2.opus.tmp", {**LIBRARY[4][1], "title": "Time to Kill (Live)"}, ext="opus")
    os.replace(collection / "rock/x/2.opus.tmp", collection / "rock/x/2.opus")
    library("nas", "new/1.flac", {"artist": "Newcomer", "album": "Debut", "title": "First"})
    assert run_musicfs("rescan", mnt).returncode == 0
    assert search(mnt, "added:30d")[1] == ["Miles Davis/Kind of Blue (1959)/01 So What.flac",
                                           "Newcomer/Debut/First.flac"]
    assert (mnt / "The Band/Stage Fright (1970)/02 Time to Kill (Live).opus").read_bytes() == retagged
    assert sorted(os.listdir(mnt / ".collections" / "Recently Added")) == ["001. Miles Davis - So What.flac",
                                                                           "002. Newcomer - First.flac"]


def test_collections_follow_retags_and_reloads(daemon, collection, library):
    mnt = daemon.mount().mountpoint
    jazz = '[[collections]]\nname = "Jazz"\nquery = "genre:jazz"\n'
    daemon.config.write_text(daemon.config.read_text() + jazz)
    os.kill(daemon.pid, signal.SIGHUP)
    # (a listing, not a lookup: the kernel remembers a lookup's "no such file" for negative_timeout,
    # and the reload waits for the rescan that follows the mount)
    wait_until(lambda: "Jazz" in os.listdir(mnt / ".collections"), timeout=30,
               message="the Jazz collection after SIGHUP")
    assert not os.path.exists(mnt / ".collections" / "Recently Added")    # configured ones replace the default
    assert len(os.listdir(mnt / ".collections" / "Jazz")) == 3
    library("nas", "rock/x/1.ogg.tmp", {**LIBRARY[3][1], "genre": "Jazz Rock"}, ext="ogg")
    os.replace(collection / "rock/x/1.ogg.tmp", collection / "rock/x/1.ogg")
    assert run_musicfs("rescan", mnt).returncode == 0
    assert "004. The Band - Sleeping.ogg" in os.listdir(mnt / ".collections" / "Jazz")
    assert "#EXTINF:0,The Band - Sleeping" in (mnt / ".collections" / "Jazz.m3u8").read_text()
    # a collection whose query does not parse is refused on reload; the old ones stay
    daemon.config.write_text(daemon.config.read_text() + '[[collections]]\nname = "Bad"\nquery = "year:x..y"\n')
    os.kill(daemon.pid, signal.SIGHUP)
    wait_until(lambda: "collections[1] (Bad).query" in daemon.log(), message="the refused reload's log line")
    assert sorted(os.listdir(mnt / ".collections")) == ["Jazz", "Jazz.m3u8"]


def test_a_bad_collection_is_refused_at_mount_naming_it(tmp_path, collection):
    daemon = Daemon(tmp_path, [("nas", collection)], **TAGS)
    daemon.config.write_text(daemon.config.read_text() + '[[collections]]\nname = "80s"\nquery = "year:1980-1989"\n'
                             '[[collections]]\nname = "Bad"\nquery = "decade:80s"\n')
    result = daemon.start()
    assert result.returncode == 2
    assert result.stderr.strip() == (f"musicfs: {daemon.config}: collections[1] (Bad).query: unknown field decade: "
                                     "(known: artist, albumartist, album, title, genre, year, format, origin, "
                                     "comp, path, added)")
    assert not os.listdir(daemon.mountpoint)


def test_a_bad_query_folder_is_enoent_and_the_paths_layout_has_no_smart_folders(tmp_path, collection):
    daemon = Daemon(tmp_path, [("nas", collection)])           # the paths layout
    try:
        mnt = daemon.mount().mountpoint
        assert ".search" not in os.listdir(mnt)
        with pytest.raises(OSError) as info:
            os.stat(mnt / ".search" / "genre:rock")
        assert info.value.errno == errno.ENOENT
        assert sorted(tree(mnt)) == sorted(relpath for relpath, _ in LIBRARY)
    finally:
        daemon.stop()


def test_a_playlist_line_is_one_line_whatever_the_tags_say(tmp_path, library, collection):
    library("nas", "evil/1.ogg", {"artist": "Aaa\nBand", "album": "X", "title": "First\n../../etc/passwd\r\n#EXTINF:1,x"})
    daemon = Daemon(tmp_path, [("nas", collection)], **TAGS)
    try:
        mnt = daemon.mount().mountpoint
        lines = (mnt / ".collections" / "Recently Added.m3u8").read_text().split("\n")
        assert "#EXTINF:0,Aaa Band - First ../../etc/passwd  #EXTINF:1,x" in lines
        assert not any(line.startswith("../../etc") for line in lines)
        assert all(line.startswith(("#EXTINF:", "#EXTM3U", "../")) for line in lines if line)
    finally:
        daemon.stop()


def test_an_open_playlist_reads_as_it_was_opened(daemon, collection, library):
    mnt = daemon.mount().mountpoint
    playlist = mnt / ".collections" / "Recently Added.m3u8"
    fd = os.open(playlist, os.O_RDONLY)
    try:
        before = os.pread(fd, 40, 0)
        library("nas", "rock/x/1.ogg.tmp", {**LIBRARY[3][1], "title": "A much longer title than before"}, ext="ogg")
        os.replace(collection / "rock/x/1.ogg.tmp", collection / "rock/x/1.ogg")
        assert run_musicfs("rescan", mnt).returncode == 0
        whole = before + os.pread(fd, 100_000, 40)
    finally:
        os.close(fd)
    assert "Sleeping" in whole.decode() and "A much longer title" not in whole.decode()
    assert "A much longer title than before" in playlist.read_text()        # a new open: the new one


def test_recently_added_keeps_the_newest_when_over_the_limit(tmp_path, collection, library):
    daemon = Daemon(tmp_path, [("nas", collection)], search={"limit": 3}, **TAGS)
    try:
        mnt = daemon.mount().mountpoint
        library("nas", "zz/1.flac", {"artist": "ZZ Top", "album": "Eliminator", "title": "Legs", "date": "1983"})
        assert run_musicfs("rescan", mnt).returncode == 0
        listed = sorted(os.listdir(mnt / ".collections" / "Recently Added"))
        assert len(listed) == 3 and any("ZZ Top - Legs" in name for name in listed)
        assert len(search(mnt, "added:1h")[1]) == len(LIBRARY) + 1              # (the command has no limit)
    finally:
        daemon.stop()
