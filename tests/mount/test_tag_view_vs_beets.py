"""The tag view against the reference: real beets (`beet import -A`, as-is) filing the same real
audio files with the same path formats (tests/beets_reference.py) must give the same tree.

The library is one where beets' rules and the brief's agree (beets groups albums by folder and
takes album-level fields from an album's first file; the brief groups by tags and takes the
majority year): every album in its own folder with consistent album tags. Where they differ on
purpose (multi-valued tags, $genre, missing album or title, albums spread over folders) the
tag view follows the brief, and tests/test_tag_rules.py tests that.
"""
import shutil

import pytest

from tests.support.audio import make_track
from tests.support.mounts import TAGS, tree

beets_reference = pytest.importorskip("tests.support.beets_reference", reason="needs beets (pip install '.[test]')")

pytestmark = [pytest.mark.mount, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")]

AUDIO = (".flac", ".mp3", ".ogg", ".opus", ".m4a")


def write_library(root):
    """Albums, a two-disc album, a compilation, singletons and awkward names, in five formats."""
    def put(relpath, tags, **options):
        make_track(root / relpath, tags, **options)

    band = {"artist": "The Band", "albumartist": "The Band", "date": "2004-03-01"}
    for n, ext in enumerate(("flac", "mp3", "ogg"), 1):
        put(f"The Band/First/{n}.{ext}", {**band, "album": "First", "title": f"Song {n}", "track": f"{n}/3"})
    for disc in (1, 2):
        for n in (1, 2):
            put(f"The Band/Double/CD{disc}/{n}.flac", {**band, "album": "Double", "date": "2010",
                                                      "title": f"Part {disc}.{n}", "track": str(n),
                                                      "disc": f"{disc}/2"})
    for n, (artist, ext) in enumerate((("Ann", "m4a"), ("Bob", "opus"), ("Cy", "mp3")), 1):
        # (no album artist tag: beets makes an album whose artists differ a compilation; tagged
        # "Various Artists" on every track it is that artist's album to beets, a compilation
        # to the brief)
        put(f"Various/Hits/{n}.{ext}", {"artist": artist, "album": "Hits",
                                        "title": f"Hit {n}", "track": str(n), "compilation": "1", "date": "1999"})
    put("odd/1.flac", {"artist": "AC/DC", "albumartist": "AC/DC", "album": "What? Live: *Loud*",
                       "title": '"Quoted" <angle> |pipe|', "track": "1"})
    put("odd/2.flac", {"artist": "AC/DC", "albumartist": "AC/DC", "album": "What? Live: *Loud*",
                       "title": ".hidden title", "track": "2"})
    put("odd/3.flac", {"artist": "AC/DC", "albumartist": "AC/DC", "album": "What? Live: *Loud*",
                       "title": "Ends with a dot.", "track": "3"})
    put("Ångström/1.ogg", {"artist": "Ångström", "albumartist": "Ångström", "album": "Ünïcode",
                           "title": "日本語", "track": "1"})
    put("loose/a.mp3", {"artist": "Solo", "title": "Single One"})
    put("loose/b.m4a", {"artist": "Solo", "title": "Single Two"})


def test_the_tag_view_files_a_library_as_beets_does(tmp_path, mounted):
    library = tmp_path / "nas"
    write_library(library)
    expected = beets_reference.beets_tree(library, tmp_path / "beets", beets_reference.MUSICFS_LIKE_PATHS,
                                          group_albums=False, config_overrides=beets_reference.DISC_IF_MANY)
    service, mount = mounted([("nas", library)], **TAGS)
    shown = {path for path in tree(mount.mountpoint) if path.endswith(AUDIO)}
    assert len(expected) == 16
    assert shown == expected, f"only in musicfs: {sorted(shown - expected)}; only in beets: {sorted(expected - shown)}"
