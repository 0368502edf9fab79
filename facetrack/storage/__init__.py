"""One URI layer over local paths and fsspec filesystems: atomic writes, listing, retries, a local cache.

Every function takes a local path (``str`` or ``os.PathLike``, ``file://`` accepted) or a URI of an
object store: ``s3://`` (s3fs, ``pip install 'facetrack[s3]'``), ``gs://`` (gcsfs, ``facetrack[gcs]``),
``az://`` (adlfs, ``facetrack[azure]``), ``hf://`` (the hub's filesystem, ``facetrack[hf]``) and the
in-process ``memory://``. An unknown scheme, or one whose library is missing, is an error naming the
``pip install`` line, never a local folder. S3 reads its endpoint, region and credentials from the usual
AWS places (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an
instance or pod role; ``AWS_REGION`` as well as ``AWS_DEFAULT_REGION``).

Guarantees, whatever the backend:
- writes are atomic: a local file is written to a hidden temporary file in the same folder and renamed;
  an object is uploaded only once its data is complete (a multipart upload that fails is aborted), so a
  reader never sees a partial file or object;
- transient failures (throttling, 5xx, lost connections, timeouts) are retried within a time budget
  (:mod:`facetrack.storage.retry`, 120 s by default), and a read that loses its connection mid-stream
  goes on from where it stopped;
- errors name the URI and say what is wrong: :class:`NotFoundError` (with "bucket '...' does not exist"
  apart from "no such key"), :class:`AccessDeniedError`, :class:`TransientStorageError` once the budget
  is spent, :class:`StorageError` otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

from facetrack.storage.errors import (
    AccessDeniedError,
    NotFoundError,
    StorageError,
    TransientStorageError,
    translate,
)
from facetrack.storage.remote import READ_CHUNK, RemoteReader, call, check_bucket, fs_path, object_path
from facetrack.storage.retry import RetryPolicy
from facetrack.storage.uris import (
    MULTIPART_CHUNK,
    SCHEMES,
    Uri,
    filesystem,
    is_remote,
    is_s3,
    join,
    local_path,
    scheme_of,
    split_s3,
)

__all__ = [
    "SCHEMES",
    "AccessDeniedError",
    "NotFoundError",
    "RetryPolicy",
    "StorageError",
    "TransientStorageError",
    "Uri",
    "delete",
    "exists",
    "filesystem",
    "is_remote",
    "is_s3",
    "join",
    "list_uris",
    "local_copy",
    "open_read",
    "open_write",
    "pyarrow_filesystem",
    "read_bytes",
    "read_text",
    "size",
    "split_s3",
    "write_bytes",
    "write_text",
]

TMP_SUFFIX = ".facetrack-tmp"  # in-progress local writes; skipped by list_uris


# ------------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def _local_errors(uri: Uri, op: str) -> Iterator[None]:
    """Turn OS errors on a local path into storage errors naming it, with their cause."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise translate(exc, os.fspath(uri), op) from exc


# ------------------------------------------------------------------------------------------- reads


def open_read(uri: Uri, mode: Literal["rb", "r"] = "rb", encoding: str = "utf-8") -> IO[Any]:
    """Open a file or object for streaming reads (binary by default, seekable).

    Raises:
        NotFoundError: no such file, key or bucket.
        AccessDeniedError: permission denied / credentials rejected.
    """
    if mode not in ("rb", "r"):
        raise ValueError(f"mode must be 'rb' or 'r', not {mode!r}")
    if is_remote(uri):
        stream: IO[Any] = io.BufferedReader(RemoteReader(os.fspath(uri)), buffer_size=READ_CHUNK)
        return stream if mode == "rb" else io.TextIOWrapper(stream, encoding=encoding)
    with _local_errors(uri, "read"):
        path = local_path(uri)
        return open(path, "rb") if mode == "rb" else open(path, encoding=encoding)


def read_bytes(uri: Uri) -> bytes:
    """The whole content of a file or object."""
    if is_remote(uri):
        fs, path = object_path(os.fspath(uri))
        return call("read", os.fspath(uri), lambda: fs.cat_file(path))
    with _local_errors(uri, "read"):
        return local_path(uri).read_bytes()


def read_text(uri: Uri, encoding: str = "utf-8") -> str:
    """The whole content of a file or object, decoded."""
    data = read_bytes(uri)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise StorageError(f"{os.fspath(uri)}: not valid {encoding} text ({exc})") from exc


def exists(uri: Uri) -> bool:
    """Whether a file, folder or object exists.

    ``s3://bucket`` asks whether the bucket exists; ``s3://bucket/dir/`` whether any key is under it.

    Raises:
        NotFoundError: the bucket of an object or folder URI does not exist (a configuration error).
    """
    if not is_remote(uri):
        with _local_errors(uri, "stat"):
            return local_path(uri).exists()
    text = os.fspath(uri)
    fs, path = fs_path(text)
    if is_s3(text) and "/" not in path:
        try:
            check_bucket(text)
        except NotFoundError:
            return False
        return True
    try:
        if path.endswith("/"):
            return bool(call("list", text, lambda: fs.ls(path.rstrip("/"), detail=False)))
        call("stat", text, lambda: fs.info(path))
    except NotFoundError as exc:
        if "does not exist" in str(exc):  # the bucket: a configuration error, not a missing file
            raise
        return False
    return True


def size(uri: Uri) -> int:
    """Size in bytes of a file or object."""
    if is_remote(uri):
        fs, path = object_path(os.fspath(uri))
        return int(call("stat", os.fspath(uri), lambda: fs.size(path)))
    with _local_errors(uri, "stat"):
        return local_path(uri).stat().st_size


def list_uris(prefix: Uri, suffixes: str | Iterable[str] | None = None) -> Iterator[str]:
    """All files under a folder or prefix, recursively, as full URIs in sorted order.

    A prefix is a folder: ``s3://b/videos`` lists ``videos/...`` (not ``videos2/...``); listing is
    paginated by the filesystem, so any number of keys works. A file path or object URI lists itself.
    ``suffixes`` keeps names ending in one of them (case-insensitive). In-progress temporary files and
    folder markers are skipped.

    Raises:
        NotFoundError: the local folder or the bucket does not exist (checked on the call, not on iteration).
    """
    if isinstance(suffixes, str):
        suffixes = (suffixes,)
    wanted = tuple(s.lower() for s in suffixes) if suffixes is not None else None

    def keep(name: str) -> bool:
        return (wanted is None or name.lower().endswith(wanted)) and not name.endswith(TMP_SUFFIX)

    text = os.fspath(prefix)
    if is_remote(text):
        return iter(_list_remote(text, keep))
    root = local_path(prefix)
    if root.is_file():
        return iter([text] if keep(root.name) else [])
    if not root.is_dir():
        raise NotFoundError(f"{text}: no such directory")
    found = []
    for dirpath, _dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in files:
            if keep(name):
                found.append(join(text, name) if rel == "." else join(text, rel, name))
    return iter(sorted(found))


def _list_remote(uri: str, keep: Callable[[str], bool]) -> list[str]:
    fs, path = fs_path(uri)
    scheme = scheme_of(uri)
    folder = path.rstrip("/")
    found = call("list", uri, lambda: fs.find(folder, withdirs=False)) if folder else []
    if not folder:  # a whole bucket of the memory filesystem
        found = call("list", uri, lambda: fs.find("/", withdirs=False))
    if not found:
        check_bucket(uri)
    out = []
    for name in found:
        name = name.lstrip("/") if scheme != "memory" else name
        if name.endswith("/") or not keep(name):
            continue
        out.append(f"{scheme}://{name}" if scheme != "memory" else f"memory://{name.lstrip('/')}")
    return sorted(out)


# ------------------------------------------------------------------------------------------ writes


def _put(local: str, uri: str) -> None:
    """Upload a complete local file as one object; a failed multipart upload is aborted, never completed."""
    fs, path = object_path(uri)
    extra = {"chunksize": MULTIPART_CHUNK} if is_s3(uri) else {}
    call("write", uri, lambda: fs.put_file(local, path, **extra))


@contextlib.contextmanager
def open_write(uri: Uri, mode: Literal["wb", "w"] = "wb", encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Write a file or object atomically: it appears, complete, only when the block exits cleanly.

    An exception inside the block (or a failed upload) leaves nothing new behind and any previous
    version intact. Local parent folders are created.

    Example::

        with storage.open_write("s3://bucket/out/part-0.jsonl", "w") as f:
            f.write(line)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', not {mode!r}")
    text_args: dict[str, Any] = {} if mode == "wb" else {"encoding": encoding, "newline": ""}
    if is_remote(uri):
        object_path(os.fspath(uri))
        with tempfile.NamedTemporaryFile(prefix="facetrack-upload-") as spool:
            with open(spool.name, mode, **text_args) as stream:
                yield stream
            _put(spool.name, os.fspath(uri))
        return
    path = local_path(uri)
    with _local_errors(uri, "write"):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            above = next(p for p in (path.parent, *path.parent.parents) if p.exists() or p.is_symlink())
            raise StorageError(
                f"{os.fspath(uri)}: cannot create its folder: {above} is not a directory"
            ) from None
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with _local_errors(uri, "write"), open(fd, mode, **text_args) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        with _local_errors(uri, "write"):
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
    """Write bytes to a file or object atomically (see :func:`open_write`)."""
    with open_write(uri) as stream:
        stream.write(data)


def write_text(uri: Uri, text: str, encoding: str = "utf-8") -> None:
    """Write text to a file or object atomically."""
    write_bytes(uri, text.encode(encoding))


def delete(uri: Uri, missing_ok: bool = True) -> None:
    """Delete a file or object.

    Raises:
        NotFoundError: it does not exist and ``missing_ok`` is False, or the bucket does not exist.
    """
    if not is_remote(uri):
        with _local_errors(uri, "delete"):
            try:
                local_path(uri).unlink()
            except FileNotFoundError:
                if not missing_ok:
                    raise
        return
    text = os.fspath(uri)
    fs, path = object_path(text)
    if not missing_ok and not exists(text):
        raise NotFoundError(f"{text}: no such key")
    check_bucket(text)
    try:
        call("delete", text, lambda: fs.rm_file(path))
    except NotFoundError:
        if not missing_ok:
            raise


# ------------------------------------------------------------------------------------------- cache


def _default_cache_dir() -> Path:
    if os.environ.get("FACETRACK_CACHE_DIR"):
        return Path(os.environ["FACETRACK_CACHE_DIR"]) / "objects"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "facetrack" / "objects"


def local_copy(uri: Uri, cache_dir: Uri | None = None) -> Path:
    """A local path holding the content of ``uri``: local paths as they are, objects downloaded once.

    Downloads go to ``cache_dir`` (default ``$FACETRACK_CACHE_DIR/objects`` or
    ``~/.cache/facetrack/objects``) under a key made of the URI, ETag and size, so a changed object is
    fetched again; the file keeps the object's name (decoders look at extensions) and appears atomically.

    Raises:
        NotFoundError: no such file, key or bucket.
    """
    if not is_remote(uri):
        path = local_path(uri)
        if not path.exists():
            raise NotFoundError(f"{os.fspath(uri)}: no such file or directory")
        return path
    text = os.fspath(uri)
    fs, path = object_path(text)
    info = call("stat", text, lambda: fs.info(path))
    version = str(info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("mtime") or "")
    nbytes = int(info.get("size") or 0)
    digest = hashlib.sha256(f"{text}\n{version}\n{nbytes}".encode()).hexdigest()[:32]
    name = path.rstrip("/").rsplit("/", 1)[-1]
    target = (local_path(cache_dir) if cache_dir is not None else _default_cache_dir()) / digest / name
    if target.is_file() and target.stat().st_size == nbytes:
        return target
    with open_read(text) as src, open_write(target) as out:
        shutil.copyfileobj(src, out, READ_CHUNK)
    return target


def pyarrow_filesystem(uri: Uri) -> tuple[Any, str]:
    """The same filesystem as a ``pyarrow.fs.FileSystem`` and the path in it, for Ray Data and Ray Train.

    Local paths give ``(None, absolute path)``, which both take as the local filesystem.
    """
    if not is_remote(uri):
        return None, str(local_path(uri).absolute())
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = fs_path(os.fspath(uri))
    return PyFileSystem(FSSpecHandler(fs)), path
