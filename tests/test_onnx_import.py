"""ONNX import: every supported operator against ONNX Runtime, refusals, QDQ, the CLI.

Graphs are built with ``onnx.helper`` (no PyTorch needed); ONNX Runtime is the float
reference. Folded float graphs must equal the original to 1e-4 before quantisation.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from fpgacnn.sw import mnist, modelfile, onnx_import, quantize
from fpgacnn.sw.network import lenet5, run_network
from fpgacnn.sw.onnx_graph import UnsupportedModel
from onnx import TensorProto, helper, numpy_helper

from fpgacnn.cli import main

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
    g.op("Relu")                                            # redundant: dropped
    g.op("Flatten")
    g.op("Gemm", g.const(g.rng.normal(0, 0.2, (4, 75))), transB=1)
    folded, _ = assert_folded_equal(g.save(tmp_path), pixels(6, g.shape))
    assert [type(v).__name__ for v in folded.model.network.layers] == \
        ["Conv", "ReLU", "MaxPool", "FC"]
    assert any("moved" in n for n in folded.notes)
    assert any("already >= 0" in n for n in folded.notes)


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
    g, mean, _std = normalised(seed, form)
    _folded, quant = assert_folded_equal(g.save(tmp_path), pixels(seed, g.shape))
    np.testing.assert_allclose(quant.mean, mean, rtol=1e-6)
    assert quant.convention == "unit" and quant.scale is not None


@pytest.mark.parametrize("seed", range(3))
def test_normalisation_int8_path(tmp_path, seed):
    """int8: real zero of the normalised input is code 0, so the hardware's zero padding
    is the graph's padding; the golden model tracks ONNX Runtime at the border."""
    g, mean, _std = normalised(seed, "sub-div")
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
    _folded, quant = assert_folded_equal(path, pixels(7, g.shape), convention="raw")
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


# -- pre-quantised (QDQ) graphs ------------------------------------------------------------

def qdq_graph(seed, zero_point=0):
    """Conv and Gemm with int8 weights behind DequantizeLinear (per channel / per tensor),
    activations through uint8 QuantizeLinear/DequantizeLinear pairs as onnxruntime writes."""
    g = G(seed, (1, 10, 10))
    wq1 = g.rng.integers(-128, 128, (4, 1, 3, 3), dtype=np.int8)
    s1 = g.rng.uniform(0.002, 0.01, 4).astype(np.float32)
    w1 = g.op("DequantizeLinear", inputs=[g.const(wq1), g.const(s1),
                                          g.const(np.full(4, zero_point, np.int8))], axis=0)
    g.x = "x"
    a_scale, a_zp = g.const(np.float32(1 / 255)), g.const(np.uint8(0))    # exact for pixels
    g.op("QuantizeLinear", a_scale, a_zp)
    g.op("DequantizeLinear", a_scale, a_zp)
    g.op("Conv", w1, g.const(g.rng.normal(0, 0.1, 4)), kernel_shape=[3, 3])
    g.op("Relu")
    flat = g.op("Flatten")
    wq2 = g.rng.integers(-127, 128, (3, 256), dtype=np.int8)
    w2 = g.op("DequantizeLinear", inputs=[g.const(wq2), g.const(np.float32(0.004))])
    g.x = flat
    g.op("Gemm", w2, transB=1)
    return g, wq1, s1, wq2


def test_qdq_weights_keep_their_int8_codes_and_scales(tmp_path):
    g, wq1, s1, wq2 = qdq_graph(11)
    path = g.save(tmp_path)
    folded, _ = onnx_import.read(path)
    assert any("activation QuantizeLinear" in n for n in folded.notes)
    np.testing.assert_allclose(folded.weight_scales[0], s1, rtol=1e-7)
    np.testing.assert_allclose(folded.weight_scales[1], np.full(3, 0.004), rtol=1e-7)
    x = pixels(11, g.shape, n=32)
    network, params, meta = onnx_import.load(path, x, board=None)
    np.testing.assert_array_equal(params[0].weight, wq1)
    np.testing.assert_array_equal(params[1].weight, wq2)
    assert meta["weight_scales"] == ["onnx", "onnx"]
    assert onnx_import.evaluate(path, network, params, meta, x)["agreement"] >= 0.9


def test_qdq_nonzero_weight_zero_point_is_refused(tmp_path):
    g, *_ = qdq_graph(12, zero_point=3)
    with pytest.raises(UnsupportedModel, match=r"DequantizeLinear.*zero point \[3\] is not 0"):
        onnx_import.read(g.save(tmp_path))


class _Reader:
    def __init__(self, x):
        self.batches = iter([{"x": x[i:i + 1].astype(np.float32) / 255} for i in range(len(x))])

    def get_next(self):
        return next(self.batches, None)


@pytest.mark.parametrize("weight_type", ["QInt8", "QUInt8"])
def test_onnxruntime_quantize_static(tmp_path, weight_type):
    """A graph quantised by onnxruntime itself: symmetric int8 weights are imported with
    their scales; uint8 weights (zero point 128) are refused."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    g = lenet_like(G(13))
    src = g.save(tmp_path, "float.onnx")
    x = pixels(13, g.shape, n=32)
    reader = type("R", (_Reader, CalibrationDataReader), {})(x)
    dst = tmp_path / "qdq.onnx"
    quantize_static(src, dst, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=getattr(QuantType, weight_type),
                    extra_options={"WeightSymmetric": True})
    if weight_type == "QUInt8":
        with pytest.raises(UnsupportedModel, match="not symmetric int8|zero point"):
            onnx_import.read(dst)
        return
    network, params, meta = onnx_import.load(dst, x, board=None)
    assert meta["weight_scales"] == ["onnx"] * 3
    folded, _ = onnx_import.read(dst)
    for p, w, s in zip(params, folded.model.weights, folded.weight_scales):
        shape = (-1,) + (1,) * (w.ndim - 1)
        np.testing.assert_allclose(p.weight * s.reshape(shape), w, atol=1e-6)
    assert onnx_import.evaluate(dst, network, params, meta, x)["agreement"] >= 0.8


# -- refusals ------------------------------------------------------------------------------

def _sigmoid(g):
    g.conv(2, 3)
    g.op("Sigmoid")


def _grouped(g):
    g.shape = (2, 12, 12)
    g.op("Conv", g.const(g.rng.normal(0, 0.3, (4, 1, 3, 3))), kernel_shape=[3, 3], group=2)


def _asymmetric(g):
    g.op("Conv", g.const(g.rng.normal(0, 0.3, (4, 1, 3, 3))), kernel_shape=[3, 3],
         pads=[1, 1, 0, 0])


def _relu6(g):
    g.conv(2, 3)
    g.op("Clip", g.const(np.float32(0)), g.const(np.float32(6)))


def _branch(g):
    first = g.conv(2, 3)
    g.op("Add", inputs=[first, first])


def _ceil_pool(g):
    g.conv(2, 3)
    g.op("MaxPool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)


@pytest.mark.parametrize("build, node, match", [
    (_sigmoid, "Sigmoid", r"operator not supported; supported: Conv \(group 1"),
    (_grouped, "Conv", r"group = 2 \(grouped/depthwise\); supported: Conv with group 1"),
    (_asymmetric, "Conv", r"pads \[1, 1, 0, 0\] are not equal on all sides"),
    (_relu6, "Clip", r"Clip\(min=0.0, max=6.0\) is not a ReLU.*ReLU6"),
    (_branch, "Add", r"combines 2 activations .*\(no branches or skip connections\)"),
    (_ceil_pool, "MaxPool", r"ceil_mode = 1; supported: MaxPool"),
])
def test_refusals_name_node_operator_and_what_is_supported(tmp_path, build, node, match):
    g = G(20)
    build(g)
    with pytest.raises(UnsupportedModel, match=rf"^node '{node}_\d+' \({node}\): {match}") as e:
        onnx_import.read(g.save(tmp_path))
    assert "\n" not in str(e.value)


def test_refused_opset_and_input_shape(tmp_path):
    g = lenet_like(G(21))
    with pytest.raises(UnsupportedModel, match=r"opset 10 is not supported; export with an "
                                               r"opset in 11\.\.21"):
        onnx_import.read(g.save(tmp_path, opset=10))
    g.shape = (144,)
    g.nodes = [helper.make_node("Gemm", ["x", g.const(np.ones((3, 144)))], ["y"], transB=1)]
    g.x = "y"
    with pytest.raises(UnsupportedModel, match=r"input 'x' has shape \['N', 144\]; fpgacnn "
                                               r"needs a float \(N, C, H, W\)"):
        onnx_import.read(g.save(tmp_path, "flat.onnx"))


def too_big(tmp_path):
    """One Gemm over 36x36 = 1,296 features: more than the iCEBreaker's max reduction."""
    g = G(22, (1, 36, 36))
    g.op("Flatten")
    g.op("Gemm", g.const(g.rng.normal(0, 0.03, (10, 1296))), transB=1)
    return g.save(tmp_path, "big.onnx"), pixels(22, g.shape, n=16)


def test_model_too_big_for_the_board(tmp_path):
    path, x = too_big(tmp_path)
    with pytest.raises(onnx_import.ModelDoesNotFit,
                       match=r"does not fit the icebreaker board .*reduction C\*F\*F = 1296 "
                             r"exceeds max_reduction 1024"):
        onnx_import.load(path, x)
    network, _params, _ = onnx_import.load(path, x, board="ulx3s-85f")   # a bigger board
    assert network.stages()[0].reduction == 1296


# -- the commands --------------------------------------------------------------------------

def test_import_command_writes_model_and_json(tmp_path, capsys):
    g = lenet_like(G(30))
    path = g.save(tmp_path, "small.onnx")
    x, y = pixels(30, g.shape, n=48), np.arange(48) % 5
    np.save(tmp_path / "calib.npy", x[:32])
    np.save(tmp_path / "eval.npy", x[32:])
    np.save(tmp_path / "labels.npy", y[32:])
    out, report = tmp_path / "small.npz", tmp_path / "small.json"
    assert main(["import", str(path), "--calib", str(tmp_path / "calib.npy"), "--eval",
                 str(tmp_path / "eval.npy"), "--labels", str(tmp_path / "labels.npy"),
                 "--out", str(out), "--json", str(report)]) == 0
    text = capsys.readouterr().out
    assert "SQNR dB" in text and "conv 4@3x3/1 pad 1 relu pool 2/2" in text
    r = json.loads(report.read_text())
    assert set(r) == {"fits", "board", "layers", "parameters", "macs", "calib_images",
                      "accuracy_float", "accuracy_int8", "agreement"}
    assert r["fits"] is True and r["board"] == "icebreaker" and r["calib_images"] == 32
    shapes = [layer["output_shape"] for layer in r["layers"]]
    assert shapes == [[4, 6, 6], [6, 4, 4], [5, 1, 1]]
    network, _params, meta = modelfile.load(out)
    assert r["macs"] == network.macs and r["parameters"] == network.parameters
    assert meta["source"] == "small.onnx" and len(meta["sha256"]) == 64
    assert meta["input"] == {"convention": "unit", "mean": [], "scale": None}   # p >> 1
    assert 0 <= r["agreement"] <= 1 and r["accuracy_int8"] == meta["accuracy_int8"]


def test_import_command_refusals_write_nothing(tmp_path, capsys):
    path, x = too_big(tmp_path)
    np.save(tmp_path / "calib.npy", x)
    out, report = tmp_path / "big.npz", tmp_path / "big.json"
    args = ["import", str(path), "--calib", str(tmp_path / "calib.npy"), "--out", str(out)]
    assert main(args + ["--json", str(report)]) == 1
    err = capsys.readouterr().err
    assert "does not fit the icebreaker board" in err and "nothing written" in err
    assert not out.exists() and json.loads(report.read_text())["fits"] is False
    g = G(31)
    _sigmoid(g)
    args[1] = str(g.save(tmp_path, "sigmoid.onnx"))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: node 'Sigmoid_") and err.count("\n") == 1
    np.save(tmp_path / "calib.npy", np.zeros((4, 20, 20), np.uint8))   # wrong size
    args[1] = str(path)
    assert main(args) == 1
    assert "do not match the network input (1, 36, 36)" in capsys.readouterr().err
    assert not out.exists()


def test_infer_checks_images_before_sending(tmp_path, capsys):
    model = tmp_path / "m.npz"
    network, params, meta = onnx_import.load(lenet_like(G(32)).save(tmp_path),
                                             pixels(32, (1, 12, 12), n=8))
    modelfile.save(model, network, params, meta)
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    assert main(["infer", "--model", str(model), str(tmp_path / "x.npy")]) == 1
    out = capsys.readouterr()
    assert "do not match the network input (1, 12, 12)" in out.err
    assert "board" not in out.out                   # nothing was started or sent


def test_rgb_png_for_a_three_channel_model(tmp_path):
    from PIL import Image

    from fpgacnn.commands.infer import read_images
    rgb = np.random.default_rng(33).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    x, _ = read_images(tmp_path / "c.png", channels=3)
    np.testing.assert_array_equal(x, rgb.transpose(2, 0, 1)[None])
    g, *_ = normalised(33, "sub-div")
    network, _params, meta = onnx_import.load(g.save(tmp_path), pixels(33, g.shape, n=8),
                                             board=None)
    quant = mnist.InputQuant.from_dict(meta["input"])
    from fpgacnn.sw.driver import prepare_images
    np.testing.assert_array_equal(prepare_images(x, network.input_shape, quant),
                                  quant.to_int8(x))


# -- a genuine PyTorch export, end to end on the simulated board ---------------------------

def test_pytorch_lenet5_export_folds_exactly():
    """examples/pytorch_lenet5.py's export (Normalize, Conv+BN, Dropout, Flatten, Gemm)."""
    folded, quant = assert_folded_equal(TORCH_LENET, mnist.heldout()[0][:50])
    assert folded.model.network.layers == lenet5().layers
    np.testing.assert_allclose(quant.mean, [0.1307], rtol=1e-6)


def test_pytorch_lenet5_end_to_end_on_the_simulated_board(tmp_path, capsys):
    """ONNX → `fpgacnn import` → `fpgacnn infer` on the embedded simulated board: logits
    bit-exact with the golden model; int8 accuracy within 1 point of ONNX Runtime's."""
    (train_x, _), (held_x, held_y) = mnist.split()
    np.save(tmp_path / "calib.npy", train_x[:256])
    np.save(tmp_path / "held.npy", held_x)
    np.save(tmp_path / "labels.npy", held_y)
    np.save(tmp_path / "few.npy", held_x[:12])
    out, report = tmp_path / "lenet5_torch.npz", tmp_path / "import.json"
    assert main(["import", str(TORCH_LENET), "--calib", str(tmp_path / "calib.npy"),
                 "--eval", str(tmp_path / "held.npy"), "--labels", str(tmp_path / "labels.npy"),
                 "--out", str(out), "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["fits"] and r["macs"] == 416_520 and r["parameters"] == 61_706
    assert r["accuracy_float"] >= 0.95
    assert abs(r["accuracy_int8"] - r["accuracy_float"]) <= 0.01, r
    assert r["agreement"] >= 0.98
    network, params, meta = modelfile.load(out)
    quant = mnist.InputQuant.from_dict(meta["input"])
    assert quant.scale is not None and meta["calib_images"] == 256
    capsys.readouterr()
    assert main(["infer", "--model", str(out), "--json", str(tmp_path / "infer.json"),
                 str(tmp_path / "few.npy")]) == 0
    assert "simulated board" in capsys.readouterr().out
    board = json.loads((tmp_path / "infer.json").read_text())
    golden = np.stack([run_network(network, params, x) for x in quant.to_int8(
        held_x[:12].reshape(-1, 1, 28, 28))])
    np.testing.assert_array_equal(np.array(board["logits"]), golden)
    np.testing.assert_array_equal(board["classes"], golden.argmax(axis=1))
    assert board["model"] == str(out) and np.mean(golden.argmax(axis=1) == held_y[:12]) >= 0.9


def test_keras_flatten_via_tf2onnx(tmp_path):
    """tf2onnx's Keras Flatten: Transpose(0, 2, 3, 1) then Reshape(-1, D), Dense as
    MatMul + Add; the Dense weights are reordered from (H, W, C) to (C, H, W)."""
    g = G(40, (2, 9, 9))
    g.conv(3, 3, stride=2)
    g.op("Relu")
    g.op("Transpose", perm=[0, 2, 3, 1])
    g.op("Reshape", g.const(np.array([-1, 48], np.int64)))
    g.op("MatMul", g.const(g.rng.normal(0, 0.2, (48, 4))))
    g.op("Add", g.const(g.rng.normal(0, 0.1, 4)))
    assert_folded_equal(g.save(tmp_path), pixels(40, g.shape))
    g = G(41, (2, 9, 9))
    g.conv(3, 3)
    g.op("Transpose", perm=[0, 2, 3, 1])
    g.op("MaxPool", kernel_shape=[2, 2])
    with pytest.raises(UnsupportedModel, match=r"\(MaxPool\): follows Transpose\(0, 2, 3, 1\)"):
        onnx_import.read(g.save(tmp_path, "bad.onnx"))
    g = G(42, (2, 9, 9))
    g.op("Transpose", perm=[0, 3, 1, 2])
    with pytest.raises(UnsupportedModel, match=r"perm \[0, 3, 1, 2\]; supported: Transpose"
                                               r"\(0, 2, 3, 1\).*--inputs-as-nchw"):
        onnx_import.read(g.save(tmp_path, "nhwc.onnx"))


def test_qdq_float_weights_through_quantize_linear(tmp_path):
    """Float weights → QuantizeLinear → DequantizeLinear (QCDQ/fake-quant exports): the
    codes QuantizeLinear makes are the imported weights, saturation at ±127/-128 included."""
    g = G(14, (1, 6, 6))
    w = g.rng.normal(0, 0.5, (3, 1, 3, 3))
    w[0, 0, 0, 0], w[1, 0, 0, 0] = 9.0, -9.0               # saturate to 127 / -128
    s, zp = np.array([0.01, 0.02, 0.005], np.float32), np.zeros(3, np.int8)
    scale, zero = g.const(s), g.const(zp)
    q = g.op("QuantizeLinear", inputs=[g.const(w), scale, zero], axis=0)
    wd = g.op("DequantizeLinear", inputs=[q, scale, zero], axis=0)
    g.x = "x"
    g.op("Conv", wd, kernel_shape=[3, 3])
    g.op("Flatten")
    g.op("Gemm", g.const(g.rng.normal(0, 0.2, (2, 48))), transB=1)
    path = g.save(tmp_path)
    assert_folded_equal(path, pixels(14, g.shape))
    _, params, meta = onnx_import.load(path, pixels(15, g.shape, n=16), board=None)
    want = np.clip(np.rint(w.astype(np.float32) / s.reshape(-1, 1, 1, 1)), -128, 127)
    np.testing.assert_array_equal(params[0].weight, want.astype(np.int8))
    assert params[0].weight[0, 0, 0, 0] == 127 and params[0].weight[1, 0, 0, 0] == -128
    assert meta["weight_scales"] == ["onnx", "calibrated"]
