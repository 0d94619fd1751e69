"""Starting, running and stopping the daemon: mountpoint checks, the cache lock, daemonizing.

``mount`` returns only once the kernel has answered the mount (or with a StartupError whose
message is the one line the user sees). Without ``foreground`` the work happens in a child
process that reports "ready" or its error through a pipe; the parent exits with that result.
"""
from __future__ import annotations

import errno
import logging
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import logs
from ..config import Config
from ..errors import ConfigError, MusicfsError, StartupError
from .control import ControlServer, control_handlers
from .reload import Reloader
from ..terminal import StatusLine
from ..cache_lock import CacheLock
from ..status import daemon_of_mountpoint, mounted_fstype, runtime_dir, runtime_name

log = logging.getLogger(__name__)

# How long the parent waits for the child to mount. A first mount scans never-seen origins
# first (bounded by the scan stall timeout), so this is generous.
READY_TIMEOUT = 600.0
# After a daemon released its cache, `musicfs unmount` waits this long for it to exit; longer
# only when threads stuck in a hung origin hold it, and those are not worth waiting for.
LINGER_GRACE = 2.0

# Kernel caching for a read-only library that changes only when a rescan says so:
# - No auto_cache: it keeps file pages across opens unless size or mtime changed, and a
#   replacement can keep both. MusicFS.open tells the kernel to keep them only when the open
#   before was of the same version (catalog.OpenedVersions).
# - attr_timeout/entry_timeout let the kernel reuse attributes and lookups for a while; a file
#   changed on the origin shows its new attributes at most this long after the rescan saw it.
# - negative_timeout caches "no such file" (players probe for cover.jpg, .cue, lyrics...).
# - use_ino: inode numbers come from the paths (fs.inode_of), stable across remounts.
DEFAULT_FUSE_OPTIONS = {"fsname": "musicfs", "subtype": "musicfs", "ro": True, "default_permissions": True,
                        "use_ino": True,
                        "attr_timeout": 30, "entry_timeout": 30, "negative_timeout": 10}


def check_mountpoint(mountpoint: Path) -> None:
    """Refuse a missing or busy mountpoint; clean up one left by a killed daemon."""
    try:
        # statfs always reaches the filesystem (a stat may be answered from the kernel's
        # attribute cache), so a FUSE mount whose daemon died answers ENOTCONN here.
        os.statvfs(mountpoint)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            log.warning("%s was left mounted by a daemon that died; unmounting it", mountpoint)
            lazy_unmount(mountpoint)
            try:
                os.statvfs(mountpoint)
            except OSError as again:
                raise StartupError(f"{mountpoint} is a stale mount that could not be cleaned up "
                                   f"({again.strerror}); run: fusermount -uz {mountpoint}") from None
        elif e.errno == errno.ENOENT:
            raise StartupError(f"mountpoint {mountpoint} does not exist; create it with: mkdir -p {mountpoint}") from None
        else:
            raise StartupError(f"cannot use mountpoint {mountpoint}: {e.strerror}") from None
    if not os.path.isdir(mountpoint):
        raise StartupError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise StartupError(f"{mountpoint} is already a mount point; unmount it first (musicfs unmount {mountpoint})")


def lazy_unmount(mountpoint: Path) -> None:
    subprocess.run(["fusermount", "-u", "-z", str(mountpoint)], capture_output=True, check=False)


def check_new_origins(service, warn) -> list:
    """Startup never waits on an origin the catalog already knows: its stored files are served
    at once and the background checks and rescans find out how it is. An origin never seen
    before is checked here (see Service.check_origins); returns those that answered, which the
    caller scans before mounting."""
    return service.check_origins(service.never_scanned(), warn)


def mount(config: Config, mountpoint: Path, *, foreground: bool, fuse_options: dict, verbose: int,
          load_config=None) -> None:
    """`load_config()` reads the configuration again for a reload (SIGHUP): the same file and
    command-line overrides."""
    mountpoint = Path(os.path.abspath(mountpoint))
    check_mountpoint(mountpoint)
    # The first touch of the cache disk: one that hangs must not hang `musicfs MOUNTPOINT`. A
    # disk spinning up answers well within a read's timeout.
    if not _answers_within(config.cache.dir, config.fuse.read_timeout):
        raise StartupError(f"the cache dir {config.cache.dir} does not answer within {config.fuse.read_timeout:g}s "
                           "(its disk hangs?); musicfs cannot show the library without the index kept there")
    lock = CacheLock(config.cache.dir)
    _lock_cache_dir(config, lock)
    if foreground:
        logs.setup(config.log.file, config.log.level, verbose=verbose, stderr=True)
        progress = _Progress()
        _run(config, mountpoint, fuse_options, lock,
             notify=lambda message: progress.fields(message.split()[1:]) if message.startswith("progress ")
             else progress.end(), load_config=load_config)
        return
    _daemonize(config, mountpoint, lock, fuse_options, verbose, load_config)


def _answers_within(directory: Path, timeout: float) -> bool:
    """Whether `directory` can be looked up (or made) within `timeout`. Asked by a child
    process: a process whose thread waits on a disk that hangs cannot exit until the disk
    answers, and this one must be able to exit with an error. A child left waiting ends
    whenever the disk answers; init reaps it."""
    pid = os.fork()
    if pid == 0:
        try:
            # A child left waiting must not hold the caller's output open (a pipe's reader
            # would wait for it), nor anything else.
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            directory.mkdir(parents=True, exist_ok=True)
            os.listdir(directory)
        finally:
            os._exit(0)   # its errors are for the caller to meet again, and explain
    pidfd = os.pidfd_open(pid)
    try:
        answered, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if answered:
        os.waitpid(pid, 0)
    return bool(answered)


def _lock_cache_dir(config: Config, lock: CacheLock) -> None:
    try:
        config.cache.dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"cannot create cache dir {config.cache.dir}: {e.strerror}; set [cache].dir or --cache-dir") from None
    try:
        lock.acquire()
    except OSError as e:
        raise StartupError(f"cannot lock {lock.path}: {e.strerror}") from None


def _daemonize(config, mountpoint, lock: CacheLock, fuse_options, verbose, load_config) -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_end)
        os.setsid()
        lock.write_pid(os.getpid())
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):
            os.dup2(devnull, fd)
        os.close(devnull)
        # stderr goes to a file: libfuse explains a refused mount there (an unknown -o option),
        # and a fatal error of the process would land there too.
        stderr = os.open(stderr_path(mountpoint), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.dup2(stderr, 2)
        os.close(stderr)

        def notify(message: str) -> None:
            try:
                os.write(write_end, message.encode() + b"\n")
            except OSError:
                pass
        code = 0
        try:
            logs.setup(config.log.file, config.log.level, verbose=verbose)
            _run(config, mountpoint, fuse_options, lock, notify, load_config)
        except ConfigError as e:
            log.error("%s", e)
            notify(f"config-error {e}")
            code = 2
        except MusicfsError as e:
            log.error("%s", e)
            notify(f"error {e}")
            code = 1
        except BaseException as e:
            log.exception("musicfs failed")
            notify(f"error {type(e).__name__}: {e}")
            code = 1
        finally:
            logging.shutdown()
            _remove_if_empty(stderr_path(mountpoint))
            os._exit(code)
    # the parent: wait for "ready" or an error line, then exit accordingly
    os.close(write_end)
    # The child holds the lock now. Closing our descriptor would not release a flock shared
    # across fork, but the child must be able to release it without us: forget it here.
    os.close(lock.fd)
    lock.fd = None
    message = _wait_for_child(read_end, pid)
    if message.startswith("config-error "):
        raise ConfigError(message[len("config-error "):])
    if message != "ready":
        raise StartupError(message)
    # The kernel answers INIT after init() returns; this stat waits for that.
    os.stat(mountpoint)


def _wait_for_child(read_end: int, pid: int) -> str:
    """Relay the daemon's "warn ..." lines to stderr until it says "ready" or "error ..."."""
    deadline = time.monotonic() + READY_TIMEOUT
    buffer = b""
    progress = _Progress()
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while True:
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line = raw.decode(errors="replace")
                if line.startswith("progress "):
                    progress.fields(line.split()[1:])
                    continue
                progress.end()
                if line == "ready":
                    return "ready"
                if line.startswith("error "):
                    return line[len("error "):]
                if line.startswith("config-error "):
                    return line
                if line.startswith("warn "):
                    sys.stderr.write(f"musicfs: {line[len('warn '):]}\n")
                    sys.stderr.flush()
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGTERM)
                return f"the daemon did not mount within {READY_TIMEOUT:.0f}s; see the log"
            chunk = pipe.read(4096)
            if not chunk:
                break
            buffer += chunk
    _, status = os.waitpid(pid, 0)
    return f"the daemon exited before mounting (status {status}); see the log"


class _Progress(StatusLine):
    """The first scan's progress on the terminal (files found, tags read, rate)."""

    def fields(self, fields: list[str]) -> None:
        if len(fields) != 4:
            return
        origin, files, tags, seconds = fields[0], int(fields[1]), int(fields[2]), float(fields[3])
        rate = tags / seconds if seconds > 0 else 0.0
        self.show(f"musicfs: first scan of {origin}: {files} entries found, {tags} tags read ({rate:.0f} files/s) ")


def _run(config: Config, mountpoint: Path, fuse_options: dict, lock: CacheLock, notify, load_config=None) -> None:
    """Open the cache, mount, serve until unmounted or told to stop. Runs in the daemon (or in
    the foreground). The cache lock is released as soon as the cache is closed, before the
    process exits: threads stuck in a hung origin may keep the process alive for a while, and
    must not keep the next `musicfs MOUNTPOINT` out."""
    from ..fs import FS_ENCODING, MusicFS, MusicFuse
    from .service import Service
    from .systemd import SystemdReporter

    log.info("musicfs starting: %s on %s (origins: %s; cache %s, max %d bytes)", os.getpid(), mountpoint,
             ", ".join(o.name for o in config.origins), config.cache.dir, config.cache.max_size)

    def warn(message: str) -> None:
        log.warning("%s", message)
        notify(f"warn {message}")

    service = Service.open(config, mountpoint=str(mountpoint), lock=lock)
    to_systemd = SystemdReporter.from_environment(mountpoint, service)   # no-op without $NOTIFY_SOCKET
    reloader = Reloader(service, load_config, warn, to_systemd)
    control = ControlServer(config.cache.dir, control_handlers(service, reloader))
    try:
        answered = check_new_origins(service, warn) + service.untagged()
        started = time.monotonic()
        service.initial_scan(answered, first_answer=config.health.timeout, warn=warn,
                             progress=lambda r: notify(f"progress {r.origin} {r.entries} {r.tags_read} "
                                                       f"{time.monotonic() - started:.1f}"))
        filesystem = MusicFS(service)

        def tune_and_report_ready():
            set_read_ahead(mountpoint, config.fuse.read_ahead)
            try:
                control.start()
            except OSError as e:   # rescan/pin then say there is no socket; serving goes on
                log.warning("no control socket (%s): musicfs rescan and pin will not reach this daemon", e)
            to_systemd.ready()   # before the parent hears "ready" and exits: MAINPID reaches systemd first
            notify("ready")
        # init() runs before the kernel has the INIT reply; the rest happens once it has.
        filesystem.on_mounted = lambda: threading.Thread(target=tune_and_report_ready, name="ready",
                                                         daemon=True).start()
        options = dict(DEFAULT_FUSE_OPTIONS)
        options.update(fuse_options)
        service.catalog.recent.window = kernel_cache_window(options)
        service.in_progress = lambda: len(filesystem._in_progress)
        # However the stop comes (unmount, signal): systemd hears STOPPING=1, requests stop.
        service.on_stop += [to_systemd.stopping, control.stop]
        _handle_signals(filesystem, service, mountpoint, lock, reloader.on_signal)
        try:
            MusicFuse(filesystem, str(mountpoint), foreground=True, nothreads=False, encoding=FS_ENCODING,
                      **options)
        except RuntimeError as e:
            complaint = libfuse_complaint(mountpoint)
            if complaint and "unknown option" in complaint:
                raise ConfigError(f"-o: {complaint}; see man mount.fuse for the options libfuse knows") from None
            if complaint:
                raise StartupError(f"cannot mount {mountpoint}: {complaint}") from None
            raise StartupError(f"cannot mount {mountpoint}: FUSE failed ({e}); is /dev/fuse available "
                               f"and the 'fuse' package installed?") from None
        finally:
            # libfuse ignores SIGPIPE while it serves and, on its way out, puts back the
            # default, which kills the process: closing a connection to a server that went
            # away (origin.close below) must be an EPIPE instead, as Python has it.
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    finally:
        to_systemd.stopping()   # no-op when a stop already said so
        control.stop()
        service.stop()  # no-op when destroy() or a stop signal already stopped it
        lock.release()


def stderr_path(mountpoint: Path) -> Path:
    """Where a daemonized musicfs's stderr goes (libfuse writes its own errors there)."""
    return runtime_dir() / f"{runtime_name(mountpoint)}.stderr"


def _remove_if_empty(path: Path) -> None:
    """The daemon's stderr file on its way out: kept if something was written to it (libfuse's
    complaint, a fatal error), else removed, so that mounts leave no litter behind."""
    try:
        ours, there = os.fstat(2), os.stat(path)
        if (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino) and there.st_size == 0:
            os.unlink(path)
    except OSError:
        pass


def libfuse_complaint(mountpoint: Path) -> str | None:
    """The last line libfuse wrote to this daemon's stderr ("fuse: unknown option `x'"), if
    any. In the foreground stderr is the terminal, where the user sees libfuse's line anyway."""
    path = stderr_path(mountpoint)
    try:
        ours, there = os.fstat(2), os.stat(path)
        if (ours.st_dev, ours.st_ino) != (there.st_dev, there.st_ino):
            return None
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return None
    fuse_lines = [line for line in lines if line.startswith("fuse:")]
    return fuse_lines[-1].removeprefix("fuse:").strip() if fuse_lines else None


def _handle_signals(filesystem, service, mountpoint: Path, lock: CacheLock, reload) -> None:
    """SIGTERM and SIGINT stop the daemon at once, even while reads wait on a hung origin;
    SIGHUP reloads the configuration; SIGUSR1 asks for a rescan.

    libfuse's own handlers would end its loop on SIGHUP too (unmounting), and on a stop it
    waits for every request in progress (a read waits up to read_timeout). Instead: Python's
    C-level handler writes the signal to a wakeup pipe (it cannot run Python code itself while
    the main thread is inside libfuse), and a thread woken by the pipe acts. To stop, it fails
    waiting reads, closes the cache, releases the lock and detaches the mount; libfuse's loop
    ends once the kernel drops the connection. libfuse leaves signals alone that already have
    a handler, so it does not replace these."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, lambda *_: None)

    def watch() -> None:
        while True:
            signum = os.read(read_end, 1)[0]
            if signum == signal.SIGUSR1:
                service.request_rescan()
            elif signum == signal.SIGHUP:
                # Its own thread: a reload may wait on new origins, and a stop must not wait on it.
                threading.Thread(target=reload, name="reload", daemon=True).start()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                log.info("received %s: stopping", signal.Signals(signum).name)
                filesystem.stop_serving()
                lazy_unmount(mountpoint)
                lock.release()
                return
    threading.Thread(target=watch, name="signals", daemon=True).start()


def kernel_cache_window(options: dict) -> float:
    """How long the kernel may keep using a file's old attributes after its entry changed."""
    seconds = []
    for key in ("attr_timeout", "entry_timeout"):
        try:
            seconds.append(float(options.get(key, 1.0)))
        except (TypeError, ValueError):
            seconds.append(1.0)
    return max(seconds) + 1.0


def set_read_ahead(mountpoint: Path, size: int) -> None:
    """Set the kernel's read-ahead for this FUSE mount (its backing device's read_ahead_kb).

    FUSE mounts start at 128 KiB and the INIT reply can only lower that, so the sysfs knob is
    the one way up; it needs root, and without it the mount works at the kernel's default.
    Call it once INIT is answered: the kernel applies the INIT reply's limit after our init()
    returns. The stat() below is answered by this daemon, so it also waits for exactly that."""
    if not size:
        return
    try:
        device = os.stat(mountpoint).st_dev
        knob = f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb"
        with open(knob, "w") as f:
            f.write(f"{max(size // 1024, 4)}\n")
    except OSError as e:
        log.info("kernel read-ahead left at its default (%s: %s)", e.filename, e.strerror)


def unmount(mountpoint: Path, *, wait: float = 30.0) -> str | None:
    """Unmount and wait until the daemon has closed the cache and released its lock.

    A mount with open files (a player, or readers stuck on a hung origin) cannot be unmounted
    the normal way; it is then detached lazily and its daemon told to stop (SIGTERM), which
    fails the reads in progress. Returns a note for the user in that case."""
    mountpoint = Path(os.path.abspath(mountpoint))
    # (the mount table first: an lstat of a mount whose daemon does not answer never returns)
    if mounted_fstype(str(mountpoint)) is None and not os.path.lexists(mountpoint):
        raise StartupError(f"{mountpoint} does not exist")
    pid, cache_dir = daemon_of_mountpoint(mountpoint)
    result = subprocess.run(["fusermount", "-u", str(mountpoint)], capture_output=True, text=True)
    note = None
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "fusermount failed"
        if "busy" in reason and pid:
            os.kill(pid, signal.SIGTERM)   # the daemon fails what is in progress and detaches itself
            note = f"{mountpoint} had open files; they now fail with an I/O error"
        elif "not found in /etc/mtab" in reason or "not mounted" in reason or "Invalid argument" in reason:
            raise StartupError(f"{mountpoint} is not mounted")
        else:
            raise StartupError(f"cannot unmount {mountpoint}: {reason}")
    deadline = time.monotonic() + wait
    while pid and _alive(pid) and time.monotonic() < deadline:
        # A daemon with threads stuck in a hung origin lingers until the origin answers; it is
        # done with the cache once its lock is free. Any other daemon exits a moment later.
        if cache_dir is not None and CacheLock.holder(cache_dir) != pid:
            deadline = min(deadline, time.monotonic() + LINGER_GRACE)
        time.sleep(0.05)
    return note


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; its parent just has not reaped it
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
