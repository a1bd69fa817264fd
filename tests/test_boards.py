"""Board wrappers: power-on reset after PLL lock (the PLLs themselves: test_build.py)."""

from types import SimpleNamespace

import pytest
from amaranth.hdl import ClockDomain, Elaboratable, Module, Signal

from fpgacnn.hw import boards
from fpgacnn.hw.config import get_config
from fpgacnn.sim.amaranth_sim import run_simulation


class PorHarness(Elaboratable):
    def __init__(self, clock_hz):
        self.clock_hz = clock_hz
        self.lock, self.rst = Signal(), Signal()

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd_sync = ClockDomain("sync")
        boards._power_on_reset(m, cd_sync, self.lock, self.clock_hz)
        m.d.comb += self.rst.eq(cd_sync.rst)
        return m


def test_reset_held_until_lock_plus_por_time(request):
    clock_hz = 2e6                                    # 15 µs = 30 cycles
    delay = int(boards.POR_SECONDS * clock_hz)
    dut, seen = PorHarness(clock_hz), {}

    async def bench(ctx):
        for _ in range(50):                           # no lock: reset stays asserted
            await ctx.tick()
            assert ctx.get(dut.rst) == 1
        ctx.set(dut.lock, 1)
        cycles = 0
        while ctx.get(dut.rst):
            await ctx.tick()
            cycles += 1
        seen["release"] = cycles
        for _ in range(100):
            await ctx.tick()
            assert ctx.get(dut.rst) == 0
        ctx.set(dut.lock, 0)                          # lost lock: back into reset
        for _ in range(4):
            await ctx.tick()
        seen["relock_rst"] = ctx.get(dut.rst)

    def check():
        # At least the POR time after lock; the synchroniser adds a few cycles.
        assert delay <= seen["release"] <= delay + 4, seen
        assert seen["relock_rst"] == 1

    run_simulation(dut, [bench], name=request.node.name, check=check, max_cycles=1000)


def test_board_rejects_clock_the_pll_cannot_make():
    config = get_config("icebreaker").with_(clock_hz=37_000_000)
    with pytest.raises(ValueError, match="cannot make exactly 37 MHz"):
        boards.ICEBreakerBoard(config, top=SimpleNamespace(uart_rx=None, uart_tx=None))


def test_board_rejects_top_without_uart():
    config = get_config("icebreaker")
    with pytest.raises(TypeError, match="uart_rx/uart_tx"):
        boards.ICEBreakerBoard(config, top=object())
