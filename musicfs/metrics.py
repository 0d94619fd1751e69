"""`musicfs health --prometheus FILE`: the cron probe's verdict as node_exporter textfile metrics.

The file is written atomically (prometheus_client's ``write_to_textfile``: a temporary file
beside FILE, renamed over it), so node_exporter never reads half of it. Its textfile collector
reads only ``*.prom`` files. The file is written whatever the verdict, CRITICAL and UNKNOWN
included: alerting on those is what it is for. A value the probe could not learn (the latency
of an origin that does not answer, the index of a cache disk that hangs) has no sample rather
than a made-up 0.

Every series has a ``mountpoint`` label (the mount checked, or the one the daemon published;
empty when neither is known), so several musicfs on one host can each write a file into the
same directory. Names follow Prometheus's conventions: a ``musicfs_`` prefix, base units
(seconds, bytes), ``_total`` for counters, timestamps in unix seconds.

=============================================  =================================================
metric                                         meaning
=============================================  =================================================
musicfs_up                                     1 while the daemon's process is alive
musicfs_probe_status                           the plugin's exit code: 0 OK, 1 WARNING,
                                               2 CRITICAL, 3 UNKNOWN
musicfs_probe_duration_seconds                 how long the probe took
musicfs_mount_up                               1 if the mountpoint is mounted and answered a
                                               statvfs in time
musicfs_origin_up{origin}                      1 if the origin is healthy (a degraded one failed a check)
musicfs_origin_state{origin,state}             1 for its state (healthy, degraded, unhealthy)
musicfs_origin_latency_seconds{origin}         its last check's answer time (no sample when
                                               it does not answer)
musicfs_origin_last_scan_timestamp_seconds     when its last complete scan ended (alert on
  {origin}                                     ``time() - ...``)
musicfs_cache_bytes                            chunk bytes in the cache (the index total)
musicfs_cache_max_bytes                        [cache].max_size
musicfs_cache_pinned_bytes                     bytes held by pins (0 when nothing is pinned)
musicfs_cache_free_disk_bytes                  free space on the cache disk
musicfs_cache_writable                         1 if a file could be written in the cache dir
musicfs_passthrough                            1 while reads pass through, uncached
musicfs_cache_hits_total                       chunk lookups served from the cache (the daemon
musicfs_cache_misses_total                     adds its counts to the index every 5 s)
=============================================  =================================================
"""
from __future__ import annotations

import os
import sys

from .health.monitor import DEGRADED, HEALTHY, UNHEALTHY
from .health.probe import UNKNOWN, Verdict

ORIGIN_STATES = (HEALTHY, DEGRADED, UNHEALTHY)


def mountpoint_label(verdict: Verdict | None, mountpoint=None) -> str:
    """The mount the verdict is about: the one checked, else the daemon's, else the argument."""
    if verdict is not None:
        if verdict.mount and verdict.mount.get("mountpoint"):
            return str(verdict.mount["mountpoint"])
        if verdict.daemon and verdict.daemon.get("mountpoint"):
            return str(verdict.daemon["mountpoint"])
    return os.path.abspath(mountpoint) if mountpoint is not None else ""


def metric_families(verdict: Verdict | None, mountpoint: str) -> list:
    """The metric families of one verdict; with no verdict (the probe itself failed: bad
    config, internal error) only musicfs_probe_status = UNKNOWN."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    def gauge(name, documentation, value):
        family = GaugeMetricFamily(name, documentation, labels=["mountpoint"])
        if value is not None:
            family.add_metric([mountpoint], float(value))
        return family

    code = verdict.code if verdict is not None else UNKNOWN
    families = [gauge("musicfs_probe_status", "The health probe's verdict: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
                      code)]
    if verdict is None:
        return families
    families.append(gauge("musicfs_probe_duration_seconds", "How long the health probe took.", verdict.seconds))
    daemon = verdict.daemon or {}
    families.append(gauge("musicfs_up", "1 while the musicfs daemon's process is alive.",
                          int(bool(daemon.get("running")))))
    if verdict.mount is not None:
        families.append(gauge("musicfs_mount_up", "1 if the mountpoint is mounted and answered a statvfs in time.",
                              int(bool(verdict.mount.get("answers") and verdict.mount.get("mounted")))))

    per_origin = {
        "up": GaugeMetricFamily("musicfs_origin_up", "1 if the origin is healthy (degraded: it failed a check).",
                                labels=["mountpoint", "origin"]),
        "state": GaugeMetricFamily("musicfs_origin_state", "1 for the origin's state, 0 for the others.",
                                   labels=["mountpoint", "origin", "state"]),
        "latency": GaugeMetricFamily("musicfs_origin_latency_seconds",
                                     "How long the origin's last successful check took.",
                                     labels=["mountpoint", "origin"]),
        "scan": GaugeMetricFamily("musicfs_origin_last_scan_timestamp_seconds",
                                  "When the origin's last complete scan ended (unix time).",
                                  labels=["mountpoint", "origin"]),
    }
    for origin in verdict.origins:
        per_origin["up"].add_metric([mountpoint, origin.name], float(origin.status == HEALTHY))
        for state in ORIGIN_STATES:
            per_origin["state"].add_metric([mountpoint, origin.name, state], float(origin.status == state))
        if origin.latency is not None:
            per_origin["latency"].add_metric([mountpoint, origin.name], float(origin.latency))
        if origin.last_scan is not None:
            per_origin["scan"].add_metric([mountpoint, origin.name], float(origin.last_scan))
    families.extend(per_origin.values())

    cache = verdict.cache or {}
    if cache:
        families += [
            gauge("musicfs_cache_bytes", "Bytes of chunks in the cache (the index total).", cache.get("bytes")),
            gauge("musicfs_cache_max_bytes", "The cache's size limit ([cache].max_size).", cache.get("max_bytes")),
            gauge("musicfs_cache_pinned_bytes", "Bytes of cached chunks held by pins.", cache.get("pinned_bytes")),
            gauge("musicfs_cache_free_disk_bytes", "Free space on the cache disk.", cache.get("free_bytes")),
            gauge("musicfs_cache_writable", "1 if a file could be written in the cache dir.",
                  int(bool(cache.get("writable")))),
            gauge("musicfs_passthrough", "1 while reads pass through to the origins without caching.",
                  int(bool(cache.get("passthrough")))),
        ]
        for name, documentation, key in (
                ("musicfs_cache_hits", "Chunk lookups served from the cache.", "hits"),
                ("musicfs_cache_misses", "Chunk lookups that went to an origin.", "misses")):
            counter = CounterMetricFamily(name, documentation, labels=["mountpoint"])
            if cache.get(key) is not None:
                counter.add_metric([mountpoint], float(cache[key]))
            families.append(counter)
    return families


class _Families:
    """A prometheus_client collector yielding fixed families (the values come from the probe,
    not from live instruments)."""

    def __init__(self, families: list):
        self.families = families

    def collect(self):
        return iter(self.families)


def write_textfile(path, verdict: Verdict | None, mountpoint=None) -> None:
    """Write the verdict's metrics to `path`, atomically. Raises OSError."""
    # Imported here: the probe without --prometheus does not pay for it.
    from prometheus_client import CollectorRegistry, write_to_textfile

    registry = CollectorRegistry()
    registry.register(_Families(metric_families(verdict, mountpoint_label(verdict, mountpoint))))
    write_to_textfile(os.fspath(path), registry)


def write_textfile_or_warn(path, verdict: Verdict | None, mountpoint=None) -> str | None:
    """write_textfile, turning a failure into one line on stderr (returned too). The plugin's
    exit code is left alone: it says how musicfs is, not whether its metrics could be written;
    a file that stops being updated shows in node_exporter's node_textfile_mtime_seconds."""
    if path is None:
        return None
    try:
        write_textfile(path, verdict, mountpoint)
    except OSError as e:
        problem = f"metrics not written to {path}: {e.strerror or e}"
    except Exception as e:  # noqa: BLE001 - the verdict must still be printed and exit with its code
        problem = f"metrics not written to {path}: {type(e).__name__}: {e}"
    else:
        return None
    sys.stderr.write(f"musicfs: {problem}\n")
    sys.stderr.flush()
    return problem
