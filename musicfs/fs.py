"""The FUSE face of musicfs: translates fusepy callbacks into catalog and reader calls.

Nothing here decides anything: paths become catalog lookups, reads become reader calls by
path, every exception becomes an errno in :func:`musicfs.errors.to_errno` (never escaping
into fusepy, which would turn it into EINVAL), and every write-type call is EROFS. Paths
arrive as str decoded with surrogateescape, so non-UTF-8 names round-trip; readdir and read,
the hot calls, get them as bytes through :class:`MusicFuse`.
"""
from __future__ import annotations

import codecs
import ctypes
import errno
import functools
import logging
import os
import stat
import threading
import time

import xxhash
from fuse import FUSE, FuseOSError, Operations, c_stat

from . import logs
from .catalog.smart import KIND_LINK, SmartFolders
from .errors import to_errno
from .origins import KIND_DIR

# fusepy decodes paths with one codec name and strict errors; this codec is UTF-8 that maps
# undecodable bytes to surrogates and back, so any byte string is a valid path.
FS_ENCODING = "musicfs-surrogateescape"


def _lookup_codec(name):
    if name.replace("_", "-") != FS_ENCODING:
        return None
    return codecs.CodecInfo(
        name=FS_ENCODING,
        encode=lambda text, errors="strict": codecs.utf_8_encode(text, "surrogateescape"),
        decode=lambda data, errors="strict": codecs.utf_8_decode(data, "surrogateescape", True),
    )


codecs.register(_lookup_codec)
log = logging.getLogger(__name__)

_DIR_MODE = stat.S_IFDIR | 0o555
_FILE_MODE = stat.S_IFREG | 0o444
_LINK_MODE = stat.S_IFLNK | 0o777
_MODES = {KIND_DIR: _DIR_MODE, KIND_LINK: _LINK_MODE}
_BLOCK = 512


# libfuse calls into Python from threads it created itself. For each call, ctypes creates a
# Python thread state and destroys it on return (with an mmap/munmap of its frame stack, a TLB
# shootdown across CPUs): measured, that was most of the cost of a small request. Taking one
# extra PyGILState reference per libfuse thread, never given back, keeps its thread state alive
# between calls; ctypes' own Ensure/Release around each call then only takes and drops the GIL.
# The marker is thread-local data, which lives in the thread state itself: a new libfuse thread
# (even one reusing a dead thread's id) starts without it.
_thread_state = threading.local()
_ensure_thread_state = ctypes.pythonapi.PyGILState_Ensure


def _keep_thread_state() -> None:
    if not getattr(_thread_state, "kept", False):
        _ensure_thread_state()
        _thread_state.kept = True


def inode_of(path: bytes) -> int:
    """A file's inode number, derived from its shown path (the mount uses `use_ino`): the same
    after a remount or a restart, which NFS/Samba re-exports and media servers that key on
    inodes rely on. 63 bits of XXH3: a collision among a million paths has odds ~1e-7. Numbers
    0 and 1 are not used for files (1 is the root)."""
    if path == b"/":
        return 1
    number = xxhash.xxh3_64_intdigest(path) >> 1
    return number if number > 1 else number + 2


class MusicFuse(FUSE):
    """fusepy's FUSE with leaner readdir and read, the two calls that come by the thousand.

    fusepy builds a ctypes stat from a dict and re-encodes the name for every directory
    entry, and decodes every path; here paths and names stay the catalog's bytes and each
    entry gets one of two prebuilt structs."""

    @staticmethod
    def _wrapper(func, *args, **kwargs):
        # fusepy's entry for every call libfuse makes into Python.
        _keep_thread_state()
        return FUSE._wrapper(func, *args, **kwargs)

    def readdir(self, path, buf, filler, offset, fip):
        # One stat struct for the whole listing: libfuse copies what it needs (type and inode
        # number) into the kernel's buffer before the filler returns.
        st = c_stat()
        entry = ctypes.pointer(st)
        st.st_mode = _DIR_MODE
        st.st_ino = inode_of(path)
        filler(buf, b".", entry, 0)
        # (an entry numbered 0 is one readdir(3) skips: `ls -a` would show no "..")
        st.st_ino = inode_of(path.rpartition(b"/")[0] or b"/")
        filler(buf, b"..", entry, 0)
        prefix = path.rstrip(b"/") + b"/"
        for name, kind in self.operations("readdir", path, None):
            st.st_mode = _MODES.get(kind, _FILE_MODE)
            st.st_ino = inode_of(prefix + name)
            if filler(buf, name, entry, 0):
                break  # the kernel's buffer is full
        return 0

    def open(self, path, fip):
        # The handle is the version tag of the entry opened; a file that changed lately is
        # opened with direct I/O, and the kernel keeps its pages only if the open before was of
        # the same version (see MusicFS.open). fusepy's open cannot set either flag.
        info = fip.contents
        info.fh, direct, keep = self.operations("open", path, info.flags)
        if direct:
            info.direct_io = 1
        elif keep:
            info.keep_cache = 1
        return 0

    def read(self, path, buf, size, offset, fip):
        # The path stays bytes, and the piece of the chunk is copied straight from the chunk's
        # buffer into libfuse's: fusepy would decode the path and copy the slice twice.
        data, start, length = self.operations("read", path, size, offset, fip.contents.fh if fip else 0)
        if length:
            ctypes.memmove(buf, ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value + start, length)
        return length


def _fsencode(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def translated(method):
    """Run a callback, turning any exception into FuseOSError(errno) in one place."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self, path, *args):
        # list.append/pop are atomic: a lock-free count of calls in progress (see stop_serving)
        self._in_progress.append(None)
        try:
            if self.service.stopping:
                raise FuseOSError(errno.EIO)
            if self.trace:
                return _traced(method, self, path, args)
            return method(self, path, *args)
        except FuseOSError:
            raise
        except BaseException as e:  # noqa: BLE001 - nothing may escape into fusepy
            raise FuseOSError(to_errno(e, name, path)) from None
        finally:
            self._in_progress.pop()
    return wrapper


def _traced(method, self, path, args):
    """-v: one DEBUG line per request, with its arguments, outcome and duration."""
    started = time.perf_counter()
    shown = path.decode(errors="replace") if isinstance(path, bytes) else path
    try:
        result = method(self, path, *args)
    except BaseException as e:
        log.debug("%s %s %s -> %s (%.2f ms)", method.__name__, shown, args, type(e).__name__,
                  (time.perf_counter() - started) * 1000)
        raise
    outcome = f"{result[2]} bytes" if method.__name__ == "read" else "ok"
    log.debug("%s %s %s -> %s (%.2f ms)", method.__name__, shown, args, outcome, (time.perf_counter() - started) * 1000)
    return result


def _read_only(self, *args):
    raise FuseOSError(errno.EROFS)


class MusicFS(Operations):
    use_ns = True  # fusepy: times in integer nanoseconds

    def __init__(self, service):
        self.service = service
        self.catalog = service.catalog
        self.reader = service.reader
        self.smart: SmartFolders = service.smart   # .search/ and .collections/ (tag view only)
        self._uid, self._gid = os.getuid(), os.getgid()
        self.on_mounted = None  # called once the kernel has answered INIT (the daemon's readiness)
        self._in_progress: list = []
        # -v: every request logged (decided once: a check per request would cost on the hot path)
        self.trace = logs.verbosity() > 0


    # -- lifecycle -----------------------------------------------------------------------------

    def init(self, path):
        self.service.start()
        if self.on_mounted is not None:
            self.on_mounted()

    def destroy(self, path):
        self.service.stop()

    def stop_serving(self, drain: float = 5.0) -> None:
        """Stop while still mounted (a stop signal; the kernel may keep sending requests until
        the last open file is closed): new calls fail with EIO, reads waiting on origins fail
        now, and the cache index is closed once the calls in progress have returned."""
        def wait_idle():
            deadline = time.monotonic() + drain
            while self._in_progress and time.monotonic() < deadline:
                time.sleep(0.01)
            return not self._in_progress
        self.service.stop(before_close=wait_idle)

    # -- metadata --------------------------------------------------------------------------------

    @translated
    def getattr(self, path, fh=None):
        raw_path = _fsencode(path)
        if self.smart.serves(raw_path):
            kind, size = self.smart.kind(raw_path)
            mtime_ns = self.catalog.attrs(b"/")[2]
        else:
            attrs = self.catalog.attrs(raw_path)
            if attrs is None:
                raise FuseOSError(errno.ENOENT)
            kind, size, mtime_ns = attrs
        return {
            "st_ino": inode_of(raw_path),
            "st_mode": _MODES.get(kind, _FILE_MODE),
            "st_nlink": 2 if kind == KIND_DIR else 1,
            "st_size": size,
            "st_blocks": (size + _BLOCK - 1) // _BLOCK,
            "st_mtime": mtime_ns, "st_ctime": mtime_ns, "st_atime": mtime_ns,
            "st_uid": self._uid, "st_gid": self._gid,
        }

    @translated
    def readdir(self, path: bytes, fh):
        """[(name, kind)] of a directory, names as bytes; MusicFuse.readdir hands them to the
        kernel with their type, which lets `find` and friends walk the tree without a lookup
        (a round trip into Python) per file."""
        if self.smart.enabled:
            if self.smart.serves(path):
                return self.smart.children(path)
            if path == b"/":
                return self.catalog.children(path) + self.smart.folders()
        children = self.catalog.children(path)
        if children is None:
            raise FuseOSError(errno.ENOTDIR)
        return children

    @translated
    def access(self, path, mode):
        self.getattr(path)   # ENOENT if it is not there
        if mode & os.W_OK:
            raise FuseOSError(errno.EROFS)
        return 0

    @translated
    def statfs(self, path):
        # `df` shows the cache: its size is [cache].max_size, its free space what is left of it.
        # A read-only mount reporting 0 free (the usual answer) sets off every "disk full" alert
        # (node_exporter does not skip FUSE mounts). The figures are the last ones the daemon
        # measured: asking the cache disk here would hang `df` with a hung cache disk.
        service = self.service
        block = service.cache_disk_stats.f_frsize or 4096
        size = service.store.max_size
        return {"f_bsize": block, "f_frsize": block, "f_blocks": size // block,
                "f_bfree": max(size - service.cached_bytes, 0) // block,
                "f_bavail": max(size - service.cached_bytes, 0) // block,
                "f_files": 0, "f_ffree": 0, "f_namemax": 255}

    # Extended attributes are deliberately not implemented: libfuse answers ENOSYS, after which
    # the kernel stops asking. Otherwise `ls -l` costs two extra round trips into Python per
    # file (it probes ACLs and security labels), which made `ls -lR` slower than bindfs.
    getxattr = listxattr = None

    @translated
    def readlink(self, path):
        raw_path = _fsencode(path)
        if not self.smart.serves(raw_path):
            raise FuseOSError(errno.EINVAL)  # the catalog itself holds no symlinks
        return self.smart.readlink(raw_path).decode("utf-8", "surrogateescape")

    # -- file contents ---------------------------------------------------------------------------

    @translated
    def open(self, path: bytes, flags):
        """(handle, direct_io, keep_cache) for MusicFuse.open. The handle names the version of
        the file that was opened, so a read can tell when the file changed since (it then fails
        rather than mix versions). A file whose entry changed within the kernel's attribute
        timeout is opened with direct I/O: the kernel may still hold the old version's size and
        pages, and must neither cut the new version at the old size nor fill gaps with old
        pages. Otherwise its pages are kept from earlier opens only if those were of the same
        version: the kernel drops them when told nothing (the mount does not use auto_cache,
        which would keep them whenever size and mtime are unchanged). A collection's playlist
        is made anew as the library changes: direct I/O, no pages kept."""
        if self.smart.serves(path):
            return self.smart.open_playlist(path), True, False
        return self.catalog.open_version(path)

    # release is deliberately not implemented: libfuse then completes it in C, without a round
    # trip into Python (a handle needs no cleanup). Write opens never get here: the mount is
    # `ro`, so the kernel answers EROFS. The reader keeps per-file state (known chunks,
    # sequential position) keyed by path.
    release = None

    @translated
    def read(self, path: bytes, size, offset, fh):
        """(buffer, start, length): MusicFuse.read copies buffer[start:start+length] out."""
        if self.smart.serves(path):
            return self.smart.read_playlist(fh, offset, size)
        return self.reader.read_span(path, offset, size, fh)

    # -- everything that would modify: read-only filesystem ------------------------------------

    create = write = truncate = unlink = mkdir = rmdir = rename = _read_only
    chmod = chown = utimens = symlink = link = mknod = _read_only
    setxattr = removexattr = _read_only

    # Left unimplemented on purpose: libfuse then answers these without calling Python (and
    # the kernel stops sending FLUSH after the first ENOSYS), saving a round trip per open/close
    # of every file a tag scanner touches. readdir reports a missing or non-directory path.
    opendir = releasedir = flush = fsync = fsyncdir = None
