"""Where a checkpoint comes from: a local folder, an ``s3://`` (or other remote) prefix mirrored into a
local cache through :mod:`facetrack.storage`, or a Hugging Face hub id; and the short model name."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def _local_folder(source: str) -> Path | None:
    """The local folder ``source`` names, or None when it is a hub id (``org/name``) and no such folder.

    Raises:
        CheckpointError: a file, or neither a folder nor of a hub id's form.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{source} is a file; a checkpoint is a folder")
    if not _HUB_ID.match(source) or source.startswith((".", "/", "~")):
        raise CheckpointError(f"no checkpoint folder at {source}")
    return None


def read_config_file(
    source: str | os.PathLike, names: Sequence[str], cache_dir: str | os.PathLike | None = None
) -> tuple[str, dict[str, Any]] | None:
    """The first of ``names`` (small JSON files such as ``config.json``) that checkpoint ``source`` holds.

    Only that file is read: nothing else of the checkpoint (no weights) is mirrored or downloaded.

    Args:
        source: a local folder (``~`` expanded), a remote prefix (``s3://``, ``gs://``, ``memory://`` and
            the other :mod:`facetrack.storage` schemes) or a Hugging Face hub id (``hf_hub_download`` of
            that one file, cached by the hub's own cache).
        names: file names to try, in order.
        cache_dir: the hub's cache folder (default: the hub's).

    Returns:
        ``(name, parsed JSON object)``, or None when the checkpoint holds none of the files.

    Raises:
        CheckpointError: the source does not exist or cannot be read (offline and not cached, denied, not
            JSON).
    """
    from facetrack import storage

    source = os.fspath(source)
    try:
        folder = None if storage.is_remote(source) else _local_folder(source)
        if folder is None and not storage.is_remote(source):
            return _read_hub_config(source, names, cache_dir)
        for name in names:
            uri = storage.join(source, name) if folder is None else str(folder / name)
            if storage.exists(uri):
                data = json.loads(storage.read_text(uri))
                if not isinstance(data, dict):
                    raise CheckpointError(f"{uri} must hold a JSON object")
                return name, data
        if folder is None and not storage.exists(source.rstrip("/") + "/"):
            raise CheckpointError(f"no checkpoint under {source}")
    except (storage.StorageError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the config of {source}: {exc}") from exc
    return None


def _read_hub_config(
    repo_id: str, names: Sequence[str], cache_dir: str | os.PathLike | None
) -> tuple[str, dict[str, Any]] | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for name in names:
        try:
            path = hf_hub_download(repo_id, name, cache_dir=None if cache_dir is None else str(cache_dir))
        except Exception as exc:  # noqa: BLE001 - offline and not cached, no such repo, gated, HTTP errors
            if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
                continue  # the repo lacks this file: try the next
            raise CheckpointError(f"cannot fetch {name} of {repo_id} from the hub: {exc}") from exc
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise CheckpointError(f"{name} of {repo_id} must hold a JSON object")
        return name, data
    return None


def resolve_source(source: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local folder for a checkpoint given as a folder, an ``s3://`` prefix or a hub id.

    Raises:
        CheckpointError: the source does not exist or cannot be fetched.
    """
    from facetrack import storage

    source = os.fspath(source)
    if storage.is_remote(source):
        return mirror_prefix(source, cache_dir)
    folder = _local_folder(source)
    if folder is not None:
        return folder
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
