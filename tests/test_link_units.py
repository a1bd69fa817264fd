"""Unit checks of the link's hand-built arithmetic (its CRC engine, constant compares and
time-out prescaler); the protocol round trips are in ``test_link.py``."""

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from fpgacnn.hw import protocol as proto
from fpgacnn.hw.link_checker import _above
from fpgacnn.hw.link_crc import crc_next, crc_step
from fpgacnn.hw.link_decoder import _prescaler_lfsr


@pytest.mark.parametrize("seed", range(3))
def test_crc_step_matches_protocol_crc(seed):
    rng = random.Random(seed)
    raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    state = 0
    for byte in raw:
        state = crc_step(state, byte)
    assert state == proto.crc16(raw)
    # A frame followed by its CRC (low byte first) leaves the residue 0 the link checks.
    for byte in proto.crc16(raw).to_bytes(2, "little"):
        state = crc_step(state, byte)
    assert state == 0


def test_gateware_crc_and_compare_exhaustive():
    m = Module()
    state, byte, value = Signal(16), Signal(8), Signal(6)
    nxt = Signal(16)
    limits = [0, 1, 5, 31, 32, 62, 63, 64, 100]
    above = [Signal(name=f"above_{c}") for c in limits]
    m.d.comb += [nxt.eq(crc_next(state, byte)),
                 *(a.eq(_above(value, c)) for a, c in zip(above, limits))]
    rng = random.Random(1)

    async def bench(ctx):
        for v in range(64):
            ctx.set(value, v)
            assert [ctx.get(a) for a in above] == [int(v > c) for c in limits], v
        for _ in range(200):
            s, b = rng.randrange(1 << 16), rng.randrange(256)
            ctx.set(state, s)
            ctx.set(byte, b)
            assert ctx.get(nxt) == crc_step(s, b), (s, b)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("width", [2, 6, 16])
def test_prescaler_period(width):
    w, tap, period = _prescaler_lfsr(width)
    state, seen = 1, 0
    while True:
        state = (state >> 1) | (((state ^ (state >> tap)) & 1) << (w - 1))
        seen += 1
        if state == 1:
            break
    assert seen == period and period >= (1 << width) // 2
