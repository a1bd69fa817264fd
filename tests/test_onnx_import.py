"""ONNX import: every supported operator against ONNX Runtime, refusals, QDQ, the CLI.

Graphs are built with ``onnx.helper`` (no PyTorch needed); ONNX Runtime is the float
reference. Folded float graphs must equal the original to 1e-4 before quantisation.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fpgacnn.cli import main
from fpgacnn.sw import mnist, modelfile, onnx_import, quantize
from fpgacnn.sw.network import run_network
from fpgacnn.sw.onnx_graph import UnsupportedModel

DATA = Path(__file__).resolve().parent / "data"
TORCH_LENET = DATA / "lenet5_torch.onnx"


# -- graph building ------------------------------------------------------------------------

class G:
    """A small graph under construction: nodes, initialisers, one input, one output."""

    def __init__(self, seed, shape=(1, 12, 12)):
        self.rng = np.random.default_rng(seed)
        self.shape, self.nodes, self.inits, self.n = shape, [], [], 0
        self.x, self.c = "x", shape[0]          # current activation and its channels

    def const(self, value, *, as_node=False):
        self.n += 1
        name = f"c{self.n}"
        value = np.asarray(value)
        if value.dtype == np.float64:
            value = value.astype(np.float32)
        if as_node:
            self.nodes.append(helper.make_node(
                "Constant", [], [name], value=numpy_helper.from_array(value, name)))
        else:
            self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type, *consts, inputs=None, **attrs):
        """Append ``op_type`` on the current activation (then constants); returns output."""
        self.n += 1
        out = f"{op_type.lower()}{self.n}"
        ins = [self.x, *consts] if inputs is None else inputs
        self.nodes.append(helper.make_node(op_type, ins, [out], name=f"{op_type}_{self.n}",
                                           **attrs))
        self.x = out
        return out

    def conv(self, k, f, *, pad=0, stride=1, bias=True):
        w = self.const(self.rng.normal(0, 1 / np.sqrt(self.c * f * f), (k, self.c, f, f)))
        args = [w] + ([self.const(self.rng.normal(0, 0.1, k))] if bias else [])
        self.c = k
        return self.op("Conv", *args, kernel_shape=[f, f], pads=[pad] * 4,
                       strides=[stride] * 2)

    def model(self, opset=17, batch="N"):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *self.shape])
        y = helper.make_tensor_value_info(self.x, TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, "test", [x], [y], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = min(m.ir_version, 8)       # what onnxruntime reads everywhere
        return m

    def save(self, tmp_path, name="m.onnx", **kw):
        path = tmp_path / name
        onnx.save(self.model(**kw), path)
        return path


def pixels(seed, shape, n=6):
    """uint8 images with edge cases first: all black, all white, then random."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n,) + tuple(shape), dtype=np.uint8)
    x[0], x[1] = 0, 255
    return x


def assert_folded_equal(path, images, convention="unit"):
    """The folded float model equals ONNX Runtime to 1e-4 on ``images``."""
    folded, _ = onnx_import.read(path)
    quant = onnx_import.input_quant(folded, convention)
    ref = onnx_import.reference_logits(path, images, convention=convention)
    got = onnx_import.float_logits(folded, images, quant).reshape(len(images), -1)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    return folded, quant


def lenet_like(g, *, flatten="Flatten", trans_b=1):
    g.conv(4, 3, pad=1)
    g.op("Relu")
    g.op("MaxPool", kernel_shape=[2, 2], strides=[2, 2])
    g.conv(6, 3)
    g.op("Relu")
    d = 6 * 4 * 4
    if flatten == "Flatten":
        g.op("Flatten", axis=1)
    else:
        g.op("Reshape", g.const(np.array(flatten, np.int64)))
    w = g.rng.normal(0, 1 / np.sqrt(d), (5, d))
    g.op("Gemm", g.const(w if trans_b else w.T), g.const(g.rng.normal(0, 0.1, 5)),
         transB=trans_b)
    return g


# -- operators against ONNX Runtime --------------------------------------------------------

@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("flatten", ["Flatten", [0, -1], [-1, 96], [1, -1]])
def test_flatten_forms_and_gemm_layouts(tmp_path, seed, flatten):
    for trans_b in (0, 1):
        g = lenet_like(G(seed), flatten=flatten, trans_b=trans_b)
        batch = 1 if flatten == [1, -1] else "N"        # (1, -1) only holds for batch 1
        path = g.save(tmp_path, batch=batch)
        folded, _ = assert_folded_equal(path, pixels(seed, g.shape))
        assert [type(layer).__name__ for layer in folded.model.network.layers] == \
            ["Conv", "ReLU", "MaxPool", "Conv", "ReLU", "FC"]


def test_pytorch_view_shape_arithmetic(tmp_path):
    """x.view(x.size(0), -1) as the TorchScript exporter writes it."""
    g = G(3)
    g.conv(4, 3, pad=1)
    g.op("Relu")
    act = g.x
    shape = g.op("Shape", inputs=[act])
    index, axes, rest = (g.const(np.array(v, np.int64)) for v in (0, [0], [-1]))
    n = g.op("Gather", inputs=[shape, index])
    n1 = g.op("Unsqueeze", inputs=[n, axes])
    target = g.op("Concat", inputs=[n1, rest], axis=0)
    g.x = act
    g.op("Reshape", target)
    g.op("MatMul", g.const(g.rng.normal(0, 0.05, (4 * 144, 7))))
    g.op("Add", g.const(g.rng.normal(0, 0.1, 7)))         # MatMul + Add: bias folded
    path = g.save(tmp_path)
    folded, _ = assert_folded_equal(path, pixels(3, g.shape))
    assert len(folded.model.network.stages()) == 2


def test_batchnorm_dropout_identity_clip_softmax(tmp_path):
    g = G(4, (2, 10, 10))
    g.conv(5, 3, bias=False)
    g.op("BatchNormalization", *(g.const(v) for v in (
        g.rng.uniform(0.5, 2, 5), g.rng.normal(0, 0.3, 5), g.rng.normal(0, 0.3, 5),
        g.rng.uniform(0.2, 3, 5))), epsilon=1e-3)
    g.op("Clip", g.const(np.float32(0)), "")               # Clip(min 0): ReLU
    g.op("Dropout")
    g.op("Identity")
    g.op("MaxPool", kernel_shape=[2, 2], strides=[2, 2])
    g.op("Flatten")
    g.op("Gemm", g.const(g.rng.normal(0, 0.2, (3, 80))), transB=1)
    g.op("Mul", g.const(np.float32(2.0)))                   # scalar: folded into the Gemm
    logits = g.x
    path = g.save(tmp_path)
    assert_folded_equal(path, pixels(4, g.shape))
    g.op("Softmax", axis=1)
    path = g.save(tmp_path, "softmax.onnx")
    folded, _ = onnx_import.read(path)
    assert any("Softmax" in n for n in folded.notes) and logits != g.x
    x = pixels(5, g.shape)
    ref = onnx_import.reference_logits(path, x)
    got = onnx_import.float_logits(folded, x, onnx_import.input_quant(folded))
    e = np.exp(got - got.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), ref, atol=1e-5)


def test_relu_after_maxpool_is_moved_before_it(tmp_path):
    g = G(6)
    g.conv(3, 3)
    g.op("MaxPool", kernel_shape=[2, 2], strides=[2, 2])
    g.op("Relu")
    g.op("Flatten")
    g.op("Gemm", g.const(g.rng.normal(0, 0.2, (4, 75))), transB=1)
    folded, _ = assert_folded_equal(g.save(tmp_path), pixels(6, g.shape))
    assert [type(v).__name__ for v in folded.model.network.layers[:3]] == \
        ["Conv", "ReLU", "MaxPool"]
    assert any("moved" in n for n in folded.notes)


def normalised(seed, form, channels=3, pad=2):
    """A padded first convolution behind a torchvision-style Normalize."""
    g = G(seed, (channels, 8, 8))
    mean = g.rng.uniform(0.2, 0.7, channels).reshape(1, -1, 1, 1)
    std = g.rng.uniform(0.2, 0.5, channels).reshape(1, -1, 1, 1)
    if form == "sub-div":
        g.op("Sub", g.const(mean, as_node=True))
        g.op("Div", g.const(std))
    else:                                                  # x * (1/std) + (-mean/std)
        g.op("Mul", g.const(1 / std))
        g.op("Add", g.const(-mean / std, as_node=True))
    g.conv(4, 5, pad=pad)
    g.op("Relu")
    g.op("Flatten")
    features = 4 * (8 + 2 * pad - 4) ** 2
    g.op("Gemm", g.const(g.rng.normal(0, 0.1, (6, features))), transB=1)
    return g, mean.reshape(-1), std.reshape(-1)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("form", ["sub-div", "mul-add"])
def test_normalisation_folding_at_padded_borders(tmp_path, seed, form):
    """Float: equal to ONNX Runtime (all-black/white images stress the pad-2 border)."""
    g, mean, std = normalised(seed, form)
    folded, quant = assert_folded_equal(g.save(tmp_path), pixels(seed, g.shape))
    np.testing.assert_allclose(quant.mean, mean, rtol=1e-6)
    assert quant.convention == "unit" and quant.scale is not None


@pytest.mark.parametrize("seed", range(3))
def test_normalisation_int8_path(tmp_path, seed):
    """int8: real zero of the normalised input is code 0, so the hardware's zero padding
    is the graph's padding; the golden model tracks ONNX Runtime at the border."""
    g, mean, std = normalised(seed, "sub-div")
    path = g.save(tmp_path)
    calib = pixels(seed + 10, g.shape, n=64)
    network, params, meta = onnx_import.load(path, calib, board=None)
    quant = mnist.InputQuant.from_dict(meta["input"])
    # A pixel at the mean is code 0; the extremes use the int8 range without clipping.
    at_mean = np.round(np.asarray(mean) * 255).astype(np.uint8).reshape(-1, 1, 1)
    codes = quant.to_int8(np.broadcast_to(at_mean, g.shape).copy())
    assert np.all(np.abs(codes) <= 1)
    extremes = quant.to_int8(pixels(0, g.shape, n=2))
    assert extremes.min() >= -127 and extremes.max() <= 127 and np.abs(extremes).max() == 127
    x = pixels(seed + 20, g.shape, n=8)
    ref = onnx_import.reference_logits(path, x)
    xq = quant.to_int8(x)
    got = np.stack([run_network(network, params, xi) for xi in xq]).reshape(len(x), -1)
    np.testing.assert_array_equal(got, quantize.forward_int8_batch(network, params, xq))
    err = got * meta["activation_scales"][-1] - ref
    assert np.abs(err).max() < 0.05 * np.abs(ref).max(), (seed, np.abs(err).max())


def test_raw_pixel_convention(tmp_path):
    g = lenet_like(G(7))
    path = g.save(tmp_path)
    folded, quant = assert_folded_equal(path, pixels(7, g.shape), convention="raw")
    assert quant.lsb == 2.0 and quant.scale is None    # p >> 1 at 2 per LSB
    x = pixels(8, g.shape)
    np.testing.assert_array_equal(quant.to_int8(x), (x >> 1).astype(np.int8))


def test_input_quant_default_is_today():
    """No input-quantisation entry: exactly ``p >> 1``, and the shipped model has none."""
    p = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(mnist.image_to_int8(p), (p >> 1).astype(np.int8))
    np.testing.assert_array_equal(mnist.InputQuant.from_dict(None).to_int8(p),
                                  (p >> 1).astype(np.int8))
    assert "input" not in modelfile.load_default()[2]
    q = mnist.InputQuant("unit", (0.5, 0.25, 0.0), 0.01)
    assert mnist.InputQuant.from_dict(q.to_dict()) == q
    img = np.zeros((3, 2, 2), np.uint8)
    np.testing.assert_array_equal(q.to_int8(img)[:, 0, 0], [-50, -25, 0])
    for bad in ({"convention": "x", "mean": [], "scale": None},
                {"convention": "unit", "mean": [0.5], "scale": None}, {"mean": []}):
        with pytest.raises(ValueError):
            mnist.InputQuant.from_dict(bad)
