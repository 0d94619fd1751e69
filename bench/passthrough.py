"""A minimal fusepy read-only passthrough: the ceiling of our stack (fusepy + libfuse2), written
for the benchmark only. Usage: python -m bench.passthrough ORIGIN MOUNTPOINT"""
import errno
import os
import sys

from fuse import FUSE, FuseOSError, Operations


class Passthrough(Operations):
    use_ns = True

    def __init__(self, root):
        self.root = root

    def _p(self, path):
        return self.root + path

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._p(path))
        except OSError as e:
            raise FuseOSError(e.errno)
        return {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid")} | {
            "st_mtime": st.st_mtime_ns, "st_atime": st.st_atime_ns, "st_ctime": st.st_ctime_ns}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._p(path))]

    def open(self, path, flags):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise FuseOSError(errno.EROFS)
        return os.open(self._p(path), os.O_RDONLY)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def release(self, path, fh):
        os.close(fh)


if __name__ == "__main__":
    FUSE(Passthrough(sys.argv[1]), sys.argv[2], foreground=True, ro=True, nothreads=False)
