"""Checkpoint formats through the real loader: VideoLLaMA2 folders, LoRA, our format, S3, broken files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from facetrack.model.loading import CheckpointError, load_model
from facetrack.model.modeling import checkpoint_state
from facetrack.model.saving import save_checkpoint, save_videollama2
from facetrack.model.tiny import build_tiny, tiny_spec, write_mistral_tokenizer

TINY_SWIN = {
    "embed_dim": 8,
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 1, 2, 2],
    "window_size": 7,
    "fused_dim": 16,
}


def assert_same_weights(a, b) -> None:
    sa, sb = checkpoint_state(a), checkpoint_state(b)
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def logits(model, tokenizer, seed: int = 0) -> torch.Tensor:
    """Next-token logits of a fixed multimodal input (frames and crops)."""
    import numpy as np

    from facetrack.model.prompt import caption_prompt, tokenize_with_video

    rng = np.random.default_rng(seed)
    pixels = model.preprocess_frames(rng.integers(0, 256, (8, 60, 80, 3), dtype=np.uint8))[None]
    faces = [model.preprocess_faces(rng.integers(0, 256, (8, 40, 40, 3), dtype=np.uint8))]
    ids = tokenize_with_video(caption_prompt(tokenizer, "Describe."), tokenizer)
    with torch.no_grad():
        return model([ids], pixels, faces).logits[0, -1]


def test_videollama2_folder_round_trip(tiny_model, tiny_dir: Path, loaded) -> None:
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "videollama2_mistral"
    assert config["mm_projector_type"] == "stc_connector" and config["mm_hidden_size"] == 32
    assert config["mm_vision_select_layer"] == -2
    # The tiny model crops, as VideoLLaMA2's inference does; the folder says so.
    assert config["facetrack_preprocess"] == "crop" and config["image_aspect_ratio"] == "square"
    assert loaded.model.spec.preprocess == "crop" and loaded.model.image_processor.mode == "crop"
    assert loaded.kind == "videollama2" and loaded.name == tiny_dir.name
    assert loaded.model.spec.llm["model_type"] == "mistral"
    assert_same_weights(tiny_model, loaded.model)
    assert len(loaded.tokenizer) == 32000 and loaded.tokenizer.eos_token_id == 2
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token is not None


def test_bin_weights_with_separate_projector_and_tower(tiny_model, tmp_path: Path) -> None:
    save_videollama2(tiny_model, tmp_path, weights="bin", projector_file=True, include_vision_tower=False)
    write_mistral_tokenizer(tmp_path)
    assert (tmp_path / "pytorch_model.bin").is_file() and (tmp_path / "mm_projector.bin").is_file()
    assert (tmp_path / "clip_vision_tower" / "model.safetensors").is_file()
    assert_same_weights(tiny_model, load_model(str(tmp_path)).model)


def test_projector_only_folder_loads_onto_its_base(tiny_model, tiny_dir: Path, tmp_path: Path) -> None:
    # A pretraining-stage folder: config + mm_projector.bin, the LM and tower come from the base model.
    other = build_tiny(seed=1)
    save_videollama2(other, tmp_path, projector_file=True)
    (tmp_path / "model.safetensors").unlink()
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "_name_or_path": str(tiny_dir)}))
    model = load_model(str(tmp_path)).model
    for key, value in model.mm_projector.state_dict().items():
        assert torch.equal(value, other.mm_projector.state_dict()[key]), key
    for key, value in model.llm.state_dict().items():
        assert torch.equal(value, tiny_model.llm.state_dict()[key]), key
    with pytest.raises(CheckpointError, match="give its base model"):
        (tmp_path / "config.json").write_text(json.dumps(config))
        load_model(str(tmp_path))


def test_own_format_round_trip_and_shards(loaded, tmp_path: Path) -> None:
    save_checkpoint(loaded.model, loaded.tokenizer, tmp_path / "one")
    assert json.loads((tmp_path / "one" / "facetrack.json").read_text())["format"] == "facetrack-mm"
    again = load_model(str(tmp_path / "one"))
    assert again.kind == "facetrack"
    assert_same_weights(loaded.model, again.model)
    assert again.tokenizer("[INST] hi").input_ids == loaded.tokenizer("[INST] hi").input_ids

    save_checkpoint(loaded.model, loaded.tokenizer, tmp_path / "sharded", max_shard_bytes=2 * 2**20)
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) >= 3 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert_same_weights(loaded.model, load_model(str(tmp_path / "sharded")).model)
    shards[1].unlink()
    with pytest.raises(CheckpointError, match=f"missing weight file .*{shards[1].name}"):
        load_model(str(tmp_path / "sharded"))


def _lora(model, seed: int = 0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,  # random A and B: the adapter changes the output
    )
    return get_peft_model(model.llm, config)


def test_videollama2_lora_folder_changes_output_and_merges_exactly(tiny_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    base = load_model(str(tiny_dir))
    trained = load_model(str(tiny_dir))
    peft_llm = _lora(trained.model)
    with torch.no_grad():
        for p in trained.model.mm_projector.parameters():  # the full-rank part trains too
            p.add_(0.01)
    lora_dir = tmp_path / "videollama2-lora"
    peft_llm.save_pretrained(str(lora_dir))
    non_lora = {
        f"base_model.model.model.mm_projector.{k}": v.clone()
        for k, v in trained.model.mm_projector.state_dict().items()
    }
    torch.save(non_lora, lora_dir / "non_lora_trainables.bin")
    config = json.loads((tiny_dir / "config.json").read_text())
    (lora_dir / "config.json").write_text(json.dumps({**config, "_name_or_path": str(tiny_dir)}))

    merged = load_model(str(lora_dir))
    unmerged = load_model(str(lora_dir), merge_lora=False)
    assert merged.kind == "videollama2-lora"
    tok = base.tokenizer
    ref, out_merged, out_unmerged = (
        logits(base.model, tok),
        logits(merged.model, tok),
        logits(unmerged.model, tok),
    )
    assert not torch.allclose(ref, out_merged, atol=1e-3)
    torch.testing.assert_close(out_merged, out_unmerged, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_merged, logits(trained.model, tok), atol=1e-4, rtol=1e-4)
    # Merging is W + (alpha / r) * B @ A, exactly.
    layer = peft_llm.base_model.model.model.layers[0].self_attn.q_proj
    delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * (8 / 4)
    w_base = base.model.llm.model.layers[0].self_attn.q_proj.weight
    w_merged = merged.model.llm.model.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(w_merged, w_base + delta, atol=1e-6, rtol=0)
    for key, value in merged.model.mm_projector.state_dict().items():
        assert torch.equal(value, trained.model.mm_projector.state_dict()[key]), key

    (lora_dir / "non_lora_trainables.bin").unlink()
    with pytest.raises(CheckpointError, match="non_lora_trainables.bin"):
        load_model(str(lora_dir))


def test_own_format_keeps_an_adapter(tiny_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    trained = load_model(str(tiny_dir))
    trained.model.llm = _lora(trained.model, seed=3)
    save_checkpoint(trained.model, trained.tokenizer, tmp_path)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    tok = trained.tokenizer
    expected = logits(trained.model, tok)
    merged = load_model(str(tmp_path))
    kept = load_model(str(tmp_path), merge_lora=False)
    assert type(kept.model.llm).__name__.startswith("Peft")
    torch.testing.assert_close(logits(merged.model, tok), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits(kept.model, tok), expected, atol=1e-5, rtol=1e-5)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_truncated_safetensors_is_a_clear_error(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated"):
        load_model(str(folder))
    weights.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(str(folder))


def test_truncated_or_missing_bin_is_a_clear_error(tiny_model, tmp_path: Path) -> None:
    save_videollama2(tiny_model, tmp_path, weights="bin", projector_file=True)
    write_mistral_tokenizer(tmp_path)
    projector = tmp_path / "mm_projector.bin"
    projector.write_bytes(projector.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"mm_projector\.bin is truncated"):
        load_model(str(tmp_path))
    projector.unlink()
    with pytest.raises(CheckpointError, match="lacks .* mm_projector tensors"):
        load_model(str(tmp_path))


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        load_model(str(tmp_path / "nowhere"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    with pytest.raises(CheckpointError, match="neither a FaceTrack-MM checkpoint"):
        load_model(str(tmp_path))


def test_hub_id_unreachable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="could not be fetched from the Hugging Face hub"):
        load_model("no-such-org/no-such-model", cache_dir=tmp_path)


def test_face_branch_needs_its_projector(tiny_model, tmp_path: Path) -> None:
    save_videollama2(tiny_model, tmp_path)
    write_mistral_tokenizer(tmp_path)
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    save_file(
        {k: v for k, v in state.items() if not k.startswith("model.face_projector.")},
        tmp_path / "model.safetensors",
    )
    with pytest.raises(CheckpointError, match="lacks 4 face_projector tensors"):
        load_model(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("face_encoder")  # a plain VideoLLaMA2 model: frames only
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert not load_model(str(tmp_path)).model.has_face_branch


def test_facexformer_face_encoder_from_its_own_checkpoint(tmp_path: Path) -> None:
    spec = tiny_spec(face_encoder="facexformer")
    spec.face_encoder_arch = {"patch_size": 4, **TINY_SWIN}
    model = build_tiny(spec, seed=2)
    folder = tmp_path / "ckpt"
    save_videollama2(model, folder, face_encoder_file="facexformer.pt")
    write_mistral_tokenizer(folder)
    assert json.loads((folder / "config.json").read_text())["face_encoder_path"] == "facexformer.pt"
    loaded = load_model(str(folder))
    assert loaded.model.face_encoder is not None
    assert_same_weights(model, loaded.model)
    faces = loaded.model.preprocess_faces(torch.randint(0, 256, (8, 50, 40, 3), dtype=torch.uint8).numpy())
    assert faces.shape == (8, 3, 224, 224)
    with torch.no_grad():
        assert loaded.model.encode_faces(faces[None]).shape == (1, 8 * 4, 64)

    # Our format carries the face encoder's weights; no path needed.
    save_checkpoint(loaded.model, loaded.tokenizer, tmp_path / "ours")
    assert_same_weights(model, load_model(str(tmp_path / "ours")).model)

    moved = tmp_path / "elsewhere.pt"
    (folder / "facexformer.pt").rename(moved)
    with pytest.raises(CheckpointError, match="face encoder checkpoint facexformer.pt not found"):
        load_model(str(folder))
    assert_same_weights(model, load_model(str(folder), face_encoder_path=str(moved)).model)


def test_s3_prefix_is_downloaded_once(tiny_model, tiny_dir: Path, s3_bucket: str, tmp_path: Path) -> None:
    from facetrack import storage

    for path in sorted(p for p in tiny_dir.rglob("*") if p.is_file()):
        storage.write_bytes(
            f"s3://{s3_bucket}/models/tiny/{path.relative_to(tiny_dir).as_posix()}", path.read_bytes()
        )
    cache = tmp_path / "cache"
    first = load_model(f"s3://{s3_bucket}/models/tiny", cache_dir=cache)
    assert first.name == "tiny" and first.kind == "videollama2"
    assert_same_weights(tiny_model, first.model)
    objects = sorted(p for p in (cache / "objects").rglob("*") if p.is_file())
    inodes = {p: p.stat().st_ino for p in objects}
    second = load_model(f"s3://{s3_bucket}/models/tiny/", cache_dir=cache)
    assert_same_weights(tiny_model, second.model)
    assert {p: p.stat().st_ino for p in objects} == inodes  # nothing fetched again
    with pytest.raises(CheckpointError, match="no checkpoint files under"):
        load_model(f"s3://{s3_bucket}/models/absent", cache_dir=cache)
