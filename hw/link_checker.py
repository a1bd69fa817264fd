"""The link's frame checker: a received request's CRC, length and arguments → verdict.

See :class:`FrameChecker`; the commands and their errors are defined in :mod:`.protocol`.
"""

from amaranth.hdl import Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from . import protocol as proto
from .program import Space

__all__ = ["FrameChecker", "chunk_addr_bits", "above"]


def chunk_addr_bits(config):
    """Bits of the largest valid WRITE chunk address of ``config`` (higher address bits
    only need a zero test)."""
    return max(max(proto.space_chunks(config, s) for s in Space) - 1, 1).bit_length()


class FrameChecker(wiring.Component):
    """Decide what a received request gets: an error status, or a command to execute.

    The facts the decision needs (length classes, address and count ranges, the opcode
    decoded) are registered from the decoder's header and argument registers while the
    frame arrives. They settle long before ``check`` (the two CRC bytes come after the
    last argument byte, and a valid WRITE has 8 more bytes), so the verdict is taken from
    flip-flops only and no path crosses more than one adder.

    Latency: the verdict is combinational, in the cycle of ``check``;
    the facts follow the header and argument registers within 3 cycles (the WRITE range
    check: chunk count, then end address, then the comparison).

    Parameters
    ----------
    config : AcceleratorConfig
        Memory sizes (address checks) and result buffer sizes (RESULT checks).

    Attributes
    ----------
    opcode : In(8), length : In(16), args : In(ARGS_BYTES * 8)
        The request, from the frame decoder.
    crc_ok : In(1)
        The CRC residue is zero (read only at ``check``).
    busy, loaded, has_run : In(1)
        A run is in progress; a layer program was written; a run was started.
    check : In(1)
        Pulse: decide on the complete frame.
    respond : Out(1)
        Pulse: answer now with ``status`` and a payload of ``resp_length`` bytes (the
        identity, for IDENTIFY) — nothing else to do.
    status : Out(Status)
        ``OK`` unless ``respond`` reports an error.
    resp_length : Out(range(Identity bytes + 1))
    do_write, do_run, do_result, do_abort : Out(1)
        Pulse: the command is valid; execute it (the command handler answers).
    n_chunks : Out(range(MAX_CHUNKS + 1))
        Chunks of a WRITE.
    is_identify, is_result : Out(1)
        The opcode, decoded (held until the next frame's opcode).
    """

    def __init__(self, config):
        self._config = config
        super().__init__({
            "opcode": In(8), "length": In(16), "args": In(proto.ARGS_BYTES * 8),
            "crc_ok": In(1), "busy": In(1), "loaded": In(1), "has_run": In(1),
            "check": In(1),
            "respond": Out(1), "status": Out(proto.Status),
            "resp_length": Out(range(proto.struct_bytes(proto.Identity) + 1)),
            "do_write": Out(1), "do_run": Out(1), "do_result": Out(1), "do_abort": Out(1),
            "n_chunks": Out(range(proto.MAX_CHUNKS + 1)),
            "is_identify": Out(1), "is_result": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        f = _Facts(m, self._config, self)
        S, O = proto.Status, proto.Opcode

        def answer(status, length=0):
            m.d.comb += [self.respond.eq(1), self.status.eq(status),
                         self.resp_length.eq(length)]

        with m.If(self.check):
            with m.If(~self.crc_ok):
                answer(S.BAD_CRC)
            with m.Elif(f.too_long):
                answer(S.BAD_LENGTH)
            with m.Elif(f.is_op[O.IDENTIFY]):
                with m.If(~f.len_zero):
                    answer(S.BAD_LENGTH)
                with m.Else():
                    answer(S.OK, proto.struct_bytes(proto.Identity))
            with m.Elif(f.is_op[O.WRITE]):
                with m.If(~f.write_len_ok):
                    answer(S.BAD_LENGTH)
                with m.Elif(f.bad_range):
                    answer(S.BAD_ARGUMENT)
                with m.Elif(self.busy & (proto.WriteArgs(self.args).space != Space.IMAGE)):
                    answer(S.BUSY)
                with m.Else():
                    m.d.comb += self.do_write.eq(1)
            with m.Elif(f.is_op[O.RUN]):
                with m.If(~f.len_args):
                    answer(S.BAD_LENGTH)
                with m.Elif(f.bad_base):
                    answer(S.BAD_ARGUMENT)
                with m.Elif(self.busy):
                    answer(S.BUSY)
                with m.Elif(~self.loaded):
                    answer(S.NOT_LOADED)
                with m.Else():
                    m.d.comb += self.do_run.eq(1)
            with m.Elif(f.is_op[O.RESULT]):
                with m.If(~f.len_args):
                    answer(S.BAD_LENGTH)
                with m.Elif(f.bad_result):
                    answer(S.BAD_ARGUMENT)
                with m.Elif(~self.has_run):
                    answer(S.NO_RESULT)
                with m.Else():
                    m.d.comb += self.do_result.eq(1)
            with m.Elif(f.is_op[O.ABORT]):
                with m.If(~f.len_zero):
                    answer(S.BAD_LENGTH)
                with m.Else():
                    m.d.comb += self.do_abort.eq(1)
            with m.Else():
                answer(S.BAD_OPCODE)
        m.d.comb += [self.n_chunks.eq(f.n_chunks), self.is_identify.eq(f.is_op[O.IDENTIFY]),
                     self.is_result.eq(f.is_op[O.RESULT])]
        return m


class _Facts:
    """The checker's registered facts about the frame (see :class:`FrameChecker`)."""

    def __init__(self, m, cfg, ports):
        length, wargs = ports.length, proto.WriteArgs(ports.args)
        res_args = proto.ResultArgs(ports.args)
        self.too_long, self.len_zero, self.len_args = Signal(), Signal(), Signal()
        self.write_len_ok, self.bad_range, self.bad_result = Signal(), Signal(), Signal()
        self.bad_base = Signal()
        self.n_chunks = Signal(range(proto.MAX_CHUNKS + 1))
        self.is_op = {op: Signal(name=f"is_{op.name.lower()}") for op in proto.Opcode}
        addr_bits = chunk_addr_bits(cfg)
        write_end = Signal(addr_bits + 1)
        addr_high = Signal()
        bad_range_now = addr_high
        for space in Space:
            bad_range_now |= ((wargs.space == space) &
                              above(write_end, proto.space_chunks(cfg, space)))
        m.d.sync += [
            self.too_long.eq(length > proto.MAX_PAYLOAD),
            self.len_zero.eq(length == 0),
            self.len_args.eq(length == proto.ARGS_BYTES),
            # length = ARGS_BYTES + 8 * n: the low bits are ARGS_BYTES, n is length[3:].
            self.write_len_ok.eq((length[:3] == proto.ARGS_BYTES) & (length[3:] != 0)),
            self.n_chunks.eq(length[3:]),
            write_end.eq(wargs.addr[:addr_bits] + self.n_chunks),
            addr_high.eq(wargs.addr[addr_bits:] != 0),
            self.bad_range.eq(bad_range_now),
            # The image must start inside the activation addresses (its end depends on the
            # program: the datapath's addresses wrap, never leave the memory).
            self.bad_base.eq(above(proto.RunArgs(ports.args).image_base, cfg.act_space - 1)),
            self.bad_result.eq(above(res_args.n_logits, cfg.max_logits) |
                               above(res_args.n_counters, 1 + cfg.max_layers)),
            *(self.is_op[op].eq(ports.opcode == op) for op in proto.Opcode),
        ]


def above(value, limit):
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
