"""The insightface backend's execution providers (CUDA when offered and a GPU is visible, else CPU) and its
batched detection, on the tiny pack and on dynamic-batch variants of its detector built here.

No GPU is needed: the CUDA choice is checked against onnxruntime's provider lists, and the fallback to the
CPU is the real one of this onnxruntime build when asked for CUDA."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("insightface")
pytest.importorskip("onnx")

import onnxruntime  # noqa: E402

from facetrack.faces import insightface_backend as ib  # noqa: E402
from facetrack.faces.base import FaceConfig  # noqa: E402
from facetrack.faces.insightface_backend import CPU, CUDA, InsightFaceAnalyser, choose_providers  # noqa: E402
from facetrack.samples import face_sources  # noqa: E402
from tests.faces.tiny_pack import build_pack  # noqa: E402

LOGGER = "facetrack.faces.insightface_backend"
CELL = 32  # at 640 px (the detector's input) a square of one stride-32 cell is a face


def _with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])


# --- providers ---------------------------------------------------------------------------------------------


def test_requested_providers_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_cuda(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert choose_providers([CPU]) == [CPU]
    assert choose_providers(["CoreMLExecutionProvider", CPU]) == ["CoreMLExecutionProvider", CPU]


@pytest.mark.parametrize(
    ("visible", "expected"),
    [("0", [CUDA, CPU]), ("2,3", [CUDA, CPU]), ("", [CPU]), ("-1", [CPU]), (" ", [CPU])],
)
def test_cuda_only_when_a_gpu_is_visible(monkeypatch: pytest.MonkeyPatch, visible: str, expected) -> None:
    _with_cuda(monkeypatch)
    # A Ray worker without a GPU share gets CUDA_VISIBLE_DEVICES="" even on a GPU node.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(ib, "_driver_device_count", lambda: 8)
    assert choose_providers() == expected


@pytest.mark.parametrize(("devices", "expected"), [(1, [CUDA, CPU]), (0, [CPU])])
def test_without_cuda_visible_devices_the_driver_decides(
    monkeypatch: pytest.MonkeyPatch, devices: int, expected
) -> None:
    _with_cuda(monkeypatch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(ib, "_driver_device_count", lambda: devices)
    assert choose_providers() == expected


def test_driver_probe_without_a_driver_counts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library(name: str):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ib.ctypes, "CDLL", no_library)
    assert ib._driver_device_count() == 0


def test_a_visible_gpu_without_cuda_in_onnxruntime_warns(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["AzureExecutionProvider", CPU])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert choose_providers() == [CPU]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "pip install onnxruntime-gpu" in warnings[0].getMessage()


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pack(tmp_path_factory.mktemp("insightface") / "models" / "tiny_pack")


def test_setup_on_cpu_logs_the_providers_once(pack: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    _with_cuda(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    analyser = InsightFaceAnalyser(FaceConfig(backend="insightface", model_pack=str(pack), download=False))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        analyser.setup()
        analyser.setup()
    assert analyser.providers == [CPU]
    infos = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(infos) == 1 and "active CPUExecutionProvider" in infos[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == LOGGER]


def test_cuda_asked_but_unusable_falls_back_to_cpu_with_one_warning(
    pack: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    # onnxruntime says it offers CUDA and a GPU is visible: CUDA is asked for. This build has no CUDA, so
    # onnxruntime itself runs the sessions on the CPU; the analyser must say so and still work.
    if CUDA in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the fallback cannot be shown")
    _with_cuda(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    analyser = InsightFaceAnalyser(FaceConfig(backend="insightface", model_pack=str(pack), download=False))
    with (
        caplog.at_level(logging.INFO, logger=LOGGER),
        pytest.warns(UserWarning, match="CUDAExecutionProvider"),
    ):
        analyser.setup()
    assert analyser.providers == [CPU]
    assert analyser._det.session.get_providers() == [CPU]
    logs = [r for r in caplog.records if r.name == LOGGER]
    assert "asked CUDAExecutionProvider, CPUExecutionProvider" in logs[0].getMessage()
    warnings = [r.getMessage() for r in logs if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "pip install onnxruntime-gpu" in warnings[0]
    image = np.full((480, 640, 3), 20, np.uint8)
    image[64:96, 96:128] = 255
    assert len(analyser.detect(image)) == 1


# --- batched detection ------------------------------------------------------------------------------------


def _variant(pack: Path, directory: Path, rank3: bool) -> Path:
    """A copy of the pack whose detector takes any batch: outputs ``(N*K, C)`` (as the tiny pack's, one
    image after the other) or ``(N, K, C)`` (insightface's ``batched`` SCRFD layout)."""
    import shutil

    import onnx
    from onnx import numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(pack / "w600k_r50.onnx", directory / "w600k_r50.onnx")
    model = onnx.load(str(pack / "det_10g.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    if rank3:
        for init in model.graph.initializer:
            if init.name in ("flat_scores", "flat_boxes", "flat_kps"):
                width = int(numpy_helper.to_array(init)[-1])
                init.CopyFrom(numpy_helper.from_array(np.array([0, -1, width], np.int64), init.name))
        for out in model.graph.output:
            dims = out.type.tensor_type.shape.dim
            width = dims[-1].dim_value
            del dims[:]
            for value in ("N", "K", width):
                dim = dims.add()
                if isinstance(value, str):
                    dim.dim_param = value
                else:
                    dim.dim_value = value
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "det_10g.onnx"))
    return directory


def _analyser(directory: Path, **kw) -> InsightFaceAnalyser:
    config = FaceConfig(
        backend="insightface", model_pack=str(directory), download=False, providers=[CPU], **kw
    )
    analyser = InsightFaceAnalyser(config)
    analyser.setup()
    return analyser


@pytest.fixture(scope="module", params=["flat", "batched"])
def dynamic(request, pack: Path, tmp_path_factory: pytest.TempPathFactory) -> InsightFaceAnalyser:
    directory = tmp_path_factory.mktemp(f"dynamic-{request.param}") / "models" / "dyn"
    analyser = _analyser(_variant(pack, directory, rank3=request.param == "batched"))
    assert analyser._det.batched == (request.param == "batched")
    return analyser


def _frames() -> list[np.ndarray]:
    """Real faces pasted on grey frames of three sizes, with bright squares (what the tiny detector finds)
    of one detector cell at different places; one frame has real faces only (nothing to find)."""
    from PIL import Image

    sources = list(face_sources().values())
    layouts = [
        ((640, 360), [(2, 2), (9, 4)]),
        ((640, 360), [(15, 1)]),
        ((1280, 720), [(3, 2), (7, 7), (12, 3)]),
        ((640, 360), []),
        ((720, 960), [(2, 9), (8, 3)]),
        ((640, 480), [(4, 4), (5, 4)]),
    ]
    rng = np.random.default_rng(7)
    frames = []
    for k, ((width, height), cells) in enumerate(layouts):
        image = np.full((height, width, 3), 90, np.uint8)
        image += rng.integers(0, 20, size=image.shape, dtype=np.uint8)
        side = int(0.35 * min(width, height))
        for j, src in enumerate(sources[k % len(sources) :][:2]):
            patch = np.asarray(Image.fromarray(src.patch).resize((side, side)))
            x = (width - side - 10) if j else 10
            image[height - side - 10 : height - 10, x : x + side] = patch
        cell = CELL * max(width, height) // 640
        for cx, cy in cells:
            image[cy * cell : (cy + 1) * cell, cx * cell : (cx + 1) * cell] = 255
        frames.append(image)
    return frames


def _same(batched, single) -> None:
    assert len(batched) == len(single)
    for got, want in zip(batched, single):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.frame == b.frame
            assert a.box == pytest.approx(b.box, abs=1e-3)
            assert a.score == pytest.approx(b.score, abs=1e-5)
            assert a.landmarks == pytest.approx(b.landmarks, abs=1e-3)


def _count_runs(analyser: InsightFaceAnalyser, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes of every run of the detector's session from now on."""
    session = analyser._det.session
    sizes: list[int] = []
    real = session.run

    def run(names, feed, *a, **k):
        sizes.append(next(iter(feed.values())).shape[0])
        return real(names, feed, *a, **k)

    monkeypatch.setattr(session, "run", run)
    return sizes


def test_batched_detection_equals_detection_per_frame(dynamic, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = _frames()
    numbers = [3, 4, 5, 6, 9, 10]
    single = [dynamic.detect(image, k) for image, k in zip(frames, numbers)]
    assert [len(f) for f in single] == [2, 1, 3, 0, 2, 2]
    runs = _count_runs(dynamic, monkeypatch)
    batched = dynamic.detect_batch(frames, numbers)
    assert runs == [len(frames)]  # one session run for the six frames
    _same(batched, single)
    # The same with the batch split into runs of at most four frames.
    runs.clear()
    monkeypatch.setattr(dynamic, "max_batch", 4)
    _same(dynamic.detect_batch(frames, numbers), single)
    assert runs == [4, 2]


def test_batched_detection_keeps_max_faces_as_per_frame(pack: Path, tmp_path: Path) -> None:
    analyser = _analyser(_variant(pack, tmp_path / "models" / "dyn", rank3=True), max_faces=1, min_face=40)
    frames = _frames()
    numbers = list(range(len(frames)))
    single = [analyser.detect(image, k) for image, k in zip(frames, numbers)]
    assert [len(f) for f in single] == [0, 0, 1, 0, 1, 0]  # 32 px squares fall under min_face
    _same(analyser.detect_batch(frames, numbers), single)


def _edited(pack: Path, directory: Path, edit) -> Path:
    """A copy of the pack whose detector graph ``edit`` changed (its declared batch stays 1)."""
    import shutil

    import onnx

    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(pack / "w600k_r50.onnx", directory / "w600k_r50.onnx")
    model = onnx.load(str(pack / "det_10g.onnx"))
    edit(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "det_10g.onnx"))
    return directory


def _single_image_only(model) -> None:
    # The first node reads the input reshaped to exactly one image: any batch of two fails in the graph.
    from onnx import helper, numpy_helper

    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 3, 0, 0], np.int64), "one_image"))
    model.graph.node[0].input[0] = "single"
    model.graph.node.insert(0, helper.make_node("Reshape", ["input.1", "one_image"], ["single"], name="One"))


def _interleaved_rows(model) -> None:
    # Outputs flattened (row, column, image, anchor): right for one image, images mixed in a batch.
    from onnx import helper

    for node in model.graph.node:
        if node.op_type == "Transpose":
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("perm", [2, 3, 0, 1]))


def _detect_calls(analyser: InsightFaceAnalyser, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = analyser.detect

    def detect(image, frame=0):
        calls.append(frame)
        return real(image, frame)

    monkeypatch.setattr(analyser, "detect", detect)
    return calls


def test_declared_batch_of_one_is_freed_when_the_graph_batches(pack: Path, monkeypatch) -> None:
    # The tiny pack declares 1x3xHxW, as buffalo_l's det_10g; its graph batches (rows image after image).
    analyser = _analyser(pack)
    assert analyser._det.session.get_inputs()[0].shape[0] == 1
    assert analyser._batch_session is not None and analyser._batch_session is not analyser._det.session
    frames = _frames()
    numbers = [0, 2, 4, 6, 8, 10]
    single = [analyser.detect(image, k) for image, k in zip(frames, numbers)]
    calls = _detect_calls(analyser, monkeypatch)
    sizes: list[int] = []
    real = analyser._batch_session.run
    monkeypatch.setattr(
        analyser._batch_session, "run", lambda n, f: sizes.append(len(f["input.1"])) or real(n, f)
    )
    _same(analyser.detect_batch(frames, numbers), single)
    assert calls == [] and sizes == [6]


@pytest.mark.parametrize("edit", [_single_image_only, _interleaved_rows])
def test_detector_that_cannot_batch_runs_per_frame(pack: Path, tmp_path: Path, monkeypatch, edit) -> None:
    analyser = _analyser(_edited(pack, tmp_path / "models" / edit.__name__, edit))
    assert analyser._batch_session is None  # the probe at setup refused it
    frames = _frames()
    numbers = [0, 2, 4, 6, 8, 10]
    single = [analyser.detect(image, k) for image, k in zip(frames, numbers)]
    assert [len(f) for f in single] == [2, 1, 3, 0, 2, 2]
    calls = _detect_calls(analyser, monkeypatch)
    _same(analyser.detect_batch(frames, numbers), single)
    assert calls == numbers


def test_detect_batch_empty_and_mismatched(dynamic) -> None:
    assert dynamic.detect_batch([], []) == []
    with pytest.raises(ValueError, match="2 images but 1 frame"):
        dynamic.detect_batch(_frames()[:2], [0])
