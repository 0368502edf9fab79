"""`facetrack inspect` on the tiny checkpoint (VideoLLaMA2 v1.x format): the v1.x prompt's ids, the frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facetrack import cli
from facetrack.model import prompt


def numbered(n: int, width: int = 200, height: int = 120):
    for i in range(n):
        img = np.full((height, width, 3), 40, np.uint8)
        img[:, : width // 2] = 16 * (i // 16) + 8
        img[:, width // 2 :, 1] = 16 * (i % 16) + 8
        yield img


@pytest.fixture(scope="module")
def wide_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """37 frames at 10 fps, 5:3 (200 x 120)."""
    pytest.importorskip("av")
    from facetrack.samples import write_video

    path = tmp_path_factory.mktemp("inspect") / "wide.mp4"
    write_video(path, numbered(37), 10.0, crf=10)
    return path


def run_json(args: list[str], capsys: pytest.CaptureFixture) -> dict:
    assert cli.main(["inspect", *args, "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1  # one JSON object on stdout
    return json.loads(out)


def test_inspect_json_shows_the_v1_prompt_ids_frames_and_preprocessing(
    tiny_dir: Path, wide_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sentencepiece = pytest.importorskip("sentencepiece")
    from PIL import Image

    from facetrack.model.tiny import mistral_tokenizer_file

    png = tmp_path / "seen.png"
    report = run_json(
        [str(wide_video), "--model", str(tiny_dir), "--faces", "none", "--png", str(png)], capsys
    )
    system = prompt.llama2_system_prompt()
    instruction = prompt.benchmark_instruction()
    before, after = f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n", f"\n{instruction} [/INST]"
    assert report["prompt"] == f"{before}<video>{after}"
    sp = sentencepiece.SentencePieceProcessor(model_file=str(mistral_tokenizer_file()))
    assert report["input_ids"] == [1, *sp.encode(before), -201, *sp.encode(after)]
    assert report["input_ids"][report["video_token_position"]] == -201
    assert report["checkpoint"]["format"] == "videollama2"
    assert report["checkpoint"]["family"] == "videollama2-v1"
    assert report["checkpoint"]["prompt_style"] == "llama2"
    # VideoLLaMA2's frame numbers for 37 frames, 8 model frames: round(36 / 8 * (i + 0.5)).
    assert report["frame_indices"] == [2, 7, 11, 16, 20, 25, 29, 34]
    assert np.allclose(report["timestamps"], np.array(report["frame_indices"]) / 10.0, atol=1e-3)
    assert report["preprocess"]["mode"] == "crop" and report["preprocess"]["size"] == 112
    assert report["tokens"]["video"] == 125 and report["tokens"]["face"] == 0
    assert report["tokens"]["input"] == len(report["input_ids"]) - 1 + 125
    assert report["tokens"]["max_new_tokens"] == 2048
    assert report["png"] == str(png)
    with Image.open(png) as image:
        assert image.size == (8 * 112, 14 + 112)
        tile = np.asarray(image.convert("RGB"))[14:, :112]
    # The first tile is frame 2 centre-cropped: both halves of the frame are in it, no padding rows.
    assert abs(int(tile[56, 10, 0]) - 8) <= 3 and abs(int(tile[56, 100, 1]) - (16 * 2 + 8)) <= 3


def test_inspect_pad_option_and_human_report(
    tiny_dir: Path, wide_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = [str(wide_video), "--model", str(tiny_dir), "--faces", "none", "--no-png", "--preprocess", "pad"]
    assert cli.main(["inspect", *args, "--prompt-style", "chat", "--frames", "4"]) == 0
    text = capsys.readouterr().out
    assert "preprocess   pad to 112x112" in text
    assert "prompt style chat" in text and "-201 at position" in text
    # round(36 / 4 * (i + 0.5) + 1e-6): the halves round up, as in VideoLLaMA2
    assert "model frames 4 by index: indices [5, 14, 23, 32]" in text
    assert "picture" not in text


def test_inspect_with_the_face_stage(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("av")
    from PIL import Image

    from facetrack.samples import write_samples

    video = write_samples(tmp_path / "videos", n=1, seconds=2.0, width=320, height=180, kinds=["extras"])[
        0
    ].path
    png = tmp_path / "faces.png"
    report = run_json([video, "--model", str(tiny_dir), "--faces", "builtin", "--png", str(png)], capsys)
    assert report["faces"]["found"] and report["tokens"]["face"] == 8 * 4
    assert report["preprocess"]["face"] == {"mode": "crop", "size": 112}
    with Image.open(png) as image:
        assert image.size == (8 * 112, 14 + 112 + 112)


def test_inspect_help_explains(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["inspect", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("input_ids", "-201", "--json", "--png", "crop", "pad", "round((N-1)/T*(i+0.5))"):
        assert word in out, word


def test_inspect_missing_video_is_one_line(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert cli.main(["inspect", str(tmp_path / "nope.mp4"), "--model", str(tiny_dir), "--no-png"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("facetrack inspect: ") and "nope.mp4: not found" in err[-1]
