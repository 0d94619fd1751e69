"""Invariant checks of the chunk store, one method per invariant, each able to repair.

Used at startup after an unclean shutdown (recovery) and by ``musicfs cache verify``. While a
daemon runs, files younger than ``settle_seconds`` are left alone: they may belong to a write
that is between its rename and its index transaction.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field

from ..database import Storage
from .store import CHUNK_RECORD, DIGEST_SIZE, PIN_COUNT, digest_of, forget_chunk, lru_key, manifest_digests

log = logging.getLogger(__name__)


@dataclass
class Finding:
    invariant: str
    detail: str
    repaired: bool = False


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    chunks_checked: int = 0
    files_seen: int = 0
    total_recorded: int = 0
    total_on_disk: int = 0

    @property
    def consistent(self) -> bool:
        return not self.findings


class CacheChecker:
    def __init__(self, storage: Storage, *, repair: bool, settle_seconds: float = 0.0,
                 progress=None):
        self.storage = storage
        self.repair = repair
        self.settle_seconds = settle_seconds
        self.progress = progress or (lambda done, total: None)
        self.report = Report()
        self._files: dict[bytes, tuple[int, float]] = {}  # digest -> (size, mtime)
        self._reported: set[bytes] = set()  # digests with a finding already: one finding each

    def _found(self, invariant: str, detail: str) -> None:
        self.report.findings.append(Finding(invariant, detail, self.repair))
        log.warning("cache check: %s: %s%s", invariant, detail, " (repaired)" if self.repair else "")

    def _settled(self, mtime: float) -> bool:
        return time.time() - mtime >= self.settle_seconds

    def run(self, *, digests: bool) -> Report:
        self.check_temp_files()
        self._scan_chunk_files()
        self.check_orphan_files()
        self.check_dangling_records()
        self.check_sizes()
        if digests:
            self.check_digests()
        self.check_lru()
        self.check_total()
        self.check_pins()
        return self.report

    # -- the invariants ----------------------------------------------------------------------

    def check_temp_files(self) -> None:
        """Nothing stays in tmp/ once its writer is gone."""
        try:
            entries = list(os.scandir(self.storage.tmp_dir))
        except FileNotFoundError:
            return
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if not self._settled(entry.stat().st_mtime):
                    continue
                self._found("temp-file", entry.name)
                if self.repair:
                    os.unlink(entry.path)

    def _scan_chunk_files(self) -> None:
        root = self.storage.chunks_dir
        for level1 in _scandir(root):
            if level1.name.startswith("."):
                continue  # .tmp: see check_temp_files
            for level2 in _scandir(level1.path):
                for entry in _scandir(level2.path):
                    try:
                        digest = bytes.fromhex(entry.name)
                        st = entry.stat()
                    except (ValueError, FileNotFoundError):
                        digest = None
                    if digest is None or len(digest) != DIGEST_SIZE or \
                            entry.path != os.path.join(root, entry.name[:2], entry.name[2:4], entry.name):
                        self._found("stray-file", entry.path)
                        if self.repair:
                            with contextlib.suppress(OSError):
                                os.unlink(entry.path)
                        continue
                    self._files[digest] = (st.st_size, st.st_mtime)
        self.report.files_seen = len(self._files)
        self.report.total_on_disk = sum(size for size, _ in self._files.values())

    def check_orphan_files(self) -> None:
        """Every chunk file has a record."""
        with self.storage.begin() as txn:
            orphans = [d for d, (_, mtime) in self._files.items()
                       if txn.get(d, db=self.storage.chunks) is None and self._settled(mtime)]
        for digest in orphans:
            self._found("orphan-file", digest.hex())
            if self.repair:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(digest))
                self.report.total_on_disk -= self._files.pop(digest)[0]

    def check_dangling_records(self) -> None:
        """Every record has a chunk file."""
        dangling = []
        with self.storage.begin() as txn:
            for digest, _ in txn.cursor(db=self.storage.chunks):
                if digest not in self._files:
                    dangling.append(digest)
        for digest in dangling:
            # The file may have been written since the scan; look once more before judging.
            if os.path.exists(self._path(digest)):
                continue
            self._found("dangling-record", digest.hex())
            if self.repair:
                self._drop_record(digest)

    def check_sizes(self) -> None:
        """Every record's size is its file's size."""
        wrong = []
        with self.storage.begin() as txn:
            for digest, raw in txn.cursor(db=self.storage.chunks):
                size = CHUNK_RECORD.unpack(raw)[0]
                on_disk = self._files.get(digest)
                if on_disk is not None and on_disk[0] != size:
                    wrong.append((digest, size, on_disk[0]))
        for digest, size, actual in wrong:
            self._reported.add(digest)
            self._found("size-mismatch", f"{digest.hex()}: recorded {size}, file has {actual}")
            if self.repair:
                self._drop_record(digest)
                self._unlink(digest)

    def check_digests(self) -> None:
        """Every chunk file's content hashes to its name."""
        with self.storage.begin() as txn:
            digests = [d for d, _ in txn.cursor(db=self.storage.chunks)]
        for done, digest in enumerate(digests, 1):
            self.progress(done, len(digests))
            if digest in self._reported:
                continue
            try:
                with open(self._path(digest), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            self.report.chunks_checked += 1
            if digest_of(data) != digest:
                self._found("digest-mismatch", digest.hex())
                if self.repair:
                    self._drop_record(digest)
                    self._unlink(digest)

    def check_lru(self) -> None:
        """Exactly one lru record per chunk, with the chunk's access time."""
        with self.storage.begin() as txn:
            expected = {lru_key(CHUNK_RECORD.unpack(raw)[1], d)
                        for d, raw in txn.cursor(db=self.storage.chunks)}
            actual = {k for k, _ in txn.cursor(db=self.storage.lru)}
        if expected == actual:
            return
        self._found("lru-mismatch", f"{len(actual - expected)} extra, {len(expected - actual)} missing")
        if self.repair:
            with self.storage.begin(write=True) as txn:
                txn.drop(self.storage.lru, delete=False)
                for key in expected:
                    txn.put(key, b"", db=self.storage.lru)

    def check_total(self) -> None:
        """meta.total is the sum of the records (and, once repaired, of the files)."""
        with self.storage.begin() as txn:
            recorded = self.storage.get_u64(txn, b"total")
            summed = sum(CHUNK_RECORD.unpack(raw)[0] for _, raw in txn.cursor(db=self.storage.chunks))
        if recorded != summed:
            self._found("total-drift", f"meta.total is {recorded}, records sum to {summed}")
            if self.repair:
                with self.storage.begin(write=True) as txn:
                    self.storage.put_u64(txn, b"total", summed)
                recorded = summed
        self.report.total_recorded = recorded

    def check_pins(self) -> None:
        """pinned_chunks counts the slots of pinned manifests; meta.pinned sums the cached ones."""
        with self.storage.begin() as txn:
            expected: dict[bytes, int] = {}
            for key, _ in txn.cursor(db=self.storage.pins):
                for digest in manifest_digests(txn.get(key, db=self.storage.manifests)):
                    expected[digest] = expected.get(digest, 0) + 1
            actual = {digest: PIN_COUNT.unpack(raw)[0] for digest, raw in txn.cursor(db=self.storage.pinned_chunks)}
            recorded = self.storage.get_u64(txn, b"pinned")
            summed = 0
            for digest in expected:
                raw = txn.get(digest, db=self.storage.chunks)
                if raw is not None:
                    summed += CHUNK_RECORD.unpack(raw)[0]
        if actual != expected:
            self._found("pin-counts", f"{len(set(actual) ^ set(expected))} chunks counted wrongly as pinned")
            if self.repair:
                with self.storage.begin(write=True) as txn:
                    txn.drop(self.storage.pinned_chunks, delete=False)
                    for digest, count in expected.items():
                        txn.put(digest, PIN_COUNT.pack(count), db=self.storage.pinned_chunks)
        if recorded != summed:
            self._found("pinned-drift", f"meta.pinned is {recorded}, pinned chunks sum to {summed}")
            if self.repair:
                with self.storage.begin(write=True) as txn:
                    self.storage.put_u64(txn, b"pinned", summed)

    # -- helpers -------------------------------------------------------------------------------

    def _path(self, digest: bytes) -> str:
        h = digest.hex()
        return os.path.join(self.storage.chunks_dir, h[:2], h[2:4], h)

    def _unlink(self, digest: bytes) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(digest))
        entry = self._files.pop(digest, None)
        if entry:
            self.report.total_on_disk -= entry[0]

    def _drop_record(self, digest: bytes) -> None:
        with self.storage.begin(write=True) as txn:
            forget_chunk(self.storage, txn, digest)


def _scandir(path):
    try:
        with os.scandir(path) as it:
            return [e for e in it]
    except (FileNotFoundError, NotADirectoryError):
        return []


def recover(storage: Storage) -> Report:
    """Startup recovery after an unclean shutdown: repair every invariant except digests
    (every read verifies those anyway)."""
    started = time.monotonic()
    report = CacheChecker(storage, repair=True).run(digests=False)
    log.info("startup recovery: %d problems repaired in %.2fs; %d chunks, %d bytes",
             len(report.findings), time.monotonic() - started, report.files_seen, report.total_recorded)
    return report
