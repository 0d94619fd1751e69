"""The tag view at library scale, on a synthetic catalog: no audio files, only the records a scan
of them would have left (what the origin holds, what each file's tags say).

    python -m bench.catalog [TRACKS ...]        (default: 100000 1000000)

For each size it measures, in a fresh cache directory:

* `build`: the whole tag view made from the records (what a template change costs), and the
  peak RSS of this process meanwhile;
* `retag` / `add` / `remove`: one file's change applied incrementally, as a scan's transaction
  applies it (median and worst of 20 of each);
* `mount`: `musicfs MOUNTPOINT` (daemonized, returns once mounted) until `ls` of the root
  answers, over the stored catalog, and the daemon's RSS right after;
* `find`: `find` of the whole mount, and the daemon's RSS after it.

The origin is an empty folder: its background rescan finds nothing and, since the catalog holds
files of it, sweeps nothing (an origin whose root lists empty is not swept). Called by
`make bench`; prints one table.
"""
from __future__ import annotations

import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from musicfs.catalog.index import RecentChanges
from musicfs.catalog.layout import Layout
from musicfs.catalog.records import encode_record, encode_tags, origin_key
from musicfs.catalog.tags import TAG_VERSION
from musicfs.catalog.views import TagView
from musicfs.config import load as load_config
from musicfs.origins.base import KIND_DIR, KIND_FILE, OriginEntry
from musicfs.daemon.service import Service
from testkit.configs import toml_config

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench"
MUSICFS = [sys.executable, "-m", "musicfs.cli"]
# A collection of a tenth of the tracks (years cycle over 60): 10k of 100k.
SIXTIES = '[[collections]]\nname = "Sixties"\nquery = "year:1960..1965"\n'
TRACKS_PER_ALBUM = 12
ALBUMS_PER_ARTIST = 5
WRITE_BATCH = 20_000


def rss_mb(pid: int | None = None, field: str = "VmRSS") -> float:
    """A process's resident memory; RssAnon leaves out the pages of files it maps (the LMDB
    catalog's, which the kernel reclaims like page cache)."""
    if pid is None and field == "VmHWM":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def track(n: int) -> tuple[bytes, dict]:
    album, number = divmod(n, TRACKS_PER_ALBUM)
    artist = album // ALBUMS_PER_ARTIST
    relpath = f"Artist {artist:06d}/Album {album:07d}/{number + 1:02d} Track.flac".encode()
    tags = {"artist": f"Artist {artist:06d}", "album": f"Album {album:07d}", "title": f"Track {number + 1}",
            "track": str(number + 1), "date": str(1960 + album % 60), "genre": "Rock", "format": "flac"}
    return relpath, tags


def write_records(storage, count: int, clock: int) -> None:
    """What a scan of `count` tracks leaves: their origin records (with folders) and tags."""
    folders = set()
    for start in range(0, count, WRITE_BATCH):
        with storage.begin(write=True) as txn:
            for n in range(start, min(start + WRITE_BATCH, count)):
                relpath, tags = track(n)
                entry = OriginEntry(relpath.rpartition(b"/")[2], KIND_FILE, 16, clock, token=b"")
                txn.put(origin_key("nas", relpath), encode_record(KIND_FILE, 16, clock, 1, b""),
                        db=storage.origin_files)
                txn.put(origin_key("nas", relpath), encode_tags(TAG_VERSION, entry, tags), db=storage.tags)
                folder = relpath.rpartition(b"/")[0]
                while folder and folder not in folders:
                    folders.add(folder)
                    txn.put(origin_key("nas", folder), encode_record(KIND_DIR, 0, clock, 1, b""),
                            db=storage.origin_files)
                    folder = folder.rpartition(b"/")[0]
        folders.clear() if len(folders) > 100_000 else None


def one_change(storage, view, change) -> float:
    started = time.perf_counter()
    with storage.begin(write=True) as txn:
        change(txn)
        view.settle(txn)
    return time.perf_counter() - started


def fresh(name: str) -> tuple[Path, Path, Path, Path]:
    """(base, origin, mountpoint, cache) of a new work directory (the origin stays empty)."""
    base = WORK / name
    subprocess.run(["rm", "-rf", str(base)], check=True)
    origin, mnt, cache = base / "origin", base / "mnt", base / "cache"
    for d in (origin, mnt):
        d.mkdir(parents=True)
    return base, origin, mnt, cache


def measure(count: int) -> dict:
    base, origin, mnt, cache = fresh(f"tagview-{count}")
    config_path = base / "config.toml"
    config_path.write_text(toml_config([("nas", origin)], cache, base / "musicfs.log", layout={"mode": "tags"},
                                       search={"limit": 1_000_000}, level="info") + SIXTIES)
    config = load_config(config_path)
    service = Service.open(config)       # makes the cache and records the origins and layout
    service.stop()

    result = {"tracks": count}
    service = Service.open(config)
    storage = service.storage
    clock = time.time_ns()
    write_records(storage, count, clock)
    view = TagView(Layout.parse())
    view.attach(storage, ["nas"], RecentChanges())
    started = time.perf_counter()
    view.rebuild()
    result["build_s"] = time.perf_counter() - started
    result["build_peak_rss_MB"] = rss_mb(field="VmHWM")
    result["build_anon_MB"] = rss_mb(field="RssAnon")

    rng = random.Random(1)
    times = {"retag": [], "add": [], "remove": []}
    for i in range(20):
        relpath, tags = track(rng.randrange(count))
        key = origin_key("nas", relpath)
        new_album = dict(tags, album=f"Retagged {i}")
        entry = OriginEntry(b"", KIND_FILE, 17, clock + i + 1, token=b"")

        def retag(txn, key=key, relpath=relpath, tags=new_album, entry=entry):
            txn.put(key, encode_record(KIND_FILE, 17, entry.mtime_ns, 1, b""), db=storage.origin_files)
            txn.put(key, encode_tags(TAG_VERSION, entry, tags), db=storage.tags)
            view.placed(txn, relpath)
        times["retag"].append(one_change(storage, view, retag))
        added = relpath.replace(b"Track.flac", f"Bonus {i}.flac".encode())

        def add(txn, added=added, tags=dict(tags, title=f"Bonus {i}"), entry=entry):
            key = origin_key("nas", added)
            txn.put(key, encode_record(KIND_FILE, 17, entry.mtime_ns, 1, b""), db=storage.origin_files)
            txn.put(key, encode_tags(TAG_VERSION, entry, tags), db=storage.tags)
            view.placed(txn, added)
        times["add"].append(one_change(storage, view, add))

        def remove(txn, added=added):
            txn.delete(origin_key("nas", added), db=storage.origin_files)
            txn.delete(origin_key("nas", added), db=storage.tags)
            view.placed(txn, added)
        times["remove"].append(one_change(storage, view, remove))
    for name, values in times.items():
        result[f"{name}_ms"] = (statistics.median(values) * 1000, max(values) * 1000)
    service.stop()

    started = time.perf_counter()
    subprocess.run([*MUSICFS, str(mnt), "-c", str(config_path)], check=True, cwd=ROOT)
    os.listdir(mnt)
    result["mount_s"] = time.perf_counter() - started
    status = json.loads(subprocess.run([*MUSICFS, "status", "--json", str(mnt)], capture_output=True,
                                       text=True, cwd=ROOT).stdout)
    pid = status["pid"]
    result["mount_rss_MB"] = rss_mb(pid)
    result["mount_anon_MB"] = rss_mb(pid, "RssAnon")
    # Searches first, each the first time (nothing kept); they keep their listings (up to
    # [search] limit tracks each, a million here so that a collection holds a tenth of the
    # library). Then a new mount for `find`, which lists the collections too.
    result.update(searches(mnt, count))
    result["search_anon_MB"] = rss_mb(pid, "RssAnon")
    subprocess.run([*MUSICFS, "unmount", str(mnt)], check=True, cwd=ROOT)
    subprocess.run([*MUSICFS, str(mnt), "-c", str(config_path)], check=True, cwd=ROOT)
    pid = json.loads(subprocess.run([*MUSICFS, "status", "--json", str(mnt)], capture_output=True,
                                    text=True, cwd=ROOT).stdout)["pid"]
    started = time.perf_counter()
    shown = subprocess.run(["find", str(mnt)], capture_output=True, check=True).stdout.count(b"\n")
    result["find_s"] = time.perf_counter() - started
    result["find_entries"] = shown
    result["find_rss_MB"] = rss_mb(pid)
    result["find_anon_MB"] = rss_mb(pid, "RssAnon")
    subprocess.run([*MUSICFS, "unmount", str(mnt)], check=True, cwd=ROOT)
    subprocess.run(["rm", "-rf", str(base)], check=True)
    return result


def timed_once(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def searches(mnt: Path, count: int) -> dict:
    """Search and collections over the mounted catalog (each the first time: nothing kept)."""
    artist = f"Artist {count // TRACKS_PER_ALBUM // ALBUMS_PER_ARTIST // 2:06d}"
    album = f"Album {count // TRACKS_PER_ALBUM // 3:07d}"
    playlist = mnt / ".collections" / "Sixties.m3u8"
    return {
        "search_field_s": timed_once(lambda: os.listdir(mnt / ".search" / f'artist:"{artist}"')),
        "search_bare_s": timed_once(lambda: os.listdir(mnt / ".search" / f'"{album}"')),
        "search_cli_s": timed_once(lambda: subprocess.run([*MUSICFS, "search", str(mnt), f'artist:"{artist}" year:1960..'],
                                                          capture_output=True, cwd=ROOT)),
        "m3u8_s": timed_once(lambda: playlist.read_bytes()),
        "m3u8_tracks": playlist.read_bytes().count(b"#EXTINF"),
    }


def tree_with_and_without_collections(count: int = 100_000) -> dict:
    """`ls -lR` and `find` of a mount with collections configured and without (the same catalog,
    the same run): the smart folders must cost the rest of the tree nothing."""
    base, origin, mnt, cache = fresh(f"tagview-ab-{count}")
    plain = base / "plain.toml"
    plain.write_text(toml_config([("nas", origin)], cache, base / "musicfs.log", layout={"mode": "tags"}, level="info"))
    with_collections = base / "collections.toml"
    with_collections.write_text(plain.read_text() + SIXTIES)
    service = Service.open(load_config(plain))
    write_records(service.storage, count, time.time_ns())
    view = TagView(Layout.parse())
    view.attach(service.storage, ["nas"], RecentChanges())
    view.rebuild()
    service.stop()
    result = {}
    for name, config in (("plain", plain), ("collections", with_collections)) * 2:
        subprocess.run([*MUSICFS, str(mnt), "-c", str(config)], check=True, cwd=ROOT)
        lsr = timed_once(lambda: subprocess.run(["ls", "-lR", str(mnt)], capture_output=True, check=True))
        find = timed_once(lambda: subprocess.run(["find", str(mnt)], capture_output=True, check=True))
        subprocess.run([*MUSICFS, "unmount", str(mnt)], check=True, cwd=ROOT)
        best = result.get(name, (lsr, find))
        result[name] = (min(best[0], lsr), min(best[1], find))
    subprocess.run(["rm", "-rf", str(base)], check=True)
    return result


def main(sizes: list[int]) -> list[dict]:
    rows = []
    for count in sizes:
        # Each size in its own process: the peak RSS of a build is per process.
        out = subprocess.run([sys.executable, "-c", f"import json, bench.catalog as c; "
                              f"print(json.dumps(c.measure({count})))"], cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr)
            raise SystemExit(f"bench.catalog: the {count}-track run failed")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    report(rows)
    out = subprocess.run([sys.executable, "-c", "import json, bench.catalog as c; "
                          "print(json.dumps(c.tree_with_and_without_collections()))"],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode == 0:
        ab = json.loads(out.stdout.strip().splitlines()[-1])
        print("\nthe rest of the tree with and without collections (100,000 tracks, best of 2, same run):")
        for name, (lsr, find) in ab.items():
            print(f"  {name:<12} ls -lR {lsr:6.2f} s   find {find:6.2f} s")
    else:
        print(out.stderr)
    return rows


def report(rows: list[dict]) -> None:
    print("\ntag view on a synthetic catalog (no audio): one-file changes are median / worst of 20")
    print("(RSS: resident / of it anonymous, i.e. without the mapped catalog's pages; build: peak / anonymous at its end)")
    print(f"{'tracks':>9} {'build s':>8} {'build RSS':>12} {'retag ms':>14} {'add ms':>14} {'remove ms':>14} "
          f"{'mount s':>8} {'mount RSS':>12} {'find s':>7} {'find RSS':>12}")
    for r in rows:
        cell = "{:6.1f} / {:5.1f}".format
        mb = "{:5.0f} /{:4.0f}MB".format
        print(f"{r['tracks']:>9} {r['build_s']:>8.1f} {mb(r['build_peak_rss_MB'], r['build_anon_MB']):>12} "
              f"{cell(*r['retag_ms']):>14} {cell(*r['add_ms']):>14} {cell(*r['remove_ms']):>14} {r['mount_s']:>8.2f} "
              f"{mb(r['mount_rss_MB'], r['mount_anon_MB']):>12} {r['find_s']:>7.1f} "
              f"{mb(r['find_rss_MB'], r['find_anon_MB']):>12}")
    print("\nsearch, first time (nothing kept): ls .search/<field query>/, ls .search/<bare word>/, "
          "musicfs search end to end, read a collection's .m3u8")
    for r in rows:
        print(f"{r['tracks']:>9}  field {r['search_field_s']:.3f} s  bare {r['search_bare_s']:.3f} s  "
              f"CLI {r['search_cli_s']:.3f} s  .m3u8 of {r['m3u8_tracks']} tracks {r['m3u8_s']:.3f} s  "
              f"(anonymous RSS after them {r['search_anon_MB']:.0f} MB)")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100_000, 1_000_000])
