"""The on-disk format of a musicfs cache directory. This docstring is its specification.

Layout of ``<cache.dir>``::

    musicfs.lock              flock()ed by the running daemon; holds its PID in decimal
    index.lmdb/               one LMDB environment (data.mdb, lock.mdb): every record below
    chunks/<h0h1>/<h2h3>/<hex>  one file per chunk: exactly the chunk's bytes, no header; <hex> is
                              the 32-digit lowercase hex of the chunk's XXH3-128 digest
    chunks/.tmp/              chunk files being written, renamed into place when complete (inside
                              chunks/ so the rename never crosses filesystems even when chunks/
                              is a mount of its own); anything here at startup is crash garbage

Chunks. A file is cut into fixed-size chunks of ``meta.chunk_size`` bytes (the last one
shorter). A chunk is addressed by XXH3-128 of its bytes: 128 bits make an accidental collision
negligible at any cache size (64-bit digests reach even odds near 2**32 chunks), and XXH3 is
the fastest xxhash variant on current CPUs (well above disk and network speed), so verifying
every chunk on every read from disk is affordable. Equal content has one digest, so it is
stored once. Chunk files are written to tmp/ then renamed: a chunk file is either absent or
complete.

LMDB sub-databases. Integers are unsigned big-endian (so keys sort numerically).

==============  =========================================  ========================================
database        key                                        value
==============  =========================================  ========================================
meta            b"format"                                  ASCII decimal FORMAT_VERSION
                b"chunk_size"                              u64
                b"total"                                   u64: sum of all chunks.size
                b"pinned"                                  u64: sum of chunks.size of the chunks
                                                           in pinned_chunks
                b"dirty"                                   b"1" while a daemon has the cache open
                b"hits", b"misses"                         u64 counters of chunk lookups
                b"scanned:" + origin name                  u64 time_ns of its last complete scan
chunks          digest (16 bytes)                          u32 size, u64 last access (time_ns)
lru             u64 last access, digest                    b"" (chunks ordered oldest first)
manifests       origin name, 0x00, path on the origin      u64 file size, u64 mtime_ns, then one
                                                           16-byte digest per chunk (all zero =
                                                           not fetched yet)
origin_files    origin name, 0x00, path on the origin      u8 kind, u64 size, u64 mtime_ns,
                                                           u64 scan generation, then the version
                                                           token (rest of the value: local files
                                                           u64 ctime_ns; may be empty)
entries         shown path (absolute, b"/" = root)         u8 kind, u64 size, u64 mtime_ns, u8 n,
                                                           n x (u16 len, origin name, u16 len,
                                                           path on the origin) in priority order,
                                                           u16 len, content version: origin name,
                                                           0x00, u64 mtime_ns, token of the copy
                                                           whose bytes are shown (kept when a
                                                           same-size replica takes over); then,
                                                           for a file shown as a piece of its
                                                           source (an embedded cover), u64
                                                           offset, u64 source size
tags            origin name, 0x00, path on the origin      u8 tag format, u64 size, u64 mtime_ns,
                                                           u16 len, token (the file version they
                                                           were read from), JSON of the fields
                                                           (musicfs.catalog.tags; null: unparseable)
children        parent shown path, 0x00, name              u8 kind (gives readdir the entry type)
pins            manifest key (origin, 0x00, path)          the shown path pinned, as given to
                                                           ``musicfs pin`` (for --unpin and status)
pinned_chunks   digest (16 bytes)                          u32: how many slots of pinned manifests
                                                           hold it (present only when > 0)
first_seen      path on the origins (merged)               u64 time_ns the tag view first placed it
                                                           as a track (kept across rebuilds; gone
                                                           with the file): search's added:
tagview         one-byte kind, then its key                the tag view's own records, derived
                                                           like entries: where each relative path
                                                           was placed, albums' tracks, claims on
                                                           shown paths, folders' albums, covers,
                                                           what search looks at of each track
                                                           (layout: musicfs.catalog.records)
==============  =========================================  ========================================

Invariants (checked by startup recovery and ``musicfs cache verify``):

1. ``meta.total`` == sum of ``chunks`` sizes == sum of the sizes of the files under chunks/;
   ``meta.pinned`` == sum of the ``chunks`` sizes of the digests in ``pinned_chunks``, whose
   counts are the slots of the manifests named in ``pins``. Eviction never takes a chunk in
   ``pinned_chunks``; every change to a pinned manifest adjusts the counts in its transaction.
2. Every ``chunks`` record has a file of that size, whose XXH3-128 is its name, and one ``lru``
   record with the same access time; every chunk file has a ``chunks`` record.
3. A manifest is valid only while its (size, mtime_ns) equal the origin file's; a rescan, or
   a read that finds the origin file changed (size, mtime or token), deletes it.
4. ``entries``/``children`` are derived from ``origin_files`` (and ``tags`` in the tag view): a
   shown path's sources are the origins holding that relative path, in configuration order;
   the first one is read. ``meta.origins`` records the origins and the layout (mode, template)
   they were derived for; a difference rebuilds them.

Paths are raw bytes everywhere: a non-UTF-8 file name is stored and served as it is.

``meta.dirty`` is set when a daemon opens the cache and cleared on a clean shutdown; finding it
set means the last process was killed, so startup recovery re-establishes invariants 1-2 before
serving. An environment that cannot be opened, or one with another FORMAT_VERSION, is moved
aside and rebuilt empty (the catalog is rescanned, chunks are fetched again); nothing is served
from a cache whose format is not understood.
"""
from __future__ import annotations

import logging
import os
import shutil
import struct
import time
from pathlib import Path

import lmdb

log = logging.getLogger(__name__)

# 3: origin records and entries carry a version token (the ctime of local files).
FORMAT_VERSION = 3
ENV_NAME = "index.lmdb"
CHUNKS_DIR = "chunks"
TMP_DIR = "chunks/.tmp"
LOCK_NAME = "musicfs.lock"

# The map is virtual address space, not disk: LMDB grows data.mdb only as it is used.
MAP_SIZE = 64 << 30
# One reader slot per thread that reads concurrently; FUSE may run many threads.
MAX_READERS = 1024

U64 = struct.Struct(">Q")
DATABASES = ("meta", "chunks", "lru", "manifests", "origin_files", "tags", "entries", "children", "pins",
             "pinned_chunks", "tagview", "first_seen")


class Storage:
    """The LMDB environment of one cache directory, with its named sub-databases as attributes."""

    def __init__(self, cache_dir: Path, *, readonly: bool = False, disk_readonly: bool = False,
                 chunk_dirs: bool = True):
        """`readonly`: open for reading only (cache stats/verify beside a daemon). `disk_readonly`:
        the cache disk itself refuses writes; LMDB's lock file cannot be written either, so the
        environment is opened without it (safe: the daemon's flock keeps other writers out).
        `chunk_dirs=False`: the caller makes the chunk directories (make_chunk_dirs), bounded:
        chunks/ may be on a disk that does not answer."""
        self._chunk_dirs = chunk_dirs
        self.cache_dir = Path(cache_dir)
        self.readonly = readonly or disk_readonly
        self.disk_readonly = disk_readonly
        self.env_path = self.cache_dir / ENV_NAME
        self.chunks_dir = self.cache_dir / CHUNKS_DIR
        self.tmp_dir = self.cache_dir / TMP_DIR
        self.rebuilt = False
        self._retired: list[lmdb.Environment] = []
        self.env = self._open()
        for name in DATABASES:
            setattr(self, name, self._open_db(name))
        self._identity = self._data_identity()

    def _open_db(self, name: str):
        try:
            return self.env.open_db(name.encode(), create=not self.readonly)
        except lmdb.NotFoundError:
            return None   # read-only beside an index written before this database existed

    def _open_env(self) -> lmdb.Environment:
        return lmdb.open(str(self.env_path), map_size=MAP_SIZE, max_dbs=len(DATABASES) + 1,
                         max_readers=MAX_READERS, readonly=self.readonly, create=not self.readonly,
                         lock=not self.disk_readonly,
                         # Durability against a killed process comes from write(2) itself; the
                         # flusher calls sync() every few seconds and on shutdown. A power loss can
                         # at worst lose those seconds, which recovery then repairs.
                         # Read-ahead stays on: the index is far smaller than RAM, and after a
                         # reboot a tag scan otherwise faults it in one 4 KiB page at a time.
                         sync=False, metasync=False, readahead=True)

    def make_chunk_dirs(self) -> None:
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def _open(self) -> lmdb.Environment:
        if not self.readonly:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            if self._chunk_dirs:
                self.make_chunk_dirs()
        try:
            env = self._open_env()
            version = self._read_version(env)
        except lmdb.Error as e:
            if self.readonly or not os.access(self.cache_dir, os.W_OK):
                raise   # a read-only cache disk is no reason to throw the index away
            log.error("cache index %s cannot be opened (%s); rebuilding it empty", self.env_path, e)
            return self._rebuild()
        if version is None and not self.readonly:
            self.rebuilt = True  # a new index: chunk files left from an older one are orphans
            with env.begin(write=True) as txn:
                meta = env.open_db(b"meta", txn=txn)
                txn.put(b"format", str(FORMAT_VERSION).encode(), db=meta)
            return env
        if version != FORMAT_VERSION and not self.readonly:
            log.warning("cache index %s has format %s, this musicfs uses %s; rebuilding it empty",
                        self.env_path, version, FORMAT_VERSION)
            env.close()
            return self._rebuild()
        return env

    @staticmethod
    def _read_version(env: lmdb.Environment) -> int | None:
        with env.begin() as txn:
            if txn.get(b"meta") is None:  # the named database does not exist yet
                return None
        meta = env.open_db(b"meta", create=False)
        with env.begin(db=meta) as txn:
            raw = txn.get(b"format")
        return int(raw) if raw is not None else None

    def _rebuild(self) -> lmdb.Environment:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if self.env_path.exists():
            aside = self.env_path.with_name(f"{ENV_NAME}.broken-{stamp}")
            os.replace(self.env_path, aside)
            log.warning("moved the unreadable index to %s", aside)
        # Without the index no chunk can be attributed to a file: start the chunk store empty.
        # A caller that makes the chunk directories itself (they may be on a disk that hangs)
        # leaves that to its recovery, to which every chunk file is then an orphan.
        if self._chunk_dirs:
            shutil.rmtree(self.chunks_dir, ignore_errors=True)
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.make_chunk_dirs()
        self.rebuilt = True
        env = self._open_env()
        with env.begin(write=True) as txn:
            meta = env.open_db(b"meta", txn=txn)
            txn.put(b"format", str(FORMAT_VERSION).encode(), db=meta)
        return env

    # -- coming back from a failed cache disk ----------------------------------------------

    def _data_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.env_path / "data.mdb")
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def index_gone(self) -> bool:
        """True if the index this process has open is no longer at its path: the cache dir was
        deleted (or replaced) under the running daemon."""
        try:
            st = os.stat(self.env_path / "data.mdb")
        except FileNotFoundError:
            return True
        except OSError:
            return False   # a failing disk, not a deleted index: passthrough handles it
        return self._identity is not None and (st.st_dev, st.st_ino) != self._identity

    def reopen_writable(self) -> None:
        """Switch to a writable index at the same path, once the cache disk takes writes: after
        it was read-only at start, or after the cache dir was deleted under the daemon.

        The index open here is copied to fresh files that take its place (a deleted index
        survives with its catalog and manifests; chunk records whose files went with the
        directory are for the caller's recovery to drop), and those are opened: LMDB must not
        open the same files twice in one process. The old environment stays open, since
        threads may still be inside it; its files are unlinked."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fresh = self.env_path.with_name(f"{ENV_NAME}.new-{os.getpid()}")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        self.env.copy(str(fresh))
        aside = None
        if self.env_path.exists():
            aside = self.env_path.with_name(f"{ENV_NAME}.old-{os.getpid()}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(self.env_path, aside)
        os.replace(fresh, self.env_path)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        self.make_chunk_dirs()
        self.readonly = self.disk_readonly = False
        env = self._open_env()
        handles = {name: env.open_db(name.encode(), create=True) for name in DATABASES}
        self._retired.append(self.env)
        self.env = env
        for name, handle in handles.items():
            setattr(self, name, handle)
        self._identity = self._data_identity()

    # -- meta helpers ----------------------------------------------------------------------

    def get_u64(self, txn: lmdb.Transaction, key: bytes, default: int = 0) -> int:
        raw = txn.get(key, db=self.meta)
        return U64.unpack(raw)[0] if raw is not None else default

    def put_u64(self, txn: lmdb.Transaction, key: bytes, value: int) -> None:
        txn.put(key, U64.pack(value), db=self.meta)

    def begin(self, write: bool = False) -> lmdb.Transaction:
        return self.env.begin(write=write)

    def sync(self) -> None:
        if not self.readonly:
            self.env.sync(True)

    def close(self) -> None:
        try:
            self.sync()
        except lmdb.Error as e:  # a cache disk gone read-only or away: nothing more to save
            log.warning("cache index could not be synced on close: %s", e)
        finally:
            self.env.close()
