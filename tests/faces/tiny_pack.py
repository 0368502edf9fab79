"""A tiny insightface model pack built at test time: SCRFD-shaped detector, ArcFace-shaped recogniser.

The detector keeps the layout of ``det_10g.onnx`` (input ``input.1``, nine outputs: scores, box distances
and landmark offsets for strides 8, 16 and 32, two anchors per location) but its weights are chosen, not
learnt: it fires on a bright square that exactly fills one stride-32 cell, with a box equal to that cell
and landmarks at fixed places inside it. So a test knows where the faces must come out, which exercises
insightface's loading, preprocessing (resize, letterbox, normalisation) and output parsing for real.
The recogniser keeps the layout of ``w600k_r50.onnx`` (``input.1`` 1x3x112x112 -> 512) with random weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

STRIDE = 32
"""Faces the tiny detector finds are exactly one cell of this stride."""
LANDMARKS = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.33, 0.75], [0.67, 0.75]], dtype=np.float32)
"""Landmarks of a found face, as fractions of its box (eyes, nose, mouth corners)."""
DET_OUTPUTS = ["448", "471", "494", "451", "474", "497", "454", "477", "500"]


def build_detector(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    nodes, inits = [], []

    def const(name: str, value) -> str:
        inits.append(
            helper.make_tensor(
                name, TensorProto.FLOAT, np.shape(value), np.asarray(value, np.float32).ravel()
            )
        )
        return name

    def int_const(name: str, value) -> str:
        inits.append(helper.make_tensor(name, TensorProto.INT64, [len(value)], list(value)))
        return name

    nodes.append(
        helper.make_node("ReduceMean", ["input.1"], ["gray"], axes=[1], keepdims=1, name="ReduceMean_0")
    )
    int_const("flat_scores", [-1, 1])
    int_const("flat_boxes", [-1, 4])
    int_const("flat_kps", [-1, 10])
    outputs = {}
    for stride in (8, 16, 32):
        s = str(stride)
        nodes.append(
            helper.make_node(
                "AveragePool",
                ["gray"],
                [f"pool{s}"],
                kernel_shape=[stride, stride],
                strides=[stride, stride],
                name=f"AveragePool_{s}",
            )
        )
        # Score: a steep logistic of the cell's mean brightness (only stride 32 can fire).
        gain, bias = (24.0, -18.0) if stride == STRIDE else (0.0, -30.0)
        nodes.append(
            helper.make_node("Mul", [f"pool{s}", const(f"gain{s}", [gain])], [f"g{s}"], name=f"Mul_{s}")
        )
        nodes.append(
            helper.make_node("Add", [f"g{s}", const(f"bias{s}", [bias])], [f"a{s}"], name=f"Add_{s}")
        )
        nodes.append(helper.make_node("Sigmoid", [f"a{s}"], [f"sig{s}"], name=f"Sigmoid_{s}"))
        nodes.append(
            helper.make_node("Transpose", [f"sig{s}"], [f"t{s}"], perm=[0, 2, 3, 1], name=f"Transpose_{s}")
        )
        nodes.append(helper.make_node("Concat", [f"t{s}", f"t{s}"], [f"two{s}"], axis=3, name=f"Concat_{s}"))
        nodes.append(
            helper.make_node("Reshape", [f"two{s}", "flat_scores"], [f"score{s}"], name=f"Reshape_s{s}")
        )
        # Box distances (left, top, right, bottom) in strides from the anchor (the cell's top-left corner).
        nodes.append(
            helper.make_node("Mul", [f"t{s}", const(f"zero{s}", [0.0])], [f"z{s}"], name=f"Zero_{s}")
        )
        dist = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), 2).reshape(1, 1, 1, 8)
        nodes.append(helper.make_node("Add", [f"z{s}", const(f"dist{s}", dist)], [f"d{s}"], name=f"Dist_{s}"))
        nodes.append(helper.make_node("Reshape", [f"d{s}", "flat_boxes"], [f"box{s}"], name=f"Reshape_b{s}"))
        kps = np.tile(LANDMARKS.reshape(-1), 2).reshape(1, 1, 1, 20)
        nodes.append(helper.make_node("Add", [f"z{s}", const(f"kps{s}", kps)], [f"k{s}"], name=f"Kps_{s}"))
        nodes.append(helper.make_node("Reshape", [f"k{s}", "flat_kps"], [f"kp{s}"], name=f"Reshape_k{s}"))
        outputs[s] = (f"score{s}", f"box{s}", f"kp{s}")
    # Name the outputs as det_10g does: scores 8/16/32, boxes 8/16/32, landmarks 8/16/32.
    order = [outputs[s][0] for s in ("8", "16", "32")] + [outputs[s][1] for s in ("8", "16", "32")]
    order += [outputs[s][2] for s in ("8", "16", "32")]
    widths = [1, 1, 1, 4, 4, 4, 10, 10, 10]
    for src, dst in zip(order, DET_OUTPUTS):
        nodes.append(helper.make_node("Identity", [src], [dst], name=f"Out_{dst}"))
    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["?", w]) for n, w in zip(DET_OUTPUTS, widths)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_recogniser(path: Path, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.2, size=(8, 3, 4, 4)).astype(np.float32)
    w2 = rng.normal(0, 1.0 / np.sqrt(8 * 28 * 28), size=(8 * 28 * 28, 512)).astype(np.float32)
    inits = [
        helper.make_tensor("conv.weight", TensorProto.FLOAT, w1.shape, w1.ravel()),
        helper.make_tensor("fc.weight", TensorProto.FLOAT, w2.shape, w2.ravel()),
    ]
    nodes = [
        helper.make_node("Conv", ["input.1", "conv.weight"], ["c"], strides=[4, 4], name="Conv_0"),
        helper.make_node("Relu", ["c"], ["r"], name="Relu_1"),
        helper.make_node("Flatten", ["r"], ["f"], axis=1, name="Flatten_2"),
        helper.make_node("MatMul", ["f", "fc.weight"], ["683"], name="MatMul_3"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_pack(directory: Path) -> Path:
    """Write ``det_10g.onnx`` and ``w600k_r50.onnx`` into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    build_detector(directory / "det_10g.onnx")
    build_recogniser(directory / "w600k_r50.onnx")
    return directory


def square_image(width: int, height: int, cells: list[tuple[int, int]], cell: int) -> np.ndarray:
    """A dark RGB image with a white square of side ``cell`` at each (column, row) of a ``cell`` grid."""
    image = np.full((height, width, 3), 20, np.uint8)
    for cx, cy in cells:
        image[cy * cell : (cy + 1) * cell, cx * cell : (cx + 1) * cell] = 255
    return image
