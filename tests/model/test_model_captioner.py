"""The Captioner: batched generation equals one-by-one, errors per clip, config, prompt and name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facetrack.caption import Captioner, CaptionerConfig, CaptionResult, resample_indices
from facetrack.model.prompt import benchmark_instruction
from facetrack.types import Clip


@pytest.fixture(scope="module")
def clips(make_clip) -> list[Clip]:
    # Mixed lengths (with and without a main character, different frame counts and sizes) so that the
    # batch really needs left padding.
    return [
        make_clip("a", 0, frames=8, faces=True),
        make_clip("b", 1, frames=12, faces=False),
        make_clip("c", 2, frames=5, faces=True, size=(90, 60)),
        make_clip("d", 3, frames=16, faces=False, size=(64, 64)),
        make_clip("e", 4, frames=8, faces=True),
    ]


@pytest.fixture(scope="module")
def captioner(tiny_dir: Path) -> Captioner:
    c = Captioner(CaptionerConfig(model=str(tiny_dir), batch_size=8, max_new_tokens=12))
    c.setup()
    return c


def test_batched_greedy_equals_one_by_one(captioner: Captioner, tiny_dir: Path, clips: list[Clip]) -> None:
    batched = captioner.caption(clips)
    single = Captioner(CaptionerConfig(model=str(tiny_dir), batch_size=1, max_new_tokens=12))
    one_by_one = single.caption(clips)
    assert [r.id for r in batched] == [c.id for c in clips]
    assert all(r.ok and r.caption for r in batched)
    assert [r.caption for r in batched] == [r.caption for r in one_by_one]
    assert [r.num_tokens for r in batched] == [r.num_tokens for r in one_by_one]
    assert [r.used_faces for r in batched] == [True, False, True, False, True]
    assert all(r.timings["batch_size"] == 5 for r in batched)
    assert all(r.timings["batch_size"] == 1 for r in one_by_one)
    # Different clips give different captions (the visual tokens reach the LM).
    assert len({r.caption for r in batched}) > 1


def test_faces_change_the_caption(captioner: Captioner, make_clip) -> None:
    with_face = make_clip("x", 7, faces=True)
    without = Clip(id="x", frames=with_face.frames, crops=None)
    a, b = captioner.caption([with_face, without])
    assert a.used_faces and not b.used_faces
    assert a.caption != b.caption


def test_bad_clips_get_errors_and_the_rest_is_captioned(captioner: Captioner, clips: list[Clip]) -> None:
    bad = [
        Clip(id="flat", frames=np.zeros((4, 32, 32), dtype=np.uint8)),
        Clip(id="float", frames=np.zeros((4, 32, 32, 3), dtype=np.float32)),
        Clip(id="empty", frames=np.zeros((0, 32, 32, 3), dtype=np.uint8)),
        Clip(id="badcrops", frames=clips[0].frames, crops=np.zeros((8, 10, 3), dtype=np.uint8)),
    ]
    results = captioner.caption([clips[0], *bad, clips[1]])
    assert [r.id for r in results] == ["a", "flat", "float", "empty", "badcrops", "b"]
    assert results[0].ok and results[-1].ok
    for r in results[1:-1]:
        assert r.caption is None and r.error and r.error.startswith("bad input:"), r
    assert "uint8" in results[2].error and "crops" in results[4].error
    reference = captioner.caption([clips[0], clips[1]])
    assert [results[0].caption, results[-1].caption] == [r.caption for r in reference]


def test_a_failing_batch_is_retried_clip_by_clip(
    captioner: Captioner, clips: list[Clip], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    # Outside the unit: the model fails on one clip's input (as a corrupt tensor or an OOM would).
    poisoned = captioner.model.preprocess_frames(clips[1].frames[resample_indices(12, 8)])
    real = captioner._generate

    def generate(prepared, longest):
        if any(torch.equal(pixels, poisoned) for _, pixels, _ in prepared):
            raise RuntimeError("simulated failure")
        return real(prepared, longest)

    monkeypatch.setattr(captioner, "_generate", generate)
    results = captioner.caption(clips[:3])
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error == "RuntimeError: simulated failure"
    assert [r.timings["batch_size"] for r in results] == [1, 1, 1]  # retried alone


def test_max_new_tokens_and_sampling(tiny_dir: Path, clips: list[Clip]) -> None:
    short = Captioner(CaptionerConfig(model=str(tiny_dir), max_new_tokens=3)).caption(clips[:2])
    assert all(r.num_tokens == 3 for r in short)  # a random model never says EOS this early
    sampled = [
        Captioner(
            CaptionerConfig(model=str(tiny_dir), max_new_tokens=8, do_sample=True, temperature=1.5, seed=s)
        )
        for s in (0, 0, 1)
    ]
    outs = [c.caption(clips[:2]) for c in sampled]
    assert [r.caption for r in outs[0]] == [r.caption for r in outs[1]]
    assert [r.caption for r in outs[0]] != [r.caption for r in outs[2]]


def test_prompt_model_name_and_overrides(captioner: Captioner, tiny_dir: Path, make_clip) -> None:
    assert captioner.prompt == benchmark_instruction()
    assert captioner.prompt_text.endswith(f"<video>\n{benchmark_instruction()} [/INST]")
    assert captioner.model_name == tiny_dir.name
    assert captioner.num_frames == 8
    custom = Captioner(
        CaptionerConfig(
            model=str(tiny_dir),
            prompt="Describe the face.",
            use_system_prompt=False,
            model_name="facetrack-tiny",
            num_frames=4,
            face_tokens_per_frame=2,
            max_new_tokens=4,
        )
    )
    custom.setup()
    # The tiny checkpoint is a VideoLLaMA2 v1.x folder: its llama2 template, BOS as an id, not as text.
    assert custom.prompt_style == "llama2"
    assert custom.prompt_text == "[INST] <video>\nDescribe the face. [/INST]"
    assert custom.input_ids[0] == 1 and custom.input_ids.count(-201) == 1
    assert custom.model_name == "facetrack-tiny"
    assert custom.num_frames == 4 and custom.model.face_tokens_per_frame == 2
    (result,) = custom.caption([make_clip("z", 9, frames=8)])
    assert result.ok and result.used_faces


def test_new_tokens_stop_where_the_context_ends(
    captioner: Captioner, make_clip, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = captioner.model
    clip = make_clip("long", 0)
    length = len(captioner.input_ids) - 1 + model.num_video_tokens(8) + model.num_face_tokens(8)
    assert captioner.max_new_tokens_for(length) == 12  # the context (32768) allows all of them
    monkeypatch.setattr(model.llm.config, "max_position_embeddings", length + 3)
    assert captioner.max_new_tokens_for(length) == 3
    (result,) = captioner.caption([clip])
    assert result.ok and 1 <= result.num_tokens <= 3
    monkeypatch.setattr(model.llm.config, "max_position_embeddings", length)
    (result,) = captioner.caption([clip])
    assert result.error and f"= {length} leave no room in the model's {length}" in result.error


def test_default_generation_is_videollama2s() -> None:
    config = CaptionerConfig(model="m")
    assert (config.max_new_tokens, config.do_sample) == (2048, False)
    assert (config.prompt_style, config.preprocess, config.dtype) == ("auto", "auto", "auto")


def test_cpu_float32_by_default_and_cuda_checked(tiny_dir: Path) -> None:
    import torch

    c = Captioner(CaptionerConfig(model=str(tiny_dir), device="cpu"))
    assert c.model.dtype == torch.float32 and c.model.device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            Captioner(CaptionerConfig(model=str(tiny_dir), device="cuda")).setup()


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"max_new_tokens": 0}, {"do_sample": True, "temperature": 0.0}, {"top_p": 1.5},
     {"num_frames": 0}, {"face_tokens_per_frame": 0}],
)  # fmt: skip
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        CaptionerConfig(model="m", **kwargs)


def test_config_loads_from_yaml(tmp_path: Path) -> None:
    from facetrack.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("model: some/model\nbatch_size: 4\ndevice: cpu\n")
    cfg = load_config(CaptionerConfig, path, ["max_new_tokens=64", "do_sample=true"])
    assert (cfg.model, cfg.batch_size, cfg.max_new_tokens, cfg.do_sample) == ("some/model", 4, 64, True)
    with pytest.raises(ConfigError, match="device"):
        load_config(CaptionerConfig, path, ["device=tpu"])


def test_empty_model_is_refused() -> None:
    with pytest.raises(ValueError, match="model is empty"):
        Captioner(CaptionerConfig())


def test_missing_checkpoint_fails_at_setup(tmp_path: Path) -> None:
    from facetrack.model.loading import CheckpointError

    c = Captioner(CaptionerConfig(model=str(tmp_path / "absent")))
    with pytest.raises(CheckpointError):
        c.setup()


def test_resample_indices() -> None:
    assert resample_indices(16, 8).tolist() == [0, 2, 4, 6, 9, 11, 13, 15]
    assert resample_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    assert resample_indices(1, 4).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        resample_indices(0, 4)


def test_result_record() -> None:
    assert CaptionResult(id="a", caption="x").ok and not CaptionResult(id="a", error="e").ok


def test_from_model_wraps_a_loaded_model(loaded, captioner: Captioner, clips: list[Clip]) -> None:
    wrapped = Captioner.from_model(CaptionerConfig(model="in-memory", max_new_tokens=12), loaded)
    assert wrapped.model is loaded.model
    assert [r.caption for r in wrapped.caption(clips[:2])] == [
        r.caption for r in captioner.caption(clips[:2])
    ]


@pytest.mark.gpu
def test_gpu_runs_in_bfloat16(tiny_dir: Path, clips: list[Clip]) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    c = Captioner(CaptionerConfig(model=str(tiny_dir), device="auto", max_new_tokens=8))
    results = c.caption(clips)
    assert c.model.device.type == "cuda" and c.model.dtype == torch.bfloat16
    assert all(r.ok and r.num_tokens > 0 for r in results)
