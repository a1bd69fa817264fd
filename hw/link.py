"""The link: frame decoder, command handler and frame encoder between the UART and the core.

The wire format and the commands are defined in :mod:`.protocol`; this module is their
gateware. See :class:`Link`.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from . import protocol as proto
from .program import ReadSpace, Space

__all__ = ["Link", "WRITE_BEAT", "START_ARGS", "READ_REQUEST", "READ_DATA",
           "timeout_cycles"]

#: Payloads of the core's host interface (docs/architecture.md, "Core host interface").
WRITE_BEAT = data.StructLayout({"space": Space, "addr": 16, "data": 64})
START_ARGS = data.StructLayout({"image_base": 16})
READ_REQUEST = data.StructLayout({"space": ReadSpace, "addr": 8})
READ_DATA = data.StructLayout({"data": 32})


def timeout_cycles(config):
    """Clock cycles of :data:`protocol.FRAME_TIMEOUT_US` at ``config.clock_hz``."""
    return config.clock_hz * proto.FRAME_TIMEOUT_US // 1_000_000


class Link(wiring.Component):
    """Decode request frames from ``rx``, drive the core, answer on ``tx``.

    A request is received completely — its first :data:`protocol.ARGS_BYTES` payload
    bytes into a register, the WRITE chunks into a 512-byte buffer (one EBR) — and its
    CRC, length and arguments are checked before anything reaches the core, so a
    damaged frame never alters what is loaded. Bytes outside a frame are skipped until
    the next sync byte; a frame whose next byte does not come within ``timeout`` cycles
    is answered with ``TRUNCATED`` and forgotten. Every complete frame gets exactly one
    response (see :mod:`.protocol`).

    Latency and throughput: the frame decoder takes one byte per cycle (far above any
    UART rate). After the CRC, a WRITE commits its chunks at one per 17 cycles (8 buffer
    reads of 2 cycles plus the ``wr`` transfer, more if the core stalls), then answers.
    RUN answers as soon as ``start`` is taken; RESULT as soon as ``busy`` falls. A
    response is sent at one byte per cycle that ``tx`` is ready.

    Parameters
    ----------
    config : AcceleratorConfig
        Memory sizes (for the address checks) and the identity to report.
    timeout : int, optional
        Cycles between two bytes of a frame before it is dropped; default
        :func:`timeout_cycles` of ``config``.

    Attributes
    ----------
    rx : In(stream.Signature(8))
        Bytes from the UART receiver, through a FIFO (``BoardTop``): ready only while a
        frame is being received or awaited, i.e. not while a command executes or a
        response goes out; the FIFO holds what arrives meanwhile (the host's window
        rule in :mod:`.protocol` bounds it).
    tx : Out(stream.Signature(8))
        Bytes to the UART transmitter.
    wr, start, busy, rd, rd_data
        The core's host interface (docs/architecture.md), seen from the host side.
    idle : Out(1)
        Waiting for a frame, nothing in progress (lets a simulator skip idle time).
    """

    def __init__(self, config, *, timeout=None):
        if config.act_bytes % proto.CHUNK_BYTES or config.rows % 8:
            raise ValueError(f"config {config.name}: act_bytes {config.act_bytes} and rows "
                             f"{config.rows} must be multiples of 8 for 64-bit chunk writes")
        self._config = config
        self._timeout = timeout_cycles(config) if timeout is None else timeout
        if not isinstance(self._timeout, int) or self._timeout < 2:
            raise ValueError(f"frame timeout must be an integer >= 2 cycles, "
                             f"not {self._timeout!r}")
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "wr": Out(stream.Signature(WRITE_BEAT)),
            "start": Out(stream.Signature(START_ARGS)),
            "busy": In(1),
            "rd": Out(stream.Signature(READ_REQUEST)),
            "rd_data": In(stream.Signature(READ_DATA)),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        buf_depth = proto.MAX_CHUNKS * proto.CHUNK_BYTES

        m.submodules.crc = fcrc = proto.CRC.create()     # frame check, in and out
        m.submodules.dcrc = dcrc = proto.CRC.create()    # WRITE: the committed bytes
        m.submodules.buf = buf = Memory(shape=8, depth=buf_depth, init=[])
        wport = buf.write_port()
        rport = buf.read_port()

        opcode = Signal(8)
        length = Signal(16)
        count = Signal(16)                      # payload bytes received so far
        args = Signal(proto.ARGS_BYTES * 8)
        wargs = proto.WriteArgs(args)
        run_args = proto.RunArgs(args)
        res_args = proto.ResultArgs(args)
        hdr_idx = Signal(range(8))
        idle_timer = Signal(range(self._timeout + 1))

        loaded = Signal()                       # a layer program was written
        has_run = Signal()

        n_chunks = Signal(range(proto.MAX_CHUNKS + 1))
        chunk = Signal(64)
        chunk_idx = Signal(range(proto.MAX_CHUNKS + 1))
        ptr = Signal(range(buf_depth))

        status = Signal(proto.Status)
        # Responses are short (an identity, a CRC or a RESULT); no 16-bit counters needed.
        resp_max = max(proto.struct_bytes(proto.Identity), 2,
                       cfg.max_logits + 4 * (1 + cfg.max_layers))
        resp_len = Signal(range(resp_max + 1))
        resp_hdr = Signal(proto.ResponseHeader)
        out_idx = Signal(range(resp_max))
        word = Signal(32)
        word_left = Signal(3)
        fetch_idx = Signal(8)
        counters_phase = Signal()
        identity = proto.Identity.const(proto.identity_fields(cfg)).as_value()

        byte_in = Signal(8)
        receiving = Signal()                    # set by the frame-receiving states
        m.d.comb += [byte_in.eq(self.rx.payload), self.rx.ready.eq(receiving)]
        got = self.rx.valid

        space_end = Signal(17)
        with m.Switch(wargs.space):
            for space in Space:
                with m.Case(space):
                    m.d.comb += space_end.eq(proto.space_chunks(cfg, space))

        def respond(code, n=0):
            m.d.sync += [status.eq(code), resp_len.eq(n), out_idx.eq(0), hdr_idx.eq(0)]
            m.next = "RESP_HDR"

        m.d.comb += [resp_hdr.sync.eq(proto.RESPONSE_SYNC), resp_hdr.status.eq(status),
                     resp_hdr.opcode.eq(opcode), resp_hdr.length.eq(resp_len)]

        in_frame = Signal()
        with m.If(in_frame):
            with m.If(got):
                m.d.sync += idle_timer.eq(0)
            with m.Else():
                m.d.sync += idle_timer.eq(idle_timer + 1)
        timed_out = in_frame & (idle_timer == self._timeout)
        # A byte is consumed only in a state that uses it; after a time-out it is left for
        # SYNC (the FIFO keeps it), so it can start the next frame.
        m.d.comb += receiving.eq((in_frame & ~timed_out) | self.idle)

        with m.FSM():
            with m.State("SYNC"):
                m.d.comb += self.idle.eq(1)
                with m.If(got & (byte_in == proto.REQUEST_SYNC)):
                    m.d.comb += [fcrc.start.eq(1), fcrc.valid.eq(1), fcrc.data.eq(byte_in)]
                    m.d.sync += [hdr_idx.eq(0), opcode.eq(0), idle_timer.eq(0),
                                 count.eq(0), args.eq(0)]
                    m.next = "HEADER"

            with m.State("HEADER"):
                m.d.comb += in_frame.eq(1)
                with m.If(timed_out):
                    respond(proto.Status.TRUNCATED)
                with m.Elif(got):
                    m.d.comb += [fcrc.valid.eq(1), fcrc.data.eq(byte_in)]
                    m.d.sync += hdr_idx.eq(hdr_idx + 1)
                    with m.Switch(hdr_idx):
                        with m.Case(0):
                            m.d.sync += opcode.eq(byte_in)
                        with m.Case(1):
                            m.d.sync += length[:8].eq(byte_in)
                        with m.Case(2):
                            m.d.sync += length[8:].eq(byte_in)
                            m.next = "PAYLOAD"
                    with m.If((hdr_idx == 2) & (byte_in == 0) & (length[:8] == 0)):
                        m.next = "CRC0"

            with m.State("PAYLOAD"):
                m.d.comb += in_frame.eq(1)
                with m.If(timed_out):
                    respond(proto.Status.TRUNCATED)
                with m.Elif(got):
                    m.d.comb += [fcrc.valid.eq(1), fcrc.data.eq(byte_in)]
                    m.d.sync += count.eq(count + 1)
                    with m.If(count < proto.ARGS_BYTES):
                        m.d.sync += args.word_select(count[:2], 8).eq(byte_in)
                    with m.Elif(count < proto.MAX_PAYLOAD):
                        m.d.comb += [wport.addr.eq(count - proto.ARGS_BYTES),
                                     wport.data.eq(byte_in), wport.en.eq(1)]
                    with m.If(count == length - 1):
                        m.next = "CRC0"

            with m.State("CRC0"):
                m.d.comb += in_frame.eq(1)
                with m.If(timed_out):
                    respond(proto.Status.TRUNCATED)
                with m.Elif(got):
                    m.d.comb += [fcrc.valid.eq(1), fcrc.data.eq(byte_in)]
                    m.next = "CRC1"

            with m.State("CRC1"):
                m.d.comb += in_frame.eq(1)
                with m.If(timed_out):
                    respond(proto.Status.TRUNCATED)
                with m.Elif(got):
                    m.d.comb += [fcrc.valid.eq(1), fcrc.data.eq(byte_in)]
                    m.next = "CHECK"

            with m.State("CHECK"):
                payload_chunks = (length - proto.ARGS_BYTES) >> 3
                with m.If(~fcrc.match_detected):
                    respond(proto.Status.BAD_CRC)
                with m.Elif(length > proto.MAX_PAYLOAD):
                    respond(proto.Status.BAD_LENGTH)
                with m.Elif(opcode == proto.Opcode.IDENTIFY):
                    with m.If(length != 0):
                        respond(proto.Status.BAD_LENGTH)
                    with m.Else():
                        respond(proto.Status.OK, proto.struct_bytes(proto.Identity))
                with m.Elif(opcode == proto.Opcode.WRITE):
                    m.d.sync += n_chunks.eq(payload_chunks)
                    with m.If((length < proto.ARGS_BYTES + proto.CHUNK_BYTES) |
                              (length[:3] != proto.ARGS_BYTES % 8)):
                        respond(proto.Status.BAD_LENGTH)
                    with m.Elif(wargs.addr + payload_chunks > space_end):
                        respond(proto.Status.BAD_ARGUMENT)
                    with m.Elif(self.busy & (wargs.space != Space.IMAGE)):
                        respond(proto.Status.BUSY)
                    with m.Else():
                        m.d.comb += dcrc.start.eq(1)
                        m.d.sync += [ptr.eq(0), chunk_idx.eq(0)]
                        m.next = "COMMIT_RD"
                with m.Elif(opcode == proto.Opcode.RUN):
                    with m.If(length != proto.ARGS_BYTES):
                        respond(proto.Status.BAD_LENGTH)
                    with m.Elif(self.busy):
                        respond(proto.Status.BUSY)
                    with m.Elif(~loaded):
                        respond(proto.Status.NOT_LOADED)
                    with m.Else():
                        m.next = "START"
                with m.Elif(opcode == proto.Opcode.RESULT):
                    with m.If(length != proto.ARGS_BYTES):
                        respond(proto.Status.BAD_LENGTH)
                    with m.Elif((res_args.n_logits > cfg.max_logits) |
                                (res_args.n_counters > 1 + cfg.max_layers)):
                        respond(proto.Status.BAD_ARGUMENT)
                    with m.Elif(~has_run):
                        respond(proto.Status.NO_RESULT)
                    with m.Else():
                        m.next = "WAIT"
                with m.Else():
                    respond(proto.Status.BAD_OPCODE)

            # WRITE: buffer bytes → 64-bit chunks (byte 0 = LSBs) → core.wr, CRC of each byte.
            with m.State("COMMIT_RD"):
                m.d.comb += rport.addr.eq(ptr)
                m.next = "COMMIT_LATCH"
            with m.State("COMMIT_LATCH"):
                m.d.comb += [dcrc.valid.eq(1), dcrc.data.eq(rport.data)]
                m.d.sync += [chunk.eq((chunk >> 8) | (rport.data << 56)),
                             ptr.eq(ptr + 1)]
                with m.If(ptr[:3] == 7):
                    m.next = "COMMIT_WR"
                with m.Else():
                    m.next = "COMMIT_RD"
            with m.State("COMMIT_WR"):
                m.d.comb += [self.wr.valid.eq(1), self.wr.payload.space.eq(wargs.space),
                             self.wr.payload.addr.eq(wargs.addr + chunk_idx),
                             self.wr.payload.data.eq(chunk)]
                with m.If(self.wr.ready):
                    m.d.sync += chunk_idx.eq(chunk_idx + 1)
                    with m.If(chunk_idx == n_chunks - 1):
                        with m.If(wargs.space == Space.PROGRAM):
                            m.d.sync += loaded.eq(1)
                        respond(proto.Status.OK, 2)
                    with m.Else():
                        m.next = "COMMIT_RD"

            with m.State("START"):
                m.d.comb += [self.start.valid.eq(1),
                             self.start.payload.image_base.eq(run_args.image_base)]
                with m.If(self.start.ready):
                    m.d.sync += has_run.eq(1)
                    respond(proto.Status.OK)

            with m.State("WAIT"):
                with m.If(~self.busy):
                    m.d.sync += [fetch_idx.eq(0), counters_phase.eq(res_args.n_logits == 0),
                                 word_left.eq(0)]
                    respond(proto.Status.OK, res_args.n_logits + 4 * res_args.n_counters)

            with m.State("RESP_HDR"):
                m.d.comb += [self.tx.valid.eq(1),
                             self.tx.payload.eq(resp_hdr.as_value().word_select(hdr_idx, 8))]
                with m.If(self.tx.ready):
                    m.d.comb += [fcrc.start.eq(hdr_idx == 0), fcrc.valid.eq(1),
                                 fcrc.data.eq(self.tx.payload)]
                    m.d.sync += hdr_idx.eq(hdr_idx + 1)
                    with m.If(hdr_idx == proto.struct_bytes(proto.ResponseHeader) - 1):
                        m.next = "RESP_PAYLOAD"
                        with m.If(resp_len == 0):
                            m.next = "RESP_CRC0"

            with m.State("RESP_PAYLOAD"):
                with m.If((opcode == proto.Opcode.RESULT) & (word_left == 0)):
                    m.next = "FETCH"
                with m.Else():
                    source = Signal(8)
                    with m.Switch(opcode):
                        with m.Case(proto.Opcode.IDENTIFY):
                            m.d.comb += source.eq(identity.word_select(out_idx[:5], 8))
                        with m.Case(proto.Opcode.WRITE):
                            m.d.comb += source.eq(dcrc.crc.word_select(out_idx[:1], 8))
                        with m.Default():
                            m.d.comb += source.eq(word[:8])
                    m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(source)]
                    with m.If(self.tx.ready):
                        m.d.comb += [fcrc.valid.eq(1), fcrc.data.eq(source)]
                        m.d.sync += [out_idx.eq(out_idx + 1), word.eq(word >> 8),
                                     word_left.eq(word_left - 1)]
                        with m.If(out_idx == resp_len - 1):
                            m.next = "RESP_CRC0"

            # RESULT payload: n_logits reads of LOGITS (1 byte each), then n_counters
            # reads of COUNTERS (4 bytes each).
            with m.State("FETCH"):
                m.d.comb += [self.rd.valid.eq(1), self.rd.payload.addr.eq(fetch_idx),
                             self.rd.payload.space.eq(Mux(counters_phase, ReadSpace.COUNTERS,
                                                          ReadSpace.LOGITS))]
                with m.If(self.rd.ready):
                    last_logit = ~counters_phase & (fetch_idx == res_args.n_logits - 1)
                    m.d.sync += [fetch_idx.eq(Mux(last_logit, 0, fetch_idx + 1)),
                                 counters_phase.eq(counters_phase | last_logit),
                                 word_left.eq(Mux(counters_phase, 4, 1))]
                    m.next = "FETCH_WAIT"
            with m.State("FETCH_WAIT"):
                m.d.comb += self.rd_data.ready.eq(1)
                with m.If(self.rd_data.valid):
                    m.d.sync += word.eq(self.rd_data.payload.data)
                    m.next = "RESP_PAYLOAD"

            with m.State("RESP_CRC0"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(fcrc.crc[:8])]
                with m.If(self.tx.ready):
                    m.next = "RESP_CRC1"
            with m.State("RESP_CRC1"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(fcrc.crc[8:])]
                with m.If(self.tx.ready):
                    m.next = "SYNC"
        return m
