"""The fine-tuning job on Ray: 2 Ray Train workers with DeepSpeed ZeRO-2 on CPU, a tiny model, composed clips.

One uninterrupted run is shared by the tests of this module; the resume test runs the same config under
another name, killed after a step that has no checkpoint, then resumed by a fresh trainer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed", reason="fine-tuning needs deepspeed (pip install 'facetrack[train]')")
pytest.importorskip("peft", reason="fine-tuning needs peft (pip install 'facetrack[model]')")

STEPS = 6  # 6 clips, 2 workers x 1 example: 3 steps per epoch, 2 epochs
CONFIG = "jobs/configs/finetune_tiny_cpu.yaml"


def overrides(tiny_model: Path, fda_dataset: Path, storage: Path | str, name: str, **train) -> list[str]:
    return [
        f"model={tiny_model}",
        f"data.train={fda_dataset}",
        f"storage_path={storage}",
        f"name={name}",
        "train.epochs=2",
        "train.grad_accum=1",
        "train.lr=1.0e-2",
        "train.warmup_ratio=0.0",
        "train.checkpoint_every=2",
        "train.keep_checkpoints=3",
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=0.5",
        "data.preprocess_cpus=0.5",
    ] + [f"train.{k}={v}" for k, v in train.items()]


def make_config(tiny_model: Path, fda_dataset: Path, storage: Path, name: str, **train):
    from jobs.finetune import load_finetune_config

    return load_finetune_config(CONFIG, overrides(tiny_model, fda_dataset, storage, name, **train))


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    return [r["loss"] for r in rows]


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("finetune-runs")


@pytest.fixture(scope="module")
def straight(ray_local, tiny_model: Path, fda_dataset: Path, storage: Path) -> dict:
    """An uninterrupted run: preprocessing, then 6 steps with checkpoints at 2, 4 and 6."""
    from jobs.finetune import run

    return run(make_config(tiny_model, fda_dataset, storage, "straight"))


def test_bad_records_are_skipped_and_counted(straight: dict) -> None:
    prep = straight["preprocess"]
    assert prep["records"] == 10
    assert prep["usable"] == 6
    assert prep["no_face"] == 1  # trained on frames alone, next to clips with face tokens
    assert prep["dropped"] == {
        "empty_caption": 1,
        "no_video_field": 1,
        "video_not_found": 1,
        "video_unreadable": 1,
    }
    assert any("does-not-exist.mp4" in e for e in prep["dropped_examples"]["video_not_found"])


def test_two_workers_zero2_loss_goes_down(straight: dict, storage: Path) -> None:
    run_dir = storage / "straight"
    curve = losses(run_dir)
    assert len(curve) == STEPS
    assert sum(curve[-2:]) / 2 < curve[0] - 0.5, curve
    info = straight["train"]
    assert info["world_size"] == 2 and info["global_batch"] == 2 and info["total_steps"] == STEPS
    assert info["trainable"]["lora_params"] > 0 and info["trainable"]["full_rank_params"] > 0
    assert info["data"]["examples"] == 6 and info["data"]["tokens_cut"] == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["samples"] == 2 and row["tokens"] > 0
        assert row["samples_per_s"] > 0 and row["tokens_per_s"] > 0 and row["lr"] >= 0
    assert rows[0]["lr"] == pytest.approx(1e-2)  # no warmup: the cosine starts at the peak
    assert rows[-1]["lr"] < rows[1]["lr"]
    png = (run_dir / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["last_loss"] == pytest.approx(curve[-1])


def test_checkpoint_holds_adapter_trainables_and_sharded_optimizer(straight: dict, storage: Path) -> None:
    checkpoint = Path(straight["checkpoint"])
    state = json.loads((checkpoint / "train_state.json").read_text())
    assert state["step"] == STEPS and state["global_batch"] == 2 and state["samples_seen"] == 2 * STEPS
    assert (checkpoint / "adapter" / "adapter_config.json").is_file()
    assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file()
    assert (checkpoint / "non_lora_trainables.bin").is_file()
    shards = sorted(p.name for p in (checkpoint / "deepspeed" / "state").iterdir())
    # Every rank wrote its own optimizer shard; the shared files come from rank 0 only.
    assert shards == [
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    kept = sorted(
        p.name for p in (storage / "straight").iterdir() if p.is_dir() and p.name.startswith("checkpoint_")
    )
    assert len(kept) == 3


def test_preprocessing_reuses_a_complete_run_and_resumes_an_interrupted_one(
    straight: dict, tiny_model: Path, fda_dataset: Path, storage: Path
) -> None:
    from jobs.finetune import preprocess

    config = make_config(tiny_model, fda_dataset, storage, "straight")
    manifest = Path(straight["preprocess"]["manifest"])
    again = preprocess(config)
    assert again["reused"] is True and again["manifest"] == str(manifest)
    # An interrupted preprocessing: no manifest yet, one clip not cached. Only that clip is tracked.
    text = manifest.read_text()
    first_clip = Path(json.loads(text.splitlines()[0])["clip"])
    first_clip.unlink()
    manifest.unlink()
    resumed = preprocess(config)
    assert resumed["reused"] is False
    assert resumed["cached_before"] == 5 and resumed["tracked"] == 1 and resumed["usable"] == 6
    assert first_clip.is_file() and manifest.read_text() == text


def test_kill_and_resume_on_s3_gives_the_same_losses(
    straight: dict,
    s3_server,
    s3_bucket: str,
    tiny_model: Path,
    fda_dataset: Path,
    storage: Path,
    tmp_path: Path,
) -> None:
    """The CLI on this machine with runs and clip cache on S3: killed after step 3 (its last checkpoint
    is at step 2), then run again: the resumed run's losses are the uninterrupted run's."""
    from facetrack import storage as store
    from facetrack.cli import main

    root = f"s3://{s3_bucket}/finetune"
    args = [sys.executable, "-m", "jobs.finetune", "--config", CONFIG]
    args += overrides(tiny_model, fda_dataset, root, "resumed")
    killed = subprocess.run([*args, "train.fail_after_step=3"], capture_output=True, text=True, timeout=400)
    assert killed.returncode != 0
    metrics = f"{root}/resumed/metrics.jsonl"
    assert len(store.read_text(metrics).splitlines()) == 2  # written with each checkpoint: steps 1-2
    done = subprocess.run(args, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(store.read_text(f"{root}/resumed/summary.json"))
    assert summary["train"]["resumed_from"] == 2
    assert summary["preprocess"]["reused"] is True  # the clip cache on S3 was complete after the first run
    rows = [json.loads(line) for line in store.read_text(metrics).splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    expected = losses(storage / "straight")
    assert [r["loss"] for r in rows] == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert main(["export", f"{root}/resumed", str(tmp_path / "exported")]) == 0
    assert json.loads((tmp_path / "exported" / "train_state.json").read_text())["step"] == STEPS


def test_exported_adapter_loads_in_the_captioner_and_changes_its_output(
    straight: dict, storage: Path, tmp_path: Path
) -> None:
    from facetrack import storage as store
    from facetrack.caption import Captioner, CaptionerConfig
    from facetrack.cli import main
    from facetrack.data import decode_clip
    from facetrack.model.examples import TrainItem

    manifest = straight["preprocess"]["manifest"]
    items = [TrainItem.from_dict(json.loads(line)) for line in store.read_text(manifest).splitlines()]
    clips = [decode_clip(store.read_bytes(it.clip))[0] for it in items[:2]]

    assert main(["export", str(storage / "straight"), str(tmp_path / "adapter")]) == 0
    assert main(["export", str(storage / "straight"), str(tmp_path / "merged"), "--merge"]) == 0
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "non_lora_trainables.bin").is_file()

    def captions(model: Path) -> list[str]:
        # The prompt the run was trained with, for every folder: by default a VideoLLaMA2 v1 folder is
        # asked with the llama2 template and one in our format with the chat template.
        config = CaptionerConfig(model=str(model), max_new_tokens=12, batch_size=2, prompt_style="chat")
        captioner = Captioner(config)
        results = captioner.caption(clips)
        assert all(r.ok for r in results), [r.error for r in results]
        return [r.caption for r in results]

    base = captions(Path(straight["config"]["model"]))
    tuned = captions(tmp_path / "adapter")
    assert tuned != base
    assert captions(tmp_path / "merged") == tuned
    assert main(["export", str(storage / "no-such-run"), str(tmp_path / "x")]) == 1
