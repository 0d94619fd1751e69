"""The tag view's rules: a path template, the fields it can use, and how a name is made safe.

Template syntax (the contract of ``[layout] template``)::

    $albumartist/$album{ ($year)}/{$disc-}$track $title        (the default)

* ``$field`` or ``${field}`` is replaced by the file's field (see :data:`FIELDS`); ``$$`` is a
  literal ``$``.
* ``{...}`` is an optional group: left out when any field directly inside it is empty. Groups
  may nest; a group cannot contain ``/``.
* ``/`` separates directory levels; the file's ``.<ext>`` is appended to the last segment.
* Each segment is made safe after substitution (:func:`safe_segment`).

Everything here is pure: no I/O, no LMDB. :mod:`musicfs.catalog.views` applies it to the catalog.
"""
from __future__ import annotations

import collections
import fnmatch
import re
import unicodedata
from dataclasses import dataclass

from ..errors import ConfigError

FIELDS = ("artist", "albumartist", "album", "title", "track", "disc", "year", "genre", "format", "ext",
          "origin", "comp")
# beets' default path formats, with the year and the disc rule of the tag view.
DEFAULT_TEMPLATE = "$albumartist/$album{ ($year)}/{$disc-}$track $title"
DEFAULT_COMP_TEMPLATE = "Compilations/$album{ ($year)}/{$disc-}$track $title"
DEFAULT_SINGLETON_TEMPLATE = "Non-Album/$artist/$title"
# Dotfiles (macOS ._* AppleDouble, .DS_Store, .Trash...) and what NAS and OS leave in shares.
DEFAULT_IGNORE = (".*", "Thumbs.db", "desktop.ini", "@eaDir", "#recycle", "$RECYCLE.BIN", "lost+found")
UNKNOWN_GENRE = "Unknown Genre"
DEFAULTS = {"layout.template": DEFAULT_TEMPLATE, "layout.comp_template": DEFAULT_COMP_TEMPLATE,
            "layout.singleton_template": DEFAULT_SINGLETON_TEMPLATE}
UNKNOWN_ARTIST = "Unknown Artist"
UNKNOWN_ALBUM = "Unknown Album"
VARIOUS_ARTISTS = "Various Artists"
NAME_MAX = 255
# Bytes of a whole shown path. The catalog's keys are LMDB keys, at most 511 bytes, and a
# directory listing's key is the parent path plus a name: 440 leaves room for both.
PATH_MAX = 440
# Of those, the directories of a tag-view path take at most this much (cut evenly when longer),
# so a file name always keeps at least PATH_MAX - DIRS_MAX bytes and every file of an album
# lands in the same directory whatever its own name's length.
DIRS_MAX = 240
_UNSAFE = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f-\x9f\u2028\u2029]')   # (C0, DEL, C1; line separators)
_FIELD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Field:
    name: str


@dataclass(frozen=True)
class Group:
    parts: tuple


class Template:
    """A parsed template: a list of segments, each a tuple of str / Field / Group parts."""

    def __init__(self, text: str, key: str = "layout.template"):
        self.text = text
        try:
            self.segments = _parse(text)
        except ConfigError as e:
            message = str(e).replace("layout.template", key, 1)
            if not text.strip():
                message = f"{key}: empty; the default is {DEFAULTS.get(key, DEFAULT_TEMPLATE)}"
            raise ConfigError(message) from None

    def render(self, values: dict[str, str]) -> list[str]:
        """The raw (not yet made safe) segments for one file's field values."""
        return [_render(parts, values) for parts in self.segments]


def _parse(text: str) -> list[tuple]:
    if not text.strip():
        raise ConfigError("layout.template: empty; the default is " + DEFAULT_TEMPLATE)
    segments: list[tuple] = []
    stack: list[list] = [[]]
    literal: list[str] = []

    def flush():
        if literal:
            stack[-1].append("".join(literal))
            literal.clear()

    i = 0
    while i < len(text):
        char = text[i]
        if char == "$":
            if text.startswith("$$", i):
                literal.append("$")
                i += 2
                continue
            if text.startswith("${", i):
                end = text.find("}", i)
                if end < 0:
                    raise ConfigError(f"layout.template: '${{' at position {i} is never closed")
                name = text[i + 2:end]
                i = end + 1
            else:
                match = _FIELD.match(text, i + 1)
                if not match:
                    raise ConfigError(f"layout.template: '$' at position {i} is not followed by a field name "
                                      f"(write $$ for a literal $)")
                name = match.group()
                i = match.end()
            if name not in FIELDS:
                raise ConfigError(f"layout.template: unknown field ${name} (known: "
                                  f"{', '.join('$' + f for f in FIELDS)})")
            flush()
            stack[-1].append(Field(name))
            continue
        if char == "{":
            flush()
            stack.append([])
        elif char == "}":
            if len(stack) == 1:
                raise ConfigError(f"layout.template: '}}' at position {i} closes no '{{'")
            flush()
            group = Group(tuple(stack.pop()))
            stack[-1].append(group)
        elif char == "/":
            if len(stack) > 1:
                raise ConfigError(f"layout.template: '/' at position {i} is inside a {{...}} group")
            flush()
            segments.append(tuple(stack[0]))
            stack[0] = []
        else:
            literal.append(char)
        i += 1
    if len(stack) > 1:
        raise ConfigError("layout.template: a '{' is never closed")
    flush()
    segments.append(tuple(stack[0]))
    if any(not parts for parts in segments):
        raise ConfigError("layout.template: an empty path segment (two '/' in a row, or one at an end)")
    if not _has_field(segments[-1]):
        raise ConfigError("layout.template: the file name (after the last '/') has no field, so every file "
                          "would get the same name; end it with $title, e.g. $track $title")
    return segments


def _render(parts: tuple, values: dict[str, str]) -> str:
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, Field):
            out.append(values.get(part.name, ""))
        else:
            if any(isinstance(p, Field) and not values.get(p.name) for p in part.parts):
                continue
            out.append(_render(part.parts, values))
    return "".join(out)


class IgnoreRules:
    """The ``[layout] ignore`` globs: a path is left out of the view when any of its components
    matches one (fnmatch, case-insensitive)."""

    def __init__(self, patterns=DEFAULT_IGNORE, key: str = "layout.ignore"):
        self.patterns = tuple(patterns)
        for pattern in self.patterns:
            if not pattern or "/" in pattern or "\0" in pattern:
                raise ConfigError(f"{key}: {pattern!r} is not a file name pattern (give names or globs like "
                                  f"'.*' or '@eaDir', without '/')")
        joined = "|".join(fnmatch.translate(p) for p in self.patterns)
        self._match = re.compile(joined, re.IGNORECASE).match if joined else None

    def ignored(self, relpath: bytes) -> bool:
        if self._match is None:
            return False
        return any(self._match(part.decode("utf-8", "replace")) for part in relpath.split(b"/"))


@dataclass(frozen=True)
class Layout:
    """The whole ``[layout]`` of the tag view: where albums, compilations and singletons go and
    what is left out."""
    template: Template
    comp_template: Template
    singleton_template: Template
    ignore: IgnoreRules

    @classmethod
    def parse(cls, template: str = DEFAULT_TEMPLATE, comp_template: str = DEFAULT_COMP_TEMPLATE,
              singleton_template: str = DEFAULT_SINGLETON_TEMPLATE, ignore=DEFAULT_IGNORE) -> "Layout":
        return cls(Template(template), Template(comp_template, "layout.comp_template"),
                   Template(singleton_template, "layout.singleton_template"), IgnoreRules(ignore))

    def describe(self) -> str:
        """Everything the shown tree depends on, as text (a change rebuilds the view)."""
        return "\0".join((self.template.text, self.comp_template.text, self.singleton_template.text,
                          *self.ignore.patterns))

    def template_for(self, album: Album | None) -> Template:
        if album is None:
            return self.singleton_template
        return self.comp_template if album.compilation else self.template


# -- fields ------------------------------------------------------------------------------------

def _number(text: str | None) -> int | None:
    match = re.match(r"\s*(\d+)", text or "")
    return int(match.group(1)) if match else None


def _total(text: str | None) -> int | None:
    match = re.match(r"\s*\d*\s*/\s*(\d+)", text or "")
    return int(match.group(1)) if match else None


def display_name(name: bytes) -> str:
    """A file name as text for the tag view: undecodable bytes become U+FFFD, then NFC."""
    return unicodedata.normalize("NFC", name.decode("utf-8", "replace"))


def split_ext(name: bytes) -> tuple[bytes, str]:
    stem, dot, ext = name.rpartition(b".")
    if not dot or not stem:
        return name, ""
    return stem, ext.decode("utf-8", "replace").lower()


def album_artist(tags: dict) -> str:
    if tags.get("albumartist"):
        return tags["albumartist"]
    if tags.get("compilation"):
        return VARIOUS_ARTISTS
    return tags.get("artist") or UNKNOWN_ARTIST


def album_identity(tags: dict) -> tuple[str, str, str] | None:
    """Which album a track belongs to: (album artist after the fallbacks, album, MusicBrainz
    release id or ""), wherever its file lies; None for a track without an album tag (a
    singleton)."""
    if not tags.get("album"):
        return None
    return album_artist(tags), tags["album"], tags.get("mb_albumid", "")


def _year(tags: dict) -> str:
    match = re.search(r"\d{4}", tags.get("date", ""))
    return match.group() if match else ""


@dataclass(frozen=True)
class Album:
    """The album-level fields: one value for every track of an album, so an album is one folder."""
    year: str = ""
    compilation: bool = False
    discs: int = 0          # the highest disc number or disc total any of its tracks carries

    @classmethod
    def of(cls, members: list[dict]) -> "Album":
        """From the tags of every track of one album: the year most of them carry (the earliest
        on a tie); a compilation when any is flagged one or the album artist is Various Artists."""
        years = collections.Counter(year for year in map(_year, members) if year)
        year = min(years, key=lambda y: (-years[y], y)) if years else ""
        compilation = any(t.get("compilation") for t in members) or \
            any(album_artist(t).casefold() == VARIOUS_ARTISTS.casefold() for t in members)
        discs = max((max(_number(t.get("disc")) or 0, _total(t.get("disc")) or 0) for t in members), default=0)
        return cls(year, compilation, discs)


def field_values(tags: dict | None, name: bytes, origin: str, album: Album | None) -> dict[str, str]:
    """The template fields of one track. `album` holds its album's album-level fields (None for
    a singleton: its own)."""
    tags = tags or {}
    if album is None:
        album = Album.of([tags])
    stem, ext = split_ext(name)
    track = _number(tags.get("track"))
    disc = _number(tags.get("disc"))
    return {
        "artist": tags.get("artist") or tags.get("albumartist") or UNKNOWN_ARTIST,
        "albumartist": album_artist(tags),
        "album": tags.get("album") or UNKNOWN_ALBUM,
        "title": tags.get("title") or display_name(stem),
        "track": f"{track:02d}" if track is not None else "",
        "disc": str(disc) if disc is not None and album.discs > 1 else "",
        "year": album.year,
        "genre": tags.get("genre") or UNKNOWN_GENRE,
        "format": tags.get("format") or ext,
        "ext": ext,
        "origin": origin,
        "comp": "1" if album.compilation else "",
    }


# -- names -------------------------------------------------------------------------------------

def _cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, never inside a character."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:max(limit, 0)].decode("utf-8", "ignore")


def safe_segment(text: str) -> str:
    """One path segment made safe: separators, reserved and control characters become '_',
    surrounding whitespace goes, a leading '.' or '-' and a trailing '.' become '_' (as beets
    does: no hidden names, no option-like names, none Windows shares would mangle), nothing at
    all becomes '_'."""
    text = _UNSAFE.sub("_", unicodedata.normalize("NFC", text)).strip()
    if text.startswith((".", "-")):
        text = "_" + text[1:]
    if text.endswith("."):
        text = text[:-1] + "_"
    return text or "_"


def directory_name(text: str) -> str:
    return _cut(safe_segment(text), NAME_MAX).rstrip() or "_"


def _has_field(parts) -> bool:
    return any(isinstance(p, Field) or (isinstance(p, Group) and _has_field(p.parts)) for p in parts)


def file_name(stem: str, ext: str, suffix: str = "", limit: int = NAME_MAX) -> str:
    """The last segment with its extension (and a collision suffix), cut to `limit` bytes at
    the stem: the extension and the suffix always survive."""
    ext = _UNSAFE.sub("_", ext)
    tail = suffix + ("." + ext if ext else "")
    stem = _cut(safe_segment(stem), min(limit, NAME_MAX) - len(tail.encode())).rstrip() or "_"
    return stem + tail


def fit_directories(dirs: tuple[str, ...]) -> tuple[str, ...]:
    """Directory names (already safe) cut evenly so that together they take at most DIRS_MAX
    bytes: the longest are cut first, to one common length."""
    sizes = [len(d.encode()) + 1 for d in dirs]          # each with its "/"
    if sum(sizes) <= DIRS_MAX:
        return dirs
    cap = max(DIRS_MAX // max(len(dirs), 1), 8)
    while sum(min(size, cap + 1) for size in sizes) <= DIRS_MAX:
        cap += 1
    cap -= 1
    return tuple((_cut(d, cap).rstrip() or "_") if len(d.encode()) > cap else d for d in dirs)


def shown_path(dirs: tuple[str, ...], stem: str, ext: str, suffix: str = "") -> str:
    """The tag-view path of a file, within PATH_MAX bytes: fitted directories, then the file
    name cut to what is left (never below what DIRS_MAX leaves)."""
    used = sum(len(d.encode()) + 1 for d in dirs)
    return "/".join((*dirs, file_name(stem, ext, suffix, PATH_MAX - used - 1)))
