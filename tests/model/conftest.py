"""Model test fixtures: a tiny random FaceTrack-MM in the VideoLLaMA2 folder format, Mistral's tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="model tests need torch (pip install 'facetrack[model]')")
pytest.importorskip("transformers", reason="model tests need transformers (pip install 'facetrack[model]')")


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny model with fixed random weights (seed 0); treat as read-only."""
    from facetrack.model.tiny import build_tiny

    return build_tiny(seed=0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model) -> Path:
    """The tiny model written in the VideoLLaMA2 folder format with the real Mistral tokenizer files."""
    from facetrack.model.saving import save_videollama2
    from facetrack.model.tiny import write_mistral_tokenizer

    out = tmp_path_factory.mktemp("tiny-videollama2")
    save_videollama2(tiny_model, out)
    write_mistral_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def loaded(tiny_dir: Path):
    """The tiny checkpoint loaded back through the real loader."""
    from facetrack.model.loading import load_model

    return load_model(str(tiny_dir))


@pytest.fixture(scope="session")
def tokenizer(loaded):
    return loaded.tokenizer


def _make_clip(
    clip_id: str, seed: int, frames: int = 8, faces: bool = True, size: tuple[int, int] = (72, 96)
):
    from facetrack.types import Clip

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (frames, *size, 3), dtype=np.uint8)
    crops = rng.integers(0, 256, (frames, 40, 40, 3), dtype=np.uint8) if faces else None
    return Clip(id=clip_id, frames=images, crops=crops)


@pytest.fixture(scope="session")
def make_clip():
    """``make_clip(id, seed, frames=8, faces=True, size=(72, 96))``: a clip of random frames (and crops)."""
    return _make_clip
