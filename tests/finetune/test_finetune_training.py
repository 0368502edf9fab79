"""Fine-tuning pieces without Ray: data order, schedule, DeepSpeed configs, LoRA setup, ZeRO-3 sessions."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("peft", reason="fine-tuning needs peft (pip install 'facetrack[model]')")

from facetrack.model.lora import LoraSettings, apply_lora, lora_target_modules  # noqa: E402
from facetrack.model.schedule import DataOrder, cosine_with_warmup  # noqa: E402
from facetrack.model.train_settings import TrainSettings, resolve_deepspeed_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


def tiny_inputs() -> tuple[torch.Tensor, list[torch.Tensor], list[list[int]]]:
    """One clip of 8 random frames, its face crops, and a prompt with the video placeholder (-201)."""
    frames = torch.randn(1, 8, 3, 112, 112)
    faces = [torch.randn(8, 3, 112, 112)]
    ids = [[1, 733, -201, 28705, 13, 22557, 733]]
    return frames, faces, ids


def test_data_order_covers_each_epoch_once_and_is_deterministic() -> None:
    order = DataOrder(n_examples=23, world_size=2, micro_batch=2, grad_accum=3, seed=7)
    assert order.global_batch == 12 and order.steps_per_epoch == 1
    order = DataOrder(n_examples=50, world_size=2, micro_batch=2, grad_accum=3, seed=7)
    assert order.steps_per_epoch == 4
    for epoch in range(2):
        seen = []
        for step in range(epoch * 4, epoch * 4 + 4):
            for rank in range(2):
                batches = order.micro_batches(step, rank)
                assert len(batches) == 3 and all(len(b) == 2 for b in batches)
                seen += [i for b in batches for i in b]
        assert len(seen) == len(set(seen)) == 48  # 2 left over per epoch (drop last)
    assert order.micro_batches(5, 1) == DataOrder(50, 2, 2, 3, seed=7).micro_batches(5, 1)
    assert order.micro_batches(0, 0) != order.micro_batches(4, 0)  # a new permutation per epoch
    assert order.micro_batches(0, 0) != DataOrder(50, 2, 2, 3, seed=8).micro_batches(0, 0)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        DataOrder(n_examples=5, world_size=2, micro_batch=2, grad_accum=2, seed=0)


def test_cosine_schedule_with_warmup() -> None:
    factors = [cosine_with_warmup(s, total=100, warmup=10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[55] == pytest.approx(0.5, abs=0.02)
    assert cosine_with_warmup(100, total=100, warmup=10, min_ratio=0.1) == pytest.approx(0.1)
    assert TrainSettings(warmup_ratio=0.05).warmup(200) == 10
    assert TrainSettings(warmup_steps=3).warmup(200) == 3


def test_deepspeed_config_takes_batch_and_precision_from_the_settings() -> None:
    base = json.loads((CONFIGS / "deepspeed_zero2.json").read_text())
    settings = TrainSettings(micro_batch_size=2, grad_accum=4, max_grad_norm=0.5)
    cfg = resolve_deepspeed_config(base, settings, bf16=True)
    assert cfg["train_micro_batch_size_per_gpu"] == 2 and cfg["gradient_accumulation_steps"] == 4
    assert cfg["gradient_clipping"] == 0.5 and cfg["bf16"]["enabled"] is True
    assert cfg["zero_optimization"]["stage"] == 2
    assert resolve_deepspeed_config(base, settings, bf16=False)["bf16"]["enabled"] is False
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        resolve_deepspeed_config({**base, "gradient_accumulation_steps": 8}, settings, bf16=True)
    with pytest.raises(ValueError, match="optimizer"):
        resolve_deepspeed_config({**base, "optimizer": {"type": "AdamW"}}, settings, bf16=True)
    with pytest.raises(ValueError, match="bf16"):
        resolve_deepspeed_config({**base, "bf16": {"enabled": True}}, settings, bf16=False)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    from jobs.finetune import deepspeed_base_config, load_finetune_config

    if path.suffix == ".json":
        stage = json.loads(path.read_text())["zero_optimization"]["stage"]
        for bf16 in (True, False):
            cfg = resolve_deepspeed_config(json.loads(path.read_text()), TrainSettings(), bf16=bf16)
            assert cfg["zero_optimization"]["stage"] == stage and cfg["bf16"]["enabled"] is bf16
        assert deepspeed_base_config(f"zero{stage}") == json.loads(path.read_text())
        return
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ("jobs.finetune" in first or "facetrack" in first), first
    config = load_finetune_config(str(path))
    assert config.model and config.data.train and config.scaling.num_workers >= 1
    ds = deepspeed_base_config(config.train.deepspeed)
    resolve_deepspeed_config(ds, config.train, bf16=config.train.precision == "bf16")
    assert yaml.safe_load(path.read_text())["scaling"]["use_gpu"] == config.scaling.use_gpu


def test_bad_settings_are_refused() -> None:
    from facetrack.config import ConfigError
    from jobs.finetune import load_finetune_config

    base = str(CONFIGS / "finetune_tiny_cpu.yaml")
    with pytest.raises(ConfigError, match="precision"):
        load_finetune_config(base, ["train.precision=fp16"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_finetune_config(base, ["train.learning_rate=0.1"])
    with pytest.raises(ConfigError, match="full_rank"):
        load_finetune_config(base, ["lora.full_rank=[vision_tower]"])
    assert (
        load_finetune_config(base, ["scaling.num_workers=16", "scaling.use_gpu=true"]).scaling.num_workers
        == 16
    )


def test_lora_targets_the_llm_linears_and_projectors_train_at_full_rank() -> None:
    from facetrack.model.tiny import build_tiny

    model = build_tiny(seed=0)
    targets = lora_target_modules(model.llm)
    assert targets == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    frames, faces, ids = tiny_inputs()
    model.eval()
    with torch.no_grad():
        before = model(ids, frames, faces).logits
    report = apply_lora(model, LoraSettings(r=4, alpha=8), seed=0)
    with torch.no_grad():
        after = model(ids, frames, faces).logits
    torch.testing.assert_close(before, after)  # LoRA starts as the identity (B = 0)
    assert all(".llm." in f".{n}" and "lora_" in n for n in report.lora)
    assert not any("lm_head" in n for n in report.lora)
    assert {n.split(".")[0] for n in report.full_rank} == {"mm_projector", "face_projector"}
    assert any(n.startswith("vision_tower.") for n in report.frozen)
    assert any("lm_head" in n for n in report.frozen)
    assert report.n_lora > 0 and report.n_full_rank > 0 and report.n_frozen > report.n_full_rank
    other = build_tiny(seed=0)
    apply_lora(other, LoraSettings(r=4, alpha=8), seed=0)
    a = dict(model.named_parameters())
    assert all(torch.equal(a[n], p) for n, p in other.named_parameters() if "lora_A" in n)  # same init


def test_micro_batches_with_loader_workers_come_in_training_order(tiny_model: Path, tmp_path: Path) -> None:
    from finetune_session_helpers import write_clip_cache

    from facetrack.data import load_templates
    from facetrack.model.examples import ExampleBuilder, MicroBatches, TrainItem, visual_token_count
    from facetrack.model.loading import load_model

    loaded = load_model(str(tiny_model))
    model = loaded.model
    items = [TrainItem.from_dict(d) for d in write_clip_cache(tmp_path, n=6)]
    visual = [visual_token_count(model, it.n_frames, it.has_crops) for it in items]
    builder = ExampleBuilder(
        items,
        loaded.tokenizer,
        load_templates(),
        model.image_processor,
        model.face_processor,
        visual,
        4096,
        3,
    )
    order = DataOrder(n_examples=6, world_size=2, micro_batch=1, grad_accum=2, seed=3)

    def run(workers: int) -> list[tuple[int, int, list[str]]]:
        loader = torch.utils.data.DataLoader(
            MicroBatches(builder, order, rank=1, start_step=1, end_step=4),
            batch_size=None,
            num_workers=workers,
        )
        return [(step, k, batch.ids) for step, k, batch in loader]

    serial = run(0)
    assert [(s, k) for s, k, _ in serial] == [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    expected = [[items[i].id for i in b] for step in range(1, 4) for b in order.micro_batches(step, 1)]
    assert [ids for _, _, ids in serial] == expected
    assert run(2) == serial
    batch = builder.batch([0, 1], epoch=0)
    assert batch.pixel_values.shape == (2, 8, 3, 112, 112)
    assert batch.face_pixels[0] is None and batch.face_pixels[1].shape == (8, 3, 112, 112)  # clip0: no face
    assert batch.n_tokens == sum(len(s) - 1 for s in batch.sequences) + visual[0] + visual[1]


def test_finetune_command_passes_its_options_to_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from facetrack.commands.finetune import add_arguments, job_argv

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--config", "c.yaml", "--num-workers", "8", "--gpu", "train.lr=0.001", "name=x"]
    )
    assert job_argv(args) == ["--config", "c.yaml", "--num-workers", "8", "--gpu", "train.lr=0.001", "name=x"]
    from jobs.finetune import config_from_args

    argv = ["--config", str(CONFIGS / "finetune_tiny_cpu.yaml"), "--num-workers", "3", "--gpu"]
    monkeypatch.chdir(tmp_path)  # whatever the caller's working directory holds
    config = config_from_args(parser.parse_args(argv))
    assert config.scaling.num_workers == 3 and config.scaling.use_gpu is True
    assert Path(config.data.train).is_absolute() and Path(config.storage_path).is_absolute()
    assert config.model == "tiny-model"  # no such folder here: taken for a hub id, left as it is
    (tmp_path / "tiny-model").mkdir()
    assert config_from_args(parser.parse_args(argv)).model == str(tmp_path / "tiny-model")  # a folder


def test_a_face_branch_added_to_a_plain_base_survives_both_exports(tmp_path: Path) -> None:
    """A VideoLLaMA2 base without a face branch gets FaceTrack-MM's (vision tower on the crops plus a new
    projector); both export formats carry it, and the captioner's loader rebuilds the same model."""
    from facetrack.model.export import export_checkpoint
    from facetrack.model.language_model import load_tokenizer
    from facetrack.model.loading import load_model
    from facetrack.model.lora import add_face_branch
    from facetrack.model.run_checkpoints import save_trainables
    from facetrack.model.saving import save_videollama2
    from facetrack.model.tiny import build_tiny, tiny_spec, write_mistral_tokenizer

    tokenizer = load_tokenizer(write_mistral_tokenizer(tmp_path / "tok"))
    base = save_videollama2(
        build_tiny(tiny_spec(face_encoder="none"), seed=0), tmp_path / "base", tokenizer=tokenizer
    )
    model = load_model(str(base)).model
    assert not model.has_face_branch
    assert add_face_branch(model, tokens_per_frame=2, seed=1) and not add_face_branch(model, 2)
    apply_lora(model, LoraSettings(r=4, alpha=8), seed=0)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n} == {
        "mm_projector",
        "face_projector",
    }
    with torch.no_grad():  # stand-in for training: move every trainable weight
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    run = tmp_path / "run" / "checkpoint_000001"
    run.mkdir(parents=True)
    state = {"step": 1, "model": str(base), "face_encoder": "vision_tower", "face_tokens_per_frame": 2}
    save_trainables(model, run, state)
    info = export_checkpoint(str(tmp_path / "run"), tmp_path / "adapter")
    merged = export_checkpoint(str(run), tmp_path / "merged", merge=True)
    assert info["format"] == "videollama2-lora" and merged["format"] == "facetrack-merged"
    frames, faces, ids = tiny_inputs()
    model.eval()
    with torch.no_grad():
        expected = model(ids, frames, faces).logits
    for folder in (tmp_path / "adapter", tmp_path / "merged"):
        loaded = load_model(str(folder)).model
        assert loaded.has_face_branch and loaded.face_tokens_per_frame == 2
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids, frames, faces).logits, expected, rtol=1e-4, atol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zero3_session_saves_a_gathered_adapter_and_resumes_exactly(tiny_model: Path, tmp_path: Path) -> None:
    """Two processes, DeepSpeed ZeRO-3 on CPU with gradient checkpointing: checkpoint at step 2, resume
    gives the same steps 3-4."""
    pytest.importorskip("deepspeed", reason="needs deepspeed (pip install 'facetrack[train]')")
    import torch.multiprocessing as mp
    from finetune_session_helpers import session_worker, write_clip_cache

    from jobs.finetune import deepspeed_base_config

    items = write_clip_cache(tmp_path, n=8)
    args = {
        "model": str(tiny_model),
        "items": items,
        "train": {
            "epochs": 1,
            "max_steps": 4,
            "lr": 5e-3,
            "warmup_ratio": 0.0,
            "precision": "fp32",
            "gradient_checkpointing": True,
        },
        "deepspeed": deepspeed_base_config("zero3"),
        "ckpt": str(tmp_path / "ckpt"),
        "out": str(tmp_path / "out.json"),
        "port": _free_port(),
    }
    mp.start_processes(session_worker, args=(2, args), nprocs=2, start_method="spawn")
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["resumed"] == pytest.approx(out["straight"], rel=1e-6, abs=1e-6)
    assert out["state"] == {"step": 2, "face_encoder": "vision_tower", "face_tokens_per_frame": 4}
    assert out["lora_b_nonzero"]  # the adapter was gathered from the shards, not saved empty
    shapes = out["shapes"]
    assert shapes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == [4, 64]
    assert any(k.startswith("model.mm_projector.") for k in shapes)
    assert all(0 not in s for s in shapes.values())
    # ZeRO-3 shards both the weights and the optimizer: one file of each per rank.
    assert out["files"] == [
        "deepspeed/state/zero_pp_rank_0_mp_rank_00_model_states.pt",
        "deepspeed/state/zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "deepspeed/state/zero_pp_rank_1_mp_rank_00_model_states.pt",
        "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    # Rank 1 wrote only its own shards: no adapter, no state, no shared file.
    assert not any(f.startswith(("adapter", "train_state", "non_lora")) for f in out["rank1_files"])
    assert out["data"]["examples"] == 8 and out["data"]["dropped_too_long"] == 0
