"""The `local` origin: a directory on this machine (a local disk, or an NFS/SMB mount of a NAS)."""
from __future__ import annotations

import logging
import contextlib
import functools
import os
import stat as stat_module
import struct

from ..errors import OriginChanged, OriginMissing, OriginUnavailable
from .base import KIND_DIR, KIND_FILE, Origin, OriginEntry, join

log = logging.getLogger(__name__)

# A local file's version token: its ctime. A temp file renamed over the original (what taggers
# do) is a new file with a new ctime, and a rewrite in place that restores size and mtime
# (utime) still moves ctime, which no user-space tool can set back. The inode number would add
# nothing and is not stable on every origin: FUSE mounts (sshfs) and CIFS with noserverino
# number files afresh after a remount, which would look like every file changed.
FILE_TOKEN = struct.Struct(">Q")
def file_token(st: os.stat_result) -> bytes:
    return FILE_TOKEN.pack(st.st_ctime_ns)


class LocalOrigin(Origin):
    def __init__(self, name: str, path: os.PathLike | str):
        super().__init__(name)
        self.root = os.fsencode(os.path.abspath(os.fspath(path)))
        # Resolved on first use, not here: constructing an origin must never touch a NAS that
        # may hang (the probe builds origins in its main thread).
        self._real_root: bytes | None = None

    def describe(self) -> str:
        return f"{self.name} ({os.fsdecode(self.root)})"

    def _abs(self, relpath: bytes) -> bytes:
        # Catalog paths never contain b".." components (they come from list_dir), but a
        # defensive check costs nothing and keeps a bad caller from escaping the root.
        if relpath.startswith(b"/") or b"/../" in b"/" + relpath + b"/":
            raise OriginUnavailable(f"refusing path outside origin {self.name}: {relpath!r}")
        return self.root + b"/" + relpath if relpath else self.root

    def _inside(self, path: bytes) -> bool:
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        return real == self._real_root or real.startswith(self._real_root + b"/")

    def _entry(self, name: bytes, st: os.stat_result) -> OriginEntry | None:
        if stat_module.S_ISREG(st.st_mode):
            return OriginEntry(name, KIND_FILE, st.st_size, st.st_mtime_ns, token=file_token(st))
        if stat_module.S_ISDIR(st.st_mode):
            return OriginEntry(name, KIND_DIR, 0, st.st_mtime_ns, (st.st_dev, st.st_ino))
        return None  # sockets, fifos, devices: not music

    def list_dir(self, relpath: bytes) -> list[OriginEntry]:
        entries = []
        with os.scandir(self._abs(relpath)) as it:
            for dirent in it:
                try:
                    if dirent.is_symlink():
                        if not self._inside(dirent.path):
                            log.info("origin %s: leaving out symlink %s: its target is outside the origin",
                                     self.name, os.fsdecode(join(relpath, dirent.name)))
                            continue
                        st = os.stat(dirent.path)
                    else:
                        st = dirent.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while listing, or a dangling symlink
                # Any other error (EIO, EACCES) fails the whole listing: leaving the entry out
                # would make a scan treat it as deleted.
                entry = self._entry(dirent.name, st)
                if entry is not None:
                    entries.append(entry)
        return entries

    def stat(self, relpath: bytes) -> OriginEntry:
        path = self._abs(relpath)
        st = os.stat(path)
        entry = self._entry(os.path.basename(relpath), st)
        if entry is None:
            raise OriginUnavailable(f"{os.fsdecode(path)} is not a regular file or directory")
        return entry

    def read(self, relpath: bytes, offset: int, size: int, expect: OriginEntry | None = None) -> bytes:
        with self.reading(relpath, expect) as read:
            return read(offset, size)

    @contextlib.contextmanager
    def reading(self, relpath: bytes, expect: OriginEntry | None = None):
        """One open of the file for all the reads (a tag parser makes several), its version
        checked before the first and after the last."""
        fd = os.open(self._abs(relpath), os.O_RDONLY | os.O_CLOEXEC)
        try:
            if expect is not None:
                self._verify(relpath, fd, expect)
            yield functools.partial(_pread_fully, fd)
            if expect is not None:
                # Checked again after the reads: a rewrite in place updates mtime before it
                # changes any byte, so bytes read before this check are of the expected version.
                self._verify(relpath, fd, expect)
        finally:
            os.close(fd)

    def _verify(self, relpath: bytes, fd: int, expect: OriginEntry) -> None:
        st = os.fstat(fd)
        if expect.same_version(st.st_size, st.st_mtime_ns, file_token(st)):
            return
        current = self._entry(os.path.basename(relpath), st)
        raise OriginChanged(f"{os.fsdecode(relpath)} on origin {self.name} changed since it was catalogued "
                            f"(size {expect.size} -> {st.st_size})", current)

    def check(self) -> None:
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            raise OriginMissing(f"{os.fsdecode(self.root)} does not exist") from None
        if not stat_module.S_ISDIR(st.st_mode):
            raise OriginMissing(f"{os.fsdecode(self.root)} is not a directory")
        # A stat of the root can be answered from the client's attribute cache on NFS; opening
        # the directory makes the server answer.
        with os.scandir(self.root) as it:
            next(it, None)


def _pread_fully(fd: int, offset: int, size: int) -> bytes:
    data = os.pread(fd, size, offset)
    if 0 < len(data) < size:
        # Network filesystems may return short reads before EOF: keep reading.
        parts = [data]
        got = len(data)
        while got < size:
            more = os.pread(fd, size - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        data = b"".join(parts)
    return data
