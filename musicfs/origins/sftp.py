"""The `sftp` origin: a directory on an SSH server, through paramiko.

* One SSH transport per origin, with keepalives, carrying a pool of up to ``connections`` SFTP
  sessions (an SFTPClient must not be shared between threads). A session that fails is thrown
  away; a transport that died is reconnected by the next request.
* Every request is bounded by the origin's ``timeout``: connecting, authenticating, and each
  SFTP request (the channel's timeout), so a server that stops answering costs at most that.
* The host key must be in ``known_hosts`` (default ``~/.ssh/known_hosts``): an unknown or
  changed key is an error naming the fix, never accepted silently.
* Authentication: ``key_file`` if given, else the keys of a running ssh-agent, else the default
  ``~/.ssh/id_*`` keys. Passwords are never used.
* Errors leave here as musicfs's: OSError with the server's errno (ENOENT...) for a path,
  OriginUnavailable for the connection (see :func:`_translate`). One retry, after a reconnect,
  for a connection that was lost between requests.
* SFTP (version 3) knows size and mtime in whole seconds, no ctime: a file's version is its size
  and mtime, and a read checks both before and after.
"""
from __future__ import annotations

import contextlib
import getpass
import logging
import os
import posixpath
import socket
import stat as stat_module
import threading

import paramiko

from ..errors import OriginChanged, OriginMisconfigured, OriginMissing, OriginUnavailable
from .base import KIND_DIR, KIND_FILE, Origin, OriginEntry

log = logging.getLogger(__name__)

DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
KEEPALIVE_SECONDS = 15


class HostKeyError(OriginMisconfigured):
    """The server's host key is unknown or not the one known_hosts has."""


def _translate(error: BaseException, what: str) -> BaseException:
    """paramiko's and the socket's errors as musicfs's."""
    if isinstance(error, (OriginUnavailable, OriginChanged)):
        return error
    if isinstance(error, OSError) and error.errno and not isinstance(error, (socket.timeout, ConnectionError)):
        return error                        # the server's answer about a path: ENOENT, EACCES...
    if isinstance(error, socket.timeout):
        return OriginUnavailable(f"{what}: no answer in time")
    if isinstance(error, paramiko.AuthenticationException):
        return OriginMisconfigured(f"{what}: authentication failed ({error}); check key_file or ssh-agent")
    return OriginUnavailable(f"{what}: {error or type(error).__name__}")


class SftpOrigin(Origin):
    readahead_chunks = 6   # several requests in flight: a round trip, not bandwidth, is the limit

    def __init__(self, config):
        super().__init__(config.name)
        options = config.options
        self.host = options["host"]
        self.port = options.get("port", 22)
        self.user = options.get("user") or getpass.getuser()
        self.root = posixpath.normpath(str(config.path)) if config.path else "."
        self.key_file = options.get("key_file")
        self.known_hosts = options.get("known_hosts") or os.path.expanduser("~/.ssh/known_hosts")
        self.timeout = config.timeout
        self._transport: paramiko.Transport | None = None
        self._connect_lock = threading.Lock()
        self._idle: list[paramiko.SFTPClient] = []
        self._idle_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.connections)

    def describe(self) -> str:
        return f"{self.name} (sftp://{self.user}@{self.host}:{self.port}{'/' if not self.root.startswith('/') else ''}{self.root})"

    # -- connection ----------------------------------------------------------------------------

    def _host_id(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def _check_host_key(self, key: paramiko.PKey) -> None:
        known = paramiko.HostKeys()
        with contextlib.suppress(FileNotFoundError):
            known.load(str(self.known_hosts))
        entry = known.lookup(self._host_id())
        fix = f"ssh-keyscan -p {self.port} {self.host} >> {self.known_hosts}"
        if entry is None or key.get_name() not in entry:
            raise HostKeyError(f"the host key of {self._host_id()} is not in {self.known_hosts}; "
                               f"check it and add it (e.g. {fix})")
        if entry[key.get_name()] != key:
            raise HostKeyError(f"the host key of {self._host_id()} CHANGED (not the one in "
                               f"{self.known_hosts}); if the server really was reinstalled, remove the old key "
                               f"(ssh-keygen -R '{self._host_id()}' -f {self.known_hosts}) and add the new one")

    def _keys(self):
        if self.key_file:
            try:
                yield paramiko.PKey.from_path(str(self.key_file))
                return
            except (paramiko.PasswordRequiredException, TypeError):
                pass    # protected by a passphrase (cryptography says so with a TypeError): ssh-agent may hold it
            except (OSError, paramiko.SSHException, ValueError) as e:
                raise OriginMisconfigured(f"key_file {self.key_file} cannot be used: "
                                          f"{getattr(e, 'strerror', None) or e}") from None
        with contextlib.suppress(Exception):
            yield from paramiko.Agent().get_keys()
        if self.key_file:
            return
        for name in DEFAULT_KEYS:
            path = os.path.expanduser(f"~/.ssh/{name}")
            if os.path.exists(path):
                with contextlib.suppress(paramiko.SSHException, OSError):
                    yield paramiko.PKey.from_path(path)

    def _connect(self) -> paramiko.Transport:
        what = f"{self.host}:{self.port}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except socket.gaierror as e:   # a name that does not resolve: a typo more likely than an outage
            raise OriginMisconfigured(f"{what}: cannot resolve {self.host} ({e.strerror or e})") from None
        except OSError as e:
            raise OriginUnavailable(f"{what}: cannot connect ({e.strerror or e})") from None
        # Without TCP_NODELAY a burst of read requests meets Nagle's algorithm and the server's
        # delayed ACK: ~40 ms stalls per chunk (20 MB/s on loopback instead of ~100).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = transport.auth_timeout = transport.handshake_timeout = self.timeout
            transport.start_client(timeout=self.timeout)
            self._check_host_key(transport.get_remote_server_key())
            for key in self._keys():
                try:
                    transport.auth_publickey(self.user, key)
                except paramiko.AuthenticationException:
                    continue
                if transport.is_authenticated():
                    break
            if not transport.is_authenticated():
                hint = (f"key_file {self.key_file} is protected by a passphrase: load it into ssh-agent"
                        if self.key_file else "set key_file or load the key into ssh-agent")
                raise OriginMisconfigured(f"{what}: no key was accepted for user {self.user}; {hint}")
            transport.set_keepalive(KEEPALIVE_SECONDS)
            return transport
        except BaseException as e:
            transport.close()
            raise _translate(e, what) from None

    def _live_transport(self) -> paramiko.Transport:
        with self._connect_lock:
            if self._transport is None or not self._transport.is_active():
                self._drop_idle()
                self._transport = self._connect()
            return self._transport

    def _drop_idle(self) -> None:
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for client in idle:
            with contextlib.suppress(Exception):
                client.close()

    @contextlib.contextmanager
    def _session(self):
        """A pooled SFTP session, bounded: waiting for a free one counts against the timeout."""
        if not self._slots.acquire(timeout=self.timeout):
            raise OriginUnavailable(f"origin {self.name}: all sessions busy for {self.timeout:g}s")
        client = None
        try:
            with self._idle_lock:
                client = self._idle.pop() if self._idle else None
            if client is not None and (client.sock.closed or self._transport is None
                                       or not self._transport.is_active()):
                # Its connection died (a server restart): so did every other idle session's.
                with contextlib.suppress(Exception):
                    client.close()
                client = None
                self._drop_idle()
            if client is None:
                transport = self._live_transport()
                channel = None
                try:
                    # Not SFTPClient.from_transport: it would wait up to an hour for a channel
                    # from a server that stopped answering.
                    channel = transport.open_session(timeout=self.timeout)
                    channel.settimeout(self.timeout)
                    channel.invoke_subsystem("sftp")
                    client = paramiko.SFTPClient(channel)
                except BaseException as e:
                    if channel is not None:
                        channel.close()
                    raise _translate(e, f"{self.host}:{self.port}") from None
            try:
                yield client
            except BaseException:
                with contextlib.suppress(Exception):
                    client.close()
                client = None
                raise
        finally:
            if client is not None:
                with self._idle_lock:
                    self._idle.append(client)
            self._slots.release()

    def _call(self, what: str, fn):
        """fn(client) in a pooled session, errors translated; once more after a reconnect when
        the connection was lost (a NAS rebooted, a NAT timeout), never after a timeout."""
        for attempt in (1, 2):
            try:
                with self._session() as client:
                    return fn(client)
            except BaseException as e:
                error = _translate(e, what)
                if isinstance(e, socket.timeout):
                    # The peer stopped answering on this connection (a stuck session, a dropped
                    # NAT entry): the next request starts over on a new one.
                    self._reset()
                lost = isinstance(error, OriginUnavailable) and not isinstance(e, socket.timeout) \
                    and not isinstance(error, OriginMisconfigured)
                if attempt == 1 and lost and self._transport is not None and not self._transport.is_active():
                    log.info("origin %s: connection lost (%s); reconnecting", self.name, error)
                    continue
                raise error from None

    # -- the origin interface ------------------------------------------------------------------

    def _abs(self, relpath: bytes) -> str:
        rel = os.fsdecode(relpath)
        if rel.startswith("/") or "/../" in f"/{rel}/":
            raise OriginUnavailable(f"refusing path outside origin {self.name}: {rel!r}")
        return posixpath.join(self.root, rel) if rel else self.root

    @staticmethod
    def _entry(name: bytes, attr) -> OriginEntry | None:
        mode = attr.st_mode or 0
        mtime_ns = int(attr.st_mtime or 0) * 1_000_000_000
        if stat_module.S_ISREG(mode):
            return OriginEntry(name, KIND_FILE, attr.st_size or 0, mtime_ns)
        if stat_module.S_ISDIR(mode):
            return OriginEntry(name, KIND_DIR, 0, mtime_ns)
        return None

    def list_dir(self, relpath: bytes) -> list[OriginEntry]:
        path = self._abs(relpath)

        def listing(client):
            entries = []
            for attr in client.listdir_attr(path):
                if stat_module.S_ISLNK(attr.st_mode or 0):
                    try:   # followed, as the local origin does
                        attr = _with_name(client.stat(posixpath.join(path, attr.filename)), attr.filename)
                    except FileNotFoundError:
                        continue   # a dangling symlink
                entry = self._entry(os.fsencode(attr.filename), attr)
                if entry is not None:
                    entries.append(entry)
            return entries
        return self._call(f"listing {path}", listing)

    def stat(self, relpath: bytes) -> OriginEntry:
        path = self._abs(relpath)
        entry = self._entry(os.fsencode(posixpath.basename(path)), self._call(f"stat {path}", lambda c: c.stat(path)))
        if entry is None:
            raise OriginUnavailable(f"{path} on origin {self.name} is not a regular file or directory")
        return entry

    def read(self, relpath: bytes, offset: int, size: int, expect: OriginEntry | None = None) -> bytes:
        path = self._abs(relpath)

        def ranged(client):
            with client.open(path, "rb") as f:
                if expect is not None:
                    self._verify(relpath, f.stat(), expect)
                # readv sends the chunk's requests at once: one round trip, not one per 32 KiB
                data = b"".join(f.readv([(offset, size)])) if size else b""
                if expect is not None:
                    self._verify(relpath, f.stat(), expect)
                return data
        return self._call(f"reading {path}", ranged)

    def _verify(self, relpath: bytes, attr, expect: OriginEntry) -> None:
        current = self._entry(os.fsencode(posixpath.basename(os.fsdecode(relpath))), attr)
        if current is not None and expect.same_version(current.size, current.mtime_ns, b""):
            return
        raise OriginChanged(f"{os.fsdecode(relpath)} on origin {self.name} changed since it was catalogued",
                            current)

    def check(self) -> None:
        try:
            attr = self._call(f"stat {self.root}", lambda client: client.stat(self.root))
        except FileNotFoundError:
            raise OriginMissing(f"{self.root} does not exist on {self.host}") from None
        if not stat_module.S_ISDIR(attr.st_mode or 0):
            raise OriginMissing(f"{self.root} on {self.host} is not a directory")

    def _reset(self) -> None:
        self._drop_idle()
        with self._connect_lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None

    def close(self) -> None:
        self._reset()


def _with_name(attr, name: str):
    attr.filename = name
    return attr
