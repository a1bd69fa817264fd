"""The link's response queue: responses on their way to the UART, then fill bytes.

See :class:`ResponseQueue`; the padding is defined in :mod:`.protocol`.
"""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from . import protocol as proto
from .memories import Ram

__all__ = ["ResponseQueue", "RESPONSE_QUEUE_BYTES"]

#: Response bytes the queue holds: a RESULT of 10 logits and 6 counters (41 bytes, what
#: ``fpgacnn bench`` asks for on LeNet-5) fits whole, so the link takes the next request
#: as soon as the response is computed.
RESPONSE_QUEUE_BYTES = 64


class ResponseQueue(wiring.Component):
    """Hold the encoder's responses (a FIFO: block RAM on the iCE40, LUT RAM on the
    ECP5) until the UART sends them, and send ``pad_bytes`` fill bytes after each once
    the queue has run empty.

    The encoder writes a response at its own pace (one byte per cycle or two) instead of
    the UART's, so it is done, and the link takes the next request, once the response's
    last byte is queued rather than sent: the RUN that follows a RESULT starts while the
    RESULT's answer is still on the wire. A response longer than the queue holds the
    encoder until the rest fits.

    Fill bytes (:data:`protocol.FILL_BYTE`) go out only while the queue is empty,
    between a response's ``done`` and the next response's ``start``: never inside a
    response, and cut short by the next one.

    Latency: a byte written into an empty queue is on ``o`` 2 cycles later (the write
    pointer, then the block RAM's read). Throughput: one byte per cycle either way.

    Parameters
    ----------
    pad_bytes : int
        Fill bytes after each response (0: none).
    depth : int
        Bytes the queue holds, a power of two (default :data:`RESPONSE_QUEUE_BYTES`).

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
        if not isinstance(depth, int) or depth < 2 or depth & (depth - 1):
            raise ValueError(f"depth must be a power of two >= 2, not {depth!r}")
        self._pad_bytes, self._depth = pad_bytes, depth
        super().__init__({
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
            "start": In(1), "done": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        # A FIFO of its own rather than SyncFIFOBuffered: no output register behind the
        # block RAM's and no level counter (the UP5K is full).
        depth = self._depth
        # A read never meets a write of its byte: reads need the queue non-empty, writes
        # non-full, and the pointers' bytes are equal only when it is one or the other.
        m.submodules.mem = mem = Ram(unsigned(8), depth, rw_exclusive=True)
        wport, rport = mem.wr, mem.rd[0]
        # Pointers with a wrap bit: equal when empty, differing only in it when full.
        # ``empty`` is a flip-flop loaded with the next pointers' compare: the UART's
        # handshake starts from registers.
        wp, rp = Signal(range(2 * depth)), Signal(range(2 * depth))
        wp_next, rp_next = Signal.like(wp), Signal.like(rp)
        empty, full = Signal(init=1), Signal()
        queued = Signal()                       # rport.data holds the byte ``o`` offers
        taken = self.o.valid & self.o.ready
        m.d.comb += [
            full.eq((wp[:-1] == rp[:-1]) & (wp[-1] != rp[-1])),
            wport.addr.eq(wp[:-1]), wport.data.eq(self.i.payload),
            wport.en.eq(self.i.valid & ~full), self.i.ready.eq(~full),
            rport.addr.eq(rp[:-1]), rport.en.eq((~queued | taken) & ~empty),
            wp_next.eq(wp + wport.en), rp_next.eq(rp + rport.en),
        ]
        m.d.sync += [wp.eq(wp_next), rp.eq(rp_next), empty.eq(wp_next == rp_next)]
        with m.If(rport.en):
            m.d.sync += queued.eq(1)
        with m.Elif(taken):
            m.d.sync += queued.eq(0)

        pad_left = Signal(range(self._pad_bytes + 1))
        padding = Signal()                      # pad_left != 0 and no response under way
        m.d.comb += [
            # (empty: a byte written as the response ended is still ahead of the fill)
            self.o.valid.eq(queued | (padding & empty)),
            self.o.payload.eq(Mux(queued, rport.data, proto.FILL_BYTE)),
            self.busy.eq(~empty | queued | padding),
        ]
        with m.If(taken & ~queued):
            m.d.sync += [pad_left.eq(pad_left - 1), padding.eq(pad_left != 1)]
        with m.If(self.done):
            m.d.sync += [pad_left.eq(self._pad_bytes), padding.eq(self._pad_bytes != 0)]
        with m.If(self.start):
            m.d.sync += padding.eq(0)
        return m
