"""Post-training int8 quantisation of a :class:`.train.FloatModel` to the golden model's format.

Per stage (see :mod:`.golden` for the integer semantics):

* weights: symmetric int8 per output channel, ``s_w[k] = max|W[k]| / 127``,
  ``Wq = round(W / s_w)`` in ``[-127, 127]``;
* activations: one scale per stage output, ``s_out = percentile(|y|) / 127`` over the
  float model's outputs (after ReLU, before pooling) on calibration images; the input
  scale is that of the model's :class:`.mnist.InputQuant` (by default ``p >> 1`` ≈
  ``p / 255`` at 2/255 per LSB, :data:`.mnist.INPUT_SCALE`), and each stage's input
  scale is the previous stage's output scale (max-pool keeps it);
* bias: ``round(b / (s_in · s_w[k]))`` as int32 (``BIAS_BITS``);
* requantisation: the real multiplier ``s_in · s_w[k] / s_out`` becomes an integer
  ``M`` (``0 <= M < 2**M_BITS``) and shift ``S`` (``S_MIN..S_MAX``, 1..63) with ``M``
  normalised into ``[2**(M_BITS-1), 2**M_BITS)`` — relative error at most
  ``2**-M_BITS`` (:func:`choose_multiplier`; the widths come from
  :mod:`fpgacnn.hw.program`, which the gateware imports too).

The last stage (the logits) has no ReLU; its scale is taken from ``max |logit|`` so the
winning class rarely saturates. Int8 accuracy is measured with
:func:`.network.run_network`, the single source of truth for integer inference.
"""

import numpy as np

from ..hw.program import ACT_BITS, BIAS_BITS, M_BITS, S_MAX, S_MIN, WEIGHT_BITS
from . import golden, mnist
from .network import QuantParams, run_network
from .train import im2col, pool_forward, single_blas_thread

__all__ = ["quantize_weights", "choose_multiplier", "activation_scales", "quantize",
           "predict_int8", "accuracy_int8", "forward_int8_batch", "calibrate",
           "stage_sqnr", "DEFAULT_PERCENTILES"]

#: Candidate activation percentiles tried by :func:`calibrate`.
DEFAULT_PERCENTILES = (99.9, 99.99, 99.999, 100.0)

#: Largest weight and activation magnitudes (127): symmetric, -128 is never aimed at.
_W_MAX = (1 << (WEIGHT_BITS - 1)) - 1
_A_MAX = (1 << (ACT_BITS - 1)) - 1
#: Bias range (int32).
_BIAS_MIN, _BIAS_MAX = -(1 << (BIAS_BITS - 1)), (1 << (BIAS_BITS - 1)) - 1


def quantize_weights(weight, scale=None):
    """Symmetric per-output-channel int8: returns ``(Wq int8, s_w float64 (K,))``.

    ``W ≈ Wq * s_w[k]``; an all-zero channel gets scale 1 (its weights stay 0). A given
    ``scale`` (K,) (a pre-quantised model's own weight scales) is used instead of
    ``max|W[k]| / 127``; its codes may then reach -128.
    """
    weight = np.asarray(weight, dtype=np.float64)
    k = weight.shape[0]
    lo = -_W_MAX
    if scale is None:
        amax = np.abs(weight.reshape(k, -1)).max(axis=1)
        scale = np.where(amax > 0, amax / _W_MAX, 1.0)
    else:
        scale, lo = np.asarray(scale, dtype=np.float64).reshape(k), -_W_MAX - 1
    shape = (k,) + (1,) * (weight.ndim - 1)
    q = np.clip(np.round(weight / scale.reshape(shape)), lo, _W_MAX).astype(np.int8)
    return q, scale


def choose_multiplier(real):
    """Integer ``(M, S)`` per channel with ``M / 2**S ≈ real``.

    ``S`` is picked so that ``M`` uses all ``M_BITS`` bits (``2**(M_BITS-1) <= M``), the most
    precision the requantiser offers; ``S`` is capped at ``S_MAX`` (63), so a
    multiplier below ``2**(M_BITS - 1 - S_MAX)`` loses precision, down to ``M = 0``.

    Returns
    -------
    m, s : ndarray of int64, shape (K,)

    Raises
    ------
    ValueError
        For a negative or non-finite multiplier, or one ``>= 2**(M_BITS-1)`` (``S < 1``).
    """
    real = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if not np.all(np.isfinite(real)) or np.any(real < 0):
        raise ValueError(f"requantisation multipliers must be finite and >= 0, got {real}")
    m = np.zeros(real.shape, dtype=np.int64)
    s = np.full(real.shape, S_MAX, dtype=np.int64)
    for i, r in enumerate(real):
        if r == 0:
            continue
        shift = (M_BITS - 1) - int(np.floor(np.log2(r)))
        shift = min(shift, S_MAX)
        mult = int(np.round(r * 2.0 ** shift))
        if mult >= 1 << M_BITS:          # rounding carried into bit M_BITS
            shift -= 1
            mult = int(np.round(r * 2.0 ** shift))
        if shift < S_MIN:
            raise ValueError(
                f"channel {i}: requantisation multiplier {r:g} needs S < {S_MIN}; "
                f"the output scale is far too small for this layer (raise the calibration "
                f"percentile)")
        m[i], s[i] = mult, shift
    return m, s


def _stage_outputs(model, images, batch_size=500, quant=None):
    """|output| of every stage (after ReLU, before pooling), flattened, on uint8 images."""
    x = mnist.image_to_float(np.asarray(images), quant)
    x = x.reshape((len(x),) + tuple(model.network.input_shape))
    outs = [[] for _ in model.weights]
    with single_blas_thread():          # float sums independent of the thread count
        for i in range(0, len(x), batch_size):
            _, ys = model.forward(x[i:i + batch_size], outputs=True)
            for out, y in zip(outs, ys):
                out.append(np.abs(y).ravel())
    return [np.concatenate(out) for out in outs]


def _scales(outputs, percentile):
    scales = []
    for i, y in enumerate(outputs):
        p = 100.0 if i == len(outputs) - 1 else percentile
        top = float(np.percentile(y, p))
        if top <= 0:
            raise ValueError(f"stage {i} outputs are all zero on the calibration images; "
                             f"the float model is dead and cannot be quantised")
        scales.append(top / _A_MAX)
    return scales


def activation_scales(model, images, percentile=99.99, *, quant=None):
    """Output scale of every stage from the float model on uint8 calibration images.

    Scale = ``percentile(|y|) / 127`` over all elements of the stage's output (after
    ReLU, before pooling); the last stage (logits) uses the maximum whatever
    ``percentile``. ``quant`` (:class:`.mnist.InputQuant`) turns pixels into the model's
    input (default ``p / 255``).
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must lie in (0, 100], not {percentile!r}")
    return _scales(_stage_outputs(model, images, quant=quant), percentile)


def quantize(model, images, percentile=99.99, *, scales=None, quant=None,
             weight_scales=None):
    """int8 :class:`.network.QuantParams` for every stage of ``model``.

    ``images`` (uint8) calibrate the activation scales unless ``scales`` gives them.
    ``quant`` (:class:`.mnist.InputQuant`) gives the input scale (default 2/255);
    ``weight_scales`` (one ``(K,)`` array or None per stage) keeps a pre-quantised
    model's own weight scales.
    """
    quant = quant or mnist.InputQuant()
    if scales is None:
        scales = activation_scales(model, images, percentile, quant=quant)
    if weight_scales is None:
        weight_scales = [None] * len(model.weights)
    params, s_in = [], quant.lsb
    for stage, w, b, s_out, s_given in zip(model.network.stages(), model.weights,
                                           model.biases, scales, weight_scales):
        wq, s_w = quantize_weights(w, s_given)
        acc_scale = s_in * s_w
        bias = np.round(np.asarray(b, dtype=np.float64) / acc_scale)
        if np.any(bias < _BIAS_MIN) or np.any(bias > _BIAS_MAX):
            raise ValueError(f"stage {stage.index}: bias {bias} does not fit in "
                             f"int{BIAS_BITS}")
        m, s = choose_multiplier(acc_scale / s_out)
        p = QuantParams(wq, bias.astype(np.int32), m, s)
        p.check(stage)
        params.append(p)
        s_in = s_out
    return params


def forward_int8_batch(network, params, x, *, batch_size=256):
    """Integer inference on a batch of int8 inputs ``(N, C, H, W)``, bit-exact to the golden
    model, for fast calibration.

    The matrix products run in floating point where that is exact: float32 while every
    partial sum stays below ``2**24`` (reduction ``< 1024``), float64 (``2**53``) beyond.
    Returns the int8 output of the last stage, flattened to ``(N, -1)``.
    """
    x = np.asarray(x)
    if x.dtype != np.int8 or x.shape[1:] != tuple(network.input_shape):
        raise ValueError(f"{network.name} expects int8 inputs of shape "
                         f"(N, {', '.join(map(str, network.input_shape))}), got "
                         f"{x.dtype} {x.shape}")
    stages = network.stages()
    for stage, p in zip(stages, params):
        p.check(stage)
    with single_blas_thread():
        return np.concatenate([_forward_int8(stages, params, x[i:i + batch_size])
                               for i in range(0, len(x), batch_size)])


def _forward_int8(stages, params, x, outputs=None):
    """``outputs``: a list to receive every stage's int8 output before pooling."""
    for stage, p in zip(stages, params):
        n = len(x)
        exact = np.float32 if stage.reduction * (1 << 14) < 1 << 24 else np.float64
        w = p.weight.reshape(stage.out_channels, -1).astype(exact)
        if stage.kind == "conv":
            cols, (h2, w2) = im2col(x.astype(exact), stage.kernel, stage.stride, stage.pad)
            acc = (cols @ w.T).reshape(n, h2 * w2, -1).transpose(2, 0, 1)   # (K, N, H2*W2)
            shape = (n, h2, w2)
        else:
            acc = w @ x.reshape(n, -1).astype(exact).T                     # (K, N)
            shape = (n, 1, 1)
        bias = p.bias.astype(np.int64).reshape((-1,) + (1,) * (acc.ndim - 1))
        y = golden.requantize(acc.astype(np.int64) + bias, p.m, p.s, relu=stage.relu)
        x = np.moveaxis(y.reshape((stage.out_channels,) + shape), 0, 1)
        if outputs is not None:
            outputs.append(x)
        if stage.pool is not None:
            x = pool_forward(x, *stage.pool)[0]
    return x.reshape(len(x), -1)


def _inputs(network, images, quant=None):
    x = mnist.image_to_int8(np.asarray(images), quant)
    return x.reshape((len(x),) + tuple(network.input_shape))


def predict_int8(network, params, images, *, progress=False, quant=None):
    """Class of each uint8 image by the golden model (:func:`.network.run_network`).

    Ties between equal int8 logits go to the lowest class index (``argmax``).
    """
    from tqdm import tqdm

    x = _inputs(network, images, quant)
    return np.array([int(np.argmax(run_network(network, params, xi)))
                     for xi in tqdm(x, desc="int8 golden model", unit="img", leave=False,
                                    disable=not progress)], dtype=np.int64)


def accuracy_int8(network, params, images, labels, *, progress=False, quant=None):
    """Fraction of ``images`` the golden integer model classifies as ``labels``."""
    return float(np.mean(predict_int8(network, params, images, progress=progress,
                                      quant=quant) == np.asarray(labels)))


def calibrate(model, images, labels, percentiles=DEFAULT_PERCENTILES, *, quant=None,
              weight_scales=None):
    """Quantise with each candidate percentile and keep the best on ``images``/``labels``
    (training data: the held-out set is never looked at).

    "Best" is the highest int8 accuracy; ties go to the smallest mean squared error
    between the dequantised int8 logits and the float logits. Without ``labels`` (a
    user's unlabelled calibration images) the smallest error alone decides. ``quant``
    and ``weight_scales`` are passed to :func:`quantize`.

    Returns ``(params, percentile, {percentile: accuracy, or -MSE without labels})``.
    """
    network = model.network
    x = _inputs(network, images, quant)
    with single_blas_thread():
        ref = model.forward(mnist.image_to_float(np.asarray(images), quant).reshape(x.shape))
    outputs = _stage_outputs(model, images, quant=quant)
    results, best = {}, None
    for pct in percentiles:
        scales = _scales(outputs, pct)
        params = quantize(model, images, scales=scales, quant=quant,
                          weight_scales=weight_scales)
        logits = forward_int8_batch(network, params, x)
        mse = float(np.mean((logits * scales[-1] - ref.reshape(len(x), -1)) ** 2))
        acc = (-mse if labels is None
               else float(np.mean(logits.argmax(axis=1) == np.asarray(labels))))
        results[pct] = acc
        if best is None or (acc, -mse) > best[2]:
            best = (params, pct, (acc, -mse))
    return best[0], best[1], results


def stage_sqnr(model, params, images, scales, *, quant=None):
    """Signal-to-quantisation-noise ratio (dB) of every stage's int8 output against the
    float model's, both after ReLU and before pooling, on uint8 ``images``.

    ``scales`` are the activation scales the parameters were made with. A stage whose
    float output is all zero reports ``-inf``; an exact one ``inf``.
    """
    network = model.network
    x = _inputs(network, images, quant)
    with single_blas_thread():
        _, ref = model.forward(mnist.image_to_float(np.asarray(images), quant)
                               .reshape(x.shape), outputs=True)
        got = []
        _forward_int8(network.stages(), params, x, got)
    sqnr = []
    for y, f, s in zip(got, ref, scales):
        f = f.astype(np.float64).reshape(y.shape)
        noise = float(np.sum((y * s - f) ** 2))
        signal = float(np.sum(f ** 2))
        sqnr.append(float("inf") if noise == 0 else
                    float("-inf") if signal == 0 else 10 * np.log10(signal / noise))
    return sqnr
