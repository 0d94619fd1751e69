"""musicfs mounts in tests: a daemon started as a user starts it, an in-process mount, and what
tests read through them. Every mount is cleaned up, even when a test fails."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from testkit.configs import toml_config
from testkit.process import wait_until


ROOT = Path(__file__).resolve().parent.parent.parent


MUSICFS = [sys.executable, "-m", "musicfs.cli"]


def read_file(path) -> bytes:
    """The whole file through a fresh, unbuffered open (every read reaches the filesystem)."""
    with open(path, "rb", buffering=0) as f:
        return f.read()


def read_outcome(path):
    """The whole file through a fresh open, or the errno that open or read failed with."""
    try:
        return read_file(path)
    except OSError as e:
        return e.errno


def is_mounted(mountpoint: Path) -> bool:
    target = os.path.abspath(mountpoint)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def force_unmount(mountpoint: Path) -> None:
    subprocess.run(["fusermount", "-u", "-z", str(mountpoint)], capture_output=True)


def daemon_pid(cache_dir: Path) -> int | None:
    try:
        text = (cache_dir / "musicfs.lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def run_musicfs(*args, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*MUSICFS, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


class Daemon:
    """`musicfs MOUNTPOINT -c CONFIG` as a user runs it; stop() unmounts and reaps it."""

    def __init__(self, tmp: Path, origins: list[tuple[str, Path]], **sections):
        self.tmp = tmp
        self.mountpoint = tmp / "mnt"
        self.mountpoint.mkdir(exist_ok=True)
        self.cache_dir = tmp / "cache"
        self.log_file = tmp / "musicfs.log"
        self.config = tmp / "config.toml"
        self.config.write_text(toml_config(origins, self.cache_dir, self.log_file, **sections))
        self.pid: int | None = None

    def start(self, *extra) -> subprocess.CompletedProcess:
        result = run_musicfs(self.mountpoint, "-c", self.config, *extra)
        if result.returncode == 0:
            self.pid = daemon_pid(self.cache_dir)
        return result

    def mount(self, *extra) -> "Daemon":
        result = self.start(*extra)
        assert result.returncode == 0, f"mount failed: {result.stderr}\n{self.log()}"
        assert is_mounted(self.mountpoint)
        return self

    def path(self, relative: str) -> Path:
        return self.mountpoint / relative

    def log(self) -> str:
        try:
            return self.log_file.read_text()
        except OSError:
            return ""

    def stop(self) -> None:
        if is_mounted(self.mountpoint):
            result = run_musicfs("unmount", self.mountpoint, timeout=60)
            if result.returncode != 0:
                force_unmount(self.mountpoint)
        if self.pid and alive(self.pid):
            try:
                wait_until(lambda: not alive(self.pid), timeout=15, message="daemon exit")
            except AssertionError:
                os.kill(self.pid, 9)
        self.pid = None


class InProcessMount:
    """A real FUSE mount of a Service built in this process (so tests can swap in faulty origins).
    FUSE runs in a thread; stop() unmounts and joins it."""

    def __init__(self, service, mountpoint: Path, **fuse_options):
        from musicfs.fs import FS_ENCODING, MusicFS, MusicFuse

        self.service = service
        self.mountpoint = mountpoint
        self.fs = MusicFS(service)
        ready = threading.Event()
        self.fs.on_mounted = ready.set
        self.error: BaseException | None = None

        def serve():
            try:
                MusicFuse(self.fs, str(mountpoint), foreground=True, nothreads=False, encoding=FS_ENCODING,
                     fsname="musicfs-test", ro=True, **fuse_options)
            except BaseException as e:  # reported by start()
                self.error = e
                ready.set()

        self.thread = threading.Thread(target=serve, name="fuse-test", daemon=True)
        self.thread.start()
        if not ready.wait(30) or self.error:
            raise RuntimeError(f"in-process mount failed: {self.error}")
        os.stat(mountpoint)  # returns once the kernel has finished INIT
        from musicfs.daemon.process import set_read_ahead
        set_read_ahead(mountpoint, service.config.fuse.read_ahead)   # as the daemon does

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            force_unmount(self.mountpoint)
        self.thread.join(timeout=30)
        # libfuse put SIGPIPE back to its default (death) on the way out, as in the daemon
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.service.stop()


DT_DIR, DT_REG = 4, 8


def dirent_types(directory: Path) -> dict[bytes, int]:
    """name -> d_type straight from getdents64(2): what a listing told the kernel, no stat."""
    import ctypes
    import struct
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    types = {}
    try:
        buf = ctypes.create_string_buffer(65536)
        while (n := libc.syscall(217, fd, buf, len(buf))) > 0:   # 217 = SYS_getdents64 (x86-64)
            pos = 0
            while pos < n:
                _, _, reclen, dtype = struct.unpack_from("<QqHB", buf.raw, pos)
                name = buf.raw[pos + 19:pos + reclen].split(b"\0", 1)[0]
                types[name] = dtype
                pos += reclen
        if n < 0:
            raise OSError(ctypes.get_errno(), "getdents64")
    finally:
        os.close(fd)
    return types


TAGS = {"layout": {"mode": "tags"}}


def tree(mountpoint: Path) -> set[str]:
    """The files of a mount, relative to it; without the tag view's .search/ and .collections/
    (tests/test_search.py looks at those)."""
    found = set()
    for directory, folders, names in os.walk(mountpoint):
        if directory == str(mountpoint):
            folders[:] = [f for f in folders if f not in (".search", ".collections")]
        found.update(os.path.relpath(os.path.join(directory, name), mountpoint) for name in names)
    return found
