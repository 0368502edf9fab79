"""FaceTrack-MM forward pieces: token counts, where video and face tokens go, labels, generation inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facetrack.model.modeling import IGNORE_INDEX, checkpoint_key, module_key, shared_prefix_length
from facetrack.model.prompt import VIDEO_TOKEN_INDEX, caption_prompt, tokenize_with_video


def _pixels(model, frames: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return model.preprocess_frames(rng.integers(0, 256, (frames, 60, 80, 3), dtype=np.uint8))


def _crops(model, frames: int, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return model.preprocess_faces(rng.integers(0, 256, (frames, 40, 40, 3), dtype=np.uint8))


@pytest.mark.parametrize(("frames", "tokens"), [(4, 3 * 25), (8, 5 * 25), (16, 9 * 25)])
def test_video_token_count_per_frame_count(loaded, frames: int, tokens: int) -> None:
    model = loaded.model  # 112 px, 14 px patches: an 8 x 8 grid -> 5 x 5 after the connector
    assert model.num_video_tokens(frames) == tokens
    with torch.no_grad():
        video = model.encode_video(_pixels(model, frames)[None])
    assert video.shape == (1, tokens, model.hidden_size)


def test_face_tokens_per_frame_is_configurable(loaded) -> None:
    model = loaded.model
    crops = _crops(model, 8)[None]
    try:
        for per_frame in (1, 4, 6):
            model.face_tokens_per_frame = per_frame
            with torch.no_grad():
                assert model.encode_faces(crops).shape == (1, 8 * per_frame, model.hidden_size)
            assert model.num_face_tokens(8) == 8 * per_frame
    finally:
        model.face_tokens_per_frame = model.spec.face_tokens_per_frame


def test_encoders_in_chunks_give_the_same_tokens(loaded) -> None:
    model = loaded.model
    pixels = torch.stack([_pixels(model, 8, 0), _pixels(model, 8, 1)])
    crops = torch.stack([_crops(model, 8, 2), _crops(model, 8, 3)])
    calls = []
    inner = model.vision_tower.vision_tower  # the transformers model: runs for frames and for crops
    hook = inner.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append((args[0] if args else kwargs["pixel_values"]).shape[0]),
        with_kwargs=True,
    )
    try:
        with torch.no_grad():
            whole_video, whole_faces = model.encode_video(pixels), model.encode_faces(crops)
            assert calls == [16, 16]
            model.encoder_chunk, calls[:] = 5, []
            video, faces = model.encode_video(pixels), model.encode_faces(crops)
            assert calls == [5, 5, 5, 1] * 2
    finally:
        model.encoder_chunk = 0
        hook.remove()
    torch.testing.assert_close(video, whole_video, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(faces, whole_faces, atol=1e-5, rtol=1e-5)


def test_face_tokens_follow_video_tokens_at_the_placeholder(loaded) -> None:
    model, tok = loaded.model, loaded.tokenizer
    ids = tokenize_with_video(caption_prompt(tok, "Describe the face."), tok)
    p = ids.index(VIDEO_TOKEN_INDEX)
    pixels = torch.stack([_pixels(model, 8, 0), _pixels(model, 8, 1)])
    faces = [_crops(model, 8), None]
    with torch.no_grad():
        video = model.encode_video(pixels)
        face_tokens = model.encode_faces(faces[0][None])[0]
        visual = model.visual_tokens(pixels, faces)
        embeds, mask, _ = model.embed([ids, ids], visual, padding_side="left")
        text = model.llm.get_input_embeddings()(torch.tensor([i for i in ids if i != VIDEO_TOKEN_INDEX]))
    nv, nf = video.shape[1], face_tokens.shape[0]
    assert nf == 8 * model.face_tokens_per_frame
    length = len(ids) - 1 + nv + nf
    assert embeds.shape[:2] == (2, length)
    # Clip 0 (with faces): text, video tokens, face tokens, text.
    row = embeds[0]
    torch.testing.assert_close(row[:p], text[:p])
    torch.testing.assert_close(row[p : p + nv], video[0])
    torch.testing.assert_close(row[p + nv : p + nv + nf], face_tokens)
    torch.testing.assert_close(row[p + nv + nf :], text[p:])
    # Clip 1 (no face found): frames alone, left-padded by the face tokens' count.
    assert mask[0].all() and mask[1, :nf].eq(0).all() and mask[1, nf:].eq(1).all()
    torch.testing.assert_close(embeds[1, nf + p : nf + p + nv], video[1])
    torch.testing.assert_close(embeds[1, nf + p + nv :], text[p:])
    assert embeds[1, :nf].eq(0).all()


def test_generate_feeds_the_spliced_embeddings(loaded) -> None:
    model, tok = loaded.model, loaded.tokenizer
    ids = tokenize_with_video(caption_prompt(tok, "Describe."), tok)
    pixels, faces = _pixels(model, 8)[None], [_crops(model, 8)]
    seen = []
    hook = model.llm.model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs.get("inputs_embeds")), with_kwargs=True
    )
    try:
        out = model.generate([ids], pixels, faces, max_new_tokens=3, do_sample=False, pad_token_id=0)
    finally:
        hook.remove()
    with torch.no_grad():
        expected, _, _ = model.embed([ids], model.visual_tokens(pixels, faces))
    torch.testing.assert_close(seen[0], expected)
    assert out.shape == (1, 3)


def test_shared_prompt_prefix_runs_once_and_changes_nothing(loaded) -> None:
    model, tok = loaded.model, loaded.tokenizer
    ids = tokenize_with_video(caption_prompt(tok, "Describe the face."), tok)  # system prompt included
    prefix = ids.index(VIDEO_TOKEN_INDEX)
    assert shared_prefix_length([ids, ids, ids]) == prefix > 50
    pixels = torch.stack([_pixels(model, 8, s) for s in range(3)])
    faces = [_crops(model, 8, 5), None, _crops(model, 8, 6)]  # row 1 is shorter: it gets padding
    seen: list[tuple[str, tuple[int, ...]]] = []

    def record(mod, args, kwargs):
        x = kwargs.get("inputs_embeds")
        name, x = ("embeds", x) if x is not None else ("ids", kwargs.get("input_ids"))
        seen.append((name, tuple(x.shape[:2])))

    hook = model.llm.model.register_forward_pre_hook(record, with_kwargs=True)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, output_scores=True)
    kwargs["return_dict_in_generate"] = True
    try:
        shared = model.generate([ids] * 3, pixels, faces, **kwargs)
        shared_calls, seen[:] = list(seen), []
        plain = model.generate([ids] * 3, pixels, faces, share_prefix=False, **kwargs)
        plain_calls = list(seen)
    finally:
        hook.remove()
    assert shared.sequences.tolist() == plain.sequences.tolist()
    for a, b in zip(shared.scores, plain.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    full = len(ids) - 1 + model.num_video_tokens(8) + model.num_face_tokens(8)
    # Shared: the prefix once (one row), then each row's remainder; plain: every row in full.
    assert shared_calls[:2] == [("ids", (1, prefix)), ("embeds", (3, full - prefix))]
    assert plain_calls[0] == ("embeds", (3, full))
    # The padding of the shorter row sits after the shared prefix.
    visual = model.visual_tokens(pixels, faces)
    _, mask, _ = model.embed([ids] * 3, visual, pad_at=prefix)
    nf = model.num_face_tokens(8)
    assert mask[1, :prefix].all() and not mask[1, prefix : prefix + nf].any() and mask[1, prefix + nf :].all()
    assert mask[0].all() and mask[2].all()


def test_labels_ignore_visual_positions_and_padding(loaded) -> None:
    model = loaded.model
    hidden = model.hidden_size
    seqs = [[1, 5, VIDEO_TOKEN_INDEX, 7, 8], [1, VIDEO_TOKEN_INDEX, 9]]
    labels = [[-100, -100, -100, 7, 8], [-100, -100, 9]]
    visual = [torch.zeros(3, hidden), torch.zeros(2, hidden)]
    _, mask, lab = model.embed(seqs, visual, labels, padding_side="right")
    assert lab.tolist() == [
        [-100, -100] + [IGNORE_INDEX] * 3 + [7, 8],
        [-100] + [IGNORE_INDEX] * 2 + [9, -100, -100, -100],
    ]
    assert mask.tolist() == [[1] * 7, [1] * 4 + [0] * 3]


def test_forward_gives_a_loss_only_on_answer_tokens(loaded) -> None:
    model = loaded.model
    seqs = [[1, VIDEO_TOKEN_INDEX, 733, 16289, 28793, 415, 2]]
    labels = [[-100, -100, -100, -100, -100, 415, 2]]
    with torch.no_grad():
        out = model(seqs, _pixels(model, 8)[None], [_crops(model, 8)], labels=labels)
    assert torch.isfinite(out.loss) and out.loss > 0


@pytest.mark.parametrize("ids", [[1, 2, 3], [1, VIDEO_TOKEN_INDEX, 2, VIDEO_TOKEN_INDEX]])
def test_placeholder_must_appear_once(loaded, ids) -> None:
    hidden = loaded.model.hidden_size
    with pytest.raises(ValueError, match="exactly one <video>"):
        loaded.model.embed([ids], [torch.zeros(2, hidden)])


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("llm.model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"),
        ("llm.lm_head.weight", "lm_head.weight"),
        ("mm_projector.s1.b1.conv1.conv.weight", "model.mm_projector.s1.b1.conv1.conv.weight"),
        ("face_projector.0.weight", "model.face_projector.0.weight"),
        (
            "vision_tower.vision_tower.encoder.layers.0.mlp.fc1.weight",
            "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
        ),
    ],
)
def test_checkpoint_names_are_videollama2s(ours: str, theirs: str) -> None:
    assert checkpoint_key(ours) == theirs
    assert module_key(theirs) == ours
    if ours.startswith("vision_tower."):
        nested = ours.replace("vision_tower.vision_tower.", "vision_tower.vision_tower.vision_model.")
        assert module_key(theirs, nested_vision=True) == nested
        assert checkpoint_key(nested, nested_vision=True) == theirs
