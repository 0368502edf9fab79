"""Frame preprocessing, the vision tower's tokens and the face branch's encoders and pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facetrack.model.face import FaceXFormerEncoder, facexformer_encoder_state, pool_grid, pool_tokens
from facetrack.model.vision import CLIP_MEAN, CLIP_STD, ImagePreprocessor


def test_wide_frame_is_padded_with_the_mean_colour() -> None:
    pre = ImagePreprocessor(size=56)
    frame = np.full((1, 20, 56, 3), 255, dtype=np.uint8)  # white band, 56 wide, 20 tall
    x = pre(frame)
    assert x.shape == (1, 3, 56, 56)
    mean_colour = torch.tensor([int(m * 255) / 255 for m in CLIP_MEAN])
    expected_pad = (mean_colour - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(x[0, :, 0, :].mean(1), expected_pad, atol=1e-4, rtol=0)  # top rows: padding
    torch.testing.assert_close(x[0, :, 55, :].mean(1), expected_pad, atol=1e-4, rtol=0)  # bottom rows
    white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(x[0, :, 28, :].mean(1), white, atol=1e-3, rtol=0)  # centre: the frame


def test_resize_without_padding_stretches() -> None:
    pre = ImagePreprocessor(size=32, pad_to_square=False)
    frame = np.full((1, 10, 40, 3), 255, dtype=np.uint8)
    x = pre(frame)
    white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(x[0, :, 0, :].mean(1), white, atol=1e-3, rtol=0)


BAD_ARRAYS = [
    np.zeros((4, 4, 3), np.uint8),
    np.zeros((1, 4, 4, 4), np.uint8),
    np.zeros((1, 4, 4, 3), np.float32),
    np.zeros((1, 0, 4, 3), np.uint8),
]


@pytest.mark.parametrize("bad", BAD_ARRAYS)
def test_preprocessor_rejects_bad_arrays(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        ImagePreprocessor(size=16)(bad)


def test_preprocessor_round_trips_its_config() -> None:
    pre = ImagePreprocessor(size=224, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    again = ImagePreprocessor.from_dict(pre.to_dict())
    assert (again.size, again.mean, again.std) == (224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    from transformers import CLIPImageProcessor

    hf = CLIPImageProcessor(**{k: v for k, v in pre.to_dict().items() if k != "image_processor_type"})
    frame = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    theirs = hf(images=[frame], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pre(frame[None]), theirs, atol=2e-2, rtol=0)


def test_vision_tower_penultimate_patch_tokens(tiny_model) -> None:
    tower = tiny_model.vision_tower
    assert tower.select_layer == -2 and tower.grid == 8 and tower.num_tokens == 64 and tower.kept_layers == 1
    x = torch.randn(3, 3, 112, 112)
    calls = []
    hook = tower.vision_tower.encoder.layers[-1].register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            feats = tower(x)
            assert calls == []  # the last layer is not run for layer -2
            ref = tower.vision_tower(pixel_values=x, output_hidden_states=True).hidden_states
            again = tower(x)
    finally:
        hook.remove()
    assert feats.shape == (3, 64, 32)
    torch.testing.assert_close(feats, ref[-2][:, 1:])
    torch.testing.assert_close(again, feats)
    assert len(tower.vision_tower.encoder.layers) == 2  # restored after the call
    assert not torch.allclose(feats, ref[-1][:, 1:])


def test_siglip_tower_keeps_every_patch_token() -> None:
    from transformers import SiglipVisionConfig

    from facetrack.model.vision import VisionTower

    config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
    )
    tower = VisionTower(config).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        feats = tower(x)
        ref = tower.vision_tower(pixel_values=x, output_hidden_states=True).hidden_states
    assert feats.shape == (2, 16, 32)
    torch.testing.assert_close(feats, ref[-2])


@pytest.mark.parametrize(
    ("tokens", "grid"), [(1, (1, 1)), (2, (1, 2)), (4, (2, 2)), (6, (2, 3)), (9, (3, 3))]
)
def test_pool_grid(tokens: int, grid: tuple[int, int]) -> None:
    assert pool_grid(tokens) == grid
    fmap = torch.arange(2 * 5 * 12 * 12, dtype=torch.float32).reshape(2, 5, 12, 12)
    pooled = pool_tokens(fmap, tokens)
    assert pooled.shape == (2, tokens, 5)
    torch.testing.assert_close(pooled.mean(1), fmap.mean((2, 3)))


def test_pool_grid_rejects_zero() -> None:
    with pytest.raises(ValueError):
        pool_grid(0)


TINY_SWIN = {
    "embed_dim": 8,
    "depths": [1, 2, 1, 1],
    "num_heads": [1, 2, 2, 4],
    "window_size": 7,
    "fused_dim": 16,
}


def test_facexformer_encoder_fused_map_and_arch_inference() -> None:
    torch.manual_seed(0)
    encoder = FaceXFormerEncoder(**TINY_SWIN).eval()
    with torch.no_grad():
        fused = encoder(torch.randn(2, 3, 224, 224))
    assert fused.shape == (2, 16, 56, 56)
    state = encoder.state_dict()
    assert (
        "backbone.0.0.0.weight" in state
        and "linear_c.3.proj.weight" in state
        and "linear_fuse.weight" in state
    )
    assert FaceXFormerEncoder.arch_from_state_dict(state) == {"patch_size": 4, **TINY_SWIN}


def test_facexformer_checkpoint_keeps_only_the_encoder() -> None:
    encoder = FaceXFormerEncoder(**TINY_SWIN)
    checkpoint = {
        "state_dict_backbone": {
            **{f"module.{k}": v for k, v in encoder.state_dict().items()},
            "backbone.1.weight": torch.ones(64),  # the Swin head norm FaceXFormer keeps but does not use
            "face_decoder.landmarks_token.weight": torch.zeros(1, 16),
            "pe_layer.positional_encoding_gaussian_matrix": torch.zeros(2, 8),
        }
    }
    state = facexformer_encoder_state(checkpoint)
    assert set(state) == set(encoder.state_dict())
    with pytest.raises(ValueError, match="not a FaceXFormer"):
        FaceXFormerEncoder.arch_from_state_dict({"x": torch.zeros(1)})


def _pillow_reference(frames: np.ndarray, size: int, fill: tuple[int, int, int]) -> np.ndarray:
    """VideoLLaMA2's preprocessing with Pillow: pad to a square with ``fill``, centred; bicubic resize."""
    from PIL import Image

    out = []
    for frame in frames:
        img = Image.fromarray(frame)
        side = max(img.size)
        square = Image.new("RGB", (side, side), fill)
        square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        out.append(np.asarray(square.resize((size, size), Image.BICUBIC)))
    return np.stack(out)


@pytest.mark.parametrize(
    ("shape", "size"),
    [((3, 240, 320), 112), ((2, 90, 60), 56), ((4, 40, 40), 112), ((2, 360, 640), 336), ((1, 33, 70), 28)],
)
def test_resize_matches_pillow_bicubic(shape: tuple[int, int, int], size: int) -> None:
    # Smooth content (as in video) and noise (the hardest case for a resampling kernel).
    rng = np.random.default_rng(0)
    n, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = (127 + 120 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 5.0)[..., None]).astype(np.uint8)
    frames = np.stack([np.repeat(smooth, 3, axis=-1)] * (n - 1) + [rng.integers(0, 256, (h, w, 3), np.uint8)])
    pre = ImagePreprocessor(size=size)
    ours = pre.resize(frames).permute(0, 2, 3, 1).numpy().astype(int)
    theirs = _pillow_reference(frames, size, pre.fill).astype(int)
    diff = np.abs(ours - theirs)
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())
