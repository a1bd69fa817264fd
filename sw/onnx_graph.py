"""Read an ONNX graph into the accelerator's layer model, folding what the hardware needs
no operator for.

:func:`fold` walks the graph from its one input to its one output and maps it onto a
:class:`.network.Network` (Conv/FC + ReLU + MaxPool stages) with float weights
(:class:`.train.FloatModel`):

* Conv (group 1, square kernel, equal pads, dilation 1), Gemm (either ``transB``),
  MatMul (+ Add: the bias), Relu, Clip with min 0 and no max, MaxPool (no pads,
  ``ceil_mode`` 0), Flatten and Reshape to ``(N, -1)`` — also after a
  ``Transpose(0, 2, 3, 1)`` as tf2onnx writes a Keras ``Flatten`` (the next layer's
  weights are reordered from (H, W, C) to (C, H, W));
* per-channel affine operators — BatchNormalization, and Mul/Div/Add/Sub by constants —
  are folded into the Conv/Gemm before them; at the start of the graph (a torchvision
  ``Normalize``) they become the per-input-channel mean the host subtracts
  (:class:`.mnist.InputQuant`) and a ``1/std`` folded into the first layer's weights
  per input channel, so real zero stays exactly zero and padding stays exact;
* Dropout and Identity are dropped, and so is a Softmax/LogSoftmax at the output
  (argmax is unchanged); a Relu after a MaxPool is moved before it (they commute);
* ``QuantizeLinear``/``DequantizeLinear`` (QDQ graphs): symmetric int8 weights keep their
  own scales (:attr:`FoldedModel.weight_scales`), a non-zero weight zero point is
  refused; activation Q/DQ pairs are dropped, the activations being re-calibrated;
* constants come from initialisers or ``Constant`` nodes, and constant subgraphs (shape
  arithmetic of PyTorch's ``view``) are evaluated here.

Anything else raises :class:`UnsupportedModel` with one line naming the node, its
operator and what is supported.
"""

from dataclasses import dataclass, field

import numpy as np

from . import network as nets
from .train import FloatModel

__all__ = ["UnsupportedModel", "FoldedModel", "fold", "SUPPORTED", "OPSETS"]

#: ONNX (ai.onnx) opsets read, as PyTorch and tf2onnx write them.
OPSETS = range(11, 22)
#: One line for refusals and ``--help``.
SUPPORTED = ("Conv (group 1, square kernel, equal pads), Gemm, MatMul+Add, Relu, Clip(min 0), "
             "MaxPool (no pads, ceil_mode 0), Flatten, Reshape(N,-1), BatchNormalization, "
             "Dropout, Identity, Mul/Div/Add/Sub by per-channel constants, "
             "Transpose(0,2,3,1) before Flatten, QuantizeLinear/DequantizeLinear, "
             "Softmax/LogSoftmax at the output")


class UnsupportedModel(ValueError):
    """An ONNX model the accelerator cannot run; the message is one line saying why."""


@dataclass
class FoldedModel:
    """The result of :func:`fold`.

    Attributes
    ----------
    model : train.FloatModel
        Float weights (float64) on :attr:`model.network <train.FloatModel.network>`; its
        input is the convention's value minus :attr:`mean` per channel.
    mean : tuple of float
        Per-input-channel offset of a folded normalisation (zeros without one).
    weight_scales : list of ndarray or None
        Per stage, a pre-quantised model's per-output-channel weight scales.
    input_name, output_name : str
    batch : int or None
        The graph input's fixed batch size, None when it is symbolic.
    opset : int
    notes : list of str
        What was dropped or rewritten, for the user.
    """
    model: FloatModel
    mean: tuple
    weight_scales: list
    input_name: str
    output_name: str
    batch: int | None
    opset: int
    notes: list = field(default_factory=list)


def _node_name(node, index):
    return node.name or (node.output[0] if node.output else f"#{index}")


def _attrs(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Refuse(Exception):
    """Raised inside a node handler; :func:`fold` adds the node's name and operator."""


# -- constants ------------------------------------------------------------------------------

def _along(scale, x, axis):
    """A per-axis (1-D) quantisation scale or zero point shaped to broadcast against ``x``."""
    scale = np.asarray(scale, np.float64)
    if scale.ndim == 1 and x.ndim > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
    return scale


def _dequantize(x, scale, zp, axis):
    if zp is not None and np.any(np.asarray(zp) != 0) and x.dtype == np.int8:
        raise _Refuse(f"weight zero point {np.unique(zp).tolist()} is not 0: the hardware's "
                      f"weights are symmetric int8; quantise weights symmetrically "
                      f"(onnxruntime: WeightSymmetric=True, Brevitas: Int8WeightPerTensorFloat)")
    if x.dtype != np.int8 and x.dtype != np.int32:
        raise _Refuse(f"weights of type {x.dtype} (zero point {np.unique(zp).tolist()}) are "
                      f"not symmetric int8; quantise weights as QInt8 with zero point 0")
    scale = _along(scale, x, axis)
    zp = 0 if zp is None else _along(zp, x, axis)
    return (x.astype(np.float64) - zp) * scale, np.broadcast_to(scale, x.shape)


def _quantize(x, scale, zp, axis):
    dtype = np.uint8 if zp is None else np.asarray(zp).dtype     # ONNX's default: uint8
    x = np.asarray(x, np.float64)
    zp = 0 if zp is None else _along(zp, x, axis)
    info = np.iinfo(dtype)
    q = np.rint(x / _along(scale, x, axis)) + zp
    return np.clip(q, info.min, info.max).astype(dtype)


def _slice(data, starts, ends, axes=None, steps=None):
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * data.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        index[int(a)] = slice(int(s), int(e), int(st))
    return data[tuple(index)]


def _reshape(data, shape):
    shape = [data.shape[i] if v == 0 else int(v) for i, v in enumerate(shape)]
    return data.reshape(shape)


def _const_value(node, a, args, qinfo):
    """Value of a node whose inputs are all constants (or of a ``Constant`` node)."""
    from onnx import helper, numpy_helper
    op = node.op_type
    x = args[0] if args else None

    def opt(i):
        return args[i] if len(args) > i else None
    if op == "Constant":
        key, value = next(iter(a.items()))
        if key in ("value", "sparse_value"):
            return numpy_helper.to_array(value)
        return np.asarray(value, np.float32 if "float" in key else np.int64)
    simple = {
        "Identity": lambda: x, "Neg": lambda: -x, "Sqrt": lambda: np.sqrt(x),
        "Reciprocal": lambda: 1 / x,
        "Add": lambda: x + args[1], "Sub": lambda: x - args[1],
        "Mul": lambda: x * args[1], "Div": lambda: x / args[1],
        "Cast": lambda: x.astype(helper.tensor_dtype_to_np_dtype(a["to"])),
        "Reshape": lambda: _reshape(x, args[1]),
        "Transpose": lambda: np.transpose(x, a.get("perm")),
        "Concat": lambda: np.concatenate([np.atleast_1d(v) for v in args], a["axis"]),
        "Gather": lambda: np.take(x, args[1], axis=a.get("axis", 0)),
        "Shape": lambda: np.asarray(x.shape, np.int64),
        "Unsqueeze": lambda: np.expand_dims(x, tuple(a["axes"] if "axes" in a else args[1])),
        "Squeeze": lambda: np.squeeze(x, tuple(a.get("axes", opt(1) if opt(1) is not None
                                                     else [i for i, d in enumerate(x.shape)
                                                           if d == 1]))),
        "Slice": lambda: _slice(x, *args[1:]),
        "Clip": lambda: np.clip(x, a.get("min", opt(1)), a.get("max", opt(2))),
        "QuantizeLinear": lambda: _quantize(x, args[1], opt(2), a.get("axis", 1)),
    }
    if op == "DequantizeLinear":
        value, scale = _dequantize(x, args[1], opt(2), a.get("axis", 1))
        if x.dtype == np.int8:
            qinfo[node.output[0]] = scale
        return value
    if op not in simple:
        raise _Refuse(f"constant operator not supported; supported: {SUPPORTED}")
    return np.asarray(simple[op]())


# -- the chain of layers --------------------------------------------------------------------

#: What may follow a Transpose to NHWC before the flattening (ReLU commutes with it).
_AFTER_HWC = ("Flatten", "Reshape", "Relu", "Identity", "Dropout")


class _Chain:
    """The walk from the graph input: the current activation, its shape, the layers."""

    def __init__(self, name, shape, notes):
        self.current, self.shape, self.notes = name, tuple(shape), notes
        self.shapes = {name: (1,) + self.shape}
        self.in_channels = shape[0]
        self.in_a = np.ones(shape[0])       # input affine x*a + b, per channel
        self.in_b = np.zeros(shape[0])
        self.layers, self.weights, self.biases, self.wscales = [], [], [], []
        self.open = False                   # last layer is a Conv/FC nothing followed yet
        self.ended = False                  # a Softmax/LogSoftmax ended the chain
        self.hwc = None                     # (C, H, W) while the map is transposed to HWC
        self.hwc_flat = None                # (C, H, W) of an HWC-flattened input of the FC

    def activation(self, node, consts):
        """The one non-constant input of ``node``; it must be the current activation."""
        live = [i for i in node.input if i and i not in consts]
        if len(live) != 1:
            raise _Refuse(f"combines {len(live)} activations ({', '.join(live)}): fpgacnn "
                          f"runs a plain chain of layers (no branches or skip connections)")
        if live[0] != self.current:
            raise _Refuse(f"reads '{live[0]}', not the output of the layer before it: "
                          f"fpgacnn runs a plain chain of layers (no branches)")
        if self.ended:
            raise _Refuse("follows the output Softmax; only a Softmax/LogSoftmax may end "
                          "the graph")
        if self.hwc is not None and node.op_type not in _AFTER_HWC:
            raise _Refuse("follows Transpose(0, 2, 3, 1); only Flatten/Reshape may")
        return live[0]

    def advance(self, node, shape=None):
        self.current = node.output[0]
        if shape is not None:
            self.shape = tuple(shape)
        self.shapes[self.current] = (1,) + self.shape

    def channel_vector(self, c):
        """A constant broadcast against the current activation, as one value per channel."""
        c = np.asarray(c, np.float64)
        full = (1,) + self.shape
        if c.size == 1:
            return np.full(self.shape[0], float(c.reshape(())))
        try:
            b = np.broadcast_to(c, np.broadcast_shapes(c.shape, full))
        except ValueError:
            b = None
        if b is None or b.shape != full:
            raise _Refuse(f"constant of shape {c.shape} does not broadcast per channel over "
                          f"the activation {full}")
        b = b.reshape(self.shape[0], -1)
        if not np.all(b == b[:, :1]):
            raise _Refuse(f"constant of shape {c.shape} varies within a channel; only "
                          f"per-channel constants fold into a Conv/Gemm")
        return b[:, 0].copy()

    def affine(self, a, b):
        """Fold ``y = x*a + b`` (per channel) into the layer before it or the input."""
        if not self.layers:
            if len(a) != self.in_channels:
                if np.ptp(a) or np.ptp(b):
                    raise _Refuse("a normalisation after Flatten must be the same for every "
                                  "input feature; normalise before flattening")
                a, b = np.full(self.in_channels, a[0]), np.full(self.in_channels, b[0])
            self.in_a, self.in_b = self.in_a * a, self.in_b * a + b
            return
        if not self.open:
            raise _Refuse(f"per-channel arithmetic after {type(self.layers[-1]).__name__} "
                          f"cannot be folded; only right after a Conv/Gemm (or at the input)")
        w = self.weights[-1]
        self.weights[-1] = w * a.reshape((-1,) + (1,) * (w.ndim - 1))
        self.biases[-1] = self.biases[-1] * a + b
        if self.wscales[-1] is not None:
            self.wscales[-1] = self.wscales[-1] * np.where(a != 0, np.abs(a), 1.0)

    def compute(self, layer, weight, bias, wscale, shape):
        """Append a Conv/FC with float weights; fold the input normalisation into the first."""
        if not self.layers:
            a = self.in_a
            if np.any(a == 0):
                raise _Refuse("the input normalisation multiplies a channel by 0")
            per_in = a if weight.ndim == 4 else np.repeat(a, weight.shape[1] // len(a))
            weight = weight * per_in.reshape((1, -1) + (1,) * (weight.ndim - 2))
            if np.any(a != 1) and wscale is not None:
                self.notes.append("the first layer's pre-quantised weight scales were "
                                  "replaced by ours: the input normalisation is folded in")
                wscale = None
        self.layers.append(layer)
        self.weights.append(weight)
        self.biases.append(np.zeros(weight.shape[0]) if bias is None else bias)
        self.wscales.append(wscale)
        self.open = True
        return shape


def _weight_scale(name, qinfo, k, transform=None):
    """Per-output-channel scale of a DequantizeLinear'd weight, or None."""
    if name not in qinfo:
        return None
    s = qinfo[name] if transform is None else transform(qinfo[name])
    s = s.reshape(k, -1)
    if not np.all(s == s[:, :1]):
        raise _Refuse("weight scales vary within an output channel; only per-tensor or "
                      "per-output-channel weight scales are supported")
    return s[:, 0].astype(np.float64)


def _conv(ch, node, a, consts, qinfo):
    ch.activation(node, consts)
    if len(ch.shape) != 3:
        raise _Refuse("a convolution after Flatten/Reshape is not supported")
    if ch.hwc:
        raise _Refuse("a convolution on an NHWC-transposed map; only Flatten may follow")
    w = np.asarray(consts.get(node.input[1]) if len(node.input) > 1 else None, np.float64)
    if w.ndim != 4:
        raise _Refuse("needs a constant 4-D weight (2-D convolution)")
    k, c, fh, fw = w.shape
    pads, strides = list(a.get("pads", [0] * 4)), list(a.get("strides", [1, 1]))
    problems = [
        (a.get("group", 1) != 1, f"group = {a.get('group')} (grouped/depthwise)"),
        (fh != fw, f"kernel {fh}x{fw} is not square"),
        (any(d != 1 for d in a.get("dilations", [1, 1])), f"dilations {a.get('dilations')}"),
        (len(set(pads)) > 1, f"pads {pads} are not equal on all sides"),
        (strides[0] != strides[1], f"strides {strides} differ"),
        (a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"),
         f"auto_pad {a.get('auto_pad')}"),
        (c != ch.shape[0], f"weight has {c} input channels, the activation {ch.shape[0]}"),
    ]
    for bad, what in problems:
        if bad:
            raise _Refuse(f"{what}; supported: Conv with group 1, square kernel, equal pads, "
                          f"dilation 1")
    layer = nets.Conv(k, fh, stride=strides[0], pad=pads[0])
    from . import golden
    try:
        h2 = golden.conv_output_size(ch.shape[1], fh, strides[0], pads[0])
        w2 = golden.conv_output_size(ch.shape[2], fw, strides[0], pads[0])
    except golden.GeometryError as e:
        raise _Refuse(str(e)) from None
    bias = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else None
    bias = None if bias is None else np.asarray(bias, np.float64).reshape(k)
    ch.advance(node, ch.compute(layer, w, bias, _weight_scale(node.input[1], qinfo, k),
                                (k, h2, w2)))


def _fc(ch, node, w, bias, wscale):
    if len(ch.shape) != 1:
        raise _Refuse(f"needs a flattened input, got an activation of shape {ch.shape}; "
                      f"add Flatten or Reshape(N, -1) before it")
    if w.ndim != 2 or w.shape[1] != ch.shape[0]:
        raise _Refuse(f"weight of shape {w.shape} does not take {ch.shape[0]} features")
    k = w.shape[0]
    if ch.hwc_flat is not None:     # features in (H, W, C) order: reorder to ours, (C, H, W)
        c, h, wd = ch.hwc_flat
        w = w.reshape(k, h, wd, c).transpose(0, 3, 1, 2).reshape(k, -1)
        ch.hwc_flat = None
    ch.advance(node, ch.compute(nets.FC(k), w, bias, wscale, (k,)))


def _gemm(ch, node, a, consts, qinfo):
    ch.activation(node, consts)
    if a.get("transA", 0):
        raise _Refuse("transA = 1 (the activation transposed) is not supported")
    b = np.asarray(consts[node.input[1]], np.float64)
    trans = a.get("transB", 0)
    w = (b if trans else b.T) * a.get("alpha", 1.0)
    k = w.shape[0]
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = np.asarray(consts[node.input[2]], np.float64) * a.get("beta", 1.0)
        if c.size not in (1, k):
            raise _Refuse(f"bias C of shape {c.shape} is not one value per output")
        bias = np.broadcast_to(c.reshape(-1), (k,)).copy()
    scale = _weight_scale(node.input[1], qinfo, k, None if trans else np.transpose)
    if scale is not None and a.get("alpha", 1.0) != 1.0:
        scale = scale * abs(a["alpha"])
    _fc(ch, node, w, bias, scale)


def _matmul(ch, node, a, consts, qinfo):
    ch.activation(node, consts)
    if node.input[0] != ch.current:
        raise _Refuse("multiplies a constant by the activation; use activation @ weight")
    b = np.asarray(consts[node.input[1]], np.float64)
    if b.ndim != 2:
        raise _Refuse(f"weight of shape {b.shape} is not a matrix")
    _fc(ch, node, b.T, None, _weight_scale(node.input[1], qinfo, b.shape[1], np.transpose))


def _arith(ch, node, a, consts, qinfo):
    ch.activation(node, consts)
    const_first = node.input[0] in consts
    c = ch.channel_vector(consts[node.input[0] if const_first else node.input[1]])
    one, zero = np.ones_like(c), np.zeros_like(c)
    op = node.op_type
    if op == "Div" and const_first:
        raise _Refuse("divides a constant by the activation")
    mul, add = {"Mul": (c, zero), "Div": (1 / c, zero), "Add": (one, c),
                "Sub": ((-one, c) if const_first else (one, -c))}[op]
    ch.affine(mul, add)
    ch.advance(node)


def _batchnorm(ch, node, a, consts, qinfo):
    ch.activation(node, consts)
    if a.get("training_mode", 0):
        raise _Refuse("training_mode = 1; export the model in eval mode")
    gamma, beta, mean, var = (np.asarray(consts[i], np.float64).reshape(-1)
                              for i in node.input[1:5])
    if not len(gamma) == len(beta) == len(mean) == len(var) == ch.shape[0]:
        raise _Refuse(f"parameters of {len(gamma)} channels for an activation of "
                      f"{ch.shape[0]}")
    mul = gamma / np.sqrt(var + a.get("epsilon", 1e-5))
    ch.affine(mul, beta - mean * mul)
    ch.advance(node)


def _relu(ch, node, a, consts, qinfo):
    ch.activation(node, consts)
    if node.op_type == "Clip":
        lo = a.get("min", consts.get(node.input[1]) if len(node.input) > 1 else None)
        hi = a.get("max", consts.get(node.input[2]) if len(node.input) > 2 else None)
        if lo is None or float(lo) != 0 or (hi is not None and np.isfinite(float(hi))):
            raise _Refuse(f"Clip(min={lo}, max={hi}) is not a ReLU; the hardware's ReLU is "
                          f"max(x, 0) with no upper bound (ReLU6 is not supported)")
    last = ch.layers[-1] if ch.layers else None
    if nets.ReLU() in ch.layers[-2:] and not ch.open:
        ch.notes.append(f"{node.op_type} '{node.name}' dropped: its input is already >= 0")
    elif isinstance(last, nets.MaxPool) and isinstance(ch.layers[-2], (nets.Conv, nets.FC)):
        ch.layers.insert(-1, nets.ReLU())       # relu(max(x)) == max(relu(x))
        ch.notes.append(f"{node.op_type} '{node.name}' after MaxPool moved before it "
                        f"(they commute)")
    elif not isinstance(last, (nets.Conv, nets.FC)):
        raise _Refuse("must follow a Conv/Gemm (optionally through MaxPool)")
    else:
        ch.layers.append(nets.ReLU())
    ch.open = False
    ch.advance(node)


def _maxpool(ch, node, a, consts, qinfo):
    ch.activation(node, consts)
    kernel, strides = list(a["kernel_shape"]), list(a.get("strides", [1, 1]))
    problems = [
        (len(ch.shape) != 3, "needs a (C, H, W) activation"),
        (kernel[0] != kernel[1], f"kernel {kernel} is not square"),
        (strides[0] != strides[1], f"strides {strides} differ"),
        (any(a.get("pads", [0])), f"pads {a.get('pads')}"),
        (a.get("ceil_mode", 0), "ceil_mode = 1"),
        (any(d != 1 for d in a.get("dilations", [1])), f"dilations {a.get('dilations')}"),
        (a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"),
         f"auto_pad {a.get('auto_pad')}"),
        (not ch.layers or isinstance(ch.layers[-1], nets.MaxPool),
         "must follow a Conv/Gemm (and Relu)"),
    ]
    for bad, what in problems:
        if bad:
            raise _Refuse(f"{what}; supported: MaxPool with a square kernel, equal strides, "
                          f"no pads, ceil_mode 0")
    from . import golden
    try:
        h = golden.pool_output_size(ch.shape[1], kernel[0], strides[0])
        w = golden.pool_output_size(ch.shape[2], kernel[0], strides[0])
    except golden.GeometryError as e:
        raise _Refuse(str(e)) from None
    ch.layers.append(nets.MaxPool(kernel[0], strides[0]))
    ch.open = False
    ch.advance(node, (ch.shape[0], h, w))


def _flatten_to(ch, node):
    if len(ch.shape) == 3 and ch.shape[1:] != (1, 1):
        ch.open = False             # per-channel folding no longer lines up with features
    ch.hwc_flat, ch.hwc = ch.hwc, None
    ch.advance(node, (int(np.prod(ch.shape)),))


def _transpose(ch, node, a, consts, qinfo):
    """Only NCHW → NHWC right before flattening, as tf2onnx writes a Keras ``Flatten``."""
    ch.activation(node, consts)
    if len(ch.shape) != 3 or list(a.get("perm", [])) != [0, 2, 3, 1] or ch.hwc:
        raise _Refuse(f"perm {list(a.get('perm', []))}; supported: Transpose(0, 2, 3, 1) "
                      f"directly before Flatten/Reshape (a Keras Flatten); convert Keras "
                      f"models with tf2onnx --inputs-as-nchw")
    ch.hwc = ch.shape
    ch.advance(node)
    ch.shapes[ch.current] = (1,) + ch.shape[1:] + ch.shape[:1]     # what Shape sees: NHWC


def _flatten(ch, node, a, consts, qinfo):
    ch.activation(node, consts)
    if a.get("axis", 1) != 1:
        raise _Refuse(f"axis = {a.get('axis')}; supported: Flatten(axis=1)")
    _flatten_to(ch, node)


def _reshape_node(ch, node, a, consts, qinfo):
    ch.activation(node, consts)
    target = np.asarray(consts[node.input[1]], np.int64).reshape(-1)
    try:            # what it does to a batch of one
        got = _reshape(np.zeros((1,) + ch.shape), target).shape
    except ValueError:
        got = None
    if got == (1,) + ch.shape:
        ch.advance(node)            # a no-op reshape
    elif got == (1, int(np.prod(ch.shape))):
        _flatten_to(ch, node)
    else:
        raise _Refuse(f"to {target.tolist()}; supported: Reshape to (N, -1) (flattening)")


def _passthrough(ch, node, a, consts, qinfo):
    ch.activation(node, consts)
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        note = ("activation QuantizeLinear/DequantizeLinear dropped: activation scales are "
                "calibrated for the hardware")
        if note not in ch.notes:
            ch.notes.append(note)
    ch.advance(node)


def _softmax(ch, node, a, consts, qinfo):
    ch.activation(node, consts)
    ch.notes.append(f"{node.op_type} at the output dropped: the board returns logits, "
                    f"whose argmax is the same")
    ch.advance(node)
    ch.ended = True


def _shape(ch, node, a, consts, qinfo):
    if node.input[0] not in ch.shapes:
        raise _Refuse(f"takes the shape of '{node.input[0]}', which is not a layer output")
    consts[node.output[0]] = np.asarray(ch.shapes[node.input[0]], np.int64)


_HANDLERS = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "Relu": _relu, "Clip": _relu,
    "MaxPool": _maxpool, "Flatten": _flatten, "Reshape": _reshape_node,
    "BatchNormalization": _batchnorm, "Add": _arith, "Sub": _arith, "Mul": _arith,
    "Div": _arith, "Dropout": _passthrough, "Identity": _passthrough,
    "QuantizeLinear": _passthrough, "DequantizeLinear": _passthrough,
    "Softmax": _softmax, "LogSoftmax": _softmax, "Shape": _shape, "Transpose": _transpose,
}


def _input(graph, consts):
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        raise UnsupportedModel(f"the graph has {len(inputs)} inputs "
                               f"({', '.join(i.name for i in inputs)}); fpgacnn needs one "
                               f"image input (N, C, H, W)")
    t = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if len(dims) != 4 or None in dims[1:] or min(dims[1:]) < 1:
        raise UnsupportedModel(
            f"input '{inputs[0].name}' has shape {['N' if d is None else d for d in dims]}; "
            f"fpgacnn needs a float (N, C, H, W) image input with fixed C, H, W (a Keras "
            f"NHWC model: convert with tf2onnx --inputs-as-nchw)")
    from onnx import TensorProto
    if t.elem_type not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
        raise UnsupportedModel(f"input '{inputs[0].name}' is not a float tensor "
                               f"(element type {t.elem_type}); export a float model")
    return inputs[0].name, dims[0], tuple(dims[1:])


def _opset(model):
    versions = {o.domain: o.version for o in model.opset_import}
    version = versions.get("", versions.get("ai.onnx"))
    if version not in OPSETS:
        raise UnsupportedModel(f"opset {version} is not supported; export with an opset in "
                               f"{OPSETS.start}..{OPSETS.stop - 1} (torch.onnx.export("
                               f"..., opset_version=17), tf2onnx --opset 17)")
    return version


def fold(model, *, name="onnx"):
    """Map an ONNX ``ModelProto`` onto a :class:`.network.Network` with float weights.

    Parameters
    ----------
    model : onnx.ModelProto
    name : str
        Name of the resulting network.

    Returns
    -------
    FoldedModel

    Raises
    ------
    UnsupportedModel
        One line naming the node, its operator and what is supported.
    """
    from onnx import numpy_helper
    opset = _opset(model)
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    input_name, batch, shape = _input(graph, consts)
    notes, qinfo = [], {}
    ch = _Chain(input_name, shape, notes)
    for index, node in enumerate(graph.node):
        where = f"node '{_node_name(node, index)}' ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedModel(f"{where}: operator domain '{node.domain}' is not "
                                   f"supported; supported: {SUPPORTED}")
        try:
            a = _attrs(node)
            if all(i in consts for i in node.input if i):
                value = _const_value(node, a, [consts[i] if i else None for i in node.input],
                                     qinfo)
                consts[node.output[0]] = value
            elif node.op_type in _HANDLERS:
                _HANDLERS[node.op_type](ch, node, a, consts, qinfo)
            else:
                raise _Refuse(f"operator not supported; supported: {SUPPORTED}")
        except _Refuse as e:
            raise UnsupportedModel(f"{where}: {e}") from None
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise UnsupportedModel(f"{where}: cannot read it ({type(e).__name__}: {e}); "
                                   f"supported: {SUPPORTED}") from None
    return _finish(graph, ch, name, input_name, batch, opset)


def _finish(graph, ch, name, input_name, batch, opset):
    outputs = [o.name for o in graph.output]
    if len(outputs) != 1 or outputs[0] != ch.current:
        raise UnsupportedModel(f"the graph's outputs {outputs} are not the end of its chain "
                               f"of layers ('{ch.current}'); fpgacnn needs one output")
    if not ch.layers:
        raise UnsupportedModel("the graph has no Conv/Gemm/MatMul layer")
    network = nets.Network(name, tuple(ch.shapes[input_name][1:]), ch.layers)
    try:
        network.stages()
    except (ValueError, TypeError) as e:
        raise UnsupportedModel(f"layer order not supported: {e}") from None
    if np.any(ch.in_a == 0):
        raise UnsupportedModel("the input normalisation multiplies a channel by 0")
    mean = -ch.in_b / ch.in_a
    model = FloatModel(network, ch.weights, ch.biases)
    return FoldedModel(model, tuple(float(m) for m in mean), ch.wscales, input_name,
                       outputs[0], batch, opset, ch.notes)
