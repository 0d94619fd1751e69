"""The test audio factory (tests/audio.py) writes real, decodable files carrying exactly the
tags asked for, and the beets reference (tests/beets_reference.py) runs real beets."""
import base64
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
from mutagen.flac import FLAC, Picture
from mutagen.id3 import ID3, ID3NoHeaderError
from mutagen.mp4 import MP4, MP4Cover
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis

from tests.support.audio import FORMATS, make_track, tiny_jpeg, tiny_png

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None,
                                reason="needs ffmpeg (apt-get install ffmpeg)")

BEETS_MISSING = importlib.util.find_spec("beets") is None

EVERY_TAG = {"artist": ["Ärtist One", "Artist Two"], "albumartist": "Älbum Artist", "album": "Ålbum",
             "title": "Tïtle", "track": "3/12", "disc": "1/2", "date": "2004-03-01",
             "genre": ["Rock", "Pop"], "compilation": "1",
             "mb_albumid": "89ad4ac3-39f7-470e-963a-56509c546377"}
# The same tags as Vorbis comments, in the order written: repeated names are repeated comments.
EVERY_TAG_VORBIS = [("ARTIST", "Ärtist One"), ("ARTIST", "Artist Two"), ("ALBUMARTIST", "Älbum Artist"),
                    ("ALBUM", "Ålbum"), ("TITLE", "Tïtle"), ("TRACKNUMBER", "3"), ("TRACKTOTAL", "12"),
                    ("DISCNUMBER", "1"), ("DISCTOTAL", "2"), ("DATE", "2004-03-01"), ("GENRE", "Rock"),
                    ("GENRE", "Pop"), ("COMPILATION", "1"),
                    ("MUSICBRAINZ_ALBUMID", "89ad4ac3-39f7-470e-963a-56509c546377")]


def decode_errors(path: Path) -> str:
    """What ffmpeg says while decoding the whole file: empty when it is clean."""
    result = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
                            capture_output=True, text=True)
    return result.stderr if result.returncode == 0 else f"exit {result.returncode}: {result.stderr}"


def probe_codec(path: Path) -> str:
    result = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height",
                             "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def id3_frames(path: Path) -> dict:
    # translate=False: the frames as stored (a v2.3 tag's TYER/TDAT stay themselves)
    tags = ID3(path, translate=False)
    return {key: [str(text) for text in frame.text] for key, frame in tags.items() if hasattr(frame, "text")}


@pytest.mark.parametrize("ext", FORMATS)
def test_every_format_decodes_cleanly_and_returns_its_bytes(tmp_path, ext):
    path = tmp_path / f"song.{ext}"
    data = make_track(path, EVERY_TAG, picture=tiny_jpeg(1))
    assert data == path.read_bytes()
    assert decode_errors(path) == ""


def test_an_untagged_file_has_no_tags_at_all(tmp_path):
    # ffmpeg's own ENCODER / TSSE / ©too must not survive: "no tag" means none
    for ext in FORMATS:
        make_track(tmp_path / f"bare.{ext}", {})
    assert list(FLAC(tmp_path / "bare.flac").tags or []) == []
    assert list(OggVorbis(tmp_path / "bare.ogg").tags) == []
    assert list(OggOpus(tmp_path / "bare.opus").tags) == []
    assert dict(MP4(tmp_path / "bare.m4a").tags or {}) == {}
    with pytest.raises(ID3NoHeaderError):
        ID3(tmp_path / "bare.mp3")


@pytest.mark.parametrize("ext,reader", [("flac", FLAC), ("ogg", OggVorbis), ("opus", OggOpus)])
def test_vorbis_comment_formats_hold_every_tag_and_repeat_multiple_values(tmp_path, ext, reader):
    make_track(tmp_path / f"song.{ext}", EVERY_TAG)
    assert list(reader(tmp_path / f"song.{ext}").tags) == EVERY_TAG_VORBIS


def test_vorbis_totals_can_be_written_the_ffmpeg_way(tmp_path):
    make_track(tmp_path / "song.flac", {"track": "3/12", "disc": "2/2"}, split_totals=False)
    assert list(FLAC(tmp_path / "song.flac").tags) == [("TRACKNUMBER", "3/12"), ("DISCNUMBER", "2/2")]


def test_id3v24_holds_every_tag_with_null_separated_values(tmp_path):
    make_track(tmp_path / "song.mp3", EVERY_TAG)
    tags = ID3(tmp_path / "song.mp3", translate=False)
    assert tags.version == (2, 4, 0)
    assert id3_frames(tmp_path / "song.mp3") == {
        "TPE1": ["Ärtist One", "Artist Two"], "TPE2": ["Älbum Artist"], "TALB": ["Ålbum"],
        "TIT2": ["Tïtle"], "TRCK": ["3/12"], "TPOS": ["1/2"], "TDRC": ["2004-03-01"],
        "TCON": ["Rock", "Pop"], "TCMP": ["1"],
        "TXXX:MusicBrainz Album Id": ["89ad4ac3-39f7-470e-963a-56509c546377"]}
    # two values are two strings in the frame, stored NUL-separated (not "A / B" text)
    raw = (tmp_path / "song.mp3").read_bytes()
    assert "Ärtist One\x00Artist Two".encode() in raw


def test_id3v23_joins_multiple_values_with_a_slash_and_stores_the_date_as_tyer_tdat(tmp_path):
    make_track(tmp_path / "song.mp3", EVERY_TAG, id3_version=3)
    tags = ID3(tmp_path / "song.mp3", translate=False)
    assert tags.version == (2, 3, 0)
    assert id3_frames(tmp_path / "song.mp3") == {
        "TPE1": ["Ärtist One/Artist Two"], "TPE2": ["Älbum Artist"], "TALB": ["Ålbum"],
        "TIT2": ["Tïtle"], "TRCK": ["3/12"], "TPOS": ["1/2"], "TYER": ["2004"], "TDAT": ["0103"],
        "TCON": ["Rock/Pop"], "TCMP": ["1"],
        "TXXX:MusicBrainz Album Id": ["89ad4ac3-39f7-470e-963a-56509c546377"]}
    # mutagen's reading (translate=True) gives the date back whole
    assert str(ID3(tmp_path / "song.mp3")["TDRC"].text[0]) == "2004-03-01"
    assert decode_errors(tmp_path / "song.mp3") == ""


def test_mp4_holds_every_tag_as_lists_pairs_and_a_compilation_flag(tmp_path):
    make_track(tmp_path / "song.m4a", EVERY_TAG)
    tags = MP4(tmp_path / "song.m4a").tags
    assert dict(tags) == {
        "\xa9ART": ["Ärtist One", "Artist Two"], "aART": ["Älbum Artist"], "\xa9alb": ["Ålbum"],
        "\xa9nam": ["Tïtle"], "trkn": [(3, 12)], "disk": [(1, 2)], "\xa9day": ["2004-03-01"],
        "\xa9gen": ["Rock", "Pop"], "cpil": True,
        "----:com.apple.iTunes:MusicBrainz Album Id": [b"89ad4ac3-39f7-470e-963a-56509c546377"]}


def test_pictures_are_embedded_byte_exact_in_every_format(tmp_path):
    jpeg, png = tiny_jpeg(7), tiny_png(8)

    make_track(tmp_path / "a.flac", {"title": "x"}, picture=png, picture_type=4, picture_mime="image/png")
    [flac_picture] = FLAC(tmp_path / "a.flac").pictures
    assert (flac_picture.data, flac_picture.type, flac_picture.mime) == (png, 4, "image/png")
    assert (flac_picture.width, flac_picture.height) == (8, 8)

    for ext, reader in (("ogg", OggVorbis), ("opus", OggOpus)):
        make_track(tmp_path / f"a.{ext}", {"title": "x"}, picture=jpeg)
        [encoded] = reader(tmp_path / f"a.{ext}").tags["METADATA_BLOCK_PICTURE"]
        picture = Picture(base64.b64decode(encoded))
        assert (picture.data, picture.type, picture.mime) == (jpeg, 3, "image/jpeg")

    for version in (3, 4):
        make_track(tmp_path / f"a{version}.mp3", {"title": "x"}, picture=jpeg, id3_version=version)
        [apic] = ID3(tmp_path / f"a{version}.mp3").getall("APIC")
        assert (apic.data, apic.type, apic.mime) == (jpeg, 3, "image/jpeg")

    make_track(tmp_path / "a.m4a", {"title": "x"}, picture=png, picture_mime="image/png")
    [cover] = MP4(tmp_path / "a.m4a").tags["covr"]
    assert bytes(cover) == png and cover.imageformat == MP4Cover.FORMAT_PNG
    # a file with a picture still decodes (ffmpeg sees the picture as a video stream)
    assert decode_errors(tmp_path / "a.m4a") == "" and decode_errors(tmp_path / "a.flac") == ""


def test_tiny_images_are_valid_and_distinct_per_seed(tmp_path):
    images = {f"{seed}.{kind}": make(seed)
              for seed in (1, 2) for kind, make in (("jpg", tiny_jpeg), ("png", tiny_png))}
    assert len(set(images.values())) == 4
    assert tiny_png(1) == tiny_png(1) and tiny_jpeg(1) == tiny_jpeg(1)
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
        expected = "mjpeg,8,8" if name.endswith("jpg") else "png,8,8"
        assert probe_codec(tmp_path / name) == expected


def test_mistakes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown tag keys"):
        make_track(tmp_path / "a.flac", {"year": "2004"})
    with pytest.raises(ValueError, match="unsupported extension"):
        make_track(tmp_path / "a.wav", {})
    with pytest.raises(ValueError, match="MP4 cover"):
        make_track(tmp_path / "a.m4a", {}, picture=b"GIF89a", picture_mime="image/gif")


# -- the beets reference --------------------------------------------------------------------

def small_library(root: Path) -> None:
    """Two albums (one of two discs, one with unsafe characters), a compilation, a loose track,
    each in its own folder as a rip would leave them, in several formats."""
    alpha = {"artist": "Alpha", "album": "First Light", "date": "2004-03-01"}
    make_track(root / "rips/first/a.flac", {**alpha, "title": "Dawn", "track": "1/2"})
    make_track(root / "rips/first/b.mp3", {**alpha, "title": "Noon", "track": "2/2", "date": "2004"})
    beta = {"artist": "Beta", "albumartist": "Beta", "album": "Second: Wind?", "date": "2010"}
    make_track(root / "rips/second/1.ogg", {**beta, "title": "Gust", "track": "1", "disc": "1/2"})
    make_track(root / "rips/second/2.m4a", {**beta, "title": "Calm", "track": "1", "disc": "2/2"})
    hits = {"album": "Hits", "date": "1999", "compilation": "1"}
    make_track(root / "various/1.flac", {**hits, "artist": "Xi", "title": "One", "track": "1"})
    make_track(root / "various/2.mp3", {**hits, "artist": "Yu", "title": "Two", "track": "2"})
    make_track(root / "loose/track.opus", {"artist": "Solo", "title": "Alone"})


@pytest.mark.skipif(BEETS_MISSING, reason="needs beets (pip install beets)")
def test_beets_files_a_small_library_as_the_musicfs_defaults_do(tmp_path):
    from tests.support.beets_reference import DISC_IF_MANY, MUSICFS_LIKE_PATHS, beets_tree

    small_library(tmp_path / "source")
    tree = beets_tree(tmp_path / "source", tmp_path / "beets", MUSICFS_LIKE_PATHS,
                      group_albums=False, config_overrides=DISC_IF_MANY)
    assert tree == {
        "Alpha/First Light (2004)/01 Dawn.flac",
        "Alpha/First Light (2004)/02 Noon.mp3",
        "Beta/Second_ Wind_ (2010)/1-01 Gust.ogg",
        "Beta/Second_ Wind_ (2010)/2-01 Calm.m4a",
        "Compilations/Hits (1999)/01 One.flac",
        "Compilations/Hits (1999)/02 Two.mp3",
        "Non-Album/Solo/Alone.opus",
    }


@pytest.mark.skipif(BEETS_MISSING, reason="needs beets (pip install beets)")
def test_beets_own_ways_group_by_artist_pad_discs_and_make_no_singletons(tmp_path):
    """Where beets differs from musicfs (see tests/beets_reference.py): with -g a compilation
    without album artist splits by track artist; $disc is padded and always there; in album
    mode a track without album is an album named "" (its folder level disappears)."""
    from tests.support.beets_reference import beets_tree

    small_library(tmp_path / "source")
    paths = {"default": "$albumartist/$album%if{$year, ($year)}/$disc-$track $title",
             "comp": "Compilations/$album/$track $title", "singleton": "Non-Album/$artist/$title"}
    tree = beets_tree(tmp_path / "source", tmp_path / "beets", paths, group_albums=True,
                      no_album_as_singletons=False)
    assert tree == {
        "Alpha/First Light (2004)/00-01 Dawn.flac",
        "Alpha/First Light (2004)/00-02 Noon.mp3",
        "Beta/Second_ Wind_ (2010)/01-01 Gust.ogg",
        "Beta/Second_ Wind_ (2010)/02-01 Calm.m4a",
        "Xi/Hits (1999)/00-01 One.flac",
        "Yu/Hits (1999)/00-02 Two.mp3",
        "Solo/00-00 Alone.opus",
    }
