"""`facetrack tiny-model` and the local `facetrack caption`: tracking stage + model, end to end on CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facetrack import cli
from facetrack.model.loading import load_model
from facetrack.model.modeling import checkpoint_state


def test_tiny_model_command_writes_a_loadable_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert cli.main(["tiny-model", str(tmp_path / "a")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["video_tokens"] == 125 and info["face_tokens"] == 32 and "noise" in info["note"]
    assert (tmp_path / "a" / "tokenizer.model").is_file() and (tmp_path / "a" / "config.json").is_file()
    a = load_model(str(tmp_path / "a"))
    assert a.kind == "videollama2" and a.name == "facetrack-tiny-random-seed0"
    assert sum(p.numel() for p in a.model.parameters()) == info["parameters"]

    assert cli.main(["tiny-model", str(tmp_path / "b"), "--format", "facetrack", "--frames", "16"]) == 0
    b = load_model(str(tmp_path / "b"))
    assert b.kind == "facetrack" and b.model.spec.num_frames == 16
    sa, sb = checkpoint_state(a.model), checkpoint_state(b.model)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed, same weights

    assert cli.main(["tiny-model", str(tmp_path / "c"), "--seed", "1", "--face-encoder", "none"]) == 0
    c = load_model(str(tmp_path / "c"))
    assert not c.model.has_face_branch
    assert not torch.equal(checkpoint_state(c.model)["lm_head.weight"], sa["lm_head.weight"])


@pytest.fixture(scope="module")
def sample_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    samples = pytest.importorskip("facetrack.samples")
    if not samples.face_sources():
        pytest.skip("no face images installed to compose a sample video from")
    out = tmp_path_factory.mktemp("videos")
    (written,) = samples.write_samples(out, n=1, seconds=2.0, width=320, height=240, kinds=["extras"])
    return Path(written.path)


def test_caption_command_end_to_end(tiny_dir: Path, sample_video: Path, tmp_path: Path) -> None:
    """`facetrack caption --model CKPT VIDEO` runs the caption job on an embedded Ray, end to end."""
    pytest.importorskip("dlib", reason="the built-in face backend needs dlib-bin")
    pytest.importorskip("ray", reason="the caption job needs ray")
    from facetrack import shards

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(sample_video, videos / sample_video.name)
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    out = tmp_path / "out"
    args = ["caption", "--model", str(tiny_dir), str(videos), "--out", str(out), "captioner.max_new_tokens=8"]
    code = subprocess.run(
        [sys.executable, "-m", "facetrack.cli", *args, "track.faces.backend=builtin", "--num-cpus", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert code.returncode == 0, code.stderr[-3000:]
    assert "summary:" in code.stdout and "sheets:" in code.stdout
    rows = {row["id"]: row for row in shards.read_rows(str(out))}
    assert set(rows) == {sample_video.name, "broken.mp4"}
    good = rows[sample_video.name]
    assert good["error"] is None and good["caption"]
    assert good["model"] == tiny_dir.name
    assert good["prompt"].startswith("Please provide a detailed description of the facial appearance")
    assert good["main_track"] is not None and good["main_track"]["n_frames"] > 0
    assert good["timings"]["track_total"] > 0 and good["timings"]["caption"] > 0
    bad = rows["broken.mp4"]
    assert bad["caption"] is None and bad["error"]


def test_caption_command_needs_a_loadable_model(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert cli.main(["caption", "--model", str(tmp_path / "none"), str(tmp_path / "x.mp4")]) == 2
    assert "cannot load the model" in capsys.readouterr().err
