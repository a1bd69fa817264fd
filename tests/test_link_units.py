"""Unit checks of the link's hand-built arithmetic (its CRC engine, constant compares and
time-out prescaler); the protocol round trips are in ``test_link.py``."""

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from fpgacnn.hw import protocol as proto
from fpgacnn.hw.link_checker import _above
from fpgacnn.hw.link_crc import CrcEngine, crc_next, crc_step
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


@pytest.mark.parametrize("seed", range(2))
def test_crc_engine_feeds_take_turns(seed):
    """Bytes from any feed, with idle cycles between them, reach ``value`` two cycles
    later; a load shows the next cycle; a frame followed by its CRC leaves ``zero``."""
    rng = random.Random(seed)
    dut = CrcEngine(feeds=3)
    frames = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))
              for _ in range(4)]

    async def bench(ctx):
        for raw in frames:
            init = rng.randrange(1 << 16)
            loader = dut.feed[rng.randrange(3)]
            ctx.set(loader.load, 1)
            ctx.set(loader.init, init)
            await ctx.tick()
            ctx.set(loader.load, 0)
            assert ctx.get(dut.value) == init
            want = init
            for byte in raw:
                feed = dut.feed[rng.randrange(3)]
                ctx.set(feed.valid, 1)
                ctx.set(feed.data, byte)
                await ctx.tick()
                ctx.set(feed.valid, 0)
                want = crc_step(want, byte)
                for _ in range(rng.randrange(2)):
                    await ctx.tick()
            await ctx.tick().repeat(2)
            assert ctx.get(dut.value) == want
            # The value's own bytes (low first) bring the residue to zero.
            for byte in want.to_bytes(2, "little"):
                ctx.set(dut.feed[0].valid, 1)
                ctx.set(dut.feed[0].data, byte)
                await ctx.tick()
            ctx.set(dut.feed[0].valid, 0)
            await ctx.tick().repeat(2)
            assert ctx.get(dut.zero) == 1 and ctx.get(dut.value) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
