"""Waiting on conditions and processes without sleeping in their place, and bounded runs."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path


def wait_until(condition, timeout: float = 10.0, interval: float = 0.02, message: str = "condition") -> None:
    """Poll a condition (not a sleep standing in for synchronisation: it returns as soon as true)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


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
