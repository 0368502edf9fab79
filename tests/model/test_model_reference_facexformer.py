"""Our FaceXFormer encoder side by side with FaceXFormer's own code, on the facts its code gave.

``golden/facexformer_reference.json`` holds what FaceXFormer's model code (torchvision ``swin_b`` children
as ``backbone``, forward hooks on stages ``0.1``/``0.3``/``0.5``/``0.7``, the ``linear_c`` MLPs and
``linear_fuse``) and its inference transform (224 x 224 bicubic resize, ``ToTensor``, ImageNet mean/std)
gave, in a separate environment, for the random Swin-B weights of :func:`random_encoder_state` saved as a
FaceXFormer checkpoint (``{"state_dict_backbone": ...}``, its decoder included) and the crops of
:func:`face_crops`. The tests load that kind of checkpoint through our loader and compare.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from facetrack.model.face import (  # noqa: E402
    FaceXFormerEncoder,
    facexformer_encoder_state,
    facexformer_preprocess,
)

GOLDEN = Path(__file__).parent / "golden" / "facexformer_reference.json"
CROP_SHAPES = ((96, 76), (50, 64), (224, 224))
"""(height, width) of the crops: taller than wide, wider than tall, already 224 x 224."""


def random_encoder_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for FaceXFormer's encoder (Swin-B, fused width 256), drawn from ``seed``.

    Parameters are drawn in name order from one generator (norm weights around 1, everything else small),
    so any program that knows the names and shapes draws the same numbers; buffers (the Swin
    relative-position indices) keep the values the architecture gives them.
    """
    encoder = FaceXFormerEncoder()
    gen = torch.Generator().manual_seed(seed)
    state = encoder.state_dict()
    params = dict(encoder.named_parameters())
    for name in sorted(params):
        p = params[name]
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        is_norm_weight = name.endswith(".weight") and p.ndim == 1
        state[name] = 1.0 + 0.1 * noise if is_norm_weight else 0.05 * noise
    return state


def face_crops() -> list[np.ndarray]:
    """Deterministic ``(h, w, 3)`` uint8 RGB crops with smooth structure and texture."""
    rng = np.random.default_rng(7)
    crops = []
    for h, w in CROP_SHAPES:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack(
            [127 + 90 * np.sin(xx / (5 + 3 * c) + c) * np.cos(yy / (4 + 2 * c)) for c in range(3)], -1
        )
        img += rng.normal(0, 12, img.shape)
        crops.append(np.clip(img, 0, 255).astype(np.uint8))
    return crops


def _sha(x: torch.Tensor) -> str:
    a = x.detach().cpu().float().numpy()
    return hashlib.sha256(str(a.shape).encode() + np.ascontiguousarray(a).tobytes()).hexdigest()


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """Checksum of names, shapes and float32 values, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu()
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.float().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def checkpoint_encoder(golden: dict, tmp_path_factory: pytest.TempPathFactory) -> FaceXFormerEncoder:
    """Our encoder loaded from a FaceXFormer-style checkpoint of the golden weights (decoder keys and a
    ``module.`` prefix included, as a DataParallel-trained checkpoint has them)."""
    state = random_encoder_state(golden["seed"])
    assert state_sha256(state) == golden["encoder_state_sha256"], "the random weights are not the golden ones"
    checkpoint = {
        "state_dict_backbone": {
            **{f"module.{k}": v for k, v in state.items()},
            "backbone.1.weight": torch.ones(1024),
            "face_decoder.landmarks_token.weight": torch.zeros(1, 256),
        }
    }
    path = tmp_path_factory.mktemp("facexformer") / "facexformer.pt"
    torch.save(checkpoint, path)
    loaded = facexformer_encoder_state(torch.load(path, map_location="cpu", weights_only=True))
    arch = FaceXFormerEncoder.arch_from_state_dict(loaded)
    assert arch == golden["arch"]
    encoder = FaceXFormerEncoder(**arch).eval()
    encoder.load_state_dict(loaded, strict=True)
    return encoder


def test_crops_are_the_golden_ones(golden: dict) -> None:
    for crop, ref in zip(face_crops(), golden["crops"]):
        assert list(crop.shape) == ref["shape"]
        assert hashlib.sha256(crop.tobytes()).hexdigest() == ref["sha256"]


@pytest.mark.parametrize("i", range(len(CROP_SHAPES)))
def test_preprocessing_matches_facexformer_transform(golden: dict, i: int) -> None:
    ref = golden["crops"][i]
    x = facexformer_preprocess(face_crops()[i][None])
    assert list(x.shape) == [1, 3, 224, 224] and x.dtype == torch.float32
    assert _sha(x[0]) == ref["pixels_sha256"]
    np.testing.assert_allclose(x[0].double().sum().item(), ref["pixels_sum"], rtol=0, atol=1e-3)


def test_model_face_processor_is_facexformer_transform(golden: dict) -> None:
    """The face branch of a FaceXFormer model preprocesses crops exactly as FaceXFormer does."""
    from facetrack.model.modeling import FaceTrackMM
    from facetrack.model.tiny import tiny_spec

    spec = tiny_spec(face_encoder="facexformer")
    spec.face_encoder_arch = {
        "patch_size": 4, "embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
        "window_size": 7, "fused_dim": 16,
    }  # fmt: skip
    model = FaceTrackMM(spec)
    crops = face_crops()[0][None]
    torch.testing.assert_close(model.preprocess_faces(crops), facexformer_preprocess(crops), atol=0, rtol=0)
    assert _sha(model.preprocess_faces(crops)[0]) == golden["crops"][0]["pixels_sha256"]


@pytest.mark.parametrize("i", range(len(CROP_SHAPES)))
def test_fused_map_matches_facexformer(golden: dict, checkpoint_encoder: FaceXFormerEncoder, i: int) -> None:
    ref = golden["crops"][i]
    with torch.no_grad():
        fused = checkpoint_encoder(facexformer_preprocess(face_crops()[i][None]))[0]
    assert list(fused.shape) == ref["fused_shape"] == [256, 56, 56]
    corner = torch.tensor(ref["fused_corner"])  # fused[:4, :4, :4]
    torch.testing.assert_close(fused[:4, :4, :4], corner, atol=2e-5, rtol=1e-5)
    channel_means = torch.tensor(ref["fused_channel_means"])
    torch.testing.assert_close(fused.mean((1, 2)), channel_means, atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(fused.double().abs().sum().item(), ref["fused_abs_sum"], rtol=1e-6)
