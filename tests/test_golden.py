"""The golden model against the seeds' worked examples and a naive loop of the definitions."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from fpgacnn.hw.config import CONFIGS
from fpgacnn.sw import golden
from fpgacnn.sw.network import Conv, Network, lenet5


# --- the seeds' own worked examples -------------------------------------------------------

def test_seeds_7x7_3x3_geometry():
    assert golden.conv_output_size(7, 3, stride=1) == 5
    assert golden.conv_output_size(7, 3, stride=2) == 3
    with pytest.raises(golden.GeometryError, match=r"\(7 - 3 \+ 2\*0\)/3 \+ 1 = 2.33333"):
        golden.conv_output_size(7, 3, stride=3)
    assert golden.conv_output_size(7, 3, stride=1, pad=1) == 7


def test_seeds_32x32x3_ten_5x5_filters():
    net = Network("seeds", (3, 32, 32), [Conv(10, 5, stride=1, pad=2)])
    stage, = net.stages()
    assert stage.out_shape == (10, 32, 32)
    assert stage.parameters == 760
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (3, 32, 32), dtype=np.int8)
    w = rng.integers(-128, 128, (10, 3, 5, 5), dtype=np.int8)
    assert golden.conv2d(x, w, stride=1, pad=2).shape == (10, 32, 32)


def test_seeds_maxpool_example():
    x = np.array([[[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]]], dtype=np.int8)
    assert_array_equal(golden.maxpool2d(x, 2, 2), [[[6, 8], [3, 4]]])


def test_geometry_errors_name_the_numbers():
    with pytest.raises(golden.GeometryError, match="kernel 9 does not fit in input 7"):
        golden.conv_output_size(7, 9)
    with pytest.raises(golden.GeometryError, match="stride must be an integer >= 1"):
        golden.conv_output_size(7, 3, stride=0)
    bad = Network("bad", (1, 7, 7), [Conv(4, 3, stride=3)])
    with pytest.raises(golden.GeometryError, match="bad layer 0"):
        bad.stages()
    x = np.zeros((1, 7, 7), np.int8)
    with pytest.raises(golden.GeometryError):
        golden.conv2d(x, np.zeros((1, 1, 3, 3), np.int8), stride=3)
    with pytest.raises(golden.GeometryError, match="15.5"):
        golden.maxpool2d(np.zeros((1, 32, 32), np.int8), 3, 2)


def test_wrong_dtypes_and_shapes_are_rejected():
    x = np.zeros((1, 5, 5), np.int8)
    with pytest.raises(TypeError, match="int8"):
        golden.conv2d(x.astype(np.int16), np.zeros((1, 1, 3, 3), np.int8))
    with pytest.raises(ValueError, match="does not match input channels"):
        golden.conv2d(x, np.zeros((1, 2, 3, 3), np.int8))
    with pytest.raises(ValueError, match="does not match 25 inputs"):
        golden.fully_connected(x, np.zeros((3, 24), np.int8))


# --- naive definitions ---------------------------------------------------------------------

def naive_conv2d(x, w, b, stride, pad):
    c, h, wd = x.shape
    k, _, f, _ = w.shape
    h2, w2 = (h - f + 2 * pad) // stride + 1, (wd - f + 2 * pad) // stride + 1
    out = np.zeros((k, h2, w2), dtype=object)
    for o in range(k):
        for oy in range(h2):
            for ox in range(w2):
                total = int(b[o])
                for ci in range(c):
                    for fy in range(f):
                        for fx in range(f):
                            iy, ix = oy * stride + fy - pad, ox * stride + fx - pad
                            if 0 <= iy < h and 0 <= ix < wd:
                                total += int(x[ci, iy, ix]) * int(w[o, ci, fy, fx])
                out[o, oy, ox] = total
    return out.astype(np.int64)


def random_geometry(rng):
    while True:
        c, k, f = rng.integers(1, 5), rng.integers(1, 5), rng.integers(1, 6)
        s, p = rng.integers(1, 4), rng.integers(0, 3)
        h, w = rng.integers(f, 12), rng.integers(f, 12)
        if (h - f + 2 * p) % s == 0 and (w - f + 2 * p) % s == 0:
            return int(c), int(k), int(f), int(s), int(p), int(h), int(w)


@pytest.mark.parametrize("seed", range(40))
def test_conv2d_matches_naive_loops(seed):
    rng = np.random.default_rng(seed)
    c, k, f, s, p, h, w = random_geometry(rng)
    x = rng.integers(-128, 128, (c, h, w), dtype=np.int8)
    if seed % 5 == 0:
        x[:] = -128             # extreme products (-128 * -128)
    wt = rng.integers(-128, 128, (k, c, f, f), dtype=np.int8)
    b = rng.integers(-2**31, 2**31, k, dtype=np.int64).astype(np.int32)
    assert_array_equal(golden.conv2d(x, wt, b, stride=s, pad=p), naive_conv2d(x, wt, b, s, p),
                       err_msg=f"seed {seed}: C{c} K{k} F{f} S{s} P{p} {h}x{w}")


@pytest.mark.parametrize("seed", range(20))
def test_fully_connected_matches_naive_loops(seed):
    rng = np.random.default_rng(seed)
    d, k = int(rng.integers(1, 500)), int(rng.integers(1, 40))
    x = rng.integers(-128, 128, d, dtype=np.int8)
    w = rng.integers(-128, 128, (k, d), dtype=np.int8)
    b = rng.integers(-2**31, 2**31, k, dtype=np.int64).astype(np.int32)
    expect = [int(b[o]) + sum(int(x[i]) * int(w[o, i]) for i in range(d)) for o in range(k)]
    assert_array_equal(golden.fully_connected(x, w, b), np.array(expect, dtype=np.int64),
                       err_msg=f"seed {seed}")


# --- requantisation ------------------------------------------------------------------------

def naive_requantize(acc, m, s, relu):
    y = (acc * m + (1 << (s - 1))) >> s       # Python ints: exact, arithmetic shift
    y = max(-128, min(127, y))
    return max(y, 0) if relu else y


def test_requantize_rounding_ties_and_saturation():
    # S=1, M=1: y = (acc + 1) >> 1 — ties round toward +inf (arithmetic shift after add).
    acc = np.array([[-3, -2, -1, 0, 1, 2, 3]])
    assert_array_equal(golden.requantize(acc, [1], [1], relu=False), [[-1, -1, 0, 0, 1, 1, 2]])
    # Saturation at both ends, huge accumulators, ReLU.
    acc = np.array([[-(2**33), -257, -256, -255, 254, 255, 256, 2**33]])
    assert_array_equal(golden.requantize(acc, [1], [1], relu=False),
                       [[-128, -128, -128, -127, 127, 127, 127, 127]])
    assert_array_equal(golden.requantize(acc, [1], [1], relu=True),
                       [[0, 0, 0, 0, 127, 127, 127, 127]])
    # M = 0 gives round(0) = 0; maximal M and S.
    assert_array_equal(golden.requantize(np.array([[5, -5]]), [0], [63], relu=False), [[0, 0]])
    big, m_max = np.array([[2**39 - 1, -(2**39)]]), 2**golden.M_BITS - 1
    assert_array_equal(golden.requantize(big, [m_max], [63], relu=False),
                       [[naive_requantize(2**39 - 1, m_max, 63, False),
                         naive_requantize(-(2**39), m_max, 63, False)]])


@pytest.mark.parametrize("seed", range(10))
def test_requantize_matches_python_ints(seed):
    rng = np.random.default_rng(seed)
    k = 8
    acc = rng.integers(-(2**34), 2**34, (k, 50))
    acc[:, :4] = [-(2**34), 2**34 - 1, 0, -1]          # edges in every channel
    m = rng.integers(0, 2**golden.M_BITS, k)
    m[0] = 2**golden.M_BITS - 1
    s = rng.integers(1, 64, k)
    for relu in (False, True):
        expect = [[naive_requantize(int(a), int(m[i]), int(s[i]), relu) for a in acc[i]]
                  for i in range(k)]
        assert_array_equal(golden.requantize(acc, m, s, relu=relu), np.array(expect, np.int8),
                           err_msg=f"seed {seed} relu {relu}")


def test_requantize_rejects_bad_parameters():
    acc = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="M must lie"):
        golden.requantize(acc, [0, 2**golden.M_BITS], [1, 1], relu=False)
    with pytest.raises(ValueError, match="S must lie"):
        golden.requantize(acc, [1, 1], [0, 1], relu=False)
    with pytest.raises(ValueError, match="one entry per channel"):
        golden.requantize(acc, [1], [1], relu=False)
    with pytest.raises(TypeError):
        golden.requantize(acc.astype(float), [1, 1], [1, 1], relu=False)


# --- LeNet-5 and accumulator widths -------------------------------------------------------

def test_lenet5_counts():
    net = lenet5()
    assert net.parameters == 61_706
    assert net.macs == 416_520
    assert [s.out_shape for s in net.stages()] == [
        (6, 14, 14), (16, 5, 5), (120, 1, 1), (84, 1, 1), (10, 1, 1)]
    # 28×28 zero-padded by 2 is LeNet-5's 32×32 input.
    first = net.stages()[0]
    assert first.in_shape[1] + 2 * first.pad == 32


@pytest.mark.parametrize("board", sorted(CONFIGS))
def test_worst_case_accumulators_fit_the_hardware(board):
    """Every LeNet-5 layer's extreme sum fits the array's accumulator width."""
    config = CONFIGS[board]
    lo, hi = -(1 << (config.acc_width - 1)), (1 << (config.acc_width - 1)) - 1
    for stage in lenet5().stages():
        d = stage.reduction
        # The extremes are reached by all-(-128) inputs and weights (+) or -128 × 127 (-).
        assert d * 128 * 128 <= hi, f"layer {stage.index}: D={d} overflows +"
        assert -d * 128 * 127 >= lo, f"layer {stage.index}: D={d} overflows -"
        assert golden.accumulator_bits(d) <= config.acc_width
        # Demonstrate with real tensors: the worst case computed by the golden model.
        x = np.full(stage.in_shape, -128, np.int8)
        w = np.full(stage.weight_shape, -128, np.int8)
        if stage.kind == "conv":
            acc = golden.conv2d(x, w, stride=stage.stride, pad=stage.pad)
        else:
            acc = golden.fully_connected(x, w)
        assert acc.max() == d * 16384 if stage.pad == 0 else acc.max() <= d * 16384
        assert acc.max() <= hi
    assert config.max_reduction >= max(s.reduction for s in lenet5().stages())
