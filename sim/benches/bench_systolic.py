"""cocotb bench: SystolicArray on Verilator vs the golden matrix product.

Parameters (``bench_params()``): rows, cols, acc_width, seed, depths (tile depths),
idle, stall; for ``lenet_cycles`` also ``report`` (JSON path for the cycle counts) and
``wrap_rows`` (the configuration's: tiles that wrap rows).
"""

import json

import cocotb
import numpy as np

from fpgacnn.hw.program import array_tiles
from fpgacnn.hw.systolic import operands_layout, result_layout
from fpgacnn.sim.benches._tb import StreamTB
from fpgacnn.sim.cocotb_runner import bench_params, pack, pack_fields, unpack_fields
from fpgacnn.sim.vectors import systolic_results, systolic_tiles


def encode(tiles, rows, cols):
    layout = operands_layout(rows, cols)
    beats = []
    for w, x in tiles:
        d = w.shape[1]
        for k in range(d):
            beats.append(pack_fields(layout, {"w": pack(w[:, k], 8), "x": pack(x[k], 8),
                                              "last": int(k == d - 1)}))
    return beats


async def run(dut, tiles, p, *, idle, stall):
    rows, cols = p["rows"], p["cols"]
    tb = StreamTB(dut, seed=p["seed"], idle=idle, stall=stall)
    await tb.start()
    want = systolic_results(tiles)
    raw = await tb.run(encode(tiles, rows, cols), len(want), max_cycles=20 * len(want) +
                       4 * sum(w.shape[1] for w, _ in tiles) + 100)
    layout = result_layout(rows, cols, p["acc_width"])
    got = np.array([[f["acc"], f["row"], f["col"], f["last"]]
                    for f in (unpack_fields(layout, v) for v in raw)], dtype=np.int64)
    np.testing.assert_array_equal(got, want, err_msg=f"seed={p['seed']}")
    return tb.cycles


@cocotb.test()
async def tiles_match_golden(dut):
    p = bench_params()
    tiles = systolic_tiles(p["rows"], p["cols"], p["depths"], p["seed"])
    await run(dut, tiles, p, idle=p["idle"], stall=p["stall"])


@cocotb.test()
async def lenet_cycles(dut):
    """C1 and C3 of LeNet-5 as tile sequences at full rate: cycles vs MACs / PEs."""
    p = bench_params()
    rows, cols = p["rows"], p["cols"]
    report = {}
    # (name, useful output channels, out_h, out_w, reduction D)
    for n, (name, k, oh, ow, d) in enumerate((("C1", 6, 28, 28, 25), ("C3", 16, 10, 10, 150))):
        n_tiles = array_tiles(cols, oh, ow, -(-k // rows), wrap_rows=p["wrap_rows"])
        tiles = systolic_tiles(rows, cols, [d] * n_tiles, p["seed"] + n)
        cycles = await run(dut, tiles, p, idle=0, stall=0)
        macs = k * oh * ow * d
        report[name] = {"beats": len(tiles) * d, "cycles": cycles, "macs": macs,
                        "ideal": macs / (rows * cols)}
        # One beat per cycle: only the last tile's drain is extra.
        assert cycles <= len(tiles) * d + rows * cols + 10, report[name]
    with open(p["report"], "w") as f:
        json.dump(report, f, indent=1)
