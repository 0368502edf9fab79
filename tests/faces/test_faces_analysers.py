"""The two face analysers and backend selection: built-in (dlib) on real packaged faces, insightface on a
model pack built by the test (real insightface loading, preprocessing and output parsing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facetrack.faces import base
from facetrack.faces.base import (
    BACKENDS,
    FaceConfig,
    analyse,
    backend_class,
    create_analyser,
    resolve_backend,
)
from facetrack.samples import face_sources
from tests.faces.tiny_pack import LANDMARKS, STRIDE, build_pack, square_image


def _t1() -> np.ndarray:
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("insightface")
    if spec is None:
        pytest.skip("insightface is not installed")
    path = Path(spec.submodule_search_locations[0]) / "data" / "images" / "t1.jpg"
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def full_res_analyser():
    from facetrack.faces.dlib_backend import DlibFaceAnalyser

    analyser = DlibFaceAnalyser(FaceConfig(backend="builtin", detect_size=1280))
    analyser.setup()
    return analyser


def test_builtin_finds_the_six_faces_of_t1(full_res_analyser) -> None:
    builtin_analyser = full_res_analyser
    image = _t1()
    faces = analyse(builtin_analyser, image)
    assert len(faces) == 6
    for face in faces:
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= image.shape[1] and 0 <= y1 < y2 <= image.shape[0]
        assert 0.5 <= face.score <= 1.0
        lm = face.landmarks
        assert lm.shape == (5, 2)
        # Eyes above the mouth, left eye left of the right eye, all points near the box.
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
        assert max(lm[0, 1], lm[1, 1]) < min(lm[3, 1], lm[4, 1])
        assert np.all(lm[:, 0] > x1 - 0.2 * (x2 - x1)) and np.all(lm[:, 0] < x2 + 0.2 * (x2 - x1))
        assert face.embedding.shape == (128,) and np.isclose(np.linalg.norm(face.embedding), 1.0, atol=1e-5)
    embs = np.stack([f.embedding for f in faces])
    dist = 1.0 - embs @ embs.T
    off_diagonal = dist[~np.eye(6, dtype=bool)]
    assert off_diagonal.min() > builtin_analyser.match_distance  # six different people


def test_builtin_detects_on_a_downscaled_frame(builtin_analyser) -> None:
    image = _t1()
    assert max(image.shape[:2]) > builtin_analyser.config.detect_size
    faces = builtin_analyser.detect(image)
    # Half-size faces are harder for HOG: most, not all, are found; every box comes back in the full
    # frame's pixels, on one of the six faces.
    from facetrack.samples import _T1_FACES
    from tests.faces.face_helpers import iou

    assert len(faces) >= 3
    for face in faces:
        assert max(iou(face.box, truth) for truth in _T1_FACES) > 0.5, face.box


def test_builtin_same_person_is_close_across_scales(builtin_analyser) -> None:
    from PIL import Image

    src = face_sources()["hopper"].patch
    embs = []
    for size in (160, 320):
        img = np.asarray(Image.fromarray(src).resize((size, size)))
        img = np.pad(img, ((60, 60), (60, 60), (0, 0)), mode="edge")
        faces = analyse(builtin_analyser, img)
        assert len(faces) == 1
        embs.append(faces[0].embedding)
    assert 1.0 - embs[0] @ embs[1] < builtin_analyser.match_distance


def test_builtin_min_face_and_max_faces(full_res_analyser) -> None:
    from facetrack.faces.dlib_backend import DlibFaceAnalyser

    image = _t1()
    all_faces = full_res_analyser.detect(image)
    areas = sorted(((f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in all_faces), reverse=True)
    analyser = DlibFaceAnalyser(FaceConfig(backend="builtin", detect_size=1280, max_faces=2))
    analyser.setup()
    faces = analyser.detect(image)
    assert len(faces) == 2
    assert sorted((f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces) == sorted(areas[:2])
    analyser.config = FaceConfig(backend="builtin", detect_size=1280, min_face=125)
    kept = analyser.detect(image)
    assert 0 < len(kept) < len(all_faces)
    assert all(max(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= 125 for f in kept)


def test_builtin_cnn_detector(builtin_analyser) -> None:
    from facetrack.faces.dlib_backend import DlibFaceAnalyser

    patch = np.pad(face_sources()["hopper"].patch, ((30, 30), (30, 30), (0, 0)), mode="edge")
    cnn = DlibFaceAnalyser(FaceConfig(backend="builtin", detector="cnn", detect_size=320))
    cnn.setup()
    faces = analyse(cnn, patch)
    hog = analyse(builtin_analyser, patch)
    assert len(faces) == 1 and len(hog) == 1
    from tests.faces.face_helpers import iou

    assert iou(faces[0].box, hog[0].box) > 0.5
    assert 1.0 - faces[0].embedding @ hog[0].embedding < builtin_analyser.match_distance


def test_registry_imports_backends_lazily() -> None:
    assert set(BACKENDS) == {"insightface", "builtin"}
    assert backend_class("builtin").__name__ == "DlibFaceAnalyser"
    with pytest.raises(ValueError, match="unknown face backend 'nope'"):
        backend_class("nope")


# --- insightface, on a pack the test builds -----------------------------------------------------------


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("insightface")
    pytest.importorskip("onnx")
    # Laid out as insightface keeps packs: <root>/models/<name>/*.onnx
    return build_pack(tmp_path_factory.mktemp("insightface") / "models" / "tiny_pack")


@pytest.fixture(scope="module")
def insight(pack: Path):
    from facetrack.faces.insightface_backend import InsightFaceAnalyser

    analyser = InsightFaceAnalyser(
        FaceConfig(
            backend="insightface", model_pack=str(pack), download=False, providers=["CPUExecutionProvider"]
        )
    )
    analyser.setup()
    return analyser


def test_insightface_loads_the_pack_through_its_model_router(insight, pack: Path) -> None:
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    assert isinstance(insight._det, SCRFD) and isinstance(insight._rec, ArcFaceONNX)
    assert insight.pack_dir == str(pack.resolve())
    assert insight.providers == ["CPUExecutionProvider"]
    assert insight.embedding_dim == 512
    # ArcFace preprocessing detected from the graph: (x - 127.5) / 127.5.
    assert insight._rec.input_mean == 127.5 and insight._rec.input_std == 127.5


@pytest.mark.parametrize(("width", "height", "cell"), [(640, 480, 32), (1280, 720, 64), (720, 960, 48)])
def test_insightface_boxes_and_landmarks_in_frame_pixels(insight, width: int, height: int, cell: int) -> None:
    # The detector sees the frame letterboxed into 640x640: a square of side `cell` in the frame fills
    # exactly one stride-32 cell there. The boxes must come back in the frame's own pixels.
    cells = [(3, 2), (10, 8)] if width > height else [(2, 3), (8, 10)]
    image = square_image(width, height, cells, cell)
    assert cell * 640 / max(width, height) == STRIDE
    faces = insight.detect(image, frame=7)
    assert len(faces) == 2
    found = sorted(faces, key=lambda f: f.box[0])
    for face, (cx, cy) in zip(found, sorted(cells)):
        assert face.frame == 7 and face.score > 0.99
        assert face.box == pytest.approx((cx * cell, cy * cell, (cx + 1) * cell, (cy + 1) * cell), abs=0.5)
        expected = np.array([cx * cell, cy * cell]) + LANDMARKS * cell
        assert face.landmarks == pytest.approx(expected, abs=0.5)
    assert insight.detect(np.full((height, width, 3), 20, np.uint8)) == []


def test_insightface_embeddings_are_normalised_and_tell_patterns_apart(insight) -> None:
    image = square_image(640, 480, [(3, 2), (10, 2), (3, 8)], 32)
    # Faces 0 and 1 carry the same pattern, face 2 a different one (still bright enough to be found).
    image[64 + 8 : 64 + 12, 96:128] = 120
    image[64 + 8 : 64 + 12, 320:352] = 120
    image[256:288, 96 + 20 : 96 + 24] = 120
    faces = sorted(insight.detect(image), key=lambda f: (f.box[1], f.box[0]))
    assert len(faces) == 3
    embs = insight.embed(image, faces)
    assert embs.shape == (3, 512) and embs.dtype == np.float32
    assert np.allclose(np.linalg.norm(embs, axis=1), 1.0, atol=1e-5)
    assert embs[0] @ embs[1] > 0.999
    assert embs[0] @ embs[2] < 0.99
    assert insight.embed(image, []).shape == (0, 512)


def test_insightface_through_the_stage(insight, tmp_path: Path) -> None:
    from facetrack.faces.stage import FaceTrackConfig, FaceTrackStage
    from facetrack.samples import write_video

    # A bright square moves right by one cell every 6 frames, over 3 s; it vanishes for 0.5 s.
    frames = []
    for i in range(75):
        col = 2 + i // 6
        cells = [] if 30 <= i < 42 else [(col, 3)]
        frames.append(square_image(640, 480, cells, 32))
    path = tmp_path / "squares.mp4"
    write_video(path, frames, 25.0, crf=12)
    stage = FaceTrackStage(FaceTrackConfig(faces=insight.config), analyser=insight)
    result = stage.process(str(path))
    assert result.error is None
    assert len(result.tracks) == 1 and result.main_track_id == result.tracks[0].track_id
    track = result.tracks[0]
    gap = [k for k, t in enumerate(result.tracking_times) if 1.2 <= t < 1.68]
    assert track.frames[0] < gap[0] and track.frames[-1] > gap[-1]
    for k, box in zip(track.frames, track.boxes):
        i = int(round(result.tracking_times[k] * 25))
        col = 2 + i // 6
        assert box == pytest.approx((col * 32, 96, col * 32 + 32, 128), abs=1.0)
    # The crops are centred on the square (bright middle, dark margin).
    crop = result.crops[0].astype(float)
    assert crop[100:124, 100:124].mean() > 200 and crop[:20, :20].mean() < 60


# --- choosing the backend ---------------------------------------------------------------------------------


def test_auto_picks_insightface_when_the_pack_is_on_disk(pack: Path, caplog) -> None:
    config = FaceConfig(model_pack=str(pack), download=False)
    with caplog.at_level("INFO", logger="facetrack.faces.base"):
        assert resolve_backend(config) == "insightface"
    assert "insightface" in caplog.text
    # A pack name under the models root works the same way.
    root_config = FaceConfig(model_pack=pack.name, model_root=str(pack.parent.parent), download=False)
    assert resolve_backend(root_config) == "insightface"
    assert type(create_analyser(root_config)).__name__ == "InsightFaceAnalyser"


def test_auto_falls_back_to_builtin_without_a_pack(tmp_path: Path, caplog) -> None:
    config = FaceConfig(model_root=str(tmp_path / "empty"), download=False)
    with caplog.at_level("INFO", logger="facetrack.faces.base"):
        assert resolve_backend(config) == "builtin"
    assert "built-in" in caplog.text
    assert type(create_analyser(config)).__name__ == "DlibFaceAnalyser"


def test_auto_falls_back_when_the_pack_cannot_be_fetched(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("insightface")
    fetched = []
    monkeypatch.setattr(base, "_reachable", lambda host, timeout=3.0: False)
    import insightface.utils as iu

    monkeypatch.setattr(iu, "ensure_available", lambda *a, **k: fetched.append(a))
    config = FaceConfig(model_root=str(tmp_path / "empty"), download=True)
    assert resolve_backend(config) == "builtin"
    assert fetched == []
    from facetrack.faces.insightface_backend import InsightFaceAnalyser

    with pytest.raises(RuntimeError, match="cannot be reached"):
        InsightFaceAnalyser(FaceConfig(backend="insightface", model_root=str(tmp_path / "empty"))).setup()


def test_auto_uses_a_fetched_pack(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("insightface")
    root = tmp_path / "root"
    monkeypatch.setattr(base, "_reachable", lambda host, timeout=3.0: True)
    import insightface.utils as iu

    def fake_fetch(sub_dir: str, name: str, root: str) -> str:
        # Stands in for the network download: puts a pack where insightface would unpack one.
        return str(build_pack(Path(root) / sub_dir / name))

    monkeypatch.setattr(iu, "ensure_available", fake_fetch)
    assert resolve_backend(FaceConfig(model_root=str(root), download=True)) == "insightface"
    assert (root / "models" / "buffalo_l" / "det_10g.onnx").is_file()
