"""UART 8N1 receiver and transmitter with byte streams.

One bit lasts ``divisor`` clock cycles (:func:`baud_divisor`: the board's clock over its
baud rate, rounded). Bytes go LSB first: a low start bit, 8 data bits, a high stop bit.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["baud_divisor", "UARTReceiver", "UARTTransmitter"]

#: Largest baud-rate error (both ends together) that still samples every bit of a byte
#: inside its eye; half a bit over 10 bits is 5 %, keep a margin for the other end.
MAX_BAUD_ERROR = 0.02


def baud_divisor(clock_hz, baud):
    """Clock cycles per bit for ``baud`` at ``clock_hz``.

    Raises
    ------
    ValueError
        If the nearest integer divisor is below 4 (too few samples per bit) or misses
        ``baud`` by more than 2 %; the message names both rates.
    """
    if clock_hz <= 0 or baud <= 0:
        raise ValueError(f"clock {clock_hz} Hz and baud rate {baud} must be positive")
    divisor = round(clock_hz / baud)
    if divisor < 4:
        raise ValueError(f"{baud} baud at {clock_hz} Hz gives {clock_hz / baud:.2f} clocks "
                         f"per bit; the UART needs at least 4, lower the baud rate")
    error = abs(clock_hz / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ValueError(f"{baud} baud at {clock_hz} Hz: nearest divisor {divisor} gives "
                         f"{clock_hz / divisor:.0f} baud ({error:.1%} off, over "
                         f"{MAX_BAUD_ERROR:.0%}); pick a baud rate that divides the clock")
    return divisor


def _check_divisor(divisor):
    if not isinstance(divisor, int) or divisor < 4:
        raise ValueError(f"UART divisor must be an integer >= 4 clocks per bit, "
                         f"not {divisor!r}")


class UARTReceiver(wiring.Component):
    """8N1 receiver: a two-flop synchroniser, start-bit check, mid-bit sampling.

    A falling edge starts a byte; the start bit is checked again half a bit later (so a
    glitch shorter than that is ignored), then each data bit and the stop bit are
    sampled in the middle of their bit time. A byte whose stop bit is low (framing
    error, e.g. a break) is dropped and the receiver waits for the line to go high.

    Sampling point: the edge is seen 0..1 cycle after it crosses the synchroniser (the
    line is asynchronous), and bit ``k`` is sampled ``divisor // 2 + k * divisor``
    cycles after that, so each sample lies 0..1 cycle after (odd divisor: within half a
    cycle of) its bit's centre. The stop bit's sample (bit 9) is the one a baud mismatch
    moves most: at 4 clocks per bit it stays inside its bit for a sender up to 1/39
    (2.5 %) fast or 2/38 (5 %) slow, whatever the phase (``tests/test_uart.py`` drives
    an asynchronous line at +-2 %).

    Latency: the byte is offered in the middle of its stop bit, about
    ``9.5 * divisor + 3`` cycles after the start edge. Throughput: one byte per
    ``10 * divisor`` cycles, the line rate. ``o`` is not held back: a byte not taken
    before the next one completes is overwritten (the link takes every byte within a
    cycle or two).

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (>= 4).

    Attributes
    ----------
    rx : In(1)
        The serial input pin (asynchronous to the clock).
    o : Out(stream.Signature(8))
        Received bytes.
    busy : Out(1)
        A byte is being received.
    """

    def __init__(self, divisor):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        div = self._divisor
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)

        timer = Signal(range(div))
        bit = Signal(range(8))
        shreg = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(div // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(div - 1), bit.eq(0)]
                    m.next = "DATA"
                    with m.If(rx):          # a glitch, not a start bit
                        m.next = "IDLE"
            with m.State("DATA"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(div - 1), shreg.eq((shreg >> 1) | (rx << 7)),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(rx):
                        m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "BREAK"
            with m.State("BREAK"):
                m.d.comb += self.busy.eq(1)
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UARTTransmitter(wiring.Component):
    """8N1 transmitter.

    Latency: the start bit begins the cycle after a byte is taken. Throughput: one byte
    per ``10 * divisor`` cycles: ``i.ready`` is high between bytes and in the last cycle
    of a stop bit, so back-to-back bytes leave no idle cycle between them.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (>= 4).

    Attributes
    ----------
    i : In(stream.Signature(8))
        Bytes to send.
    tx : Out(1)
        The serial output pin, high when idle.
    busy : Out(1)
        A byte is on the line.
    """

    def __init__(self, divisor):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "i": In(stream.Signature(8)),
            "tx": Out(1, init=1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        div = self._divisor
        timer = Signal(range(div))
        bits = Signal(range(11))
        shreg = Signal(10, init=1)   # bit 0 is on the line

        m.d.comb += [self.tx.eq(shreg[0]), self.busy.eq(bits != 0),
                     self.i.ready.eq((bits == 0) | ((bits == 1) & (timer == 0)))]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [shreg.eq(self.i.payload.shift_left(1) | (1 << 9)),
                         bits.eq(10), timer.eq(div - 1)]
        with m.Elif(bits != 0):
            m.d.sync += timer.eq(timer - 1)
            with m.If(timer == 0):
                m.d.sync += [timer.eq(div - 1), bits.eq(bits - 1),
                             shreg.eq((shreg >> 1) | (1 << 9))]
        return m
