"""Audio tags, read with mutagen through the origin interface.

mutagen parses a file object; :class:`OriginFile` is one whose reads are range reads of the
origin in blocks, so only what the parser asks for is fetched: the head (FLAC metadata blocks,
ID3v2, Ogg headers, MP4 atoms) and, where a format keeps tags there, the tail (ID3v1, APEv2).
Never the whole file: remote origins pay per byte and per round trip.

:func:`read_tags` normalises what the formats call artist, album, track and so on into one
small dict (:data:`FIELDS`), NFC-normalised. A file whose tags cannot be read is not an error
here: it gets ``None`` and is placed by the layout with its fallbacks.
"""
from __future__ import annotations

import base64
import io
import logging
import os
import unicodedata

import xxhash

from ..errors import MusicfsError
from ..origins.base import KIND_FILE, OriginEntry

log = logging.getLogger(__name__)

# What a tag record holds. Numbers stay strings as tagged ("3/12"); the layout interprets them.
# "mb_albumid" is the MusicBrainz release id; "picture" the embedded cover (see _picture).
FIELDS = ("artist", "albumartist", "album", "title", "track", "disc", "date", "genre", "compilation", "format",
          "mb_albumid", "picture")
# Several values of one tag (Vorbis repeated fields, ID3v2.4 lists, MP4 lists) are joined so.
VALUE_SEPARATOR = ", "
# A field is kept to this many characters: path names are cut far shorter anyway, and a tag of
# 1,000 values or a 10 MB text must not make a catalog record of its size.
FIELD_MAX = 1024
# Picture types (ID3 APIC, FLAC PICTURE): the front cover.
FRONT_COVER = 3
# Reads of a file for its tags come in blocks this big: one block holds the usual head (FLAC
# metadata, ID3v2 without big pictures, Ogg headers) in one round trip.
BLOCK = 64 << 10
# Files mutagen is asked about (the layout's audio list); others have no tags to read.
AUDIO_EXTENSIONS = frozenset(
    "flac mp3 ogg oga opus m4a mp4 aac wav aif aiff wv ape mpc wma dsf".split())
# mutagen's class name -> the container's name in the layout ($format)
_FORMATS = {"FLAC": "flac", "MP3": "mp3", "EasyMP3": "mp3", "OggVorbis": "ogg", "OggFLAC": "ogg",
            "OggSpeex": "ogg", "OggTheora": "ogg", "OggOpus": "opus", "MP4": "m4a", "EasyMP4": "m4a",
            "AAC": "aac", "WAVE": "wav", "AIFF": "aiff", "WavPack": "wv", "MonkeysAudio": "ape",
            "Musepack": "mpc", "ASF": "wma", "DSF": "dsf", "TrueAudio": "tta", "OptimFROG": "ofr"}


class OriginFile(io.RawIOBase):
    """A read-only, seekable file object over one origin file, reading blocks on demand."""

    def __init__(self, read, size: int):
        self.read_at = read          # (offset, size) -> bytes: an Origin.reading() function
        self.size = size
        self.position = 0
        self.blocks: dict[int, bytes] = {}
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def _block(self, index: int) -> bytes:
        block = self.blocks.get(index)
        if block is None:
            block = self.read_at(index * BLOCK, BLOCK)
            self.bytes_read += len(block)
            self.blocks[index] = block
        return block

    def head(self) -> bytes:
        """The file's bytes from its start as far as the blocks read so far reach (the parser
        has been through its headers; the file object itself is closed once parsed)."""
        run = []
        while len(run) in self.blocks:
            run.append(self.blocks[len(run)])
        return b"".join(run)

    def find(self, data: bytes) -> int | None:
        """The offset where `data` lies in the blocks read so far, or None. Compares block by
        block: a picture of 50 MB is not copied again to be found."""
        head = data[:256]
        for index in sorted(self.blocks):
            block = self.blocks[index]
            following = self.blocks.get(index + 1, b"")
            window = block + following[:len(head) - 1]   # a head that starts near the block's end
            start = window.find(head)
            while 0 <= start < len(block):
                offset = index * BLOCK + start
                if self._holds(offset, data):
                    return offset
                start = window.find(head, start + 1)
        return None

    def _holds(self, offset: int, data: bytes) -> bool:
        view = memoryview(data)
        done = 0
        while done < len(data):
            index, start = divmod(offset + done, BLOCK)
            block = self.blocks.get(index)
            if block is None:
                return False
            piece = block[start:start + len(data) - done]
            if not piece or view[done:done + len(piece)] != piece:
                return False
            done += len(piece)
        return True

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self.size - self.position)
        if want <= 0:
            return 0
        done = 0
        while done < want:
            index, start = divmod(self.position + done, BLOCK)
            block = self._block(index)
            piece = block[start:start + want - done]
            if not piece:
                break
            buffer[done:done + len(piece)] = piece
            done += len(piece)
        self.position += done
        return done


def _texts(value) -> list[str]:
    """Every text of a tag value, whatever the format made of it."""
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in _texts(item)]
    text = getattr(value, "text", None)   # ID3 frames (a list), ID3 time stamps (a str)
    if isinstance(text, str):
        return [text]
    if text is not None:
        return [t for item in text for t in _texts(item)]
    if isinstance(value, bytes):
        return [value.decode("utf-8", "replace")]
    return [str(value)]


def _joined(value) -> str:
    """All values of a tag as one text (AC/DC stays one artist: "/" is never split)."""
    texts = []
    for text in _texts(value):
        text = text.replace("\0", " ").strip()
        if text and text not in texts:
            texts.append(text)
        if sum(len(t) for t in texts) > FIELD_MAX:
            break
    return VALUE_SEPARATOR.join(texts)


def _first(value) -> str:
    """The first text of a tag value, whatever the format made of it."""
    if isinstance(value, (list, tuple)):
        if not value:
            return ""
        value = value[0]
    text = getattr(value, "text", None)   # ID3 frames (a list), ID3 time stamps (a str)
    if isinstance(text, str):
        return text
    if text is not None:
        return _first(list(text)) if text else ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _pair(value) -> str:
    """MP4 trkn/disk are (number, total) pairs; everything else is text like "3/12"."""
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        number, total = (value[0] + (0, 0))[:2]
        return f"{number}/{total}" if total else str(number)
    return _first(value)


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes")


def _normalise(tags) -> dict:
    """Pick the fields out of any mutagen tag container, whatever its keys."""
    found: dict[str, str] = {}
    if tags is None:
        return found
    items = {}
    for key in tags.keys():
        try:
            items[str(key)] = tags[key]
        except (KeyError, ValueError):
            continue
    lower = {key.lower(): value for key, value in items.items()}

    def pick(field, *keys, convert=_joined):
        for key in keys:
            if key in items:
                text = convert(items[key])
            elif key.lower() in lower:
                text = convert(lower[key.lower()])
            else:
                continue
            if text:
                found[field] = text
                return

    pick("artist", "TPE1", "©ART", "artist", "Author")
    pick("albumartist", "TPE2", "aART", "albumartist", "album artist", "album_artist", "WM/AlbumArtist")
    pick("album", "TALB", "©alb", "album", "WM/AlbumTitle")
    pick("title", "TIT2", "©nam", "title")
    pick("track", "TRCK", "trkn", "tracknumber", "track", "WM/TrackNumber", convert=_pair)
    pick("disc", "TPOS", "disk", "discnumber", "disc", "WM/PartOfSet", convert=_pair)
    pick("date", "TDRC", "TYER", "©day", "date", "year", "originaldate", "WM/Year", convert=_first)
    pick("mb_albumid", "TXXX:MusicBrainz Album Id", "----:com.apple.iTunes:MusicBrainz Album Id",
         "musicbrainz_albumid", "MusicBrainz/Album Id", convert=_first)
    pick("genre", "TCON", "©gen", "genre", "WM/Genre")
    for key in ("tracktotal", "totaltracks"):
        if key in lower and "/" not in found.get("track", "/"):
            found["track"] += "/" + _first(lower[key])
            break
    for key in ("disctotal", "totaldiscs"):
        if key in lower and "/" not in found.get("disc", "/"):
            found["disc"] += "/" + _first(lower[key])
            break
    flag = ""
    for key in ("TCMP", "TXXX:COMPILATION", "TXXX:TCMP", "cpil", "compilation", "WM/IsCompilation"):
        source = items.get(key, lower.get(key.lower()))
        if source is not None:
            flag = "1" if (source is True or source == [True] or _truthy(_first(source))) else ""
            break
    if flag:
        found["compilation"] = "1"
    return {key: unicodedata.normalize("NFC", value.replace("\0", " ").strip()[:FIELD_MAX])
            for key, value in found.items() if value.strip()}


def _pictures(parsed) -> list[tuple[int, str, bytes]]:
    """(type, mime, data) of each picture embedded in a parsed file, in file order."""
    found = []
    for picture in getattr(parsed, "pictures", None) or ():                   # FLAC PICTURE blocks
        found.append((picture.type, picture.mime, picture.data))
    tags = parsed.tags
    if tags is None:
        return found
    if hasattr(tags, "getall"):                                               # ID3 APIC frames
        found += [(frame.type, frame.mime, frame.data) for frame in tags.getall("APIC")]
    covers = tags.get("covr") if type(parsed).__name__ in ("MP4", "EasyMP4") else None
    for cover in covers or ():                                                # MP4: no types; first is the front
        found.append((FRONT_COVER if not found else 0,
                      "image/png" if getattr(cover, "imageformat", 13) == 14 else "image/jpeg", bytes(cover)))
    if type(parsed).__name__.startswith("Ogg"):                              # METADATA_BLOCK_PICTURE
        found += _block_pictures(value for key, value in tags.items() if key.lower() == "metadata_block_picture")
    return found


def _block_pictures(values) -> list[tuple[int, str, bytes]]:
    """The pictures of Vorbis comments' METADATA_BLOCK_PICTURE values (base64 FLAC pictures)."""
    from mutagen.flac import Picture
    found = []
    for value in values:
        for text in (value if isinstance(value, list) else [value]):
            try:
                picture = Picture(base64.b64decode(text))
            except Exception:  # noqa: BLE001 - a broken value is no picture
                continue
            found.append((picture.type, picture.mime, picture.data))
    return found


def front_picture(pictures) -> tuple[int, str, bytes] | None:
    """The front cover (APIC/PICTURE type 3), else the first picture."""
    return next((p for p in pictures if p[0] == FRONT_COVER), pictures[0]) if pictures else None


def _picture(parsed, source: "OriginFile") -> dict | None:
    """Where the front cover (else the first picture) lies in the file: {"offset", "length",
    "mime", "ext"}. The tag view shows it as cover.jpg by reading that piece of the file, so it
    is found among the blocks the parser read, never copied anywhere. A picture stored encoded
    (base64 in an Ogg Vorbis or Opus comment) is the piece of the file holding the comment
    header ({"offset": 0, "window": its end}) decoded again at each read, checked against the
    length and "digest" (XXH3-64) of the picture read here. Others stored transformed (ID3
    unsynchronisation, compression) give none."""
    chosen = front_picture(_pictures(parsed))
    if chosen is None or not chosen[2]:
        return None
    _, mime, data = chosen
    picture = {"length": len(data), "mime": (mime or "image/jpeg").lower(), "ext": _image_ext(data)}
    offset = source.find(data)
    if offset is not None:
        return dict(picture, offset=offset)
    if type(parsed).__name__.startswith("Ogg"):
        head = _ogg_comment_header(io.BytesIO(source.head()))
        if head is not None:
            return dict(picture, offset=0, window=head, digest=xxhash.xxh3_64_hexdigest(data))
    return None


def _ogg_comment_header(fileobj) -> int | None:
    """Where the Ogg pages holding a file's comment header (its second packet) end, or None."""
    from mutagen.ogg import OggPage
    pages = []
    try:
        while True:
            page = OggPage(fileobj)
            if pages and page.serial != pages[0].serial:
                continue
            pages.append(page)
            packets = OggPage.to_packets(pages, strict=False)
            if len(packets) > 2 or (len(packets) == 2 and page.complete):
                return fileobj.tell()
    except Exception:  # noqa: BLE001 - not the pages expected: no cover from it
        return None


def ogg_picture(head: bytes) -> bytes | None:
    """The picture a cover made from an Ogg comment header shows: `head` is the file's bytes
    up to that header's end (see _picture); None when it holds none."""
    from mutagen._vorbis import VComment
    from mutagen.ogg import OggPage
    fileobj = io.BytesIO(head)
    pages = []
    try:
        while fileobj.tell() < len(head):
            page = OggPage(fileobj)
            if not pages or page.serial == pages[0].serial:
                pages.append(page)
        comment = OggPage.to_packets(pages, strict=False)[1]
    except Exception:  # noqa: BLE001
        return None
    for magic in (b"\x03vorbis", b"OpusTags"):
        if comment.startswith(magic):
            try:
                values = VComment(comment[len(magic):], framing=False)
            except Exception:  # noqa: BLE001
                return None
            chosen = front_picture(_block_pictures(v for k, v in values if k.lower() == "metadata_block_picture"))
            return chosen[2] if chosen is not None else None
    return None


# What a picture's first bytes say it is (its mime type may say image/x-png, png, or nothing).
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"), (b"\xff\xd8\xff", "jpg"))


def _image_ext(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in _IMAGE_MAGIC if data.startswith(magic)), "jpg")


# Errors of the origin, not of the file's contents: a read that failed says nothing about
# whether the file is audio (an S3 server gone mid-scan raises OriginTransient, not OSError).
_ORIGIN_ERRORS = (OSError, MusicfsError)


def _parse(mutagen, source: OriginFile):
    """What mutagen makes of a file: its parsed object, None (not a format it knows), or the
    exception that says it is not audio. Errors of the origin itself propagate, also when
    mutagen wrapped them in one of its own."""
    try:
        # The buffer answers mutagen's many small reads and seeks in C; OriginFile is asked
        # only for whole blocks.
        return mutagen.File(io.BufferedReader(source, BLOCK))
    except _ORIGIN_ERRORS:
        raise
    except Exception as e:  # noqa: BLE001 - mutagen raises many kinds on bad files
        if isinstance(e.__cause__ or e.__context__, _ORIGIN_ERRORS):
            raise (e.__cause__ or e.__context__) from None
        return e


def read_tags(origin, relpath: bytes, size: int, expect: OriginEntry | None = None) -> tuple[dict | None, int]:
    """(tags, bytes read) of one origin file; tags is None when the file cannot be parsed
    (one log line). Errors of the origin itself (OSError, OriginUnavailable, OriginChanged...)
    propagate."""
    import mutagen   # here, not at the top: a mount with a stored catalog never needs it (~40 ms)

    with origin.reading(relpath, expect) as read:
        source = OriginFile(read, size)
        parsed = _parse(mutagen, source)
    if isinstance(parsed, Exception):
        log.info("origin %s: %s is not a track: mutagen cannot read it as audio (%s)",
                 origin.name, relpath.decode(errors="replace"), parsed)
        return None, source.bytes_read
    if parsed is None:
        log.info("origin %s: %s is not a track: not an audio format mutagen knows",
                 origin.name, relpath.decode(errors="replace"))
        return None, source.bytes_read
    tags = _normalise(parsed.tags)
    tags["format"] = _FORMATS.get(type(parsed).__name__, "")
    length = getattr(parsed.info, "length", None)
    if length:
        tags["length"] = f"{length:.3f}"   # seconds (an .m3u8's #EXTINF)
    picture = _picture(parsed, source)
    if picture is not None:
        tags["picture"] = picture
    return tags, source.bytes_read


# Bump when read_tags learns something new: every stored record is then read again.
# 2: several values joined, the MusicBrainz release id, where the cover picture lies; a file
#    mutagen cannot read is not a track (null).
TAG_VERSION = 2


class _Notes(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.notes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.notes.append(record.getMessage().split(": ", 1)[-1])


def read_local_tags(name: str, root: bytes, items) -> list[tuple]:
    """read_tags of files of a local origin, in a worker process: [(relpath, tags_json(tags),
    error, notes)] for items (relpath, size, mtime_ns, token). What read_tags logged comes back as
    notes, for the daemon's log (a worker process has none)."""
    from ..origins.local import LocalOrigin
    from ..errors import OriginChanged
    from .records import tags_json
    origin = LocalOrigin(name, os.fsdecode(root))
    log.setLevel(logging.INFO)   # (this process has no logging set up: what is noted goes back)
    done = []
    for relpath, size, mtime_ns, token in items:
        notes = _Notes()
        log.addHandler(notes)
        try:
            expect = OriginEntry(relpath.rpartition(b"/")[2], KIND_FILE, size, mtime_ns, token=token)
            tags, _ = read_tags(origin, relpath, size, expect)
            done.append((relpath, tags_json(tags), None, notes.notes))
        except (OSError, OriginChanged) as e:
            done.append((relpath, None, getattr(e, "strerror", None) or str(e), notes.notes))
        finally:
            log.removeHandler(notes)
    return done
