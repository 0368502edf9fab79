"""The caption job's two Ray Data stages: decode + face tracking (CPU workers), then encoders + batched
generation with the rows committed where they are made (captioning actors). Rows travel between them
with arrays as .npy bytes and nested records as JSON text, so every block has one schema.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import secrets
import time
from typing import Any

import numpy as np

from facetrack import storage
from facetrack.caption import CaptionerConfig
from facetrack.config import load_config
from facetrack.faces.stage import FaceTrackConfig
from facetrack.shards import (
    new_run_id,
    shard_name,
    write_shard,
)
from facetrack.types import CaptionRow, VideoRef

log = logging.getLogger("facetrack.jobs.caption")


# ----------------------------------------------------------------------------------------------------
# Row encoding: arrays travel as .npy bytes, nested records as JSON text, so every block has one schema.


def _npy(array: np.ndarray | None) -> bytes:
    if array is None:
        return b""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _from_npy(data: bytes) -> np.ndarray | None:
    if not data:
        return None
    return np.load(io.BytesIO(data), allow_pickle=False)


def _resize_long_side(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    t, h, w = images.shape[:3]
    scale = size / max(h, w)
    if scale >= 1.0:
        return images
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return np.stack([np.asarray(Image.fromarray(im).resize((nw, nh), Image.BILINEAR)) for im in images])


_SAFE = re.compile(r"[^A-Za-z0-9._/-]+")


def sheet_uri(out: str, video_id: str) -> str:
    """Where the contact sheet of ``video_id`` goes under ``out``."""
    name = _SAFE.sub("_", video_id).strip("/").replace("..", "_") or "video"
    if name != video_id:  # sanitised: a short hash of the id keeps "a b" and "a_b" apart
        name += "-" + hashlib.sha1(video_id.encode()).hexdigest()[:8]
    return storage.join(out, "sheets", f"{name}.png")


# ----------------------------------------------------------------------------------------------------
# Stage 1 (CPU workers): decode + face tracking, one video per call, detector models loaded once per worker.


class TrackWorker:
    """Ray Data callable class for ``flat_map``: one input row -> its tracked rows (model frames and crops).

    One row per video with ``select.mode=main``; one per character, id ``<video id>#<n>``, with ``all``.
    """

    def __init__(self, track: dict[str, Any], out: str, sheets: bool, frame_size: int) -> None:
        from facetrack.faces.stage import FaceTrackStage

        self.stage = FaceTrackStage(load_config(FaceTrackConfig, base=track))
        self.stage.setup()
        self.out, self.sheets, self.frame_size = out, sheets, frame_size

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        return track_rows(self.stage, row, self.out, self.sheets, self.frame_size)


def track_rows(
    stage: Any, row: dict[str, Any], out: str, sheets: bool, frame_size: int
) -> list[dict[str, Any]]:
    """Track one video with ``stage``: its rows to caption; errors become a row's ``error``, never raised.

    ``row`` is ``{"id", "video"}`` plus, optionally, ``skip``: a JSON list of character ids an earlier run
    already wrote (``select.mode=all``), which are not made again.
    """
    video = VideoRef(id=str(row["id"]), uri=str(row["video"]))
    skip = set(json.loads(row.get("skip") or "[]"))
    base: dict[str, Any] = {
        "id": video.id,
        "video": video.uri,
        "frames": b"",
        "crops": b"",
        "main_track": "null",
        "timings": "{}",
        "error": "",
        "warnings": "[]",
    }
    t0 = time.perf_counter()
    try:
        result = stage.process(video)
    except Exception as exc:  # a bug or an environment problem: record it on the row, keep the job going
        return [{**base, "error": f"track: {type(exc).__name__}: {exc}"}]
    timings = dict(result.timings)
    timings["track_total"] = time.perf_counter() - t0
    rows = []
    if result.error:
        rows.append({**base, "error": f"track: {result.error}"})
    else:
        try:
            clips = result.character_clips()
            frames = _npy(_resize_long_side(clips[0][0].frames, frame_size))
            for clip, summary in clips:
                if clip.id in skip:
                    continue
                rows.append(
                    {
                        **base,
                        "id": clip.id,
                        "frames": frames,
                        "crops": _npy(clip.crops),
                        "main_track": json.dumps(summary),
                    }
                )
        except Exception as exc:
            rows = [{**base, "error": f"track: {type(exc).__name__}: {exc}"}]
    warnings: list[str] = []
    if sheets and rows and not rows[0]["error"]:
        t1 = time.perf_counter()
        try:
            from facetrack.faces.draw import contact_sheet_png

            png = contact_sheet_png(result)
            if png is not None:
                storage.write_bytes(sheet_uri(out, video.id), png)
        except Exception as exc:  # a sheet that cannot be written costs the sheet, never the caption
            warnings.append(f"sheet: {type(exc).__name__}: {exc}")
        timings["sheet"] = time.perf_counter() - t1
    for i, r in enumerate(rows):  # the video's tracking seconds once, on its first row, so they add up
        r["timings"], r["warnings"] = json.dumps(timings if i == 0 else {}), json.dumps(warnings)
    return rows


# ----------------------------------------------------------------------------------------------------
# Stage 2 (actors, GPU when the cluster has them): encoders + batched generation.


class CaptionActor:
    """Ray Data callable class: loads the captioner once, captions batches of tracked rows, commits them.

    Each batch's rows are committed right here, as atomic shards ``rows/part-<run>-<actor>-<n>`` under the
    output, before the batch is handed on: a finished caption is durable whatever the driver is doing.
    The driver receives each row with ``committed`` set; a row whose shard could not be written (a full
    disk, storage down beyond its retry budget) comes back uncommitted and the driver writes it.
    """

    def __init__(
        self,
        config: dict[str, Any],
        out: str = "",
        fmt: str = "jsonl",
        rows_per_shard: int = 64,
        run_id: str = "",
    ) -> None:
        from facetrack.caption import Captioner

        cfg = load_config(CaptionerConfig, base=config)
        self.captioner = Captioner(cfg)
        self.captioner.setup()
        self.out = out
        self.fmt = fmt
        self.rows_per_shard = max(1, rows_per_shard)
        self.run_id = run_id or new_run_id()
        self.writer = secrets.token_hex(3)  # this actor's part of the shard names
        self.shards = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = self.caption(batch)
        captioned_at = time.time()
        committed = [False] * len(rows)
        committed_at = [captioned_at] * len(rows)
        for start in range(0, len(rows), self.rows_per_shard) if self.out else ():
            chunk = rows[start : start + self.rows_per_shard]
            name = shard_name(self.run_id, self.shards, self.fmt, self.writer)  # type: ignore[arg-type]
            try:
                write_shard(self.out, name, chunk, self.fmt)  # type: ignore[arg-type]
            except (storage.StorageError, OSError) as exc:  # the driver writes these rows instead
                log.warning("caption: could not commit %d rows here (%s); the driver will", len(chunk), exc)
                continue
            finally:
                self.shards += 1
            now = time.time()
            for i in range(start, start + len(chunk)):
                committed[i], committed_at[i] = True, now
        return {
            "row": np.array([json.dumps(r, default=str) for r in rows], dtype=object),
            "committed": np.array(committed, dtype=bool),
            "captioned_at": np.array([captioned_at] * len(rows), dtype=float),
            "committed_at": np.array(committed_at, dtype=float),
        }

    def caption(self, batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """The output rows of one batch of tracked rows (errors of earlier stages pass through)."""
        from facetrack.caption import CaptionResult
        from facetrack.types import Clip

        n = len(batch["id"])
        captions = [""] * n
        errors = [str(e) for e in batch["error"]]
        timings = [json.loads(t) for t in batch["timings"]]
        clips, where = [], []
        for i in range(n):
            if errors[i]:
                continue
            try:
                frames = _from_npy(batch["frames"][i])
                clips.append(Clip(id=str(batch["id"][i]), frames=frames, crops=_from_npy(batch["crops"][i])))
                where.append(i)
            except Exception as exc:
                errors[i] = f"caption: cannot read frames: {exc}"
        if clips:
            try:
                results = self.captioner.caption(clips)
            except Exception as exc:  # the whole batch failed: every clip gets the error
                results = [CaptionResult(id=c.id, error=f"{type(exc).__name__}: {exc}") for c in clips]
            for i, result in zip(where, results):
                if result.error:
                    errors[i] = f"caption: {result.error}"
                else:
                    captions[i] = result.caption or ""
                timings[i]["caption"] = result.seconds
        return [
            _final_row(
                {
                    "id": batch["id"][i],
                    "video": batch["video"][i],
                    "caption": captions[i],
                    "model": self.captioner.model_name,
                    "prompt": self.captioner.prompt,
                    "main_track": batch["main_track"][i],
                    "timings": timings[i],
                    "error": errors[i],
                    "warnings": batch["warnings"][i],
                }
            )
            for i in range(n)
        ]


# ----------------------------------------------------------------------------------------------------
# Driver.


def _final_row(row: dict[str, Any]) -> dict[str, Any]:
    error = str(row.get("error") or "") or None
    main_track = row.get("main_track")
    timings = row.get("timings")
    final = CaptionRow(
        id=str(row["id"]),
        video=str(row["video"]),
        caption=None if error else str(row.get("caption") or ""),
        model=str(row["model"]),
        prompt=str(row["prompt"]),
        main_track=json.loads(main_track) if isinstance(main_track, str) else main_track,
        timings=json.loads(timings) if isinstance(timings, str) else (timings or {}),
        error=error,
    ).to_dict()
    warnings = row.get("warnings")
    final["warnings"] = json.loads(warnings) if isinstance(warnings, str) else list(warnings or [])
    return final
