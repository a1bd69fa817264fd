"""cocotb bench: a DualMul8 (generic or iCE40) computes a[i]*b[i] one cycle later."""

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly

from fpgacnn.sim.benches._tb import start_clock
from fpgacnn.sim.cocotb_runner import bench_params, pack, unpack
from fpgacnn.sim.vectors import product_pairs


@cocotb.test()
async def products_match(dut):
    params = bench_params()
    latency = params.get("latency", 1)
    start_clock(dut)
    pairs = product_pairs(300, params.get("seed", 0))
    sent, checked = [], 0
    for n in range(len(pairs) // 2 + latency):
        await FallingEdge(dut.clk)
        if n < len(pairs) // 2:
            (a0, b0), (a1, b1) = pairs[2 * n], pairs[2 * n + 1]
            dut.a.value = pack([a0, a1], 8)
            dut.b.value = pack([b0, b1], 8)
            sent.append([a0 * b0, a1 * b1])
        await ReadOnly()
        if n >= latency:
            got = unpack(dut.p.value.to_unsigned(), 16, 2)
            assert got == sent[n - latency], f"beat {n - latency}: {got} != {sent[n - latency]}"
            checked += 1
    assert checked == len(pairs) // 2
