"""The day-to-day commands, client side: `musicfs status`, `rescan` and `pin`.

They find the live daemon from what it publishes (:mod:`musicfs.status`), read the cache index
read-only for per-file answers (no FUSE round trip per file), and ask the daemon over its
control socket (:mod:`musicfs.daemon.control`) for anything that changes the cache or the catalog.
"""
from __future__ import annotations

import errno
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..daemon.control import ask
from ..cas.store import cached_slots, manifest_key
from ..catalog import Catalog
from ..config import format_size
from ..errors import CommandError
from ..status import DaemonStatus, mounted_fstype, mountpoint_status, read_status, runtime_dir
from ..terminal import StatusLine, bar

# As reads order the copies ("unknown": not checked yet, read like a healthy one).
_STATE_RANK = {"healthy": 0, "unknown": 0, "degraded": 1, "unhealthy": 2}


@dataclass
class Mount:
    mountpoint: Path
    status: DaemonStatus    # the daemon's status file (with a cache_dir)

    @property
    def cache_dir(self) -> Path:
        return Path(self.status.cache_dir)


def live_mount(mountpoint: Path) -> Mount | None:
    """The live daemon serving exactly `mountpoint`, or None. CommandError if the daemon that
    served it died (its status file is left behind)."""
    status, alive = mountpoint_status(mountpoint)
    if alive and status.cache_dir:
        return Mount(Path(os.path.abspath(mountpoint)), status)
    if status is not None and not alive and _dead_fuse_mount(mountpoint):
        raise CommandError(f"the musicfs daemon of {os.path.abspath(mountpoint)} (PID {status.pid}) died; "
                           f"mount it again (musicfs {os.path.abspath(mountpoint)} ...)")
    return None


def _dead_fuse_mount(path: Path) -> bool:
    try:
        os.statvfs(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def locate(path: Path) -> tuple[Mount, bytes]:
    """The mount a path lies in, and the path inside it (b"/..."). Found from the status files
    of live daemons, walking up from the path: no FUSE request per path."""
    absolute = Path(os.path.abspath(os.path.expanduser(path)))
    for candidate in (absolute, *absolute.parents):
        mount = live_mount(candidate)
        if mount is not None:
            inside = os.fsencode(absolute.relative_to(candidate))
            return mount, b"/" if inside in (b"", b".") else b"/" + inside
    musicfs_mount = next((p for p in (absolute, *absolute.parents) if "musicfs" in (mounted_fstype(str(p)) or "")), None)
    if musicfs_mount is not None:
        raise CommandError(_unpublished(musicfs_mount))
    raise CommandError(f"{path} is not inside a running musicfs mount")


def _unpublished(mountpoint) -> str:
    """A musicfs mount whose daemon's status file is not where this process looks."""
    return (f"{mountpoint} is a musicfs mount but no daemon status names it in {runtime_dir()} "
            f"(started with another XDG_RUNTIME_DIR? run this command with the daemon's)")


def mount_for(mountpoint: Path | None, cache_dir: Path | None) -> Mount:
    """The daemon named by a mountpoint, or else by the config's cache dir."""
    if mountpoint is not None:
        mount = live_mount(mountpoint)
        if mount is None:
            if "musicfs" in (mounted_fstype(os.path.abspath(mountpoint)) or ""):
                raise CommandError(_unpublished(os.path.abspath(mountpoint)))
            raise CommandError(f"no running musicfs serves {os.path.abspath(mountpoint)}")
        return mount
    status = read_status(cache_dir) if cache_dir is not None else None
    if status is None or not status.cache_dir:
        raise CommandError(f"no running musicfs uses the cache {cache_dir}; give the MOUNTPOINT")
    return Mount(Path(status.mountpoint or "?"), status)


# -- status ------------------------------------------------------------------------------------

def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def open_files(mountpoint: Path) -> dict:
    """Files open on the mount, per process, as the kernel lists them in /proc/PID/fd (what
    fuser and lsof read; no request reaches the mount). The daemon cannot count them itself:
    closing a file is answered inside libfuse, without a round trip into Python. Processes
    of other users are visible to root only."""
    root = os.path.abspath(mountpoint)
    prefix = root.rstrip("/") + "/"
    by_process = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        count = 0
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(prefix):
                    count += 1
        except OSError:   # gone, or another user's
            continue
        if count:
            try:
                with open(f"/proc/{pid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                name = "?"
            by_process.append({"pid": int(pid), "name": name, "files": count})
    by_process.sort(key=lambda p: -p["files"])
    return {"count": sum(p["files"] for p in by_process), "processes": by_process}


def daemon_report(mount: Mount) -> dict:
    """The daemon's status as `musicfs status --json` prints it: its status file, the files
    open on the mount, its uptime and how old the file is."""
    status, now = mount.status, time.time()
    return dict(status.to_json(), open_files=open_files(mount.mountpoint),
                uptime=round(now - status.started, 1) if status.started is not None else None,
                age=round(now - (status.updated or now), 1))


def format_daemon(mount: Mount) -> list[str]:
    """`musicfs status MOUNTPOINT`: the daemon, its cache, each origin, its config, open files."""
    status, now = mount.status, time.time()
    cache, layout, reloads = status.cache, status.layout, status.reloads
    hits, misses = cache.hits or 0, cache.misses or 0
    rate = f"{100 * hits / (hits + misses):.0f}%" if hits + misses else "-"
    uptime = now - status.started if status.started is not None else None
    lines = [
        f"musicfs {status.version or '?'}, PID {status.pid}, up {human_duration(uptime)}, "
        f"mounted at {status.mountpoint}",
        f"layout    {layout.mode}" + (f"  {layout.template}" if layout.mode == "tags" else "")
        + (f"; {plural(layout.not_placed_count, 'file')} not placed (not audio to mutagen: "
           f"see status --json)" if layout.not_placed_count else ""),
        f"cache     {format_size(cache.bytes)} of {format_size(cache.max_bytes)}, "
        f"{format_size(cache.pinned_bytes)} pinned, {cache.chunks if cache.chunks is not None else '?'} chunks; "
        f"hit rate {rate} ({hits} hits, {misses} misses)",
        "          passthrough: " + (f"YES - {status.passthrough_reason}" if status.passthrough else "no")
        + f"; cache dir {status.cache_dir}",
        "origins:",
    ]
    width = max((len(name) for name in status.origins), default=6)
    for name in status.origin_names():   # priority order
        origin = status.origins[name]
        latency = origin.latency if origin.status != "unhealthy" else None
        scan = origin.scan
        if scan is not None and scan.finished:
            ago = human_duration(now - scan.finished)
            scanned = (f"last scan {ago} ago: {scan.entries} entries" if scan.complete else
                       f"last scan {ago} ago INCOMPLETE ({scan.error or 'cancelled'}); "
                       f"its stored files stay listed")
        else:
            scanned = "not scanned since the mount"
        line = (f"  {name:<{width}}  {origin.status:<9}  "
                f"{(f'{latency * 1000:.0f} ms' if latency is not None else '-'):>7}  {scanned}")
        if origin.error:
            line += f"; last error: {origin.error}"
        lines.append(line)
    config_line = f"config    {status.config_file or '(command line only)'}"
    if reloads.count and reloads.last is not None:
        config_line += (f"; last reload {human_duration(now - reloads.last)} ago: "
                        + (f"REFUSED - {reloads.error}" if reloads.error else "applied"))
    lines.append(config_line)
    opened = open_files(mount.mountpoint)
    lines.append(f"open      {plural(opened['count'], 'file')}"
                 + (": " + ", ".join(f"{p['name']} ({p['pid']}) {p['files']}" for p in opened["processes"][:5])
                    if opened["processes"] else "")
                 + f"; {status.requests_in_progress} requests in progress")
    age = now - (status.updated or now)
    if age > 10:
        lines.append(f"(this status is {human_duration(age)} old: the daemon may be stuck)")
    return lines


def file_reports(paths: list[Path]) -> list[dict]:
    """Per file: the origin serving it, its path there, replicas, size, cached bytes, pinned.
    Read from the cache index (read-only) beside the daemon, one transaction per mount."""
    from .cache import open_existing
    by_mount: dict[Path, tuple[Mount, list]] = {}
    reports = []
    for path in paths:
        try:
            mount, inside = locate(path)
        except CommandError as e:   # one bad path does not hide the others' answers
            reports.append({"path": str(path), "error": str(e)})
            continue
        by_mount.setdefault(mount.mountpoint, (mount, []))[1].append((str(path), inside))
    for mount, items in by_mount.values():
        health = {name: origin.status for name, origin in mount.status.origins.items()}
        storage = open_existing(mount.cache_dir, readonly=True)
        try:
            catalog = Catalog(storage)
            with storage.begin() as txn:
                for given, inside in items:
                    reports.append(_file_report(catalog, txn, health, given, inside))
        finally:
            storage.env.close()
    return reports


def _file_report(catalog: Catalog, txn, health: dict, given: str, inside: bytes) -> dict:
    storage = catalog.storage
    entry = catalog.lookup(inside, txn)
    report = {"path": given, "shown": os.fsdecode(inside)}
    if entry is None or inside == b"/":
        return dict(report, error="not in the library")
    if entry.is_dir:
        return dict(report, error="a folder (give files, or `musicfs status MOUNTPOINT`)")
    copies = []
    for origin, relpath in entry.sources:
        record = catalog.origin_record(origin, relpath, txn)
        if record is None or origin not in health:
            continue
        _, size, mtime_ns, _ = record
        key = manifest_key(origin, relpath)
        slots = cached_slots(storage, txn, key, size, mtime_ns)
        copies.append({"origin": origin, "source": os.fsdecode(relpath), "size": size,
                       "state": health[origin], "cached": sum(slots), "slots": slots,
                       "pinned": txn.get(key, db=storage.pins) is not None})
    if not copies:
        return dict(report, size=entry.size, error="no configured origin holds it")
    # The reader prefers the first copy of the same size whose origin is in the best state.
    same = [c for c in copies if c["size"] == copies[0]["size"]]
    serving = min(same, key=lambda c: _STATE_RANK.get(c["state"], 3))
    # Reads take the preferred copy's cached chunks, and while a replica serves, its cached
    # chunks for the rest (fetching from it finds them cached). Pins name the preferred copy.
    slots = copies[0]["slots"]
    if serving is not copies[0]:
        slots = [max(pair) for pair in itertools.zip_longest(copies[0]["slots"], serving["slots"], fillvalue=0)]
    size, cached = copies[0]["size"], sum(slots)
    if entry.is_slice:
        # A cover embedded in a track: the piece of the track it is, and what of that piece
        # is cached (chunks are the track's).
        size = entry.size
        piece = entry.window or entry.size   # (a picture decoded from the track's first `window` bytes)
        cached = entry.size * _cached_within(slots, storage.get_u64(txn, b"chunk_size"), entry.offset, piece) // piece
        report["piece_of"] = {"offset": entry.offset, "length": piece}
    return dict(report, origin=serving["origin"], source=serving["source"], size=size,
                cached=cached, pinned=copies[0]["pinned"], state=serving["state"],
                replicas=[{k: c[k] for k in ("origin", "source", "state", "cached")}
                          for c in copies if c is not serving])


def _cached_within(slots: list[int], chunk_size: int, start: int, length: int) -> int:
    """Bytes of [start, start + length) of a file in cached chunks (`slots`: cached bytes per chunk)."""
    if not chunk_size:
        return 0
    end = start + length
    return sum(max(0, min(end, index * chunk_size + cached) - max(start, index * chunk_size))
               for index, cached in enumerate(slots) if cached)


def format_file(report: dict) -> list[str]:
    """The lines for stdout (nothing for an error: see format_file_error)."""
    if "error" in report:
        return []
    size = report["size"]
    percent = f"{100 * report['cached'] / size:.0f}%" if size else "100%"
    lines = [f"{report['path']}",
             f"  served by  {report['origin']} ({report['state']}): {report['source']}"
             + (f" (the picture embedded in it: {report['piece_of']['length']} bytes from byte "
                f"{report['piece_of']['offset']})" if report.get("piece_of") else ""),
             f"  cached     {format_size(report['cached'])} of {format_size(size)} ({percent})"
             + ("  PINNED" if report["pinned"] else "")]
    for replica in report["replicas"]:
        cached = f", {format_size(replica['cached'])} cached" if replica["cached"] else ""
        lines.append(f"  replica    {replica['origin']} ({replica['state']}): {replica['source']}{cached}")
    return lines


def format_file_error(report: dict) -> str | None:
    if "error" not in report:
        return None
    error = report["error"]
    return error if error.startswith(report["path"]) else f"{report['path']}: {error}"


# -- rescan and pin ------------------------------------------------------------------------------

def rescan(mount: Mount) -> dict:
    return ask(mount.cache_dir, {"op": "rescan"})


def reload(mount: Mount, progress=None) -> dict:
    """{"summary", "changes"} once the live daemon has applied its config file again;
    progress({"waiting": why}) while it has to wait."""
    return ask(mount.cache_dir, {"op": "reload"}, progress)


def search(mount: Mount, query: str, limit: int | None) -> dict:
    """{"count", "tracks": [fields with "path" in the mount]} from the live daemon's catalog."""
    result = ask(mount.cache_dir, {"op": "search", "query": query, "limit": limit})
    for track in result["tracks"]:
        track["path"] = os.path.join(str(mount.mountpoint), track["path"].lstrip("/"))
    return result


def format_rescan(result: dict) -> list[str]:
    lines = []
    for origin in result.get("origins", []):
        if origin.get("complete"):
            lines.append(f"{origin['origin']}: {origin.get('added', 0)} added, {origin.get('changed', 0)} changed, "
                         f"{origin.get('removed', 0)} removed; {origin.get('entries', 0)} entries "
                         f"({origin.get('seconds', 0):.1f}s)")
        else:
            lines.append(f"{origin['origin']}: INCOMPLETE ({origin.get('error') or 'cancelled'}); its stored "
                         f"files stay listed")
        for problem in origin.get("unreadable") or []:
            lines.append(f"  could not list {problem}")
    return lines


class ProgressBar(StatusLine):
    """bytes done of total, rate and ETA on one terminal line."""

    def __call__(self, progress: dict) -> None:
        done, total, seconds = progress.get("done", 0), progress.get("total", 0), progress.get("seconds", 0)
        rate = done / seconds if seconds > 0 else 0
        eta = "0s" if done >= total else human_duration((total - done) / rate) if rate > 0 else "?"
        self.show(f"{bar(done, total, 24)} {format_size(done)} of {format_size(total)}  {format_size(rate)}/s  "
                  f"ETA {eta}   ")


def pin(paths: list[Path], unpin: bool, progress=None) -> list[tuple[Mount, dict]]:
    by_mount: dict[Path, tuple[Mount, list]] = {}
    for path in paths:
        mount, inside = locate(path)
        by_mount.setdefault(mount.mountpoint, (mount, []))[1].append(os.fsdecode(inside))
    results = []
    for mount, inside in by_mount.values():
        request = {"op": "unpin" if unpin else "pin", "paths": inside}
        results.append((mount, ask(mount.cache_dir, request, progress)))
    return results


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_pin(result: dict, unpin: bool) -> list[str]:
    if unpin:
        return [f"released {plural(result['files'], 'pinned file copy').replace('copys', 'copies')} "
                f"({format_size(result['released_bytes'])}); {format_size(result['pinned_bytes'])} stay pinned"]
    incomplete = result["pinned_files"] - result["files"]
    lines = [f"pinned {plural(result['pinned_files'], 'file')}"
             + (f" ({incomplete} not complete yet)" if incomplete else "")
             + f", {format_size(result['fetched_bytes'])} fetched; "
             f"{format_size(result['pinned_bytes'])} pinned of {format_size(result['pin_limit_bytes'])} allowed"]
    if result["not_fitting"]:
        lines.append(f"{plural(len(result['not_fitting']), 'file')} did not fit, left unpinned "
                     f"(raise [cache].max_size or unpin others):")
        lines.extend(f"  {path}" for path in result["not_fitting"][:20])
        if len(result["not_fitting"]) > 20:
            lines.append(f"  ... and {len(result['not_fitting']) - 20} more")
    if result.get("skipped"):
        lines.append(f"{plural(len(result['skipped']), 'file')} skipped: no configured origin holds them")
        lines.extend(f"  {path}" for path in result["skipped"][:20])
    if result["failed"]:
        lines.append(f"{plural(len(result['failed']), 'file')} pinned but not all cached yet (fetched after "
                     f"the next rescan once their origin answers, or pin again):")
        lines.extend(f"  {item['path']}: {item['error']}" for item in result["failed"][:20])
    return lines
