"""Small ONNX models with the exact signatures of the real ones, built with onnx.helper.

No Wav2Lip or GFPGAN weights ship in any package; these stand-ins exercise the real loading,
signature reading, batching, casting and pasting code with outputs a test can predict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8          # readable by every onnxruntime dhserve supports
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _io(name: str, dtype: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def wav2lip_invert(path: Path, batch: int | str = "N", half: bool = False,
                   names: tuple[str, str, str] = ("source", "target", "output"),
                   face_size: int = 96) -> Path:
    """wav2lip signature; output = 1 - target[:, 3:6] (the reference face inverted), plus
    0 * mean(source) so the audio input is really consumed."""
    source, target, output = names
    dtype = HALF if half else FLOAT
    nodes, inits = [], [_const("one", 1.0), _const("zero", 0.0),
                        helper.make_tensor("starts", TensorProto.INT64, [1], [3]),
                        helper.make_tensor("ends", TensorProto.INT64, [1], [6]),
                        helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    s, t = source, target
    if half:
        nodes += [helper.make_node("Cast", [source], ["s32"], to=FLOAT),
                  helper.make_node("Cast", [target], ["t32"], to=FLOAT)]
        s, t = "s32", "t32"
    nodes += [
        helper.make_node("Slice", [t, "starts", "ends", "axes"], ["ref"]),
        helper.make_node("Sub", ["one", "ref"], ["inv"]),
        helper.make_node("ReduceMean", [s], ["smean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Mul", ["smean", "zero"], ["szero"]),
        helper.make_node("Add", ["inv", "szero"], ["out32" if half else output]),
    ]
    if half:
        nodes.append(helper.make_node("Cast", ["out32"], [output], to=HALF))
    graph = helper.make_graph(
        nodes, "wav2lip_invert",
        [_io(source, dtype, [batch, 1, 80, 16]), _io(target, dtype, [batch, 6, face_size,
                                                                      face_size])],
        [_io(output, dtype, [batch, 3, face_size, face_size])], inits)
    return _save(graph, path)


def wav2lip_loudness(path: Path, batch: int | str = "N") -> Path:
    """wav2lip signature; every output pixel = (mean(mel chunk) + 4) / 8: a grey that shows
    which mel chunk each frame was given."""
    nodes = [
        helper.make_node("ReduceMean", ["source"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Add", ["m", "four"], ["m4"]),
        helper.make_node("Div", ["m4", "eight"], ["grey"]),
        helper.make_node("Slice", ["target", "starts", "ends", "axes"], ["ref"]),
        helper.make_node("Mul", ["ref", "zero"], ["blank"]),
        helper.make_node("Add", ["blank", "grey"], ["output"]),
    ]
    inits = [_const("four", 4.0), _const("eight", 8.0), _const("zero", 0.0),
             helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
             helper.make_tensor("ends", TensorProto.INT64, [1], [3]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    graph = helper.make_graph(
        nodes, "wav2lip_loudness",
        [_io("source", FLOAT, [batch, 1, 80, 16]), _io("target", FLOAT, [batch, 6, 96, 96])],
        [_io("output", FLOAT, [batch, 3, 96, 96])], inits)
    return _save(graph, path)


def restore_invert(path: Path, batch: int | str = 1, size: int = 512) -> Path:
    """GFPGAN signature (1x3x512x512 in [-1, 1], same out); output = -input, i.e. the
    crop's colours inverted."""
    graph = helper.make_graph(
        [helper.make_node("Neg", ["input"], ["output"])], "restore_invert",
        [_io("input", FLOAT, [batch, 3, size, size])],
        [_io("output", FLOAT, [batch, 3, size, size])])
    return _save(graph, path)


def corrupt(path: Path, source: Path | None = None) -> Path:
    """A damaged model: the first half of a real one, or random bytes."""
    path = Path(path)
    data = (Path(source).read_bytes()[: Path(source).stat().st_size // 2] if source
            else np.random.default_rng(0).bytes(4096))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def wav2lip_sized(path: Path, width: int = 32, batch: int | str = "N", seed: int = 0) -> Path:
    """wav2lip signature with Wav2Lip-like work per frame: an encoder of stride-2 3x3 convs
    down to 6x6, the audio folded in, and a decoder of resize + 3x3 convs back to 96x96.
    `width` scales the channel counts (work grows with its square); for benchmarks."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(x, cin, cout, stride, name, act=True):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}_w"),
                      numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_c"],
                                      pads=[1, 1, 1, 1], strides=[stride, stride]))
        if not act:
            return f"{name}_c"
        nodes.append(helper.make_node("Relu", [f"{name}_c"], [name]))
        return name

    chans = [width, width * 2, width * 4, width * 8, width * 16]    # 96→48→24→12→6
    x, cin = "target", 6
    x = conv(x, cin, chans[0], 1, "e0")
    x = conv(x, chans[0], chans[0], 1, "e0b")
    skips = [(x, chans[0])]
    for i, c in enumerate(chans[1:], 1):
        x = conv(x, chans[i - 1], c, 2, f"e{i}")
        x = conv(x, c, c, 1, f"e{i}b")
        skips.append((x, c))
    # audio: (N,1,80,16) → strided convs → global mean → added to the bottleneck
    a = conv("source", 1, chans[1], 2, "a0")
    a = conv(a, chans[1], chans[3], 2, "a1")
    a = conv(a, chans[3], chans[4], 2, "a2")
    nodes.append(helper.make_node("ReduceMean", [a], ["a_mean"], axes=[2, 3], keepdims=1))
    nodes.append(helper.make_node("Add", [x, "a_mean"], ["z"]))
    x, cin = "z", chans[4]
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scale2"))
    for i in range(3, -1, -1):
        nodes.append(helper.make_node("Resize", [x, "", "scale2"], [f"u{i}"], mode="nearest"))
        x = conv(f"u{i}", cin, chans[i], 1, f"d{i}")
        skip, c = skips[i]
        nodes.append(helper.make_node("Add", [x, skip], [f"s{i}"]))
        x = conv(f"s{i}", chans[i], chans[i], 1, f"d{i}b")
        cin = chans[i]
    x = conv(x, cin, 3, 1, "out", act=False)
    nodes.append(helper.make_node("Sigmoid", [x], ["output"]))
    graph = helper.make_graph(
        nodes, "wav2lip_sized",
        [_io("source", FLOAT, [batch, 1, 80, 16]), _io("target", FLOAT, [batch, 6, 96, 96])],
        [_io("output", FLOAT, [batch, 3, 96, 96])], inits)
    return _save(graph, path)


def conv_macs(path: Path) -> float:
    """Multiply-accumulates per batch item of the Conv nodes in a model built above."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.output)}
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    total = 0.0
    for node in model.graph.node:
        if node.op_type == "Conv":
            cout, cin, kh, kw = weights[node.input[1]]
            _, _, h, w = shapes[node.output[0]]
            total += cout * cin * kh * kw * h * w
    return total
