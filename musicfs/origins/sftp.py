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
  OriginMisconfigured for what needs a fix (host key, user key, a name that does not resolve),
  OriginTransient for a connection that was refused, reset, dropped or stopped answering (see
  :func:`_translate`). Those are retried, on a new connection when the old one died or hung,
  by the shared rule of :mod:`.retry`: all attempts together within ``timeout``.
* SFTP (version 3) knows size and mtime in whole seconds, no ctime: a file's version is its size
  and mtime, checked on the open file after each read.
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
import time
from collections import OrderedDict

import paramiko
from paramiko.sftp import (CMD_CLOSE, CMD_EXTENDED, CMD_EXTENDED_REPLY, CMD_FSTAT, CMD_HANDLE, CMD_OPEN, CMD_READ,
                           CMD_STAT, SFTP_FLAG_READ, int64)

from ..errors import OriginChanged, OriginMisconfigured, OriginMissing, OriginTransient, OriginUnavailable
from .base import KIND_DIR, KIND_FILE, Origin, OriginEntry
from .retry import attempt_timeout, retrying

log = logging.getLogger(__name__)

DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
KEEPALIVE_SECONDS = 15
# The size of one SFTP read request: paramiko's 32 KiB unless the server says it answers more
# (OpenSSH's limits@openssh.com: 255 KiB). Fewer, larger requests: 128 KiB ones read a big file
# through the mount at 104-119 MB/s against 75-89 with 32 KiB. Asking more than the server
# answers would make paramiko fetch every short answer's rest in a round trip of its own.
DEFAULT_READ_REQUEST = paramiko.SFTPFile.MAX_REQUEST_SIZE
LARGEST_READ_REQUEST = 1 << 20
# The SSH channel's flow-control window and largest packet we accept (paramiko: 2 MiB, 32 KiB).
# The window bounds what a session buffers unread: connections x 8 MiB per origin at most.
CHANNEL_WINDOW = 8 << 20
CHANNEL_PACKET = 256 << 10
# Files kept open per SFTP session for the next chunks of the same file: a reader's next chunk
# costs one round trip instead of two (an OPEN, then the reads). Small: a session serves one
# request at a time, and a player reads a few files at once.
OPEN_HANDLES = 8


class HostKeyError(OriginMisconfigured):
    """The server's host key is unknown or not the one known_hosts has."""


def _read_request_size(client: paramiko.SFTPClient) -> int:
    """How much one read request may ask of this server (see DEFAULT_READ_REQUEST)."""
    try:
        kind, reply = client._request(CMD_EXTENDED, "limits@openssh.com")
    except (OSError, paramiko.SSHException):   # not supported (SSH_FX_OP_UNSUPPORTED): the default
        return DEFAULT_READ_REQUEST
    if kind != CMD_EXTENDED_REPLY:
        return DEFAULT_READ_REQUEST
    reply.get_int64()                 # max packet length
    max_read = reply.get_int64()      # max read length (0: no limit stated)
    return max(DEFAULT_READ_REQUEST, min(max_read, LARGEST_READ_REQUEST)) if max_read else DEFAULT_READ_REQUEST


def _translate(error: BaseException, what: str, budget: float) -> BaseException:
    """paramiko's and the socket's errors as musicfs's."""
    if isinstance(error, (OriginUnavailable, OriginChanged)):
        return error
    if isinstance(error, socket.timeout):
        return OriginTransient(f"{what}: no answer within {budget:.3g}s")
    if isinstance(error, paramiko.AuthenticationException):
        return OriginMisconfigured(f"{what}: authentication failed ({error}); check key_file or ssh-agent")
    if isinstance(error, (ConnectionError, EOFError, paramiko.SSHException)):
        # reset, aborted, "Server connection dropped", a channel closed under us: the
        # connection, not the request, failed
        return OriginTransient(f"{what}: {_reason(error)}")
    if isinstance(error, OSError) and error.errno:
        return error                        # the server's answer about a path: ENOENT, EACCES...
    return OriginUnavailable(f"{what}: {_reason(error)}")


def _reason(error: BaseException) -> str:
    """What went wrong, in words: paramiko says nothing ("") or "No existing session" when
    the connection under a request is gone, and "Server connection dropped: " with nothing
    after the colon."""
    text = str(error).strip().rstrip(":").strip()
    if not text or text == "No existing session":
        lost = isinstance(error, (ConnectionError, EOFError, paramiko.SSHException))
        return "the connection to the server was lost" if lost else type(error).__name__
    return text


class SftpOrigin(Origin):
    readahead_chunks = 6   # several requests in flight: a round trip, not bandwidth, is the limit
    # One chunk per request: paramiko's readv of several MiB is slower than the same bytes in
    # 1 MiB reads (its pipelined answers are looked up in a list that grows with the request):
    # measured through the mount, 8-chunk spans gave 23 MB/s, single chunks 71.
    span_chunks = 1
    prefetch_next_files = 4   # see Origin: a small file costs two round trips

    def __init__(self, config):
        super().__init__(config.name)
        options = config.options
        self.host = options.host
        self.port = options.port
        self.user = options.user or getpass.getuser()
        self.root = posixpath.normpath(str(config.path)) if config.path else "."
        self.key_file = options.key_file
        self.known_hosts = options.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        self.timeout = config.timeout
        self.attempt_timeout = attempt_timeout(config.timeout)
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
        missing = False
        try:
            known.load(str(self.known_hosts))
        except FileNotFoundError:
            missing = True
        entry = known.lookup(self._host_id())
        fix = f"ssh-keyscan -p {self.port} {self.host} >> {self.known_hosts}"
        if entry is None or key.get_name() not in entry:
            where = f"{self.known_hosts} does not exist" if missing else f"it is not in {self.known_hosts}"
            raise HostKeyError(f"the host key of {self._host_id()} is unknown: {where}; "
                               f"check it and add it (e.g. {fix})")
        if entry[key.get_name()] != key:
            raise HostKeyError(f"the host key of {self._host_id()} CHANGED (not the one in "
                               f"{self.known_hosts}); if the server really was reinstalled, remove the old key "
                               f"(ssh-keygen -R '{self._host_id()}' -f {self.known_hosts}) and add the new one")

    def _keys(self):
        self._key_file_locked = False
        if self.key_file:
            try:
                yield paramiko.PKey.from_path(str(self.key_file))
                return
            except (paramiko.PasswordRequiredException, TypeError):
                # protected by a passphrase (cryptography says so with a TypeError): ssh-agent may hold it
                self._key_file_locked = True
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

    def _connect(self, budget: float) -> paramiko.Transport:
        what = f"{self.host}:{self.port}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=budget)
        except socket.gaierror as e:
            if e.errno == socket.EAI_AGAIN:   # the resolver did not answer: try again
                raise OriginTransient(f"{what}: cannot resolve {self.host} now ({e.strerror or e})") from None
            # a name that does not resolve: a typo more likely than an outage
            raise OriginMisconfigured(f"{what}: cannot resolve {self.host} ({e.strerror or e})") from None
        except ConnectionRefusedError:
            # Nothing listens there: a mistyped host or port, or a server that is down or
            # restarting. Retried like any lost connection; the words say what to check.
            raise OriginTransient(f"connection refused at {what}: check host and port, or start "
                                  f"the SSH server") from None
        except socket.timeout:
            raise OriginTransient(f"{what}: no answer to connect within {budget:.3g}s") from None
        except OSError as e:   # no route to the host, the network is down...
            raise OriginTransient(f"{what}: cannot connect ({e.strerror or e})") from None
        # Without TCP_NODELAY a burst of read requests meets Nagle's algorithm and the server's
        # delayed ACK: ~40 ms stalls per chunk (20 MB/s on loopback instead of ~100).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A larger channel window and packets (the server sends up to 256 KiB once allowed):
        # fewer packets, each with paramiko's per-packet Python. Measured in-process on loopback,
        # 1 MiB reads of a 256 MiB file: 231-267 -> 297-311 MB/s, 3.5-4.0 -> 2.7-3.3 CPU s/GB.
        transport = paramiko.Transport(sock, default_window_size=CHANNEL_WINDOW, default_max_packet_size=CHANNEL_PACKET)
        options = transport.get_security_options()
        # AES-GCM first where the server offers it: paramiko computes a separate MAC of every
        # packet for the CTR ciphers (and compares it byte by byte in Python); GCM
        # authenticates in the same call that decrypts. Reads measured ~20 % faster in-process.
        options.ciphers = tuple(sorted(options.ciphers, key=lambda name: "-gcm@" not in name))
        try:
            transport.banner_timeout = transport.auth_timeout = transport.handshake_timeout = budget
            transport.start_client(timeout=budget)
            self._check_host_key(transport.get_remote_server_key())
            for key in self._keys():
                try:
                    transport.auth_publickey(self.user, key)
                except paramiko.AuthenticationException:
                    continue
                if transport.is_authenticated():
                    break
            if not transport.is_authenticated():
                if getattr(self, "_key_file_locked", False):
                    hint = f"key_file {self.key_file} is protected by a passphrase: load it into ssh-agent"
                elif self.key_file:
                    hint = (f"the server refused key_file {self.key_file}: add its public key to "
                            f"~{self.user}/.ssh/authorized_keys on {self.host}")
                else:
                    hint = "set key_file or load the key into ssh-agent"
                raise OriginMisconfigured(f"{what}: no key was accepted for user {self.user}; {hint}")
            transport.set_keepalive(KEEPALIVE_SECONDS)
            return transport
        except BaseException as e:
            transport.close()
            raise _translate(e, what, budget) from None

    def _live_transport(self, budget: float) -> paramiko.Transport:
        with self._connect_lock:
            if self._transport is None or not self._transport.is_active():
                self._drop_idle()
                self._transport = self._connect(budget)
            return self._transport

    def _drop_idle(self) -> None:
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for client in idle:
            with contextlib.suppress(Exception):
                client.close()

    def _open_client(self, budget: float) -> paramiko.SFTPClient:
        """A new SFTP session on the (re)connected transport, all within `budget`."""
        started = time.monotonic()
        transport = self._live_transport(budget)
        channel = None
        expired = threading.Event()
        try:
            # Not SFTPClient.from_transport: it would wait up to an hour for a channel from a
            # server that stopped answering.
            channel = transport.open_session(timeout=max(budget - (time.monotonic() - started), 0.001))
            channel.settimeout(budget)

            def expire(channel=channel):
                expired.set()
                channel.close()
            # paramiko waits for the answer to the subsystem request without any timeout;
            # closing the channel from a timer ends that wait.
            watchdog = threading.Timer(max(budget - (time.monotonic() - started), 0), expire)
            watchdog.start()
            try:
                channel.invoke_subsystem("sftp")
                client = paramiko.SFTPClient(channel)
                client.musicfs_read_request = _read_request_size(client)
                client.musicfs_handles = OrderedDict()   # path -> handle of a file left open (see _read_range)
                return client
            finally:
                watchdog.cancel()
        except BaseException as e:
            if channel is not None:
                channel.close()
            if isinstance(e, paramiko.SSHException) and (expired.is_set() or time.monotonic() - started >= budget):
                # "Timeout opening channel", or the watchdog: the server stopped answering
                self._drop_transport(transport)
                e = socket.timeout()
            raise _translate(e, f"{self.host}:{self.port}", budget) from None

    @contextlib.contextmanager
    def _session(self, budget: float):
        """A pooled SFTP session, its requests bounded by `budget`; waiting for a free one
        counts against it."""
        started = time.monotonic()
        if not self._slots.acquire(timeout=budget):
            raise OriginUnavailable(f"origin {self.name}: all sessions busy for {budget:.3g}s")
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
            left = budget - (time.monotonic() - started)
            if left <= 0:
                raise OriginUnavailable(f"origin {self.name}: all sessions busy for {budget:.3g}s")
            if client is None:
                client = self._open_client(left)
            # what is left of this attempt bounds each wait for the server from here on
            client.get_channel().settimeout(max(budget - (time.monotonic() - started), 0.01))
            try:
                yield client
            except BaseException as e:
                with contextlib.suppress(Exception):
                    client.close()
                if isinstance(e, socket.timeout):
                    # The peer stopped answering on this connection (a stuck session, a dropped
                    # NAT entry): the next attempt starts over on a new one.
                    self._drop_transport(client.get_channel().get_transport())
                client = None
                raise
        finally:
            if client is not None:
                with self._idle_lock:
                    self._idle.append(client)
            self._slots.release()

    def _call(self, what: str, fn):
        """fn(client) in a pooled session, errors translated, transient failures retried
        (origins/retry.py) - all within the origin's timeout."""
        def attempt(budget: float):
            try:
                with self._session(budget) as client:
                    return fn(client)
            except BaseException as e:
                raise _translate(e, what, budget) from None
        return retrying(attempt, deadline=time.monotonic() + self.timeout, attempt_timeout=self.attempt_timeout,
                        what=f"origin {self.name}")

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
            data, attr = _read_range(client, path, offset, size, client.musicfs_read_request,
                                     with_attributes=expect is not None)
            if expect is not None:
                self._verify(relpath, attr, expect)
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

    def _drop_transport(self, transport: paramiko.Transport | None) -> None:
        """Give up a connection that stopped answering - only if it is still the current one: a
        request that timed out on it must not close the new one another request just opened."""
        with self._connect_lock:
            if transport is None or self._transport is not transport:
                return
            self._transport = None
        self._drop_idle()
        transport.close()

    def close(self) -> None:
        self._drop_transport(self._transport)


def _read_range(client: paramiko.SFTPClient, path: str, offset: int, size: int, request: int,
                with_attributes: bool) -> tuple[bytes, paramiko.SFTPAttributes | None]:
    """`size` bytes at `offset` of `path` (fewer at its end), and with_attributes its attributes
    as the server saw them right after serving them: in two round trips, or one for the next
    chunks of a file this session read last.

    SFTP answers a session's requests in order, so everything after the OPEN is sent at once:
    the range's READ requests (each at most `request`, what the server answers whole), then an
    FSTAT of the same handle - after the bytes, so if the file still has its catalogued size and
    mtime, so did the bytes (a write moves the mtime before it lands; checking before the read
    too would cost a round trip and only narrow the window of what SFTP cannot tell anyway, a
    rewrite that puts the old mtime back). paramiko's file object would spend a round trip on
    each of those steps, and a thread on every multi-request read: a header scan's small reads
    are mostly round trips (0.82-0.98 ms a file on loopback that way, 0.44-0.48 ms like this).
    The calls are paramiko's request layer, which its own file object uses.

    With attributes asked for (a version-checked read), the file stays open in the session
    (OPEN_HANDLES of them), and the next read of the same path skips the OPEN: its READs and
    FSTAT go out with a STAT of the path, so a file renamed over the one held open (a retag's
    temp file) is seen as the path's new version, just as an OPEN would have found it. A read
    without that check (a tag read of a file just listed) opens the path afresh and closes it.
    CLOSEs are not waited for: their answers are dropped when the session reads its next. After
    a failure nothing is closed here: the caller throws the whole session away.
    """
    handles: OrderedDict = client.musicfs_handles
    handle = handles.pop(path, None) if with_attributes else None
    reused = handle is not None
    if handle is None:
        kind, reply = client._request(CMD_OPEN, client._adjust_cwd(path), SFTP_FLAG_READ, paramiko.SFTPAttributes())
        if kind != CMD_HANDLE:
            raise paramiko.SFTPError(f"expected a handle opening {path}")
        handle = reply.get_binary()
    spans = [(start, min(request, offset + size - start)) for start in range(offset, offset + size, request)]
    pending = [client._async_request(type(None), CMD_READ, handle, int64(start), length) for start, length in spans]
    stat_request = client._async_request(type(None), CMD_FSTAT, handle) if with_attributes else None
    path_request = client._async_request(type(None), CMD_STAT, client._adjust_cwd(path)) if reused else None
    pieces, gaps = [], []
    for (start, length), number in zip(spans, pending):
        try:
            piece = client._read_response(number)[1].get_string()
        except EOFError:   # past the end: the file is shorter than asked (the check says why)
            piece = b""
        if piece and len(piece) < length:
            gaps.append(len(pieces))   # a short answer before the end: asked again below
        pieces.append(piece)
    attributes = (paramiko.SFTPAttributes._from_msg(client._read_response(stat_request)[1])
                  if stat_request is not None else None)
    for index in gaps:
        start, length = spans[index]
        while len(pieces[index]) < length:
            try:
                more = client._request(CMD_READ, handle, int64(start + len(pieces[index])),
                                       length - len(pieces[index]))[1].get_string()
            except EOFError:
                break
            pieces[index] += more
    if path_request is not None:
        named = paramiko.SFTPAttributes._from_msg(client._read_response(path_request)[1])
        if (named.st_size, named.st_mtime) != (attributes.st_size, attributes.st_mtime):
            # The path names another file now (or the open one changed): read it as opened anew.
            client._async_request(type(None), CMD_CLOSE, handle)
            return _read_range(client, path, offset, size, request, with_attributes)
    if gaps and with_attributes:   # those bytes came after the FSTAT: look again
        attributes = paramiko.SFTPAttributes._from_msg(client._request(CMD_FSTAT, handle)[1])
    if with_attributes:
        handles[path] = handle
        while len(handles) > OPEN_HANDLES:
            client._async_request(type(None), CMD_CLOSE, handles.popitem(last=False)[1])
    else:
        client._async_request(type(None), CMD_CLOSE, handle)
    data = b"".join(pieces)
    if len(data) > size:
        raise paramiko.SFTPError(f"the server answered more than asked reading {path}")
    return data, attributes


def _with_name(attr, name: str):
    attr.filename = name
    return attr
