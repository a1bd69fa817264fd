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
