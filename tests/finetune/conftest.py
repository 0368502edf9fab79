"""Fixtures of the fine-tuning tests: a tiny random VideoLLaMA2-format model and a composed FDA dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CAPTIONS = [
    "The woman smiles warmly, then her smile fades into a calm look.",
    "The man raises his eyebrows in surprise and then laughs.",
    "The person keeps a neutral face while glancing to the side.",
    "She frowns slightly, then relaxes and smiles.",
    "He squints, looks down and then looks back up calmly.",
    "The character shows a brief grin that turns into a serious stare.",
]
KINDS = ["extras", "occlusion", "cut", "no-face", "cut", "occlusion"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random FaceTrack-MM saved as a VideoLLaMA2 folder, with the real Mistral tokenizer."""
    pytest.importorskip("peft", reason="fine-tuning needs peft (pip install 'facetrack[model]')")
    from facetrack.model.loading import load_tokenizer, save_videollama2
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
    from facetrack.samples import compose_video, preset

    root = tmp_path_factory.mktemp("fda")
    records = []
    for i, (kind, caption) in enumerate(zip(KINDS, CAPTIONS)):
        compose_video(root / f"clip{i}.mp4", preset(kind, seconds=1.5, seed=i, width=192, height=128))
        records.append({"id": f"clip{i}", "video": f"clip{i}.mp4", "caption": caption})
    (root / "broken.mp4").write_bytes(b"this is not a video" * 10)
    records += [
        {"id": "gone", "video": "does-not-exist.mp4", "caption": "A face."},
        {"id": "silent", "video": "clip0.mp4", "caption": "   "},
        {"id": "novideo", "caption": "A face without a video."},
        {"id": "broken", "video": "broken.mp4", "caption": "A broken file."},
    ]
    path = root / "train.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path
