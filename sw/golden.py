"""Exact integer NumPy reference for every unit of the accelerator.

This module is the single source of truth for the arithmetic on the number formats, whose
widths and ranges are defined once in :mod:`fpgacnn.hw.program` (imported by the gateware
too) and re-exported here:

* activations and weights are int8, biases int32 (``BIAS_BITS``), accumulators exact
  (int64 here);
* requantisation per output channel is
  ``y = sat_int8((acc * M + (1 << (S - 1))) >> S)`` with an arithmetic shift,
  ``0 <= M < 2**M_BITS`` and ``S_MIN <= S <= S_MAX`` (1..63), optionally followed by ReLU;
* max-pooling works on int8 after requantisation;
* convolution is cross-correlation, output size ``(W - F + 2P) / S + 1``
  (:func:`conv_output_size`).

Every gateware test compares its integers with these functions using
``numpy.testing.assert_array_equal``.
"""

import numpy as np

from ..hw.program import (
    ACT_BITS,
    BIAS_BITS,
    M_BITS,
    S_BITS,
    S_MAX,
    S_MIN,
    WEIGHT_BITS,
    GeometryError,
    conv_output_size,
    pool_output_size,
)

__all__ = [
    "GeometryError", "conv_output_size", "pool_output_size",
    "conv2d", "fully_connected", "requantize", "maxpool2d", "saturate_int8",
    "M_BITS", "S_MIN", "S_MAX", "S_BITS", "ACT_BITS", "WEIGHT_BITS", "BIAS_BITS",
    "accumulator_bound", "accumulator_bits",
]


def _check_int(name, array, dtype):
    array = np.asarray(array)
    if array.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, not {array.dtype}")
    return array


def conv2d(x, weight, bias=None, *, stride=1, pad=0):
    """Cross-correlate a ``C×H×W`` int8 map with ``K×C×F×F`` int8 weights.

    Parameters
    ----------
    x : ndarray of int8, shape (C, H, W)
    weight : ndarray of int8, shape (K, C, F, F)
    bias : ndarray of int32, shape (K,), optional
        Added to every accumulator of its output channel.
    stride, pad : int
        Zero padding ``pad`` on every side.

    Returns
    -------
    ndarray of int64, shape (K, H2, W2)
        Exact accumulators (``bias + sum(x * w)``).
    """
    x = _check_int("x", x, np.int8)
    weight = _check_int("weight", weight, np.int8)
    if x.ndim != 3 or weight.ndim != 4:
        raise ValueError(f"expected x (C,H,W) and weight (K,C,F,F), got {x.shape} and "
                         f"{weight.shape}")
    c, h, w = x.shape
    k, wc, fh, fw = weight.shape
    if wc != c or fh != fw:
        raise ValueError(f"weight shape {weight.shape} does not match input channels {c} "
                         f"with a square kernel")
    h2 = conv_output_size(h, fh, stride, pad)
    w2 = conv_output_size(w, fw, stride, pad)
    xp = np.pad(x.astype(np.int64), ((0, 0), (pad, pad), (pad, pad)))
    # cols[c, fy, fx, oy, ox] = xp[c, oy*S + fy, ox*S + fx]
    cols = np.empty((c, fh, fw, h2, w2), dtype=np.int64)
    for fy in range(fh):
        for fx in range(fw):
            cols[:, fy, fx] = xp[:, fy:fy + stride * h2:stride, fx:fx + stride * w2:stride]
    acc = weight.reshape(k, -1).astype(np.int64) @ cols.reshape(c * fh * fw, h2 * w2)
    acc = acc.reshape(k, h2, w2)
    if bias is not None:
        bias = _check_int("bias", bias, np.int32)
        if bias.shape != (k,):
            raise ValueError(f"bias shape {bias.shape} does not match {k} output channels")
        acc += bias.astype(np.int64)[:, None, None]
    return acc


def fully_connected(x, weight, bias=None):
    """``weight @ x.ravel() + bias`` with int8 operands and exact int64 accumulators.

    ``x`` of any shape is flattened in C order (channel, row, column), the same order in
    which the accelerator stores a ``C×H×W`` map.
    """
    x = _check_int("x", x, np.int8).reshape(-1)
    weight = _check_int("weight", weight, np.int8)
    if weight.ndim != 2 or weight.shape[1] != x.size:
        raise ValueError(f"weight shape {weight.shape} does not match {x.size} inputs")
    acc = weight.astype(np.int64) @ x.astype(np.int64)
    if bias is not None:
        bias = _check_int("bias", bias, np.int32)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias shape {bias.shape} does not match {weight.shape[0]} outputs")
        acc += bias.astype(np.int64)
    return acc


def saturate_int8(v):
    """Clamp integers to ``[-128, 127]`` and return int8."""
    return np.clip(v, -128, 127).astype(np.int8)


def requantize(acc, m, s, *, relu):
    """Scale accumulators back to int8, per output channel (axis 0).

    ``y = sat_int8((acc * M + (1 << (S - 1))) >> S)``, then ``max(y, 0)`` if ``relu``.
    The shift is arithmetic (rounds half up, toward +inf, after the add).

    Parameters
    ----------
    acc : ndarray of int, shape (K, ...)
        Accumulators including the bias; ``|acc| < 2**40``.
    m : array of int, shape (K,)
        Multipliers, ``0 <= m < 2**M_BITS``.
    s : array of int, shape (K,)
        Shifts, ``S_MIN <= s <= S_MAX``.
    relu : bool
    """
    acc = np.asarray(acc)
    if acc.dtype.kind not in "iu":
        raise TypeError(f"accumulators must be integers, not {acc.dtype}")
    acc = acc.astype(np.int64)
    m = np.asarray(m).astype(np.int64)
    s = np.asarray(s).astype(np.int64)
    k = acc.shape[0]
    if m.shape != (k,) or s.shape != (k,):
        raise ValueError(f"M {m.shape} and S {s.shape} must have one entry per channel ({k})")
    if m.min(initial=0) < 0 or m.max(initial=0) >= 1 << M_BITS:
        raise ValueError(f"M must lie in [0, 2**{M_BITS}), got {m.min()}..{m.max()}")
    if s.min(initial=S_MIN) < S_MIN or s.max(initial=S_MIN) > S_MAX:
        raise ValueError(f"S must lie in [{S_MIN}, {S_MAX}], got {s.min()}..{s.max()}")
    if np.abs(acc).max(initial=0) >= 1 << 40:
        raise OverflowError("accumulator magnitude >= 2**40 would overflow int64 products")
    shape = (k,) + (1,) * (acc.ndim - 1)
    m, s = m.reshape(shape), s.reshape(shape)
    y = (acc * m + (np.int64(1) << (s - 1))) >> s
    y = saturate_int8(y)
    return np.maximum(y, np.int8(0)) if relu else y


def maxpool2d(x, kernel, stride):
    """Max over ``kernel×kernel`` windows at ``stride`` of a ``C×H×W`` int8 map (no padding)."""
    x = _check_int("x", x, np.int8)
    if x.ndim != 3:
        raise ValueError(f"expected a C×H×W map, got shape {x.shape}")
    c, h, w = x.shape
    h2 = pool_output_size(h, kernel, stride)
    w2 = pool_output_size(w, kernel, stride)
    out = np.full((c, h2, w2), -128, dtype=np.int8)
    for fy in range(kernel):
        for fx in range(kernel):
            out = np.maximum(out, x[:, fy:fy + stride * h2:stride, fx:fx + stride * w2:stride])
    return out


def accumulator_bound(reduction, *, bias_bits=0):
    """Largest ``|sum|`` of ``reduction`` int8×int8 products (plus a ``bias_bits`` bias).

    The extreme product is ``(-128) * (-128) = 2**14``
    (``2**(ACT_BITS - 1 + WEIGHT_BITS - 1)``).
    """
    bound = reduction * (1 << (ACT_BITS - 1 + WEIGHT_BITS - 1))
    if bias_bits:
        bound += 1 << (bias_bits - 1)
    return bound


def accumulator_bits(reduction, *, bias_bits=0):
    """Signed width that holds every sum of ``reduction`` products without overflow."""
    return int(accumulator_bound(reduction, bias_bits=bias_bits)).bit_length() + 1
