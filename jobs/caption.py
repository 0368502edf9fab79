"""The caption job: Ray Data fans decoding + face tracking over CPU workers and captioning over model actors.

    python -m jobs.caption INPUT --out OUTPUT [--model PATH_OR_HUB_ID] [--config FILE] [key=value ...]

INPUT is a local folder, an ``s3://`` prefix, or a JSON/JSONL manifest of ``{"id", "video"}``. OUTPUT gets
``rows/part-*.jsonl`` (or ``.parquet``) shards with one row per video (with ``track.select.mode=all``, one
per character of the video, id ``<video id>#<n>``), ``sheets/<id>.png`` contact sheets and
``summary.json``. Running the same command again skips every id already written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from facetrack import storage
from facetrack.caption import CaptionerConfig
from facetrack.config import load_config, read_yaml, to_dict
from facetrack.faces.stage import FaceTrackConfig
from facetrack.manifest import VIDEO_EXTENSIONS, InputError, read_inputs
from facetrack.model.prompt import benchmark_instruction
from facetrack.shards import (
    ShardWriter,
    check_writable,
    clean_stale_temp,
    done_ids,
    new_run_id,
    read_rows,
)
from facetrack.types import CaptionRow
from jobs.caption_characters import COMPLETE, VideoRows, characters_written
from jobs.caption_report import Progress, failure_reason, output_totals, print_summary, should_retry
from jobs.caption_stages import (  # noqa: F401 - the stages are part of this job's interface
    CaptionActor,
    TrackWorker,
    _final_row,
    sheet_uri,
    track_rows,
)
from jobs.ray_session import connect

log = logging.getLogger("facetrack.jobs.caption")

DEFAULT_MODEL = "DAMO-NLP-SG/VideoLLaMA2-7B-16F"


@dataclass
class CaptionJobConfig:
    """Settings of one caption run (YAML file + ``key=value`` overrides)."""

    input: str = ""
    out: str = ""
    extensions: list[str] = field(default_factory=lambda: list(VIDEO_EXTENSIONS))
    video_root: str | None = None
    format: Literal["jsonl", "parquet"] = "jsonl"
    rows_per_shard: int = 64
    flush_seconds: float = 30.0
    sheets: bool = True
    frame_size: int = 336
    """Model frames are resized so their longer side is this many pixels before they travel to actors."""
    cpus_per_task: float = 1.0
    """CPUs of each decode + tracking worker."""
    track_gpus_per_worker: float | None = None
    """GPU share of each decode + tracking worker; ``None``: 0.25 when the cluster has GPUs and the face
    backend is insightface (its detector then runs on CUDA), else 0."""
    track_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each decode + tracking worker requires (e.g. ``{tracking: 1}``)."""
    track_workers: int | None = None
    """Most decode + tracking workers at once (the pool grows to it); ``None``: the cluster's CPUs."""
    actors: int = 1
    gpus_per_actor: float | None = None
    """GPUs per captioning actor; ``None`` means 1 when the cluster has GPUs, else 0 (CPU actors)."""
    cpus_per_actor: float = 1.0
    actor_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each captioning actor requires (e.g. ``{caption_gpu: 1}``)."""
    batch_size: int = 8
    progress_seconds: float = 10.0
    limit: int | None = None
    """Process at most this many not-yet-done videos (for trials)."""
    retry: Literal["transient", "all", "none"] = "transient"
    """Which error rows of earlier runs are done again: transient ones (storage, timeouts, a dead worker,
    out of memory), all, or none. Permanent ones belong to the input (not a video, empty, bad record)."""
    track: FaceTrackConfig = field(default_factory=FaceTrackConfig)
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)


def run(cfg: CaptionJobConfig) -> dict[str, Any]:
    """Run the caption job on the connected Ray cluster (``ray.init`` must have been called).

    Returns the summary that is also written to ``<out>/summary.json``.
    """
    import ray

    if not cfg.input or not cfg.out:
        raise ValueError("the caption job needs an input and an output (--out)")
    t_start = time.perf_counter()
    run_id = new_run_id()
    model = cfg.captioner.model or DEFAULT_MODEL
    cfg.captioner.model = model
    inputs = read_inputs(cfg.input, cfg.extensions or None, cfg.video_root)
    stale = clean_stale_temp(cfg.out)
    if stale:
        log.info("caption: removed %d temporary shard files left by an earlier run", len(stale))
    earlier = read_rows(cfg.out)
    retried = {str(r["id"]) for r in earlier if r.get("error") and should_retry(str(r["error"]), cfg.retry)}
    already = {str(r["id"]) for r in earlier} - retried
    characters = cfg.track.select.mode == "all"
    retried_videos = {i.rsplit("#", 1)[0] for i in retried if "#" in i} if characters else set()
    skips = characters_written([r for r in earlier if str(r["id"]) not in retried]) if characters else {}
    todo = [v for v in inputs.videos if v.id not in already and skips.get(v.id) is not COMPLETE]
    input_errors = [e for e in inputs.errors if e.id not in already]
    skipped = len(inputs.videos) - len(todo) + (len(inputs.errors) - len(input_errors))
    if cfg.limit is not None:
        todo = todo[: cfg.limit]
    log.info(
        "caption: %d videos to do, %d already done, %d bad input records, %d skipped by extension%s",
        len(todo),
        skipped,
        len(input_errors),
        inputs.skipped_extension,
        f", {len(inputs.duplicate_ids)} duplicate ids dropped" if inputs.duplicate_ids else "",
    )

    track_workers = cfg.track_workers or max(
        1, int(ray.cluster_resources().get("CPU", 1) // cfg.cpus_per_task)
    )
    cluster_gpus = ray.cluster_resources().get("GPU", 0) > 0
    gpus = cfg.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if cluster_gpus else 0.0
    track_gpus = cfg.track_gpus_per_worker
    if track_gpus is None:
        track_gpus = 0.25 if cluster_gpus and cfg.track.faces.backend == "insightface" else 0.0
    prompt = cfg.captioner.prompt or benchmark_instruction()

    counts: Counter[str] = Counter()
    stage_time: Counter[str] = Counter()
    bars = ray.data.DataContext.get_current().enable_progress_bars and sys.stdout.isatty()
    progress = Progress(len(todo) + len(input_errors), cfg.progress_seconds, lines=not bars)
    example: dict[str, str] | None = None
    waits: list[float] = []  # seconds from captioned to committed, per row
    pending: list[float] = []  # caption times of rows the driver holds, not yet committed
    videos = VideoRows()
    with _OutputWriter(cfg.out, cfg.format, cfg.rows_per_shard, cfg.flush_seconds, run_id) as writer:
        for err in input_errors:
            writer.add(_input_error_row(err, model, prompt))
            counts["failed"] += 1
            counts[f"failed/{failure_reason('input: ' + err.error)}"] += 1
            progress.update(failed=True)
        if todo:
            items = [
                {"id": v.id, "video": v.uri, "skip": json.dumps(sorted(skips.get(v.id, ())))} for v in todo
            ]
            ds = ray.data.from_items(items, override_num_blocks=min(len(todo), 1000))
            ds = ds.flat_map(
                TrackWorker,
                fn_constructor_kwargs={
                    "track": to_dict(cfg.track),
                    "out": cfg.out,
                    "sheets": cfg.sheets,
                    "frame_size": cfg.frame_size,
                },
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=track_workers),
                num_cpus=cfg.cpus_per_task,
                num_gpus=track_gpus,
                **_resources(cfg.track_resources),
            )
            ds = ds.map_batches(
                CaptionActor,
                fn_constructor_kwargs={
                    "config": to_dict(cfg.captioner),
                    "out": cfg.out,
                    "fmt": cfg.format,
                    "rows_per_shard": cfg.rows_per_shard,
                    "run_id": run_id,
                },
                batch_size=cfg.batch_size,
                compute=ray.data.ActorPoolStrategy(size=max(1, cfg.actors)),
                num_gpus=gpus,
                num_cpus=cfg.cpus_per_actor,
                **_resources(cfg.actor_resources),
                batch_format="numpy",
            )
            for record in ds.iter_rows():
                final = json.loads(record["row"])
                if record["committed"]:  # the actor committed it: count it
                    waits.append(float(record["committed_at"]) - float(record["captioned_at"]))
                    counts["committed_by_actors"] += 1
                else:  # its shard could not be written where it was made: the driver writes it
                    writer.add(final)
                    pending.append(float(record["captioned_at"]))
                if example is None and final["caption"]:
                    example = {"id": final["id"], "caption": final["caption"][:300]}
                if final["error"]:
                    counts["failed"] += 1
                    counts[f"failed/{failure_reason(final['error'], final['video'])}"] += 1
                else:
                    counts["done"] += 1
                for k, v in final["timings"].items():
                    stage_time[k] += float(v)
                if characters:  # progress counts videos: a video is done with its last character's row
                    for failed in videos.row(final, skips):
                        counts["videos"] += 1
                        progress.update(failed=failed)
                else:
                    progress.update(failed=bool(final["error"]))
                if writer.due():
                    writer.flush()
                if pending and not writer.buffered:
                    waits.extend(time.time() - t for t in pending)
                    pending.clear()
        writer.flush()
        waits.extend(time.time() - t for t in pending)
    wall = time.perf_counter() - t_start
    processed = counts["done"] + counts["failed"]
    summary = {
        "run_id": run_id,
        "input": cfg.input,
        "out": cfg.out,
        "model": model,
        "counts": {
            "inputs": len(inputs.videos) + len(inputs.errors),
            "done": counts["done"],
            "failed": counts["failed"],
            "failed_by_reason": {k.split("/", 1)[1]: v for k, v in sorted(counts.items()) if "/" in k},
            "skipped_already_done": skipped,
            "retried": sum(v.id in retried or v.id in retried_videos for v in todo)
            + sum(e.id in retried for e in input_errors),
            "skipped_extension": inputs.skipped_extension,
            "duplicate_ids": sorted(set(inputs.duplicate_ids)),
            **({"videos": counts["videos"]} if characters else {}),
        },
        "seconds": round(wall, 3),
        "videos_per_second": round(processed / wall, 4) if wall > 0 else None,
        "stage_seconds": {k: round(v, 3) for k, v in sorted(stage_time.items())},
        "shards": writer.shards_written,
        "rows_committed_by_actors": counts["committed_by_actors"],
        "durable_wait_seconds": _wait_stats(waits),
        "example": example,
        "config": to_dict(cfg),
    }
    summary["output"] = output_totals(read_rows(cfg.out))  # the output's totals, beside this run's counts
    text = json.dumps(summary, indent=2) + "\n"
    storage.write_text(storage.join(cfg.out, "runs", f"{run_id}.json"), text)
    storage.write_text(storage.join(cfg.out, "summary.json"), text)
    return summary


def _wait_stats(waits: list[float]) -> dict[str, float | int | None]:
    """Median and max seconds a finished caption waited before it was committed."""
    if not waits:
        return {"rows": 0, "median": None, "max": None}
    median, worst = max(0.0, statistics.median(waits)), max(0.0, max(waits))
    return {"rows": len(waits), "median": round(median, 3), "max": round(worst, 3)}


def _resources(custom: dict[str, float]) -> dict[str, Any]:
    """Ray remote arguments for custom resources (none when there are none)."""
    return {"resources": dict(custom)} if custom else {}


def _input_error_row(err: InputError, model: str, prompt: str) -> dict[str, Any]:
    row = CaptionRow(id=err.id, video=err.video, model=model, prompt=prompt, error=f"input: {err.error}")
    return {**row.to_dict(), "warnings": []}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m jobs.caption", description=__doc__)
    parser.add_argument("input", help="folder, s3:// prefix, or .json/.jsonl manifest of {id, video}")
    parser.add_argument("--out", default="captions", help="output folder or s3:// prefix (default: captions)")
    parser.add_argument(
        "--model", help=f"checkpoint folder, s3:// prefix or hub id (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--config", help="YAML file of CaptionJobConfig settings")
    parser.add_argument(
        "--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)"
    )
    parser.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. batch_size=4"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> CaptionJobConfig:
    overrides = [f"input={json.dumps(args.input)}", f"out={json.dumps(args.out)}"]
    if args.model:
        overrides.append(f"captioner.model={json.dumps(args.model)}")
    cfg = load_config(CaptionJobConfig, args.config, [*args.overrides, *overrides])
    given = [o for o in args.overrides if o.split("=", 1)[0].strip() == "track.video.num_frames"]
    in_file = args.config and "num_frames" in ((read_yaml(args.config).get("track") or {}).get("video") or {})
    if not given and not in_file:  # sample the frames the checkpoint was made for (VideoLLaMA2's own)
        from facetrack.model.examples import model_num_frames

        frames = model_num_frames(cfg.captioner.model or DEFAULT_MODEL, default=None)
        if frames:
            cfg.track.video.num_frames = frames
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    return run_cli(args)


def check_model(model: str) -> str | None:
    """A clear message when ``model`` names a local folder or ``s3://`` prefix that does not exist.

    Anything else of the form ``org/name`` is taken for a hub id, which the actors download.
    """
    if storage.is_remote(model):
        return None if storage.exists(model.rstrip("/") + "/") else f"no checkpoint under {model}"
    path = os.path.expanduser(model)
    if os.path.exists(path):
        return None if os.path.isdir(path) else f"{model} is not a checkpoint folder"
    if model.startswith((".", "/", "~")) or model.strip("/").count("/") != 1:
        return f"no checkpoint folder at {model}"
    return None


def run_cli(args: argparse.Namespace) -> int:
    """Parse config, connect to (or start) Ray, run, print the summary."""
    import ray

    cfg = config_from_args(args)
    problem = check_model(cfg.captioner.model or DEFAULT_MODEL)
    if problem:
        print(f"facetrack caption: cannot load the model: {problem}", file=sys.stderr)
        return 2
    problem = check_writable(cfg.out)
    if problem:  # before Ray starts and before any video is decoded
        print(f"facetrack caption: {problem}", file=sys.stderr)
        return 2
    address = args.address or os.environ.get("RAY_ADDRESS")
    embedded = not address and not ray.is_initialized()
    connect(address, args.num_cpus)
    on_main = threading.current_thread() is threading.main_thread()  # only the main thread takes signals
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)} if on_main else {}
    try:
        summary = run(cfg)  # on a stop, the shard writer commits the finished rows as it exits
    except Stopped as stop:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if embedded:
            ray.shutdown()
        print(f"interrupted: {_rows_written(cfg.out)}; run the same command to continue", file=sys.stderr)
        return 128 + stop.signum
    except OutputError as exc:  # a full disk, storage down beyond its retry budget: committed rows stay
        if embedded:
            ray.shutdown()
        print(
            f"facetrack caption: cannot write the output: {exc.__cause__}; {_rows_written(cfg.out)} are kept,"
            " run the same command to continue once the output can be written",
            file=sys.stderr,
        )
        return 1
    except (storage.StorageError, FileNotFoundError, PermissionError, ValueError) as exc:
        # Nothing readable to caption, or an output that cannot be written: say so, no traceback.
        print(f"facetrack caption: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is _stop:
                signal.signal(sig, handler)
    print_summary(summary)
    return 0


def _rows_written(out: str) -> str:
    """``"N rows written"``, or what can be said when the output cannot be read either."""
    try:
        return f"{len(done_ids(out))} rows written"
    except (storage.StorageError, OSError):
        return "the rows written before (the output cannot be read now)"


class OutputError(storage.StorageError):
    """Rows could not be committed to the output; ``__cause__`` is the storage error."""


class _OutputWriter(ShardWriter):
    """The driver's shard writer: a failed commit is an :class:`OutputError` (the job stops, cleanly)."""

    def flush(self) -> str | None:
        try:
            return super().flush()
        except (storage.StorageError, OSError) as exc:
            raise OutputError(str(exc)) from exc


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived: the run stops, keeping what it finished (a BaseException, like Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, frame: Any) -> None:
    raise Stopped(signum)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
