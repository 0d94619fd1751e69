"""SFTP transports side by side, without FUSE: `python -m bench.sftp_transports`.

Reads one 256 MiB file in 1 MiB chunks from the test suite's OpenSSH sshd on loopback (one
request at a time, then 6 in flight: what a sequential reader's readahead asks), through:

* paramiko, as musicfs's sftp origin uses it (``SftpOrigin.read``: pipelined requests of the
  size the server states, AES-GCM, 256 KiB packets, the file kept open per session);
* asyncssh (pure Python on asyncio, on one event-loop thread), if installed;
* ssh2-python (libssh2 in C, releasing the GIL), if installed.

It prints MB/s and the CPU seconds per GB this process spent: what a transport would cost the
daemon. Nothing here asserts anything. asyncssh and ssh2-python are not musicfs dependencies;
install them into the venv to compare (``.venv/bin/pip install asyncssh ssh2-python``).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import resource
import socket
import threading
import time
from pathlib import Path

from testkit.servers import SshServer

from .common import WORK

MiB = 1 << 20
FILE_MIB = 256
CIPHER = "aes128-gcm@openssh.com"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _measure(name: str, read_chunk, inflight: int) -> None:
    started, cpu = time.perf_counter(), _cpu()
    with concurrent.futures.ThreadPoolExecutor(inflight) as pool:
        total = sum(map(len, pool.map(read_chunk, range(FILE_MIB))))
    elapsed, cpu = time.perf_counter() - started, _cpu() - cpu
    assert total == FILE_MIB * MiB, (name, total)
    print(f"  {name:12} {inflight} in flight: {total / 1e6 / elapsed:6.0f} MB/s  {cpu / (total / 1e9):5.2f} CPU s/GB")


def paramiko_reads(sshd: SshServer, root: Path):
    from musicfs import config as config_module
    from musicfs.origins import build
    config = config_module.parse({"cache": {"dir": str(WORK / "cache" / "transports")},
                                  "origins": [dict(sshd.origin_table("ssh", root), connections=6)]})
    origin = build(config.origins[0])
    entry = origin.stat(b"big.bin")
    return (lambda index: origin.read(b"big.bin", index * MiB, MiB, entry)), origin.close


def asyncssh_reads(sshd: SshServer, root: Path):
    import asyncssh
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def connect():
        connection = await asyncssh.connect("127.0.0.1", sshd.port, username="root", client_keys=[str(sshd.key_file)],
                                            known_hosts=str(sshd.known_hosts), encryption_algs=[CIPHER])
        sftp = await connection.start_sftp_client()
        return connection, sftp, await sftp.open(str(root / "big.bin"), "rb")
    connection, sftp, handle = asyncio.run_coroutine_threadsafe(connect(), loop).result(30)

    async def chunk(index):
        return await handle.read(MiB, index * MiB)

    def close():
        asyncio.run_coroutine_threadsafe(handle.close(), loop).result(30)
        connection.close()
        loop.call_soon_threadsafe(loop.stop)
    return (lambda index: asyncio.run_coroutine_threadsafe(chunk(index), loop).result(60)), close


def ssh2_reads(sshd: SshServer, root: Path):
    from ssh2.session import LIBSSH2_METHOD_CRYPT_CS, LIBSSH2_METHOD_CRYPT_SC, Session
    from ssh2.sftp import LIBSSH2_FXF_READ
    sessions = threading.local()
    opened = []

    def session():
        if not hasattr(sessions, "file"):
            sock = socket.create_connection(("127.0.0.1", sshd.port))
            ssh = Session()
            ssh.method_pref(LIBSSH2_METHOD_CRYPT_CS, CIPHER)
            ssh.method_pref(LIBSSH2_METHOD_CRYPT_SC, CIPHER)
            ssh.handshake(sock)
            ssh.userauth_publickey_fromfile("root", str(sshd.key_file))
            sftp = ssh.sftp_init()
            sessions.file = sftp.open(str(root / "big.bin"), LIBSSH2_FXF_READ, 0)
            opened.append((sock, ssh, sftp, sessions.file))
        return sessions.file

    def chunk(index):
        handle = session()
        handle.seek64(index * MiB)
        pieces, left = [], MiB
        while left:
            size, data = handle.read(left)
            if size <= 0:
                break
            pieces.append(data)
            left -= size
        return b"".join(pieces)

    def close():
        for sock, ssh, _, handle in opened:
            handle.close()
            ssh.disconnect()
            sock.close()
    return chunk, close


def main() -> None:
    root = WORK / "transports"
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "big.bin").exists():
        (root / "big.bin").write_bytes(os.urandom(FILE_MIB * MiB))
    sshd = SshServer(WORK / "servers").start()
    try:
        for name, make in (("paramiko", paramiko_reads), ("asyncssh", asyncssh_reads), ("ssh2-python", ssh2_reads)):
            try:
                read_chunk, close = make(sshd, root)
            except ImportError as e:
                print(f"  {name:12} not installed ({e.name})")
                continue
            try:
                read_chunk(0)   # connected and warm
                for inflight in (1, 6):
                    _measure(name, read_chunk, inflight)
            finally:
                close()
    finally:
        sshd.stop()


if __name__ == "__main__":
    main()
