"""Search and smart collections as folders of the mount, computed from the catalog on demand.

    MOUNTPOINT/.search/QUERY/NNN. Artist - Title.ext -> ../../<tag path>
    MOUNTPOINT/.collections/NAME/NNN. Artist - Title.ext -> ../../<tag path>
    MOUNTPOINT/.collections/NAME.m3u8

Both are dot-folders, so scanners that skip hidden folders (Navidrome, beets) never count a
track twice, and `find` does not follow the symlinks. ``.search/`` lists nothing; a QUERY that
does not parse is not there (ENOENT). Results are in album artist, album, disc, track order, at
most ``[search] limit``. They are queries over the tag view's search records
(:meth:`.index.Catalog.search`), not a second index: each (query, tree generation) is computed
once and kept while the tree does not change.
"""
from __future__ import annotations

import collections
import functools
import itertools
import re
import threading
from dataclasses import dataclass

from ..errors import NotFound
from ..origins.base import KIND_DIR, KIND_FILE
from .index import Catalog, Found
from .layout import file_name, safe_segment
from .query import Query, QueryError, parse

# A directory entry that is a symlink (the catalog itself holds none).
KIND_LINK = 3
SEARCH_DIR = b"/.search"
COLLECTIONS_DIR = b"/.collections"
PLAYLIST_EXT = ".m3u8"
# Results kept for listings that come back (an `ls -l` asks for each entry in turn): this many
# listings, of this many tracks in all (the last one whatever its size).
KEPT_RESULTS = 32
KEPT_TRACKS = 100_000
# Playlists open at once whose content is kept for their reads.
OPEN_PLAYLISTS = 64


@dataclass(frozen=True)
class Collection:
    name: str
    query: Query


class Listing:
    """One query's results as a folder (link name -> target) and as a playlist, each made when
    first asked for (a playlist of 10,000 tracks need not name 10,000 links)."""

    def __init__(self, found: list[Found]):
        self.found = found

    @functools.cached_property
    def links(self) -> dict[bytes, bytes]:
        width = max(3, len(str(len(self.found))))
        return {link_name(position, width, track): b"../../" + track.path.lstrip(b"/")
                for position, track in enumerate(self.found, 1)}

    @functools.cached_property
    def playlist(self) -> bytes:
        lines = ["#EXTM3U"]
        for track in self.found:
            length = track.fields.get("length")
            lines.append(f"#EXTINF:{round(float(length)) if length else -1},"
                         + _one_line(f"{track.fields['artist']} - {track.fields['title']}"))
            lines.append("../" + track.path.lstrip(b"/").decode())
        return ("\n".join(lines) + "\n").encode()


class SmartFolders:
    """The ``.search`` and ``.collections`` folders: attrs, listings, link targets, playlists."""

    def __init__(self, catalog: Catalog, collections_: list[Collection], limit: int, enabled: bool = True):
        self.catalog = catalog
        self._kept: collections.OrderedDict[tuple, tuple[int, Listing]] = collections.OrderedDict()
        self._lock = threading.Lock()
        # playlists as they were opened, by handle (the kernel does not say when they are closed)
        self._opened: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._handles = itertools.count(1 << 62)   # (apart from the version tags of files)
        self.configure(collections_, limit, enabled)

    def configure(self, collections_: list[Collection], limit: int, enabled: bool = True) -> None:
        """These collections and this limit from now on (a reload); `enabled`: the tag view is
        the layout (search looks at its tracks)."""
        self.collections = {safe_segment(c.name).encode(): c for c in collections_}
        self.limit = limit
        self.enabled = enabled
        with self._lock:
            self._kept.clear()

    def serves(self, path: bytes) -> bool:
        return self.enabled and self.handles(path)

    @staticmethod
    def folders() -> list[tuple[bytes, int]]:
        """What the smart folders add to the root's listing."""
        return [(COLLECTIONS_DIR[1:], KIND_DIR), (SEARCH_DIR[1:], KIND_DIR)]

    @staticmethod
    def handles(path: bytes) -> bool:
        return path in (SEARCH_DIR, COLLECTIONS_DIR) or path.startswith((SEARCH_DIR + b"/", COLLECTIONS_DIR + b"/"))

    # -- the FUSE layer's questions ----------------------------------------------------------

    def kind(self, path: bytes) -> tuple[int, int]:
        """(kind, size) of a path below the smart folders; NotFound if there is none."""
        top, parts = self._split(path)
        if not parts:
            return KIND_DIR, 0
        if top == COLLECTIONS_DIR and len(parts) == 1 and parts[0].endswith(PLAYLIST_EXT.encode()):
            return KIND_FILE, len(self.playlist(path))
        listing = self._folder(top, parts[0])
        if len(parts) == 1:
            return KIND_DIR, 0
        target = listing.links.get(parts[1]) if len(parts) == 2 else None
        if target is None:
            raise NotFound(path.decode(errors="replace"))
        return KIND_LINK, len(target)

    def children(self, path: bytes) -> list[tuple[bytes, int]]:
        top, parts = self._split(path)
        if top == SEARCH_DIR and not parts:
            return []   # every query is a folder; none is listed
        if top == COLLECTIONS_DIR and not parts:
            return [entry for name in sorted(self.collections)
                    for entry in ((name, KIND_DIR), (name + PLAYLIST_EXT.encode(), KIND_FILE))]
        kind, _ = self.kind(path)
        if kind != KIND_DIR:
            raise NotADirectoryError(20, "not a directory")
        return [(name, KIND_LINK) for name in self._folder(top, parts[0]).links]

    def readlink(self, path: bytes) -> bytes:
        kind, _ = self.kind(path)
        if kind != KIND_LINK:
            raise OSError(22, "not a symlink")
        top, parts = self._split(path)
        return self._folder(top, parts[0]).links[parts[1]]

    def open_playlist(self, path: bytes) -> int:
        """A handle for reading a playlist as it is now, whatever changes while it is open (a
        playlist made again in the middle of a read would mix two versions)."""
        content = self.playlist(path)
        with self._lock:
            handle = next(self._handles)
            self._opened[handle] = content
            while len(self._opened) > OPEN_PLAYLISTS:
                self._opened.popitem(last=False)
        return handle

    def read_playlist(self, handle: int, offset: int, size: int) -> tuple[bytes, int, int]:
        with self._lock:
            content = self._opened.get(handle)
        if content is None:   # (opened long ago, and many opened since: open it again)
            raise OSError(5, "this playlist changed since it was opened; open it again")
        return content, min(offset, len(content)), max(0, min(size, len(content) - offset))

    def playlist(self, path: bytes) -> bytes:
        """The .m3u8 of a collection (its whole content: a playlist is small)."""
        _, parts = self._split(path)
        collection = self.collections.get(parts[0][:-len(PLAYLIST_EXT)]) if parts else None
        if collection is None or not parts[0].endswith(PLAYLIST_EXT.encode()):
            raise NotFound(path.decode(errors="replace"))
        return self._listing(("collection", collection.query)).playlist

    # -- computing them ----------------------------------------------------------------------

    @staticmethod
    def _split(path: bytes) -> tuple[bytes, list[bytes]]:
        top = SEARCH_DIR if path == SEARCH_DIR or path.startswith(SEARCH_DIR + b"/") else COLLECTIONS_DIR
        rest = path[len(top):].strip(b"/")
        return top, rest.split(b"/") if rest else []

    def _folder(self, top: bytes, name: bytes) -> Listing:
        """The listing of .search/NAME (NAME the query) or .collections/NAME; NotFound if none."""
        if top == SEARCH_DIR:
            return self._listing(("search", self._query(name)))
        collection = self.collections.get(name)
        if collection is None:
            raise NotFound(name.decode(errors="replace"))
        return self._listing(("collection", collection.query))

    @staticmethod
    def _query(name: bytes) -> Query:
        try:
            return parse(name.decode("utf-8"))
        except (UnicodeDecodeError, QueryError):
            raise NotFound(name.decode(errors="replace")) from None

    def _listing(self, key: tuple[str, Query]) -> Listing:
        generation = self.catalog.generation()
        cache_key = (key[0], key[1].text)
        with self._lock:
            kept = self._kept.get(cache_key)
            if kept is not None and kept[0] == generation:
                self._kept.move_to_end(cache_key)
                return kept[1]
        _, found = self.catalog.search(key[1], self.limit)
        listing = Listing(found)
        with self._lock:
            self._kept[cache_key] = (generation, listing)
            self._kept.move_to_end(cache_key)
            while len(self._kept) > 1 and (len(self._kept) > KEPT_RESULTS or
                                           sum(len(kept.found) for _, kept in self._kept.values()) > KEPT_TRACKS):
                self._kept.popitem(last=False)
        return listing


def link_name(position: int, width: int, found: Found) -> bytes:
    """``NNN. Artist - Title.ext``, made safe like any name of the tag view."""
    fields = found.fields
    return file_name(f"{position:0{width}d}. {fields['artist']} - {fields['title']}", fields["ext"]).encode()


def _one_line(text: str) -> str:
    """A tag's text fit for one line of a playlist: a newline in a tag must not add entries."""
    return _CONTROL.sub(" ", text)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def collections_of(configured) -> list[Collection]:
    """The configured [[collections]] (name, query text) as Collections."""
    return [Collection(name, parse(text)) for name, text in configured]
