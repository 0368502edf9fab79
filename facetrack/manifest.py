"""Inputs of a job: a folder, an ``s3://`` prefix, or a JSON/JSONL manifest of ``{"id", "video"}`` records.

Ids are stable across runs: for a folder or prefix, a video's id is its path relative to the folder; for a
manifest, the record's ``id`` (or its ``video`` when it has none). A manifest line that cannot be used
becomes an :class:`InputError` that the job writes as an error row; it never stops the job.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

from facetrack import storage
from facetrack.types import VideoRef

VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4",
    ".avi",
    ".mov",
    ".mkv",
    ".webm",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".ts",
)
MANIFEST_SUFFIXES = (".json", ".jsonl")


@dataclass(slots=True)
class InputError:
    """An input that cannot be processed, reported as an error row under ``id``."""

    id: str
    video: str
    error: str


@dataclass(slots=True)
class Inputs:
    """The videos to process plus what was rejected while reading the input."""

    videos: list[VideoRef] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    skipped_extension: int = 0
    duplicate_ids: list[str] = field(default_factory=list)


def is_manifest(source: str) -> bool:
    return source.lower().endswith(MANIFEST_SUFFIXES)


def _normalise_extensions(extensions: tuple[str, ...] | list[str] | None) -> tuple[str, ...] | None:
    if not extensions:
        return None
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def read_inputs(
    source: str,
    extensions: tuple[str, ...] | list[str] | None = VIDEO_EXTENSIONS,
    video_root: str | None = None,
) -> Inputs:
    """List the videos named by ``source``.

    Args:
        source: a local folder, an ``s3://`` prefix, a ``.json`` (list) / ``.jsonl`` manifest, or one video.
        extensions: keep only videos with these extensions (case-insensitive); ``None`` keeps all.
        video_root: base for relative ``video`` paths in a manifest (default: the manifest's folder).

    Raises:
        storage.NotFoundError: the folder, prefix or manifest does not exist or holds no file.
    """
    exts = _normalise_extensions(extensions)
    if is_manifest(source):
        return _read_manifest(source, exts, video_root)
    if source.lower().endswith(VIDEO_EXTENSIONS) and storage.exists(source):
        return Inputs(videos=[VideoRef(id=posixpath.basename(source), uri=source)])
    return _read_folder(source, exts)


def _read_folder(source: str, exts: tuple[str, ...] | None) -> Inputs:
    inputs = Inputs()
    root = source.rstrip("/")
    found = False
    for uri in storage.list_uris(root):
        found = True
        if exts is not None and not uri.lower().endswith(exts):
            inputs.skipped_extension += 1
            continue
        rel = uri[len(root) :].lstrip("/")
        inputs.videos.append(VideoRef(id=rel, uri=uri))
    if not found:
        raise storage.NotFoundError(f"{source}: no such folder or prefix, or it is empty")
    return inputs


def resolve_video(video: str, base: str | None) -> str:
    """A record's ``video`` as a URI: absolute ones (``s3://``, ``/``, ``file://``) as given, relative ones
    joined to ``base`` (kept relative when there is no base)."""
    if storage.is_remote(video) or video.startswith(("/", "file://")) or not base:
        return video
    return storage.join(base, video)


def json_lines(text: str) -> list[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of JSON-lines ``text``; a line that is not JSON
    gives a ``ValueError`` in place of its value, so that a reader can report it and go on."""
    out: list[tuple[int, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            out.append((lineno, ValueError(f"not valid JSON: {exc.msg}")))
    return out


def json_records(text: str, source: str, what: str = "records") -> list[tuple[int, Any]]:
    """The records of a ``.jsonl`` file (see :func:`json_lines`) or of a JSON list (any other name), each
    with its line or item number (from 1).

    Raises:
        ValueError: a JSON file that does not parse or does not hold a list (``what`` names its items).
    """
    if source.lower().endswith(".jsonl"):
        return json_lines(text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, list):
        raise ValueError(f"{source}: must hold a list of {what} (a JSON list)")
    return list(enumerate(data, start=1))


def _read_manifest(source: str, exts: tuple[str, ...] | None, video_root: str | None) -> Inputs:
    inputs = Inputs()
    base = video_root if video_root is not None else posixpath.dirname(source.rstrip("/"))
    seen: set[str] = set()
    name = posixpath.basename(source)
    for number, record in json_records(storage.read_text(source), source, "{'id', 'video'} records"):
        where = f"{name}:{number}"
        if isinstance(record, Exception):
            inputs.errors.append(
                InputError(id=where, video="", error=f"bad manifest record {where}: {record}")
            )
            continue
        if not isinstance(record, dict) or not isinstance(record.get("video"), str) or not record["video"]:
            inputs.errors.append(
                InputError(id=where, video="", error=f"bad manifest record {where}: needs a 'video' string")
            )
            continue
        video = record["video"]
        vid = record.get("id", video)
        vid = str(vid) if isinstance(vid, (str, int)) and str(vid) else video
        if vid in seen:
            inputs.duplicate_ids.append(vid)
            continue
        seen.add(vid)
        # A record with its own id was asked for by name: it gets a row whatever its extension (the decoder
        # says whether it is a video); only id-less records are filtered by extension.
        if exts is not None and "id" not in record and not video.lower().endswith(exts):
            inputs.skipped_extension += 1
            continue
        inputs.videos.append(VideoRef(id=vid, uri=resolve_video(video, base)))
    return inputs
