# amaranth: UnusedElaboratable=no
"""Board wrappers: power-on reset after PLL lock, the board table, refusing bad boards.

(The PLLs themselves: test_build.py.) The linter comment above silences Amaranth's
"created but never used" warning for objects *this file* creates and refuses; objects
``Board.make`` creates are not covered by it, which is what
``test_make_refuses_before_creating_gateware`` relies on.
"""

import dataclasses
import gc
import warnings
from types import SimpleNamespace

import pytest
from amaranth.hdl import (ClockDomain, Elaboratable, Fragment, Module, Signal,
                          UnusedElaboratable)

from fpgacnn.hw import boards
from fpgacnn.hw.config import CONFIGS, get_config
from fpgacnn.hw.top import BoardTop
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


def test_board_table():
    # Every board names its family, a configuration that exists, a board top that builds
    # its PLL for that configuration's clock, and its openFPGALoader board name.
    assert set(boards.BOARDS) == {"icebreaker", "ulx3s-85f"}
    for name, board in boards.BOARDS.items():
        assert board.name == name and board.family in ("ice40", "ecp5")
        assert board.config_name in CONFIGS and board.config is CONFIGS[board.config_name]
        assert board.wrapper.pll_settings(board.config.clock_hz)["f_vco"] > 0
        assert board.loader_board in ("ice40_generic", "ulx3s")
    assert boards.BOARDS["icebreaker"].bitstream_name == "top.bin"
    assert boards.BOARDS["ulx3s-85f"].bitstream_name == "top.bit"
    with pytest.raises(dataclasses.FrozenInstanceError):
        boards.BOARDS["icebreaker"].config_name = "ulx3s-85f"


def test_get_board_names_the_choices():
    assert boards.get_board("ulx3s-85f") is boards.BOARDS["ulx3s-85f"]
    with pytest.raises(ValueError, match="unknown board 'icebreakr'; choose one of "
                                         "icebreaker, ulx3s-85f"):
        boards.get_board("icebreakr")


@pytest.mark.parametrize("design, inner", [("full", BoardTop), ("array", boards.ArraySmokeTop)])
def test_make_wraps_the_design(design, inner):
    platform, top, config = boards.BOARDS["icebreaker"].make(design=design)
    assert isinstance(top, boards.ICEBreakerBoard) and isinstance(top.top, inner)
    assert config is get_config("icebreaker") and top.config is config
    assert platform.device == "iCE40UP5K"
    assert top.pll == boards.ice40_pll(12e6, config.clock_hz)
    # Elaborated here so that nothing is left unused.
    platform.prepare(top)


def test_make_refuses_before_creating_gateware():
    # A refused clock, baud or design raises before any Elaboratable exists, so no
    # "created but never used" warning follows (the CLI prints its one-line error only).
    # 19.5 MHz: the PLL makes it exactly, the UART's 3 Mbaud divisor cannot.
    board = boards.BOARDS["icebreaker"]
    # Amaranth stays silent about unused elaboratables until something has been
    # elaborated in the process (as it has been in a test session or a notebook).
    Fragment.get(PorHarness(1e6), None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="cannot make exactly 37 MHz"):
            board.make(board.config.with_(clock_hz=37_000_000))
        for design in boards.DESIGNS:
            with pytest.raises(ValueError, match="3000000 baud at 19500000 Hz"):
                board.make(board.config.with_(clock_hz=19_500_000), design=design)
        with pytest.raises(ValueError, match="design must be one of full, pipeline, array"):
            board.make(design="smoke")
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, UnusedElaboratable)], \
        [str(w.message) for w in caught]


def test_ulx3s_board_top_elaborates():
    # The ECP5 board top without a build: EHXPLLL parameters for 25 MHz -> core clock.
    platform, top, config = boards.BOARDS["ulx3s-85f"].make(design="array")
    assert isinstance(top, boards.ULX3SBoard) and platform.device == "LFE5U-85F"
    assert top.pll == boards.ecp5_pll(25e6, config.clock_hz)
    platform.prepare(top)
