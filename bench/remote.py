"""Remote origins in `make bench`: musicfs's sftp and s3 origins against the tools a user would
mount the same servers with, in one run: sshfs and rclone (sftp) on one OpenSSH sshd on
loopback, rclone (s3) on one SeaweedFS S3 server. The servers are the test suite's (testkit.servers).

Workloads: first read of the large files (empty caches), the same read again with the page
cache dropped (musicfs and rclone from their disk caches, sshfs from the server again), and a
header scan (open + read 4 KiB) of a 2,000-file library, cold. Beside each read's MB/s, the CPU
seconds per GB of the mount's own processes (the FUSE daemon and its children, e.g. sshfs's
ssh). sshfs runs twice: with its default cipher and with AES-GCM ("sshfs-gcm"), the cipher
musicfs prefers, so the sftp rows compare like with like.

`python -m bench.remote` (`make bench-remote`) runs this part alone, on the large files of the
last `make bench` (or new ones). Loopback has no latency of its
own, so these figures compare the stacks' own costs, not a real network's: with
BENCH_REMOTE_DELAY_MS=D every peer reaches both servers through a proxy that delays each
direction by D milliseconds (bench/latency.py; D=0.5 is a 1 ms round trip, a LAN).

BENCH_BASELINE=REV (a git revision, e.g. main) also runs musicfs as of REV, side by side
on the same servers in the same run ("musicfs-sftp@REV"): before/after figures of a change
that a shared, noisy machine cannot give from two separate runs.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from testkit.configs import toml_config
from testkit.library import make_library
from testkit.servers import SeaweedServer, SshServer

from .common import (MUSICFS, REPEAT, ROOT, baseline_tree, drop_caches, ensure_installed, header_scan, read_tree,
                     sh, unmount, wait_mounted)
from .latency import DelayProxy

REMOTE_FILES = 2000


class Remote:
    """A mount of a remote library by one tool."""
    name = "?"

    def __init__(self, work: Path, mnt: Path):
        self.work = work
        self.mnt = mnt
        self.proc = None

    def mount(self, fresh_cache=False) -> Path:
        raise NotImplementedError

    def unmount(self):
        unmount(self.mnt)
        if self.proc:
            self.proc.wait(30)
            self.proc = None


class Sshfs(Remote):
    name = "sshfs"

    def __init__(self, work, mnt, sshd: SshServer, path: Path, cipher: str | None = None):
        super().__init__(work, mnt)
        self.sshd, self.path, self.cipher = sshd, path, cipher
        self.name = mnt.name   # sshfs-TAG, sshfs-gcm-TAG: the row is the name without its tag

    def mount(self, fresh_cache=False):
        self.mnt.mkdir(parents=True, exist_ok=True)
        sh("sshfs", "-o", f"ro,port={self.sshd.port},IdentityFile={self.sshd.key_file},"
           f"UserKnownHostsFile={self.sshd.known_hosts},StrictHostKeyChecking=yes"
           + (f",Ciphers={self.cipher}" if self.cipher else ""),
           f"root@127.0.0.1:{self.path}", self.mnt)
        wait_mounted(self.mnt)
        return self.mnt


class RcloneRemote(Remote):
    def __init__(self, work, mnt, name: str, remote: str, flags: list[str]):
        super().__init__(work, mnt)
        self.name, self.remote, self.flags = name, remote, flags

    def mount(self, fresh_cache=False):
        self.mnt.mkdir(parents=True, exist_ok=True)
        cache = self.work / "cache" / self.name
        if fresh_cache:
            shutil.rmtree(cache, ignore_errors=True)
        # rclone's S3 backend refuses a custom CA bundle on a plain-HTTP endpoint; some machines set one
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        self.proc = subprocess.Popen(["rclone", "mount", self.remote, str(self.mnt), "--read-only",
                                      "--vfs-cache-mode", "full", "--cache-dir", str(cache), *self.flags],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_mounted(self.mnt)
        return self.mnt


class MusicfsRemote(Remote):
    def __init__(self, work, mnt, name: str, origin: dict, tree: Path | None = None):
        super().__init__(work, mnt)
        self.name, self.origin = name, origin
        self.tree = tree    # a source tree of musicfs to run instead of this one (a baseline)

    def mount(self, fresh_cache=False):
        self.mnt.mkdir(parents=True, exist_ok=True)
        cache = self.work / "cache" / self.name
        if fresh_cache:
            shutil.rmtree(cache, ignore_errors=True)
        config = self.work / f"{self.name}.toml"
        text = toml_config([], cache, self.work / f"{self.name}.log", max_size="10G", level="warning")
        text += "[[origins]]\n" + "".join(f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v}\n"
                                          for k, v in self.origin.items())
        config.write_text(text)
        # `python -m` imports musicfs from its working directory first
        sh(*MUSICFS, self.mnt, "-c", config, cwd=self.tree or ROOT)
        return self.mnt

    def unmount(self):
        sh(*MUSICFS, "unmount", self.mnt, cwd=self.tree or ROOT, check=False)


def serving_cpu_seconds(mnt: Path) -> float:
    """CPU time (user + system) of the processes serving `mnt`: those whose command line names
    it, and their descendants (sshfs's ssh)."""
    parents, cmdlines = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdlines[int(pid)] = f.read().split(b"\0")
        except OSError:
            continue
        parents[int(pid)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    target = os.fsencode(str(mnt))
    serving = {pid for pid, args in cmdlines.items() if target in args}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in parents.items() if ppid in serving} - serving
        serving |= children
        grew = bool(children)
    return sum(parents[pid][1] for pid in serving if pid in parents) / os.sysconf("SC_CLK_TCK")


def _read_with_cpu(root: Path, mnt: Path, mb: float) -> tuple[float, float]:
    """(MB/s, CPU seconds per GB of the mount's processes) of reading every large file once."""
    cpu = serving_cpu_seconds(mnt)
    started = time.perf_counter()
    read_tree(root)
    elapsed = time.perf_counter() - started
    return mb / elapsed, (serving_cpu_seconds(mnt) - cpu) / (mb / 1000)


def run(rows: dict, big: Path, work: Path) -> None:
    """Add the remote rows (keys r_*) to `rows`."""
    if not (ensure_installed("rclone", "rclone") and ensure_installed("sshd", "openssh-server")):
        print("skipping remote origins: needs sshd (openssh-server) and rclone")
        return
    have_sshfs = ensure_installed("sshfs", "sshfs")
    small = work / f"remote-small-{REMOTE_FILES}"
    if not small.exists():
        make_library(small / "tmp", REMOTE_FILES, size=8192, seed=5)
        (small / "tmp").rename(small / "lib")
    mb = sum(p.stat().st_size for p in big.rglob("*.flac")) / 1e6
    sshd = SshServer(work / "servers").start()
    shutil.rmtree(work / "servers" / "seaweedfs", ignore_errors=True)   # (a bench starts empty)
    s3 = SeaweedServer(work / "servers")
    os.environ.update(AWS_ACCESS_KEY_ID=s3.IDENTITY[0], AWS_SECRET_ACCESS_KEY=s3.IDENTITY[1],
                      AWS_DEFAULT_REGION="us-east-1")
    s3.start()
    proxies = []
    try:
        client = s3.client()
        for bucket, root in (("big", big), ("small", small / "lib")):
            client.create_bucket(Bucket=bucket)
            s3.upload(bucket, "", root)
        delay_ms = float(os.environ.get("BENCH_REMOTE_DELAY_MS", "0"))
        if delay_ms:
            print(f"(remote peers reach the servers through a {delay_ms:g} ms delay each way)")
            proxies = [DelayProxy(sshd.port, delay_ms / 1000).start(), DelayProxy(s3.port, delay_ms / 1000).start()]
            # every peer below is given the proxies' addresses; the host key is the server's
            host_key = Path(f"{sshd.host_key}.pub").read_text().split()
            with open(sshd.known_hosts, "a") as f:
                f.write(f"[127.0.0.1]:{proxies[0].port} {host_key[0]} {host_key[1]}\n")
            sshd.port, s3.url = proxies[0].port, f"http://127.0.0.1:{proxies[1].port}"
        sftp_flags = ["--sftp-host", "127.0.0.1", "--sftp-port", str(sshd.port), "--sftp-user", "root",
                      "--sftp-key-file", str(sshd.key_file), "--sftp-known-hosts-file", str(sshd.known_hosts)]
        s3_flags = ["--s3-provider", "Other", "--s3-endpoint", s3.url, "--s3-access-key-id", "testing",
                    "--s3-secret-access-key", "testing", "--s3-region", "us-east-1"]
        baseline = baseline_tree(work)

        def musicfs(kind, tag, origin):
            peers = [MusicfsRemote(work, work / "mnt" / f"musicfs-{kind}-{tag}", f"musicfs-{kind}-{tag}", origin)]
            if baseline:
                revision, tree = baseline
                peers.append(MusicfsRemote(work, work / "mnt" / f"musicfs-{kind}-base-{tag}",
                                           f"musicfs-{kind}@{revision}-{tag}", origin, tree))
            return peers
        for kind, peers in (
            ("sftp", lambda root, tag: [
                *([Sshfs(work, work / "mnt" / f"sshfs-{tag}", sshd, root),
                   Sshfs(work, work / "mnt" / f"sshfs-gcm-{tag}", sshd, root, "aes128-gcm@openssh.com")]
                  if have_sshfs else []),
                RcloneRemote(work, work / "mnt" / f"rclone-sftp-{tag}", f"rclone-sftp-{tag}", f":sftp:{root}",
                             sftp_flags),
                *musicfs("sftp", tag, {**sshd.origin_table("ssh", root), "timeout": 30})]),
            ("s3", lambda root, tag: [
                RcloneRemote(work, work / "mnt" / f"rclone-s3-{tag}", f"rclone-s3-{tag}", f":s3:{tag}", s3_flags),
                *musicfs("s3", tag, {**s3.origin_table("bucket", tag), "timeout": 30})]),
        ):
            print(f"== remote: {kind}")
            for peer in peers(big, "big"):
                label = peer.name.rsplit("-", 1)[0]
                r = rows.setdefault(label, {})
                drop_caches()
                root = peer.mount(fresh_cache=True)
                speed, cpu = _read_with_cpu(root, peer.mnt, mb)
                r[f"r_{kind}_first_MBps"] = (speed, speed)
                r[f"r_{kind}_first_cpu_s_per_GB"] = (cpu, cpu)
                rereads = []
                for _ in range(REPEAT):
                    drop_caches()
                    rereads.append(_read_with_cpu(root, peer.mnt, mb))
                rereads.sort(reverse=True)
                r[f"r_{kind}_reread_MBps"] = (rereads[0][0], statistics.median(s for s, _ in rereads))
                r[f"r_{kind}_reread_cpu_s_per_GB"] = (rereads[0][1], statistics.median(c for _, c in rereads))
                peer.unmount()
            for peer in peers(small / "lib" if kind == "sftp" else "small", "small"):
                label = peer.name.rsplit("-", 1)[0]
                root = peer.mount(fresh_cache=True)
                drop_caches()
                started = time.perf_counter()
                header_scan(root)
                rows[label][f"r_{kind}_scan_2k_cold_s"] = (time.perf_counter() - started,) * 2
                peer.unmount()
    finally:
        for proxy in proxies:
            proxy.stop()
        s3.stop()
        sshd.stop()


def report(rows: dict) -> None:
    def ratio(metric, a, b, higher=True):
        if metric in rows.get(a, {}) and metric in rows.get(b, {}):
            x, y = rows[a][metric][0], rows[b][metric][0]
            print(f"  {metric:24} {a} vs {b}: {(x / y if higher else y / x):6.2f}x")
    if not any(k.startswith("r_") for r in rows.values() for k in r):
        return
    print("\nremote origins (>1 means musicfs is better; targets: sftp first read >= 1.0x sshfs, re-read "
          ">= 3x sshfs, 2k scan <= 1.0x sshfs time; s3 first read >= 1.0x rclone, re-read >= 1.5x):")
    baselines = sorted({name.split("@", 1)[1] for name in rows if "@" in name})
    for metric in ("r_sftp_first_MBps", "r_sftp_reread_MBps"):
        ratio(metric, "musicfs-sftp", "sshfs")
        ratio(metric, "musicfs-sftp", "sshfs-gcm")
        ratio(metric, "musicfs-sftp", "rclone-sftp")
        for revision in baselines:
            ratio(metric, f"musicfs-sftp@{revision}", "sshfs")
    ratio("r_sftp_scan_2k_cold_s", "musicfs-sftp", "sshfs", higher=False)
    ratio("r_sftp_scan_2k_cold_s", "musicfs-sftp", "sshfs-gcm", higher=False)
    ratio("r_sftp_scan_2k_cold_s", "musicfs-sftp", "rclone-sftp", higher=False)
    for revision in baselines:
        ratio("r_sftp_scan_2k_cold_s", f"musicfs-sftp@{revision}", "sshfs", higher=False)
    for metric in ("r_s3_first_MBps", "r_s3_reread_MBps", "r_s3_scan_2k_cold_s"):
        ratio(metric, "musicfs-s3", "rclone-s3", higher=metric != "r_s3_scan_2k_cold_s")
        for revision in baselines:
            ratio(metric, f"musicfs-s3@{revision}", "rclone-s3", higher=metric != "r_s3_scan_2k_cold_s")


def main() -> None:
    from .common import WORK, big_library, print_table
    rows: dict = {}
    run(rows, big_library(), WORK)
    print_table(rows)
    report(rows)


if __name__ == "__main__":
    main()
