"""Training data: FDA records, instruction draws, label masks and length limits, the clip cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facetrack.data import (
    IGNORE_INDEX,
    LengthStats,
    Record,
    build_conversation,
    clip_key,
    decode_clip,
    draw_instruction,
    encode_clip,
    load_templates,
    read_records,
    shrink_frames,
    tokenize_example,
)
from facetrack.types import Clip


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("transformers")
    from facetrack.model.language_model import load_tokenizer
    from facetrack.model.tiny import write_mistral_tokenizer

    return load_tokenizer(write_mistral_tokenizer(tmp_path_factory.mktemp("tok")))


def test_read_records_drops_and_counts_bad_records(tmp_path: Path) -> None:
    items = [
        {"id": "a", "video": "a.mp4", "caption": " A smile. "},
        {"id": "b", "video": "", "caption": "x"},
        {"id": "c", "caption": "no video"},
        {"id": "d", "video": "d.mp4", "caption": ""},
        {"id": "e", "video": "e.mp4"},
        {"id": "a", "video": "again.mp4", "caption": "duplicate id"},
        ["not", "an", "object"],
        {"video": "s3://bucket/f.mp4", "caption": "no id: the video is the id"},
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(items))
    out = read_records(str(path))
    assert [(r.id, r.video, r.caption) for r in out.records] == [
        ("a", str(tmp_path / "a.mp4"), "A smile."),
        ("s3://bucket/f.mp4", "s3://bucket/f.mp4", "no id: the video is the id"),
    ]
    assert dict(out.dropped) == {
        "no_video_field": 2,
        "empty_caption": 2,
        "duplicate_id": 1,
        "not_an_object": 1,
    }
    assert out.examples["empty_caption"] == ["train.json:4", "train.json:5"]
    assert out.summary()["kept"] == 2


def test_read_records_jsonl_with_bad_lines_and_video_root(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    good = [{"id": "a", "video": "a.mp4", "caption": "ok"}, {"id": "b", "video": "b.mp4", "caption": "ok"}]
    path.write_text(json.dumps(good[0]) + "\n{not json\n\n" + json.dumps(good[1]) + "\n")
    out = read_records(str(path), video_root="s3://bucket/videos")
    assert [r.video for r in out.records] == ["s3://bucket/videos/a.mp4", "s3://bucket/videos/b.mp4"]
    assert dict(out.dropped) == {"bad_json": 1}


def test_read_records_rejects_a_json_file_that_is_not_a_list(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"id": "a"}))
    with pytest.raises(ValueError, match="JSON list"):
        read_records(str(path))
    with pytest.raises(FileNotFoundError):
        read_records(str(tmp_path / "missing.json"))


def test_instruction_draw_is_seeded_and_independent_of_order() -> None:
    templates = load_templates()
    assert len(templates) > 5
    ids = [f"clip{i}" for i in range(200)]
    first = {i: draw_instruction(templates, i, seed=1) for i in ids}
    again = {i: draw_instruction(templates, i, seed=1) for i in reversed(ids)}
    assert first == again
    assert len(set(first.values())) > 5  # the pool is used, not one template
    other_seed = {i: draw_instruction(templates, i, seed=2) for i in ids}
    other_epoch = {i: draw_instruction(templates, i, seed=1, epoch=1) for i in ids}
    assert sum(first[i] != other_seed[i] for i in ids) > 100
    assert sum(first[i] != other_epoch[i] for i in ids) > 100
    conversation = build_conversation(Record("clip3", "v.mp4", "A grin."), templates, seed=1)
    assert conversation == [
        {"role": "user", "content": first["clip3"]},
        {"role": "assistant", "content": "A grin."},
    ]


def test_custom_template_pool(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(["Describe the face.", "What does the face do?"]))
    assert load_templates(str(path)) == ["Describe the face.", "What does the face do?"]
    path.write_text(json.dumps([]))
    with pytest.raises(ValueError, match="non-empty"):
        load_templates(str(path))


def test_labels_mask_everything_but_the_answer(tokenizer) -> None:
    from facetrack.model import prompt as chat

    instruction = chat.benchmark_instruction()
    caption = "The woman smiles, then frowns."
    conversation = [{"role": "user", "content": instruction}, {"role": "assistant", "content": caption}]
    example = tokenize_example(tokenizer, "a", conversation, max_length=4096, n_visual=100)
    assert example is not None and example.n_cut == 0
    # The prompt is exactly what the captioner asks with.
    prompt_ids = chat.tokenize_with_video(chat.caption_prompt(tokenizer, instruction), tokenizer)
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert example.input_ids.count(chat.VIDEO_TOKEN_INDEX) == 1
    assert all(x == IGNORE_INDEX for x in example.labels[: len(prompt_ids)])
    answer = example.labels[len(prompt_ids) :]
    assert answer == example.input_ids[len(prompt_ids) :]
    assert answer[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(answer, skip_special_tokens=True).strip() == caption
    assert example.length == len(example.input_ids) - 1 + 100


def test_length_limit_cuts_the_answer_and_counts_it(tokenizer) -> None:
    caption = " ".join(["smiles"] * 60)
    conversation = [{"role": "user", "content": "Describe."}, {"role": "assistant", "content": caption}]
    full = tokenize_example(tokenizer, "a", conversation, max_length=10_000, n_visual=50)
    assert full is not None
    limit = full.length - 25
    cut = tokenize_example(tokenizer, "a", conversation, max_length=limit, n_visual=50)
    assert cut is not None
    assert cut.length == limit
    assert cut.n_cut == 25
    assert cut.labels[-1] != tokenizer.eos_token_id  # a cut answer has no end
    prompt_len = full.length - sum(1 for x in full.labels if x != IGNORE_INDEX)
    assert tokenize_example(tokenizer, "a", conversation, max_length=prompt_len, n_visual=50) is None
    stats = LengthStats()
    for example in (full, cut, None):
        stats.add(example)
    assert stats.summary() == {"examples": 2, "truncated": 1, "tokens_cut": 25, "dropped_too_long": 1}


def test_clip_cache_roundtrip_is_compact_and_close() -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:112, 0:112]
    base = np.stack([(x * 2) % 256, (y * 2) % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    frames = np.stack([np.roll(base, i * 3, axis=1) for i in range(8)])
    crops = rng.integers(100, 120, (8, 48, 48, 3), dtype=np.uint8)
    data = encode_clip(Clip("c1", frames, crops), quality=95, meta={"video": "v.mp4"})
    assert len(data) < frames.nbytes / 2
    clip, header = decode_clip(data)
    assert header["id"] == "c1" and header["video"] == "v.mp4" and header["n_frames"] == 8
    assert clip.frames.shape == frames.shape and clip.crops is not None and clip.crops.shape == crops.shape
    assert np.abs(clip.frames.astype(int) - frames).mean() < 4
    no_faces, header = decode_clip(encode_clip(Clip("c2", frames, None)))
    assert no_faces.crops is None and header["has_crops"] is False
    with pytest.raises(ValueError, match="frames must be"):
        encode_clip(Clip("bad", frames[0], None))


def test_clip_key_changes_with_parameters_and_shrink_keeps_aspect() -> None:
    a = clip_key("v.mp4", {"frames": 8})
    assert a == clip_key("v.mp4", {"frames": 8})
    assert a != clip_key("v.mp4", {"frames": 16}) and a != clip_key("w.mp4", {"frames": 8})
    frames = np.zeros((2, 360, 640, 3), dtype=np.uint8)
    assert shrink_frames(frames, 336).shape == (2, 189, 336, 3)
    assert shrink_frames(frames, 0) is frames and shrink_frames(frames, 1000) is frames
