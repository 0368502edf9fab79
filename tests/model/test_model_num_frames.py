"""A checkpoint's frame count from its config file alone: local folders, storage URIs and hub ids."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest

from facetrack import storage
from facetrack.model.checkpoint_files import OUR_CONFIG
from facetrack.model.examples import model_num_frames


def videollama2_config(num_frames: int | None) -> dict:
    config = {"model_type": "videollama2_mistral", "mm_vision_tower": "clip", "mm_projector_type": "stc"}
    if num_frames is not None:
        config["num_frames"] = num_frames
    return config


def broken_weights(folder: Path) -> None:
    """Weights that fail any read: the config is all the function may touch."""
    (folder / "model.safetensors").write_bytes(b"\x00\x01 not a safetensors file")


def test_local_videollama2_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(videollama2_config(16)))
    broken_weights(tmp_path)
    assert model_num_frames(str(tmp_path)) == 16


def test_local_folder_in_our_format_wins_over_config_json(tmp_path: Path) -> None:
    (tmp_path / OUR_CONFIG).write_text(json.dumps({"format": "facetrack-mm", "spec": {"num_frames": 4}}))
    (tmp_path / "config.json").write_text(json.dumps(videollama2_config(16)))
    broken_weights(tmp_path)
    assert model_num_frames(tmp_path) == 4


def test_config_without_num_frames_gives_the_default(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(videollama2_config(None)))
    assert model_num_frames(str(tmp_path)) == 8
    assert model_num_frames(str(tmp_path), default=None) is None


def test_storage_uri_prefix() -> None:
    prefix = f"memory://frames-{uuid.uuid4().hex}/run/checkpoint"
    storage.write_text(storage.join(prefix, "config.json"), json.dumps(videollama2_config(12)))
    storage.write_bytes(storage.join(prefix, "model.safetensors"), b"not weights")
    assert model_num_frames(prefix) == 12
    assert model_num_frames(prefix + "/") == 12


def test_unreadable_sources_fall_back_with_a_warning(tmp_path: Path, caplog) -> None:
    missing_prefix = f"memory://frames-{uuid.uuid4().hex}/nothing"
    with caplog.at_level(logging.WARNING, logger="facetrack.model.examples"):
        assert model_num_frames(str(tmp_path / "no-such-folder"), default=None) is None
        assert model_num_frames(missing_prefix) == 8
    assert "no checkpoint folder at" in caplog.text
    assert f"no checkpoint under {missing_prefix}" in caplog.text
    (tmp_path / "config.json").write_text("{not json")
    assert model_num_frames(str(tmp_path), default=16) == 16


class FakeHub:
    """``hf_hub_download`` over a folder of repo files; records what was asked for."""

    def __init__(self, files: dict[str, dict], root: Path, offline: bool = False):
        self.files, self.root, self.offline = files, root, offline
        self.asked: list[tuple[str, str]] = []

    def __call__(self, repo_id: str, filename: str, cache_dir: str | None = None) -> str:
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        self.asked.append((repo_id, filename))
        if self.offline:
            raise LocalEntryNotFoundError("cannot reach the hub and the file is not cached")
        if filename not in self.files:
            raise EntryNotFoundError(f"{filename} is not in {repo_id}")
        path = self.root / filename
        path.write_text(json.dumps(self.files[filename]))
        return str(path)


@pytest.fixture
def no_snapshots(monkeypatch):
    import huggingface_hub

    def snapshot_download(*args, **kwargs):
        raise AssertionError("a whole checkpoint was downloaded to read its config")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return huggingface_hub


def test_hub_id_reads_only_its_config_files(tmp_path: Path, monkeypatch, no_snapshots) -> None:
    hub = FakeHub({"config.json": videollama2_config(16)}, tmp_path)
    monkeypatch.setattr(no_snapshots, "hf_hub_download", hub)
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    assert model_num_frames("DAMO-NLP-SG/VideoLLaMA2-7B-16F") == 16
    assert hub.asked == [
        ("DAMO-NLP-SG/VideoLLaMA2-7B-16F", OUR_CONFIG),
        ("DAMO-NLP-SG/VideoLLaMA2-7B-16F", "config.json"),
    ]


def test_hub_id_offline_falls_back(tmp_path: Path, monkeypatch, no_snapshots, caplog) -> None:
    hub = FakeHub({"config.json": videollama2_config(16)}, tmp_path, offline=True)
    monkeypatch.setattr(no_snapshots, "hf_hub_download", hub)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="facetrack.model.examples"):
        assert model_num_frames("org/model", default=None) is None
    assert hub.asked == [("org/model", OUR_CONFIG)]
    assert "cannot fetch facetrack.json of org/model" in caplog.text
