"""A real hung NAS for tests: a FUSE passthrough whose server can stop answering.

Run as its own process: ``python -m tests.support.hangfs BACKING MOUNTPOINT CONTROL_DIR [--writable]``
(writable: a disk that hangs, e.g. for a cache's chunks/). It serves
BACKING at MOUNTPOINT. While ``CONTROL_DIR/hang`` exists, every request is *received* by the
server and then not answered: the handler waits until the file is removed. The caller's thread
is then in the kernel's uninterruptible wait for a FUSE answer, which is what a dead NFS, SMB
or sshfs server does to its clients (a SIGSTOPped server is a different fault: its requests
are still queued in the kernel and fail when it dies). ``CONTROL_DIR/eio`` lists relative paths,
one per line: listing or opening them (or anything below them) fails with EIO, like a
directory an SMB server cannot read; their attributes are still served.

The kernel caches nothing (attr/entry timeouts 0, direct_io), so every access reaches the
server and is subject to the switches above.
"""
from __future__ import annotations

import errno
import os
import sys
import time

from fuse import FUSE, FuseOSError, Operations

POLL = 0.02  # how often a held request looks at the hang switch (the server's own loop)


class HangFS(Operations):
    def __init__(self, backing: str, control: str):
        self.backing = os.path.realpath(backing)
        self.hang_flag = os.path.join(control, "hang")
        self.eio_list = os.path.join(control, "eio")
        self.held = os.path.join(control, "held")   # count of requests being held, for tests

    def _gate(self, path: str, listing: bool = True) -> str:
        if os.path.exists(self.hang_flag):
            with open(self.held, "a") as f:
                f.write(f"{path}\n")
            while os.path.exists(self.hang_flag):
                time.sleep(POLL)
        rel = path.strip("/")
        if not listing:
            return os.path.join(self.backing, rel)
        try:
            with open(self.eio_list) as f:
                failing = [line.strip().strip("/") for line in f if line.strip()]
        except FileNotFoundError:
            failing = []
        for prefix in failing:
            if rel == prefix or rel.startswith(prefix + "/"):
                raise FuseOSError(errno.EIO)
        return os.path.join(self.backing, rel)

    def getattr(self, path, fh=None):
        real = self._gate(path, listing=False)
        try:
            st = os.lstat(real)
        except OSError as e:
            raise FuseOSError(e.errno) from None
        return {key: getattr(st, key) for key in ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid",
                                                    "st_atime", "st_mtime", "st_ctime", "st_ino")}

    def readdir(self, path, fh):
        real = self._gate(path)
        try:
            return [".", "..", *os.listdir(real)]
        except OSError as e:
            raise FuseOSError(e.errno) from None

    def open(self, path, flags):
        real = self._gate(path)
        try:
            return os.open(real, flags)
        except OSError as e:
            raise FuseOSError(e.errno) from None

    def read(self, path, size, offset, fh):
        self._gate(path)
        return os.pread(fh, size, offset)

    def release(self, path, fh):
        os.close(fh)
        return 0

    # -- writable mode (a cache disk): the same gate, then the backing directory ---------------

    def _errno(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            raise FuseOSError(e.errno) from None

    def create(self, path, mode, fi=None):
        return self._errno(os.open, self._gate(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def write(self, path, data, offset, fh):
        self._gate(path)
        return self._errno(os.pwrite, fh, data, offset)

    def truncate(self, path, length, fh=None):
        self._errno(os.truncate, self._gate(path), length)

    def flush(self, path, fh):
        self._gate(path)
        return 0

    def fsync(self, path, datasync, fh):
        self._gate(path)
        return 0

    def rename(self, old, new):
        self._errno(os.rename, self._gate(old), self._gate(new))

    def unlink(self, path):
        self._errno(os.unlink, self._gate(path))

    def mkdir(self, path, mode):
        self._errno(os.mkdir, self._gate(path), mode)

    def rmdir(self, path):
        self._errno(os.rmdir, self._gate(path))

    def chmod(self, path, mode):
        self._errno(os.chmod, self._gate(path), mode)

    def utimens(self, path, times=None):
        self._errno(os.utime, self._gate(path), times)

    def statfs(self, path):
        self._gate(path)
        st = os.statvfs(self.backing)
        return {key: getattr(st, key) for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                    "f_files", "f_ffree", "f_namemax")}


def main(argv: list[str]) -> None:
    writable = "--writable" in argv
    backing, mountpoint, control = [a for a in argv if a != "--writable"]
    FUSE(HangFS(backing, control), mountpoint, foreground=True, nothreads=False, ro=not writable,
         fsname="hangfs", attr_timeout=0, entry_timeout=0, negative_timeout=0, direct_io=True, use_ino=True)


if __name__ == "__main__":
    main(sys.argv[1:])
