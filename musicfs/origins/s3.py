"""The `s3` origin: objects under a prefix of a bucket (AWS S3, MinIO, Garage, moto...), boto3.

* One client per origin (boto3 clients are thread-safe) with ``connections`` pooled HTTP
  connections. botocore's own retries are off: transient failures (a connection refused, reset
  or timed out, a throttled or failing server) are retried by the shared rule of :mod:`.retry`,
  all attempts of a request within the origin's ``timeout``; each attempt is bounded by the
  client's connect and read timeouts (:func:`.retry.attempt_timeout`).
* S3 has no directories: a listing is ``list_objects_v2`` with ``Delimiter="/"`` under the
  prefix, its common prefixes being the folders, page after page (each page one request, so a
  failed page is retried alone).
* A file's version is its size and ETag (plus LastModified as its mtime). A read is a ranged GET
  of exactly the bytes needed with ``IfMatch`` on the ETag seen at scan time: an object replaced
  since is refused by the server (412) and becomes OriginChanged, never a mix of two objects.
  A sequential reader's chunks ahead come 32 to a GET (see ``span_chunks``), streamed: each
  chunk is handed out as soon as its bytes have arrived.
* Credentials come from the standard AWS chain (environment, ~/.aws, ``profile``), never from
  musicfs's config file; refused ones are a misconfiguration, never retried. Errors leave here
  as musicfs's (see :meth:`S3Origin._translate`).
"""
from __future__ import annotations

import errno
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions

from ..errors import (ConfigError, OriginChanged, OriginMisconfigured, OriginMissing, OriginTransient,
                      OriginUnavailable)
from .base import KIND_DIR, KIND_FILE, Origin, OriginEntry
from .retry import attempt_timeout, retrying

log = logging.getLogger(__name__)

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
# Refused credentials, each with what it means for the user.
_DENIED = {
    "InvalidAccessKeyId": "the server does not know the access key id",
    "SignatureDoesNotMatch": "the secret key does not match the access key id",
    "AccessDenied": "access denied", "403": "access denied",
    "AllAccessDisabled": "access denied (all access to the bucket is disabled)",
    "ExpiredToken": "the session token has expired", "InvalidToken": "the session token is not valid",
}
_CHANGED = {"PreconditionFailed", "412"}
# Answers that say "not now" rather than "no": overload, throttling, a server-side failure.
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestLimitExceeded",
                    "InternalError", "ServiceUnavailable", "TooManyRequests"}


def _code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _root_cause(error: BaseException) -> BaseException:
    """The socket error under botocore's and urllib3's wrappers of it."""
    cause = getattr(error, "kwargs", {}).get("error", error)
    seen = set()
    while id(cause) not in seen and (cause.__cause__ or cause.__context__) is not None:
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return cause


# Requests that may run beside the `connections` readers: the scanner's listing and its 4 tag
# readers (catalog.TAG_READERS) and the health check. Without room for them in the client's
# pool, urllib3 opens a connection for each request that finds it empty anyway and throws it
# away afterwards, with a "Connection pool is full" warning in the log.
BESIDE_READERS = 6


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class S3Origin(Origin):
    # A sequential reader's next chunks come in ranged GETs of 32 chunks, one or two in flight:
    # each request costs far more than its bytes (latency, and a price per request). Against
    # moto on loopback, 1 MiB GETs gave 25 MB/s through the mount and 8 MiB ones 108; 32 MiB
    # ones (3 GETs for a 32 MiB file instead of 5) 10-18 % more than 8 MiB ones, moto copying
    # the whole object for every GET. The body is streamed chunk by chunk: a span's size costs
    # no memory.
    readahead_chunks = 32
    span_chunks = 32
    prefetch_next_files = 4   # see Origin: each GET costs a request's latency

    def __init__(self, config):
        super().__init__(config.name)
        options = config.options
        self.bucket = options.bucket
        prefix = options.prefix.strip("/")
        self.prefix = prefix + "/" if prefix else ""
        self.endpoint_url = options.endpoint_url
        self.timeout = config.timeout
        self.attempt_timeout = attempt_timeout(config.timeout)
        try:
            session = boto3.session.Session(profile_name=options.profile) if options.profile \
                else boto3.session.Session()
        except botocore.exceptions.ProfileNotFound:
            raise ConfigError(f"origin {self.name}: profile {options.profile!r} is not in ~/.aws/config or "
                              f"~/.aws/credentials") from None
        self.client = session.client(
            "s3", endpoint_url=self.endpoint_url, region_name=options.region,
            config=botocore.config.Config(max_pool_connections=config.connections + BESIDE_READERS,
                                          # one attempt per call: retries are origins/retry.py's
                                          retries={"mode": "standard", "total_max_attempts": 1},
                                          connect_timeout=self.attempt_timeout,
                                          read_timeout=self.attempt_timeout))

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"{self.name} (s3://{self.bucket}/{self.prefix}{where})"

    # -- requests and their errors -------------------------------------------------------------

    def _request(self, key: str, call):
        """call() - one S3 request - with its errors translated and transient ones retried, all
        attempts within the origin's timeout."""
        def attempt(budget: float):   # the client's own timeouts bound an attempt to `budget`
            try:
                return call()
            except Exception as e:  # noqa: BLE001 - translated here
                raise self._translate(e, key) from None
        return retrying(attempt, deadline=time.monotonic() + self.timeout, attempt_timeout=self.attempt_timeout,
                        what=f"origin {self.name}")

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _translate(self, error: BaseException, key: str) -> BaseException:
        """botocore's errors as musicfs's: a missing key is ENOENT (a catalog change), a missing
        bucket or refused credentials a misconfiguration, a replaced object OriginChanged, a
        lost connection or a server saying "not now" OriginTransient (retried), the rest
        OriginUnavailable."""
        what = self._where(key)
        if isinstance(error, (OriginUnavailable, OriginChanged)):
            return error
        if isinstance(error, botocore.exceptions.ClientError):
            code = _code(error)
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "NoSuchBucket":
                return OriginMissing(f"bucket {self.bucket} does not exist")
            if code in _NOT_FOUND:
                return FileNotFoundError(errno.ENOENT, f"{what}: no such object")
            if code in _DENIED:
                policy = " and the bucket policy" if code in ("AccessDenied", "403") else ""
                return OriginMisconfigured(
                    f"credentials refused: {_DENIED[code]} ({code}); check AWS_ACCESS_KEY_ID / "
                    f"AWS_SECRET_ACCESS_KEY, ~/.aws/credentials or the origin's profile{policy}")
            if code in _CHANGED:
                return OriginChanged(f"{what} changed since it was catalogued (ETag)")
            if code in _TRANSIENT_CODES or status == 429 or status >= 500:
                return OriginTransient(f"{what}: {code or status}")
            return OriginUnavailable(f"{what}: {code or error}")
        if isinstance(error, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
            return OriginMisconfigured(f"no usable AWS credentials ({error}); set AWS_ACCESS_KEY_ID and "
                                       f"AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, or profile")
        if isinstance(error, botocore.exceptions.EndpointConnectionError):
            where = urlsplit(error.kwargs.get("endpoint_url") or self.endpoint_url or "").netloc or "the endpoint"
            cause = _root_cause(error)
            if isinstance(cause, ConnectionRefusedError):
                return OriginTransient(f"connection refused at {where}: check endpoint_url, or start the S3 "
                                       f"server")
            if isinstance(cause, socket.gaierror) and cause.errno != socket.EAI_AGAIN:
                # a name that does not resolve: a typo more likely than an outage
                return OriginMisconfigured(f"cannot resolve the host of {where} ({cause.strerror or cause}); "
                                           f"check endpoint_url")
            return OriginTransient(f"cannot connect to {where} ({getattr(cause, 'strerror', None) or cause})")
        if isinstance(error, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError,
                              botocore.exceptions.IncompleteReadError, urllib3.exceptions.HTTPError, OSError)):
            # timed out, reset, closed before the body ended
            return OriginTransient(f"{what}: {error}")
        if isinstance(error, botocore.exceptions.BotoCoreError):
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
        marked = False
        request = {"Bucket": self.bucket, "Prefix": base, "Delimiter": "/"}
        while True:
            page = self._request(base, lambda: self.client.list_objects_v2(**request))
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(base):].rstrip("/")
                if name:
                    entries.append(OriginEntry(name.encode("utf-8", "surrogateescape"), KIND_DIR, 0, 0))
            for item in page.get("Contents", []):
                name = item["Key"][len(base):]
                if not name:
                    marked = True   # the folder's own marker object: the folder exists, maybe empty
                    continue
                if "/" in name:
                    continue
                entries.append(OriginEntry(name.encode("utf-8", "surrogateescape"), KIND_FILE, item["Size"],
                                           int(item["LastModified"].timestamp() * 1e9),
                                           token=self._etag(item.get("ETag"))))
            if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                break
            request["ContinuationToken"] = page["NextContinuationToken"]
        if relpath and not entries and not marked:
            raise FileNotFoundError(errno.ENOENT, f"origin {self.name}: no objects under {base}")
        return entries

    def _head(self, key: str) -> OriginEntry:
        head = self._request(key, lambda: self.client.head_object(Bucket=self.bucket, Key=key))
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
        if size <= 0:
            return b""
        key = self._key(relpath)
        # the body is read inside the attempt: a connection lost mid-body is retried
        response, data = self._get(key, offset, size, expect,
                                   lambda response: _Answer(response, self.timeout, self._where(key)).take(size))
        return data

    def read_pieces(self, relpath: bytes, offset: int, lengths: list[int],
                    expect: OriginEntry | None = None) -> Iterator[bytes]:
        """One ranged GET, its body handed out piece by piece as it arrives (a reader waits for
        its chunk, not for the whole span). A failure mid-body ends the pieces, not retried:
        the pieces already handed out are good, and the reader fetches the rest on its own."""
        key = self._key(relpath)
        response, body = self._get(key, offset, sum(lengths), expect, lambda response: response["Body"])
        answer = _Answer(response, self.timeout, self._where(key))
        try:
            for length in lengths:
                yield answer.take(length)
        except Exception as e:  # noqa: BLE001 - translated here
            raise self._translate(e, key) from None
        finally:
            body.close()

    def _get(self, key: str, offset: int, size: int, expect: OriginEntry | None, take):
        """(response, take(body)) of a ranged GET of exactly that version of the object: If-Match
        on the catalogued ETag (a replaced object is refused: 412), and the object's total size
        from Content-Range checked against the catalogued one."""
        request = {"Bucket": self.bucket, "Key": key, "Range": f"bytes={offset}-{offset + size - 1}"}
        if expect is not None and expect.token:
            request["IfMatch"] = '"' + expect.token.decode() + '"'

        def get():
            response = self.client.get_object(**request)
            try:
                self._check_range(response, key, offset, size, expect)
            except BaseException:
                response["Body"].close()
                raise
            return response, take(response)
        try:
            return self._request(key, get)
        except OriginChanged as error:
            if error.current is None:
                try:
                    error.current = self._head(key)
                except FileNotFoundError:
                    pass
            raise

    def _check_range(self, response: dict, key: str, offset: int, size: int, expect: OriginEntry | None) -> None:
        """The answer to a ranged GET must be those bytes: a 206 whose Content-Range starts at
        `offset` (and ends there or at the object's end), or a 200 with the whole object when
        that is what was asked. A server, or a proxy in front of it, that ignores Range answers
        200 with the object from its start, whose bytes must never be taken for the range's."""
        content_range = _CONTENT_RANGE.fullmatch(response.get("ContentRange") or "")
        if content_range is None:
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if offset == 0 and response.get("ContentLength") == size and (expect is None or expect.size == size):
                return
            raise OriginUnavailable(f"{self._where(key)}: a ranged GET was answered with status {status} and no "
                                    f"Content-Range: the server, or a proxy in front of it, does not do ranges")
        start, end, total = content_range.groups()
        if expect is not None and total != "*" and int(total) != expect.size:
            raise OriginChanged(f"{self._where(key)} on origin {self.name} changed size since it was catalogued")
        if int(start) != offset or int(end) != (min(offset + size, int(total)) if total != "*" else offset + size) - 1:
            raise OriginUnavailable(f"{self._where(key)}: asked for bytes {offset}-{offset + size - 1}, the server "
                                    f"answered {response['ContentRange']}")

    def check(self) -> None:
        # One listing, not HEAD bucket: a HEAD's error has no body, so refused credentials would
        # be a bare "403" instead of InvalidAccessKeyId or SignatureDoesNotMatch.
        listed = self._request(self.prefix, lambda: self.client.list_objects_v2(
            Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1))
        if self.prefix and not listed.get("KeyCount"):   # a mistyped prefix: an empty library, silently
            raise OriginMissing(f"no objects under prefix {self.prefix!r} in bucket {self.bucket}")

    def close(self) -> None:
        self.client.close()


class _Answer:
    """A GET's body, taken piece by piece, each within the origin's timeout: a server that
    trickles its answer out, every packet in time for the socket's timeout, would otherwise
    hold the worker (and a span's chunks) as long as it likes. urllib3's read1 returns what one
    receive brought, so the time is looked at between receives; botocore keeps urllib3's
    response in a private attribute, and without it the body's own read (which waits for all
    the bytes asked for) is what is left. A body that ends before its Content-Length is a lost
    connection, not the object's end."""

    def __init__(self, response: dict, timeout: float, what: str):
        body = response["Body"]
        self._read = getattr(getattr(body, "_raw_stream", None), "read1", None) or body.read
        self.left = response.get("ContentLength")
        self.timeout = timeout
        self.what = what

    def take(self, length: int) -> bytes:
        """The next `length` bytes (fewer only where the body ends)."""
        if self.left is not None:
            length = min(length, self.left)
        deadline = time.monotonic() + self.timeout
        parts, got = [], 0
        while got < length:
            if time.monotonic() > deadline:
                raise OriginTransient(f"{self.what}: less than {length} bytes came in {self.timeout:g}s")
            part = self._read(length - got)
            if not part:
                if self.left is not None:
                    raise OriginTransient(f"{self.what}: the connection closed {self.left - got} bytes "
                                          f"before the end of the answer")
                break
            parts.append(part)
            got += len(part)
        if self.left is not None:
            self.left -= got
        return b"".join(parts)
