"""Fixtures of the job tests: a tiny checkpoint and an archive of composed videos with bad files in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint written by the documented command (`facetrack tiny-model`)."""
    from facetrack.cli import main

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    assert main(["tiny-model", str(out), "--frames", "8"]) == 0
    return out


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of videos: three with faces, one with no face, a corrupt one and a zero-byte one."""
    from facetrack.samples import write_samples

    root = tmp_path_factory.mktemp("archive")
    write_samples(
        root / "clips", n=3, seconds=1.5, width=320, height=180, kinds=["extras", "occlusion", "cut"]
    )
    write_samples(root / "empty-shots", n=1, seconds=1.0, width=320, height=180, kinds=["no-face"])
    (root / "clips" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2048))
    (root / "clips" / "zero.mp4").write_bytes(b"")
    (root / "clips" / "readme.txt").write_text("not a video")
    return root
