"""Test helpers: configs, a synthetic library, and mounts that are always cleaned up."""
from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "music"
MUSICFS = [sys.executable, "-m", "musicfs.cli"]


def toml_config(origins: list[tuple[str, Path]], cache_dir: Path, log_file: Path, **sections) -> str:
    lines = ["[cache]", f'dir = "{cache_dir}"', f'max_size = "{sections.pop("max_size", "1G")}"',
             "[log]", f'file = "{log_file}"', f'level = "{sections.pop("level", "debug")}"']
    sections.setdefault("layout", {"mode": "paths"})   # tag-view tests pass layout={...}
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"')
    for name, path in origins:
        lines += ["[[origins]]", f'name = "{name}"', 'type = "local"', f'path = "{path}"']
    return "\n".join(lines) + "\n"


def flac_like(tags: dict[str, str], payload: bytes) -> bytes:
    """A FLAC container (STREAMINFO + VORBIS_COMMENT) around `payload`: tag readers parse it."""
    info = struct.pack(">HH", 4096, 4096) + bytes(6) + ((44100 << 44) | (1 << 41) | (15 << 36)).to_bytes(8, "big") + bytes(16)
    vendor = b"musicfs-tests"
    comments = struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", len(tags))
    for key, value in tags.items():
        entry = f"{key}={value}".encode()
        comments += struct.pack("<I", len(entry)) + entry
    return (b"fLaC" + bytes([0]) + len(info).to_bytes(3, "big") + info
            + bytes([0x84]) + len(comments).to_bytes(3, "big") + comments + payload)


def make_library(root: Path, files: int, size: int, *, per_album: int = 12, seed: int = 1) -> list[Path]:
    """`files` tagged files of about `size` bytes under root/Artist NNNN/Album NN/NN Track.flac."""
    rng = random.Random(seed)
    paths = []
    for i in range(files):
        album, track = divmod(i, per_album)
        artist = album // 4
        folder = root / f"Artist {artist:04d}" / f"Album {album % 4:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{track + 1:02d} Track.flac"
        tags = {"ARTIST": f"Artist {artist:04d}", "ALBUM": f"Album {album % 4:02d}", "TITLE": f"Track {track + 1}"}
        path.write_bytes(flac_like(tags, rng.randbytes(size)))
        paths.append(path)
    return paths


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


def wait_until(condition, timeout: float = 10.0, interval: float = 0.02, message: str = "condition") -> None:
    """Poll a condition (not a sleep standing in for synchronisation: it returns as soon as true)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


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
        from musicfs.daemon import set_read_ahead
        set_read_ahead(mountpoint, service.config.fuse.read_ahead)   # as the daemon does

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            force_unmount(self.mountpoint)
        self.thread.join(timeout=30)
        # libfuse put SIGPIPE back to its default (death) on the way out, as in the daemon
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.service.stop()


def chunk_files(chunks_dir: Path) -> list[Path]:
    """The chunk files (chunks/aa/bb/<hex>), temp files excluded, sorted."""
    return sorted(f for f in Path(chunks_dir).glob("??/??/*") if f.is_file())


def chunk_bytes_on_disk(chunks_dir: Path) -> int:
    """Sum of the sizes of the chunk files."""
    return sum(f.stat().st_size for f in chunk_files(chunks_dir))


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


class HungOrigin:
    """A real FUSE origin (tests/hangfs.py in its own process) that a test can make hang: its
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
        self.process = subprocess.Popen([sys.executable, "-m", "tests.hangfs", str(self.backing), str(self.path),
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


def run_bounded(args, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run a command and return its result within `timeout` seconds, or fail the test.

    Not subprocess.run(timeout=...) nor `timeout -s KILL`: a process stuck in a hung FUSE
    server's request cannot be killed until the server answers, and both of those wait for it
    to die. This sends SIGKILL and abandons the process instead."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"{' '.join(map(str, args))} did not finish within {timeout}s") from None
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(process: subprocess.Popen, port: int, log: Path, timeout: float = 10) -> None:
    """Until a server we started accepts connections on 127.0.0.1:port; fail with its log if it exits."""
    import socket

    def listening():
        if process.poll() is not None:
            raise AssertionError(f"{process.args[0]} exited: {log.read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_until(listening, timeout=timeout, message=f"{process.args[0]} to listen on port {port}")


class SshServer:
    """OpenSSH's sshd on 127.0.0.1, in the foreground, with a throwaway host key and user key
    (no system service). `known_hosts` and `key_file` are what an sftp origin needs."""

    def __init__(self, tmp: Path):
        self.dir = tmp / "sshd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host_key = self.dir / "host_ed25519"
        self.key_file = self.dir / "user_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.process: subprocess.Popen | None = None
        for key in (self.host_key, self.key_file):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (self.dir / "authorized_keys").write_text(Path(f"{self.key_file}.pub").read_text())
        host_pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.config = self.dir / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}", f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "PermitRootLogin yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "StrictModes no", "UsePAM no", "Subsystem sftp internal-sftp", "LogLevel ERROR", ""]))

    def start(self) -> "SshServer":
        os.makedirs("/run/sshd", exist_ok=True)   # sshd's privilege separation directory
        self.process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)],
                                        stderr=open(self.dir / "sshd.log", "ab"))
        wait_listening(self.process, self.port, self.dir / "sshd.log")
        return self

    def origin_table(self, name: str, path: Path) -> dict:
        return {"name": name, "type": "sftp", "host": "127.0.0.1", "port": self.port, "user": "root",
                "path": str(path), "key_file": str(self.key_file), "known_hosts": str(self.known_hosts),
                "timeout": 5}

    def sessions(self) -> list[int]:
        """PIDs of the sshd processes serving connections (children of the listener)."""
        if self.process is None:
            return []
        found, parents = [], {self.process.pid}
        for _ in range(3):
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid in parents and int(entry) not in found:
                    found.append(int(entry))
            parents |= set(found)
        return found

    def stop(self) -> None:
        """The whole server gone, established connections too (killing only the listener
        leaves every session running)."""
        if self.process is not None:
            for pid in self.sessions():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            self.process.kill()
            self.process.wait()
            self.process = None


class MotoServer:
    """moto's S3 server on 127.0.0.1 (a real HTTP server speaking the S3 API, in memory)."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "moto.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "MotoServer":
        server = Path(sys.executable).parent / "moto_server"
        self.process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        wait_listening(self.process, self.port, self.log, timeout=30)
        return self

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")

    def upload(self, bucket: str, prefix: str, root: Path) -> None:
        client = self.client()
        for path in sorted(root.rglob("*")):
            if path.is_file():
                client.put_object(Bucket=bucket, Key=prefix + path.relative_to(root).as_posix(), Body=path.read_bytes())

    def origin_table(self, name: str, bucket: str, prefix: str = "") -> dict:
        return {"name": name, "type": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": self.url,
                "region": "us-east-1", "timeout": 3}

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
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


def moto_require_credentials(moto: MotoServer) -> tuple[tuple[str, str], tuple[str, str]]:
    """Make `moto` check credentials as S3 does (it accepts any by default). Returns two access
    keys as (id, secret): one of an IAM user allowed s3:*, one of a user allowed nothing."""
    import json
    import urllib.request

    import boto3
    iam = boto3.client("iam", endpoint_url=moto.url, region_name="us-east-1")
    keys = []
    for user, statements in (("musicfs", [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]),
                             ("stranger", [])):
        iam.create_user(UserName=user)
        if statements:
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": statements}))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys.append((key["AccessKeyId"], key["SecretAccessKey"]))
    # moto's server switch: authenticate every request after the next 0 ones (a plain body:
    # as a form, the server would not see the number)
    urllib.request.urlopen(urllib.request.Request(f"{moto.url}/moto-api/reset-auth", data=b"0", method="POST",
                                                  headers={"Content-Type": "text/plain"}), timeout=10).read()
    return keys[0], keys[1]


def origin_toml(table: dict) -> str:
    """One [[origins]] table of a config file, from the dict an origin_table() gives."""
    return "[[origins]]\n" + "".join(f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v!r}\n"
                                     for k, v in table.items())


# The tag view in a test's sections (conftest.make_config defaults to the paths layout).
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
