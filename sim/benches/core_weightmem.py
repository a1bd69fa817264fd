"""cocotb bench: the weight memory (4 × SB_SPRAM256KA via ``cells_sim.v``) vs a dict model.

Random 64-bit chunk writes across the whole 16K-word range (first, last and random
addresses; a word's first write whole, later ones with a random byte mask, often a
single byte as the activation window writes), then reads with a random read enable: ``rd.data`` must show the word at the
address presented in the last cycle with ``en`` high, and hold while ``en`` is low — the
timing every ``hw/memories.py`` read port promises.

Parameters (``bench_params``): ``seed``, ``depth``, ``writes``, ``reads``.
"""

import random

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly

from fpgacnn.sim.benches._tb import start_clock
from fpgacnn.sim.cocotb_runner import bench_params


@cocotb.test()
async def weight_memory_matches_model(dut):
    p = bench_params()
    rng = random.Random(p.get("seed", 0))
    depth = p.get("depth", 16384)
    start_clock(dut)
    dut.rst.value = 0
    dut.wr__en.value = 0
    dut.rd__en.value = 0
    model = {}
    addrs = [0, depth - 1] + [rng.randrange(depth) for _ in range(p.get("writes", 2000))]
    edge = [0, (1 << 64) - 1, 0x8080808080808080, 0x7F7F7F7F7F7F7F7F]
    for n, a in enumerate(addrs):
        v = edge[n % 4] if n < 8 else rng.getrandbits(64)
        await FallingEdge(dut.clk)
        dut.wr__addr.value = a
        mask = 0xFF if a not in model else rng.choice([1 << rng.randrange(8),
                                                       rng.getrandbits(8)])
        dut.wr__data.value = v
        dut.wr__mask.value = mask
        dut.wr__en.value = 1
        keep = sum(0xFF << 8 * b for b in range(8) if not mask >> b & 1)
        model[a] = (model.get(a, 0) & keep) | (v & ~keep)
    await FallingEdge(dut.clk)
    dut.wr__en.value = 0
    written = sorted(model)
    held = None
    for n in range(p.get("reads", 3000)):
        await FallingEdge(dut.clk)
        en = rng.random() < 0.7
        a = written[n] if n < len(written) else rng.choice(written)
        dut.rd__addr.value = a
        dut.rd__en.value = int(en)
        await ReadOnly()
        await FallingEdge(dut.clk)
        got = dut.rd__data.value.to_unsigned()
        expect = model[a] if en else held
        if expect is not None:
            assert got == expect, (f"read {n}: addr {a} en {int(en)}: got {got:#018x}, "
                                   f"expected {expect:#018x}")
        held = got
        dut.rd__en.value = 0
