"""Where a checkpoint comes from: a local folder, an ``s3://`` (or other remote) prefix mirrored into a
local cache through :mod:`facetrack.storage`, or a Hugging Face hub id; and the short model name."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from facetrack.model.checkpoint_files import CheckpointError


def _default_cache() -> Path:
    if os.environ.get("FACETRACK_CACHE_DIR"):
        return Path(os.environ["FACETRACK_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "facetrack"


def mirror_prefix(prefix: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local folder mirroring every object under an ``s3://`` prefix; objects are downloaded once.

    Objects go through :func:`facetrack.storage.local_copy` (cached by URI, ETag and size, so a changed
    object is fetched again) and are linked into ``<cache>/models/<hash of prefix>/``.

    Raises:
        CheckpointError: nothing under the prefix, or it cannot be read.
    """
    from facetrack import storage

    root = Path(cache_dir) if cache_dir is not None else _default_cache()
    prefix = prefix.rstrip("/") + "/"
    dest = root / "models" / hashlib.sha256(prefix.encode()).hexdigest()[:24]
    try:
        uris = list(storage.list_uris(prefix))
    except storage.StorageError as exc:
        raise CheckpointError(f"cannot list checkpoint prefix {prefix}: {exc}") from exc
    if not uris:
        raise CheckpointError(f"no checkpoint files under {prefix}")
    for uri in uris:
        rel = uri[len(prefix) :]
        try:
            cached = storage.local_copy(uri, cache_dir=root / "objects")
        except storage.StorageError as exc:
            raise CheckpointError(f"cannot download {uri}: {exc}") from exc
        target = dest / rel
        if target.exists() and target.stat().st_size == cached.stat().st_size and target.samefile(cached):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            os.link(cached, tmp)
        except OSError:
            shutil.copyfile(cached, tmp)
        os.replace(tmp, target)
    return dest


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_source(source: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local folder for a checkpoint given as a folder, an ``s3://`` prefix or a hub id.

    Raises:
        CheckpointError: the source does not exist or cannot be fetched.
    """
    from facetrack import storage

    source = os.fspath(source)
    if storage.is_remote(source):
        return mirror_prefix(source, cache_dir)
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{source} is a file; a checkpoint is a folder")
    if not _HUB_ID.match(source) or source.startswith((".", "/", "~")):
        raise CheckpointError(f"no checkpoint folder at {source}")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id=source, cache_dir=None if cache_dir is None else str(cache_dir))
        )
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
        raise CheckpointError(
            f"{source} is not a local folder and could not be fetched from the Hugging Face hub: {exc}"
        ) from exc


def model_name(source: str, folder: Path) -> str:
    """A short model name: the last path part (``parent_checkpoint-N`` for trainer checkpoints)."""
    parts = [p for p in re.split(r"[/\\]", source.rstrip("/")) if p] or [folder.name]
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]
