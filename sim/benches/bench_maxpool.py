"""cocotb bench: MaxPool on Verilator vs golden.maxpool2d.

Parameters: block, cases (list of [channels, h, w, kernel, stride]), seed, idle, stall.
"""

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, RisingEdge

from fpgacnn.sim.benches._tb import StreamTB
from fpgacnn.sim.cocotb_runner import bench_params, unpack
from fpgacnn.sim.vectors import from_kblock_stream, kblock_stream
from fpgacnn.sw import golden


@cocotb.test()
async def maps_match_golden(dut):
    p = bench_params()
    block = p["block"]
    rng = np.random.default_rng(p["seed"])
    tb = StreamTB(dut, seed=p["seed"], idle=p["idle"], stall=p["stall"])
    await tb.start()
    for c, h, w, kernel, stride in p["cases"]:
        x = rng.integers(-128, 128, (c, h, w), dtype=np.int8)
        x[0, 0] = -128
        kbs = -(-c // block)
        dut.height.value, dut.width.value, dut.blocks.value = h, w, kbs
        dut.kernel.value, dut.stride.value, dut.start.value = kernel, stride, 1
        await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)
        dut.start.value = 0
        assert not dut.error.value, (c, h, w, kernel, stride)
        want = golden.maxpool2d(x, kernel, stride)
        beats = [int(v) & 0xFF for v in kblock_stream(x, block)]
        raw = await tb.run(beats, len(kblock_stream(want, block)))
        got = np.array([unpack(v, 8, 1)[0] for v in raw])
        _, h2, w2 = want.shape
        got = from_kblock_stream(got, c, block, h2, w2)
        np.testing.assert_array_equal(got[:c], want, err_msg=f"case {c, h, w, kernel, stride}")
