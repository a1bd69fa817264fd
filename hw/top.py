"""``BoardTop``: UART + link + core, the board-independent top level.

Board files (``hw/boards.py``) wrap it with a PLL and pins; the simulated board
(``sim/simboard.py``) runs it under Verilator as it is.
"""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .link import Link
from .uart import UARTReceiver, UARTTransmitter, baud_divisor

__all__ = ["BoardTop"]


class BoardTop(wiring.Component):
    """The accelerator behind its UART: everything of a board except clocks and pins.

    Runs in the ``sync`` domain at ``config.clock_hz``; the UART bit time is
    ``config.clock_hz / config.baud`` cycles (:func:`uart.baud_divisor`).

    Received bytes pass through a ``config.rx_fifo_bytes``-byte FIFO (the receive queue,
    block RAM) before the link, so the host may pipeline requests: the link stops taking
    bytes while it commits a write, waits for a run or sends a response, and the FIFO
    keeps what the host sent meanwhile. It cannot overflow while the host obeys the
    window rule of :mod:`.protocol`, and it is the host's credit: sized to cover the USB
    round trip, it makes throughput independent of it. Latency: 2 cycles more per byte
    (far below a bit).

    Parameters
    ----------
    config : AcceleratorConfig
    core : wiring.Component, optional
        A component with the signature :class:`~.program.HostInterface`; default
        ``Core(config)``. Tests pass a small stand-in.
    debug : bool
        Add an ``idle`` output (nothing received, sent or computing) so that a
        simulator can skip the board's idle time.
    rx_fifo : int, optional
        Bytes of the RX FIFO (default ``config.rx_fifo_bytes``, which the board reports
        to the host; tests shrink it to provoke an overrun).

    Attributes
    ----------
    uart_rx : In(1)
        Serial input (host → board), idle high.
    uart_tx : Out(1)
        Serial output (board → host), idle high.
    """

    def __init__(self, config, *, core=None, debug=False, rx_fifo=None):
        if rx_fifo is None:
            rx_fifo = config.rx_fifo_bytes
        if not isinstance(rx_fifo, int) or rx_fifo < 2:
            raise ValueError(f"rx_fifo must be an integer >= 2 bytes, not {rx_fifo!r}")
        self._rx_fifo = rx_fifo
        self._config = config
        self._divisor = baud_divisor(config.clock_hz, config.baud)
        if core is None:
            from .core import Core
            core = Core(config)
        self._core = core
        ports = {"uart_rx": In(1, init=1), "uart_tx": Out(1, init=1)}
        if debug:
            ports["idle"] = Out(1)
        super().__init__(ports)

    @property
    def core(self):
        return self._core

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = rx = UARTReceiver(self._divisor)
        m.submodules.uart_tx = tx = UARTTransmitter(self._divisor)
        m.submodules.link = link = Link(self._config)
        m.submodules.core = core = self._core

        # +1: SyncFIFOBuffered keeps one entry in its output register, so the memory is
        # exactly rx_fifo_bytes deep (whole 4 kbit EBRs) and the window still fits.
        m.submodules.rx_fifo = fifo = SyncFIFOBuffered(width=8, depth=self._rx_fifo + 1)

        m.d.comb += [rx.rx.eq(self.uart_rx), self.uart_tx.eq(tx.tx)]
        # The receiver's byte is taken at once while the FIFO has room; a host that breaks
        # the window rule loses bytes here (answered as BAD_CRC/BAD_LENGTH, or completed
        # by the host's fill), never hangs.
        m.d.comb += [fifo.w_data.eq(rx.o.payload), fifo.w_en.eq(rx.o.valid),
                     rx.o.ready.eq(fifo.w_rdy),
                     link.rx.payload.eq(fifo.r_data), link.rx.valid.eq(fifo.r_rdy),
                     fifo.r_en.eq(link.rx.ready)]
        wiring.connect(m, link.tx, tx.i)
        wiring.connect(m, link.core, core)
        if "idle" in self.signature.members:
            m.d.comb += self.idle.eq(link.idle & ~rx.busy & ~tx.busy & ~tx.i.valid &
                                     ~rx.o.valid & (fifo.level == 0) & ~core.busy)
        return m
