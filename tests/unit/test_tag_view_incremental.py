"""The tag view kept incrementally equals the tag view built from scratch, after any changes.

No audio here: the catalog's records (what origins hold, what their tags say) are written
directly, so thousands of random changes run in seconds. The view under test follows each
transaction's changes (`placed` + `settle`), as the scanner drives it; after every step its tree
(entries, children, directory mtimes, covers) must be exactly the tree a fresh view builds from
the same records. Real audio and real mounts are tests/test_tag_view.py's business.
"""
import random

import pytest

from musicfs.catalog.index import RecentChanges
from musicfs.catalog.layout import Layout
from musicfs.catalog.records import encode_record, encode_tags, origin_key
from musicfs.catalog.tags import TAG_VERSION
from musicfs.catalog.views import TagView
from musicfs.origins.base import KIND_FILE, OriginEntry
from musicfs.database import Storage

ORIGINS = ["first", "second"]


@pytest.fixture(autouse=True)
def small_rebuild_batches(monkeypatch):
    """Rebuilds here run in many small transactions, as a large library's do."""
    from musicfs.catalog import views
    monkeypatch.setattr(views, "REBUILD_BATCH", 7)


class Library:
    """Origin records and tags written straight into a catalog, one transaction per step."""

    def __init__(self, storage: Storage, view: TagView):
        self.storage, self.view = storage, view
        self.files: dict[tuple[str, bytes], tuple] = {}
        self.clock = 1_600_000_000_000_000_000

    def put(self, txn, origin: str, relpath: bytes, tags: dict | None, audio: bool = True, size: int = 1000):
        self.clock += 1_000_000_000
        entry = OriginEntry(relpath.rpartition(b"/")[2], KIND_FILE, size, self.clock, token=b"t")
        txn.put(origin_key(origin, relpath), encode_record(KIND_FILE, size, self.clock, 1, b"t"),
                db=self.storage.origin_files)
        if audio:
            txn.put(origin_key(origin, relpath), encode_tags(TAG_VERSION, entry, tags), db=self.storage.tags)
        self.files[(origin, relpath)] = (tags, audio, size)
        self.view.placed(txn, relpath)

    def remove(self, txn, origin: str, relpath: bytes):
        txn.delete(origin_key(origin, relpath), db=self.storage.origin_files)
        txn.delete(origin_key(origin, relpath), db=self.storage.tags)
        del self.files[(origin, relpath)]
        self.view.placed(txn, relpath)


def snapshot(storage: Storage) -> tuple[dict, set]:
    with storage.begin() as txn:
        entries = {bytes(k): bytes(v) for k, v in txn.cursor(db=storage.entries)}
        children = {bytes(k) for k, _ in txn.cursor(db=storage.children)}
    return entries, children


def fresh_view_of(storage: Storage, tmp_path, layout: Layout) -> tuple[dict, set]:
    """The tree a new view builds from the same records in a new catalog."""
    other = Storage(tmp_path / f"fresh-{random.random()}")
    try:
        with storage.begin() as source, other.begin(write=True) as txn:
            for db in ("origin_files", "tags"):
                for key, value in source.cursor(db=getattr(storage, db)):
                    txn.put(key, value, db=getattr(other, db))
        view = TagView(layout)
        view.attach(other, ORIGINS, RecentChanges())
        view.rebuild()
        return snapshot(other)
    finally:
        other.close()


def random_tags(rng: random.Random) -> dict | None:
    if rng.random() < 0.05:
        return None                                    # not audio to mutagen
    tags = {"title": rng.choice(["Intro", "Song", "Outro", "Theme"])}
    if rng.random() < 0.85:
        tags["album"] = rng.choice(["Blue", "Red", "Hits", "Live"])
    if rng.random() < 0.7:
        tags["artist"] = rng.choice(["Ann", "Bob", "Cy"])
    if rng.random() < 0.3:
        tags["albumartist"] = rng.choice(["Ann", "Various Artists", "The Band"])
    if rng.random() < 0.5:
        tags["date"] = rng.choice(["2004", "2004-03-01", "2005", "1999"])
    if rng.random() < 0.6:
        tags["track"] = str(rng.randint(1, 4))
    if rng.random() < 0.3:
        tags["disc"] = rng.choice(["1", "2/2", "1/1"])
    if rng.random() < 0.1:
        tags["compilation"] = "1"
    if rng.random() < 0.1:
        tags["mb_albumid"] = rng.choice(["id-1", "id-2"])
    if rng.random() < 0.3:
        tags["picture"] = {"offset": rng.randint(0, 100), "length": rng.randint(1, 200),
                           "mime": rng.choice(["image/jpeg", "image/png"])}
    tags["format"] = "flac"
    return tags


FOLDERS = [b"a", b"a/CD1", b"a/CD2", b"b", b"", b"c/d"]
SIDECARS = [b"cover.jpg", b"folder.png", b"notes.txt", b"rip.cue", b"back.jpg"]


@pytest.mark.parametrize("seed", range(6))
def test_incremental_view_equals_a_fresh_build_after_random_changes(tmp_path, seed):
    rng = random.Random(seed)
    layout = Layout.parse()
    storage = Storage(tmp_path / "cache")
    view = TagView(layout)
    view.attach(storage, ORIGINS, RecentChanges())
    library = Library(storage, view)
    try:
        for step in range(60):
            with storage.begin(write=True) as txn:
                for _ in range(rng.randint(1, 6)):
                    roll = rng.random()
                    origin = rng.choice(ORIGINS) if rng.random() < 0.3 else ORIGINS[0]
                    folder = rng.choice(FOLDERS)
                    if roll < 0.45 or not library.files:
                        name = f"{rng.randint(1, 12):02d}.{rng.choice(['flac', 'mp3'])}".encode()
                        relpath = (folder + b"/" if folder else b"") + name
                        library.put(txn, origin, relpath, random_tags(rng), size=rng.choice([1000, 2000]))
                    elif roll < 0.6:
                        relpath = (folder + b"/" if folder else b"") + rng.choice(SIDECARS)
                        library.put(txn, origin, relpath, None, audio=False)
                    elif roll < 0.8:                    # a retag of a file there is
                        (origin, relpath), (tags, audio, size) = rng.choice(sorted(library.files.items()))
                        library.put(txn, origin, relpath, random_tags(rng) if audio else None, audio, size)
                    else:
                        origin, relpath = rng.choice(sorted(library.files))
                        library.remove(txn, origin, relpath)
                view.settle(txn)
            assert snapshot(storage) == fresh_view_of(storage, tmp_path, layout), f"step {step}"
    finally:
        storage.close()


def test_rebuild_replaces_another_layouts_tree(tmp_path):
    """A view rebuilt over a tree made by another template keeps nothing of it."""
    storage = Storage(tmp_path / "cache")
    try:
        genre_first = Layout.parse(template="$genre/$album/$title")
        view = TagView(genre_first)
        view.attach(storage, ORIGINS, RecentChanges())
        library = Library(storage, view)
        with storage.begin(write=True) as txn:
            library.put(txn, "first", b"x/1.flac", {"album": "A", "title": "T", "genre": "Jazz", "artist": "P"})
            library.put(txn, "first", b"x/cover.jpg", None, audio=False)
            view.settle(txn)
        assert {p for p in snapshot(storage)[0]} == {b"/", b"/Jazz", b"/Jazz/A", b"/Jazz/A/T.flac", b"/Jazz/A/cover.jpg"}
        default = Layout.parse()
        view = TagView(default)
        view.attach(storage, ORIGINS, RecentChanges())
        view.rebuild()
        assert snapshot(storage) == fresh_view_of(storage, tmp_path, default)
        assert {p for p in snapshot(storage)[0]} == {b"/", b"/P", b"/P/A", b"/P/A/T.flac", b"/P/A/cover.jpg"}
    finally:
        storage.close()


def test_a_file_where_another_template_makes_a_folder_stays_a_file(tmp_path):
    """A singleton's path is the folder of an album track (a custom template can make both):
    the file keeps its path, the track is not shown, and taking the track away takes nothing else."""
    storage = Storage(tmp_path / "cache")
    try:
        layout = Layout.parse(template="$genre/$albumartist/$album/$track $title")
        view = TagView(layout)
        view.attach(storage, ORIGINS, RecentChanges())
        library = Library(storage, view)
        with storage.begin(write=True) as txn:
            library.put(txn, "first", b"s.flac", {"artist": "X", "title": "Live"})
            library.put(txn, "first", b"t.flac", {"artist": "X", "genre": "Non-Album", "album": "Live.flac",
                                                  "title": "T"})
            view.settle(txn)
        assert snapshot(storage)[0][b"/Non-Album/X/Live.flac"][0] == KIND_FILE
        assert snapshot(storage) == fresh_view_of(storage, tmp_path, layout)
        with storage.begin(write=True) as txn:
            library.remove(txn, "first", b"t.flac")
            view.settle(txn)
        assert snapshot(storage)[0][b"/Non-Album/X/Live.flac"][0] == KIND_FILE
        assert snapshot(storage) == fresh_view_of(storage, tmp_path, layout)
    finally:
        storage.close()
