"""What the benchmark's parts share: where they work, how they run commands and time them,
the workloads every peer runs, and musicfs as of another revision (BENCH_BASELINE)."""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench"
BIG_MB = int(os.environ.get("BENCH_BIG_MB", "512"))
SMALL_FILES = [int(n) for n in os.environ.get("BENCH_SMALL_FILES", "20000,100000").split(",") if n]
CATALOG_FILES = int(os.environ.get("BENCH_CATALOG_FILES", "100000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
MUSICFS = [sys.executable, "-m", "musicfs.cli"]


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


def timed(fn, repeat=REPEAT, before=None):
    results = []
    for _ in range(repeat):
        if before:
            before()
        started = time.perf_counter()
        value = fn()
        results.append(time.perf_counter() - started)
    return min(results), statistics.median(results), value


def read_tree(root: Path, block=1 << 20) -> int:
    total = 0
    for path in sorted(root.rglob("*.flac")):
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(block):
                total += len(chunk)
    return total


def header_scan(root: Path) -> int:
    count = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                f.read(4096)
            count += 1
    return count


def baseline_tree(work: Path) -> tuple[str, Path] | None:
    """(revision, its source tree) when BENCH_BASELINE (or the older name BENCH_REMOTE_BASELINE)
    names one, exported once."""
    revision = os.environ.get("BENCH_BASELINE") or os.environ.get("BENCH_REMOTE_BASELINE")
    if not revision:
        return None
    commit = sh("git", "rev-parse", "--short", revision, cwd=ROOT).stdout.strip()
    tree = work / f"baseline-{commit}"
    if not tree.exists():
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", commit, "musicfs"], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return revision, tree


BIG_FILE_MB = 32


def big_library() -> Path:
    """BENCH_BIG_MB of 32 MB tagged files (written once into .bench)."""
    from testkit.library import make_library
    WORK.mkdir(exist_ok=True)
    big = WORK / f"big-{BIG_MB}"
    if not big.exists():
        print(f"writing {BIG_MB} MB of large files ...")
        make_library(big / "tmp", BIG_MB // BIG_FILE_MB, size=BIG_FILE_MB << 20, per_album=8, seed=2)
        (big / "tmp").rename(big / "lib")
    return big / "lib"


def print_table(rows: dict) -> None:
    """Every metric (a row) of every peer (a column): best / median."""
    keys = sorted({k for r in rows.values() for k in r})
    names = list(rows)
    width = max([24, *(len(k) + 1 for k in keys)])
    print(f"{'metric':{width}}" + "".join(f"{n:>20}" for n in names))
    for key in keys:
        cells = []
        for n in names:
            v = rows[n].get(key)
            cells.append(f"{'-':>20}" if not v or v[0] is None else f"{v[0]:>9.3f} /{v[1]:>9.3f}")
        print(f"{key:{width}}" + "".join(cells))
