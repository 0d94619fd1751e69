"""Views: what makes the shown tree (``entries``/``children``) out of the origins' records.

The catalog's ``origin_files`` (what each origin has) and ``tags`` (what each audio file says)
are the record; the shown tree, the one seam fs.py and the reader resolve paths through, is
derived from them by a view, in the scanner's writing transactions: readers see the tree before
a transaction or after it, never half of one. Two views share one interface (:class:`View`):

* :class:`PathsView` - the origins' folders merged;
* :class:`TagView` - the library as collectors file it (the contract of ``[layout] mode =
  "tags"``):

  - A *track* is a file with an audio extension (:data:`.tags.AUDIO_EXTENSIONS`) that mutagen
    reads as audio. Other audio-named files (0 bytes, macOS ``._*``, junk) are *unplaced*:
    counted and listed, never shown. Paths matching ``[layout] ignore`` are left out.
  - Files are merged by their origin-relative path first, as in the paths view: the same path
    in two origins is one file whose first origin is read and the others are replicas.
  - Tracks with the same album artist, album and MusicBrainz release id form one album wherever
    their files lie; album-level fields (:class:`.layout.Album`) have one value per album, so an
    album is one folder. Compilations go by ``comp_template``, tracks without an album tag by
    ``singleton_template``, the others by ``template``.
  - When several files land on one path, the first in origin order, then by origin-relative
    path, keeps the name; each other gets `` [hhhhhh]`` (XXH3-64 of its origin-relative path).
  - Sidecars (:data:`SIDECAR_EXTENSIONS`) follow their folder's tracks into its album folder
    when all of that folder's tracks landed in one folder (or, for a folder without tracks of
    its own, all tracks below it); other files are left out.
  - An album folder without an image named cover/folder/front gets ``cover.jpg``
    (``cover.png``): the picture embedded in its first track, shown as that piece of the track.
  - A directory exists while it has children; its mtime is the newest mtime below it.

The tag view is kept incrementally: for each relative path whose records changed it updates
what it placed there, the albums and origin folders that path belongs to (before and after),
the shown paths those claim, and the covers of the folders whose listing changed. Its own
records (``tagview``, :mod:`.records`) are what make that possible without reading the library.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import xxhash

from ..origins.base import KIND_DIR, KIND_FILE
from .layout import (Album, Layout, album_identity, directory_name, display_name, field_values, fit_directories,
                     shown_path, split_ext)
from .records import (BELOW, COUNT, COVER, DIRECT, FIRST_SEEN, GENERATION, ROLE_SIDECAR, ROLE_SINGLETON, ROLE_TRACK,
                      ROLE_UNPLACED, UNPLACED, Placement, carried_version, child_key, children_prefix, claim_key,
                      claim_prefix, content_version, decode_entry, decode_placement, decode_record, decode_tags,
                      digest16, encode_entry, encode_placement, encode_search, folder_prefix, member_key, origin_key,
                      placed_key, search_key, sidecar_key, split, split_origin_key, tags_read_from)
from .records import shown_path as paths_view_path
from .tree import ShownTree
from .tags import AUDIO_EXTENSIONS, TAG_VERSION

log = logging.getLogger(__name__)

SIDECAR_EXTENSIONS = frozenset("jpg jpeg png gif webp cue lrc log txt pdf nfo m3u m3u8".split())
IMAGE_EXTENSIONS = frozenset("jpg jpeg png gif webp".split())
# An image sidecar with one of these names is the album's own cover: none is made from the tracks.
COVER_STEMS = frozenset(("cover", "folder", "front"))
# Relative paths handled per pass of a rebuild (bounds the memory of one pass).
REBUILD_BATCH = 5000


class View:
    """What makes the shown tree out of the origins' records.

    The scanner tells a view which relative paths' records changed (`placed`, in the writing
    transaction) and asks it to `settle` the tree; a `deferred` view is settled once a scan or
    refresh is over instead of at every transaction. `rebuild` makes the tree anew (a change of
    origins or layout) in transactions of its own, REBUILD_BATCH paths each, so its memory does
    not grow with the library: meanwhile readers may see the old tree and the new one side by
    side, never a file missing from both; what no longer belongs goes last. `spec` names what
    the tree was made for: a different one rebuilds it."""

    name = "?"
    spec = b""
    deferred = False
    tag_version = 0          # the tag reader the view needs (0: it reads no tags)

    def attach(self, storage, order: list[str], recent) -> None:
        self.storage, self.order, self.recent = storage, list(order), recent

    @property
    def pending(self) -> bool:
        return False

    def ignored(self, relpath: bytes) -> bool:
        return False

    def placed(self, txn, relpath: bytes) -> None:
        raise NotImplementedError

    def settle(self, txn) -> int:
        return 0

    def rebuild(self) -> int:
        raise NotImplementedError

    def _in_batches(self, db):
        """Every (key, value) of `db`, REBUILD_BATCH at a time, each batch read in a transaction
        of its own (the next resumes after the last key)."""
        after = None
        while True:
            batch = []
            with self.storage.begin() as txn:
                cursor = txn.cursor(db=db)
                found = cursor.set_range(after) if after is not None else cursor.first()
                while found and len(batch) < REBUILD_BATCH:
                    key = bytes(cursor.key())
                    if key != after:
                        batch.append((key, bytes(cursor.value())))
                    after = key
                    found = cursor.next()
            if batch:
                yield batch
            if not found:
                return

    def _relpaths(self):
        """Every relative path the configured origins hold, in batches (see _in_batches)."""
        order = set(self.order)
        for batch in self._in_batches(self.storage.origin_files):
            relpaths = {relpath for origin, relpath in (split_origin_key(key) for key, _ in batch)
                        if origin in order and relpath}
            if relpaths:
                yield relpaths

    def _shown_paths(self):
        """Every (path, entry) of the shown tree, in batches (see _in_batches)."""
        return self._in_batches(self.storage.entries)


class PathsView(View):
    """The origins' folders merged: each relative path is shown as it is, its copies in origin
    order. Kept up to date path by path as records change."""

    name = "paths"

    def __init__(self, ignore=None):
        self.ignore = ignore
        self.spec = b"paths" + (b"\0" + "\0".join(ignore.patterns).encode() if ignore is not None else b"")

    def ignored(self, relpath: bytes) -> bool:
        return self.ignore is not None and self.ignore.ignored(relpath)

    def placed(self, txn, relpath: bytes) -> None:
        """Recompute the merged entry of one relative path from every origin's record."""
        storage = self.storage
        sources, winner = [], None
        if not self.ignored(relpath):
            for name in self.order:
                raw = txn.get(origin_key(name, relpath), db=storage.origin_files)
                if raw is None:
                    continue
                record = decode_record(raw)
                if winner is None:
                    winner = record
                elif record[0] != winner[0]:
                    continue  # a file in one origin and a directory in another: the first one wins
                sources.append((name, relpath))
        path = paths_view_path(relpath)
        old = txn.get(path, db=storage.entries)
        if winner is None:
            if old is not None:
                txn.delete(path, db=storage.entries)
                txn.delete(child_key(path), db=storage.children)
                self.recent.note(path)
            return
        kind, size, mtime_ns, _, token = winner
        version = carried_version(old, kind, size, sources, content_version(sources[0][0], mtime_ns, token))
        new = encode_entry(kind, size, mtime_ns, sources, version)
        if old == new:
            return
        txn.put(path, new, db=storage.entries)
        txn.put(child_key(path), bytes((kind,)), db=storage.children)
        if old is not None and kind == KIND_FILE:
            self.recent.note(path)

    def rebuild(self) -> int:
        """Every relative path merged again, then every shown path that is not one of them
        (another view's) merged away."""
        with self.storage.begin(write=True) as txn:
            txn.drop(self.storage.tagview, delete=False)   # (what a tag view kept is stale from now on)
        merged = 0
        for batch in self._relpaths():
            with self.storage.begin(write=True) as txn:
                for relpath in batch:
                    self.placed(txn, relpath)
                merged += len(batch)
        for batch in self._shown_paths():
            with self.storage.begin(write=True) as txn:
                for path, _ in batch:
                    if txn.get(path, db=self.storage.entries) is not None:
                        self.placed(txn, path[1:])
        return merged


def collision_suffix(relpath: bytes) -> str:
    return f" [{xxhash.xxh3_64_hexdigest(relpath)[:6]}]"


@dataclass
class _File:
    """One relative path as the records describe it now."""
    relpath: bytes
    copies: list            # [(origin, (kind, size, mtime_ns, generation, token))], preferred first
    rank: int               # the preferred copy's origin's position in the configuration
    role: int
    tags: dict | None = None
    group: bytes = bytes(16)   # the album (a track) or folder (a sidecar)

    def entry(self, piece: tuple[int, int] | None = None, size: int | None = None):
        """(size, mtime_ns, sources, version, piece) of its entry; with `piece` (offset, source
        size), of a piece of it: the preferred copy only, since where the piece lies is known
        in that copy's version alone (a replica of the same size may be another version)."""
        origin, (_, file_size, mtime_ns, _, token) = self.copies[0]
        copies = self.copies[:1] if piece is not None else self.copies
        sources = tuple((name, self.relpath) for name, _ in copies)
        version = content_version(origin, mtime_ns, token)
        return (file_size if size is None else size), mtime_ns, sources, version, piece


class _Settle:
    """The work of one settle: what was touched, and the files read so far."""

    def __init__(self, view: "TagView", txn):
        self.view, self.txn, self.db = view, txn, view.storage.tagview
        self.tree = ShownTree(txn, view.storage, view.recent)
        self.files: dict[bytes, _File | None] = {}
        self.albums: set[bytes] = set()
        self.folders: set[bytes] = set()
        self.claims: set[bytes] = set()         # shown paths whose claimants changed

    def file(self, relpath: bytes) -> _File | None:
        if relpath not in self.files:
            self.files[relpath] = self.view.describe(self.txn, relpath)
        return self.files[relpath]

    def placement(self, relpath: bytes) -> Placement | None:
        raw = self.txn.get(placed_key(relpath), db=self.db)
        return None if raw is None else decode_placement(raw)

    def set_placement(self, relpath: bytes, placement: Placement) -> None:
        self.txn.put(placed_key(relpath), encode_placement(placement), db=self.db)

    def count(self, key: bytes, delta: int) -> None:
        raw = self.txn.get(key, db=self.db)
        value = (COUNT.unpack(raw)[0] if raw is not None else 0) + delta
        if value > 0:
            self.txn.put(key, COUNT.pack(value), db=self.db)
        else:
            self.txn.delete(key, db=self.db)

    def keys(self, prefix: bytes, limit: int | None = None) -> list[bytes]:
        found = []
        cursor = self.txn.cursor(db=self.db)
        if cursor.set_range(prefix):
            for key in cursor.iternext(keys=True, values=False):
                if not key.startswith(prefix) or (limit is not None and len(found) >= limit):
                    break
                found.append(bytes(key[len(prefix):]))
        return found


def _dirs_of(directory: bytes) -> tuple[str, ...]:
    """The folder names of a shown directory (none for the root)."""
    return tuple(part for part in directory.decode().split("/") if part)


def _folder(relpath: bytes) -> bytes:
    return relpath.rpartition(b"/")[0]


def _ancestors(folder: bytes):
    """`folder` and every folder above it, the origin's root (b"") last."""
    while True:
        yield folder
        if not folder:
            return
        folder = _folder(folder)


class TagView(View):
    """The tag view (see the module docstring), kept incrementally."""

    name = "tag"

    def __init__(self, layout: Layout):
        self.layout = layout
        self.tag_version = TAG_VERSION
        self.spec = f"tags:{TAG_VERSION}:{layout.describe()}".encode()
        self._pending: set[bytes] = set()

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def ignored(self, relpath: bytes) -> bool:
        return self.layout.ignore.ignored(relpath)

    def placed(self, txn, relpath: bytes) -> None:
        self._pending.add(relpath)

    def settle(self, txn) -> int:
        relpaths, self._pending = self._pending, set()
        return self._update(txn, relpaths) if relpaths else 0

    def rebuild(self) -> int:
        """The whole view anew: every relative path placed from scratch, then whatever the tree
        still shows that no file placed (another layout's, another view's) removed."""
        self._pending.clear()
        with self.storage.begin(write=True) as txn:
            txn.drop(self.storage.tagview, delete=False)
        changed = 0
        for batch in self._relpaths():
            with self.storage.begin(write=True) as txn:
                changed += self._update(txn, batch)
        for batch in self._shown_paths():
            with self.storage.begin(write=True) as txn:
                changed += self._sweep(txn, batch)
        return changed

    # -- describing a relative path -------------------------------------------------------------

    def describe(self, txn, relpath: bytes) -> _File | None:
        """What the records say `relpath` is now, in this view: None when it is not shown (gone,
        a folder, ignored, not a track or sidecar, tags not read yet)."""
        if self.ignored(relpath):
            return None
        storage = self.storage
        copies = []
        for rank, name in enumerate(self.order):
            raw = txn.get(origin_key(name, relpath), db=storage.origin_files)
            if raw is None:
                continue
            record = decode_record(raw)
            if not copies and record[0] != KIND_FILE:
                return None   # a folder in the preferred origin
            if record[0] == KIND_FILE:
                copies.append((name, record))
                if len(copies) == 1:
                    first_rank = rank
        if not copies:
            return None
        ext = split_ext(relpath.rpartition(b"/")[2])[1]
        if ext in AUDIO_EXTENSIONS:
            for name, record in copies:
                raw_tags = txn.get(origin_key(name, relpath), db=storage.tags)
                if raw_tags is not None:
                    break
            else:
                return None   # tags not read yet: placed once they are
            tags = decode_tags(raw_tags)
            if tags is not None and "picture" in tags and not (
                    name == copies[0][0] and tags_read_from(raw_tags, record)):
                # Where the picture lies is known only in the version its tags were read from,
                # of the copy read first (a read refreshed the record since, say): no cover
                # until the next scan reads them again, rather than another piece of the file.
                tags = {k: v for k, v in tags.items() if k != "picture"}
            if tags is None:
                return _File(relpath, copies, first_rank, ROLE_UNPLACED)
            identity = album_identity(tags)
            if identity is None:
                return _File(relpath, copies, first_rank, ROLE_SINGLETON, tags, digest16(b"single\0" + relpath))
            return _File(relpath, copies, first_rank, ROLE_TRACK, tags, digest16("\0".join(identity).encode()))
        if ext in SIDECAR_EXTENSIONS:
            return _File(relpath, copies, first_rank, ROLE_SIDECAR, group=digest16(_folder(relpath)))
        return None

    # -- the update ---------------------------------------------------------------------------

    def _update(self, txn, relpaths) -> int:
        work = _Settle(self, txn)
        for relpath in relpaths:
            self._replace(work, relpath)
        for group in work.albums:
            self._place_album(work, group)
        for folder in work.folders:
            self._place_sidecars(work, folder)
        for path in work.claims:
            self._resolve(work, path)
        work.tree.apply()
        for directory in work.tree.touched_dirs:
            self._place_cover(work, directory)
        work.tree.apply()
        if relpaths:
            # Whatever depends on the view's records (search listings, the files not placed)
            # may be kept until this changes. A time, not a count: a rebuild starts the view's
            # records afresh, and a count could come back to a number something was kept at.
            raw = txn.get(GENERATION, db=work.db)
            before = FIRST_SEEN.unpack(raw)[0] if raw is not None else 0
            txn.put(GENERATION, FIRST_SEEN.pack(max(before + 1, time.time_ns())), db=work.db)
        return work.tree.changed

    def _replace(self, work: _Settle, relpath: bytes) -> None:
        """Take out what was placed for `relpath`, put in what it is now, not yet rendered: its
        album or folder then claims a shown path for it, and the claim's resolution writes its
        entry (compared with the stored one: an unchanged file changes nothing)."""
        txn, db = work.txn, work.db
        old = work.placement(relpath)
        new = work.file(relpath)
        if old is not None:
            if old.role in (ROLE_TRACK, ROLE_SINGLETON):
                txn.delete(member_key(old.group, relpath), db=db)
                txn.delete(search_key(relpath), db=db)
                work.albums.add(old.group)
                self._unclaim(work, relpath, old)
            elif old.role == ROLE_SIDECAR:
                txn.delete(sidecar_key(_folder(relpath), relpath), db=db)
                self._unclaim(work, relpath, old)
            elif old.role == ROLE_UNPLACED:
                txn.delete(UNPLACED + relpath, db=db)
            txn.delete(placed_key(relpath), db=db)
        if new is None:
            txn.delete(relpath, db=self.storage.first_seen)   # (back later: added again)
            return
        if new.role in (ROLE_TRACK, ROLE_SINGLETON):
            txn.put(member_key(new.group, relpath), b"", db=db)
            # When the catalog first saw the track (search's added:): kept across retags and
            # rebuilds, so only a track new to the library is "recently added".
            txn.put(relpath, FIRST_SEEN.pack(time.time_ns()), db=self.storage.first_seen, overwrite=False)
            work.albums.add(new.group)
        elif new.role == ROLE_SIDECAR:
            txn.put(sidecar_key(_folder(relpath), relpath), b"", db=db)
            work.folders.add(_folder(relpath))
        elif new.role == ROLE_UNPLACED:
            txn.put(UNPLACED + relpath, new.copies[0][0].encode(), db=db)
        work.set_placement(relpath, Placement(new.role, new.group))

    def _claim(self, work: _Settle, relpath: bytes, placement: Placement, base: bytes, stem: str, ext: str,
               rank: int) -> None:
        work.txn.put(claim_key(base, rank, relpath), b"", db=work.db)
        work.claims.add(base)
        placement.base, placement.stem, placement.ext = base, stem, ext
        if placement.role != ROLE_SIDECAR:
            self._count_album_dir(work, relpath, base, +1)

    def _unclaim(self, work: _Settle, relpath: bytes, placement: Placement) -> None:
        if not placement.base:
            return
        # The rank is the one it claimed with: find its claim among the path's claimants.
        for key in work.keys(claim_prefix(placement.base)):
            if key[1:] == relpath:
                work.txn.delete(claim_prefix(placement.base) + key, db=work.db)
                break
        work.claims.add(placement.base)
        if placement.final:
            work.tree.remove(placement.final)
        if placement.role != ROLE_SIDECAR:
            self._count_album_dir(work, relpath, placement.base, -1)
        placement.base = placement.final = b""

    def _count_album_dir(self, work: _Settle, relpath: bytes, base: bytes, delta: int) -> None:
        """Count a track of origin folder F placed in album folder D: directly in F, and below
        each folder above F (the origin's root excepted: its sidecars go by its own tracks)."""
        album_dir = split(base)[0]
        folder = _folder(relpath)
        work.count(folder_prefix(DIRECT, folder) + album_dir, delta)
        for above in _ancestors(folder):
            if above:
                work.count(folder_prefix(BELOW, above) + album_dir, delta)
            work.folders.add(above)

    def _place_album(self, work: _Settle, group: bytes) -> None:
        """Render every track of an album with its album-level fields; claim what changed."""
        relpaths = work.keys(member_key(group, b""))
        files = [f for f in map(work.file, relpaths) if f is not None]
        if not files:
            return
        album = None if files[0].role == ROLE_SINGLETON else Album.of([f.tags for f in files])
        template = self.layout.template_for(album)
        for file in files:
            name = file.relpath.rpartition(b"/")[2]
            values = field_values(file.tags, name, file.copies[0][0], album)
            work.txn.put(search_key(file.relpath), encode_search(dict(values, length=file.tags.get("length", ""))),
                         db=work.db)
            segments = template.render(values)
            dirs = fit_directories(tuple(directory_name(s) for s in segments[:-1]))
            base = ("/" + shown_path(dirs, segments[-1], values["ext"])).encode()
            placement = work.placement(file.relpath)
            if placement.base != base:   # (always so for a path whose records changed: see _replace)
                self._unclaim(work, file.relpath, placement)
                self._claim(work, file.relpath, placement, base, segments[-1], values["ext"], file.rank)
                work.set_placement(file.relpath, placement)

    def _album_dir_of(self, work: _Settle, folder: bytes) -> bytes | None:
        """The one album folder the tracks of an origin folder went to (directly in it; for a
        folder without tracks of its own, anywhere below it), or None."""
        direct = work.keys(folder_prefix(DIRECT, folder), limit=2)
        if direct:
            return direct[0] if len(direct) == 1 else None
        if not folder:
            return None
        below = work.keys(folder_prefix(BELOW, folder), limit=2)
        return below[0] if len(below) == 1 else None

    def _place_sidecars(self, work: _Settle, folder: bytes) -> None:
        relpaths = work.keys(sidecar_key(folder, b""))
        if not relpaths:
            return
        album_dir = self._album_dir_of(work, folder)
        for relpath in relpaths:
            file = work.file(relpath)
            placement = work.placement(relpath)
            if file is None or placement is None:
                continue
            base, stem, ext = b"", "", ""
            if album_dir is not None:
                stem_bytes, ext = split_ext(relpath.rpartition(b"/")[2])
                stem = display_name(stem_bytes)
                base = ("/" + shown_path(_dirs_of(album_dir), stem, ext)).encode()
            if placement.base != base:
                self._unclaim(work, relpath, placement)
                if base:
                    self._claim(work, relpath, placement, base, stem, ext, file.rank)
                work.set_placement(relpath, placement)

    def _resolve(self, work: _Settle, path: bytes) -> None:
        """Give each claimant of `path` its shown path: the first keeps it, the others get a
        collision suffix; write the entries that changed."""
        for position, key in enumerate(work.keys(claim_prefix(path))):
            relpath = key[1:]
            placement = work.placement(relpath)
            file = work.file(relpath)
            if placement is None or file is None:
                continue
            if position == 0:
                final = path
            else:
                final = ("/" + shown_path(_dirs_of(split(path)[0]), placement.stem, placement.ext,
                                          collision_suffix(relpath))).encode()
            if final != placement.final:
                if placement.final:
                    work.tree.remove(placement.final)
                placement.final = final
                work.set_placement(relpath, placement)
                work.tree.put(final, file.entry())

    def _place_cover(self, work: _Settle, directory: bytes) -> None:
        """The cover of an album folder whose listing changed: the picture embedded in its first
        track, unless the folder has an image of its own named cover/folder/front."""
        txn, storage = work.txn, self.storage
        cover_key = COVER + directory
        current = txn.get(cover_key, db=work.db)
        current = bytes(current) if current is not None else None
        wanted = None
        prefix = children_prefix(directory)
        cursor = txn.cursor(db=storage.children)
        first_track = None
        own_image = False
        if cursor.set_range(prefix):
            for key, kind in cursor:
                if not key.startswith(prefix):
                    break
                name = bytes(key[len(prefix):])
                path = directory.rstrip(b"/") + b"/" + name
                if kind[0] != KIND_FILE:
                    continue
                stem, ext = split_ext(name)
                if ext in IMAGE_EXTENSIONS and stem.decode("utf-8", "replace").casefold() in COVER_STEMS \
                        and not self._is_made_cover(txn, path):
                    own_image = True
                    break
                if first_track is None and ext in AUDIO_EXTENSIONS:
                    first_track = path
        if not own_image and first_track is not None:
            raw = txn.get(first_track, db=storage.entries)
            entry = decode_entry(raw) if raw is not None else None
            file = work.file(entry.sources[0][1]) if entry is not None and entry.sources else None
            picture = (file.tags or {}).get("picture") if file is not None and file.role == ROLE_TRACK else None
            if picture is not None:
                name = b"cover." + picture.get("ext", "jpg").encode()
                wanted = directory.rstrip(b"/") + b"/" + name
                source_size = file.copies[0][1][1]
                window = picture.get("window", 0)
                if max(picture["offset"] + picture["length"] * (not window), window) <= source_size:
                    piece = (picture["offset"], source_size, window, int(picture.get("digest", "0"), 16))
                    work.tree.put(wanted, file.entry(piece, picture["length"]))
                else:
                    wanted = None
        if current is not None and current != wanted and self._is_made_cover(txn, current):
            work.tree.remove(current)
        if wanted is None:
            txn.delete(cover_key, db=work.db)
        else:
            txn.put(cover_key, wanted, db=work.db)

    def _is_made_cover(self, txn, path: bytes) -> bool:
        """Whether the entry at `path` is a cover this view made (a piece of a track)."""
        raw = txn.get(path, db=self.storage.entries)
        return raw is not None and decode_entry(raw).is_slice

    def _sweep(self, txn, shown: list[tuple[bytes, bytes]]) -> int:
        """After a rebuild, of these shown paths: remove the files that no file placed, then
        folders left without children."""
        storage, db = self.storage, self.storage.tagview
        tree = ShownTree(txn, storage, self.recent)
        stale = []
        for path, raw in shown:
            if raw[0] == KIND_DIR or txn.get(path, db=storage.entries) is None:
                continue
            entry = decode_entry(raw)
            if entry.is_slice:
                owner = txn.get(COVER + split(bytes(path))[0], db=db)
                if owner is not None and bytes(owner) == bytes(path):
                    continue
            elif entry.sources:
                raw_placement = txn.get(placed_key(entry.sources[0][1]), db=db)
                if raw_placement is not None and decode_placement(raw_placement).final == bytes(path):
                    continue
            stale.append(bytes(path))
        for path in stale:
            tree.remove(path)
        tree.apply()
        empty = [path for path, raw in shown if raw[0] == KIND_DIR and txn.get(path, db=storage.entries) is not None
                 and not tree._has_children(path)]
        for path in empty:
            tree._recompute(path)
        return tree.changed + len(empty)


def view_for(layout) -> View:
    """The view a ``[layout]`` configuration asks for."""
    parsed = layout.parsed()
    return TagView(parsed) if layout.mode == "tags" else PathsView(parsed.ignore)
