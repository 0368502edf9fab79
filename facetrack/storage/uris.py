"""URIs and the filesystem behind each scheme: local paths, ``s3://``, ``gs://``, ``az://``, ``hf://``, ``memory://``.

A URI with a scheme goes to its fsspec filesystem (s3fs, gcsfs, adlfs, the hub's ``HfFileSystem``, the
in-process memory filesystem); a path without one is local. An unknown scheme, or one whose library is not
installed, is an error that names the ``pip install`` to run: it is never taken for a local folder.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facetrack.storage.errors import StorageError

Uri = str | os.PathLike

FILE_SCHEME = "file://"
S3_SCHEME = "s3://"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class Scheme:
    """One remote scheme: the fsspec protocol it maps to, the module it needs and the extra that has it."""

    protocol: str
    module: str
    extra: str

    @property
    def install(self) -> str:
        return f"pip install 'facetrack[{self.extra}]'" if self.extra else "pip install facetrack"


SCHEMES: dict[str, Scheme] = {
    "s3": Scheme("s3", "s3fs", "s3"),
    "s3a": Scheme("s3", "s3fs", "s3"),
    "gs": Scheme("gs", "gcsfs", "gcs"),
    "gcs": Scheme("gs", "gcsfs", "gcs"),
    "az": Scheme("az", "adlfs", "azure"),
    "abfs": Scheme("az", "adlfs", "azure"),
    "abfss": Scheme("az", "adlfs", "azure"),
    "hf": Scheme("hf", "huggingface_hub", "hf"),
    "memory": Scheme("memory", "fsspec", ""),
}

# Environment variables that change which S3 client is built; a change makes a new filesystem.
_S3_ENV = (
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
MULTIPART_CHUNK = 8 * 1024 * 1024
"""Objects of at least two of these go up as a multipart upload of parts this large."""


def scheme_of(uri: Uri) -> str | None:
    """The lower-cased scheme of ``uri`` (``"s3"``, ``"gs"``, ...), or None for a local path.

    Raises:
        StorageError: the scheme is not one this layer knows.
    """
    if not isinstance(uri, str):
        return None
    match = _SCHEME.match(uri)
    if match is None:
        return None
    scheme = match.group(1).lower()
    if scheme == "file":
        return None
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise StorageError(f"{uri}: unknown URI scheme '{scheme}://' (known: local paths, file://, {known})")
    return scheme


def is_remote(uri: Uri) -> bool:
    """Whether ``uri`` names an object store or another fsspec filesystem rather than a local path."""
    return scheme_of(uri) is not None


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
    """Join path parts onto a local path or URI with ``/``, e.g. ``join("s3://b/out", "x.json")``."""
    out = os.fspath(base)
    for part in parts:
        part = os.fspath(part)
        if not part:
            continue
        out = f"{out.rstrip('/')}/{part.lstrip('/')}" if out else part
    return out


def local_path(uri: Uri) -> Path:
    """The local path of a path or ``file://`` URI (``~`` expanded)."""
    text = os.fspath(uri)
    if text.startswith(FILE_SCHEME):
        text = text[len(FILE_SCHEME) :]
    return Path(os.path.expanduser(text))


def split_uri(uri: str) -> tuple[str, str]:
    """``"gs://b/k"`` -> ``("gs", "b/k")``: the scheme and the path its filesystem takes."""
    scheme = scheme_of(uri)
    if scheme is None:
        raise StorageError(f"{uri}: not a remote URI")
    return scheme, uri.split("://", 1)[1]


def bucket_of(uri: str) -> str:
    """The bucket (or container, repository root) of a remote URI: its first path segment."""
    return split_uri(uri)[1].split("/", 1)[0]


_lock = threading.Lock()
_filesystems: dict[tuple, Any] = {}


def filesystem(uri: str) -> tuple[Any, str]:
    """The fsspec filesystem for a remote URI and the path inside it.

    One filesystem per scheme, process and credential environment: a fork or a change of the ``AWS_*``
    variables builds a new one. S3 settings come from the usual AWS places (``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance or pod role);
    ``AWS_REGION`` is honoured as well as ``AWS_DEFAULT_REGION``.

    Raises:
        StorageError: unknown scheme, or its library is not installed (the message has the install line).
    """
    scheme, path = split_uri(uri)
    spec = SCHEMES[scheme]
    key = (os.getpid(), spec.protocol, *(os.environ.get(n) for n in _S3_ENV if spec.protocol == "s3"))
    fs = _filesystems.get(key)
    if fs is None:
        with _lock:
            fs = _filesystems.get(key)
            if fs is None:
                try:
                    fs = _filesystems[key] = _make_filesystem(spec)
                except ImportError as exc:
                    raise StorageError(f"{uri}: {scheme}:// needs {spec.module}: {spec.install}") from exc
    return fs, path


def _make_filesystem(spec: Scheme) -> Any:
    import importlib

    import fsspec

    importlib.import_module(spec.module)
    if spec.protocol != "s3":
        return fsspec.filesystem(spec.protocol)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    fs = fsspec.filesystem(
        "s3",
        skip_instance_cache=True,
        use_listings_cache=False,  # other processes write too: list what is there now
        endpoint_url=endpoint,
        client_kwargs={"region_name": region} if region else {},
        # Per-request retries are the client library's (botocore's standard mode); the overall time
        # budget across requests is ours (facetrack.storage.retry), since botocore has none.
        config_kwargs={
            "retries": {"max_attempts": 3, "mode": "standard"},
            "connect_timeout": 10,
            "read_timeout": 60,
            "max_pool_connections": 32,
        },
    )
    fs.retries = 2  # s3fs's own loop for read errors inside one call
    return fs


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _filesystems.clear()


os.register_at_fork(after_in_child=_reset_after_fork)
