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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facetrack import storage
from facetrack.commands.finetune import add_arguments
from facetrack.config import ConfigError, load_config, to_dict
from facetrack.model.lora import LoraSettings
from facetrack.model.run_checkpoints import latest_checkpoint, local_checkpoint
from facetrack.model.train_metrics import MetricsLog, plot_loss
from facetrack.model.train_settings import TrainSettings
from jobs.finetune_config import (
    FinetuneConfig,
    ScalingSettings,
    deepspeed_base_config,
    load_finetune_config,
)
from jobs.finetune_preprocess import preprocess
from jobs.ray_session import connect

log = logging.getLogger("facetrack.finetune")

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

    from facetrack.model.examples import TrainItem
    from facetrack.model.run_checkpoints import write_json
    from facetrack.model.session import FinetuneSession

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
    connect()
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
        connect()
        print(json.dumps(preprocess(config), indent=2))
        return 0
    summary = run(config)
    print(json.dumps({k: summary[k] for k in ("run_dir", "checkpoint", "first_loss", "last_loss")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
