"""Fine-tune FaceTrack-MM with LoRA: Ray Data preprocessing, then Ray Train workers under DeepSpeed ZeRO.

    python -m jobs.finetune --config jobs/configs/finetune_tiny_cpu.yaml [key=value ...]
    python -m jobs.finetune --config my.yaml --num-workers 16 --gpu

1. Records (FDA format) are read; bad ones are dropped and counted.
2. Preprocessing (Ray Data): each clip is decoded and face-tracked once; frames and main-character crops
   are cached as one ``.npz`` per clip under ``data.cache`` with a JSON sidecar, then a manifest lists the
   usable clips. A re-run reuses every cached clip, so an interrupted preprocessing resumes.
3. Training (Ray Train ``TorchTrainer`` + DeepSpeed): LoRA on the language model, full-rank connector and
   face projector. Checkpoints go to ``storage_path/name``; running again with the same name resumes
   from the latest one, with the same data order and the same losses as an uninterrupted run.
4. Metrics per step in ``metrics.jsonl``, a loss curve ``loss.png`` and ``summary.json`` in the run folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from facetrack import storage
from facetrack.commands.finetune import add_arguments
from facetrack.config import ConfigError, load_config, to_dict
from facetrack.faces.stage import FaceTrackConfig
from facetrack.model.training import (
    LoraSettings,
    MetricsLog,
    TrainSettings,
    latest_checkpoint,
    local_checkpoint,
    plot_loss,
)

log = logging.getLogger("facetrack.finetune")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEEPSPEED_CONFIGS = {"zero2": "deepspeed_zero2.json", "zero3": "deepspeed_zero3.json"}
CACHE_FORMAT = 1


@dataclass
class DataSettings:
    """Where the records are and how clips are preprocessed and cached."""

    train: str = ""
    """FDA-format records: a ``.json`` list or ``.jsonl`` file of ``{"id", "video", "caption"}``."""
    video_root: str | None = None
    """Base for relative ``video`` paths (default: the records file's folder)."""
    templates: str | None = None
    """A JSON list of instructions (default: the model's training instructions)."""
    cache: str = ""
    """Clip cache prefix, local or ``s3://`` (default: ``<storage_path>/cache``); shared across runs."""
    num_frames: int = 0
    """Frames per clip (0: the base model's ``num_frames``)."""
    frame_size: int = 336
    """Cached frames are shrunk so their longer side is at most this (0 keeps the decoded size)."""
    jpeg_quality: int = 95
    tracking: FaceTrackConfig = field(default_factory=FaceTrackConfig)
    """The face tracking stage's settings (``video``, ``faces``, ``track``, ``select``)."""
    preprocess_cpus: float = 1.0
    """CPUs per preprocessing actor."""
    preprocess_concurrency: int = 2
    """Preprocessing actors at most."""

    def __post_init__(self) -> None:
        if self.num_frames < 0 or self.frame_size < 0:
            raise ValueError("data.num_frames and data.frame_size must be >= 0")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("data.jpeg_quality must be in 1..100")
        if self.preprocess_cpus <= 0 or self.preprocess_concurrency < 1:
            raise ValueError("data.preprocess_cpus must be > 0 and data.preprocess_concurrency >= 1")


@dataclass
class ScalingSettings:
    """How many training workers and what each gets (also settable with --num-workers / --gpu)."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    backend: str = "auto"
    """Process group backend: ``auto`` (nccl with GPUs, gloo on CPU), ``nccl`` or ``gloo``."""

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError("scaling.num_workers must be >= 1")
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"scaling.backend must be auto, nccl or gloo, got {self.backend!r}")


@dataclass
class FinetuneConfig:
    """A fine-tuning run."""

    model: str = ""
    """The base checkpoint (folder, ``s3://`` prefix or hub id), VideoLLaMA2 or FaceTrack-MM format."""
    name: str = "facetrack-finetune"
    """Run name: the run folder is ``<storage_path>/<name>``; a re-run with the same name resumes."""
    storage_path: str = "out/finetune"
    """Where runs, checkpoints and the clip cache go (local folder or ``s3://bucket/prefix``)."""
    max_failures: int = 0
    """Times Ray Train restarts failed workers from the latest checkpoint within one run."""
    data: DataSettings = field(default_factory=DataSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model (the base checkpoint) is required")
        if not self.data.train:
            raise ValueError("data.train (the FDA-format records) is required")

    @property
    def storage_root(self) -> str:
        """``storage_path`` as an absolute local path or a URI (``s3://``, ``gs://``, ...)."""
        path = self.storage_path
        return path if storage.is_remote(path) else os.path.abspath(path)

    @property
    def run_dir(self) -> str:
        return storage.join(self.storage_root, self.name)

    @property
    def cache_dir(self) -> str:
        if self.data.cache:
            return self.data.cache if storage.is_remote(self.data.cache) else os.path.abspath(self.data.cache)
        return storage.join(self.storage_root, "cache")


def _absolute(path: str | None, must_exist: bool = False) -> str | None:
    """A local relative path made absolute (Ray workers do not share the driver's working directory)."""
    if not path or storage.is_remote(path) or os.path.isabs(path):
        return path
    if must_exist and not os.path.exists(path):
        return path  # not a local path: a hub id
    return os.path.abspath(path)


def load_finetune_config(path: str | None, overrides: Sequence[str] = ()) -> FinetuneConfig:
    """Build a :class:`FinetuneConfig` from a YAML file and ``key=value`` overrides.

    Local relative paths (model, records, templates, cache, storage) are made absolute.
    """
    config = load_config(FinetuneConfig, path, overrides)
    config.model = _absolute(config.model, must_exist=True) or config.model
    config.data.train = _absolute(config.data.train) or config.data.train
    config.data.video_root = _absolute(config.data.video_root)
    config.data.templates = _absolute(config.data.templates)
    config.data.cache = _absolute(config.data.cache) or ""
    config.storage_path = _absolute(config.storage_path) or config.storage_path
    return config


def deepspeed_base_config(name: str) -> dict[str, Any]:
    """The DeepSpeed JSON named by ``train.deepspeed``: a shipped one (zero2/zero3) or a path/URI."""
    if name in DEEPSPEED_CONFIGS:
        return json.loads((CONFIG_DIR / DEEPSPEED_CONFIGS[name]).read_text(encoding="utf-8"))
    try:
        return json.loads(storage.read_text(name))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"train.deepspeed: no DeepSpeed config {name!r} (zero2, zero3 or a JSON path)"
        ) from exc


# ------------------------------------------------------------------------------------------ preprocessing


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
    from facetrack.model.training import TrainItem, model_num_frames

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


# --------------------------------------------------------------------------------------------- training


def _progress(total: int, initial: int):
    try:
        from ray.experimental.tqdm_ray import tqdm
    except ImportError:  # pragma: no cover - older Ray
        from tqdm import tqdm
    bar = tqdm(total=total, desc="finetune", unit="step")
    if initial:
        bar.update(initial)
    return bar


def train_loop(loop: dict[str, Any]) -> None:
    """Ray Train worker: set up the session, resume if a checkpoint exists, train, checkpoint, report."""
    import ray.train
    import ray.train.torch

    from facetrack.model.training import FinetuneSession, TrainItem, write_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    train = load_config(TrainSettings, None, base=loop["train"])
    lora = load_config(LoraSettings, None, base=loop["lora"])
    items = [
        TrainItem.from_dict(json.loads(line)) for line in storage.read_text(loop["manifest"]).splitlines()
    ]
    session = FinetuneSession(
        model_source=loop["model"],
        items=items,
        templates=loop["templates"],
        lora=lora,
        train=train,
        deepspeed_config=loop["deepspeed"],
        rank=rank,
        world_size=world,
        device=ray.train.torch.get_device(),
    )
    session.setup()
    assert session.order is not None and session.report is not None
    metrics = MetricsLog(loop["metrics_uri"])
    start = 0
    resume = latest_checkpoint(loop["run_dir"])
    if resume is not None:
        with tempfile.TemporaryDirectory(prefix="facetrack-resume-") as tmp:
            folder = local_checkpoint(resume, Path(tmp))
            state = json.loads((folder / "train_state.json").read_text(encoding="utf-8"))
            if int(state["world_size"]) != world or int(state["global_batch"]) != session.order.global_batch:
                raise ValueError(
                    f"{resume} was written by {state['world_size']} workers with a global batch of "
                    f"{state['global_batch']}; this run has {world} and {session.order.global_batch}: resume "
                    "with the same num_workers, micro_batch_size and grad_accum"
                )
            start = int(session.load(folder)["step"])
            saved = folder / "metrics.jsonl"
            if rank == 0 and saved.is_file():
                metrics.rows = MetricsLog.parse(saved.read_text(encoding="utf-8"), start)
        if rank == 0:
            log.info("resumed from %s: step %d of %d", resume, start, session.total_steps)
    info = {
        "data": session.data_stats,
        "trainable": session.report.summary(),
        "steps_per_epoch": session.order.steps_per_epoch,
        "total_steps": session.total_steps,
        "global_batch": session.order.global_batch,
        "world_size": world,
        "resumed_from": start,
    }
    if rank == 0:
        log.info("training: %s", json.dumps(info))
    bar = _progress(session.total_steps, start) if rank == 0 and train.progress else None
    for stats in session.steps(start, session.total_steps):
        row = stats.row()
        if rank == 0:
            metrics.rows.append(row)
        if bar is not None:
            bar.set_description(f"finetune loss {stats.loss:.4f} lr {stats.lr:.2e}")
            bar.update(1)
        last = stats.step == session.total_steps
        if stats.step % train.checkpoint_every == 0 or last:
            state = {
                "step": stats.step,
                "epoch": stats.epoch,
                "global_batch": session.order.global_batch,
                "world_size": world,
                "samples_seen": stats.step * session.order.global_batch,
                "seed": train.seed,
                "model": loop["model"],
                "total_steps": session.total_steps,
            }
            with tempfile.TemporaryDirectory(prefix="facetrack-ckpt-") as folder:
                session.save(folder, state)
                if rank == 0:
                    (Path(folder) / "metrics.jsonl").write_text(metrics.text(), encoding="utf-8")
                    write_json(Path(folder) / "run_info.json", info)
                ray.train.report(
                    {**row, "info": info}, checkpoint=ray.train.Checkpoint.from_directory(folder)
                )
            if rank == 0:
                metrics.flush()
        elif rank == 0 and stats.step % train.metrics_every == 0:
            metrics.flush()
        if train.fail_after_step == stats.step and start == 0 and rank == 0:
            log.error("fault injection: rank 0 exits after step %d", stats.step)
            os._exit(1)
    if bar is not None:
        bar.close()


def _backend(scaling: ScalingSettings) -> str:
    if scaling.backend != "auto":
        return scaling.backend
    return "nccl" if scaling.use_gpu else "gloo"


def train(config: FinetuneConfig, manifest: str) -> Any:
    """Run the Ray Train job over the preprocessed manifest; returns Ray's ``Result``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from facetrack.data import load_templates

    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    loop = {
        "model": config.model,
        "manifest": manifest,
        "templates": load_templates(config.data.templates),
        "lora": to_dict(config.lora),
        "train": to_dict(config.train),
        "deepspeed": deepspeed_base_config(config.train.deepspeed),
        "metrics_uri": storage.join(config.run_dir, "metrics.jsonl"),
        "run_dir": config.run_dir,
    }
    ray_fs, ray_path = storage.pyarrow_filesystem(config.storage_root)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop,
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend=_backend(scaling)),
        run_config=RunConfig(
            name=config.name,
            # Ray Train writes through the same filesystem as the rest of the job.
            storage_path=ray_path,
            storage_filesystem=ray_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=config.max_failures),
        ),
    )
    return trainer.fit()


def run(config: FinetuneConfig) -> dict[str, Any]:
    """Preprocess, train, plot, summarise. Returns the summary (also written to ``summary.json``)."""
    started = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None)
    prep = preprocess(config)
    if prep["usable"] == 0:
        raise RuntimeError(f"no usable training clip (dropped: {prep['dropped']})")
    result = train(config, prep["manifest"])
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}") from result.error
    metrics_uri = storage.join(config.run_dir, "metrics.jsonl")
    metrics_text = storage.read_text(metrics_uri)
    png = plot_loss(metrics_text, config.name)
    if png is not None:
        storage.write_bytes(storage.join(config.run_dir, "loss.png"), png)
    rows = [json.loads(line) for line in metrics_text.splitlines() if line.strip()]
    final = dict(result.metrics or {})
    summary = {
        "name": config.name,
        "run_dir": config.run_dir,
        "checkpoint": None if result.checkpoint is None else result.checkpoint.path,
        "preprocess": prep,
        "train": final.pop("info", {}),
        "final": final,
        "first_loss": rows[0]["loss"] if rows else None,
        "last_loss": rows[-1]["loss"] if rows else None,
        "config": to_dict(config),
        "seconds": round(time.perf_counter() - started, 2),
    }
    storage.write_text(
        storage.join(config.run_dir, "summary.json"), json.dumps(summary, indent=2, default=str)
    )
    return summary


# ------------------------------------------------------------------------------------------------- CLI


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    overrides = list(args.overrides)
    if args.num_workers is not None:
        overrides.append(f"scaling.num_workers={args.num_workers}")
    if args.gpu:
        overrides.append("scaling.use_gpu=true")
    if args.cpus_per_worker is not None:
        overrides.append(f"scaling.cpus_per_worker={args.cpus_per_worker}")
    return load_finetune_config(args.config, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.finetune", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_from_args(args)


def run_from_args(args: argparse.Namespace) -> int:
    if args.make_demo_data:
        from facetrack.commands.finetune import make_demo_data

        return make_demo_data(args.make_demo_data)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.preprocess_only:
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS") or None)
        print(json.dumps(preprocess(config), indent=2))
        return 0
    summary = run(config)
    print(json.dumps({k: summary[k] for k in ("run_dir", "checkpoint", "first_loss", "last_loss")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
