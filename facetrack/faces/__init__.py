"""Face detection, embedding, tracking and main-character selection (the face tracking stage).

Importing this package is cheap: the names below load their modules (and those modules load their heavy
dependencies) only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FaceConfig": "facetrack.faces.base",
    "FaceAnalyser": "facetrack.faces.base",
    "BACKENDS": "facetrack.faces.base",
    "create_analyser": "facetrack.faces.base",
    "analyse": "facetrack.faces.base",
    "TrackConfig": "facetrack.faces.track",
    "FaceTracker": "facetrack.faces.track",
    "SelectConfig": "facetrack.faces.select",
    "select_main": "facetrack.faces.select",
    "FaceTrackConfig": "facetrack.faces.stage",
    "FaceTrackStage": "facetrack.faces.stage",
    "result_to_dict": "facetrack.faces.stage",
    "contact_sheet": "facetrack.faces.draw",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'facetrack.faces' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
