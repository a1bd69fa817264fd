"""Board tops: a PLL for the core clock, a power-on reset, and the UART pins.

Each board wraps a board-independent top (default :class:`~fpgacnn.hw.top.BoardTop`,
ports ``uart_rx``/``uart_tx``, default ``sync`` domain) with what only the board knows:

* iCEBreaker (iCE40UP5K-SG48): the 12 MHz oscillator on pin 35 drives an
  ``SB_PLL40_PAD`` directly (pin 35 is the UP5K's PLL input pad, so the ``PAD``
  variant is the one that fits; the ``2F`` variants only add a second output we do
  not need). UART on the FT2232H's second channel (platform resource ``uart``).
* ULX3S-85F (LFE5U-85F): the 25 MHz oscillator drives an ``EHXPLLL`` (feedback from
  CLKOP, as ``ecppll`` generates it). UART on the FT231X (resource ``uart``).

PLL divider settings are computed here (:func:`ice40_pll`, :func:`ecp5_pll`) with the
same constraints as ``icepll``/``ecppll``; ``tests/test_build.py`` checks them against
those tools. A core clock the PLL cannot make exactly is an error, never rounded.

The reset of ``sync`` is held until the PLL reports lock and then for 15 µs more: iCE40
block RAMs read as zero for ~3 µs after configuration (see Amaranth's
``create_missing_domain`` for iCE40), and a design running before lock sees a
glitching clock.
"""

import struct
from collections.abc import Callable
from dataclasses import dataclass

from amaranth.hdl import C, Cat, ClockDomain, ClockSignal, Elaboratable, Instance, Module, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = [
    "BOARDS",
    "DESIGNS",
    "POR_SECONDS",
    "ArraySmokeTop",
    "Board",
    "ICEBreakerBoard",
    "ULX3SBoard",
    "board_pipeline",
    "ecp5_pll",
    "get_board",
    "pipeline_board_top",
    "ice40_pll",
]

#: Reset held after PLL lock (5× the iCE40 BRAM start-up time).
POR_SECONDS = 15e-6


def ice40_pll(f_in, f_out):
    """``SB_PLL40`` dividers (SIMPLE feedback) for an exact ``f_out`` from ``f_in`` (Hz).

    ``f_out = f_in * (DIVF + 1) / ((DIVR + 1) * 2**DIVQ)`` with the iCE40 limits: PFD
    10–133 MHz, VCO 533–1066 MHz, output 16–275 MHz. Among exact settings the one with
    the highest PFD frequency wins (less jitter), as in ``icepll``.

    Returns
    -------
    dict with ``DIVR``, ``DIVF``, ``DIVQ``, ``FILTER_RANGE`` (ints) and ``f_vco`` (Hz).

    Raises
    ------
    ValueError
        If no setting gives exactly ``f_out``; the message names the nearest frequencies.
    """
    if not 16e6 <= f_out <= 275e6:
        raise ValueError(f"iCE40 PLL output {f_out / 1e6:g} MHz is outside 16–275 MHz; "
                         f"choose another clock_hz")
    best, near = None, set()
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not 10e6 <= f_pfd <= 133e6:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533e6 <= f_vco <= 1066e6:
                continue
            for divq in range(1, 7):
                f = f_vco / 2 ** divq
                if round(f) == round(f_out):
                    if best is None:
                        best = {"DIVR": divr, "DIVF": divf, "DIVQ": divq,
                                "FILTER_RANGE": _ice40_filter_range(f_pfd), "f_vco": f_vco}
                elif abs(f - f_out) < 2e6:
                    near.add(round(f / 1e3) / 1e3)
    if best is None:
        raise ValueError(f"the iCE40 PLL cannot make exactly {f_out / 1e6:g} MHz from "
                         f"{f_in / 1e6:g} MHz; nearby: {sorted(near)} MHz")
    return best


def _ice40_filter_range(f_pfd):
    # Loop filter setting by PFD frequency, the table icepll uses.
    for limit, value in ((17e6, 1), (26e6, 2), (44e6, 3), (66e6, 4), (101e6, 5)):
        if f_pfd < limit:
            return value
    return 6


def ecp5_pll(f_in, f_out):
    """``EHXPLLL`` dividers (feedback from CLKOP) for an exact ``f_out`` from ``f_in``.

    ``f_out = f_in * CLKFB_DIV / CLKI_DIV``, ``f_vco = f_out * CLKOP_DIV`` in 400–800 MHz,
    PFD ≥ 3.125 MHz; among exact settings the VCO closest to 600 MHz wins (``ecppll``
    does the same). ``CLKOP_CPHASE`` is ``ecppll``'s: half an output period of VCO
    cycles (Lattice's tools shift the feedback output by 180°), rounded as ``ecppll``'s
    single-precision arithmetic rounds it.

    Returns
    -------
    dict with ``CLKI_DIV``, ``CLKFB_DIV``, ``CLKOP_DIV``, ``CLKOP_CPHASE`` and ``f_vco``.
    """
    best = None
    for clki in range(1, 129):
        f_pfd = f_in / clki
        if f_pfd < 3.125e6:
            break
        for clkfb in range(1, 81):
            if round(f_pfd * clkfb) != round(f_out):
                continue
            for clkop in range(1, 129):
                f_vco = f_out * clkop
                if 400e6 <= f_vco <= 800e6 and (
                        best is None or abs(f_vco - 600e6) < abs(best["f_vco"] - 600e6)):
                    best = {"CLKI_DIV": clki, "CLKFB_DIV": clkfb, "CLKOP_DIV": clkop,
                            "CLKOP_CPHASE": _ecppll_cphase(f_out, f_vco), "f_vco": f_vco}
    if best is None:
        raise ValueError(f"the ECP5 PLL cannot make exactly {f_out / 1e6:g} MHz from "
                         f"{f_in / 1e6:g} MHz; choose another clock_hz")
    return best


def _float32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def _ecppll_cphase(f_out, f_vco):
    # ecppll: float ns_phase = 1.0 / (fout * 1e6) * 0.5; cphase = ns_phase * (fvco * 1e6),
    # with fout/fvco in MHz as floats; truncation makes e.g. 5 (not 6) for CLKOP_DIV = 12.
    ns_phase = _float32(1.0 / (_float32(f_out / 1e6) * 1e6) * 0.5)
    return int(ns_phase * (_float32(f_vco / 1e6) * 1e6))


def _power_on_reset(m, cd_sync, lock, clock_hz):
    """Drive ``sync``'s reset until ``lock`` has been high for :data:`POR_SECONDS`."""
    # The counter runs on the PLL clock in a reset-less domain; lock is asynchronous.
    m.domains.por = ClockDomain("por", reset_less=True, local=True)
    m.d.comb += ClockSignal("por").eq(ClockSignal("sync"))
    locked = Signal()
    m.submodules.lock_sync = FFSynchronizer(lock, locked, o_domain="por")
    delay = max(1, int(POR_SECONDS * clock_hz))
    timer = Signal(range(delay + 1))
    ready = Signal()
    with m.If(~locked):
        m.d.por += [timer.eq(0), ready.eq(0)]
    with m.Elif(timer == delay):
        m.d.por += ready.eq(1)
    with m.Else():
        m.d.por += timer.eq(timer + 1)
    m.d.comb += cd_sync.rst.eq(~ready)


def _uart(m, platform, top):
    # Raw ports for every subsignal (the ULX3S also has rts/dtr; left unused).
    subsignals = [sub.name for sub in platform.lookup("uart", 0).ios]
    uart = platform.request("uart", 0, dir=dict.fromkeys(subsignals, "-"))
    m.submodules.uart_rx_buf = rx_buf = io.Buffer("i", uart.rx)
    m.submodules.uart_tx_buf = tx_buf = io.Buffer("o", uart.tx)
    # rx is asynchronous to our clock; idle high, so the synchroniser starts at 1.
    m.submodules.rx_sync = FFSynchronizer(rx_buf.i, top.uart_rx, init=1)
    m.d.comb += tx_buf.o.eq(top.uart_tx)


def _check_top(top):
    for port in ("uart_rx", "uart_tx"):
        if not hasattr(top, port):
            raise TypeError(f"the board top must have uart_rx/uart_tx ports like "
                            f"BoardTop; {top!r} has no {port}")


class _Board(Elaboratable):
    """What every board top does: PLL → ``sync``, power-on reset, UART pins, ``top``.

    Subclasses give the oscillator frequency ``F_IN``, the divider search ``PLL``
    (:func:`ice40_pll` or :func:`ecp5_pll`) and :meth:`clock` (the PLL instance).

    Parameters
    ----------
    config : AcceleratorConfig
        ``clock_hz`` must be exactly reachable by the board's PLL from ``F_IN``.
    top : Elaboratable, optional
        Anything with ``uart_rx``/``uart_tx``; default ``BoardTop(config)``.
    """
    F_IN = None
    PLL = None

    def __init__(self, config, *, top=None):
        # Everything that can refuse the board is checked by Board.make before any
        # gateware object exists; constructing directly checks again (a refused object
        # then gets Amaranth's usual "created but never used" warning when collected).
        self.pll = self.pll_settings(config.clock_hz)
        if top is None:
            from .top import BoardTop
            top = BoardTop(config)
        _check_top(top)
        self.config = config
        self.top = top

    @classmethod
    def pll_settings(cls, clock_hz):
        """The PLL's parameters for ``clock_hz`` from ``F_IN``; ValueError if inexact."""
        return cls.PLL(cls.F_IN, clock_hz)

    def clock(self, m, platform, clk, lock):
        """Add the oscillator input and the PLL to ``m``, driving ``clk`` and ``lock``."""
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd_sync = ClockDomain("sync")
        clk, lock = Signal(name="pll_clk"), Signal(name="pll_lock")
        self.clock(m, platform, clk, lock)
        m.d.comb += cd_sync.clk.eq(clk)
        # No set_frequency on the PLL output: yosys renames that net, and nextpnr derives
        # its constraint from the oscillator pin's through the PLL dividers anyway.
        _power_on_reset(m, cd_sync, lock, self.config.clock_hz)
        m.submodules.top = self.top
        _uart(m, platform, self.top)
        return m


class ICEBreakerBoard(_Board):
    """iCEBreaker: SB_PLL40_PAD 12 MHz → ``config.clock_hz``, POR, UART, ``top``.

    Parameters as :class:`_Board`'s.
    """
    F_IN = 12e6
    PLL = staticmethod(ice40_pll)

    def clock(self, m, platform, clk, lock):
        clk_pin = platform.request("clk12", dir="-")
        pll = self.pll
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE",
            p_DIVR=C(pll["DIVR"], 4), p_DIVF=C(pll["DIVF"], 7), p_DIVQ=C(pll["DIVQ"], 3),
            p_FILTER_RANGE=C(pll["FILTER_RANGE"], 3),
            i_PACKAGEPIN=clk_pin.io, i_RESETB=C(1, 1), i_BYPASS=C(0, 1),
            o_PLLOUTGLOBAL=clk, o_LOCK=lock)


class ULX3SBoard(_Board):
    """ULX3S (ECP5): EHXPLLL 25 MHz → ``config.clock_hz``, POR, UART, ``top``.

    Parameters as :class:`_Board`'s.
    """
    F_IN = 25e6
    PLL = staticmethod(ecp5_pll)

    def clock(self, m, platform, clk, lock):
        m.submodules.clk_buf = clk_buf = io.Buffer("i", platform.request("clk25", dir="-"))
        pll = self.pll
        f_in_mhz, f_out_mhz = f"{self.F_IN / 1e6:g}", f"{self.config.clock_hz / 1e6:g}"
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f_in_mhz, a_FREQUENCY_PIN_CLKOP=f_out_mhz,
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
            p_CLKI_DIV=pll["CLKI_DIV"], p_CLKFB_DIV=pll["CLKFB_DIV"],
            p_CLKOP_DIV=pll["CLKOP_DIV"], p_CLKOP_CPHASE=pll["CLKOP_CPHASE"],
            p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            i_CLKI=clk_buf.i, i_CLKFB=clk, i_RST=C(0, 1), i_STDBY=C(0, 1),
            i_PHASESEL0=C(0, 1), i_PHASESEL1=C(0, 1), i_PHASEDIR=C(1, 1),
            i_PHASESTEP=C(1, 1), i_PHASELOADREG=C(1, 1), i_PLLWAKESYNC=C(0, 1),
            i_ENCLKOP=C(0, 1),
            o_CLKOP=clk, o_LOCK=lock)


class ArraySmokeTop(wiring.Component):
    """A small stand-in for ``BoardTop``: the systolic array behind the UART.

    For build-flow smoke tests (a quick ULX3S build, the iCE40 DSP mapping): every
    ``rows + cols + 1`` received bytes form one operand beat (``rows`` weights, ``cols``
    activations, then a byte whose bit 0 is ``last``); every result's low accumulator
    byte is sent back. Same ports as ``BoardTop``; not a protocol anyone should use.

    Parameters
    ----------
    config : AcceleratorConfig
        Array shape, accumulator width, clock and baud; ``config.ice40`` selects the
        SB_MAC16 multipliers.
    """
    def __init__(self, config):
        self._config = config
        super().__init__({"uart_rx": In(1, init=1), "uart_tx": Out(1, init=1)})

    def elaborate(self, platform):
        from .systolic import SystolicArray
        from .uart import UARTReceiver, UARTTransmitter, baud_divisor
        cfg = self._config
        m = Module()
        divisor = baud_divisor(cfg.clock_hz, cfg.baud)
        m.submodules.rx = rx = UARTReceiver(divisor)
        m.submodules.tx = tx = UARTTransmitter(divisor)
        m.submodules.array = array = SystolicArray(
            cfg.rows, cfg.cols, cfg.acc_width, mac="ice40" if cfg.ice40 else "generic")
        m.d.comb += [rx.rx.eq(self.uart_rx), self.uart_tx.eq(tx.tx)]

        n = cfg.rows + cfg.cols + 1
        shift = Signal(8 * n)
        count = Signal(range(n + 1))
        beat = array.i_stream.payload
        m.d.comb += [
            beat.w.as_value().eq(shift[:8 * cfg.rows]),
            beat.x.as_value().eq(shift[8 * cfg.rows:8 * (cfg.rows + cfg.cols)]),
            beat.last.eq(shift[-8]),
            array.i_stream.valid.eq(count == n),
            rx.o.ready.eq(count != n),
        ]
        with m.If(rx.o.valid & rx.o.ready):
            m.d.sync += [shift.eq(Cat(shift[8:], rx.o.payload)), count.eq(count + 1)]
        with m.If(array.i_stream.valid & array.i_stream.ready):
            m.d.sync += count.eq(0)
        m.d.comb += [
            tx.i.payload.eq(array.o_stream.payload.acc[:8]),
            tx.i.valid.eq(array.o_stream.valid),
            array.o_stream.ready.eq(tx.i.ready),
        ]
        return m


def _icebreaker_platform():
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    return ICEBreakerPlatform()


def _ulx3s_85f_platform():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    class ULX3S85FBuildPlatform(ULX3S_85F_Platform):
        # amaranth-boards lists openFPGALoader as required even to build; it is only
        # needed to program the board (fpgacnn build --program looks for it then).
        @property
        def required_tools(self):
            return [tool for tool in super().required_tools if tool != "openFPGALoader"]

    return ULX3S85FBuildPlatform()


def _full_design(config):
    from .top import BoardTop
    return BoardTop(config)


def board_pipeline(config):
    """The name and :class:`~.config.PipelineSpec` of the layer pipeline for the board
    of ``config`` (its :data:`~.config.PIPELINES` entry); ValueError if it has none."""
    from .config import PIPELINES
    for name, spec in PIPELINES.items():
        if spec.board == config.name:
            return name, spec
    raise ValueError(f"board config {config.name} has no layer pipeline (pipelines: "
                     f"{', '.join(f'{n} on {s.board}' for n, s in PIPELINES.items())})")


def pipeline_board_top(config, *, debug=False):
    """``BoardTop`` around the board's layer pipeline (:func:`board_pipeline`), built for
    ``config``'s clock and link; its link and identity use the pipeline's
    :func:`~.pipeline.host_config` (``debug``: as ``BoardTop``'s, for the simulated
    board)."""
    from .pipeline import PipelineCore, host_config
    from .top import BoardTop
    name, spec = board_pipeline(config)
    host = host_config(name, spec.shape, config)
    return BoardTop(host, core=PipelineCore(spec.shape, host), debug=debug)


def _pipeline_design(config):
    return pipeline_board_top(config)


#: What goes inside the board top: the real accelerator, the board's layer pipeline
#: (one network's layer shapes, ``hw/pipeline.py``), or the build-flow smoke test.
DESIGNS = {"full": _full_design, "pipeline": _pipeline_design, "array": ArraySmokeTop}


@dataclass(frozen=True)
class Board:
    """One supported board: its platform, its board top, its configuration, its programmer.

    Attributes
    ----------
    name : str
        Board name, as ``fpgacnn build --board`` takes it.
    family : str
        ``"ice40"`` or ``"ecp5"``: which tools, resources and bitstream format.
    platform : callable
        Returns the amaranth-boards platform.
    wrapper : type
        The board top (PLL, reset, UART pins) around the accelerator.
    config_name : str
        The board's :data:`~fpgacnn.hw.config.CONFIGS` entry.
    loader_board : str
        The board's name in openFPGALoader (``-b``), which programs it
        (:mod:`~fpgacnn.hw.programmer`).
    seed : int
        nextpnr placement seed of a build that does not name one: one at which the
        board's design meets its clock (Fmax varies with the seed by several MHz;
        README, "Build", has the measured seeds).
    """
    name: str
    family: str
    platform: Callable
    wrapper: type
    config_name: str
    loader_board: str
    seed: int = 1

    @property
    def config(self):
        """The board's default :class:`~fpgacnn.hw.config.AcceleratorConfig`."""
        from .config import get_config
        return get_config(self.config_name)

    @property
    def bitstream_name(self):
        """File name of the bitstream for ``top`` (icepack's ``.bin``, ecppack's ``.bit``)."""
        return "top.bin" if self.family == "ice40" else "top.bit"

    def make(self, config=None, *, design="full"):
        """The platform and the board top with ``design`` inside, ready for ``platform.build``.

        Parameters
        ----------
        config : AcceleratorConfig, optional
            Default: :attr:`config`. Its ``clock_hz`` must be exactly reachable by the PLL.
        design : str
            A key of :data:`DESIGNS`: ``"full"`` (``BoardTop``, the accelerator),
            ``"pipeline"`` (``BoardTop`` around the board's layer pipeline,
            :func:`board_pipeline`) or ``"array"`` (:class:`ArraySmokeTop`).

        Returns
        -------
        (platform, board top, config)

        Raises
        ------
        ValueError
            For an unknown design, a clock the PLL cannot make or a baud rate the UART
            cannot make from it; raised before any gateware object is created, so no
            "created but never used" warning follows.
        """
        from .uart import baud_divisor
        config = self.config if config is None else config
        if design not in DESIGNS:
            raise ValueError(f"design must be one of {', '.join(DESIGNS)}, not {design!r}")
        self.wrapper.pll_settings(config.clock_hz)
        baud_divisor(config.clock_hz, config.baud)      # both designs' UART needs one
        return self.platform(), self.wrapper(config, top=DESIGNS[design](config)), config


#: Board name -> :class:`Board`.
BOARDS = {board.name: board for board in (
    Board("icebreaker", "ice40", _icebreaker_platform, ICEBreakerBoard, "icebreaker",
          "ice40_generic"),
    Board("ulx3s-85f", "ecp5", _ulx3s_85f_platform, ULX3SBoard, "ulx3s-85f",
          "ulx3s", seed=2),
)}


def get_board(name):
    """The :class:`Board` called ``name``; ValueError naming the choices otherwise."""
    try:
        return BOARDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown board {name!r}; choose one of {', '.join(BOARDS)}") \
            from None
