"""One URI layer over local paths and ``s3://bucket/key``: atomic writes, listing, retries, a local cache.

Every function takes a local path (``str`` or ``os.PathLike``, ``file://`` accepted) or an S3 URI. S3 goes
through boto3 (``pip install 'facetrack[s3]'``), which reads the endpoint, region and credentials from the
usual AWS places: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the shared config files, or an instance/pod role. ``AWS_REGION``
is honoured as well as ``AWS_DEFAULT_REGION``.

S3 calls are retried with exponential backoff and jitter on throttling (SlowDown, 503, ...) and on
connection errors and timeouts: ``FACETRACK_S3_RETRIES`` (default 10) retries within
``FACETRACK_S3_RETRY_SECONDS`` (default 60) seconds. A read that loses its connection mid-stream resumes
with a ranged request from where it stopped. Writes are atomic: a local file is written to a temporary
file in the same folder and renamed; an S3 object is uploaded only once the data is complete, so a reader
never sees a partial object.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import itertools
import logging
import os
import random
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

__all__ = [
    "AccessDeniedError",
    "NotFoundError",
    "RetryPolicy",
    "StorageError",
    "Uri",
    "delete",
    "exists",
    "is_s3",
    "join",
    "list_uris",
    "local_copy",
    "open_read",
    "open_write",
    "read_bytes",
    "read_text",
    "s3_client",
    "size",
    "split_s3",
    "write_bytes",
    "write_text",
]

Uri = str | os.PathLike
T = TypeVar("T")

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"
MULTIPART_THRESHOLD = 8 * 1024 * 1024  # objects at least this large are uploaded in parts
_READ_CHUNK = 1024 * 1024
_TMP_SUFFIX = ".facetrack-tmp"  # in-progress local writes; skipped by list_uris
_INSTALL = "pip install 'facetrack[s3]'"
_CREDENTIALS_HINT = (
    "S3 credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN), "
    "AWS_PROFILE with the shared credentials file, or an instance/pod role; "
    "the endpoint from AWS_ENDPOINT_URL"
)
# Error codes and HTTP statuses worth another try: throttling and transient server trouble.
_RETRY_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "BandwidthLimitExceeded",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
    }
)
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidSecurity",
    }
)
# Environment variables that change which client boto3 builds; a change makes a new client.
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


class StorageError(Exception):
    """A storage operation failed; the message names the URI."""


class NotFoundError(StorageError, FileNotFoundError):
    """The file, object, folder or bucket does not exist."""


class AccessDeniedError(StorageError, PermissionError):
    """Permission denied, or S3 credentials missing or rejected."""


# ----------------------------------------------------------------------------------------------- URIs


def is_s3(uri: Uri) -> bool:
    """Whether ``uri`` is an ``s3://`` URI."""
    return isinstance(uri, str) and uri.startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")`` (the key may be empty).

    Raises:
        StorageError: not an S3 URI, or no bucket in it.
    """
    if not is_s3(uri):
        raise StorageError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket in S3 URI (expected s3://bucket/key)")
    return bucket, key


def join(base: Uri, *parts: str) -> str:
    """Join path parts onto a local path or S3 URI with ``/``, e.g. ``join("s3://b/out", "x.json")``."""
    out = os.fspath(base)
    for part in parts:
        part = os.fspath(part)
        if not part:
            continue
        out = f"{out.rstrip('/')}/{part.lstrip('/')}" if out else part
    return out


def _local(uri: Uri) -> Path:
    text = os.fspath(uri)
    if text.startswith(FILE_SCHEME):
        text = text[len(FILE_SCHEME) :]
    return Path(os.path.expanduser(text))


def _object(uri: str) -> tuple[str, str]:
    bucket, key = split_s3(uri)
    if not key or key.endswith("/"):
        raise StorageError(f"{uri}: not an object key (expected s3://bucket/key)")
    return bucket, key


@contextlib.contextmanager
def _local_errors(uri: Uri) -> Iterator[None]:
    """Turn OS errors on a local path into storage errors naming it."""
    try:
        yield
    except StorageError:
        raise
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NotFoundError(f"{os.fspath(uri)}: no such file or directory") from exc
    except PermissionError as exc:
        raise AccessDeniedError(f"{os.fspath(uri)}: permission denied") from exc
    except IsADirectoryError as exc:
        raise StorageError(f"{os.fspath(uri)}: is a directory") from exc
    except OSError as exc:
        raise StorageError(f"{os.fspath(uri)}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------------------- S3 client


_client_lock = threading.Lock()
_client_cache: tuple[tuple, Any] | None = None
_known_buckets: set[tuple[tuple, str]] = set()


def _reset_after_fork() -> None:
    global _client_lock, _client_cache
    _client_lock = threading.Lock()
    _client_cache = None
    _known_buckets.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


def _client_key() -> tuple:
    return (os.getpid(), *(os.environ.get(name) for name in _CLIENT_ENV))


def s3_client() -> Any:
    """The process's boto3 S3 client (thread-safe; rebuilt after a fork or when ``AWS_*`` variables change).

    Raises:
        StorageError: boto3 is not installed.
    """
    global _client_cache
    key = _client_key()
    cached = _client_cache
    if cached is not None and cached[0] == key:
        return cached[1]
    with _client_lock:
        if _client_cache is None or _client_cache[0] != key:
            _client_cache = (key, _make_client())
        return _client_cache[1]


def _make_client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise StorageError(f"S3 access needs boto3: {_INSTALL}") from exc
    session = boto3.session.Session()
    region = session.region_name or os.environ.get("AWS_REGION") or None
    config = Config(
        retries={"total_max_attempts": 1},  # retries are ours (RetryPolicy), one policy for every call
        max_pool_connections=32,
        connect_timeout=10,
        read_timeout=60,
    )
    client = session.client("s3", region_name=region, config=config)
    client.meta.events.register("before-send.s3.PutObject", _no_expect_for_empty_body)
    return client


def _no_expect_for_empty_body(request: Any, **_: Any) -> None:
    """Send an empty object without ``Expect: 100-continue``.

    With that header and no body, some S3-compatible servers (SeaweedFS among them) leave the kept-alive
    connection in a state where the next request on it never gets an answer.
    """
    if str(request.headers.get("Content-Length", "")) == "0" and "Expect" in request.headers:
        del request.headers["Expect"]


# ----------------------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: at most ``retries`` retries, none starting after ``max_seconds``."""

    retries: int = 10
    max_seconds: float = 60.0
    base_delay: float = 0.25
    max_delay: float = 10.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The policy from ``FACETRACK_S3_RETRIES`` and ``FACETRACK_S3_RETRY_SECONDS`` (defaults 10, 60)."""
        values: dict[str, Any] = {}
        for var, field, kind in (
            ("FACETRACK_S3_RETRIES", "retries", int),
            ("FACETRACK_S3_RETRY_SECONDS", "max_seconds", float),
        ):
            raw = os.environ.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[field] = kind(raw)
            except ValueError:
                raise StorageError(f"{var}={raw!r}: expected a {kind.__name__}") from None
            if values[field] < 0:
                raise StorageError(f"{var}={raw!r}: must not be negative")
        return cls(**values)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


class _Backoff:
    """Retry bookkeeping for one operation: decides, logs and sleeps, or raises the translated error."""

    def __init__(self, op: str, uri: str, policy: RetryPolicy | None = None) -> None:
        self.op, self.uri = op, uri
        self.policy = policy or RetryPolicy.from_env()
        self.start = time.monotonic()
        self.attempt = 0

    def wait_or_raise(self, exc: BaseException) -> None:
        """Sleep before the next try when ``exc`` is transient and budget remains; raise otherwise."""
        if not _is_retryable(exc):
            mapped = _translate(exc, self.uri, self.op)
            if mapped is exc:
                raise exc
            raise mapped from exc
        self.attempt += 1
        delay = self.policy.delay(self.attempt)
        elapsed = time.monotonic() - self.start
        if self.attempt > self.policy.retries or elapsed + delay > self.policy.max_seconds:
            raise StorageError(
                f"{self.uri}: {self.op} failed after {self.attempt} attempts in {elapsed:.1f} s "
                f"(FACETRACK_S3_RETRIES / FACETRACK_S3_RETRY_SECONDS): {_describe(exc)}"
            ) from exc
        log.warning("%s %s: %s; retry %d in %.1f s", self.op, self.uri, _describe(exc), self.attempt, delay)
        time.sleep(delay)


def _call(op: str, uri: str, fn: Callable[[], T]) -> T:
    """Run one S3 call with the retry policy; errors come out as storage errors naming ``uri``."""
    backoff = _Backoff(op, uri)
    while True:
        try:
            return fn()
        except Exception as exc:  # classified below: retried, translated or re-raised
            backoff.wait_or_raise(exc)


def _error_info(exc: BaseException) -> tuple[str, int | None, str]:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code", "")), status, str(error.get("Message", ""))


def _describe(exc: BaseException) -> str:
    code, status, message = _error_info(exc)
    if code:
        return f"{code} (HTTP {status}): {message}" if message else f"{code} (HTTP {status})"
    return f"{type(exc).__name__}: {exc}"


def _is_retryable(exc: BaseException) -> bool:
    try:
        from botocore import exceptions as bex
    except ImportError:
        return False
    if isinstance(exc, bex.ClientError):
        code, status, _ = _error_info(exc)
        return code in _RETRY_CODES or status in _RETRY_STATUS
    if isinstance(exc, bex.SSLError):
        return False  # a certificate problem does not go away by trying again
    if isinstance(exc, (bex.ConnectionError, bex.HTTPClientError, bex.IncompleteReadError)):
        return True
    try:
        from urllib3 import exceptions as u3
    except ImportError:
        u3 = None
    if u3 is not None and isinstance(exc, (u3.ProtocolError, u3.ReadTimeoutError, u3.NewConnectionError)):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))


def _translate(exc: BaseException, uri: str, op: str) -> BaseException:
    """A storage error for a non-transient boto error; other exceptions are returned unchanged."""
    try:
        from botocore import exceptions as bex
    except ImportError:
        return exc
    if isinstance(exc, bex.ClientError):
        code, status, message = _error_info(exc)
        if code == "NoSuchBucket":
            return NotFoundError(f"bucket '{split_s3(uri)[0]}' does not exist ({uri})")
        if code in ("NoSuchKey", "NotFound") or status == 404:
            return NotFoundError(f"{uri}: no such key")
        if code in _DENIED_CODES or status == 403:
            return AccessDeniedError(f"{uri}: access denied ({_describe(exc)}). {_CREDENTIALS_HINT}")
        if code == "PreconditionFailed":
            return StorageError(f"{uri}: the object changed while it was being read")
        return StorageError(f"{uri}: {op} failed: {_describe(exc)}")
    if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
        return AccessDeniedError(f"{uri}: {exc}. {_CREDENTIALS_HINT}")
    if isinstance(exc, bex.BotoCoreError):
        return StorageError(f"{uri}: {op} failed: {exc}")
    return exc


def _check_bucket(bucket: str, uri: str) -> None:
    """Raise NotFoundError naming the bucket when it does not exist (answers are cached per client)."""
    known = (_client_key(), bucket)
    if known in _known_buckets:
        return
    try:
        _call("head bucket", uri, lambda: s3_client().head_bucket(Bucket=bucket))
    except NotFoundError:
        raise NotFoundError(f"bucket '{bucket}' does not exist ({uri})") from None
    _known_buckets.add(known)


def _head(uri: str) -> dict | None:
    """HEAD an object: its metadata, or None when the key is missing (a missing bucket raises)."""
    bucket, key = _object(uri)
    try:
        return _call("head", uri, lambda: s3_client().head_object(Bucket=bucket, Key=key))
    except NotFoundError:
        _check_bucket(bucket, uri)
        return None


# ------------------------------------------------------------------------------------------- reads


class _S3Reader(io.RawIOBase):
    """A seekable binary stream over one S3 object that resumes with a ranged GET after a dropped connection.

    Every request after the first is pinned to the first one's ETag, so a reader never mixes two versions.
    """

    def __init__(self, uri: str, if_match: str | None = None) -> None:
        super().__init__()
        self.name = uri
        self._bucket, self._key = _object(uri)
        self._pos = 0
        self._body: Any = None
        self._etag = if_match
        response = _call("read", uri, lambda: self._get(0))
        self.size: int = int(response["ContentLength"])
        self._etag = response.get("ETag") or if_match
        self._body = response["Body"]

    def _get(self, start: int) -> dict:
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key}
        if start:
            kwargs["Range"] = f"bytes={start}-"
        if self._etag:
            kwargs["IfMatch"] = self._etag
        return s3_client().get_object(**kwargs)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        target = base + offset
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        if target != self._pos:
            self._drop_body()
            self._pos = target
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._read_some(len(view))
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        chunks = []
        while self._pos < self.size:
            chunks.append(self._read_some(_READ_CHUNK))
        return b"".join(chunks)

    def _read_some(self, limit: int) -> bytes:
        if limit <= 0 or self._pos >= self.size:
            return b""
        backoff = _Backoff("read", self.name)
        while True:
            try:
                if self._body is None:
                    self._body = self._get(self._pos)["Body"]
                data = self._body.read(limit)
                if not data:
                    raise ConnectionError(f"stream ended at byte {self._pos} of {self.size}")
                self._pos += len(data)
                return data
            except Exception as exc:  # classified below: retried, translated or re-raised
                self._drop_body()
                backoff.wait_or_raise(exc)

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(Exception):
                body.close()

    def close(self) -> None:
        self._drop_body()
        super().close()


def open_read(uri: Uri, mode: Literal["rb", "r"] = "rb", encoding: str = "utf-8") -> IO[Any]:
    """Open a file or S3 object for streaming reads (binary by default, seekable).

    An S3 stream that loses its connection resumes with a ranged request from the current offset.

    Raises:
        NotFoundError: no such file, key or bucket.
        AccessDeniedError: permission denied / credentials rejected.
    """
    if mode not in ("rb", "r"):
        raise ValueError(f"mode must be 'rb' or 'r', not {mode!r}")
    if is_s3(uri):
        stream: IO[Any] = io.BufferedReader(_S3Reader(uri), buffer_size=_READ_CHUNK)
        return stream if mode == "rb" else io.TextIOWrapper(stream, encoding=encoding)
    with _local_errors(uri):
        path = _local(uri)
        return open(path, "rb") if mode == "rb" else open(path, encoding=encoding)


def read_bytes(uri: Uri) -> bytes:
    """The whole content of a file or S3 object."""
    if is_s3(uri):
        with open_read(uri) as stream:
            return stream.read()
    with _local_errors(uri):
        return _local(uri).read_bytes()


def read_text(uri: Uri, encoding: str = "utf-8") -> str:
    """The whole content of a file or S3 object, decoded."""
    data = read_bytes(uri)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise StorageError(f"{os.fspath(uri)}: not valid {encoding} text ({exc})") from exc


def exists(uri: Uri) -> bool:
    """Whether a file, folder or S3 object exists.

    ``s3://bucket`` asks whether the bucket exists; ``s3://bucket/dir/`` whether any key is under it.

    Raises:
        NotFoundError: the bucket of an object or folder URI does not exist (a configuration error).
    """
    if not is_s3(uri):
        return _local(uri).exists()
    bucket, key = split_s3(uri)
    if not key:
        try:
            _check_bucket(bucket, uri)
        except NotFoundError:
            return False
        return True
    if key.endswith("/"):
        page = _call("list", uri, lambda: s3_client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1))
        return bool(page.get("Contents"))
    return _head(uri) is not None


def size(uri: Uri) -> int:
    """Size in bytes of a file or S3 object."""
    if is_s3(uri):
        head = _head(uri)
        if head is None:
            raise NotFoundError(f"{uri}: no such key")
        return int(head["ContentLength"])
    with _local_errors(uri):
        return _local(uri).stat().st_size


def list_uris(prefix: Uri, suffixes: str | Iterable[str] | None = None) -> Iterator[str]:
    """All files under a folder or S3 prefix, recursively, as full URIs in sorted order.

    An S3 prefix is a folder: ``s3://b/videos`` lists ``videos/...`` (not ``videos2/...``); listing is
    paginated, so any number of keys works. A file path or object URI lists itself. ``suffixes`` keeps
    names ending in one of them (case-insensitive). Local in-progress temporary files and S3 folder
    markers are skipped.

    Raises:
        NotFoundError: the local folder or the bucket does not exist (checked on the call, not on iteration).
    """
    if isinstance(suffixes, str):
        suffixes = (suffixes,)
    wanted = tuple(s.lower() for s in suffixes) if suffixes is not None else None

    def keep(name: str) -> bool:
        return wanted is None or name.lower().endswith(wanted)

    if is_s3(prefix):
        return _list_s3(prefix, keep)
    root = _local(prefix)
    text = os.fspath(prefix)
    if root.is_file():
        return iter([text] if keep(root.name) else [])
    if not root.is_dir():
        raise NotFoundError(f"{text}: no such directory")
    found = []
    for dirpath, _dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in files:
            if not name.endswith(_TMP_SUFFIX) and keep(name):
                found.append(join(text, name) if rel == "." else join(text, rel, name))
    return iter(sorted(found))


def _list_s3(prefix: str, keep: Callable[[str], bool]) -> Iterator[str]:
    bucket, key = split_s3(prefix)
    folder = key if not key or key.endswith("/") else key + "/"
    pages = _s3_pages(prefix, bucket, folder)
    first = next(pages)  # errors (missing bucket, credentials) surface here, on the call
    if not first and folder != key:
        # Nothing under it as a folder: like a local file path, an object's own URI lists itself.
        return iter([prefix] if keep(key) and _head(prefix) is not None else [])

    def generate() -> Iterator[str]:
        for contents in itertools.chain([first], pages):
            for obj in contents:
                name = obj["Key"]
                if not name.endswith("/") and keep(name):
                    yield f"{S3_SCHEME}{bucket}/{name}"

    return generate()


def _s3_pages(uri: str, bucket: str, key: str) -> Iterator[list[dict]]:
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key, "MaxKeys": 1000}
        if token:
            kwargs["ContinuationToken"] = token
        page = _call("list", uri, functools.partial(s3_client().list_objects_v2, **kwargs))
        yield page.get("Contents", [])
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


# ------------------------------------------------------------------------------------------ writes


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD,
        multipart_chunksize=MULTIPART_THRESHOLD,
        max_concurrency=4,
        preferred_transfer_client="classic",
    )


def _upload(fileobj: IO[bytes], uri: str) -> None:
    """Upload a seekable binary file as one object; a failed multipart upload is aborted, never completed."""
    bucket, key = _object(uri)
    total = fileobj.seek(0, io.SEEK_END)

    def attempt() -> None:
        fileobj.seek(0)
        client = s3_client()
        if total < MULTIPART_THRESHOLD:
            client.put_object(Bucket=bucket, Key=key, Body=fileobj.read())
        else:
            client.upload_fileobj(fileobj, bucket, key, Config=_transfer_config())

    _call("write", uri, attempt)


@contextlib.contextmanager
def open_write(uri: Uri, mode: Literal["wb", "w"] = "wb", encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Write a file or S3 object atomically: it appears, complete, only when the block exits cleanly.

    An exception inside the block (or a failed upload) leaves nothing new behind and any previous
    version intact. Local parent folders are created.

    Example::

        with storage.open_write("s3://bucket/out/part-0.jsonl", "w") as f:
            f.write(line)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', not {mode!r}")
    if is_s3(uri):
        _object(uri)
        with tempfile.TemporaryFile(prefix="facetrack-upload-") as spool:
            if mode == "wb":
                yield spool
            else:
                text = io.TextIOWrapper(spool, encoding=encoding, newline="")
                yield text
                text.flush()
                text.detach()
            _upload(spool, uri)
        return
    path = _local(uri)
    with _local_errors(uri):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, mode, **({} if mode == "wb" else {"encoding": encoding, "newline": ""})) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        with _local_errors(uri):
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def write_bytes(uri: Uri, data: bytes | bytearray | memoryview) -> None:
    """Write bytes to a file or S3 object atomically (see :func:`open_write`)."""
    if is_s3(uri):
        _upload(io.BytesIO(data), uri)
        return
    with open_write(uri) as stream:
        stream.write(data)


def write_text(uri: Uri, text: str, encoding: str = "utf-8") -> None:
    """Write text to a file or S3 object atomically."""
    write_bytes(uri, text.encode(encoding))


def delete(uri: Uri, missing_ok: bool = True) -> None:
    """Delete a file or S3 object.

    Raises:
        NotFoundError: it does not exist and ``missing_ok`` is False, or the bucket does not exist.
    """
    if not is_s3(uri):
        path = _local(uri)
        with _local_errors(uri):
            try:
                path.unlink()
            except FileNotFoundError:
                if not missing_ok:
                    raise
        return
    bucket, key = _object(uri)
    if not missing_ok and not exists(uri):
        raise NotFoundError(f"{uri}: no such key")
    _check_bucket(bucket, uri)
    _call("delete", uri, lambda: s3_client().delete_object(Bucket=bucket, Key=key))


# ------------------------------------------------------------------------------------------- cache


def _default_cache_dir() -> Path:
    if os.environ.get("FACETRACK_CACHE_DIR"):
        return Path(os.environ["FACETRACK_CACHE_DIR"]) / "s3"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "facetrack" / "s3"


def local_copy(uri: Uri, cache_dir: Uri | None = None) -> Path:
    """A local path holding the content of ``uri``: local paths as they are, S3 objects downloaded once.

    Downloads go to ``cache_dir`` (default ``$FACETRACK_CACHE_DIR/s3`` or ``~/.cache/facetrack/s3``)
    under a key made of the URI, ETag and size, so a changed object is fetched again; the file keeps the
    object's name (decoders look at extensions) and appears atomically.

    Raises:
        NotFoundError: no such file, key or bucket.
    """
    if not is_s3(uri):
        path = _local(uri)
        if not path.exists():
            raise NotFoundError(f"{os.fspath(uri)}: no such file or directory")
        return path
    head = _head(uri)
    if head is None:
        raise NotFoundError(f"{uri}: no such key")
    etag = str(head.get("ETag", ""))
    nbytes = int(head["ContentLength"])
    digest = hashlib.sha256(f"{uri}\n{etag}\n{nbytes}".encode()).hexdigest()[:32]
    name = _object(uri)[1].rsplit("/", 1)[-1]
    target = (_local(cache_dir) if cache_dir is not None else _default_cache_dir()) / digest / name
    if target.is_file() and target.stat().st_size == nbytes:
        return target
    with _local_errors(target), open_write(target) as out:
        reader = io.BufferedReader(_S3Reader(uri, if_match=etag or None), buffer_size=_READ_CHUNK)
        with reader:
            shutil.copyfileobj(reader, out, _READ_CHUNK)
    return target
