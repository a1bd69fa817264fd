"""UART 8N1: transmitter → line → receiver, bit-level, in the Amaranth simulator."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring

from fpgacnn.hw.uart import UARTReceiver, UARTTransmitter, baud_divisor
from fpgacnn.sim.amaranth_sim import run_simulation
from fpgacnn.sim.streams import stream_get, stream_put


class Loopback(wiring.Component):
    def __init__(self, divisor):
        self.tx = UARTTransmitter(divisor)
        self.rx = UARTReceiver(divisor)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx, m.submodules.rx = self.tx, self.rx
        m.d.comb += self.rx.rx.eq(self.tx.tx)
        return m


@pytest.mark.parametrize("divisor,seed", [(4, 0), (5, 1), (12, 2)])
def test_loopback(request, divisor, seed):
    dut = Loopback(divisor)
    rng = random.Random(seed)
    sent = [0x00, 0xFF, 0x55, 0xAA] + [rng.randrange(256) for _ in range(40)]
    got = []

    async def producer(ctx):
        rng = random.Random(seed)
        for byte in sent:
            await stream_put(ctx, dut.tx.i, byte)
            for _ in range(rng.randrange(3) * divisor):
                await ctx.tick()

    async def consumer(ctx):
        for _ in sent:
            got.append(await stream_get(ctx, dut.rx.o))

    def check():
        assert got == sent

    run_simulation(dut, [producer, consumer], name=request.node.name, check=check,
                   max_cycles=len(sent) * 13 * divisor + 100)


@pytest.mark.parametrize("divisor", [4, 5, 10])
def test_transmitter_back_to_back_bit_times(request, divisor):
    """Bytes offered without pause go out with every bit exactly ``divisor`` cycles long
    and no idle cycle between a stop bit and the next start bit: the line level sampled
    each cycle is the ideal 8N1 waveform of the bytes, one byte per ``10 * divisor``."""
    dut = UARTTransmitter(divisor)
    sent = [0x00, 0xFF, 0x55, 0xAA, 0x01, 0x80, 0x00, 0x00]
    line = []

    async def producer(ctx):
        for byte in sent:
            await stream_put(ctx, dut.i, byte)

    async def monitor(ctx):
        while ctx.get(dut.tx):                 # idle until the first start bit
            await ctx.tick()
        for _ in range(10 * divisor * len(sent) + divisor):
            line.append(ctx.get(dut.tx))
            await ctx.tick()

    def check():
        ideal = []
        for byte in sent:
            for bit in [0, *((byte >> k) & 1 for k in range(8)), 1]:
                ideal += [bit] * divisor
        ideal += [1] * divisor                  # idle after the last stop bit
        assert line == ideal

    run_simulation(dut, [producer, monitor], name=request.node.name, check=check,
                   max_cycles=len(sent) * 12 * divisor + 100)


def test_receiver_rejects_glitch_and_framing_error(request):
    divisor = 8
    dut = UARTReceiver(divisor)
    got = []

    async def line(ctx):
        async def bits(values):
            for v in values:
                ctx.set(dut.rx, v)
                await ctx.tick().repeat(divisor)
        await ctx.tick().repeat(5)
        ctx.set(dut.rx, 0)                   # glitch: shorter than half a bit
        await ctx.tick().repeat(2)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(3 * divisor)
        await bits([0] + [0] * 8 + [0])      # break: low stop bit, dropped
        await bits([1, 1])
        await bits([0] + [(0x3C >> i) & 1 for i in range(8)] + [1])
        await ctx.tick().repeat(2 * divisor)

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        for _ in range(30 * divisor):
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid:
                got.append(payload)

    def check():
        assert got == [0x3C]

    run_simulation(dut, [line, consumer], name=request.node.name, check=check)


def test_baud_divisor():
    assert baud_divisor(36_000_000, 3_000_000) == 12
    with pytest.raises(ValueError, match="at least 4"):
        baud_divisor(12_000_000, 12_000_000)
    with pytest.raises(ValueError, match="off"):
        baud_divisor(36_000_000, 2_500_000)


def _line_waveform(data, period, rng):
    """``[(time, level), ...]`` in clock periods: ``data`` sent 8N1 with bits of
    ``period`` clocks (a sender at another baud rate: any real number), each start bit at
    a random phase of the board's clock, back to back or after a random idle time."""
    t, events = 3.0 + rng.random(), []
    for byte in data:
        bits = [0] + [(byte >> i) & 1 for i in range(8)] + [1]
        events += [(t + k * period, level) for k, level in enumerate(bits)]
        t += 10 * period
        if rng.random() < 0.5:                  # else the next start bit follows at once
            t += rng.random() * 3 * period
    return events, t


def _receive_async(request, divisor, period, seed, count=48):
    """Bytes the receiver takes from an asynchronous line (``_line_waveform``)."""
    rng = random.Random(seed)
    sent = [0x00, 0xFF, 0x55, 0xAA, 0x01, 0x80, 0xFE, 0x7F] + \
        [rng.randrange(256) for _ in range(count - 8)]
    events, end = _line_waveform(sent, period, rng)
    clock = 1e-8
    dut = UARTReceiver(divisor)
    got = []

    async def line(ctx):
        now = 0.0
        for when, level in events:          # set between clock edges, as a wire changes
            await ctx.delay((when - now) * clock)
            now = when
            ctx.set(dut.rx, level)

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        for _ in range(int(end + 4 * divisor)):
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid:
                got.append(payload)

    run_simulation(dut, [line, consumer], name=request.node.name, clock=clock,
                   max_cycles=int(end) + 100 * divisor)
    return sent, got


@pytest.mark.parametrize("divisor", [4, 5, 8])
@pytest.mark.parametrize("mismatch", [-0.02, 0.0, 0.02])
def test_receiver_baud_mismatch_any_phase(request, divisor, mismatch):
    """The sender's rate off by ``mismatch`` (the host's bridge and the board's clock
    together), every byte starting at another phase of the clock: each byte is sampled
    inside its bits, down to 4 clocks per bit (the fewest the UART accepts)."""
    seed = 100 * divisor + round(mismatch * 100)
    sent, got = _receive_async(request, divisor, divisor / (1 + mismatch), seed)
    assert got == sent


@pytest.mark.parametrize("mismatch", [-0.08, 0.08])
def test_receiver_fails_beyond_tolerance(request, mismatch):
    """The test above can fail: at 4 clocks per bit, an 8 % mismatch puts the stop bit's
    sample into a neighbouring bit."""
    sent, got = _receive_async(request, 4, 4 / (1 + mismatch), 7)
    assert got != sent
