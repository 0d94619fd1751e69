"""The content-addressed chunk store: verified chunk files plus their LMDB index.

Format and invariants: see :mod:`musicfs.database`. The rules this class keeps:

* A chunk file is written to chunks/.tmp/ and renamed; only then is it recorded, and its size added to
  ``meta.total``, in ONE write transaction (together with the manifest slot that uses it).
* Everything that creates or deletes one digest's file and record holds that digest's lock, so
  the record and the file never disagree for longer than a crash.
* A read verifies size and XXH3-128 of the whole chunk; a chunk that fails is deleted and the
  caller fetches it again. Verified chunks are kept in a small in-memory LRU so sequential reads
  of one chunk in 128 KiB pieces do not re-read and re-hash it each time.
* Last-access times are collected in memory and written in one transaction every few seconds
  (and before eviction), not once per read.
* Eviction removes least recently used chunks down to a low watermark, skipping chunks in use
  (being loaded from disk right now; a chunk already in memory needs no hold) and pinned ones.
* Pinning (``musicfs pin``) marks a file's manifest in ``pins``; every digest in a pinned
  manifest is counted in ``pinned_chunks`` and its size in ``meta.pinned``, adjusted in the
  same transaction as whatever changes the manifest or the chunk record, so it stays exact.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import struct
import threading
import time
from concurrent.futures import Future

import xxhash

from ..catalog.records import origin_key
from ..errors import ChunkCorrupt, ChunkMissing
from ..database import U64, Storage
from .disk import CacheDisk

log = logging.getLogger(__name__)

# Why 1 MiB: large enough that per-chunk costs (one LMDB record, one file, one open) vanish
# against the data, small enough that a miss costs one ~10 ms range read from a NAS and that a
# tag scanner reading a file's first KBs fetches at most 1 MiB of it.
DEFAULT_CHUNK_SIZE = 1 << 20
DIGEST_SIZE = 16
NO_DIGEST = bytes(DIGEST_SIZE)
CHUNK_RECORD = struct.Struct(">IQ")      # size, last access ns
MANIFEST_HEAD = struct.Struct(">QQ")     # file size, mtime_ns
PIN_COUNT = struct.Struct(">I")
# Evict down to this fraction of max_size, so a full cache does not evict on every write.
LOW_WATERMARK = 0.9
VERIFIED_CACHE_BYTES = 8 << 20
LOCK_STRIPES = 64
# Errors that mean "the cache disk cannot take writes", as opposed to a bug.
DISK_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EIO, errno.EACCES, errno.EPERM, errno.ENOENT,
               errno.EDQUOT, errno.ENOTDIR, errno.ESTALE}


def digest_of(data: bytes | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


class Tally:
    """A counter many threads add to, read and emptied without losing a count."""
    __slots__ = ("_count", "_lock")

    def __init__(self):
        self._count = 0
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self._count += n

    @property
    def value(self) -> int:
        return self._count

    def take(self) -> int:
        """The count so far, leaving zero."""
        with self._lock:
            count, self._count = self._count, 0
        return count


def chunk_count(file_size: int, chunk_size: int) -> int:
    return (file_size + chunk_size - 1) // chunk_size


# A manifest is keyed like the origin file it describes.
manifest_key = origin_key


def lru_key(last_access: int, digest: bytes) -> bytes:
    return U64.pack(last_access) + digest


def record_chunk(storage: Storage, txn, digest: bytes, size: int, now: int) -> None:
    """Add a chunk's record, its lru entry and its size to the total (one transaction)."""
    txn.put(digest, CHUNK_RECORD.pack(size, now), db=storage.chunks)
    txn.put(lru_key(now, digest), b"", db=storage.lru)
    storage.put_u64(txn, b"total", storage.get_u64(txn, b"total") + size)
    if txn.get(digest, db=storage.pinned_chunks) is not None:
        storage.put_u64(txn, b"pinned", storage.get_u64(txn, b"pinned") + size)


def forget_chunk(storage: Storage, txn, digest: bytes) -> int:
    """Remove a chunk's record and lru entry and take its size off the total; returns the size
    (0 if it was not recorded). The caller removes the file."""
    raw = txn.get(digest, db=storage.chunks)
    if raw is None:
        return 0
    size, when = CHUNK_RECORD.unpack(raw)
    txn.delete(digest, db=storage.chunks)
    txn.delete(lru_key(when, digest), db=storage.lru)
    storage.put_u64(txn, b"total", storage.get_u64(txn, b"total") - size)
    if txn.get(digest, db=storage.pinned_chunks) is not None:
        storage.put_u64(txn, b"pinned", storage.get_u64(txn, b"pinned") - size)
    return size


def count_pin(storage: Storage, txn, digest: bytes, delta: int) -> None:
    """One more (+1) or one fewer (-1) pinned manifest slot holds `digest`; the first and the
    last move its size in or out of meta.pinned (if the chunk is cached)."""
    raw = txn.get(digest, db=storage.pinned_chunks)
    before = PIN_COUNT.unpack(raw)[0] if raw is not None else 0
    after = max(before + delta, 0)
    if after:
        txn.put(digest, PIN_COUNT.pack(after), db=storage.pinned_chunks)
    else:
        txn.delete(digest, db=storage.pinned_chunks)
    if (before == 0) != (after == 0):
        record = txn.get(digest, db=storage.chunks)
        if record is not None:
            size = CHUNK_RECORD.unpack(record)[0]
            pinned = storage.get_u64(txn, b"pinned")
            storage.put_u64(txn, b"pinned", pinned + size if after else pinned - size)


def cached_bytes(storage: Storage, txn, key: bytes, file_size: int, mtime_ns: int) -> int:
    """How many bytes of this file version are in the cache (recorded chunks of its manifest)."""
    return sum(cached_slots(storage, txn, key, file_size, mtime_ns))


def cached_slots(storage: Storage, txn, key: bytes, file_size: int, mtime_ns: int) -> list[int]:
    """Per slot of this file version's manifest, the bytes of its chunk in the cache (0 where
    none is recorded): what reads of this copy take from the cache."""
    raw = txn.get(key, db=storage.manifests)
    if raw is None or MANIFEST_HEAD.unpack_from(raw) != (file_size, mtime_ns):
        return []
    slots = []
    for digest in manifest_slots(raw):
        record = txn.get(digest, db=storage.chunks) if digest is not None else None
        slots.append(CHUNK_RECORD.unpack(record)[0] if record is not None else 0)
    return slots


def manifest_slots(raw: bytes) -> list[bytes | None]:
    """The slots of a stored manifest, in chunk order: a digest, or None where empty."""
    body = memoryview(raw)[MANIFEST_HEAD.size:]
    found = (bytes(body[i:i + DIGEST_SIZE]) for i in range(0, len(body) - DIGEST_SIZE + 1, DIGEST_SIZE))
    return [d if d != NO_DIGEST else None for d in found]


def manifest_digests(raw: bytes | None) -> list[bytes]:
    """The digests a stored manifest holds (empty slots left out)."""
    return [d for d in manifest_slots(raw) if d is not None] if raw is not None else []


class _Refused(Exception):
    """put's record_if said no."""


class VerifiedChunks:
    """A byte-bounded LRU of chunks that passed verification since they were read from disk."""

    def __init__(self, capacity: int = VERIFIED_CACHE_BYTES):
        self.capacity = capacity
        self._chunks: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> bytes | None:
        with self._lock:
            data = self._chunks.get(digest)
            if data is not None:
                self._chunks.move_to_end(digest)
            return data

    def add(self, digest: bytes, data: bytes) -> None:
        if len(data) > self.capacity:
            return
        with self._lock:
            if digest in self._chunks:
                return
            self._chunks[digest] = data
            self._bytes += len(data)
            while self._bytes > self.capacity:
                _, old = self._chunks.popitem(last=False)
                self._bytes -= len(old)

    def discard(self, digest: bytes) -> None:
        with self._lock:
            data = self._chunks.pop(digest, None)
            if data is not None:
                self._bytes -= len(data)

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._bytes = 0


class CacheWriteError(OSError):
    """The cache disk refused a chunk (read-only, full, gone...): the caller serves without caching."""


class ChunkStore:
    def __init__(self, storage: Storage, max_size: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 disk: CacheDisk | None = None):
        self.storage = storage
        self.max_size = max_size
        self._chunks_dir = os.fsencode(storage.chunks_dir)
        self._tmp_dir = os.fsencode(storage.tmp_dir)
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._loading: dict[bytes, Future] = {}
        self._loading_lock = threading.Lock()
        self._in_use: collections.Counter[bytes] = collections.Counter()
        self._pins_lock = threading.Lock()
        self._evict_lock = threading.Lock()
        self._touched: dict[bytes, int] = {}
        self._tmp_seq = 0
        self.verified = VerifiedChunks()
        # Chunks served from the cache, and fetched from origins, since the last save_counters:
        # counted from FUSE and pool threads at once, so under a lock (`n += 1` on an attribute
        # is a read and a write, and two threads can lose one of their counts between them).
        self.hits = Tally()
        self.misses = Tally()
        # Whether the cache disk takes writes and answers loads (passthrough, suspended loads).
        self.disk = disk if disk is not None else CacheDisk()
        self.chunk_size = self._init_chunk_size(chunk_size)

    def _init_chunk_size(self, wanted: int) -> int:
        with self.storage.begin(write=not self.storage.readonly) as txn:
            stored = self.storage.get_u64(txn, b"chunk_size", 0)
            if stored:
                return stored
            if not self.storage.readonly:
                self.storage.put_u64(txn, b"chunk_size", wanted)
        return wanted

    # -- paths and locks -------------------------------------------------------------------

    def path_of(self, digest: bytes) -> bytes:
        hexdigest = digest.hex().encode()
        return b"%s/%s/%s/%s" % (self._chunks_dir, hexdigest[:2], hexdigest[2:4], hexdigest)

    def _lock_for(self, digest: bytes) -> threading.Lock:
        return self._locks[digest[0] % LOCK_STRIPES]

    @contextlib.contextmanager
    def held(self, digests):
        """Keep these chunks from eviction meanwhile."""
        with self._pins_lock:
            for d in digests:
                self._in_use[d] += 1
        try:
            yield
        finally:
            with self._pins_lock:
                for d in digests:
                    self._in_use[d] -= 1
                    if self._in_use[d] <= 0:
                        del self._in_use[d]

    # -- reading ---------------------------------------------------------------------------

    def get_verified(self, digest: bytes) -> bytes | None:
        """The chunk if it is in memory already (no disk I/O), else None."""
        data = self.verified.get(digest)
        if data is not None:
            self._touched[digest] = time.time_ns()
            self.hits.add()
        return data

    def get(self, digest: bytes, size: int) -> bytes:
        """The verified bytes of a chunk; ChunkMissing/ChunkCorrupt (chunk dropped) otherwise."""
        data = self.verified.get(digest)
        if data is None:
            data = self._load_once(digest, size)
        self._touched[digest] = time.time_ns()
        self.hits.add()
        return data

    def count_miss(self) -> None:
        """A chunk was fetched from an origin (the cache did not have it)."""
        self.misses.add()

    def preload(self, digest: bytes, size: int) -> None:
        """Load and verify a chunk into memory ahead of its read (run by a background worker:
        the reader of the previous chunk does not wait for it). Errors are left to the read."""
        if self.verified.get(digest) is None:
            with contextlib.suppress(ChunkMissing, ChunkCorrupt):
                self._load_once(digest, size)

    def loading(self, digest: bytes) -> Future | None:
        """The load of this chunk under way now (a preload), if any: its result is the chunk."""
        return self._loading.get(digest)

    def _load_once(self, digest: bytes, size: int) -> bytes:
        """Single flight for loads: the kernel sends several 128 KiB reads of one chunk at once,
        and a preload may be under way; only one of them reads and hashes the chunk file, the
        others wait for its result."""
        with self._loading_lock:
            loading = self._loading.get(digest)
            if loading is None:
                data = self.verified.get(digest)
                if data is not None:
                    return data
                loading = self._loading[digest] = Future()
                owner = True
            else:
                owner = False
        if not owner:
            return loading.result()
        try:
            # Pinned while its file is read: eviction must not delete it from under the load.
            with self.held((digest,)):
                data = self._load(digest, size)
        except BaseException as e:
            loading.set_exception(e)
            raise
        else:
            loading.set_result(data)
            return data
        finally:
            with self._loading_lock:
                del self._loading[digest]

    def _load(self, digest: bytes, size: int) -> bytes:
        try:
            fd = os.open(self.path_of(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._drop_quietly(digest, "its file is missing")
            raise ChunkMissing(f"chunk {digest.hex()} is recorded but its file is missing") from None
        except OSError as e:
            # EMFILE, or a cache disk that fails reads: the chunk may be fine, fetch around it.
            raise ChunkMissing(f"chunk {digest.hex()} cannot be opened: {e.strerror}") from e
        try:
            # One byte more than expected tells a too-long file from a good one.
            data = os.pread(fd, size + 1, 0)
        except OSError as e:
            raise ChunkMissing(f"chunk {digest.hex()} cannot be read: {e.strerror}") from e
        finally:
            os.close(fd)
        if len(data) != size or digest_of(data) != digest:
            self._drop_quietly(digest, f"it failed verification ({len(data)} bytes, expected {size})")
            raise ChunkCorrupt(f"chunk {digest.hex()} failed verification; fetching it again")
        self.verified.add(digest, data)
        return data

    def _drop_quietly(self, digest: bytes, reason: str) -> None:
        try:
            self.delete(digest, reason=reason)
        except Exception as e:  # a read-only cache disk cannot drop it; the read goes on
            log.warning("could not drop chunk %s (%s): %s", digest.hex(), reason, e)

    def contains(self, digest: bytes) -> int | None:
        """The recorded size of a chunk, or None."""
        with self.storage.begin() as txn:
            raw = txn.get(digest, db=self.storage.chunks)
        return CHUNK_RECORD.unpack(raw)[0] if raw is not None else None

    # -- manifests -------------------------------------------------------------------------

    def manifest(self, key: bytes, file_size: int, mtime_ns: int) -> list[bytes | None]:
        """The known chunk digests of a file version (None where not fetched yet)."""
        count = chunk_count(file_size, self.chunk_size)
        with self.storage.begin() as txn:
            raw = txn.get(key, db=self.storage.manifests)
        if raw is None or MANIFEST_HEAD.unpack_from(raw) != (file_size, mtime_ns):
            return [None] * count
        slots = manifest_slots(raw)[:count]
        return slots + [None] * (count - len(slots))

    def drop_manifest(self, key: bytes, txn) -> None:
        """Forget a file version's chunk list (its file changed or went); a pinned one releases
        its chunks (the pin itself stays: `musicfs pin` again fetches the new version)."""
        if txn.get(key, db=self.storage.pins) is not None:
            for digest in manifest_digests(txn.get(key, db=self.storage.manifests)):
                count_pin(self.storage, txn, digest, -1)
        txn.delete(key, db=self.storage.manifests)

    # -- pins ------------------------------------------------------------------------------

    def pin(self, key: bytes, shown: bytes) -> None:
        """Pin a file's manifest: its cached chunks, and every chunk recorded in it from now
        on, are kept from eviction."""
        with self.storage.begin(write=True) as txn:
            if txn.get(key, db=self.storage.pins) is not None:
                txn.put(key, shown, db=self.storage.pins)
                return
            txn.put(key, shown, db=self.storage.pins)
            for digest in manifest_digests(txn.get(key, db=self.storage.manifests)):
                count_pin(self.storage, txn, digest, +1)

    def unpin(self, key: bytes) -> bool:
        """Release a pinned manifest; False if it was not pinned."""
        with self.storage.begin(write=True) as txn:
            if txn.get(key, db=self.storage.pins) is None:
                return False
            for digest in manifest_digests(txn.get(key, db=self.storage.manifests)):
                count_pin(self.storage, txn, digest, -1)
            txn.delete(key, db=self.storage.pins)
        return True

    def pins(self) -> list[tuple[bytes, bytes]]:
        """Every pinned (manifest key, shown path)."""
        with self.storage.begin() as txn:
            return list(txn.cursor(db=self.storage.pins))

    def pins_exist(self) -> bool:
        with self.storage.begin() as txn:
            return txn.stat(self.storage.pins)["entries"] > 0

    def forget_pin(self, key: bytes, txn) -> None:
        """Drop the pin of a copy whose origin is no longer configured (after drop_manifest)."""
        txn.delete(key, db=self.storage.pins)

    def pinned_bytes(self) -> int:
        with self.storage.begin() as txn:
            return self.storage.get_u64(txn, b"pinned")

    def cached_bytes(self, key: bytes, file_size: int, mtime_ns: int) -> int:
        with self.storage.begin() as txn:
            return cached_bytes(self.storage, txn, key, file_size, mtime_ns)

    def _set_manifest_slot(self, txn, key: bytes, file_size: int, mtime_ns: int, index: int, digest: bytes):
        count = chunk_count(file_size, self.chunk_size)
        raw = txn.get(key, db=self.storage.manifests)
        pinned = txn.get(key, db=self.storage.pins) is not None
        if raw is None or MANIFEST_HEAD.unpack_from(raw) != (file_size, mtime_ns) \
                or len(raw) != MANIFEST_HEAD.size + count * DIGEST_SIZE:
            if pinned:   # another version: the old one's chunks are no longer held for this pin
                for old in manifest_digests(raw):
                    count_pin(self.storage, txn, old, -1)
            body = bytearray(MANIFEST_HEAD.pack(file_size, mtime_ns) + NO_DIGEST * count)
        else:
            body = bytearray(raw)
        start = MANIFEST_HEAD.size + index * DIGEST_SIZE
        previous = bytes(body[start:start + DIGEST_SIZE])
        if previous == digest:
            return
        body[start:start + DIGEST_SIZE] = digest
        txn.put(key, bytes(body), db=self.storage.manifests)
        if pinned:
            if previous != NO_DIGEST:
                count_pin(self.storage, txn, previous, -1)
            count_pin(self.storage, txn, digest, +1)

    # -- writing ---------------------------------------------------------------------------

    def put(self, data: bytes, *, manifest: tuple[bytes, int, int, int] | None = None,
            record_if=None) -> bytes | None:
        """Store a chunk (once per content) and, optionally, record it in a file's manifest
        (key, file size, mtime_ns, chunk index), all in one transaction. Returns the digest.
        `record_if(txn)`, asked in that transaction, may refuse: then nothing is stored and None
        is returned (the caller's file version is no longer the current one, say).
        Raises CacheWriteError if the cache disk refuses the write; nothing is recorded then."""
        if self.disk.passthrough:
            raise CacheWriteError(errno.EIO, f"cache in passthrough: {self.disk.reason}")
        try:
            return self._put(data, manifest, record_if)
        except CacheWriteError as e:
            if e.errno == errno.ENOSPC and self.evict(target=self.total() // 2):
                try:  # the disk is fuller than max_size says (shared disk): make room, retry once
                    return self._put(data, manifest, record_if)
                except CacheWriteError as again:
                    e = again
            self.disk.refuses_writes(e.strerror or str(e))
            raise

    def _put(self, data: bytes, manifest, record_if=None) -> bytes | None:
        digest = digest_of(data)
        with self._lock_for(digest):
            with self.storage.begin() as txn:
                known = txn.get(digest, db=self.storage.chunks) is not None
            if not known:
                self._write_file(digest, data)
            try:
                with self.storage.begin(write=True) as txn:
                    if record_if is not None and not record_if(txn):
                        raise _Refused()   # aborts the transaction: nothing recorded
                    now = time.time_ns()
                    if known and txn.get(digest, db=self.storage.chunks) is not None:
                        self._retouch(txn, digest, now)
                    else:
                        record_chunk(self.storage, txn, digest, len(data), now)
                    if manifest is not None:
                        self._set_manifest_slot(txn, *manifest, digest)
            except Exception as e:
                # The file is on disk but unrecorded: remove it so accounting stays exact.
                if not known:
                    with contextlib.suppress(OSError):
                        os.unlink(self.path_of(digest))
                if isinstance(e, _Refused):
                    return None
                raise CacheWriteError(getattr(e, "errno", errno.EIO) or errno.EIO,
                                      f"cannot record chunk in the index: {e}") from e
        self.verified.add(digest, data)
        if self.total() > self.max_size:
            self.evict()
        return digest

    def probe_writable(self) -> bool:
        """Try a real write (a temp file and an index transaction); leave passthrough if it works."""
        probe = b"%s/probe.%d" % (self._tmp_dir, os.getpid())
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, b"x" * 4096)
            finally:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(probe)
            with self.storage.begin(write=True) as txn:
                self.storage.put_u64(txn, b"probed", time.time_ns())
        except Exception as e:
            self.disk.still_refusing(getattr(e, "strerror", None) or str(e))
            return False
        self.disk.works_again()
        return True

    def _write_file(self, digest: bytes, data: bytes) -> None:
        self._tmp_seq += 1
        tmp = b"%s/%d.%d.%d" % (self._tmp_dir, os.getpid(), threading.get_ident(), self._tmp_seq)
        final = self.path_of(digest)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            try:
                os.rename(tmp, final)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.rename(tmp, final)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise CacheWriteError(e.errno or errno.EIO, f"cannot write chunk to the cache: {e.strerror}") from e

    def _retouch(self, txn, digest: bytes, now: int) -> None:
        raw = txn.get(digest, db=self.storage.chunks)
        if raw is None:
            return
        size, old = CHUNK_RECORD.unpack(raw)
        if old == now:
            return
        txn.delete(lru_key(old, digest), db=self.storage.lru)
        txn.put(lru_key(now, digest), b"", db=self.storage.lru)
        txn.put(digest, CHUNK_RECORD.pack(size, now), db=self.storage.chunks)

    def flush_access_times(self) -> None:
        """Write the last-access times collected since the last flush, in one transaction."""
        if not self._touched:
            return
        touched, self._touched = self._touched, {}
        with self.storage.begin(write=True) as txn:
            for digest, when in touched.items():
                self._retouch(txn, digest, when)

    def delete(self, digest: bytes, reason: str = "", *, unless_pinned: bool = False) -> int:
        """Remove a chunk's record and file (under its lock). Returns the bytes freed.
        `unless_pinned`: leave it if a pin took it meanwhile (eviction plans outside the lock)."""
        self.verified.discard(digest)
        with self._lock_for(digest):
            with self.storage.begin(write=True) as txn:
                if unless_pinned and txn.get(digest, db=self.storage.pinned_chunks) is not None:
                    return 0
                size = forget_chunk(self.storage, txn, digest)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path_of(digest))
        if reason:
            log.warning("dropped chunk %s: %s", digest.hex(), reason)
        return size

    # -- eviction --------------------------------------------------------------------------

    def total(self) -> int:
        with self.storage.begin() as txn:
            return self.storage.get_u64(txn, b"total")

    def evict(self, target: int | None = None) -> int:
        """Delete least recently used, unpinned chunks until the total is at most `target`
        (default: the low watermark). Returns the bytes freed. One evictor at a time."""
        if not self._evict_lock.acquire(blocking=False):
            return 0
        try:
            self.flush_access_times()
            if target is None:
                target = int(self.max_size * LOW_WATERMARK)
            freed = 0
            total = self.total()
            if total <= target:
                return 0
            victims = []
            with self.storage.begin() as txn:
                cursor = txn.cursor(db=self.storage.lru)
                planned = 0
                for key, _ in cursor:
                    digest = key[8:]
                    if digest in self._in_use or txn.get(digest, db=self.storage.pinned_chunks) is not None:
                        continue
                    raw = txn.get(digest, db=self.storage.chunks)
                    if raw is None:
                        continue
                    victims.append(digest)
                    planned += CHUNK_RECORD.unpack(raw)[0]
                    if total - planned <= target:
                        break
            for digest in victims:
                if digest in self._in_use:
                    continue
                freed += self.delete(digest, unless_pinned=True)
            log.info("evicted %d chunks, %d bytes (cache was %d bytes, limit %d)",
                     len(victims), freed, total, self.max_size)
            return freed
        finally:
            self._evict_lock.release()

    # -- statistics ------------------------------------------------------------------------

    def stats(self) -> dict:
        with self.storage.begin() as txn:
            return {
                "chunks": txn.stat(self.storage.chunks)["entries"],
                "bytes": self.storage.get_u64(txn, b"total"),
                "pinned_bytes": self.storage.get_u64(txn, b"pinned"),
                "max_bytes": self.max_size,
                "chunk_size": self.chunk_size,
                "hits": self.storage.get_u64(txn, b"hits") + self.hits.value,
                "misses": self.storage.get_u64(txn, b"misses") + self.misses.value,
            }

    def save_counters(self) -> None:
        hits, misses = self.hits.take(), self.misses.take()
        with self.storage.begin(write=True) as txn:
            self.storage.put_u64(txn, b"hits", self.storage.get_u64(txn, b"hits") + hits)
            self.storage.put_u64(txn, b"misses", self.storage.get_u64(txn, b"misses") + misses)
