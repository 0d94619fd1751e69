"""The `s3` origin: objects under a prefix of a bucket (AWS S3, MinIO, Garage, moto...), boto3.

* One client per origin (boto3 clients are thread-safe) with ``connections`` pooled HTTP
  connections, botocore's "standard" retry mode, and the origin's ``timeout`` for connecting and
  for each read from the socket.
* S3 has no directories: a listing is ``list_objects_v2`` with ``Delimiter="/"`` under the
  prefix, its common prefixes being the folders (paginated, any size).
* A file's version is its size and ETag (plus LastModified as its mtime). A read is a ranged GET
  of exactly the bytes needed with ``IfMatch`` on the ETag seen at scan time: an object replaced
  since is refused by the server (412) and becomes OriginChanged, never a mix of two objects.
* Credentials come from the standard AWS chain (environment, ~/.aws, ``profile``), never from
  musicfs's config file. Errors leave here as musicfs's (see :func:`_translate`).
"""
from __future__ import annotations

import errno
import logging
import os

import boto3
import botocore.config
import botocore.exceptions

from ..errors import ConfigError, OriginChanged, OriginMisconfigured, OriginMissing, OriginUnavailable
from .base import KIND_DIR, KIND_FILE, Origin, OriginEntry

log = logging.getLogger(__name__)

ATTEMPTS = 2   # botocore's standard retry mode: one retry of a throttled or failed request
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "AllAccessDisabled"}
_CHANGED = {"PreconditionFailed", "412"}


def _code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class S3Origin(Origin):
    readahead_chunks = 6   # several requests in flight: a round trip, not bandwidth, is the limit

    def __init__(self, config):
        super().__init__(config.name)
        options = config.options
        self.bucket = options["bucket"]
        prefix = options.get("prefix", "").strip("/")
        self.prefix = prefix + "/" if prefix else ""
        self.endpoint_url = options.get("endpoint_url")
        try:
            session = boto3.session.Session(profile_name=options.get("profile")) if options.get("profile") \
                else boto3.session.Session()
        except botocore.exceptions.ProfileNotFound:
            raise ConfigError(f"origin {self.name}: profile {options['profile']!r} is not in ~/.aws/config or "
                              f"~/.aws/credentials") from None
        # `timeout` bounds a whole request, retries included: each of the attempts gets its share.
        per_attempt = max(config.timeout / ATTEMPTS, 1.0)
        self.client = session.client(
            "s3", endpoint_url=self.endpoint_url, region_name=options.get("region"),
            config=botocore.config.Config(max_pool_connections=config.connections,
                                          retries={"mode": "standard", "max_attempts": ATTEMPTS},
                                          connect_timeout=per_attempt, read_timeout=per_attempt))

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"{self.name} (s3://{self.bucket}/{self.prefix}{where})"

    # -- errors --------------------------------------------------------------------------------

    def _translate(self, error: BaseException, key: str) -> BaseException:
        """botocore's errors as musicfs's: a missing key is ENOENT (a catalog change), a missing
        bucket or refused credentials a misconfiguration, a replaced object OriginChanged, the
        rest of the transport OriginUnavailable."""
        what = f"s3://{self.bucket}/{key}"
        if isinstance(error, botocore.exceptions.ClientError):
            code = _code(error)
            if code == "NoSuchBucket":
                return OriginMissing(f"bucket {self.bucket} does not exist")
            if code in _NOT_FOUND:
                return FileNotFoundError(errno.ENOENT, f"{what}: no such object")
            if code in _DENIED:
                return OriginMisconfigured(f"{what}: access refused ({code}); check the credentials "
                                           f"(AWS environment, ~/.aws, profile) and the bucket policy")
            if code in _CHANGED:
                return OriginChanged(f"{what} changed since it was catalogued (ETag)")
            return OriginUnavailable(f"{what}: {code or error}")
        if isinstance(error, botocore.exceptions.NoCredentialsError):
            return OriginMisconfigured(f"{what}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
                                       f"AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, or profile)")
        if isinstance(error, (botocore.exceptions.BotoCoreError, OSError)):
            return OriginUnavailable(f"{what}: {error}")
        return error

    # -- the origin interface ------------------------------------------------------------------

    def _key(self, relpath: bytes) -> str:
        rel = relpath.decode("utf-8", "surrogateescape")
        if rel.startswith("/") or "/../" in f"/{rel}/":
            raise OriginUnavailable(f"refusing path outside origin {self.name}: {rel!r}")
        return self.prefix + rel

    @staticmethod
    def _etag(value: str | None) -> bytes:
        return (value or "").strip('"').encode()

    def list_dir(self, relpath: bytes) -> list[OriginEntry]:
        base = self._key(relpath)
        base = base + "/" if relpath else base
        entries = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base,
                                                                           Delimiter="/")
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    name = common["Prefix"][len(base):].rstrip("/")
                    if name:
                        entries.append(OriginEntry(name.encode("utf-8", "surrogateescape"), KIND_DIR, 0, 0))
                for item in page.get("Contents", []):
                    name = item["Key"][len(base):]
                    if not name or "/" in name:
                        continue   # the folder's own marker object
                    entries.append(OriginEntry(name.encode("utf-8", "surrogateescape"), KIND_FILE, item["Size"],
                                               int(item["LastModified"].timestamp() * 1e9),
                                               token=self._etag(item.get("ETag"))))
        except Exception as e:  # noqa: BLE001 - translated below
            raise self._translate(e, base) from None
        if relpath and not entries:
            raise FileNotFoundError(errno.ENOENT, f"origin {self.name}: no objects under {base}")
        return entries

    def _head(self, key: str) -> OriginEntry:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as e:  # noqa: BLE001 - translated below
            raise self._translate(e, key) from None
        return OriginEntry(os.path.basename(key).encode("utf-8", "surrogateescape"), KIND_FILE,
                           head["ContentLength"], int(head["LastModified"].timestamp() * 1e9),
                           token=self._etag(head.get("ETag")))

    def stat(self, relpath: bytes) -> OriginEntry:
        try:
            return self._head(self._key(relpath))
        except FileNotFoundError:
            if self.list_dir(relpath):   # FileNotFoundError again if nothing is under it either
                return OriginEntry(os.path.basename(relpath), KIND_DIR, 0, 0)
            raise

    def read(self, relpath: bytes, offset: int, size: int, expect: OriginEntry | None = None) -> bytes:
        key = self._key(relpath)
        if size <= 0:
            return b""
        request = {"Bucket": self.bucket, "Key": key, "Range": f"bytes={offset}-{offset + size - 1}"}
        if expect is not None and expect.token:
            request["IfMatch"] = '"' + expect.token.decode() + '"'
        try:
            response = self.client.get_object(**request)
            data = response["Body"].read()
        except Exception as e:  # noqa: BLE001 - translated below
            error = self._translate(e, key)
            if isinstance(error, OriginChanged):
                try:
                    error.current = self._head(key)
                except FileNotFoundError:
                    error.current = None
            raise error from None
        if expect is not None and response.get("ContentRange"):
            total = int(response["ContentRange"].rpartition("/")[2] or -1)
            if total != expect.size:
                raise OriginChanged(f"s3://{self.bucket}/{key} on origin {self.name} changed size since it was "
                                    f"catalogued", self._head(key))
        return data

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            if self.prefix:   # a mistyped prefix would otherwise be an empty library, silently
                listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
                if not listed.get("KeyCount"):
                    raise OriginMissing(f"no objects under prefix {self.prefix!r} in bucket {self.bucket}")
        except botocore.exceptions.ClientError as e:
            if _code(e) in ("404", "NoSuchBucket", "NotFound"):
                raise OriginMissing(f"bucket {self.bucket} does not exist") from None
            raise self._translate(e, self.prefix) from None
        except OriginMissing:
            raise
        except Exception as e:  # noqa: BLE001 - translated below
            raise self._translate(e, self.prefix) from None

    def close(self) -> None:
        self.client.close()
