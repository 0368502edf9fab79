"""Output shards of a job: rows buffered and written as whole JSONL or Parquet files, never rewritten.

A shard becomes visible only when complete (``storage.write_bytes`` is atomic), so a job killed at any
point leaves whole shards behind. :func:`done_ids` reads them back so a re-run skips finished ids.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import time
from collections.abc import Iterable
from typing import Any, Literal

from facetrack import storage

ShardFormat = Literal["jsonl", "parquet"]
SHARD_DIR = "rows"


def new_run_id() -> str:
    """A sortable, unique name for one run: UTC time plus random hex."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _encode(rows: list[dict[str, Any]], fmt: ShardFormat) -> bytes:
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows).encode()
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Parquet output needs pyarrow: pip install 'facetrack[ray]'") from exc
    # Nested dicts are stored as JSON text so every shard has the same flat schema.
    flat = [{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()} for r in rows]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(flat), buf)
    return buf.getvalue()


def shard_name(run_id: str, n: int, fmt: ShardFormat, writer: str | None = None) -> str:
    """``part-<run>[-<writer>]-<n>.<fmt>``: unique per run, writer (one per actor) and sequence number."""
    return f"part-{run_id}{'-' + writer if writer else ''}-{n:05d}.{fmt}"


def write_shard(out_uri: str, name: str, rows: list[dict[str, Any]], fmt: ShardFormat) -> str:
    """Commit ``rows`` as the shard ``rows/<name>`` under ``out_uri`` (atomic); returns its URI."""
    uri = storage.join(out_uri, SHARD_DIR, name)
    storage.write_bytes(uri, _encode(rows, fmt))
    return uri


def read_shard(uri: str) -> list[dict[str, Any]]:
    """Rows of one shard (JSON columns of Parquet shards decoded back to dicts)."""
    if uri.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
        rows = table.to_pylist()
        for row in rows:
            for key in ("main_track", "timings", "warnings"):
                if isinstance(row.get(key), str):
                    row[key] = json.loads(row[key])
        return rows
    rows = []
    for line in storage.read_text(uri).splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def list_shards(out_uri: str) -> list[str]:
    """Every shard under ``out_uri`` (sorted)."""
    prefix = storage.join(out_uri, SHARD_DIR)
    try:
        return [u for u in storage.list_uris(prefix) if u.endswith((".jsonl", ".parquet"))]
    except storage.NotFoundError:
        return []


def read_rows(out_uri: str) -> list[dict[str, Any]]:
    """All rows written under ``out_uri`` so far, one per id.

    A row committed twice (a retried task, or a rerun of a failed id) is read once: a successful row wins
    over an error row, otherwise the later shard (shards sort by run id) wins.
    """
    by_id: dict[str, dict[str, Any]] = {}
    for uri in list_shards(out_uri):
        for row in read_shard(uri):
            key = str(row["id"])
            old = by_id.get(key)
            if old is None or not (row.get("error") and not old.get("error")):
                by_id[key] = row
    return list(by_id.values())


def clean_stale_temp(out_uri: str) -> list[str]:
    """Remove temporary shard files a killed run left in a local ``rows/`` folder; returns their paths.

    Call it before a run starts writing: any temporary file there then belongs to an earlier run.
    Remote outputs need nothing: an object appears only when its upload completes.
    """
    if storage.is_remote(out_uri):
        return []
    folder = storage.local_path(storage.join(out_uri, SHARD_DIR))
    removed = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    for name in names:
        if name.startswith(".") and name.endswith(storage.TMP_SUFFIX):
            try:
                os.unlink(folder / name)
                removed.append(str(folder / name))
            except OSError:
                pass
    return removed


def check_writable(out_uri: str) -> str | None:
    """A one-line problem when ``out_uri`` cannot be written (a probe is created and deleted), else None."""
    probe = storage.join(out_uri, SHARD_DIR, f".probe-{secrets.token_hex(6)}")
    created = None  # the outermost local folder the probe creates: removed again, so a check leaves no trace
    if not storage.is_remote(out_uri):
        folder = storage.local_path(probe).parent
        while not folder.exists() and folder.parent != folder:
            created, folder = folder, folder.parent
    try:
        storage.write_bytes(probe, b"")
        storage.delete(probe)
    except (storage.StorageError, OSError) as exc:
        return f"cannot write the output {out_uri}: {exc}"
    finally:
        if created is not None:
            folder = storage.local_path(probe).parent
            while True:
                try:
                    folder.rmdir()
                except OSError:
                    break
                if folder == created:
                    break
                folder = folder.parent
    return None


def done_ids(out_uri: str) -> set[str]:
    """Ids that already have a row under ``out_uri`` (success or error)."""
    return {str(r["id"]) for r in read_rows(out_uri)}


class ShardWriter:
    """Buffers rows and writes them as numbered shards ``rows/part-<run>[-<writer>]-<n>.<fmt>``.

    A shard is flushed when it holds ``rows_per_shard`` rows or its oldest row is ``flush_seconds`` old,
    so a slow job still makes its progress durable.
    """

    def __init__(
        self,
        out_uri: str,
        fmt: ShardFormat = "jsonl",
        rows_per_shard: int = 256,
        flush_seconds: float = 60.0,
        run_id: str | None = None,
        writer: str | None = None,
    ) -> None:
        if fmt not in ("jsonl", "parquet"):
            raise ValueError(f"unknown shard format {fmt!r}; use 'jsonl' or 'parquet'")
        self.out_uri = out_uri
        self.fmt: ShardFormat = fmt
        self.rows_per_shard = max(1, rows_per_shard)
        self.flush_seconds = flush_seconds
        self.run_id = run_id or new_run_id()
        self.writer = writer
        self.shards_written: list[str] = []
        self.rows_written = 0
        self._buffer: list[dict[str, Any]] = []
        self._oldest = 0.0

    def add(self, row: dict[str, Any]) -> None:
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.append(row)
        if len(self._buffer) >= self.rows_per_shard or self.due():
            self.flush()

    def add_many(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.add(row)

    @property
    def buffered(self) -> int:
        """Rows added and not yet written."""
        return len(self._buffer)

    def due(self) -> bool:
        return bool(self._buffer) and time.monotonic() - self._oldest >= self.flush_seconds

    def flush(self) -> str | None:
        """Write the buffered rows as one shard; returns its URI (None when nothing was buffered)."""
        if not self._buffer:
            return None
        name = shard_name(self.run_id, len(self.shards_written), self.fmt, self.writer)
        uri = write_shard(self.out_uri, name, self._buffer, self.fmt)
        self.shards_written.append(uri)
        self.rows_written += len(self._buffer)
        self._buffer = []
        return uri

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # Rows already processed are kept even when the job stops on an error.
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except (storage.StorageError, OSError):
            pass  # the output cannot take them (the error that stopped the job says why): they are redone
