"""The catalog's records: the only code that knows their byte layout and key formats.

The layout of every database is specified in :mod:`musicfs.database`; this module encodes and
decodes the catalog's part of it (``origin_files``, ``tags``, ``entries``, ``children`` and the
derived tag-view databases). Everything else asks through these functions or through
:class:`musicfs.catalog.index.Catalog`, never slicing a value itself.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import xxhash

from ..origins.base import KIND_DIR, KIND_FILE, OriginEntry
from ..database import U64

ENTRY_HEAD = struct.Struct(">BQQB")        # kind, size, mtime_ns, number of sources
ORIGIN_RECORD = struct.Struct(">BQQQ")     # kind, size, mtime_ns, scan generation; then the token
# A piece of the source: offset, the source's size, and for a picture stored encoded (an Ogg
# comment's base64) the length of the head it is decoded from and the XXH3-64 of the picture.
SLICE = struct.Struct(">QQQQ")
LEN16 = struct.Struct(">H")
ROOT = b"/"


# -- keys --------------------------------------------------------------------------------------

def origin_key(origin: str, relpath: bytes) -> bytes:
    """The key of one origin's file in ``origin_files``, ``tags``, ``manifests`` and ``pins``."""
    return origin.encode() + b"\0" + relpath


def origin_prefix(origin: str) -> bytes:
    """The prefix every key of `origin` starts with (see origin_key)."""
    return origin.encode() + b"\0"


def split_origin_key(key: bytes) -> tuple[str, bytes]:
    """(origin name, path on the origin) of an origin_key."""
    origin, _, relpath = bytes(key).partition(b"\0")
    return origin.decode(), relpath


def child_key(path: bytes) -> bytes:
    """The ``children`` key listing `path` in its parent directory."""
    parent, name = split(path)
    return parent + b"\0" + name


def children_prefix(directory: bytes) -> bytes:
    return directory + b"\0"


def split(path: bytes) -> tuple[bytes, bytes]:
    """(parent, name) of a shown path."""
    parent, _, name = path.rpartition(b"/")
    return (parent or ROOT), name


def shown_path(relpath: bytes) -> bytes:
    """Where a path on an origin appears in the paths view (identity layout)."""
    return ROOT + relpath


# -- entries: the shown tree --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CatalogEntry:
    kind: int
    size: int
    mtime_ns: int
    sources: tuple[tuple[str, bytes], ...]   # (origin name, path on the origin), preferred first
    token: bytes = b""                       # the content's version (see content_version)
    # A file shown as a piece of its sources (a cover picture embedded in a track): its bytes
    # are the source's from `offset`, `size` of them; the sources are `source_size` long. With a
    # `window`, they are the picture decoded from the source's first `window` bytes, whose
    # XXH3-64 is `digest`.
    offset: int = 0
    source_size: int | None = None
    window: int = 0
    digest: int = 0

    @property
    def is_dir(self) -> bool:
        return self.kind == KIND_DIR

    @property
    def is_slice(self) -> bool:
        return self.source_size is not None


def encode_entry(kind: int, size: int, mtime_ns: int, sources, token: bytes = b"",
                 piece: tuple[int, int, int, int] | None = None) -> bytes:
    """`piece`: (offset, source size, window, digest) for an entry that shows a piece of its
    sources (see CatalogEntry)."""
    parts = [ENTRY_HEAD.pack(kind, size, mtime_ns, len(sources))]
    for origin, relpath in sources:
        name = origin.encode()
        parts += [LEN16.pack(len(name)), name, LEN16.pack(len(relpath)), relpath]
    parts += [LEN16.pack(len(token)), token]
    if piece is not None:
        parts.append(SLICE.pack(*piece))
    return b"".join(parts)


def decode_entry(raw: bytes) -> CatalogEntry:
    kind, size, mtime_ns, count = ENTRY_HEAD.unpack_from(raw)
    pos = ENTRY_HEAD.size
    sources = []
    for _ in range(count):
        (n,) = LEN16.unpack_from(raw, pos)
        origin = bytes(raw[pos + 2:pos + 2 + n]).decode()
        pos += 2 + n
        (n,) = LEN16.unpack_from(raw, pos)
        relpath = bytes(raw[pos + 2:pos + 2 + n])
        pos += 2 + n
        sources.append((origin, relpath))
    (n,) = LEN16.unpack_from(raw, pos)
    token = bytes(raw[pos + 2:pos + 2 + n])
    pos += 2 + n
    if len(raw) >= pos + SLICE.size:
        offset, source_size, window, digest = SLICE.unpack_from(raw, pos)
        return CatalogEntry(kind, size, mtime_ns, tuple(sources), token, offset, source_size, window, digest)
    return CatalogEntry(kind, size, mtime_ns, tuple(sources), token)


def entry_attrs(raw: bytes) -> tuple[int, int, int]:
    """(kind, size, mtime_ns) of a stored entry, without decoding its sources."""
    return ENTRY_HEAD.unpack_from(raw)[:3]


def entry_kind(raw: bytes) -> int:
    return raw[0]


def content_version(origin: str, mtime_ns: int, token: bytes) -> bytes:
    """What an entry records as the version of its content: which origin's copy, its mtime and
    its token. Stays the same when a replica takes over from a copy that went away."""
    return origin.encode() + b"\0" + U64.pack(mtime_ns) + token


def carried_version(old: bytes | None, kind: int, size: int, sources, version: bytes) -> bytes:
    """The content version a changed entry gets: `version`, except when the preferred copy went
    away and a replica of the same size takes over - the same file for open handles (its chunks
    are verified against the digests known), not a new version."""
    if old is None or kind != KIND_FILE:
        return version
    before = decode_entry(old)
    gone_from = before.token.partition(b"\0")[0].decode()
    # (Another file taking over this shown path is a new version whatever its size: the tag view
    # shows the same relative path's copies at one path, as the paths view does.)
    same_file = {r for _, r in before.sources} == {r for _, r in sources}
    if same_file and (before.kind, before.size) == (kind, size) and gone_from in [o for o, _ in before.sources] \
            and gone_from not in [o for o, _ in sources]:
        return before.token
    return version


def version_tag(raw: bytes) -> int:
    """A non-zero 64-bit number naming one version of an entry's content: an open is given it
    as its file handle, and reads that carry another one fail instead of mixing versions."""
    # Called on every open: skip over the sources rather than decode them.
    pos = ENTRY_HEAD.size
    for _ in range(raw[ENTRY_HEAD.size - 1]):            # each source: two u16-prefixed strings
        pos += 2 + LEN16.unpack_from(raw, pos)[0]
        pos += 2 + LEN16.unpack_from(raw, pos)[0]
    return xxhash.xxh3_64_intdigest(bytes(raw[:9]) + bytes(raw[pos:])) or 1   # kind, size, content version


# -- origin_files: what each origin has ---------------------------------------------------------

def encode_record(kind: int, size: int, mtime_ns: int, generation: int, token: bytes) -> bytes:
    return ORIGIN_RECORD.pack(kind, size, mtime_ns, generation) + token


def decode_record(raw: bytes) -> tuple[int, int, int, int, bytes]:
    """(kind, size, mtime_ns, generation, token) of an origin_files record."""
    return (*ORIGIN_RECORD.unpack_from(raw), bytes(raw[ORIGIN_RECORD.size:]))


def record_version(raw: bytes) -> tuple:
    """What identifies the version of an origin file in its record: all but the generation."""
    kind, size, mtime_ns, _, token = decode_record(raw)
    return kind, size, mtime_ns, token


def record_generation(raw: bytes) -> int:
    return ORIGIN_RECORD.unpack_from(raw)[3]


def with_generation(raw: bytes, generation: int) -> bytes:
    kind, size, mtime_ns, _, token = decode_record(raw)
    return encode_record(kind, size, mtime_ns, generation, token)


def entry_version(entry: OriginEntry) -> tuple:
    """An origin listing's entry in the terms of record_version."""
    return entry.kind, entry.size, entry.mtime_ns, entry.token


# -- tags: what each audio file says -------------------------------------------------------------

# A record of the `tags` database: u8 tag reader version, u64 size, u64 mtime_ns, u16 token
# length, the origin file's version token, then the tags as JSON (null: not audio mutagen reads).
TAG_RECORD = struct.Struct(">BQQH")


def tags_json(tags: dict | None) -> bytes:
    """The tags part of a tag record (made where the tags are read: a worker process)."""
    return json.dumps(tags, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


# A record of a file found not to be audio carries its tag reader's version plus this: such
# records written before origin failures were told from unreadable files (tag reader 2 took
# an S3 server gone mid-read for "not audio") are read again once, the others stay current.
NOT_AUDIO_CHECKED = 100


def encode_tags(tag_version: int, entry: OriginEntry, tags: dict | None, encoded: bytes | None = None) -> bytes:
    """A tag record of `tags` (or of their tags_json, `encoded`) read from `entry`'s version."""
    body = tags_json(tags) if encoded is None else encoded
    if body == b"null":
        tag_version += NOT_AUDIO_CHECKED
    return TAG_RECORD.pack(tag_version, entry.size, entry.mtime_ns, len(entry.token)) + entry.token + body


def _tags_read(raw: bytes) -> tuple[int, int, int, bytes]:
    """(tag reader version, size, mtime_ns, token) a tag record was read with and from."""
    version, size, mtime_ns, length = TAG_RECORD.unpack_from(raw)
    return version, size, mtime_ns, bytes(raw[TAG_RECORD.size:TAG_RECORD.size + length])


def tags_are_current(raw: bytes | None, tag_version: int, entry: OriginEntry) -> bool:
    """True if a stored tag record was read from this version of the file by this tag reader."""
    if raw is None:
        return False
    version, size, mtime_ns, token = _tags_read(raw)
    if version == tag_version and raw[TAG_RECORD.size + len(token):] == b"null":
        return False   # "not audio" from before origin failures were told apart: read it again
    return version % NOT_AUDIO_CHECKED == tag_version and entry.same_version(size, mtime_ns, token)


def tags_read_from(raw: bytes, record: tuple) -> bool:
    """Whether a tag record was read from the version of the file an origin record (as
    decode_record gives it) describes."""
    return _tags_read(raw)[1:] == (record[1], record[2], record[4])


def decode_tags(raw: bytes) -> dict | None:
    length = TAG_RECORD.unpack_from(raw)[3]
    return json.loads(bytes(raw[TAG_RECORD.size + length:]))


# -- the tag view's own records (database ``tagview``) -------------------------------------------
# What the tag view keeps beside the shown tree so that a change updates only what it touches.
# Each kind of record has a one-byte prefix; H(x) is the 16-byte XXH3-128 of x (so keys of long
# paths stay within LMDB's 511 bytes).
PLACED = b"p"      # p relpath -> Placement: what the view made of a relative path
MEMBER = b"a"      # a H(album identity) relpath -> b"": the tracks of an album
CLAIM = b"c"       # c H(path) u8 rank relpath -> b"": files wanting one shown path, first wins
DIRECT = b"d"      # d H(folder) album dir -> u32: tracks directly in an origin folder placed there
BELOW = b"b"       # b H(folder) album dir -> u32: tracks anywhere below an origin folder placed there
SIDECAR = b"s"     # s H(folder) relpath -> b"": the sidecars of an origin folder
COVER = b"v"       # v album dir -> the cover.jpg/png path the view made for it
UNPLACED = b"u"    # u relpath -> origin name: audio files mutagen cannot read (not tracks)
SEARCH = b"q"      # q relpath -> search fields: what queries look at of a track
GENERATION = b"g"  # g -> u64: bumped by every change of the tree (what search results depend on)

ROLE_TRACK, ROLE_SINGLETON, ROLE_SIDECAR, ROLE_UNPLACED = 1, 2, 3, 4
PLACEMENT_HEAD = struct.Struct(">B16s")
COUNT = struct.Struct(">I")


def digest16(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)


@dataclass(slots=True)
class Placement:
    """Where the tag view placed one relative path. `base` is the path its rendering asked for
    (claimed; b"" when not placed), `final` the path it got (base, or base with a collision
    suffix), `stem` and `ext` what the suffixed name is made from; `group` its album (a track)."""
    role: int
    group: bytes = bytes(16)
    base: bytes = b""
    final: bytes = b""
    stem: str = ""
    ext: str = ""


def encode_placement(p: Placement) -> bytes:
    stem, ext = p.stem.encode(), p.ext.encode()
    return b"".join((PLACEMENT_HEAD.pack(p.role, p.group), LEN16.pack(len(p.base)), p.base,
                     LEN16.pack(len(p.final)), p.final, LEN16.pack(len(stem)), stem, ext))


def decode_placement(raw: bytes) -> Placement:
    role, group = PLACEMENT_HEAD.unpack_from(raw)
    pos = PLACEMENT_HEAD.size
    parts = []
    for _ in range(3):
        (n,) = LEN16.unpack_from(raw, pos)
        parts.append(bytes(raw[pos + 2:pos + 2 + n]))
        pos += 2 + n
    base, final, stem = parts
    return Placement(role, group, base, final, stem.decode(), bytes(raw[pos:]).decode())


def placed_key(relpath: bytes) -> bytes:
    return PLACED + relpath


def member_key(group: bytes, relpath: bytes) -> bytes:
    return MEMBER + group + relpath


def claim_prefix(path: bytes) -> bytes:
    return CLAIM + digest16(path)


def claim_key(path: bytes, rank: int, relpath: bytes) -> bytes:
    return claim_prefix(path) + bytes((rank,)) + relpath


def folder_prefix(kind: bytes, folder: bytes) -> bytes:
    return kind + digest16(folder)


def sidecar_key(folder: bytes, relpath: bytes) -> bytes:
    return SIDECAR + digest16(folder) + relpath


# What search looks at of a track: its fields as the view rendered them, \x1f-separated.
SEARCH_FIELDS = ("artist", "albumartist", "album", "title", "genre", "year", "format", "origin", "comp", "disc",
                 "track", "ext", "length")
# The first SEARCHED of them are query.Track's fields, in its order (the rest: path, added).
SEARCHED = 9
DISC, TRACK = SEARCH_FIELDS.index("disc"), SEARCH_FIELDS.index("track")


def search_key(relpath: bytes) -> bytes:
    return SEARCH + relpath


def encode_search(values: dict[str, str]) -> bytes:
    return "\x1f".join(values.get(name, "").replace("\x1f", " ") for name in SEARCH_FIELDS).encode()


def decode_search(raw: bytes) -> dict[str, str]:
    return dict(zip(SEARCH_FIELDS, bytes(raw).decode().split("\x1f")))


FIRST_SEEN = U64   # (first_seen values, and the GENERATION record: u64 time_ns)
