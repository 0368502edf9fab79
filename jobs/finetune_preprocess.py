"""Preprocessing for fine-tuning (Ray Data): each clip decoded and face-tracked once, then cached.

Frames and main-character crops go to ``data.cache`` as one ``.npz`` per clip with a JSON sidecar, and a
manifest lists the usable clips. A re-run reuses every cached clip, so an interrupted preprocessing
resumes, and a complete preprocessing of the same records and settings is reused as it is.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

import ray

from facetrack import storage
from facetrack.config import load_config, to_dict
from facetrack.faces.stage import FaceTrackConfig
from jobs.finetune_config import CACHE_FORMAT, FinetuneConfig

log = logging.getLogger("facetrack.finetune")


class TrackAndCache:
    """Ray Data actor: face-track one clip and cache its frames and crops (or reuse a cached clip)."""

    def __init__(self, tracking: dict[str, Any], frame_size: int, jpeg_quality: int) -> None:
        from facetrack.faces.stage import FaceTrackStage

        self.stage = FaceTrackStage(load_config(FaceTrackConfig, None, base=tracking))
        self.frame_size = frame_size
        self.jpeg_quality = jpeg_quality

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        from facetrack.data import encode_clip, shrink_frames
        from facetrack.types import Clip, VideoRef

        sidecar = row["clip"][: -len(".npz")] + ".json"
        try:
            if storage.exists(sidecar) and storage.exists(row["clip"]):
                return {**row, **json.loads(storage.read_text(sidecar)), "cached": True, "error": None}
        except (storage.StorageError, ValueError):
            pass  # unreadable sidecar: process the clip again
        result = self.stage.process(VideoRef(id=row["id"], uri=row["video"]))
        if result.error is not None:
            missing = not _exists(row["video"])
            return {
                **row,
                "error": result.error,
                "reason": "video_not_found" if missing else "video_unreadable",
            }
        clip = result.to_clip()
        clip = Clip(id=clip.id, frames=shrink_frames(clip.frames, self.frame_size), crops=clip.crops)
        info = {
            "n_frames": int(clip.frames.shape[0]),
            "has_crops": clip.crops is not None,
            "track_seconds": round(float(result.timings.get("total", 0.0)), 3),
        }
        try:
            storage.write_bytes(row["clip"], encode_clip(clip, self.jpeg_quality, {"video": row["video"]}))
            storage.write_text(sidecar, json.dumps(info))
        except (storage.StorageError, OSError) as exc:
            return {**row, "error": f"cannot write the clip cache: {exc}", "reason": "cache_write_error"}
        return {**row, **info, "cached": False, "error": None}


def _exists(uri: str) -> bool:
    try:
        return storage.exists(uri)
    except storage.StorageError:
        return False


def preprocess(config: FinetuneConfig) -> dict[str, Any]:
    """Read the records, track and cache every clip not cached yet, write the manifest.

    Returns a summary with the manifest URI, counts of kept and dropped records by reason, and timings.
    """
    from facetrack.data import clip_key, read_records
    from facetrack.model.examples import TrainItem, model_num_frames

    started = time.perf_counter()
    records = read_records(config.data.train, config.data.video_root)
    tracking = to_dict(config.data.tracking)
    tracking["video"]["num_frames"] = config.data.num_frames or model_num_frames(config.model)
    params = {
        "format": CACHE_FORMAT,
        "tracking": tracking,
        "frame_size": config.data.frame_size,
        "jpeg_quality": config.data.jpeg_quality,
    }
    clips = storage.join(config.cache_dir, "clips")
    rows = [
        {
            "id": r.id,
            "video": r.video,
            "caption": r.caption,
            "clip": storage.join(clips, clip_key(r.video, params) + ".npz"),
        }
        for r in records.records
    ]
    dropped = Counter(records.dropped)
    examples = {k: list(v) for k, v in records.examples.items()}
    total = len(records.records) + sum(records.dropped.values())
    # The manifest is named after what it is made from (usable records and settings): a complete
    # preprocessing of the same data is reused as it is.
    key = clip_key(json.dumps({"rows": rows, "dropped": dict(records.dropped)}, sort_keys=True), params)
    manifest = storage.join(config.cache_dir, "manifests", f"{key}.jsonl")
    summary_uri = storage.join(config.cache_dir, "manifests", f"{key}.json")
    if storage.exists(manifest) and storage.exists(summary_uri):
        summary = {**json.loads(storage.read_text(summary_uri)), "reused": True}
        summary["seconds"] = round(time.perf_counter() - started, 2)
        storage.write_text(storage.join(config.run_dir, "preprocess.json"), json.dumps(summary, indent=2))
        log.info("preprocessing of these records is complete: reusing %s", manifest)
        return summary
    log.info("preprocessing %d records (%s dropped) into %s", len(rows), dict(records.dropped), clips)
    done: list[dict[str, Any]] = []
    if rows:
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), 64)).map(
            TrackAndCache,
            fn_constructor_kwargs={
                "tracking": tracking,
                "frame_size": config.data.frame_size,
                "jpeg_quality": config.data.jpeg_quality,
            },
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=config.data.preprocess_concurrency),
            num_cpus=config.data.preprocess_cpus,
        )
        position = {r["id"]: i for i, r in enumerate(rows)}
        done = sorted(dataset.take_all(), key=lambda r: position[r["id"]])
    items = []
    for row in done:
        if row.get("error"):
            reason = row.get("reason", "video_unreadable")
            dropped[reason] += 1
            if len(examples.setdefault(reason, [])) < 5:
                examples[reason].append(f"{row['id']}: {row['error']}")
            continue
        items.append(
            TrainItem(row["id"], row["caption"], row["clip"], int(row["n_frames"]), bool(row["has_crops"]))
        )
    summary = {
        "manifest": manifest,
        "records": total,
        "usable": len(items),
        "cached_before": sum(1 for r in done if r.get("cached")),
        "tracked": sum(1 for r in done if not r.get("error") and not r.get("cached")),
        "no_face": sum(1 for r in done if not r.get("error") and not r.get("has_crops")),
        "dropped": dict(sorted(dropped.items())),
        "dropped_examples": examples,
        "reused": False,
        "seconds": round(time.perf_counter() - started, 2),
    }
    storage.write_text(manifest, "".join(json.dumps(it.to_dict()) + "\n" for it in items))
    storage.write_text(summary_uri, json.dumps(summary, indent=2))
    storage.write_text(storage.join(config.run_dir, "preprocess.json"), json.dumps(summary, indent=2))
    return summary
