"""cocotb bench: a DualMul8 (here the SB_MAC16 one) over all 65,536 operand pairs.

Both products see every (a, b) pair once in one pass of 65,536 cycles: pair 1 in
counting order, pair 0 in a permuted order (index × an odd constant, mod 2**16), so the
two multipliers never see the same operands at the same time. The outputs are compared
with NumPy products by ``assert_array_equal``; then the reset behaviour is checked
(products read 0 while the domain's reset is asserted).

Parameters (``bench_params``): ``latency`` (default 1).
"""

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge

from fpgacnn.sim.benches._tb import start_clock
from fpgacnn.sim.cocotb_runner import bench_params

# Odd, so i -> i * STRIDE mod 2**16 is a permutation of all operand pairs.
STRIDE = 40503


def operand_pairs():
    """(a0, b0, a1, b1) int arrays of length 65,536: every (a, b) pair once per lane."""
    i = np.arange(1 << 16, dtype=np.int64)
    j = (i * STRIDE) & 0xFFFF
    def split(k):
        return (k >> 8) - 128, (k & 0xFF) - 128
    a1, b1 = split(i)
    a0, b0 = split(j)
    return a0, b0, a1, b1


@cocotb.test()
async def exhaustive_products(dut):
    latency = bench_params().get("latency", 1)
    a0, b0, a1, b1 = operand_pairs()
    a_port = ((a0 & 0xFF) | ((a1 & 0xFF) << 8)).tolist()
    b_port = ((b0 & 0xFF) | ((b1 & 0xFF) << 8)).tolist()
    n = len(a_port)
    start_clock(dut)
    dut.rst.value = 0
    seen = []
    # Inputs change on the falling edge; what p shows there was registered on the rising
    # edge just before, i.e. from the inputs set one falling edge earlier.
    for k in range(n + latency):
        await FallingEdge(dut.clk)
        seen.append(dut.p.value.to_unsigned())
        if k < n:
            dut.a.value = a_port[k]
            dut.b.value = b_port[k]
    got = np.array(seen[latency:latency + n], dtype=np.int64)
    p0 = ((got & 0xFFFF) ^ 0x8000) - 0x8000
    p1 = (((got >> 16) & 0xFFFF) ^ 0x8000) - 0x8000
    np.testing.assert_array_equal(p0, a0 * b0, err_msg="product 0 (a[0]*b[0]) differs")
    np.testing.assert_array_equal(p1, a1 * b1, err_msg="product 1 (a[1]*b[1]) differs")

    # Reset clears the product registers; after release the pipeline runs again.
    dut.a.value = 0x8080   # (-128, -128): a non-zero product if reset did not clear it
    dut.b.value = 0x8080
    dut.rst.value = 1
    await FallingEdge(dut.clk)
    assert dut.p.value.to_unsigned() == 0, f"p = {dut.p.value} during reset, expected 0"
    dut.rst.value = 0
    for _ in range(latency):
        await FallingEdge(dut.clk)
    assert dut.p.value.to_unsigned() == (1 << 14) | (1 << 30), \
        f"p = {dut.p.value} after reset, expected (-128)*(-128) in both lanes"
