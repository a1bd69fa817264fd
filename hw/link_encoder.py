"""The link's response encoder: status + payload → a response frame on the UART.

See :class:`ResponseEncoder`; the frame format is defined in :mod:`.protocol`.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from . import protocol as proto
from .link_crc import CrcFeed, crc_next
from .program import ReadCommand, ReadData, ReadSpace

__all__ = ["ResponseEncoder", "response_bytes_max"]


def response_bytes_max(config):
    """The longest response payload of a board built with ``config``."""
    return max(proto.struct_bytes(proto.Identity), 2,
               config.max_logits + 4 * (1 + config.max_layers))


class ResponseEncoder(wiring.Component):
    """Send one response frame: header, payload, CRC.

    The payload comes from one of two sources, chosen by the request's opcode:
    IDENTIFY's and RESULT's are read from the core as they go out (IDENTIFY: IDENTITY
    reads of 4 bytes, the :class:`~.protocol.Identity` the core keeps in its results
    memory; RESULT: ``n_logits`` LOGITS reads of 1 byte, then ``n_counters`` COUNTERS
    reads of 4 bytes; no result buffer), any other's from ``crc_value`` as the header
    starts (a WRITE's data CRC). The CRC engine is loaded with the value after the constant
    sync byte as that byte goes out, then fed every byte up to the CRC.

    The bytes go into the link's :class:`~.link_queue.ResponseQueue`, which also sends
    the fill bytes after the frame.

    Latency and throughput: the header goes out at one byte per cycle that ``tx`` is
    ready, the payload at one byte per cycle plus 3 cycles per read from the core, and
    the CRC bytes wait a cycle for the CRC's 2-cycle latency. ``done``
    pulses as the last CRC byte is taken.

    Parameters
    ----------
    config : AcceleratorConfig
        The result buffer sizes.

    Attributes
    ----------
    start : In(1)
        Pulse: send a response with ``status`` and ``length`` payload bytes.
    status : In(Status), length : In(range(response_bytes_max + 1))
    opcode : In(8)
        The request's opcode, echoed.
    identity, result : In(1)
        The payload is the identity; the payload is the run's result (held during
        the response).
    args : In(ARGS_BYTES * 8)
        The request's arguments (RESULT: what to read).
    crc : Out(CrcFeed); crc_value : In(16)
        The CRC engine.
    tx : Out(stream.Signature(8))
        The response's bytes, to the response queue.
    rd : Out(stream.Signature(ReadCommand)); rd_data : In(stream.Signature(ReadData))
        The core's result reads (its other host interface members are the command
        handler's).
    done : Out(1)
        Pulse: the response's last byte is taken.
    """

    def __init__(self, config):
        self._config = config
        self._length_max = response_bytes_max(config)
        super().__init__({
            "start": In(1), "status": In(proto.Status),
            "length": In(range(self._length_max + 1)),
            "opcode": In(8), "identity": In(1), "result": In(1),
            "args": In(proto.ARGS_BYTES * 8),
            "crc": Out(CrcFeed()), "crc_value": In(16),
            "tx": Out(stream.Signature(8)),
            "rd": Out(stream.Signature(ReadCommand)),
            "rd_data": In(stream.Signature(ReadData)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        cfg = self._config
        m = Module()
        res_args = proto.ResultArgs(self.args)
        status = Signal(proto.Status)
        left = Signal(range(self._length_max + 1))    # payload bytes still to send
        idx = Signal(range(proto.RESPONSE_HEADER_BYTES))   # header byte, CRC byte
        word = Signal(32)                       # payload bytes, LSB first
        word_left = Signal(3)
        fetch_idx = Signal(range(max(cfg.max_logits, 1 + cfg.max_layers,
                                     len(proto.identity_words(cfg)))))
        counters_phase = Signal()
        just_sent = Signal()                    # a byte went: the CRC is 2 cycles late
        m.d.sync += just_sent.eq(self.tx.valid & self.tx.ready)
        in_hdr, in_crc = Signal(), Signal()
        self._tx_byte(m, status, left, idx, in_hdr, in_crc, word)
        m.d.comb += [
            self.crc.data.eq(self.tx.payload),
            self.crc.init.eq(crc_next(0, proto.RESPONSE_SYNC)),
            self.rd.payload.addr.eq(fetch_idx),
            self.rd.payload.space.eq(Mux(self.identity, ReadSpace.IDENTITY,
                                         Mux(counters_phase, ReadSpace.COUNTERS,
                                             ReadSpace.LOGITS))),
        ]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [status.eq(self.status), left.eq(self.length), idx.eq(0),
                                 word_left.eq(0), fetch_idx.eq(0),
                                 counters_phase.eq(self.identity |
                                                   (res_args.n_logits == 0))]
                    m.next = "HEADER"
            # The header's first byte (the sync) is a constant: the CRC is loaded with its
            # value after it instead of processing it.
            with m.State("HEADER"):
                m.d.comb += [self.tx.valid.eq(1), in_hdr.eq(1)]
                with m.If(self.tx.ready):
                    m.d.comb += [self.crc.valid.eq(idx != 0), self.crc.load.eq(idx == 0)]
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == 0):
                        m.d.sync += word[:16].eq(self.crc_value)   # a WRITE's data CRC
                    with m.If(idx == proto.RESPONSE_HEADER_BYTES - 1):
                        m.d.sync += idx.eq(0)
                        m.next = "PAYLOAD"
                        with m.If(left == 0):
                            m.next = "CRC"
            with m.State("PAYLOAD"):
                with m.If((self.result | self.identity) & (word_left == 0)):
                    m.next = "FETCH"
                with m.Else():
                    m.d.comb += self.tx.valid.eq(1)
                    with m.If(self.tx.ready):
                        m.d.comb += self.crc.valid.eq(1)
                        m.d.sync += [left.eq(left - 1), word.eq(word >> 8),
                                     word_left.eq(word_left - 1)]
                        with m.If(left == 1):
                            m.next = "CRC"
            # The last logit is fetched when the bytes left to send are the counters' and
            # that logit's: 4 * n_counters + 1.
            with m.State("FETCH"):
                m.d.comb += self.rd.valid.eq(1)
                with m.If(self.rd.ready):
                    last_logit = (~counters_phase & (left[:2] == 1) &
                                  (left[2:] == res_args.n_counters))
                    m.d.sync += [fetch_idx.eq(Mux(last_logit, 0, fetch_idx + 1)),
                                 counters_phase.eq(counters_phase | last_logit),
                                 word_left.eq(Mux(counters_phase, 4, 1))]
                    m.next = "FETCH_WAIT"
            with m.State("FETCH_WAIT"):
                m.d.comb += self.rd_data.ready.eq(1)
                with m.If(self.rd_data.valid):
                    m.d.sync += word.eq(self.rd_data.payload.data)
                    m.next = "PAYLOAD"
            with m.State("CRC"):
                m.d.comb += [self.tx.valid.eq(~just_sent), in_crc.eq(1)]
                with m.If(self.tx.valid & self.tx.ready):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx[0]):
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
        return m

    def _tx_byte(self, m, status, left, idx, in_hdr, in_crc, word):
        """``tx.payload``: a multiplexer tree on few selects rather than one per state."""
        hdr = Signal(proto.ResponseHeader)
        m.d.comb += [hdr.sync.eq(proto.RESPONSE_SYNC), hdr.status.eq(status),
                     hdr.opcode.eq(self.opcode), hdr.length.eq(left)]
        raw = hdr.as_value()
        assert proto.RESPONSE_HEADER_BYTES == 5, "idx[2] selects header byte 4"
        hdr_byte = Mux(idx[2], raw[32:40], Mux(idx[1], Mux(idx[0], raw[24:32], raw[16:24]),
                                                Mux(idx[0], raw[8:16], raw[:8])))
        crc = self.crc_value
        m.d.comb += self.tx.payload.eq(
            Mux(in_hdr, hdr_byte,
                Mux(in_crc, Mux(idx[0], crc[8:], crc[:8]),
                    word[:8])))

