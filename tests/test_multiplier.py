"""DualMul8 vs Python products, in Amaranth's simulator (Verilator: test_units_verilator)."""

import pytest

from fpgacnn.hw.multiplier import DualMul8, LogicDualMul8, RegisteredDualMul8, logic_partials
from fpgacnn.sim.amaranth_sim import run_simulation
from fpgacnn.sim.vectors import product_pairs


@pytest.mark.parametrize("block", [DualMul8, RegisteredDualMul8, LogicDualMul8])
@pytest.mark.parametrize("seed", range(2))
def test_dual_mul8_products(request, seed, block):
    dut = block()
    pairs = product_pairs(200, seed)
    got, want = [], []

    async def bench(ctx):
        for n in range(0, len(pairs), 2):
            (a0, b0), (a1, b1) = pairs[n], pairs[n + 1]
            ctx.set(dut.a, [a0, a1])
            ctx.set(dut.b, [b0, b1])
            want.append([a0 * b0, a1 * b1])
            # Registered output: the product appears LATENCY cycles later.
            await ctx.tick().repeat(block.LATENCY)
            p = ctx.get(dut.p)
            got.append([p[0], p[1]])

    def check():
        assert got == want, next((n, g, w) for n, (g, w) in enumerate(zip(got, want)) if g != w)

    run_simulation(dut, [bench], name=request.node.name, check=check)


def test_dual_mul8_pipelines():
    """New operands every cycle: each product is exactly one cycle late (no enable)."""
    dut = DualMul8()
    seen = []

    async def bench(ctx):
        for n in range(6):
            ctx.set(dut.a, [n, -n])
            ctx.set(dut.b, [n + 1, 3])
            await ctx.tick()
            p = ctx.get(dut.p)
            seen.append((p[0], p[1]))

    run_simulation(dut, [bench], name="test_dual_mul8_pipelines")
    assert seen == [(n * (n + 1), -3 * n) for n in range(6)]


def test_registered_dual_mul8_pipelines():
    """New operands every cycle through the registered block: each product two cycles
    late, edge values included."""
    dut = RegisteredDualMul8()
    ops = [(-128, -128, 127, -128), (0, 5, -1, 1), (127, 127, -128, 127), (3, -7, 0, 0)]
    seen = []

    async def bench(ctx):
        for a0, b0, a1, b1 in ops + [(0, 0, 0, 0)] * 2:
            ctx.set(dut.a, [a0, a1])
            ctx.set(dut.b, [b0, b1])
            await ctx.tick()
            p = ctx.get(dut.p)
            seen.append((p[0], p[1]))

    run_simulation(dut, [bench], name="test_registered_dual_mul8_pipelines")
    assert seen[1:-1] == [(a0 * b0, a1 * b1) for a0, b0, a1, b1 in ops]


def test_logic_product_every_pair():
    """The shift-and-add partial sums add up to a * b for all 65,536 signed 8-bit pairs,
    each within the 16 bits LogicDualMul8 registers it in."""
    from amaranth.hdl import Module, Signal, signed
    from amaranth.sim import Simulator
    a, b = Signal(signed(8)), Signal(signed(8))
    parts = [Signal(signed(16), name=f"part{k}") for k in range(4)]
    p = Signal(signed(18))
    m = Module()
    m.d.comb += [*(r.eq(v) for r, v in zip(parts, logic_partials(a, b))), p.eq(sum(parts))]
    sim = Simulator(m)
    bad = []

    async def bench(ctx):
        for x in range(-128, 128):
            ctx.set(a, x)
            for y in range(-128, 128):
                ctx.set(b, y)
                if ctx.get(p) != x * y:
                    bad.append((x, y, ctx.get(p)))

    sim.add_testbench(bench)
    sim.run()
    assert not bad, bad[:5]
