"""The tag view: the shown tree computed from the catalog's origin records and their tags.

The catalog's ``origin_files`` (what each origin has) and ``tags`` (what each audio file says)
are the record; the shown tree (``entries``/``children``, the one seam fs.py and the reader
resolve paths through) is derived from them by :func:`build` and written by :func:`write` in
ONE write transaction: readers see the old tree or the new one, never half of each. Only the
entries that differ are written, so a rebuild that changes nothing writes nothing.

Placement (the contract of ``[layout] mode = "tags"``):

* Files are merged by their origin-relative path first, as in the paths view: the same path in
  two origins is one file whose first origin is read and the others are replicas.
* Audio files (:data:`musicfs.tags.AUDIO_EXTENSIONS`) go where the template puts them
  (:mod:`musicfs.layout`). When several land on one path, the first in origin order, then by
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

from .catalog import carried_version, content_version, decode_record, encode_entry, split
from .layout import (Template, album_key, directory_name, disc_number, display_name, field_values,
                     fit_directories, shown_path, split_ext)
from .origins import KIND_DIR, KIND_FILE
from .tags import AUDIO_EXTENSIONS, TAG_VERSION
from .tags import decode_record as decode_tags

log = logging.getLogger(__name__)

SIDECAR_EXTENSIONS = frozenset("jpg jpeg png gif webp cue lrc log txt pdf nfo m3u m3u8".split())


def collision_suffix(relpath: bytes) -> str:
    return f" [{xxhash.xxh3_64_hexdigest(relpath)[:6]}]"


def build(txn, storage, order: list[str], template: Template) -> dict[bytes, tuple]:
    """shown path -> (kind, size, mtime_ns, sources, version) of every entry of the tag view."""
    rank = {name: index for index, name in enumerate(order)}
    holders: dict[bytes, list] = collections.defaultdict(list)
    for key, raw in txn.cursor(db=storage.origin_files):
        origin, _, relpath = bytes(key).partition(b"\0")
        name = origin.decode()
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
            raw_tags = txn.get(copies[0][0].encode() + b"\0" + relpath, db=storage.tags)
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
        parent, name = split(path)
        txn.delete(path, db=storage.entries)
        txn.delete(parent + b"\0" + name, db=storage.children)
        recent.note(path)
        changed += 1
    for path, (kind, size, mtime_ns, sources, version) in entries.items():
        old = txn.get(path, db=storage.entries)
        version = carried_version(old, kind, size, sources, version)
        raw = encode_entry(kind, size, mtime_ns, sources, version)
        if old is not None and bytes(old) == raw:
            continue
        parent, name = split(path)
        txn.put(path, raw, db=storage.entries)
        txn.put(parent + b"\0" + name, bytes((kind,)), db=storage.children)
        if old is not None and kind == KIND_FILE:
            recent.note(path)
        changed += 1
    return changed



class TagView:
    """The tag view as the scanner's derived view: `spec` names what it was built for (a
    change of template or of the tag reader rebuilds it), `rebuild` recomputes it."""

    def __init__(self, template: Template):
        self.template = template
        self.tag_version = TAG_VERSION
        self.spec = f"tags:{TAG_VERSION}:{template.text}".encode()

    def rebuild(self, txn, storage, order: list[str], recent) -> int:
        return write(txn, storage, build(txn, storage, order, self.template), recent)
