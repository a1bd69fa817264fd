"""cocotb bench: a DualMul8 (generic or iCE40) computes a[i]*b[i] one cycle later."""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

from fpgacnn.sim.cocotb_runner import bench_params, pack, unpack

EDGES = [-128, -127, -1, 0, 1, 126, 127]


@cocotb.test()
async def products_match(dut):
    params = bench_params()
    rng = random.Random(params.get("seed", 0))
    latency = params.get("latency", 1)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    pairs = [(a, b) for a in EDGES for b in EDGES]
    pairs += [(rng.randrange(-128, 128), rng.randrange(-128, 128)) for _ in range(300)]
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
