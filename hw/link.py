"""The link: frame decoder, command handler and frame encoder between the UART and the core.

The wire format and the commands are defined in :mod:`.protocol`; this module is their
gateware. See :class:`Link`.
"""

import functools

from amaranth.hdl import Cat, Const, Module, Mux, Signal
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
    is answered with ``TRUNCATED`` and forgotten (the time-out is prescaled: it may
    come up to half the time-out later, 23 % at 36 MHz, never earlier). Every complete
    frame gets exactly one response (see :mod:`.protocol`).

    Resources and timing: every decision is taken from flip-flops — lengths, chunk
    counts and range checks are registered while the frame arrives, counters are
    compared for equality — so no path crosses more than one adder. One CRC engine
    serves the request, the WRITE data and the response; the identity is a ROM in a
    second EBR.

    Latency and throughput: the frame decoder takes one byte per cycle (far above any
    UART rate). After the CRC, a WRITE commits its chunks at one per 17 cycles (8 buffer
    reads of 2 cycles plus the ``wr`` transfer, more if the core stalls), then answers.
    RUN answers as soon as ``start`` is taken; RESULT as soon as ``busy`` falls. A
    response header is sent at one byte per cycle that ``tx`` is ready, its payload
    at one byte per two cycles (the identity ROM's read latency).

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
            "idle": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        buf_depth = proto.MAX_CHUNKS * proto.CHUNK_BYTES

        m.submodules.buf = buf = Memory(shape=8, depth=buf_depth, init=[])
        wport = buf.write_port()
        rport = buf.read_port()

        # One CRC engine serves the request check, the WRITE data CRC and the response:
        # they never overlap. The sync bytes are constants, so instead of a ``start``
        # input the register is loaded with its value after the sync byte. The byte is
        # registered first (the state decoding and byte multiplexer in front of the XOR
        # tree were the link's longest path), so ``crc`` includes a byte two cycles after
        # it was given; a load takes effect at once (none coincides with a byte).
        crc = Signal(16)
        crc_valid = Signal()
        crc_data = Signal(8)
        crc_load = Signal()
        crc_load_value = Signal(16)
        crc_valid_r = Signal()
        crc_data_r = Signal(8)
        m.d.sync += [crc_valid_r.eq(crc_valid), crc_data_r.eq(crc_data)]
        with m.If(crc_valid_r):
            m.d.sync += crc.eq(_crc_next(crc, crc_data_r))
        with m.Elif(crc_load):
            m.d.sync += crc.eq(crc_load_value)
        crc_ok = crc == 0                       # the residue of a frame followed by its CRC

        opcode = Signal(8)
        length = Signal(16)
        left = Signal(16)                       # payload bytes still to come
        args = Signal(proto.ARGS_BYTES * 8)
        wargs = proto.WriteArgs(args)
        run_args = proto.RunArgs(args)
        res_args = proto.ResultArgs(args)
        idx = Signal(range(8))                  # header byte, argument byte
        wptr = Signal(range(buf_depth))         # buffer address: receive, then commit
        chunk = Signal(64)

        loaded = Signal()                       # a layer program was written
        has_run = Signal()

        # Facts about the frame, registered from the header and argument registers: they
        # settle long before CHECK (CRC0 and CRC1 come after the last argument byte, a
        # valid WRITE has 8 more bytes), so CHECK decides from flip-flops only.
        too_long = Signal()
        len_zero = Signal()
        len_args = Signal()
        write_len_ok = Signal()
        n_chunks = Signal(range(proto.MAX_CHUNKS + 1))
        bad_range = Signal()
        bad_result = Signal()
        is_op = {op: Signal(name=f"is_{op.name.lower()}") for op in proto.Opcode}
        # Valid chunk addresses fit addr_bits; higher address bits only need a zero test.
        addr_bits = max(max(proto.space_chunks(cfg, s) for s in Space) - 1, 1).bit_length()
        write_end = Signal(addr_bits + 1)
        addr_high = Signal()
        bad_range_now = addr_high
        for space in Space:
            bad_range_now |= ((wargs.space == space) &
                              _above(write_end, proto.space_chunks(cfg, space)))
        m.d.sync += [
            too_long.eq(length > proto.MAX_PAYLOAD),
            len_zero.eq(length == 0),
            len_args.eq(length == proto.ARGS_BYTES),
            # length = ARGS_BYTES + 8 * n: the low bits are ARGS_BYTES, n is length[3:].
            write_len_ok.eq((length[:3] == proto.ARGS_BYTES) & (length[3:] != 0)),
            n_chunks.eq(length[3:]),
            write_end.eq(wargs.addr[:addr_bits] + n_chunks),
            addr_high.eq(wargs.addr[addr_bits:] != 0),
            bad_range.eq(bad_range_now),
            bad_result.eq(_above(res_args.n_logits, cfg.max_logits) |
                          _above(res_args.n_counters, 1 + cfg.max_layers)),
            *(is_op[op].eq(opcode == op) for op in proto.Opcode),
        ]

        status = Signal(proto.Status)
        # Counts the response payload down while it is sent (the header is sent first).
        resp_max = max(proto.struct_bytes(proto.Identity), 2,
                       cfg.max_logits + 4 * (1 + cfg.max_layers))
        resp_len = Signal(range(resp_max + 1))
        resp_hdr = Signal(proto.ResponseHeader)
        word = Signal(32)                       # response payload bytes, LSB first
        word_left = Signal(3)
        fetch_idx = Signal(range(max(cfg.max_logits, 1 + cfg.max_layers)))
        counters_phase = Signal()
        # The identity is a ROM in an EBR (a 32-byte constant multiplexer costs ~45 LUTs),
        # addressed by the count of bytes left; its data lags the count by a cycle.
        m.submodules.id_rom = id_rom = Memory(
            shape=8, depth=1 << _identity_count_bits(),
            init=_identity_by_count(proto.identity_fields(cfg)), attrs={"ram_style": "block"})
        id_port = id_rom.read_port()
        m.d.comb += id_port.addr.eq(resp_len[:_identity_count_bits()])
        just_sent = Signal()                    # resp_len changed: wait for the ROM
        m.d.sync += just_sent.eq(self.tx.valid & self.tx.ready)

        # ``in_frame`` (in HEADER .. CRC1) and ``idle`` (in SYNC) are flip-flops kept
        # with the state, not decoded from it: ``rx.ready`` feeds the FIFO's read logic.
        in_frame = Signal()
        byte_in = Signal(8)
        receiving = Signal()                    # set by the frame-receiving states
        m.d.comb += [byte_in.eq(self.rx.payload), self.rx.ready.eq(receiving)]
        got = self.rx.valid

        def respond(code, n=0):
            m.d.sync += [status.eq(code), resp_len.eq(n), idx.eq(0), in_frame.eq(0)]
            m.next = "RESP_HDR"

        m.d.comb += [resp_hdr.sync.eq(proto.RESPONSE_SYNC), resp_hdr.status.eq(status),
                     resp_hdr.opcode.eq(opcode), resp_hdr.length.eq(resp_len)]

        # Inter-byte time-out: a free-running LFSR prescaler (no carry chain) and a short
        # counter of its ticks since the last byte, instead of a wide counter that every
        # byte resets. The frame is dropped between ``timeout`` and ``timeout + 2 *
        # period`` cycles after its last byte.
        width, tap, period = _prescaler_lfsr(max(2, self._timeout.bit_length() - 3))
        ticks_max = -(-self._timeout // period) + 1
        prescaler = Signal(width, init=1)
        ticks = Signal(range(ticks_max + 1))
        m.d.sync += prescaler.eq(Cat(prescaler[1:], prescaler[0] ^ prescaler[tap]))
        tick = prescaler == 1
        expired = Signal()                      # ticks == ticks_max, as a flip-flop
        with m.If(got | ~in_frame):
            m.d.sync += [ticks.eq(0), expired.eq(0)]
        with m.Elif(tick & ~expired):
            m.d.sync += [ticks.eq(ticks + 1), expired.eq(ticks == ticks_max - 1)]
        timed_out = in_frame & expired
        # A byte is consumed only in a state that uses it; after a time-out it is left for
        # SYNC (the FIFO keeps it), so it can start the next frame.
        m.d.comb += receiving.eq((in_frame & ~timed_out) | self.idle)

        # Payloads are driven in every state (only ``valid`` and ``en`` depend on it):
        # gating them would cost a LUT per bit for nothing.
        m.d.comb += [
            wport.addr.eq(wptr), wport.data.eq(byte_in), rport.addr.eq(wptr),
            self.wr.payload.space.eq(wargs.space), self.wr.payload.addr.eq(wargs.addr),
            self.wr.payload.data.eq(chunk),
            self.start.payload.image_base.eq(run_args.image_base),
            self.rd.payload.addr.eq(fetch_idx),
            self.rd.payload.space.eq(Mux(counters_phase, ReadSpace.COUNTERS, ReadSpace.LOGITS)),
        ]

        # The response byte, as a multiplexer tree on few selects rather than per state.
        in_hdr = Signal()
        in_crc = Signal()
        hdr = resp_hdr.as_value()
        assert proto.RESPONSE_HEADER_BYTES == 5, "idx[2] selects header byte 4"
        hdr_byte = Mux(idx[2], hdr[32:40], Mux(idx[1], Mux(idx[0], hdr[24:32], hdr[16:24]),
                                               Mux(idx[0], hdr[8:16], hdr[:8])))
        m.d.comb += self.tx.payload.eq(
            Mux(in_hdr, hdr_byte,
                Mux(in_crc, Mux(idx[0], crc[8:], crc[:8]),
                    Mux(is_op[proto.Opcode.IDENTIFY], id_port.data, word[:8]))))

        with m.FSM():
            with m.State("SYNC"):
                with m.If(got & (byte_in == proto.REQUEST_SYNC)):
                    m.d.sync += [self.idle.eq(0), in_frame.eq(1)]
                    m.d.comb += [crc_load.eq(1),
                                 crc_load_value.eq(_crc_next(0, proto.REQUEST_SYNC))]
                    m.d.sync += [idx.eq(0), opcode.eq(0), wptr.eq(0)]
                    m.next = "HEADER"

            with m.State("HEADER"):
                with m.If(timed_out):
                    respond(proto.Status.TRUNCATED)
                with m.Elif(got):
                    m.d.comb += [crc_valid.eq(1), crc_data.eq(byte_in)]
                    m.d.sync += idx.eq(idx + 1)
                    with m.Switch(idx):
                        with m.Case(0):
                            m.d.sync += opcode.eq(byte_in)
                        with m.Case(1):
                            m.d.sync += length[:8].eq(byte_in)
                        with m.Case(2):
                            m.d.sync += [length[8:].eq(byte_in), idx.eq(0),
                                         left.eq(Cat(length[:8], byte_in))]
                            m.next = "ARGS"
                            with m.If((byte_in == 0) & (length[:8] == 0)):
                                m.next = "CRC0"

            # Payload: the first ARGS_BYTES into ``args``, the rest into the buffer (a
            # frame too long for it wraps around and is refused at CHECK).
            with m.State("ARGS"):
                with m.If(timed_out):
                    respond(proto.Status.TRUNCATED)
                with m.Elif(got):
                    m.d.comb += [crc_valid.eq(1), crc_data.eq(byte_in)]
                    m.d.sync += [left.eq(left - 1), idx.eq(idx + 1)]
                    with m.Switch(idx):
                        for i in range(proto.ARGS_BYTES):
                            with m.Case(i):
                                m.d.sync += args[8 * i:8 * i + 8].eq(byte_in)
                    with m.If(left == 1):
                        m.next = "CRC0"
                    with m.Elif(idx == proto.ARGS_BYTES - 1):
                        m.next = "DATA"

            with m.State("DATA"):
                with m.If(timed_out):
                    respond(proto.Status.TRUNCATED)
                with m.Elif(got):
                    m.d.comb += [crc_valid.eq(1), crc_data.eq(byte_in), wport.en.eq(1)]
                    m.d.sync += [left.eq(left - 1), wptr.eq(wptr + 1)]
                    with m.If(left == 1):
                        m.next = "CRC0"

            with m.State("CRC0"):
                with m.If(timed_out):
                    respond(proto.Status.TRUNCATED)
                with m.Elif(got):
                    m.d.comb += [crc_valid.eq(1), crc_data.eq(byte_in)]
                    m.next = "CRC1"

            with m.State("CRC1"):
                with m.If(timed_out):
                    respond(proto.Status.TRUNCATED)
                with m.Elif(got):
                    m.d.comb += [crc_valid.eq(1), crc_data.eq(byte_in)]
                    m.d.sync += in_frame.eq(0)
                    m.next = "CRC_WAIT"

            with m.State("CRC_WAIT"):                # for the last byte to reach ``crc``
                m.next = "CHECK"

            with m.State("CHECK"):
                with m.If(~crc_ok):
                    respond(proto.Status.BAD_CRC)
                with m.Elif(too_long):
                    respond(proto.Status.BAD_LENGTH)
                with m.Elif(is_op[proto.Opcode.IDENTIFY]):
                    with m.If(~len_zero):
                        respond(proto.Status.BAD_LENGTH)
                    with m.Else():
                        respond(proto.Status.OK, proto.struct_bytes(proto.Identity))
                with m.Elif(is_op[proto.Opcode.WRITE]):
                    with m.If(~write_len_ok):
                        respond(proto.Status.BAD_LENGTH)
                    with m.Elif(bad_range):
                        respond(proto.Status.BAD_ARGUMENT)
                    with m.Elif(self.busy & (wargs.space != Space.IMAGE)):
                        respond(proto.Status.BUSY)
                    with m.Else():
                        # The data CRC starts from 0: the residue of the checked frame.
                        m.d.sync += wptr.eq(0)
                        m.next = "COMMIT_RD"
                with m.Elif(is_op[proto.Opcode.RUN]):
                    with m.If(~len_args):
                        respond(proto.Status.BAD_LENGTH)
                    with m.Elif(self.busy):
                        respond(proto.Status.BUSY)
                    with m.Elif(~loaded):
                        respond(proto.Status.NOT_LOADED)
                    with m.Else():
                        m.next = "START"
                with m.Elif(is_op[proto.Opcode.RESULT]):
                    with m.If(~len_args):
                        respond(proto.Status.BAD_LENGTH)
                    with m.Elif(bad_result):
                        respond(proto.Status.BAD_ARGUMENT)
                    with m.Elif(~has_run):
                        respond(proto.Status.NO_RESULT)
                    with m.Else():
                        m.next = "WAIT"
                with m.Else():
                    respond(proto.Status.BAD_OPCODE)

            # WRITE: buffer bytes → 64-bit chunks (byte 0 = LSBs) → core.wr, CRC of each
            # byte. ``wargs.addr`` counts up with the chunks; after chunk k, wptr = 8 (k+1).
            with m.State("COMMIT_RD"):
                m.next = "COMMIT_LATCH"
            with m.State("COMMIT_LATCH"):
                m.d.comb += [crc_valid.eq(1), crc_data.eq(rport.data)]
                m.d.sync += [chunk.eq((chunk >> 8) | (rport.data << 56)),
                             wptr.eq(wptr + 1)]
                with m.If(wptr[:3] == 7):
                    m.next = "COMMIT_WR"
                with m.Else():
                    m.next = "COMMIT_RD"
            with m.State("COMMIT_WR"):
                m.d.comb += self.wr.valid.eq(1)
                with m.If(self.wr.ready):
                    # Only the bits a valid address uses (the range was checked).
                    m.d.sync += wargs.addr[:addr_bits].eq(wargs.addr[:addr_bits] + 1)
                    # n_chunks <= MAX_CHUNKS: its low bits name the last chunk uniquely.
                    with m.If(wptr[3:] == n_chunks[:len(wptr) - 3]):
                        with m.If(wargs.space == Space.PROGRAM):
                            m.d.sync += loaded.eq(1)
                        respond(proto.Status.OK, 2)
                    with m.Else():
                        m.next = "COMMIT_RD"

            with m.State("START"):
                m.d.comb += self.start.valid.eq(1)
                with m.If(self.start.ready):
                    m.d.sync += has_run.eq(1)
                    respond(proto.Status.OK)

            with m.State("WAIT"):
                with m.If(~self.busy):
                    m.d.sync += [fetch_idx.eq(0), counters_phase.eq(res_args.n_logits == 0),
                                 word_left.eq(0)]
                    respond(proto.Status.OK, res_args.n_logits + 4 * res_args.n_counters)

            # The header's first byte (the sync) is a constant: the CRC is loaded with its
            # value after it instead of processing it.
            with m.State("RESP_HDR"):
                m.d.comb += [self.tx.valid.eq(1), in_hdr.eq(1)]
                with m.If(self.tx.ready):
                    m.d.comb += [crc_valid.eq(idx != 0), crc_data.eq(self.tx.payload),
                                 crc_load.eq(idx == 0),
                                 crc_load_value.eq(_crc_next(0, proto.RESPONSE_SYNC))]
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == 0):
                        m.d.sync += word[:16].eq(crc)       # a WRITE's data CRC
                    with m.If(idx == proto.RESPONSE_HEADER_BYTES - 1):
                        m.d.sync += idx.eq(0)       # for RESP_CRC
                        m.next = "RESP_PAYLOAD"
                        with m.If(resp_len == 0):
                            m.next = "RESP_CRC"

            with m.State("RESP_PAYLOAD"):
                with m.If(is_op[proto.Opcode.RESULT] & (word_left == 0)):
                    m.next = "FETCH"
                with m.Elif(~just_sent):
                    m.d.comb += self.tx.valid.eq(1)
                    with m.If(self.tx.ready):
                        m.d.comb += [crc_valid.eq(1), crc_data.eq(self.tx.payload)]
                        m.d.sync += [resp_len.eq(resp_len - 1), word.eq(word >> 8),
                                     word_left.eq(word_left - 1)]
                        with m.If(resp_len == 1):
                            m.next = "RESP_CRC"

            # RESULT payload: n_logits reads of LOGITS (1 byte each), then n_counters
            # reads of COUNTERS (4 bytes each). The last logit is fetched when the bytes
            # left to send are the counters' and that logit: 4 * n_counters + 1.
            with m.State("FETCH"):
                m.d.comb += self.rd.valid.eq(1)
                with m.If(self.rd.ready):
                    last_logit = (~counters_phase & (resp_len[:2] == 1) &
                                  (resp_len[2:] == res_args.n_counters))
                    m.d.sync += [fetch_idx.eq(Mux(last_logit, 0, fetch_idx + 1)),
                                 counters_phase.eq(counters_phase | last_logit),
                                 word_left.eq(Mux(counters_phase, 4, 1))]
                    m.next = "FETCH_WAIT"
            with m.State("FETCH_WAIT"):
                m.d.comb += self.rd_data.ready.eq(1)
                with m.If(self.rd_data.valid):
                    m.d.sync += word.eq(self.rd_data.payload.data)
                    m.next = "RESP_PAYLOAD"

            with m.State("RESP_CRC"):
                m.d.comb += [self.tx.valid.eq(~just_sent), in_crc.eq(1)]
                with m.If(self.tx.ready):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx[0]):
                        m.d.sync += self.idle.eq(1)
                        m.next = "SYNC"
        return m


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


def _above(value, limit):
    """``value > limit`` for a constant ``limit``, as a sum of products (yosys builds a
    carry chain for a comparison, one LUT per bit)."""
    if limit >> len(value):
        return Const(0)
    terms = []
    for i in reversed(range(len(value))):
        if not (limit >> i) & 1:
            equal_above = [value[j] if (limit >> j) & 1 else ~value[j]
                           for j in range(i + 1, len(value))]
            term = value[i]
            for e in equal_above:
                term = term & e
            terms.append(term)
    result = Const(0)
    for t in terms:
        result = result | t
    return result


def _check_crc_parameters():
    alg = proto.CRC.algorithm
    if not (alg.crc_width == 16 and proto.CRC.data_width == 8 and alg.reflect_input and
            alg.reflect_output and alg.initial_crc == 0 and alg.xor_output == 0):
        raise NotImplementedError(f"the link's CRC engine computes reflected CRC-16s with "
                                  f"initial value and output XOR 0, not {alg!r}")


def _crc_step(state, byte):
    """One byte of the reflected CRC on integers (the register is the CRC itself)."""
    poly = int(f"{proto.CRC.algorithm.polynomial:016b}"[::-1], 2)
    state ^= byte
    for _ in range(8):
        state = (state >> 1) ^ (poly if state & 1 else 0)
    return state


def _crc_next(state, byte):
    """The CRC register after ``byte``: integers in, integer out; else an expression.

    The update is linear, so each bit is the XOR of the state and data bits whose unit
    vectors set it (no ``start`` multiplexer in front, unlike ``lib.crc.Processor``).
    """
    _check_crc_parameters()
    if isinstance(state, int) and isinstance(byte, int):
        return _crc_step(state, byte)
    bits = []
    for i in range(16):
        terms = [state[j] for j in range(16) if _crc_step(1 << j, 0) >> i & 1]
        terms += [byte[j] for j in range(8) if _crc_step(0, 1 << j) >> i & 1]
        bit = terms[0]
        for t in terms[1:]:
            bit = bit ^ t
        bits.append(bit)
    return Cat(*bits)


def _identity_count_bits():
    return (proto.struct_bytes(proto.Identity) - 1).bit_length()


def _identity_by_count(fields):
    """The identity's bytes indexed by the low bits of the count of bytes left to send."""
    raw = proto.encode_struct(proto.Identity, fields)
    size = 1 << _identity_count_bits()
    return [raw[(len(raw) - left) % size] if (len(raw) - left) % size < len(raw) else 0
            for left in range(size)]
