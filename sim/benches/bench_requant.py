"""cocotb bench: Requantizer on Verilator vs golden.requantize (bias added first).

Parameters: acc_width, lanes, tag_width (0 = no tag), n, seed, idle, stall, bias_width
(default the model file's 32 bits; narrower biases are clipped to it, extremes kept).
"""

import cocotb
import numpy as np

from fpgacnn.hw.program import BIAS_BITS
from fpgacnn.hw.requant import lane_layout
from fpgacnn.sim.benches._tb import StreamTB
from fpgacnn.sim.cocotb_runner import bench_params, pack, pack_fields, unpack
from fpgacnn.sim.vectors import requant_expected, requant_inputs


def encode(acc, bias, m, s, relu, *, acc_width, lanes, tag_width, bias_width=BIAS_BITS):
    """Packed ``i_stream`` beats: ``lanes`` values each, ReLU and tag per beat."""
    layout = lane_layout(acc_width, bias_width)
    lane_w = layout.size
    beats = []
    for b in range(len(acc) // lanes):
        values = [pack_fields(layout, {"acc": acc[j], "bias": bias[j], "m": m[j], "s": s[j]})
                  for j in range(b * lanes, (b + 1) * lanes)]
        word = pack(values, lane_w) | (int(relu[b * lanes]) << (lane_w * lanes))
        if tag_width:
            word |= (b % (1 << tag_width)) << (lane_w * lanes + 1)
        beats.append(word)
    return beats


@cocotb.test()
async def values_match_golden(dut):
    p = bench_params()
    aw, lanes, tag_w, n = p["acc_width"], p["lanes"], p["tag_width"], p["n"]
    bw = p.get("bias_width", BIAS_BITS)
    acc, bias, m, s, relu = requant_inputs(n * lanes, aw, p["seed"])
    lo, hi = -(1 << (bw - 1)), (1 << (bw - 1)) - 1
    bias = np.clip(bias, lo, hi)
    relu = np.repeat(relu[::lanes], lanes)        # ReLU is per beat: lane 0's flag
    beats = encode(acc, bias, m, s, relu, acc_width=aw, lanes=lanes, tag_width=tag_w,
                   bias_width=bw)
    tb = StreamTB(dut, seed=p["seed"], idle=p["idle"], stall=p["stall"])
    await tb.start()
    raw = await tb.run(beats, n)
    got = np.array([unpack(v, 8, lanes) for v in raw], dtype=np.int64).reshape(-1)
    np.testing.assert_array_equal(got, requant_expected(acc, bias, m, s, relu),
                                  err_msg=f"seed={p['seed']}")
    if tag_w:
        tags = [v >> (8 * lanes) for v in raw]
        assert tags == [b % (1 << tag_w) for b in range(n)]
