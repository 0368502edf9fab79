"""Remote URIs on their fsspec filesystems: object paths, calls within the retry budget, bucket checks, a
reader that goes on from its offset after a lost connection."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from typing import Any

from facetrack.storage import retry
from facetrack.storage.errors import NotFoundError, StorageError
from facetrack.storage.uris import bucket_of, filesystem, is_s3, scheme_of, split_s3

READ_CHUNK = 1024 * 1024
_known_buckets: set[tuple[int, str, str]] = set()


def fs_path(uri: str) -> tuple[Any, str]:
    fs, path = filesystem(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)  # validates the bucket part
        path = f"{bucket}/{key}" if key else bucket
    return fs, path


def object_path(uri: str) -> tuple[Any, str]:
    """Filesystem and path of a URI that must name an object (not a bucket or a folder)."""
    fs, path = fs_path(uri)
    if "/" not in path.strip("/") and scheme_of(uri) != "memory" or path.endswith("/"):
        raise StorageError(f"{uri}: not an object key (expected {scheme_of(uri)}://bucket/key)")
    return fs, path


def call(op: str, uri: str, fn: Callable[[], Any]) -> Any:
    bucket = bucket_of(uri) if is_s3(uri) else None
    try:
        return retry.call(op, uri, fn, bucket)
    except NotFoundError:
        check_bucket(uri)
        raise


def check_bucket(uri: str) -> None:
    """Raise NotFoundError naming the bucket of an ``s3://`` URI when it does not exist (answers cached)."""
    if not is_s3(uri):
        return
    bucket = bucket_of(uri)
    known = (os.getpid(), os.environ.get("AWS_ENDPOINT_URL", ""), bucket)
    if known in _known_buckets:
        return
    fs, _ = filesystem(uri)
    try:
        retry.call("head bucket", uri, lambda: fs.call_s3("head_bucket", Bucket=bucket))
    except NotFoundError:
        raise NotFoundError(f"bucket '{bucket}' does not exist ({uri})") from None
    _known_buckets.add(known)


class RemoteReader(io.RawIOBase):
    """A seekable binary stream over one remote file that reopens at its offset after a lost connection.

    The filesystem's own file object does the ranged reads (and, for S3, pins the object's ETag so a
    reader never mixes two versions); this wrapper only spends the retry budget on transient failures.
    """

    def __init__(self, uri: str) -> None:
        super().__init__()
        self.name = uri
        self._fs, self._path = object_path(uri)
        self._pos = 0
        self._file: Any = None
        self._file = call("read", uri, self._open)
        self.size: int = int(self._file.size)

    def _open(self) -> Any:
        handle = self._fs.open(self._path, "rb", block_size=4 * READ_CHUNK)
        if self._pos:
            handle.seek(self._pos)
        return handle

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        if self._file is not None:
            self._file.seek(self._pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._read_some(len(view))
        view[: len(data)] = data
        return len(data)

    def _read_some(self, limit: int) -> bytes:
        if limit <= 0 or self._pos >= self.size:
            return b""
        backoff = retry.Backoff("read", self.name)
        while True:
            try:
                if self._file is None:
                    self._file = self._open()
                data = self._file.read(limit)
                if not data:
                    raise ConnectionError(f"stream ended at byte {self._pos} of {self.size}")
                self._pos += len(data)
                return data
            except Exception as exc:  # classified by wait_or_raise: retried or translated
                self._drop()
                backoff.wait_or_raise(exc)

    def _drop(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.close()

    def close(self) -> None:
        self._drop()
        super().close()
