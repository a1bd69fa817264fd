"""cocotb bench: Requantizer on Verilator vs golden.requantize (bias added first).

Parameters: acc_width, lanes, tag_width (0 = no tag), n, seed, idle, stall.
"""

import cocotb
import numpy as np

from fpgacnn.hw.requant import lane_layout
from fpgacnn.sim.benches._tb import StreamTB
from fpgacnn.sim.cocotb_runner import bench_params, pack, unpack
from fpgacnn.sw import golden


def make_inputs(n, acc_width, rng):
    lo, hi = -(1 << (acc_width - 1)), (1 << (acc_width - 1)) - 1
    acc = rng.integers(lo, hi + 1, n, dtype=np.int64)
    bias = rng.integers(-(1 << 31), 1 << 31, n, dtype=np.int64)
    m = rng.integers(0, 1 << golden.M_BITS, n, dtype=np.int64)
    s = rng.integers(1, 64, n, dtype=np.int64)
    k = n // 2   # realistic scale, so many results fall inside int8
    acc[:k] = rng.integers(-(1 << 18), 1 << 18, k)
    bias[:k] = rng.integers(-1000, 1000, k)
    s[:k] = rng.integers(20, 34, k)
    m_max = (1 << golden.M_BITS) - 1
    edges = [(hi, (1 << 31) - 1, m_max, 1), (lo, -(1 << 31), m_max, 1),
             (lo, -(1 << 31), m_max, 63), (5, 0, 1, 1), (-5, 0, 1, 1),
             (255, 0, 1, 1), (-257, 0, 1, 1), (0, 0, 0, 9), (-1, 0, 1, 63)]
    for row, (a, b, mm, ss) in enumerate(edges):
        acc[row], bias[row], m[row], s[row] = a, b, mm, ss
    return acc, bias, m, s


@cocotb.test()
async def values_match_golden(dut):
    p = bench_params()
    rng = np.random.default_rng(p["seed"])
    aw, lanes, tag_w, n = p["acc_width"], p["lanes"], p["tag_width"], p["n"]
    acc, bias, m, s = make_inputs(n * lanes, aw, rng)
    relu = rng.integers(0, 2, n)
    lane_w = sum(f.width for _, f in lane_layout(aw))
    beats = []
    for b in range(n):
        lanes_bits = []
        for j in range(b * lanes, (b + 1) * lanes):
            lanes_bits.append((int(acc[j]) & ((1 << aw) - 1)) |
                              ((int(bias[j]) & 0xFFFFFFFF) << aw) |
                              (int(m[j]) << (aw + 32)) | (int(s[j]) << (aw + 32 + golden.M_BITS)))
        word = pack(lanes_bits, lane_w) | (int(relu[b]) << (lane_w * lanes))
        if tag_w:
            word |= (b % (1 << tag_w)) << (lane_w * lanes + 1)
        beats.append(word)
    tb = StreamTB(dut, seed=p["seed"], idle=p["idle"], stall=p["stall"])
    await tb.start()
    raw = await tb.run(beats, n)
    got = np.array([unpack(v, 8, lanes) for v in raw], dtype=np.int64).reshape(-1)
    total = acc + bias
    want = np.where(np.repeat(relu, lanes).astype(bool),
                    golden.requantize(total, m, s, relu=True),
                    golden.requantize(total, m, s, relu=False))
    np.testing.assert_array_equal(got, want, err_msg=f"seed={p['seed']}")
    if tag_w:
        tags = [v >> (8 * lanes) for v in raw]
        assert tags == [b % (1 << tag_w) for b in range(n)]
