"""Origins that fail the way origins fail in the field: a real FUSE origin that hangs (its server
holds each request unanswered), a server that misbehaves, a proxy that drops or delays, and an
in-process origin wrapper injecting errors (FaultyOrigin)."""
from __future__ import annotations

import collections
import contextlib
import errno as errno_module
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from musicfs.errors import OriginTransient
from musicfs.origins import Origin
from testkit.process import wait_until

from .mounts import ROOT, force_unmount, is_mounted


class HungOrigin:
    """A real FUSE origin (tests/support/hangfs.py in its own process) that a test can make hang: its
    server receives each request and does not answer until released. `path` is the origin
    directory to give musicfs; `backing` is where the files really are."""

    def __init__(self, tmp: Path, name: str = "hung"):
        self.backing = tmp / f"{name}-backing"
        self.path = tmp / f"{name}-mnt"
        self.control = tmp / f"{name}-control"
        for d in (self.backing, self.path, self.control):
            d.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None

    def start(self, writable: bool = False) -> "HungOrigin":
        self.process = subprocess.Popen([sys.executable, "-m", "tests.support.hangfs", str(self.backing), str(self.path),
                                         str(self.control), *(["--writable"] if writable else [])], cwd=ROOT)
        wait_until(lambda: is_mounted(self.path) or self.process.poll() is not None, timeout=20,
                   message="hangfs mount")
        assert self.process.poll() is None, "hangfs failed to start"
        return self

    def hang(self) -> None:
        (self.control / "held").write_text("")
        (self.control / "hang").write_text("")

    def held(self) -> int:
        """Requests the server has received and is holding unanswered."""
        try:
            return len((self.control / "held").read_text().splitlines())
        except FileNotFoundError:
            return 0

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.control / "hang").unlink()

    def fail_with_eio(self, *relpaths: str) -> None:
        (self.control / "eio").write_text("".join(f"{p}\n" for p in relpaths))

    def stop(self) -> None:
        self.release()
        if self.process is not None:
            subprocess.run(["fusermount", "-u", str(self.path)], capture_output=True)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                force_unmount(self.path)
            self.process = None


class BadServer:
    """A TCP server on 127.0.0.1 that speaks no protocol: it accepts each connection and closes
    it at once (`hold=False`: a server dropping connections) or holds it open without a word
    (`hold=True`: a peer that stopped answering). `accepted` counts the connections, which is
    how a test sees how many attempts a client really made."""

    def __init__(self, hold: bool = False):
        import socket
        self.hold = hold
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._held = []
        self._thread = threading.Thread(target=self._serve, name="bad-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return   # stop() closed the listener
            self.accepted += 1
            if self.hold:
                self._held.append(conn)
            else:
                conn.close()

    def stop(self) -> None:
        import socket
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()


class FaultyProxy:
    """A TCP proxy on 127.0.0.1 in front of a real server, for faults in the middle of its
    answers: `trickle(after)` lets `after` more bytes of the server's answers pass on each
    connection, then one byte every `interval` seconds (each in time for any socket timeout:
    a server that never quite stops); `strip_range()` drops the Range header of requests (a
    proxy that does not pass it on); `stall()` passes nothing more; `cut_once(after)` closes the next connection to carry
    an answer after `after` bytes of it (a dropped connection); `normal()` passes everything."""

    def __init__(self, port: int, interval: float = 0.2):
        import socket
        self.target = port
        self.interval = interval
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._mode = ("normal", 0)
        self._generation = 0
        self._cut_armed = False
        self._lock = threading.Lock()
        self._conns = []
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()

    def normal(self):
        self._set("normal", 0)

    def trickle(self, after: int):
        self._set("trickle", after)

    def stall(self):
        """Nothing more of the server's answers gets through (a server that stopped answering)."""
        self._set("stall", 0)

    def strip_range(self):
        """Requests reach the server without their Range header (a proxy that drops it)."""
        self._set("strip_range", 0)

    def cut_once(self, after: int):
        with self._lock:
            self._cut_armed = True
            self._mode = ("cut", after)
            self._generation += 1

    def _set(self, mode, after):
        with self._lock:
            self._mode = (mode, after)
            self._generation += 1

    def _accept(self):
        import socket
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self._conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source, sink, answers):
        generation, passed, cutting = -1, 0, False
        try:
            while data := source.recv(65536):
                if not answers:
                    if self._mode[0] == "strip_range":
                        data = re.sub(rb"(?im)^range:[^\r\n]*\r\n", b"", data)
                    sink.sendall(data, socket.MSG_NOSIGNAL)
                    continue
                with self._lock:
                    (mode, after), now = self._mode, self._generation
                    if now != generation:
                        generation, passed, cutting = now, 0, False
                    if mode == "cut" and self._cut_armed:
                        self._cut_armed, cutting = False, True
                if mode == "stall":
                    continue
                if cutting:
                    sink.sendall(data[:max(after - passed, 0)], socket.MSG_NOSIGNAL)
                    passed += len(data)
                    if passed >= after:
                        raise OSError("cut")
                    continue
                if mode != "trickle" or passed + len(data) <= after:
                    passed += len(data)
                    sink.sendall(data, socket.MSG_NOSIGNAL)
                    continue
                head = max(after - passed, 0)
                sink.sendall(data[:head], socket.MSG_NOSIGNAL)
                passed += len(data)
                for at in range(head, len(data)):
                    if self._generation != generation:   # back to normal: the rest at once
                        sink.sendall(data[at:], socket.MSG_NOSIGNAL)
                        break
                    time.sleep(self.interval)    # the link's speed, not a synchronisation
                    sink.sendall(data[at:at + 1], socket.MSG_NOSIGNAL)
        except OSError:
            pass
        finally:
            # stalled, the client's side stays open and silent even when the server closes
            ends = (source,) if answers and self._mode[0] == "stall" else (source, sink)
            for conn in ends:
                with contextlib.suppress(OSError):
                    conn.shutdown(2)
                conn.close()

    def stop(self):
        self.listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(2)
            conn.close()


class FaultyOrigin(Origin):
    """Wraps a real origin. Modes (switch with the methods below, any time):

    healthy, hang (every call blocks until release()), delay (sleep before answering),
    fail (raise OSError(errno)), fail_every (every Nth call fails), fail_after (calls after the
    first N fail), partial (reads return only the first half), corrupt (reads flip bytes).
    `calls` counts calls per method.
    """

    def __init__(self, inner: Origin, name: str | None = None):
        super().__init__(name or inner.name)
        self.inner = inner
        self.calls: collections.Counter[str] = collections.Counter()
        self._released = threading.Event()
        self._released.set()
        self.mode = "healthy"
        self.delay_seconds = 0.0
        self.errno = errno_module.EIO
        self.every = 0
        self.after = 0
        self.only: set[str] | None = None  # methods the fault applies to (None: all)
        self._lock = threading.Lock()

    # -- switches ----------------------------------------------------------------------------
    def healthy(self):
        self.mode = "healthy"
        self._released.set()

    def hang(self, only=None):
        self._released.clear()
        self.only = set(only) if only else None
        self.mode = "hang"

    def release(self):
        self.mode = "healthy"
        self._released.set()

    def delay(self, seconds: float, only=None):
        self.delay_seconds = seconds
        self.only = set(only) if only else None
        self.mode = "delay"

    def fail(self, err: int = errno_module.EIO, only=None, remote: bool = False):
        """Calls fail with OSError(err); remote=True: with OriginTransient, as the sftp and s3
        origins report a server that went away (not an OSError)."""
        self.errno = err
        self.remote = remote
        self.only = set(only) if only else None
        self.mode = "fail"

    def fail_every(self, n: int, only=None):
        self.every = n
        self.only = set(only) if only else None
        self.mode = "fail_every"

    def fail_after(self, n: int, only=None):
        self.after = n
        self.only = set(only) if only else None
        self.mode = "fail_after"

    def partial(self):
        self.mode = "partial"

    def corrupt(self):
        self.mode = "corrupt"

    # -- the origin interface ----------------------------------------------------------------
    def _enter(self, method: str) -> None:
        with self._lock:
            self.calls[method] += 1
            count = self.calls[method]
        if self.only is not None and method not in self.only:
            return
        mode = self.mode
        if mode == "hang":
            self._released.wait()
        elif mode == "delay":
            time.sleep(self.delay_seconds)
        elif mode == "fail":
            if getattr(self, "remote", False):
                raise OriginTransient("connection refused at 127.0.0.1:9 (injected)")
            raise OSError(self.errno, f"injected {errno_module.errorcode.get(self.errno, self.errno)}")
        elif mode == "fail_every" and count % self.every == 0:
            raise OSError(errno_module.EIO, f"injected failure of call {count}")
        elif mode == "fail_after" and count > self.after:
            raise OSError(errno_module.EIO, f"injected failure after {self.after} calls")

    def list_dir(self, relpath):
        self._enter("list_dir")
        return self.inner.list_dir(relpath)

    def stat(self, relpath):
        self._enter("stat")
        return self.inner.stat(relpath)

    def read(self, relpath, offset, size, expect=None):
        self._enter("read")
        data = self.inner.read(relpath, offset, size, expect)
        if self.mode == "partial":
            return data[: len(data) // 2]
        if self.mode == "corrupt" and data:
            return bytes(b ^ 0xFF for b in data[:16]) + data[16:]
        return data

    def check(self):
        self._enter("check")
        return self.inner.check()
