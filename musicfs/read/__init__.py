"""The read engine: byte ranges of catalog files, from verified chunks or, on a miss, from origins.

* A cached chunk is served from memory when it is there; otherwise it is loaded and verified
  in the pool's load lane and waited for at most [health].timeout: a hung cache disk must not
  hang a read. On that timeout the cache disk counts as hung (passthrough, no loads) and the
  chunk is read from an origin instead, until the health loop sees the disk answer again.
* A missing (or corrupt) chunk is fetched by itself - a range read of that chunk, never the
  whole file - in the shared pool, within the origin's worker budget. The caller waits on the
  future until the read's deadline ([fuse].read_timeout) and then gives up with ReadTimeout.
* Concurrent readers of the same missing chunk share one fetch (single flight).
* Sequential reading (a read that continues the one before) fetches the next chunks ahead from
  origins, or, where they are cached, loads them into memory ahead in the pool's preload lane
  (a few workers for the cache disk). A file's first read alone reads nothing ahead.
  An origin that pays a lot per request (Origin.span_chunks > 1: S3) is asked for several
  consecutive chunks ahead in ONE request; the bytes are split into the usual chunks, each
  hashed, stored and handed to its readers on its own, and the one request proves the version
  of all of them (the same check as a single chunk's). Reads that are not sequential, and the
  chunk a read waits for, are still fetched alone.
* Where an origin pays round trips per file (Origin.prefetch_next_files: sftp, s3), reading a
  file whose first chunk was not cached also starts fetching the first chunk of the next few
  files of its folder, as a library scanner or a player going through an album will read them
  next; reading one of those carries this on. Beyond that, no bytes are fetched that were not
  asked for.
* If the preferred origin fails, replicas (other origins with the same path and size) are
  tried in order; bytes from a replica must match any digest already known for that chunk,
  and a replica takes over a file only if its chunks equal every chunk already known from the
  copy read so far (a replica of the same size may be another version: see failover.py).
* If the cache disk refuses a chunk, the bytes are served anyway (passthrough).
* Every origin read proves that the origin file is still the version the catalog describes
  (size, mtime, version token). If it is not, no byte of it is served: the read fails, the
  catalog entry is refreshed at once and the old version's chunk list dropped, so the next
  open reads the new version whole. A file gone from its origin refreshes its directory and
  tries the replicas; neither is counted against the origin's health.
* A read carries the version tag its open was given (see :func:`version_tag`); once the file's
  entry has changed, reads of an earlier open fail instead of mixing two versions.

The package: reader.py (read_span, the hot path; whole-file caching for pins), files.py (per-file
state: copies, known chunk digests, sequential position), fetch.py (a typed Fetch: single flight,
origin read, verified cache write), failover.py (replicas), readahead.py (ahead of a sequential
reader, and a folder's next files).
"""
from .fetch import Fetch, Fetcher, ReadSettings
from .files import OPEN_FILES, OpenFile, Source
from .readahead import READAHEAD_CHUNKS, TAG_READER_EXTRA_CHUNKS
from .reader import Reader

__all__ = ["Fetch", "Fetcher", "OPEN_FILES", "OpenFile", "READAHEAD_CHUNKS", "ReadSettings", "Reader", "Source",
           "TAG_READER_EXTRA_CHUNKS"]
