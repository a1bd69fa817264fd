"""The link's response queue: responses on their way to the UART, then fill bytes.

See :class:`ResponseQueue`; the padding is defined in :mod:`.protocol`.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from . import protocol as proto

__all__ = ["ResponseQueue", "RESPONSE_QUEUE_BYTES"]

#: Response bytes the queue holds: a RESULT of 10 logits and 6 counters (41 bytes, what
#: ``fpgacnn bench`` asks for on LeNet-5) fits whole, so the link takes the next request
#: as soon as the response is computed.
RESPONSE_QUEUE_BYTES = 64


class ResponseQueue(wiring.Component):
    """Hold the encoder's responses (a block RAM FIFO) until the UART sends them, and
    send ``pad_bytes`` fill bytes after each once the queue has run empty.

    The encoder writes a response at its own pace (one byte per cycle or two) instead of
    the UART's, so it is done, and the link takes the next request, once the response's
    last byte is queued rather than sent: the RUN that follows a RESULT starts while the
    RESULT's answer is still on the wire. A response longer than the queue holds the
    encoder until the rest fits.

    Fill bytes (:data:`protocol.FILL_BYTE`) go out only while the queue is empty,
    between a response's ``done`` and the next response's ``start``: never inside a
    response, and cut short by the next one.

    Latency: a queued byte reaches ``o`` 2 cycles after it is written (the FIFO's block
    RAM read and output register). Throughput: one byte per cycle either way.

    Parameters
    ----------
    pad_bytes : int
        Fill bytes after each response (0: none).
    depth : int
        Bytes the queue holds (default :data:`RESPONSE_QUEUE_BYTES`).

    Attributes
    ----------
    i : In(stream.Signature(8))
        Response bytes from the encoder.
    o : Out(stream.Signature(8))
        Bytes to the UART transmitter.
    start, done : In(1)
        Pulses: a response begins (fill bytes stop); its last byte is queued (fill bytes
        follow it).
    busy : Out(1)
        Bytes are queued or fill bytes are due.
    """

    def __init__(self, pad_bytes, *, depth=RESPONSE_QUEUE_BYTES):
        if not isinstance(pad_bytes, int) or pad_bytes < 0:
            raise ValueError(f"pad_bytes must be a non-negative integer, not {pad_bytes!r}")
        if not isinstance(depth, int) or depth < 2:
            raise ValueError(f"depth must be an integer >= 2, not {depth!r}")
        self._pad_bytes, self._depth = pad_bytes, depth
        super().__init__({
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
            "start": In(1), "done": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        # +1: SyncFIFOBuffered keeps one entry in its output register.
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=8, depth=self._depth + 1)
        pad_left = Signal(range(self._pad_bytes + 1))
        padding = Signal()                      # pad_left != 0 and no response under way
        m.d.comb += [
            fifo.w_data.eq(self.i.payload), fifo.w_en.eq(self.i.valid),
            self.i.ready.eq(fifo.w_rdy),
            self.o.valid.eq(fifo.r_rdy | padding),
            self.o.payload.eq(Mux(fifo.r_rdy, fifo.r_data, proto.FILL_BYTE)),
            fifo.r_en.eq(self.o.ready),
            self.busy.eq((fifo.level != 0) | padding),
        ]
        with m.If(self.o.valid & self.o.ready & ~fifo.r_rdy):
            m.d.sync += [pad_left.eq(pad_left - 1), padding.eq(pad_left != 1)]
        with m.If(self.done):
            m.d.sync += [pad_left.eq(self._pad_bytes), padding.eq(self._pad_bytes != 0)]
        with m.If(self.start):
            m.d.sync += padding.eq(0)
        return m
