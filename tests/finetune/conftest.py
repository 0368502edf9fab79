"""Fixtures of the fine-tuning tests: a tiny random VideoLLaMA2-format model and a composed FDA dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random FaceTrack-MM saved as a VideoLLaMA2 folder, with the real Mistral tokenizer."""
    pytest.importorskip("peft", reason="fine-tuning needs peft (pip install 'facetrack[model]')")
    from facetrack.model.language_model import load_tokenizer
    from facetrack.model.saving import save_videollama2
    from facetrack.model.tiny import build_tiny, write_mistral_tokenizer

    root = tmp_path_factory.mktemp("tiny-model")
    tokenizer = load_tokenizer(write_mistral_tokenizer(root / "tokenizer"))
    return save_videollama2(build_tiny(seed=0), root / "model", tokenizer=tokenizer)


@pytest.fixture(scope="session")
def fda_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six short composed clips (one without any face) with captions plus four bad records.

    Bad records: a missing video file, an empty caption, a record without ``video`` and a file that is
    not a video.
    """
    from facetrack.data import write_demo_dataset

    root = tmp_path_factory.mktemp("fda")
    records = json.loads(Path(write_demo_dataset(str(root), n=6)).read_text())
    (root / "broken.mp4").write_bytes(b"this is not a video" * 10)
    records += [
        {"id": "gone", "video": "does-not-exist.mp4", "caption": "A face."},
        {"id": "silent", "video": "clip-000.mp4", "caption": "   "},
        {"id": "novideo", "caption": "A face without a video."},
        {"id": "broken", "video": "broken.mp4", "caption": "A broken file."},
    ]
    path = root / "train.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path
