"""Catalog merge, priority, rescans and odd names, without FUSE."""
import os
import time

from musicfs.catalog import Catalog
from musicfs.catalog.scanner import Scanner
from musicfs.cas import ChunkStore
from musicfs.origins import KIND_DIR, KIND_FILE, LocalOrigin
from musicfs.database import Storage

from tests.support.origins import FaultyOrigin


def build(tmp_path, origins, stall_timeout=5.0):
    storage = Storage(tmp_path / "cache")
    store = ChunkStore(storage, max_size=1 << 30)
    scanner = Scanner(storage, store, origins, stall_timeout=stall_timeout)
    scanner.reconcile_origins()
    return storage, store, Catalog(storage), scanner


def write(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_merge_of_two_fixture_origins(tmp_path, origins_copy):
    a, b = origins_copy
    storage, _, catalog, scanner = build(tmp_path, [LocalOrigin("a", a), LocalOrigin("b", b)])
    results = scanner.scan()
    assert all(r.complete for r in results)
    assert sorted(catalog.list(b"/")) == sorted(
        n.encode() for n in {"Test Pattern", "Ångström Ensemble", "Dots..and..Slashes", "Various", "loose"})
    names = catalog.list("/Test Pattern/Signals".encode())
    assert b"01 Sine 440.flac" in names and b"01 Sine 440 (copy).flac" in names
    entry = catalog.lookup("/Ångström Ensemble/Ünïcode Album/02 日本語.m4a".encode())
    assert entry.kind == KIND_FILE and entry.size == 9533 and entry.sources == (
        ("a", "Ångström Ensemble/Ünïcode Album/02 日本語.m4a".encode()),)
    assert catalog.counts() == (9, 9)  # 5 + 4 files; directories merged by path
    storage.close()


def test_first_origin_wins_a_duplicate_path_and_others_are_replicas(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "Artist/song.flac", b"from a")
    write(b / "Artist/song.flac", b"from b, longer")
    storage, _, catalog, scanner = build(tmp_path, [LocalOrigin("a", a), LocalOrigin("b", b)])
    scanner.scan()
    entry = catalog.lookup(b"/Artist/song.flac")
    assert entry.size == 6
    assert entry.sources == (("a", b"Artist/song.flac"), ("b", b"Artist/song.flac"))
    storage.close()


def test_rescan_applies_additions_removals_and_changes(tmp_path):
    a = tmp_path / "a"
    write(a / "x/keep.flac", b"1")
    write(a / "x/remove.flac", b"2")
    write(a / "x/change.flac", b"3")
    storage, store, catalog, scanner = build(tmp_path, [LocalOrigin("a", a)])
    scanner.scan()
    key = b"a\0x/change.flac"
    st = os.stat(a / "x/change.flac")
    digest = store.put(b"3", manifest=(key, 1, st.st_mtime_ns, 0))
    assert store.manifest(key, 1, st.st_mtime_ns) == [digest]

    (a / "x/remove.flac").unlink()
    write(a / "x/added.flac", b"new")
    write(a / "x/change.flac", b"33")
    write(a / "y/deeper/new.flac", b"n")
    result, = scanner.scan()
    assert result.complete and result.removed == 1
    assert sorted(catalog.list(b"/x")) == [b"added.flac", b"change.flac", b"keep.flac"]
    assert catalog.lookup(b"/x/change.flac").size == 2
    assert catalog.lookup(b"/y/deeper/new.flac").size == 1
    # the change dropped the old manifest: its cached chunks no longer describe the file
    with storage.begin() as txn:
        assert txn.get(key, db=storage.manifests) is None
    storage.close()


def test_failed_or_hung_origin_keeps_its_files_listed(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "A/1.flac")
    write(b / "B/2.flac")
    fb = FaultyOrigin(LocalOrigin("b", b))
    storage, _, catalog, scanner = build(tmp_path, [LocalOrigin("a", a), fb], stall_timeout=0.5)
    scanner.scan()
    assert catalog.lookup(b"/B/2.flac") is not None

    fb.fail()
    results = {r.origin: r for r in scanner.scan()}
    assert results["a"].complete and not results["b"].complete
    assert catalog.lookup(b"/B/2.flac") is not None

    fb.hang()
    started = time.monotonic()
    results = {r.origin: r for r in scanner.scan()}
    assert time.monotonic() - started < 3.0, "a hung origin blocked the scan"
    assert results["a"].complete and not results["b"].complete
    assert catalog.lookup(b"/B/2.flac") is not None
    fb.release()
    storage.close()


def test_non_utf8_names_symlinks_and_special_files(tmp_path):
    a = tmp_path / "a"
    outside = tmp_path / "outside.flac"
    write(outside, b"secret")
    raw_name = b"caf\xe9.flac"  # Latin-1, not UTF-8
    os.makedirs(a / "dir")
    with open(os.path.join(os.fsencode(a / "dir"), raw_name), "wb") as f:
        f.write(b"latin1")
    write(a / "dir/real.flac", b"real")
    os.symlink(a / "dir/real.flac", a / "dir/inside-link.flac")
    os.symlink(outside, a / "dir/outside-link.flac")
    os.symlink(a, a / "dir/loop")           # a directory symlink back to the root
    os.mkfifo(a / "dir/fifo")
    storage, _, catalog, scanner = build(tmp_path, [LocalOrigin("a", a)])
    scanner.scan()
    names = set(catalog.list(b"/dir"))
    assert raw_name in names and b"real.flac" in names and b"inside-link.flac" in names
    assert b"outside-link.flac" not in names and b"fifo" not in names
    assert catalog.lookup(b"/dir/" + raw_name).size == 6
    assert catalog.lookup(b"/dir/inside-link.flac").size == 4
    # the symlink back to the root is listed and walked once; inside it, "dir" is the directory
    # already walked, so the walk stops there instead of looping
    assert catalog.lookup(b"/dir/loop").kind == KIND_DIR
    assert catalog.lookup(b"/dir/loop/dir") is None
    storage.close()


def test_changing_origins_rebuilds_the_merged_view(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "same.flac", b"aaaa")
    write(b / "same.flac", b"bb")
    storage, store, catalog, scanner = build(tmp_path, [LocalOrigin("a", a), LocalOrigin("b", b)])
    scanner.scan()
    assert catalog.lookup(b"/same.flac").size == 4
    scanner = Scanner(storage, store, [LocalOrigin("b", b)], stall_timeout=5)
    assert scanner.reconcile_origins()
    assert catalog.lookup(b"/same.flac").sources == (("b", b"same.flac"),)
    assert catalog.lookup(b"/same.flac").size == 2
    storage.close()


def test_same_origin_name_with_another_path_drops_the_old_records(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "old.flac", b"old")
    write(b / "new.flac", b"new")
    storage, store, catalog, scanner = build(tmp_path, [LocalOrigin("lib", a)])
    scanner.scan()
    assert catalog.lookup(b"/old.flac") is not None
    scanner = Scanner(storage, store, [LocalOrigin("lib", b)], stall_timeout=5)
    assert scanner.reconcile_origins()
    assert catalog.lookup(b"/old.flac") is None
    assert catalog.last_scan("lib") == 0     # never scanned at its new path: the first mount scans it
    scanner.scan()
    assert catalog.list(b"/") == [b"new.flac"]
    storage.close()


class _ChangesAfterListing:
    """An origin whose file changes (a retag: a new file renamed over it) right after a scan
    listed its folder, and a read notices and refreshes the record before the scan stores
    what it listed: the order in which the two happen for real, made certain."""

    def __init__(self, origin, relpath: bytes, new: bytes):
        self.origin, self.relpath, self.new = origin, relpath, new
        self.scanner = None
        self.done = False

    def __getattr__(self, name):
        return getattr(self.origin, name)

    def list_dir(self, relpath):
        entries = self.origin.list_dir(relpath)
        if not self.done and relpath == self.relpath.rpartition(b"/")[0]:
            self.done = True
            path = os.fsdecode(os.path.join(self.origin.root, self.relpath))
            if self.new is None:   # deleted instead
                os.unlink(path)
                self.scanner.refresh_file(self.origin.name, self.relpath, None)
                return entries
            with open(path + ".tmp", "wb") as f:
                f.write(self.new)
            os.replace(path + ".tmp", path)
            self.scanner.refresh_file(self.origin.name, self.relpath, self.origin.stat(self.relpath))
        return entries


def test_a_scan_never_puts_back_what_a_read_refreshed_after_the_listing(tmp_path):
    a = tmp_path / "a"
    write(a / "x/song.flac", b"old version")
    write(a / "x/other.flac", b"other")
    origin = _ChangesAfterListing(LocalOrigin("a", a), b"x/song.flac", b"the new version, longer")
    storage, _, catalog, scanner = build(tmp_path, [origin])
    origin.done = True
    scanner.scan()                      # the first scan, undisturbed
    origin.done, origin.scanner = False, scanner
    results = scanner.scan()            # lists x/, the file changes, a read refreshes it, then the batch lands
    assert origin.done and results[0].complete
    assert catalog.lookup(b"/x/song.flac").size == len(b"the new version, longer")
    assert catalog.lookup(b"/x/other.flac").size == len(b"other")
    storage.close()


def test_a_scan_never_puts_back_a_file_a_read_found_gone_after_the_listing(tmp_path):
    a = tmp_path / "a"
    write(a / "x/song.flac", b"old version")
    write(a / "x/other.flac", b"other")
    origin = _ChangesAfterListing(LocalOrigin("a", a), b"x/song.flac", None)
    storage, _, catalog, scanner = build(tmp_path, [origin])
    origin.done = True
    scanner.scan()
    origin.done, origin.scanner = False, scanner
    results = scanner.scan()
    assert origin.done and results[0].complete
    assert catalog.lookup(b"/x/song.flac") is None
    assert catalog.lookup(b"/x/other.flac") is not None
    storage.close()


def test_next_files_are_the_files_listed_after_one_in_its_folder(tmp_path):
    root = tmp_path / "o"
    for name in ("a.flac", "b.flac", "b.flac.d/x.flac", "c.flac", "d.flac", "sub/one.flac", "sub/two.flac"):
        write(root / name)
    storage, _, catalog, scanner = build(tmp_path, [LocalOrigin("o", root)])
    assert all(r.complete for r in scanner.scan())
    assert catalog.next_files(b"/a.flac", 2) == [b"/b.flac", b"/c.flac"]   # the folder b.flac.d skipped
    assert catalog.next_files(b"/b.flac", 9) == [b"/c.flac", b"/d.flac"]   # not the folder's own files
    assert catalog.next_files(b"/d.flac", 3) == []
    assert catalog.next_files(b"/sub/one.flac", 3) == [b"/sub/two.flac"]
    storage.close()


def test_every_opened_version_is_remembered_in_bounded_memory():
    """Whether an open may keep the kernel's pages holds for every file of a large library (a
    bounded LRU of 16k paths made every warm open of a bigger one drop them), and a new version
    never passes for the one before."""
    from musicfs.catalog.index import OpenedVersions
    opened = OpenedVersions()
    paths = [f"/Artist {n // 100}/Album {n // 10}/{n:06d} Track.flac".encode() for n in range(100_000)]
    assert not any(opened.same_as_before(path, 7) for path in paths)            # first opens
    assert all(opened.same_as_before(path, 7) for path in paths)                # all still known
    assert not opened.same_as_before(paths[123], 8)                             # a new version
    assert opened.same_as_before(paths[123], 8) and not opened.same_as_before(paths[123], 7)
    assert len(opened) == 100_000 and len(opened._keys) * 16 <= 4 << 20        # 16 bytes a slot, 4 MB


def test_a_not_audio_record_of_tag_reader_2_is_read_again_once():
    """Tag reader 2 recorded files as not audio when their origin failed mid-read: such records
    are read again once; a not-audio record written since, and real tags, stay current."""
    from musicfs.catalog.records import TAG_RECORD, encode_tags, tags_are_current
    from musicfs.catalog.tags import TAG_VERSION
    from musicfs.origins import KIND_FILE, OriginEntry
    entry = OriginEntry(b"a.flac", KIND_FILE, 10, 5, token=b"etag")
    before_the_fix = TAG_RECORD.pack(TAG_VERSION, 10, 5, 4) + b"etag" + b"null"
    assert not tags_are_current(before_the_fix, TAG_VERSION, entry)
    assert tags_are_current(encode_tags(TAG_VERSION, entry, None), TAG_VERSION, entry)
    assert tags_are_current(encode_tags(TAG_VERSION, entry, {"title": "x"}), TAG_VERSION, entry)
    assert not tags_are_current(encode_tags(TAG_VERSION - 1, entry, None), TAG_VERSION, entry)
