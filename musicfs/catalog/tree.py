"""The shown tree's files and folders as one view's settle changes them (``entries`` and
``children``): folders made and pruned as files come and go, each folder's mtime the newest
below it (the root's too), changed files noted for the FUSE layer (RecentChanges)."""
from __future__ import annotations

from ..origins.base import KIND_DIR, KIND_FILE
from .records import (ROOT, carried_version, child_key, children_prefix, encode_entry, entry_attrs, entry_kind,
                      split)


class ShownTree:
    """Changes to ``entries``/``children`` gathered during one settle, then applied: removals
    first, then writes (a path given up by one file and taken by another in the same settle is
    overwritten). Parents are made and pruned, their mtimes kept the newest below."""

    def __init__(self, txn, storage, recent):
        self.txn, self.storage, self.recent = txn, storage, recent
        self.ops: dict[bytes, tuple | None] = {}
        self.touched_dirs: set[bytes] = set()
        self.changed = 0

    def put(self, path: bytes, entry: tuple) -> None:
        self.ops[path] = entry
        # (its folder's cover is looked at again even if the entry turns out unchanged: the
        # tags a cover comes from may change without the file, when a scan reads them again)
        self.touched_dirs.add(split(path)[0])

    def remove(self, path: bytes) -> None:
        """The file at `path` gives it up; a file that takes it in this settle keeps it (claims
        are resolved one after another, so the taking may come before the giving up)."""
        if path and path not in self.ops:
            self.ops[path] = None
            self.touched_dirs.add(split(path)[0])

    def apply(self) -> None:
        ops, self.ops = self.ops, {}
        for path, entry in ops.items():
            if entry is None:
                self._remove(path)
        for path, entry in ops.items():
            if entry is not None:
                self._put(path, *entry)

    def _put(self, path: bytes, size: int, mtime_ns: int, sources, version: bytes, piece) -> None:
        txn, storage = self.txn, self.storage
        old = txn.get(path, db=storage.entries)
        version = carried_version(old, KIND_FILE, size, sources, version)
        raw = encode_entry(KIND_FILE, size, mtime_ns, sources, version, piece)
        if old is not None and bytes(old) == raw:
            return
        txn.put(path, raw, db=storage.entries)
        self.changed += 1
        parent = split(path)[0]
        self.touched_dirs.add(parent)
        if old is None:
            txn.put(child_key(path), bytes((KIND_FILE,)), db=storage.children)
            self._newer(parent, mtime_ns)
            return
        self.recent.note(path)
        old_mtime = entry_attrs(old)[2]
        if mtime_ns > old_mtime:
            self._newer(parent, mtime_ns)
        elif mtime_ns < old_mtime:
            self._recompute(parent)

    def _newer(self, directory: bytes, mtime_ns: int) -> None:
        """A file of this mtime is now below `directory`: make it and its parents, newer (the
        root too: its entry has no listing of its own)."""
        txn, storage = self.txn, self.storage
        while True:
            raw = txn.get(directory, db=storage.entries)
            if raw is not None and (entry_kind(raw) != KIND_DIR or entry_attrs(raw)[2] >= mtime_ns):
                return   # (a file where a folder should be: a template made both; the file stays)
            txn.put(directory, encode_entry(KIND_DIR, 0, mtime_ns, ()), db=storage.entries)
            if raw is None and directory != ROOT:
                txn.put(child_key(directory), bytes((KIND_DIR,)), db=storage.children)
                self.changed += 1
            if directory == ROOT:
                return
            directory = split(directory)[0]

    def _remove(self, path: bytes) -> None:
        txn, storage = self.txn, self.storage
        old = txn.get(path, db=storage.entries)
        if old is None:
            return
        txn.delete(path, db=storage.entries)
        txn.delete(child_key(path), db=storage.children)
        self.recent.note(path)
        self.changed += 1
        parent = split(path)[0]
        self.touched_dirs.add(parent)
        if entry_attrs(old)[2] >= self._mtime(parent):
            self._recompute(parent)
        elif not self._has_children(parent):
            self._recompute(parent)

    def _mtime(self, directory: bytes) -> int:
        raw = self.txn.get(directory, db=self.storage.entries)
        return entry_attrs(raw)[2] if raw is not None else 0

    def _has_children(self, directory: bytes) -> bool:
        prefix = children_prefix(directory)
        cursor = self.txn.cursor(db=self.storage.children)
        return cursor.set_range(prefix) and cursor.key().startswith(prefix)

    def _recompute(self, directory: bytes) -> None:
        """`directory` lost a child or its newest one: drop it when empty, else give it the
        newest mtime of its children; then its parent, as far as anything changed."""
        txn, storage = self.txn, self.storage
        while True:
            prefix = children_prefix(directory)
            newest = None
            cursor = txn.cursor(db=storage.children)
            if cursor.set_range(prefix):
                for key in cursor.iternext(keys=True, values=False):
                    if not key.startswith(prefix):
                        break
                    raw = txn.get(directory.rstrip(b"/") + b"/" + key[len(prefix):], db=storage.entries)
                    if raw is not None:
                        mtime = entry_attrs(raw)[2]
                        newest = mtime if newest is None else max(newest, mtime)
            old = txn.get(directory, db=storage.entries)
            if old is not None and entry_kind(old) != KIND_DIR:
                return   # a file of that name (see _newer): not a folder to update or drop
            if newest is None:
                if old is None:
                    return
                txn.delete(directory, db=storage.entries)
                if directory != ROOT:
                    txn.delete(child_key(directory), db=storage.children)
                self.changed += 1
            else:
                if old is not None and entry_attrs(old)[2] == newest:
                    return
                txn.put(directory, encode_entry(KIND_DIR, 0, newest, ()), db=storage.entries)
                if old is None and directory != ROOT:
                    txn.put(child_key(directory), bytes((KIND_DIR,)), db=storage.children)
            if directory == ROOT:
                return
            directory = split(directory)[0]
