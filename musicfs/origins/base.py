"""The origin interface: where the music really lives.

An origin answers four questions about paths relative to its root, given as bytes with b"/"
separators (b"" is the root): what is in this directory, what is this entry, what are these
bytes, and are you alive. Nothing here assumes a local filesystem, so SFTP or S3 origins fit
the same interface; timeouts and worker budgets are imposed by the caller, not the origin.
"""
from __future__ import annotations

import contextlib

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

KIND_FILE = 1
KIND_DIR = 2


@dataclass(frozen=True, slots=True)
class OriginEntry:
    name: bytes          # one path component, raw bytes (non-UTF-8 names survive)
    kind: int            # KIND_FILE or KIND_DIR
    size: int
    mtime_ns: int
    # A value equal for two entries that are the same directory (e.g. (st_dev, st_ino)), so a
    # walk can refuse to loop through symlinks; None when the origin cannot tell.
    identity: tuple | None = None
    # What else tells this version of a file from the next one, beyond size and mtime (which a
    # tagger may preserve): the ctime of local files, later an S3 ETag. Opaque bytes,
    # b"" when the origin has nothing more.
    token: bytes = b""

    def same_version(self, size: int, mtime_ns: int, token: bytes) -> bool:
        return (self.size, self.mtime_ns, self.token) == (size, mtime_ns, token)


class Origin(ABC):
    """One source of files. Implementations must be safe to call from several threads."""

    # Chunks a sequential reader fetches ahead from this origin, concurrently (within the
    # origin's worker budget): a local disk needs few; a remote origin hides its latency so.
    # (While the reader may be a tag reader, fewer: see read.readahead.TAG_READER_EXTRA_CHUNKS.)
    readahead_chunks = 2
    # Consecutive chunks a sequential reader's readahead asks for in one request (split and
    # verified into chunks by the reader): worth it where each request costs much more than
    # its bytes (a round trip, an HTTP request); a local disk answers each chunk cheaply.
    span_chunks = 1
    # When a file's first chunk had to come from this origin, the first chunks of this many
    # files after it in the same folder are fetched too, in the background: a library scanner
    # (beets, Navidrome) reads the folder's files one after another, and so does a player
    # going through an album. Worth it where each file costs round trips; a local disk answers
    # a file's first read in less than the bookkeeping would cost.
    prefetch_next_files = 0

    def __init__(self, name: str):
        self.name = name

    @abstractmethod
    def list_dir(self, relpath: bytes) -> list[OriginEntry]:
        """Regular files and directories directly in `relpath`; other kinds are left out."""

    @abstractmethod
    def stat(self, relpath: bytes) -> OriginEntry:
        """The entry at `relpath` (raises OSError/OriginUnavailable when it is not there)."""

    @abstractmethod
    def read(self, relpath: bytes, offset: int, size: int, expect: OriginEntry | None = None) -> bytes:
        """Up to `size` bytes at `offset`; fewer only at end of file. Never the whole file at once.

        With `expect`, the bytes must come from exactly that version of the file (its size,
        mtime and token): otherwise raise OriginChanged carrying the entry the origin has now.
        A file that is not there raises FileNotFoundError."""

    def read_pieces(self, relpath: bytes, offset: int, lengths: list[int],
                    expect: OriginEntry | None = None) -> Iterator[bytes]:
        """Consecutive pieces of `lengths` bytes from `offset` on, in ONE request, each handed
        out as soon as it is there (fewer bytes only at end of file), with read()'s guarantees
        about `expect`. An error ends the iteration. Here: one read(), then split; an origin
        that can stream its answer hands out the first piece before the last has arrived."""
        data = memoryview(self.read(relpath, offset, sum(lengths), expect))
        start = 0
        for length in lengths:
            yield bytes(data[start:start + length])
            start += length

    @contextlib.contextmanager
    def reading(self, relpath: bytes, expect: OriginEntry | None = None):
        """A function reading (offset, size) of one file, for several reads in a row (a tag
        parser's), with read()'s guarantees. Here each is a read(); a local origin opens the
        file once."""
        yield lambda offset, size: self.read(relpath, offset, size, expect)

    @abstractmethod
    def check(self) -> None:
        """Return if the origin answers, raise OriginUnavailable (or OSError) if not."""

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        """Release what the origin holds (connections); local origins hold nothing."""


def join(relpath: bytes, name: bytes) -> bytes:
    return relpath + b"/" + name if relpath else name
