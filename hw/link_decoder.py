"""The link's frame decoder: request bytes → header and argument registers, payload bytes.

See :class:`FrameDecoder`; the frame format is defined in :mod:`.protocol`.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from . import protocol as proto
from .link_checker import above
from .link_crc import CrcFeed, crc_next

__all__ = ["FrameDecoder"]


class FrameDecoder(wiring.Component):
    """Receive one request frame at a time and feed its bytes to the CRC engine.

    Bytes before a sync byte are skipped. Of a frame, the opcode and length go into
    ``opcode``/``length``, the first :data:`protocol.ARGS_BYTES` payload bytes into
    ``args``, the rest out on ``data``; every byte after the sync byte goes to ``crc``.
    ``end`` pulses once the frame's CRC bytes have reached the CRC register, so the
    frame can be checked. The decoder then waits, taking no bytes, until ``resume`` (the
    response is queued); bytes that arrive meanwhile stay in the FIFO in front of
    ``rx``.

    A frame never times out (a host may pause mid-frame for any time, see
    :mod:`.protocol`). A header announcing more than :data:`protocol.MAX_PAYLOAD` bytes
    ends the frame at once (``end`` without its payload; the checker finds its CRC
    wrong), so no frame holds the decoder for more than
    :data:`protocol.MAX_REQUEST_BYTES`.

    Latency and throughput: one byte per cycle while a frame is awaited or received;
    ``end`` comes 2 cycles after the last CRC byte is taken (the CRC engine's latency).

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
    resume : In(1)
        Pulse: the answer to the frame is queued; await the next one.
    idle : Out(1)
        Awaiting a byte, of a frame or between frames: nothing to do until one comes.
    """

    def __init__(self):
        super().__init__({
            "rx": In(stream.Signature(8)),
            "crc": Out(CrcFeed()),
            "opcode": Out(8),
            "length": Out(16),
            "args": Out(proto.ARGS_BYTES * 8),
            "data": Out(stream.Signature(8, always_ready=True)),
            "begin": Out(1),
            "end": Out(1),
            "resume": In(1),
            "idle": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        byte_in, got = self.rx.payload, self.rx.valid
        left = Signal(range(proto.MAX_PAYLOAD + 1))     # payload bytes still to come
        idx = Signal(range(proto.ARGS_BYTES))   # header byte, argument byte
        # ``idle`` (SYNC .. CRC1: awaiting bytes) is a flip-flop kept with the state, not
        # decoded from it: ``rx.ready`` feeds the FIFO's read logic.
        m.d.comb += [
            self.rx.ready.eq(self.idle),
            self.crc.data.eq(byte_in), self.crc.init.eq(crc_next(0, proto.REQUEST_SYNC)),
            self.data.payload.eq(byte_in),
        ]

        def take():
            """In a frame state: a byte is taken."""
            return m.If(got)

        with m.FSM():
            with m.State("SYNC"):
                with m.If(got & (byte_in == proto.REQUEST_SYNC)):
                    m.d.comb += [self.crc.load.eq(1), self.begin.eq(1)]
                    m.d.sync += [idx.eq(0), self.opcode.eq(0)]
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
                    m.d.sync += self.idle.eq(0)
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
                # Longer than any request: end the frame now, its
                # payload is skipped as garbage (the checker answers it).
                with m.If(above(Cat(length[:8], byte_in), proto.MAX_PAYLOAD)):
                    m.d.sync += self.idle.eq(0)
                    m.next = "CRC_WAIT"
