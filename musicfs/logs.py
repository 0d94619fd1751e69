"""The one logging setup: a rotating log file shared safely by the daemon and the cron probe."""
from __future__ import annotations

import faulthandler
import logging
import signal
import sys
from pathlib import Path

from concurrent_log_handler import ConcurrentRotatingFileHandler

from .errors import ConfigError

FORMAT = "%(asctime)s %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s"
MAX_BYTES = 10 << 20
BACKUPS = 5


def setup(file: Path, level: str = "info", *, verbose: int = 0, stderr: bool = False,
          max_bytes: int = MAX_BYTES) -> None:
    """Log to `file` through ConcurrentRotatingFileHandler (several processes may write and rotate it)."""
    global _last_setup
    _last_setup = {"verbose": verbose, "stderr": stderr, "max_bytes": max_bytes}
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    numeric = logging.DEBUG if verbose else getattr(logging, level.upper())
    root.setLevel(numeric)
    formatter = logging.Formatter(FORMAT)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = ConcurrentRotatingFileHandler(str(file), "a", maxBytes=max_bytes, backupCount=BACKUPS,
                                                use_gzip=False)
    except OSError as e:
        raise ConfigError(f"log.file: cannot write {file}: {e.strerror}; set [log].file to a writable path") from None
    handler.setFormatter(formatter)
    root.addHandler(handler)
    if stderr:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(formatter)
        root.addHandler(console)
    # fusepy logs every errno it returns at DEBUG with a traceback; that is noise, not signal.
    logging.getLogger("fuse").setLevel(logging.WARNING if numeric > logging.DEBUG else logging.INFO)
    # The transports' own loggers: their failures reach our log translated, as one line each
    # (paramiko logs a dead connection as an ERROR traceback, botocore every request at DEBUG).
    for noisy in ("paramiko", "botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose > 1 else logging.CRITICAL
                                          if noisy == "paramiko" else logging.WARNING)
    # `kill -USR2 <pid>` dumps every thread's stack into the log: the tool for "where is it stuck?".
    # Its own descriptor: the handler reopens its stream when it rotates.
    global _stack_dump_file
    try:
        _stack_dump_file = open(file, "a")
        faulthandler.register(signal.SIGUSR2, file=_stack_dump_file, all_threads=True)
    except (OSError, AttributeError, ValueError, RuntimeError):
        pass


_stack_dump_file = None
_last_setup: dict = {}


def verbosity() -> int:
    """How many -v the process was started with (0 when logging was never set up)."""
    return _last_setup.get("verbose", 0)


def reconfigure(file: Path, level: str) -> None:
    """A reload: log to this file at this level, keeping -v and the terminal as they were."""
    setup(file, level, **_last_setup)
