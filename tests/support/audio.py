"""Real, decodable, small audio files with exact tags, for tests.

    make_track(path, {"artist": "A", "album": "B", "title": "C", "track": "3/12"})

writes 0.3 s of a 440 Hz sine in the format the extension names (.flac, .mp3, .ogg, .opus,
.m4a) and returns the file's bytes. ffmpeg encodes the audio once per format and process (it
is slow to start); each call copies those bytes and tags them with mutagen, so the tags are
exactly the ones asked for: ffmpeg's own tags (encoder, ...) are removed first, and nothing
goes through ffmpeg's generic metadata names, which each muxer maps in its own way.

Tag keys (a value is a str, or a list of str for a tag with several values):

=============  ======================  ==========================  =============================
key            ID3 (.mp3)              Vorbis comment (.flac,      MP4 (.m4a)
                                       .ogg, .opus)
=============  ======================  ==========================  =============================
artist         TPE1                    ARTIST                      ©ART
albumartist    TPE2                    ALBUMARTIST                 aART
album          TALB                    ALBUM                       ©alb
title          TIT2                    TITLE                       ©nam
track "3/12"   TRCK "3/12"             TRACKNUMBER=3,              trkn (3, 12)
                                       TRACKTOTAL=12 (*)
disc "1/2"     TPOS "1/2"              DISCNUMBER=1, DISCTOTAL=2   disk (1, 2)
date           TDRC (v2.4) / TYER +    DATE                        ©day
               TDAT (v2.3, mutagen)
genre          TCON                    GENRE                       ©gen
compilation    TCMP "1"                COMPILATION=1               cpil True
mb_albumid     TXXX:MusicBrainz        MUSICBRAINZ_ALBUMID         ----:com.apple.iTunes:
               Album Id                                            MusicBrainz Album Id
picture=       APIC                    FLAC: PICTURE block;        covr (jpeg or png only; MP4
                                       Ogg/Opus: METADATA_BLOCK_   has no picture type)
                                       PICTURE (base64 of a FLAC
                                       Picture)
=============  ======================  ==========================  =============================

(*) Picard's and beets' way. ``split_totals=False`` writes ffmpeg's way instead:
TRACKNUMBER=3/12 and DISCNUMBER=1/2 in one comment.

Multiple values are real multiple values: repeated Vorbis comments, an ID3 text frame with
several strings, an MP4 list. ID3v2.4 stores them separated by NUL. ID3v2.3 has no such
separator: mutagen joins them with "/" when it saves a v2.3 tag (``v23_sep``), so "A", "B" is
read back as the single value "A/B" there.

A missing key is no tag at all; ``make_track(path, {})`` is an untagged file.
"""
from __future__ import annotations

import base64
import functools
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

from mutagen.flac import FLAC, Picture
from mutagen.id3 import (APIC, ID3, TALB, TCMP, TCON, TDRC, TIT2, TPE1, TPE2, TPOS, TRCK,
                         TXXX, Encoding)
from mutagen.mp4 import MP4, MP4Cover, MP4FreeForm
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis

# Real audio files with awkward names and tags, in two origins.
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "music"


SECONDS = 0.3
FORMATS = ("flac", "mp3", "ogg", "opus", "m4a")
TAG_KEYS = ("artist", "albumartist", "album", "title", "track", "disc", "date", "genre",
            "compilation", "mb_albumid")

# ffmpeg's encoder per format; the muxer follows from the extension. Named explicitly because
# .ogg would otherwise hold FLAC when ffmpeg was built without libvorbis.
_ENCODERS = {"flac": ["-c:a", "flac"], "mp3": ["-c:a", "libmp3lame", "-id3v2_version", "0"],
             "ogg": ["-c:a", "libvorbis"], "opus": ["-c:a", "libopus"], "m4a": ["-c:a", "aac"]}

_VORBIS_NAMES = {"artist": "ARTIST", "albumartist": "ALBUMARTIST", "album": "ALBUM",
                 "title": "TITLE", "date": "DATE", "genre": "GENRE",
                 "compilation": "COMPILATION", "mb_albumid": "MUSICBRAINZ_ALBUMID"}
_ID3_FRAMES = {"artist": TPE1, "albumartist": TPE2, "album": TALB, "title": TIT2, "track": TRCK,
               "disc": TPOS, "date": TDRC, "genre": TCON, "compilation": TCMP}
_MP4_ATOMS = {"artist": "\xa9ART", "albumartist": "aART", "album": "\xa9alb", "title": "\xa9nam",
              "date": "\xa9day", "genre": "\xa9gen"}
MP4_MB_ALBUMID = "----:com.apple.iTunes:MusicBrainz Album Id"
ID3_MB_ALBUMID = "MusicBrainz Album Id"

# The untagged encoded bytes per extension, made on first use.
_encoded: dict[str, bytes] = {}


def make_track(path: Path, tags: dict, *, picture: bytes | None = None, picture_type: int = 3,
               picture_mime: str = "image/jpeg", id3_version: int = 4,
               split_totals: bool = True) -> bytes:
    """Write a real audio file at `path` (format from its extension) tagged with exactly `tags`
    (see the module docstring) and return its bytes. `picture` embeds that image with the
    given APIC/FLAC picture type (3: front cover) and MIME type. `id3_version` (4 or 3) is for
    .mp3 only; `split_totals` for the Vorbis-comment formats only."""
    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise ValueError(f"make_track: unsupported extension {path.suffix!r} (one of {FORMATS})")
    unknown = set(tags) - set(TAG_KEYS)
    if unknown:
        raise ValueError(f"make_track: unknown tag keys {sorted(unknown)} (known: {TAG_KEYS})")
    if id3_version not in (3, 4):
        raise ValueError("make_track: id3_version is 3 or 4")
    values = {key: [value] if isinstance(value, str) else list(value) for key, value in tags.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_untagged(ext))
    if ext == "mp3":
        _tag_id3(path, values, picture, picture_type, picture_mime, id3_version)
    elif ext == "m4a":
        _tag_mp4(path, values, picture, picture_mime)
    else:
        _tag_vorbis(path, ext, values, picture, picture_type, picture_mime, split_totals)
    return path.read_bytes()


def _untagged(ext: str) -> bytes:
    if ext not in _encoded:
        if shutil.which("ffmpeg") is None:
            raise RuntimeError("tests/audio.py needs ffmpeg (apt-get install ffmpeg)")
        with tempfile.TemporaryDirectory(prefix="musicfs-audio-") as scratch:
            target = Path(scratch) / f"untagged.{ext}"
            # bitexact and no metadata: nothing of ffmpeg's version ends up in the file.
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi",
                            "-i", f"sine=frequency=440:duration={SECONDS}", "-map_metadata", "-1",
                            "-fflags", "+bitexact", "-flags:a", "+bitexact", *_ENCODERS[ext],
                            str(target)], check=True, capture_output=True)
            _encoded[ext] = target.read_bytes()
    return _encoded[ext]


def _flac_picture(data: bytes, picture_type: int, mime: str) -> Picture:
    picture = Picture()
    picture.type = picture_type
    picture.mime = mime
    picture.desc = ""
    picture.data = data
    size = image_size(data)
    if size:
        picture.width, picture.height = size
        picture.depth = 24
    return picture


def _tag_vorbis(path: Path, ext: str, values: dict, picture, picture_type, mime, split_totals):
    audio = {"flac": FLAC, "ogg": OggVorbis, "opus": OggOpus}[ext](path)
    if audio.tags is None:
        audio.add_tags()
    audio.tags.clear()                       # ffmpeg's ENCODER and any other comment
    if ext == "flac":
        audio.clear_pictures()
    comments = []
    for key, items in values.items():
        if key in ("track", "disc"):
            number_name, total_name = (("TRACKNUMBER", "TRACKTOTAL") if key == "track"
                                       else ("DISCNUMBER", "DISCTOTAL"))
            for item in items:
                number, slash, total = item.partition("/")
                if split_totals:
                    comments.append((number_name, number))
                    if slash:
                        comments.append((total_name, total))
                else:
                    comments.append((number_name, item))
        else:
            comments += [(_VORBIS_NAMES[key], item) for item in items]
    # Appended pair by pair, so repeated names stay repeated comments in the given order.
    audio.tags.extend(comments)
    if picture is not None:
        block = _flac_picture(picture, picture_type, mime)
        if ext == "flac":
            audio.add_picture(block)
        else:
            audio.tags["METADATA_BLOCK_PICTURE"] = [base64.b64encode(block.write()).decode("ascii")]
    audio.save()


def _tag_id3(path: Path, values: dict, picture, picture_type, mime, id3_version):
    if not values and picture is None:
        return                               # untagged: no ID3 header at all, as encoded
    tags = ID3()                             # a fresh tag: the encoded file has none
    for key, items in values.items():
        if key == "mb_albumid":
            tags.add(TXXX(encoding=Encoding.UTF8, desc=ID3_MB_ALBUMID, text=items))
        else:
            tags.add(_ID3_FRAMES[key](encoding=Encoding.UTF8, text=items))
    if picture is not None:
        tags.add(APIC(encoding=Encoding.UTF8, mime=mime, type=picture_type, desc="", data=picture))
    if id3_version == 3:
        # v2.3 has no TDRC: TYER (the year) and TDAT (DDMM). On save mutagen also turns UTF-8
        # into UTF-16 (v2.3 has no UTF-8) and joins several values with v23_sep.
        tags.update_to_v23()
    tags.save(path, v1=0, v2_version=id3_version, v23_sep="/")


def _mp4_pair(text: str) -> tuple[int, int]:
    number, _, total = text.partition("/")
    return int(number), int(total or 0)


def _tag_mp4(path: Path, values: dict, picture, mime):
    audio = MP4(path)
    if audio.tags is None:
        audio.add_tags()
    audio.tags.clear()                       # ffmpeg's ©too
    for key, items in values.items():
        if key in _MP4_ATOMS:
            audio.tags[_MP4_ATOMS[key]] = items
        elif key == "track":
            audio.tags["trkn"] = [_mp4_pair(item) for item in items]
        elif key == "disc":
            audio.tags["disk"] = [_mp4_pair(item) for item in items]
        elif key == "compilation":
            # cpil is a single flag: any value other than "" / "0" sets it
            audio.tags["cpil"] = any(item not in ("", "0") for item in items)
        elif key == "mb_albumid":
            audio.tags[MP4_MB_ALBUMID] = [MP4FreeForm(item.encode()) for item in items]
    if picture is not None:
        formats = {"image/jpeg": MP4Cover.FORMAT_JPEG, "image/png": MP4Cover.FORMAT_PNG}
        if mime not in formats:
            raise ValueError(f"make_track: an MP4 cover is image/jpeg or image/png, not {mime}")
        audio.tags["covr"] = [MP4Cover(picture, imageformat=formats[mime])]
    audio.save()


# -- images ------------------------------------------------------------------------------------

def _seed_color(seed: int) -> tuple[int, int, int]:
    # spread neighbouring seeds over the colour space, so the images look different too
    mixed = (seed * 2654435761) & 0xFFFFFF
    return mixed >> 16, (mixed >> 8) & 0xFF, mixed & 0xFF


def tiny_png(seed: int) -> bytes:
    """A valid 8x8 RGB PNG, one colour from `seed`; a tEXt chunk holding the seed keeps the
    bytes distinct for every seed even where two colours would coincide."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    width = height = 8
    row = b"\x00" + bytes(_seed_color(seed)) * width           # filter byte 0, then RGB pixels
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"tEXt", b"Comment\x00seed " + str(seed).encode())
            + chunk(b"IDAT", zlib.compress(row * height))
            + chunk(b"IEND", b""))


@functools.lru_cache(maxsize=None)
def tiny_jpeg(seed: int) -> bytes:
    """A valid 8x8 JPEG made by ffmpeg, one colour from `seed`; a COM segment holding the seed
    keeps the bytes distinct for every seed (JPEG quantisation may merge near colours)."""
    red, green, blue = _seed_color(seed)
    with tempfile.TemporaryDirectory(prefix="musicfs-image-") as scratch:
        target = Path(scratch) / "tiny.jpg"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi",
                        "-i", f"color=c=0x{red:02x}{green:02x}{blue:02x}:s=8x8", "-frames:v", "1",
                        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-c:v", "mjpeg",
                        "-f", "image2", str(target)], check=True, capture_output=True)
        data = target.read_bytes()
    comment = b"seed " + str(seed).encode()
    assert data[:2] == b"\xff\xd8", "ffmpeg wrote no JPEG"
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or baseline/progressive JPEG, or None for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        at = 2
        while at + 4 <= len(data) and data[at] == 0xFF:
            marker = data[at + 1]
            length = struct.unpack(">H", data[at + 2:at + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                height, width = struct.unpack(">HH", data[at + 5:at + 9])
                return width, height
            at += 2 + length
    return None
