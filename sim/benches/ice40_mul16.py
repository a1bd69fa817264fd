"""cocotb bench: a Mul16 (here the SB_MAC16 one) against NumPy products, enable and reset.

Operands: every edge pair (a in -32768, -32767, -1, 0, 1, 32767; b in 0, 1, 255, 256,
65535) and random pairs from the seed. ``en`` is low on a random quarter of the cycles: ``p``
must then keep the product of the last enabled operands. Then reset clears it.

Parameters (``bench_params``): ``seed``, ``n`` (random pairs).
"""

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge

from fpgacnn.sim.benches._tb import start_clock
from fpgacnn.sim.cocotb_runner import bench_params

A_EDGES = [-32768, -32767, -1, 0, 1, 32767]
B_EDGES = [0, 1, 255, 256, 65535]


def operands(seed, n):
    """(a, b, en) int arrays: edge pairs first, then ``n`` random ones."""
    rng = np.random.default_rng(seed)
    ea, eb = np.meshgrid(A_EDGES, B_EDGES)
    a = np.concatenate([ea.ravel(), rng.integers(-32768, 32768, n)])
    b = np.concatenate([eb.ravel(), rng.integers(0, 65536, n)])
    en = (rng.random(len(a)) >= 0.25).astype(np.int64)
    en[:ea.size] = 1
    return a.astype(np.int64), b.astype(np.int64), en


@cocotb.test()
async def products_match(dut):
    p = bench_params()
    a, b, en = operands(p.get("seed", 0), p.get("n", 4000))
    start_clock(dut)
    dut.rst.value = 0
    dut.en.value = 0
    held = 0                     # the product p must show: of the last enabled operands
    expected, seen = [], []
    # Inputs change on the falling edge; the rising edge between two falling edges takes
    # them, and p shows the result at the next falling edge.
    for k in range(len(a) + 1):
        await FallingEdge(dut.clk)
        if k:
            seen.append(dut.p.value.to_signed())
            if en[k - 1]:
                held = int(a[k - 1] * b[k - 1])
            expected.append(held)
        if k < len(a):
            dut.a.value = int(a[k]) & 0xFFFF
            dut.b.value = int(b[k])
            dut.en.value = int(en[k])
    np.testing.assert_array_equal(np.array(seen, dtype=np.int64),
                                  np.array(expected, dtype=np.int64),
                                  err_msg="p differs from a * b (or did not hold while en = 0)")

    dut.rst.value = 1
    await FallingEdge(dut.clk)
    assert dut.p.value.to_signed() == 0, f"p = {dut.p.value} during reset, expected 0"
