"""Test vectors for the compute units, shared by the Amaranth-simulator tests
(``tests/test_*.py``) and the cocotb benches (``fpgacnn.sim.benches``).

Each unit gets its inputs (random, with the edge values that break arithmetic: -128, 127,
saturation, all-zero) and the stream its golden model says it must produce, in the
unit's own stream order. One copy here, so that both simulators check the same thing.
"""

import itertools
import random

import numpy as np

from ..sw import golden

__all__ = ["INT8_EDGES", "product_pairs", "kblock_stream", "from_kblock_stream",
           "systolic_tiles", "systolic_results", "requant_inputs", "requant_expected"]

#: int8 operands at and next to the ends of the range and around zero.
INT8_EDGES = [-128, -127, -1, 0, 1, 2, 126, 127]


def product_pairs(n_random, seed):
    """Operand pairs ``(a, b)`` for a multiplier: every pair of :data:`INT8_EDGES`
    (64, so an even ``n_random`` keeps the count even for two-lane multipliers), then
    ``n_random`` random int8 pairs."""
    rng = random.Random(seed)
    pairs = list(itertools.product(INT8_EDGES, INT8_EDGES))
    pairs += [(rng.randrange(-128, 128), rng.randrange(-128, 128)) for _ in range(n_random)]
    return pairs


# ---- MaxPool (and the datapath writer): for y: for kb: for x: for r -----------------------

def kblock_stream(x, block):
    """(C, H, W) → 1-D in the order for y: for kb: for x: for r (C padded to whole blocks)."""
    c, h, w = x.shape
    kbs = -(-c // block)
    padded = np.zeros((kbs * block, h, w), dtype=x.dtype)
    padded[:c] = x
    # [kb, r, y, x] → [y, kb, x, r]
    return padded.reshape(kbs, block, h, w).transpose(2, 0, 3, 1).reshape(-1)


def from_kblock_stream(s, channels, block, h, w):
    """Inverse of :func:`kblock_stream`: a (whole blocks × H × W) map, padding included."""
    kbs = -(-channels // block)
    return np.asarray(s).reshape(h, kbs, w, block).transpose(1, 3, 0, 2) \
        .reshape(kbs * block, h, w)


# ---- SystolicArray -----------------------------------------------------------------------

def systolic_tiles(rows, cols, depths, seed):
    """Random (W[rows×D], X[D×cols]) int8 tiles, one per depth, with edge-value tiles mixed
    in: the largest sums, the most negative sums, and zero weights."""
    rng = np.random.default_rng(seed)
    tiles = []
    for n, d in enumerate(depths):
        kind = n % 5
        if kind == 1:      # the largest sums: (-128)*(-128) everywhere
            w, x = np.full((rows, d), -128), np.full((d, cols), -128)
        elif kind == 2:    # the most negative sums
            w, x = np.full((rows, d), -128), np.full((d, cols), 127)
        elif kind == 3:
            w, x = np.zeros((rows, d)), rng.integers(-128, 128, (d, cols))
        else:
            w, x = rng.integers(-128, 128, (rows, d)), rng.integers(-128, 128, (d, cols))
        tiles.append((w.astype(np.int8), x.astype(np.int8)))
    return tiles


def systolic_results(tiles):
    """The array's result stream: per tile ``for col: for row`` of (acc, row, col, last)."""
    out = []
    for w, x in tiles:
        acc = w.astype(np.int64) @ x.astype(np.int64)
        rows, cols = acc.shape
        for c in range(cols):
            for r in range(rows):
                out.append((acc[r, c], r, c, int(r == rows - 1 and c == cols - 1)))
    return np.array(out, dtype=np.int64).reshape(-1, 4)


# ---- Requantizer -------------------------------------------------------------------------

def requant_inputs(n, acc_width, seed):
    """``n`` (acc, bias, m, s, relu) rows: random, extremes, and rounding/saturation edges.

    Biases span int32 (a Requantizer with a narrower ``bias_width`` needs them clipped).
    """
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (acc_width - 1)), (1 << (acc_width - 1)) - 1
    b_lo, b_hi = -(1 << (golden.BIAS_BITS - 1)), (1 << (golden.BIAS_BITS - 1)) - 1
    acc = rng.integers(lo, hi + 1, n, dtype=np.int64)
    bias = rng.integers(b_lo, b_hi + 1, n, dtype=np.int64)
    m = rng.integers(0, 1 << golden.M_BITS, n, dtype=np.int64)
    s = rng.integers(golden.S_MIN, golden.S_MAX + 1, n, dtype=np.int64)
    relu = rng.integers(0, 2, n, dtype=np.int64)
    # Realistic scale: small bias, s near log2(acc*m) so results land inside int8 often.
    k = n // 3
    bias[:k] = rng.integers(-1000, 1000, k)
    acc[:k] = rng.integers(-(1 << 18), 1 << 18, k)
    s[:k] = rng.integers(20, 34, k)
    m_max = (1 << golden.M_BITS) - 1
    edges = [
        (hi, b_hi, m_max, 1, 0),              # largest product, smallest shift
        (lo, b_lo, m_max, 1, 0),              # most negative
        (lo, b_lo, m_max, 63, 0),
        (hi, b_hi, m_max, 63, 1),
        (5, 0, 1, 1, 0), (-5, 0, 1, 1, 0),            # exact halves round up: 3, -2
        (255, 0, 1, 1, 0), (256, 0, 1, 1, 0), (-257, 0, 1, 1, 0), (-258, 0, 1, 1, 0),
        (0, 0, 0, 5, 0), (0, 0, 0, 63, 1), (123, 4, 0, 7, 0),
        (-1, 0, 1, 63, 0), (-(1 << 20), 0, 1, 13, 1), (1 << 20, 0, 1, 13, 0),
    ]
    for row, e in enumerate(edges[:n]):
        acc[row], bias[row], m[row], s[row], relu[row] = e
    acc = np.clip(acc, lo, hi)
    return acc, bias, m, s, relu


def requant_expected(acc, bias, m, s, relu):
    """Golden Requantizer output: ``golden.requantize(acc + bias)``, ReLU per value."""
    total = acc + bias
    plain = golden.requantize(total, m, s, relu=False)
    rect = golden.requantize(total, m, s, relu=True)
    return np.where(np.asarray(relu).astype(bool), rect, plain).astype(np.int8)
