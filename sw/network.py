"""Network descriptions: a small, explicit list of layers.

A :class:`Network` is an input shape and a list of :class:`Conv`, :class:`FC`,
:class:`ReLU` and :class:`MaxPool` layers. The golden model, the quantised parameter
shapes, the layer program and the memory plan all derive from it.

Integer semantics: every :class:`Conv`/:class:`FC` produces exact accumulators that are
requantised to int8 with its own per-channel ``M``/``S`` (:func:`golden.requantize`);
a :class:`ReLU` right after it is fused into that requantisation; a :class:`MaxPool`
works on the int8 result.
"""

from dataclasses import dataclass, field

import numpy as np

from . import golden

__all__ = [
    "Conv", "FC", "ReLU", "MaxPool", "Network", "Stage", "QuantParams",
    "lenet5", "seeds_cifar_example", "run_network",
]


@dataclass(frozen=True)
class Conv:
    """``out_channels`` filters of ``kernel×kernel``, stride, zero padding."""
    out_channels: int
    kernel: int
    stride: int = 1
    pad: int = 0


@dataclass(frozen=True)
class FC:
    """Fully connected layer over the flattened (C, H, W) input."""
    out_features: int


@dataclass(frozen=True)
class ReLU:
    """``max(x, 0)``; fused into the requantisation of the preceding Conv/FC."""


@dataclass(frozen=True)
class MaxPool:
    """Max over ``kernel×kernel`` windows at ``stride`` (no padding)."""
    kernel: int
    stride: int


@dataclass(frozen=True)
class Stage:
    """One compute layer as the accelerator runs it: Conv/FC → requant → ReLU? → pool?

    Shapes are (C, H, W). A fully connected layer is a convolution whose kernel covers
    the whole (flattened) input: ``in_shape=(D, 1, 1)``, ``kernel=1``.
    """
    index: int                  # position among compute layers (0, 1, ...)
    kind: str                   # "conv" or "fc"
    in_shape: tuple             # (C, H, W) as stored in memory
    out_channels: int
    kernel: int
    stride: int
    pad: int
    conv_shape: tuple           # (K, H2, W2) before pooling
    relu: bool
    pool: tuple | None          # (kernel, stride) or None
    out_shape: tuple            # (K, H3, W3) after pooling

    @property
    def reduction(self):
        """Products summed per output value: ``C * F * F``."""
        return self.in_shape[0] * self.kernel * self.kernel

    @property
    def macs(self):
        k, h, w = self.conv_shape
        return k * h * w * self.reduction

    @property
    def weight_shape(self):
        c = self.in_shape[0]
        if self.kind == "fc":
            return (self.out_channels, c)
        return (self.out_channels, c, self.kernel, self.kernel)

    @property
    def parameters(self):
        return int(np.prod(self.weight_shape)) + self.out_channels


@dataclass
class Network:
    """An input shape ``(C, H, W)`` and an explicit list of layers."""
    name: str
    input_shape: tuple
    layers: list = field(default_factory=list)

    def stages(self):
        """Group the layers into :class:`Stage` s and check every geometry.

        Raises
        ------
        golden.GeometryError
            For a layer whose output size is not an integer.
        ValueError
            For an order the integer semantics do not define (ReLU or pool first,
            two ReLUs, two pools in a row, …).
        """
        stages, shape = [], tuple(self.input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"{self.name}: input shape must be (C, H, W), not {shape}")
        pending = None
        for i, layer in enumerate(self.layers):
            where = f"{self.name} layer {i} ({layer!r})"
            if isinstance(layer, (Conv, FC)):
                if pending is not None:
                    stages.append(Stage(**pending))
                if isinstance(layer, Conv):
                    c, h, w = shape
                    try:
                        h2 = golden.conv_output_size(h, layer.kernel, layer.stride, layer.pad)
                        w2 = golden.conv_output_size(w, layer.kernel, layer.stride, layer.pad)
                    except golden.GeometryError as e:
                        raise golden.GeometryError(f"{where}: {e}") from None
                    pending = dict(index=len(stages), kind="conv", in_shape=shape,
                                   out_channels=layer.out_channels, kernel=layer.kernel,
                                   stride=layer.stride, pad=layer.pad,
                                   conv_shape=(layer.out_channels, h2, w2), relu=False,
                                   pool=None, out_shape=(layer.out_channels, h2, w2))
                else:
                    d = int(np.prod(shape))
                    pending = dict(index=len(stages), kind="fc", in_shape=(d, 1, 1),
                                   out_channels=layer.out_features, kernel=1, stride=1,
                                   pad=0, conv_shape=(layer.out_features, 1, 1), relu=False,
                                   pool=None, out_shape=(layer.out_features, 1, 1))
                shape = pending["out_shape"]
            elif isinstance(layer, ReLU):
                if pending is None or pending["relu"] or pending["pool"] is not None:
                    raise ValueError(f"{where}: ReLU must directly follow a Conv or FC")
                pending["relu"] = True
            elif isinstance(layer, MaxPool):
                if pending is None or pending["pool"] is not None:
                    raise ValueError(f"{where}: MaxPool must follow a Conv or FC (and ReLU)")
                c, h, w = shape
                try:
                    h3 = golden.pool_output_size(h, layer.kernel, layer.stride)
                    w3 = golden.pool_output_size(w, layer.kernel, layer.stride)
                except golden.GeometryError as e:
                    raise golden.GeometryError(f"{where}: {e}") from None
                pending["pool"] = (layer.kernel, layer.stride)
                shape = pending["out_shape"] = (c, h3, w3)
            else:
                raise TypeError(f"{where}: unknown layer type {type(layer).__name__}")
        if pending is None:
            raise ValueError(f"{self.name}: a network needs at least one Conv or FC layer")
        stages.append(Stage(**pending))
        return stages

    @property
    def output_shape(self):
        return self.stages()[-1].out_shape

    @property
    def parameters(self):
        return sum(s.parameters for s in self.stages())

    @property
    def macs(self):
        return sum(s.macs for s in self.stages())


def lenet5():
    """LeNet-5 with ReLU and max-pooling, on MNIST 28×28 zero-padded by 2 (32×32×1).

    C1 6@5×5 → pool 2/2 → C3 16@5×5 (all 6 maps) → pool 2/2 → C5 120 → F6 84 → 10 logits.
    61,706 parameters, 416,520 multiply-accumulates per image.
    """
    return Network("lenet5", (1, 28, 28), [
        Conv(6, 5, pad=2), ReLU(), MaxPool(2, 2),
        Conv(16, 5), ReLU(), MaxPool(2, 2),
        FC(120), ReLU(),
        FC(84), ReLU(),
        FC(10),
    ])


def seeds_cifar_example():
    """A second, non-LeNet network built around the seeds' first layer.

    32×32×3 → ten 5×5 filters, stride 1, pad 2 (32×32×10, 760 parameters) → ReLU →
    pool 2/2 → 16 filters 2×2 (15×15) → ReLU → pool 3/2 (7×7) → fc 10.
    (Pool 3/2 directly on the 32×32 map does not fit: (32 - 3)/2 + 1 = 15.5.)
    """
    return Network("seeds32x3", (3, 32, 32), [
        Conv(10, 5, stride=1, pad=2), ReLU(), MaxPool(2, 2),
        Conv(16, 2), ReLU(), MaxPool(3, 2),
        FC(10),
    ])


def seeds_layer():
    """The seeds' canonical layer alone: 32×32×3 → ten 5×5 filters, stride 1, pad 2.

    Its output is the whole 32×32×10 map (10,240 values, 760 parameters), no ReLU.
    """
    return Network("seeds-layer", (3, 32, 32), [Conv(10, 5, stride=1, pad=2)])


def cifar_small():
    """A CIFAR-10-class CNN: 3×32×32 → three [conv 3×3 pad 1, ReLU, pool 2/2] blocks of
    16, 32 and 64 filters → FC 32 → ReLU → FC 10 (56,714 parameters)."""
    return Network("cifar-small", (3, 32, 32), [
        Conv(16, 3, pad=1), ReLU(), MaxPool(2, 2),
        Conv(32, 3, pad=1), ReLU(), MaxPool(2, 2),
        Conv(64, 3, pad=1), ReLU(), MaxPool(2, 2),
        FC(32), ReLU(),
        FC(10),
    ])


def wide64():
    """A wide layer: 3×32×32 → 64 filters 3×3 pad 1 → ReLU → pool 2/2 (64×16×16 out)."""
    return Network("wide64", (3, 32, 32), [Conv(64, 3, pad=1), ReLU(), MaxPool(2, 2)])


@dataclass
class QuantParams:
    """Integer parameters of one stage: int8 weights, int32 bias, per-channel M and S.

    ``0 <= M < 2**M_BITS`` (8 bits) and ``S_MIN <= S <= S_MAX`` (:mod:`fpgacnn.hw.program`).
    The bias is stored as int32, but an accelerator adds it with its requantiser's
    ``bias_width`` bits (``AcceleratorConfig.bias_width``, as wide as the accumulator);
    :func:`.compiler.compile_network` rejects a bias that does not fit.
    """
    weight: np.ndarray
    bias: np.ndarray
    m: np.ndarray
    s: np.ndarray

    def check(self, stage):
        """Raise ValueError unless shapes and dtypes match ``stage``."""
        k = stage.out_channels
        for name, value, dtype, shape in (
                ("weight", self.weight, np.int8, stage.weight_shape),
                ("bias", self.bias, np.int32, (k,)),
                ("m", self.m, None, (k,)), ("s", self.s, None, (k,))):
            value = np.asarray(value)
            if value.shape != tuple(shape):
                raise ValueError(f"stage {stage.index} {name}: shape {value.shape}, "
                                 f"expected {tuple(shape)}")
            if dtype is not None and value.dtype != dtype:
                raise ValueError(f"stage {stage.index} {name}: dtype {value.dtype}, "
                                 f"expected {np.dtype(dtype)}")
            if dtype is None and value.dtype.kind not in "iu":
                raise ValueError(f"stage {stage.index} {name}: must be integers")
        if np.any(self.m < 0) or np.any(self.m >= 1 << golden.M_BITS):
            raise ValueError(f"stage {stage.index}: M outside [0, 2**{golden.M_BITS})")
        if np.any(self.s < golden.S_MIN) or np.any(self.s > golden.S_MAX):
            raise ValueError(f"stage {stage.index}: S outside [{golden.S_MIN}, {golden.S_MAX}]")


def run_stage(stage, params, x):
    """One stage on an int8 ``(C, H, W)`` map; returns the int8 output map."""
    if stage.kind == "conv":
        acc = golden.conv2d(x, params.weight, params.bias, stride=stage.stride, pad=stage.pad)
    else:
        acc = golden.fully_connected(x, params.weight, params.bias).reshape(-1, 1, 1)
    y = golden.requantize(acc, params.m, params.s, relu=stage.relu)
    if stage.pool is not None:
        y = golden.maxpool2d(y, *stage.pool)
    return y


def run_network(network, params, x, *, intermediates=False):
    """Run the integer network on one int8 input of ``network.input_shape``.

    Returns the int8 output of the last stage (the logits, shape ``(K,)`` for a
    network ending in FC), or with ``intermediates=True`` the list of every stage's
    output map.
    """
    x = np.asarray(x)
    if x.dtype != np.int8 or x.shape != tuple(network.input_shape):
        raise ValueError(f"{network.name} expects an int8 input of shape "
                         f"{tuple(network.input_shape)}, got {x.dtype} {x.shape}")
    stages = network.stages()
    if len(params) != len(stages):
        raise ValueError(f"{network.name} has {len(stages)} stages, got {len(params)} "
                         f"parameter sets")
    outputs = []
    for stage, p in zip(stages, params):
        p.check(stage)
        x = run_stage(stage, p, x)
        outputs.append(x)
    if intermediates:
        return outputs
    return x.reshape(-1) if x.shape[1:] == (1, 1) else x


def random_params(network, seed, *, m_range=None):
    """Seeded random int8 weights with requantisation that keeps activations lively.

    For every stage, ``S`` is chosen so that ``acc * M >> S`` maps the typical
    accumulator spread (≈ ``sqrt(reduction) * 64 * 40``) onto ±64, which exercises
    both saturation and the middle of the int8 range.
    """
    if m_range is None:
        m_range = (1 << (golden.M_BITS - 3), 1 << (golden.M_BITS - 1))
    rng = np.random.default_rng(seed)
    params = []
    for stage in network.stages():
        k = stage.out_channels
        w = rng.integers(-128, 128, stage.weight_shape, dtype=np.int8)
        bias = rng.integers(-(1 << 12), 1 << 12, k).astype(np.int32)
        m = rng.integers(*m_range, size=k).astype(np.int64)
        spread = np.sqrt(stage.reduction) * 64 * 40
        s = np.full(k, int(np.clip(np.round(np.log2(spread * m_range[1] / 64)),
                                   golden.S_MIN, golden.S_MAX)), dtype=np.int64)
        params.append(QuantParams(w, bias, m, s))
    return params
