"""Progress on the terminal: one line rewritten in place, and nothing at all when the stream is
not a terminal (cron, systemd, a pipe, a test) - used by the first scan, pin and cache verify."""
from __future__ import annotations

import sys


class StatusLine:
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.shown = False

    def show(self, text: str) -> None:
        if not self.tty:
            return
        self.stream.write("\r" + text)
        self.stream.flush()
        self.shown = True

    def end(self) -> None:
        """Leave the line as it is and go on below it (once; nothing if nothing was shown)."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


def bar(done: int, total: int, width: int) -> str:
    filled = width * done // total if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}]"
