"""Shared fixtures for the face tests: the built-in analyser, composed clips and their stage results."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("dlib", reason="face tests need the faces extra (pip install 'facetrack[faces]')")
pytest.importorskip("boxmot", reason="face tests need the faces extra (pip install 'facetrack[faces]')")
pytest.importorskip("av", reason="face tests need PyAV (pip install 'facetrack[video]')")

from facetrack.faces.base import FaceConfig  # noqa: E402
from facetrack.faces.dlib_backend import DlibFaceAnalyser  # noqa: E402
from facetrack.faces.stage import FaceTrackConfig, FaceTrackStage  # noqa: E402
from facetrack.samples import ComposedVideo, Extra, SampleSpec, compose_video, face_sources  # noqa: E402
from facetrack.types import FaceTrackResult  # noqa: E402

SECONDS = 4.0


@pytest.fixture(scope="session")
def builtin_analyser() -> DlibFaceAnalyser:
    analyser = DlibFaceAnalyser(FaceConfig(backend="builtin"))
    analyser.setup()
    return analyser


@pytest.fixture(scope="session")
def builtin_stage(builtin_analyser: DlibFaceAnalyser) -> FaceTrackStage:
    stage = FaceTrackStage(FaceTrackConfig(faces=FaceConfig(backend="builtin")), analyser=builtin_analyser)
    stage.setup()
    return stage


@pytest.fixture(scope="session")
def source_embeddings(builtin_analyser: DlibFaceAnalyser) -> dict[str, np.ndarray]:
    """The embedding of every packaged face, taken from its source photograph."""
    out = {}
    for name, src in face_sources().items():
        patch = np.pad(src.patch, ((40, 40), (40, 40), (0, 0)), mode="edge")
        faces = builtin_analyser.detect(patch)
        assert faces, f"no face found in the source patch {name}"
        face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        out[name] = builtin_analyser.embed(patch, [face])[0]
    return out


CLIPS: dict[str, SampleSpec] = {
    # A large main face drifting across, two smaller faces entering and leaving at different times.
    "extras": SampleSpec(
        SECONDS,
        extras=[Extra("t1-0", 0.3, 2.2, side="right", y=0.3), Extra("t1-5", 1.9, 3.9, side="left", y=0.32)],
    ),
    # The main face is hidden for one second (16 tracking frames) while an extra is on screen.
    "occlusion": SampleSpec(
        SECONDS, occlusion=(1.4, 2.4), extras=[Extra("t1-3", 1.0, 3.9, side="right", y=0.3)]
    ),
    # A cut to a shot without any face (1.6 s, longer than StrongSort keeps a lost trajectory), then back.
    "cut": SampleSpec(SECONDS + 1.0, no_face=(1.4, 3.6), seed=3),
    "no-face": SampleSpec(2.0, main=None),
}


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ComposedVideo]:
    root = tmp_path_factory.mktemp("clips")
    return {name: compose_video(root / f"{name}.mp4", spec) for name, spec in CLIPS.items()}


@pytest.fixture(scope="session")
def tracked(
    clips: dict[str, ComposedVideo], builtin_stage: FaceTrackStage
) -> Callable[[str], FaceTrackResult]:
    """The built-in stage's result for a composed clip (computed once per clip)."""
    cache: dict[str, FaceTrackResult] = {}

    def get(name: str) -> FaceTrackResult:
        if name not in cache:
            cache[name] = builtin_stage.process(clips[name].path)
        return cache[name]

    return get
