"""`make bench`: musicfs against the tools a user would pick instead, same data, same run.

Peers: direct (page cache, the physical limit), bindfs (a C FUSE passthrough), a minimal fusepy
passthrough (bench/passthrough.py: the ceiling of our stack), rclone mount --vfs-cache-mode
full, musicfs in its default layout (tags), and with BENCH_BASELINE=REV musicfs as of REV
("musicfs@REV", the same workloads in the same run). A peer that is not installed and cannot be
installed is skipped with a line. Every timing is repeated; the table shows best and median.
Nothing here asserts anything.

The small-file workloads (header scans, find, ls -lR) run on libraries of every size in
BENCH_SMALL_FILES (default 20000,100000; keys end in the size, e.g. d_scan_cold_s_100k).
musicfs in its paths layout ("musicfs-paths") runs them beside, for the tag view's own cost;
the tag view's first scan (reading every file's tags) is timed against a plain single-threaded
mutagen.File() loop over the same files (page cache dropped before each), with how many tags an
unchanged rescan reads.

Remote origins (bench/remote.py): musicfs's sftp and s3 origins against sshfs and rclone on the
same loopback servers.

The tag view at library scale (bench/catalog.py): building it, one-file changes, mount, find and
memory on synthetic catalogs of BENCH_TAGVIEW_TRACKS tracks (default 100000,1000000).

Environment: BENCH_BIG_MB (default 512), BENCH_SMALL_FILES (20000,100000), BENCH_REPEAT (3),
BENCH_CATALOG_FILES (100000), BENCH_BASELINE (a git revision to run beside this tree, local and
remote), BENCH_REMOTE (1; 0 skips the remote origins), BENCH_REMOTE_DELAY_MS (0; a delay each way
in front of the remote servers), BENCH_TAGVIEW_TRACKS (100000,1000000; empty skips it).
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
from musicfs.daemon.service import Service
from testkit.configs import toml_config
from testkit.library import chunk_bytes_on_disk, chunk_files, make_library

from .common import (CATALOG_FILES, MUSICFS, REPEAT, ROOT, SMALL_FILES, WORK, big_library, drop_caches,
                     ensure_installed, header_scan, print_table, read_tree, sh, timed, unmount, wait_mounted)



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
    layout = "tags"
    tree = ROOT   # the source tree whose musicfs runs (`python -m` imports from its cwd)

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
        sh(*MUSICFS, self.mnt, "-c", config, cwd=self.tree)
        return self.mnt

    def unmount(self):
        sh(*MUSICFS, "unmount", self.mnt, cwd=self.tree, check=False)

    def pid(self):
        _, cache = self.config()
        text = (cache / "musicfs.lock").read_text().strip()
        return int(text) if text.isdigit() else None


# -- workloads ------------------------------------------------------------------------------------

class MusicfsPaths(Musicfs):
    name = "musicfs-paths"
    layout = "paths"


def baseline_peer():
    """musicfs as of BENCH_BASELINE (a Musicfs peer running that revision's tree), or None."""
    from .common import baseline_tree
    baseline = baseline_tree(WORK)
    if baseline is None:
        return None
    revision, tree = baseline
    return type("MusicfsBaseline", (Musicfs,), {"name": f"musicfs@{revision}", "tree": tree})


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


def shown_files(catalog, folder=b"/"):
    """The shown tree's files, in order, from the catalog (no mount needed)."""
    for name, kind in catalog.children(folder) or ():
        path = folder.rstrip(b"/") + b"/" + name
        if catalog.children(path) is not None:
            yield from shown_files(catalog, path)
        elif name.endswith(b".flac"):
            yield path


def read_without_fuse(service, piece=128 << 10) -> int:
    """Every track through musicfs's Reader in this process, in the kernel's 128 KiB pieces."""
    total = 0
    for name in list(shown_files(service.catalog)):
        offset = 0
        while data := service.reader.read_path(name, offset, piece):
            offset += len(data)
        total += offset
    return total


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
    big = big_library()
    smalls = {}
    for files in SMALL_FILES:
        small = WORK / f"small-{files}"
        if not small.exists():
            print(f"writing a {files}-file library ...")
            make_library(small / "tmp", files, size=8192, seed=3)
            (small / "tmp").rename(small / "lib")
        smalls[files] = small / "lib"
    return big, smalls


def size_key(files: int) -> str:
    return f"{files // 1000}k" if files % 1000 == 0 else str(files)


def small_library_workloads(peer, r: dict, files: int) -> None:
    """(d) header scans cold and warm, (e) find and ls -lR, and the RSS after them."""
    n = size_key(files)
    root = peer.mount(fresh_cache=True)
    header_scan(root)  # first pass fills the peer's cache
    best, med, _ = timed(lambda: header_scan(root), before=drop_caches)
    r[f"d_scan_cold_s_{n}"] = (best, med)
    best, med, _ = timed(lambda: header_scan(root))
    r[f"d_scan_warm_s_{n}"] = (best, med)
    best, med, _ = timed(lambda: sh("find", root, check=True))
    r[f"e_find_s_{n}"] = (best, med)
    best, med, _ = timed(lambda: sh("ls", "-lR", root, check=True))
    r[f"e_lsR_s_{n}"] = (best, med)
    r[f"rss_MB_{n}"] = (rss_mb(peer.pid()),) * 2
    peer.unmount()


def main():
    if os.geteuid() == 0:
        sh("apt-get", "update", "-qq", check=False)
    big, smalls = prepare()
    small = smalls[SMALL_FILES[0]]
    peers = [Direct, FusepyPassthrough, Musicfs]
    if ensure_installed("bindfs", "bindfs"):
        peers.insert(1, BindFS)
    if ensure_installed("rclone", "rclone"):
        peers.insert(-1, Rclone)
    baseline = baseline_peer()
    if baseline is not None:
        peers.append(baseline)
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
        if type(peer) is Musicfs:
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
        if type(peer) is Musicfs:
            # The same cached read path called directly, without FUSE: what (b) could reach if
            # FUSE cost nothing.
            service = Service.open(load_config(peer.config()[0]))
            try:
                best, med, _ = timed(lambda: read_without_fuse(service), before=drop_caches)
            finally:
                service.stop()
            r["b_without_fuse_MBps"] = (mb / best, mb / med)

        for files, library in smalls.items():
            # Beyond the first size only the peers the goals name at every size (bindfs) and
            # musicfs itself: rclone and the fusepy loop would add a quarter of an hour at 100k.
            if files == SMALL_FILES[0] or cls in (Direct, BindFS) or issubclass(cls, Musicfs):
                small_library_workloads(cls(library), r, files)

    # the paths layout: the same small-file workloads, for the tag view's own cost
    print("== musicfs-paths")
    r = rows.setdefault(MusicfsPaths.name, {})
    for files, library in smalls.items():
        small_library_workloads(MusicfsPaths(library), r, files)
    # the tag view's first scan of the smallest library, against a plain mutagen loop
    r = rows["musicfs"]
    best, med, count = timed(lambda: mutagen_loop(small), before=drop_caches)
    r["t_mutagen_loop_s"] = (best, med)
    best, med, (tags_first, tags_rescan) = first_scan(Musicfs(small))
    r["t_first_scan_tags_s"] = (best, med)
    r["t_tags_read_first"] = (tags_first, tags_first)
    r["t_tags_read_rescan"] = (tags_rescan, tags_rescan)
    best, med, _ = first_scan(MusicfsPaths(small))
    rows[MusicfsPaths.name]["t_first_scan_paths_s"] = (best, med)

    # (f) musicfs mount time with the catalog stored, and RSS, in both layouts
    for files in (1000, CATALOG_FILES):
        lib = WORK / f"catalog-{files}"
        if not lib.exists():
            print(f"writing a {files}-file library for the mount-time run ...")
            make_library(lib / "tmp", files, size=16, seed=4)
            (lib / "tmp").rename(lib / "lib")
        for cls in (Musicfs, MusicfsPaths):
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
        from . import remote
        remote.run(rows, big, WORK)
    report(rows, mb)
    # the tag view at library scale, on synthetic catalogs (bench/catalog.py)
    from . import catalog
    catalog.main([int(n) for n in os.environ.get("BENCH_TAGVIEW_TRACKS", "100000,1000000").split(",") if n])


def report(rows, mb):
    print(f"\nmachine: {os.cpu_count()} cores, {os.uname().release}; python {sys.version.split()[0]}; "
          f"{mb:.0f} MB of large files, {SMALL_FILES} small files; best / median of {REPEAT}")
    print_table(rows)

    def ratio(metric, a, b, higher_is_better=True):
        if metric not in rows.get(a, {}) or metric not in rows.get(b, {}) or None in (rows[a][metric][0], rows[b][metric][0]):
            return None
        x, y = rows[a][metric][0], rows[b][metric][0]
        return x / y if higher_is_better else y / x

    sizes = [size_key(files) for files in SMALL_FILES]
    throughput = ("a_first_MBps", "b_cached_cold_MBps", "c_cached_warm_MBps", "g_8readers_MBps")
    times = [f"{m}_{n}" for n in sizes for m in ("d_scan_cold_s", "d_scan_warm_s", "e_find_s", "e_lsR_s")]
    print("\nratios (best of each; >1 means musicfs is better):")
    for peer in [n for n in rows if n != "musicfs" and n != "musicfs-paths"]:
        for metric in (*throughput, *times):
            value = ratio(metric, "musicfs", peer, higher_is_better=metric in throughput)
            if value is not None:
                print(f"  {metric:22} musicfs vs {peer:14}: {value:6.2f}x {'(faster)' if value >= 1 else '(slower)'}")
    # The goals of issue 18, each as (metric, peer, the least ratio musicfs must reach).
    goals = [("a_first_MBps", "rclone", 3.0), ("b_cached_cold_MBps", "rclone", 1.5),
             ("b_cached_cold_MBps", "fusepy", 1.0), ("c_cached_warm_MBps", "bindfs", 1.0)]
    for n in sizes:
        goals += [(f"d_scan_cold_s_{n}", "bindfs", 1 / 2.0), (f"d_scan_warm_s_{n}", "bindfs", 1.0),
                  (f"e_find_s_{n}", "bindfs", 1 / 1.2), (f"e_lsR_s_{n}", "bindfs", 1.0)]
    print("\ngoals (musicfs against a peer, best of each):")
    for metric, peer, least in goals:
        value = ratio(metric, "musicfs", peer, higher_is_better=metric in throughput)
        if value is None:
            continue
        if metric in throughput:
            goal, shown = f">= {least:g}x {peer}", f"{value:.2f}x"
        else:   # times: musicfs's time as a multiple of the peer's
            goal, shown = f"<= {1 / least:.1f}x {peer}'s time", f"{1 / value:.2f}x"
        print(f"  {metric:22} {goal:24} {shown:>7}  {'met' if value >= least else 'NOT MET'}")
    m = rows["musicfs"]
    for metric, most in ((f"f_mount_{CATALOG_FILES}_s", 0.5), (f"f_rss_{CATALOG_FILES}_MB", 64),
                         (f"rss_MB_{size_key(SMALL_FILES[-1])}", 100)):
        if m.get(metric, (None,))[0] is not None:
            print(f"  {metric:22} {'<= ' + format(most, 'g'):24} {m[metric][0]:>7.2f}  "
                  f"{'met' if m[metric][0] <= most else 'NOT MET'}")
    from . import remote
    remote.report(rows)
    if f"f_mount_{CATALOG_FILES}_s" in m:
        print(f"  mount {CATALOG_FILES} / mount 1000 files: "
              f"{m[f'f_mount_{CATALOG_FILES}_s'][0] / m['f_mount_1000_s'][0]:.2f}x")
    t, m = rows["musicfs"], rows.get("musicfs-paths", {})
    if m:
        print("\nthe tag view (musicfs in its default tags layout against its paths layout; <= 1.1x is the target):")
        for metric in (*times, "f_mount_1000_s", f"f_mount_{CATALOG_FILES}_s"):
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
