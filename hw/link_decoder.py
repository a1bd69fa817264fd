"""The link's frame decoder: request bytes → header and argument registers, payload bytes.

See :class:`FrameDecoder`; the frame format is defined in :mod:`.protocol`.
"""

import functools

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from . import protocol as proto
from .link_crc import CrcFeed, crc_next

__all__ = ["FrameDecoder"]


class FrameDecoder(wiring.Component):
    """Receive one request frame at a time and feed its bytes to the CRC engine.

    Bytes before a sync byte are skipped. Of a frame, the opcode and length go into
    ``opcode``/``length``, the first :data:`protocol.ARGS_BYTES` payload bytes into
    ``args``, the rest out on ``data``; every byte after the sync byte goes to ``crc``.
    ``end`` pulses once the frame's CRC bytes have reached the CRC register, so the
    frame can be checked; a frame whose next byte does not come within ``timeout``
    cycles is dropped with a ``truncated`` pulse instead. Either way the decoder then
    waits, taking no bytes, until ``resume`` (the response has been sent); bytes that
    arrive meanwhile stay in the FIFO in front of ``rx``.

    The time-out is prescaled: a free-running LFSR (no carry chain) and a short counter
    of its ticks since the last byte, instead of a wide counter that every byte resets.
    The frame is dropped between ``timeout`` and ``timeout + 2 * period`` cycles after
    its last byte, never earlier.

    Latency and throughput: one byte per cycle while a frame is awaited or received;
    ``end`` comes 2 cycles after the last CRC byte is taken (the CRC engine's latency).

    Parameters
    ----------
    timeout : int
        Cycles between two bytes of a frame before it is dropped (>= 2).

    Attributes
    ----------
    rx : In(stream.Signature(8))
        Request bytes; ready only while a frame is awaited or received (``rx.ready``
        comes from flip-flops: it feeds the FIFO's read logic).
    crc : Out(CrcFeed)
    opcode : Out(8), length : Out(16), args : Out(ARGS_BYTES * 8)
        The frame's header fields and argument bytes (byte 0 = LSBs), held until the
        next frame begins.
    data : Out(stream.Signature(8, always_ready=True))
        Payload bytes after the arguments, one per received byte.
    begin : Out(1)
        Pulse: a sync byte was taken, a frame begins.
    end : Out(1)
        Pulse: the frame is complete and ``crc`` holds its residue.
    truncated : Out(1)
        Pulse: the frame timed out.
    resume : In(1)
        Pulse: the answer to the frame is sent; await the next one.
    idle : Out(1)
        Awaiting a frame.
    """

    def __init__(self, timeout):
        if not isinstance(timeout, int) or timeout < 2:
            raise ValueError(f"frame timeout must be an integer >= 2 cycles, not {timeout!r}")
        self._timeout = timeout
        super().__init__({
            "rx": In(stream.Signature(8)),
            "crc": Out(CrcFeed()),
            "opcode": Out(8),
            "length": Out(16),
            "args": Out(proto.ARGS_BYTES * 8),
            "data": Out(stream.Signature(8, always_ready=True)),
            "begin": Out(1),
            "end": Out(1),
            "truncated": Out(1),
            "resume": In(1),
            "idle": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        byte_in, got = self.rx.payload, self.rx.valid
        left = Signal(16)                       # payload bytes still to come
        idx = Signal(range(proto.ARGS_BYTES))   # header byte, argument byte
        # ``in_frame`` (HEADER .. CRC1) and ``idle`` (SYNC) are flip-flops kept with the
        # state, not decoded from it: ``rx.ready`` feeds the FIFO's read logic.
        in_frame = Signal()
        timed_out = in_frame & self._expired(m, in_frame, got)
        # A byte is consumed only in a state that uses it; after a time-out it is left for
        # SYNC (the FIFO keeps it), so it can start the next frame.
        m.d.comb += [
            self.rx.ready.eq((in_frame & ~timed_out) | self.idle),
            self.crc.data.eq(byte_in), self.crc.init.eq(crc_next(0, proto.REQUEST_SYNC)),
            self.data.payload.eq(byte_in),
        ]

        def take():
            """In a frame state: drop the frame on a time-out, else take a byte."""
            with m.If(timed_out):
                m.d.comb += self.truncated.eq(1)
                m.d.sync += in_frame.eq(0)
                m.next = "ANSWER"
            return m.Elif(got)

        with m.FSM():
            with m.State("SYNC"):
                with m.If(got & (byte_in == proto.REQUEST_SYNC)):
                    m.d.comb += [self.crc.load.eq(1), self.begin.eq(1)]
                    m.d.sync += [self.idle.eq(0), in_frame.eq(1), idx.eq(0),
                                 self.opcode.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                with take():
                    m.d.comb += self.crc.valid.eq(1)
                    m.d.sync += idx.eq(idx + 1)
                    self._header_byte(m, idx, left)
            # Payload: the first ARGS_BYTES into ``args``, the rest out on ``data``.
            with m.State("ARGS"):
                with take():
                    m.d.comb += self.crc.valid.eq(1)
                    m.d.sync += [left.eq(left - 1), idx.eq(idx + 1)]
                    with m.Switch(idx):
                        for i in range(proto.ARGS_BYTES):
                            with m.Case(i):
                                m.d.sync += self.args[8 * i:8 * i + 8].eq(byte_in)
                    with m.If(left == 1):
                        m.next = "CRC0"
                    with m.Elif(idx == proto.ARGS_BYTES - 1):
                        m.next = "DATA"
            with m.State("DATA"):
                with take():
                    m.d.comb += [self.crc.valid.eq(1), self.data.valid.eq(1)]
                    m.d.sync += left.eq(left - 1)
                    with m.If(left == 1):
                        m.next = "CRC0"
            with m.State("CRC0"):
                with take():
                    m.d.comb += self.crc.valid.eq(1)
                    m.next = "CRC1"
            with m.State("CRC1"):
                with take():
                    m.d.comb += self.crc.valid.eq(1)
                    m.d.sync += in_frame.eq(0)
                    m.next = "CRC_WAIT"
            with m.State("CRC_WAIT"):                # for the last byte to reach the CRC
                m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.end.eq(1)
                m.next = "ANSWER"
            with m.State("ANSWER"):
                with m.If(self.resume):
                    m.d.sync += self.idle.eq(1)
                    m.next = "SYNC"
        return m

    def _header_byte(self, m, idx, left):
        """HEADER: byte ``idx`` of the opcode and length (the sync byte is not counted)."""
        byte_in, length = self.rx.payload, self.length
        with m.Switch(idx):
            with m.Case(0):
                m.d.sync += self.opcode.eq(byte_in)
            with m.Case(1):
                m.d.sync += length[:8].eq(byte_in)
            with m.Case(2):
                m.d.sync += [length[8:].eq(byte_in), idx.eq(0),
                             left.eq(Cat(length[:8], byte_in))]
                m.next = "ARGS"
                with m.If((byte_in == 0) & (length[:8] == 0)):
                    m.next = "CRC0"

    def _expired(self, m, in_frame, got):
        """A flip-flop that rises ``timeout`` to ``timeout + 2 * period`` cycles after the
        last byte of a frame (see the class docs)."""
        width, tap, period = _prescaler_lfsr(max(2, self._timeout.bit_length() - 3))
        ticks_max = -(-self._timeout // period) + 1
        prescaler = Signal(width, init=1)
        ticks = Signal(range(ticks_max + 1))
        expired = Signal()                      # ticks == ticks_max, as a flip-flop
        m.d.sync += prescaler.eq(Cat(prescaler[1:], prescaler[0] ^ prescaler[tap]))
        with m.If(got | ~in_frame):
            m.d.sync += [ticks.eq(0), expired.eq(0)]
        with m.Elif((prescaler == 1) & ~expired):
            m.d.sync += [ticks.eq(ticks + 1), expired.eq(ticks == ticks_max - 1)]
        return expired


@functools.cache
def _prescaler_lfsr(width):
    """``(width, tap, period)`` of the two-tap shift register (``s' = s >> 1 | (s[0] ^
    s[tap]) << width - 1``, from 1) with the longest period, found by running it."""
    best = (width, 1, 0)
    for tap in range(1, width):
        state, period = 1, 0
        while True:
            state = (state >> 1) | (((state ^ (state >> tap)) & 1) << (width - 1))
            period += 1
            if state == 1 or period > 1 << width:
                break
        if state == 1 and period > best[2]:
            best = (width, tap, period)
    return best
