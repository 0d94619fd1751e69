"""`make bench`: musicfs against the tools a user would pick instead, same data, same run.

Peers: direct (page cache, the physical limit), bindfs (a C FUSE passthrough), a minimal fusepy
passthrough (bench/passthrough.py: the ceiling of our stack), rclone mount --vfs-cache-mode
full, and musicfs (its paths layout, comparable with the others). A peer that is not installed
and cannot be installed is skipped with a line. Every timing is repeated; the table shows best
and median. Nothing here asserts anything.

The tag view is measured beside it ("musicfs-tags"): the small library's header scan, find and
ls -lR and the mount times in tags mode, its first scan (reading every file's tags) against a
plain single-threaded mutagen.File() loop over the same files (page cache dropped before each),
and how many tags an unchanged rescan reads.

Remote origins (bench/remote.py): musicfs's sftp and s3 origins against sshfs and rclone on the
same loopback servers.

The tag view at library scale (bench/catalog.py): building it, one-file changes, mount, find and
memory on synthetic catalogs of BENCH_TAGVIEW_TRACKS tracks (default 100000,1000000).

Environment: BENCH_BIG_MB (default 512), BENCH_SMALL_FILES (20000), BENCH_REPEAT (3),
BENCH_CATALOG_FILES (100000), BENCH_REMOTE (1; 0 skips the remote origins), BENCH_REMOTE_BASELINE
(a git revision to run beside this tree), BENCH_REMOTE_DELAY_MS (0; a delay each way in front of
the remote servers).
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from musicfs.config import load as load_config
from musicfs.pool import PRELOAD_WORKERS
from musicfs.service import Service
from tests.helpers import chunk_bytes_on_disk, chunk_files, make_library, toml_config

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench"
BIG_MB = int(os.environ.get("BENCH_BIG_MB", "512"))
SMALL_FILES = int(os.environ.get("BENCH_SMALL_FILES", "20000"))
CATALOG_FILES = int(os.environ.get("BENCH_CATALOG_FILES", "100000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
MUSICFS = [sys.executable, "-m", "musicfs.cli"]
BIG_FILE_MB = 32


def sh(*args, check=True, **kw):
    return subprocess.run([str(a) for a in args], check=check, capture_output=True, text=True, **kw)


def drop_caches():
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        print("  (cannot drop the page cache here: 'cold' numbers are warm)")


def ensure_installed(command: str, package: str) -> bool:
    if shutil.which(command):
        return True
    if os.geteuid() == 0:
        sh("apt-get", "install", "-y", "-qq", package, check=False,
           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if shutil.which(command):
        return True
    print(f"skipping {command}: not installed and `apt-get install {package}` did not work")
    return False


def wait_mounted(mnt: Path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mnt):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{mnt} did not mount")


def unmount(mnt: Path):
    sh("fusermount", "-u", mnt, check=False)
    deadline = time.monotonic() + 10
    while os.path.ismount(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.path.ismount(mnt):
        sh("fusermount", "-uz", mnt, check=False)


# -- peers ------------------------------------------------------------------------------------

class Peer:
    name = "?"

    def __init__(self, origin: Path):
        self.origin = origin
        self.mnt = WORK / "mnt" / self.name
        self.proc = None

    def mount(self, fresh_cache=False):
        return self.origin

    def unmount(self):
        pass

    def pid(self):
        return self.proc.pid if self.proc else None


class Direct(Peer):
    name = "direct"


class BindFS(Peer):
    name = "bindfs"

    def mount(self, fresh_cache=False):
        self.mnt.mkdir(parents=True, exist_ok=True)
        sh("bindfs", "-r", "--no-allow-other", self.origin, self.mnt)
        wait_mounted(self.mnt)
        return self.mnt

    def unmount(self):
        unmount(self.mnt)


class FusepyPassthrough(Peer):
    name = "fusepy"

    def mount(self, fresh_cache=False):
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.passthrough", str(self.origin), str(self.mnt)],
                                     cwd=ROOT, stderr=subprocess.DEVNULL)
        wait_mounted(self.mnt)
        return self.mnt

    def unmount(self):
        unmount(self.mnt)
        if self.proc:
            self.proc.wait(10)


class Rclone(Peer):
    name = "rclone"

    def mount(self, fresh_cache=False):
        self.mnt.mkdir(parents=True, exist_ok=True)
        cache = WORK / "cache" / f"rclone-{self.origin.parent.name}"
        if fresh_cache:
            shutil.rmtree(cache, ignore_errors=True)
        self.proc = subprocess.Popen(["rclone", "mount", str(self.origin), str(self.mnt), "--read-only",
                                      "--vfs-cache-mode", "full", "--cache-dir", str(cache),
                                      "--vfs-cache-max-size", "10G"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_mounted(self.mnt)
        return self.mnt

    def unmount(self):
        unmount(self.mnt)
        if self.proc:
            self.proc.wait(30)


class Musicfs(Peer):
    name = "musicfs"
    layout = "paths"

    def config(self):
        cache = WORK / "cache" / f"{self.name}-{self.origin.parent.name}"
        path = WORK / f"{self.name}-{self.origin.parent.name}.toml"
        path.write_text(toml_config([("lib", self.origin)], cache, WORK / "musicfs.log", max_size="10G", level="warning",
                                    layout={"mode": self.layout}))
        return path, cache

    def mount(self, fresh_cache=False):
        self.mnt.mkdir(parents=True, exist_ok=True)
        config, cache = self.config()
        if fresh_cache:
            shutil.rmtree(cache, ignore_errors=True)
        sh(*MUSICFS, self.mnt, "-c", config, cwd=ROOT)
        return self.mnt

    def unmount(self):
        sh(*MUSICFS, "unmount", self.mnt, cwd=ROOT, check=False)

    def pid(self):
        _, cache = self.config()
        text = (cache / "musicfs.lock").read_text().strip()
        return int(text) if text.isdigit() else None


# -- workloads ------------------------------------------------------------------------------------

def read_tree(root: Path, block=1 << 20) -> int:
    total = 0
    for path in sorted(root.rglob("*.flac")):
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(block):
                total += len(chunk)
    return total


class MusicfsTags(Musicfs):
    name = "musicfs-tags"
    layout = "tags"


def first_scan(peer: Musicfs) -> tuple[float, float, tuple[int, int]]:
    """(best, median) seconds of a first scan of the peer's library into an empty cache, in
    process, page cache dropped; and (tags read by it, tags read by a rescan right after)."""
    config_path, cache = peer.config()

    def run():
        shutil.rmtree(cache, ignore_errors=True)
        service = Service.open(load_config(config_path))
        try:
            first, = service.scanner.scan()
            again, = service.scanner.scan()
        finally:
            service.stop()
        return first.tags_read, again.tags_read
    return timed(run, before=drop_caches)


def mutagen_loop(root: Path) -> int:
    import mutagen
    count = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            mutagen.File(os.path.join(dirpath, name))
            count += 1
    return count


def read_chunk_files(chunks_dir: Path, threads: int) -> int:
    def read(path):
        with open(path, "rb", buffering=0) as f:
            return len(f.read())
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(read, chunk_files(chunks_dir)))


def read_without_fuse(service, origin: Path, piece=128 << 10) -> int:
    """Every file through musicfs's Reader in this process, in the kernel's 128 KiB pieces."""
    total = 0
    for path in sorted(origin.rglob("*.flac")):
        name = b"/" + os.fsencode(path.relative_to(origin))
        offset = 0
        while data := service.reader.read_path(name, offset, piece):
            offset += len(data)
        total += offset
    return total


def header_scan(root: Path) -> int:
    count = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                f.read(4096)
            count += 1
    return count


def concurrent_readers(root: Path, readers=8) -> tuple[int, list[float]]:
    files = sorted(root.rglob("*.flac"))
    times = [0.0] * readers
    sizes = [0] * readers

    def run(i):
        started = time.perf_counter()
        for path in files[i::readers]:
            with open(path, "rb", buffering=0) as f:
                while chunk := f.read(1 << 20):
                    sizes[i] += len(chunk)
        times[i] = time.perf_counter() - started
    threads = [threading.Thread(target=run, args=(i,)) for i in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(sizes), times


def timed(fn, repeat=REPEAT, before=None):
    results = []
    for _ in range(repeat):
        if before:
            before()
        started = time.perf_counter()
        value = fn()
        results.append(time.perf_counter() - started)
    return min(results), statistics.median(results), value


def rss_mb(pid, field="VmRSS"):
    """Resident memory in MB. RssAnon leaves out file-backed pages such as LMDB's memory map,
    which the kernel can drop at any time; VmRSS counts them."""
    if not pid:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return None


# -- the run --------------------------------------------------------------------------------------

def prepare():
    WORK.mkdir(exist_ok=True)
    big = WORK / f"big-{BIG_MB}"
    if not big.exists():
        print(f"writing {BIG_MB} MB of large files ...")
        make_library(big / "tmp", BIG_MB // BIG_FILE_MB, size=BIG_FILE_MB << 20, per_album=8, seed=2)
        (big / "tmp").rename(big / "lib")
    small = WORK / f"small-{SMALL_FILES}"
    if not small.exists():
        print(f"writing a {SMALL_FILES}-file library ...")
        make_library(small / "tmp", SMALL_FILES, size=8192, seed=3)
        (small / "tmp").rename(small / "lib")
    return big / "lib", small / "lib"


def small_library_workloads(peer, r: dict) -> None:
    """(d) header scans cold and warm, (e) find and ls -lR, and the RSS after them."""
    root = peer.mount(fresh_cache=True)
    header_scan(root)  # first pass fills the peer's cache
    best, med, _ = timed(lambda: header_scan(root), before=drop_caches)
    r["d_scan_cold_s"] = (best, med)
    best, med, _ = timed(lambda: header_scan(root))
    r["d_scan_warm_s"] = (best, med)
    best, med, _ = timed(lambda: sh("find", root, check=True))
    r["e_find_s"] = (best, med)
    best, med, _ = timed(lambda: sh("ls", "-lR", root, check=True))
    r["e_lsR_s"] = (best, med)
    r["rss_MB_20k"] = (rss_mb(peer.pid()),) * 2
    peer.unmount()


def main():
    if os.geteuid() == 0:
        sh("apt-get", "update", "-qq", check=False)
    big, small = prepare()
    peers = [Direct, FusepyPassthrough, Musicfs]
    if ensure_installed("bindfs", "bindfs"):
        peers.insert(1, BindFS)
    if ensure_installed("rclone", "rclone"):
        peers.insert(-1, Rclone)
    rows = {}
    mb = sum(p.stat().st_size for p in big.rglob("*.flac")) / 1e6

    for cls in peers:
        name = cls.name
        print(f"== {name}")
        peer = cls(big)
        r = rows.setdefault(name, {})
        # (a) first read through an empty cache (origin page cache dropped too)
        firsts = []
        for _ in range(REPEAT):
            drop_caches()
            root = peer.mount(fresh_cache=True)
            started = time.perf_counter()
            read_tree(root)
            firsts.append(time.perf_counter() - started)
            peer.unmount()
        r["a_first_MBps"] = (mb / min(firsts), mb / statistics.median(firsts))
        root = peer.mount()
        read_tree(root)  # make sure everything is in the peer's cache
        best, med, _ = timed(lambda: read_tree(root), before=drop_caches)
        r["b_cached_cold_MBps"] = (mb / best, mb / med)
        if isinstance(peer, Musicfs):
            # The floor under (b): the same chunk files read by plain Python, no FUSE, with as
            # many threads as musicfs preloads with.
            chunks_dir = peer.config()[1] / "chunks"
            chunk_mb = chunk_bytes_on_disk(chunks_dir) / 1e6
            best, med, _ = timed(lambda: read_chunk_files(chunks_dir, PRELOAD_WORKERS), before=drop_caches)
            r["b_chunk_files_raw_MBps"] = (chunk_mb / best, chunk_mb / med)
        read_tree(root)
        best, med, _ = timed(lambda: read_tree(root))
        r["c_cached_warm_MBps"] = (mb / best, mb / med)
        best, med, (total, times) = timed(lambda: concurrent_readers(root))
        r["g_8readers_MBps"] = (total / 1e6 / best, total / 1e6 / med)
        r["g_slowest_reader_s"] = (max(times), max(times))
        peer.unmount()
        if isinstance(peer, Musicfs):
            # The same cached read path called directly, without FUSE: what (b) could reach if
            # FUSE cost nothing.
            service = Service.open(load_config(peer.config()[0]))
            try:
                best, med, _ = timed(lambda: read_without_fuse(service, big), before=drop_caches)
            finally:
                service.stop()
            r["b_without_fuse_MBps"] = (mb / best, mb / med)

        peer = cls(small)
        small_library_workloads(peer, r)

    # the tag view: the same small library, workloads (d) and (e), and its first scan
    print("== musicfs-tags")
    peer = MusicfsTags(small)
    r = rows.setdefault(peer.name, {})
    small_library_workloads(peer, r)
    best, med, count = timed(lambda: mutagen_loop(small), before=drop_caches)
    r["t_mutagen_loop_s"] = (best, med)
    best, med, (tags_first, tags_rescan) = first_scan(peer)
    r["t_first_scan_tags_s"] = (best, med)
    r["t_tags_read_first"] = (tags_first, tags_first)
    r["t_tags_read_rescan"] = (tags_rescan, tags_rescan)
    best, med, _ = first_scan(Musicfs(small))
    rows["musicfs"]["t_first_scan_paths_s"] = (best, med)

    # (f) musicfs mount time with the catalog stored, and RSS, in both layouts
    for files in (1000, CATALOG_FILES):
        lib = WORK / f"catalog-{files}"
        if not lib.exists():
            print(f"writing a {files}-file library for the mount-time run ...")
            make_library(lib / "tmp", files, size=16, seed=4)
            (lib / "tmp").rename(lib / "lib")
        for cls in (Musicfs, MusicfsTags):
            peer = cls(lib / "lib")
            peer.mount(fresh_cache=True)   # the first mount scans and stores the catalog
            peer.unmount()
            times = []
            for _ in range(REPEAT):
                started = time.perf_counter()
                root = peer.mount()
                os.listdir(root)
                times.append(time.perf_counter() - started)
                sh("ls", "-lR", root)      # the whole catalog through the daemon once
                rss, anon = rss_mb(peer.pid()), rss_mb(peer.pid(), "RssAnon")
                peer.unmount()
            rows[peer.name][f"f_mount_{files}_s"] = (min(times), statistics.median(times))
            rows[peer.name][f"f_rss_{files}_MB"] = (rss, rss)
            rows[peer.name][f"f_rss_anon_{files}_MB"] = (anon, anon)

    if os.environ.get("BENCH_REMOTE", "1") != "0":
        from bench import remote
        remote.run(rows, big, WORK)
    report(rows, mb)
    # the tag view at library scale, on synthetic catalogs (bench/catalog.py)
    from bench import catalog
    catalog.main([int(n) for n in os.environ.get("BENCH_TAGVIEW_TRACKS", "100000,1000000").split(",") if n])


def report(rows, mb):
    print(f"\nmachine: {os.cpu_count()} cores, {os.uname().release}; python {sys.version.split()[0]}; "
          f"{mb:.0f} MB of large files, {SMALL_FILES} small files; best / median of {REPEAT}")
    keys = sorted({k for r in rows.values() for k in r})
    names = list(rows)
    print(f"{'metric':24}" + "".join(f"{n:>20}" for n in names))
    for key in keys:
        cells = []
        for n in names:
            v = rows[n].get(key)
            cells.append(f"{'-':>20}" if not v or v[0] is None else f"{v[0]:>9.3f} /{v[1]:>9.3f}")
        print(f"{key:24}" + "".join(cells))

    def ratio(metric, a, b, higher_is_better=True):
        if metric not in rows.get(a, {}) or metric not in rows.get(b, {}):
            return
        x, y = rows[a][metric][0], rows[b][metric][0]
        value = x / y if higher_is_better else y / x
        print(f"  {metric:22} musicfs vs {b:8}: {value:6.2f}x {'(faster)' if value >= 1 else '(slower)'}")
    print("\nratios (best of each; >1 means musicfs is better):")
    for peer in ("rclone", "fusepy", "bindfs", "direct"):
        for metric in ("a_first_MBps", "b_cached_cold_MBps", "c_cached_warm_MBps", "g_8readers_MBps"):
            ratio(metric, "musicfs", peer)
        for metric in ("d_scan_cold_s", "d_scan_warm_s", "e_find_s", "e_lsR_s"):
            ratio(metric, "musicfs", peer, higher_is_better=False)
    m = rows["musicfs"]
    if "b_without_fuse_MBps" in m:
        print(f"  b_cached_cold_MBps     musicfs vs its own read path called without FUSE: "
              f"{m['b_cached_cold_MBps'][0] / m['b_without_fuse_MBps'][0]:.2f}x")
    if "b_chunk_files_raw_MBps" in m:
        print(f"  b_cached_cold_MBps     musicfs vs its chunk files read without FUSE "
              f"({PRELOAD_WORKERS} threads): {m['b_cached_cold_MBps'][0] / m['b_chunk_files_raw_MBps'][0]:.2f}x")
    from bench import remote
    remote.report(rows)
    if f"f_mount_{CATALOG_FILES}_s" in m:
        print(f"  mount {CATALOG_FILES} / mount 1000 files: "
              f"{m[f'f_mount_{CATALOG_FILES}_s'][0] / m['f_mount_1000_s'][0]:.2f}x")
    t = rows.get("musicfs-tags", {})
    if t:
        print("\nthe tag view (musicfs-tags against musicfs in its paths layout; <= 1.1x is the target):")
        for metric in ("d_scan_cold_s", "d_scan_warm_s", "e_find_s", "e_lsR_s", "f_mount_1000_s",
                       f"f_mount_{CATALOG_FILES}_s"):
            if metric in t and metric in m:
                print(f"  {metric:22} tags / paths time: {t[metric][0] / m[metric][0]:6.2f}x")
        if "t_first_scan_tags_s" in t:
            files = t["t_tags_read_first"][0]
            print(f"  first scan in tags mode: {t['t_first_scan_tags_s'][0]:.2f} s, {files / t['t_first_scan_tags_s'][0]:.0f} "
                  f"files/s, {t['t_first_scan_tags_s'][0] / t['t_mutagen_loop_s'][0]:.2f}x a single-threaded "
                  f"mutagen.File() loop ({t['t_mutagen_loop_s'][0]:.2f} s; target <= 1.0x); paths mode "
                  f"{m['t_first_scan_paths_s'][0]:.2f} s")
            print(f"  tags read by a rescan with nothing changed: {t['t_tags_read_rescan'][0]:.0f} "
                  f"(first scan: {files:.0f})")


if __name__ == "__main__":
    main()
