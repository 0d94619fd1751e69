"""The tag view: the shown tree computed from the catalog's origin records and their tags.

The catalog's ``origin_files`` (what each origin has) and ``tags`` (what each audio file says)
are the record; the shown tree (``entries``/``children``, the one seam fs.py and the reader
resolve paths through) is derived from them by :func:`build` and written by :func:`write` in
ONE write transaction: readers see the old tree or the new one, never half of each. Only the
entries that differ are written, so a rebuild that changes nothing writes nothing.

Placement (the contract of ``[layout] mode = "tags"``):

* Files are merged by their origin-relative path first, as in the paths view: the same path in
  two origins is one file whose first origin is read and the others are replicas.
* Audio files (:data:`musicfs.catalog.tags.AUDIO_EXTENSIONS`) go where the template puts them
  (:mod:`musicfs.catalog.layout`). When several land on one path, the first in origin order, then by
  origin-relative path, keeps the name; each other gets `` [hhhhhh]`` (XXH3-64 of its
  origin-relative path) before its extension.
* Sidecars (:data:`SIDECAR_EXTENSIONS`) follow their folder's audio into its album directory
  when all of that folder's audio landed in one directory; other files are left out.
* A directory exists while it has children; its mtime is the newest mtime below it.
"""
from __future__ import annotations

import collections
import logging

import xxhash

from ..origins.base import KIND_DIR, KIND_FILE
from .layout import (Template, album_key, directory_name, disc_number, display_name, field_values,
                     fit_directories, shown_path, split_ext)
from .records import (carried_version, child_key, content_version, decode_record, decode_tags, encode_entry,
                      origin_key, split, split_origin_key)
from .records import shown_path as paths_view_path
from .tags import AUDIO_EXTENSIONS, TAG_VERSION

log = logging.getLogger(__name__)

SIDECAR_EXTENSIONS = frozenset("jpg jpeg png gif webp cue lrc log txt pdf nfo m3u m3u8".split())


def collision_suffix(relpath: bytes) -> str:
    return f" [{xxhash.xxh3_64_hexdigest(relpath)[:6]}]"


def build(txn, storage, order: list[str], template: Template) -> dict[bytes, tuple]:
    """shown path -> (kind, size, mtime_ns, sources, version) of every entry of the tag view."""
    rank = {name: index for index, name in enumerate(order)}
    holders: dict[bytes, list] = collections.defaultdict(list)
    for key, raw in txn.cursor(db=storage.origin_files):
        name, relpath = split_origin_key(key)
        if name in rank:
            holders[relpath].append((rank[name], name, decode_record(raw)))

    audio, sidecars = [], []
    for relpath, found in holders.items():
        found.sort()
        first_kind = found[0][2][0]
        if first_kind != KIND_FILE:
            continue
        copies = [(name, record) for _, name, record in found if record[0] == KIND_FILE]
        base = relpath.rpartition(b"/")[2]
        ext = split_ext(base)[1]
        if ext in AUDIO_EXTENSIONS:
            raw_tags = txn.get(origin_key(copies[0][0], relpath), db=storage.tags)
            tags = decode_tags(raw_tags) if raw_tags is not None else None
            audio.append((found[0][0], relpath, copies, tags))
        elif ext in SIDECAR_EXTENSIONS:
            sidecars.append((found[0][0], relpath, copies))

    discs: dict[tuple, int] = collections.defaultdict(int)
    for _, _, _, tags in audio:
        discs[album_key(tags)] = max(discs[album_key(tags)], disc_number(tags) or 0)

    wanted: dict[str, list] = collections.defaultdict(list)     # shown path -> claimants
    folder_dirs: dict[bytes, set] = collections.defaultdict(set)      # audio directly in a folder
    below_dirs: dict[bytes, set] = collections.defaultdict(set)       # audio anywhere below it
    for index, relpath, copies, tags in audio:
        name = relpath.rpartition(b"/")[2]
        values = field_values(tags, name, copies[0][0], discs[album_key(tags)])
        segments = template.render(values)
        dirs = fit_directories(tuple(directory_name(s) for s in segments[:-1]))
        wanted[shown_path(dirs, segments[-1], values["ext"])].append(
            (index, relpath, copies, (dirs, segments[-1], values["ext"])))
        folder = relpath.rpartition(b"/")[0]
        folder_dirs[folder].add(dirs)
        while True:   # Album/cover.jpg beside Album/CD1/, Album/CD2/ follows the album too
            below_dirs[folder].add(dirs)
            if not folder:
                break
            folder = folder.rpartition(b"/")[0]
    for index, relpath, copies in sidecars:
        folder = relpath.rpartition(b"/")[0]
        albums = folder_dirs.get(folder) or (below_dirs.get(folder) if folder else None)
        if not albums or len(albums) != 1:
            continue
        dirs, = albums
        stem, ext = split_ext(relpath.rpartition(b"/")[2])
        wanted[shown_path(dirs, display_name(stem), ext)].append((index, relpath, copies, (dirs, display_name(stem), ext)))

    entries: dict[bytes, tuple] = {}
    for path, claimants in wanted.items():
        claimants.sort(key=lambda c: (c[0], c[1]))
        for position, (_, relpath, copies, (dirs, stem, ext)) in enumerate(claimants):
            shown = path if position == 0 else shown_path(dirs, stem, ext, collision_suffix(relpath))
            kind, size, mtime_ns, _, token = copies[0][1]
            sources = tuple((name, relpath) for name, _ in copies)
            entries[("/" + shown).encode()] = (KIND_FILE, size, mtime_ns, sources,
                                               content_version(copies[0][0], mtime_ns, token))

    newest: dict[bytes, int] = {}
    for path, (_, _, mtime_ns, _, _) in entries.items():
        parent = split(path)[0]
        while parent != b"/":
            if newest.get(parent, -1) >= mtime_ns:
                break
            newest[parent] = mtime_ns
            parent = split(parent)[0]
    for path, mtime_ns in newest.items():
        entries[path] = (KIND_DIR, 0, mtime_ns, (), b"")
    return entries


def write(txn, storage, entries: dict[bytes, tuple], recent) -> int:
    """Make ``entries``/``children`` equal `entries` (one transaction: the caller's). Returns
    how many entries changed. A replica taking over from a copy that went away keeps the
    content version, as in the paths view (catalog.carried_version)."""
    changed = 0
    stale = []
    for path in txn.cursor(db=storage.entries).iternext(keys=True, values=False):
        if path not in entries:
            stale.append(bytes(path))
    for path in stale:
        txn.delete(path, db=storage.entries)
        txn.delete(child_key(path), db=storage.children)
        recent.note(path)
        changed += 1
    for path, (kind, size, mtime_ns, sources, version) in entries.items():
        old = txn.get(path, db=storage.entries)
        version = carried_version(old, kind, size, sources, version)
        raw = encode_entry(kind, size, mtime_ns, sources, version)
        if old is not None and bytes(old) == raw:
            continue
        txn.put(path, raw, db=storage.entries)
        txn.put(child_key(path), bytes((kind,)), db=storage.children)
        if old is not None and kind == KIND_FILE:
            recent.note(path)
        changed += 1
    return changed



class View:
    """What makes the shown tree (``entries``/``children``) out of the origins' records.

    The scanner tells a view which relative paths' records changed (`placed`, in the writing
    transaction) and asks it to `settle` the tree; a `deferred` view is settled once a scan or
    refresh is over instead of at every transaction. `rebuild` makes the tree anew (a change of
    origins or layout). `spec` names what the tree was made for: a different one rebuilds it."""

    name = "?"
    spec = b""
    deferred = False
    tag_version = 0          # the tag reader the view needs (0: it reads no tags)

    def attach(self, storage, order: list[str], recent) -> None:
        self.storage, self.order, self.recent = storage, list(order), recent

    @property
    def pending(self) -> bool:
        return False

    def placed(self, txn, relpath: bytes) -> None:
        raise NotImplementedError

    def settle(self, txn) -> int:
        return 0

    def rebuild(self, txn) -> int:
        raise NotImplementedError


class PathsView(View):
    """The origins' folders merged: each relative path is shown as it is, its copies in origin
    order. Kept up to date path by path as records change."""

    name = "paths"
    spec = b"paths"

    def placed(self, txn, relpath: bytes) -> None:
        """Recompute the merged entry of one relative path from every origin's record."""
        storage = self.storage
        sources, winner = [], None
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

    def rebuild(self, txn) -> int:
        txn.drop(self.storage.entries, delete=False)
        txn.drop(self.storage.children, delete=False)
        order = set(self.order)
        merged = 0
        for key in txn.cursor(db=self.storage.origin_files).iternext(keys=True, values=False):
            origin, relpath = split_origin_key(key)
            if relpath and origin in order:   # (a path in several origins is merged again: harmless)
                self.placed(txn, relpath)
                merged += 1
        return merged


class TagView(View):
    """The tag view: a derived view rebuilt as a whole once a scan or refresh is done. `spec`
    names what it was built for (a change of template or of the tag reader rebuilds it)."""

    name = "tag"
    deferred = True

    def __init__(self, template: Template):
        self.template = template
        self.tag_version = TAG_VERSION
        self.spec = f"tags:{TAG_VERSION}:{template.text}".encode()
        self._dirty = False

    @property
    def pending(self) -> bool:
        return self._dirty

    def placed(self, txn, relpath: bytes) -> None:
        self._dirty = True

    def settle(self, txn) -> int:
        if not self._dirty:
            return 0
        return self.rebuild(txn)

    def rebuild(self, txn) -> int:
        self._dirty = False
        return write(txn, self.storage, build(txn, self.storage, self.order, self.template), self.recent)


def view_for(layout) -> View:
    """The view a ``[layout]`` configuration asks for."""
    return TagView(Template(layout.template)) if layout.mode == "tags" else PathsView()
