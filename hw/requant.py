"""Requantisation pipeline: bias add → ×M → rounding shift by S → saturate int8 → ReLU?

Exactly :func:`fpgacnn.sw.golden.requantize` (there the accumulator already includes the
bias; here the bias is added in the first stage). The widths of ``M``, ``S`` and the bias
come from :mod:`.program`, the contract the golden model imports too.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .program import BIAS_BITS, M_BITS, S_BITS

__all__ = ["Requantizer", "lane_layout", "mul16_blocks"]

#: Bits of ``v`` per 16×16 block below the top one: an unsigned chunk must be a
#: non-negative signed 16-bit operand.
_CHUNK_BITS = 15


def mul16_blocks(acc_width, bias_width=BIAS_BITS):
    """16×16 multiplier blocks per lane when ``v * M`` is built from them (``mul16``).

    ``v = acc + bias`` has ``max(acc_width, bias_width) + 1`` bits: the top block takes
    its highest (up to) 16 bits, signed, every other block 15 bits, unsigned.
    """
    return _blocks(max(acc_width, bias_width) + 1)


def _blocks(value_bits):
    return 1 + max(0, -(-(value_bits - 16) // _CHUNK_BITS))


def lane_layout(acc_width, bias_width=BIAS_BITS):
    """One value to requantise with its output channel's parameters."""
    return data.StructLayout({
        "acc": signed(acc_width),
        "bias": signed(bias_width),
        "m": unsigned(M_BITS),
        "s": unsigned(S_BITS),
    })


class Requantizer(wiring.Component):
    """``y = sat_int8((acc + bias) * M + (1 << (S-1)) >> S)``, then ReLU if ``relu``.

    The shift is arithmetic and exact for every legal input (``acc`` of ``acc_width``
    bits, any ``bias`` of ``bias_width`` bits, ``0 <= M < 2**M_BITS``,
    ``S_MIN <= S <= S_MAX``, i.e. 1..63; widths from :mod:`.program`); ``S = 0`` is not
    legal and gives an unspecified (but finite) value. Two identities keep it small:

    * ``(p + 2**(S-1)) >> S == ((p >> (S-1)) + 1) >> 1``, so no 64-bit rounding constant
      is added;
    * ``p >> (S-1)`` is done as a shift by a multiple of 8, keeping 18 bits and an
      overflow flag (anything that does not fit saturates anyway), then a shift by 0..7.

    Pipeline (six stages, one wide operation each, so that the requantiser, built from
    logic cells rather than DSP blocks on iCE40, does not limit the clock):
    1. ``v = acc + bias``; 2. ``v * M`` in 8-bit chunks of M (one modest multiply each);
    3. sum of the partial products; 4. coarse shift + overflow flag; 5. fine shift;
    6. round, saturate, ReLU. With ``interval > 1`` stage 2 builds the whole product
    over its cycles and the coarse shift from the finished sum in the cycle after (the
    product has no register of its own), stages 3 and 4 are the fine shift and the
    rounding, and stages 5 and 6 hold the result.

    Latency ``LATENCY = 6`` stages; throughput one beat (``lanes`` values) per
    ``interval`` cycles (each stage takes ``interval`` cycles, so up to
    ``interval * LATENCY`` cycles from input to output).

    Cost: the exact product ``v * M`` dominates, one ``(max(acc_width, bias_width) + 1)
    × (M_BITS / interval)`` multiplier per lane; keep ``bias_width`` as small as the
    biases allow (the compiler checks them). With ``mul16`` it takes
    :func:`mul16_blocks` 16×16 blocks per lane instead (two for a 27-bit ``v``) and only
    the adder of their shifted products stays in logic.
    Backpressure stalls the whole pipeline (``i_stream.ready`` follows
    ``o_stream.ready`` combinationally while the output register is full).

    Parameters
    ----------
    acc_width : int
        Width of the signed accumulators.
    lanes : int
        Values per beat (each with its own bias/M/S).
    tag : shape-castable or None
        Opaque payload carried from input to output unchanged (e.g. the pixel/channel
        position), or None for no tag.
    interval : a power of two dividing M_BITS
        Cycles per beat. ``k > 1`` builds ``v * M`` over ``k`` cycles with one
        ``v × (M_BITS/k)`` multiplier; the stream interface is the same.
    bias_width : int
        Width of the signed bias (at most ``BIAS_BITS``, the model file's int32).
    mul16 : class or None
        With ``interval = 1``: a :class:`~fpgacnn.hw.multiplier.Mul16`-like block (e.g.
        :class:`~fpgacnn.hw.ice40.Ice40Mul16`, an SB_MAC16) that stage 2 uses for ``v × M``
        in chunks of ``v``, its register being stage 2's. None: plain ``*`` in logic.

    Attributes
    ----------
    i_stream : In(stream.Signature(Struct{lanes: ArrayLayout(lane_layout, lanes),
        relu: 1, tag: tag}))
    o_stream : Out(stream.Signature(Struct{y: ArrayLayout(signed(8), lanes), tag: tag}))
    """
    LATENCY = 6

    def __init__(self, acc_width, lanes=1, tag=None, interval=1, bias_width=BIAS_BITS,
                 mul16=None):
        if not isinstance(acc_width, int) or not 1 <= acc_width <= 64:
            raise ValueError(f"acc_width must be an integer in 1..64, not {acc_width!r}")
        intervals = [k for k in (1, 2, 4, 8, 16) if k <= M_BITS and M_BITS % k == 0]
        if interval not in intervals:
            raise ValueError(f"interval must be one of {intervals} cycles per beat, not "
                             f"{interval!r}")
        if not isinstance(bias_width, int) or not 1 <= bias_width <= BIAS_BITS:
            raise ValueError(f"bias_width must be an integer in 1..{BIAS_BITS}, not "
                             f"{bias_width!r}")
        if mul16 is not None and (interval != 1 or getattr(mul16, "LATENCY", None) != 1):
            raise ValueError(f"mul16 must be a Mul16-like class with LATENCY 1 and needs "
                             f"interval 1, not {mul16!r} with interval {interval}")
        self.bias_width = bias_width
        self.interval = interval
        self.mul16 = mul16
        if not isinstance(lanes, int) or lanes < 1:
            raise TypeError(f"lanes must be a positive integer, not {lanes!r}")
        self.acc_width, self.lanes, self.tag = acc_width, lanes, tag
        i_fields = {"lanes": data.ArrayLayout(lane_layout(acc_width, bias_width), lanes),
                    "relu": 1}
        o_fields = {"y": data.ArrayLayout(signed(8), lanes)}
        if tag is not None:
            i_fields["tag"] = o_fields["tag"] = tag
        super().__init__({
            "i_stream": In(stream.Signature(data.StructLayout(i_fields))),
            "o_stream": Out(stream.Signature(data.StructLayout(o_fields))),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        n = self.LATENCY

        # All stages advance together (``adv``); a stage register is free when the output
        # is. With interval k > 1 they advance once every k cycles (last phase), while
        # one multiplier of M_BITS/k bits of M builds v*M over the k phases.
        en = Signal()
        adv = Signal()
        phase = Signal(range(self.interval))
        m.d.comb += en.eq(o.ready | ~o.valid)
        if self.interval == 1:
            m.d.comb += adv.eq(en)
        else:
            last = self.interval - 1
            m.d.comb += adv.eq(en & (phase == last))
            with m.If(o.valid & o.ready & ~adv):
                m.d.sync += o.valid.eq(0)    # taken between advances: do not show it twice
        m.d.comb += i.ready.eq(adv)

        valid = [Signal(name=f"valid{k}") for k in range(n - 1)] + [o.valid]
        if self.interval > 1:
            # The phase restarts whenever the pipeline is empty, so a value's timing depends
            # only on the stream, never on an earlier run (cycle counts are reproducible).
            busy = Signal()
            m.d.comb += busy.eq(i.valid | Cat(*valid).any())
            m.d.sync += phase.eq(Mux((phase == self.interval - 1) | ~busy, 0, phase + 1))
        relu = [Signal(name=f"relu{k}") for k in range(n)]
        tags = ([Signal(self.tag, name=f"tag{k}") for k in range(n)]
                if self.tag is not None else None)
        with m.If(adv):
            m.d.sync += [valid[0].eq(i.valid), relu[0].eq(i.payload.relu)]
            m.d.sync += [valid[k].eq(valid[k - 1]) for k in range(1, n)]
            m.d.sync += [relu[k].eq(relu[k - 1]) for k in range(1, n)]
            if tags is not None:
                m.d.sync += tags[0].eq(i.payload.tag)
                m.d.sync += [tags[k].eq(tags[k - 1]) for k in range(1, n)]
        if tags is not None:
            m.d.comb += o.payload.tag.eq(tags[n - 1])

        for lane in range(self.lanes):
            m.d.comb += o.payload.y[lane].eq(self._lane(m, adv, phase, i.payload.lanes[lane],
                                                        relu, lane))
        return m

    def _lane(self, m, en, phase, x, relu, lane):
        """The six stages of one lane (``x``: its input); returns the output register."""
        vw = max(self.acc_width, self.bias_width) + 1
        reg = self._stage_register(m, en, f"l{lane}_")
        # 1: bias add; carry M and S alongside.
        v = reg(signed(vw), "v", x.acc + x.bias)
        if self.interval > 1 and self.mul16 is None:
            m1 = self._rotating_register(m, en, x.m, M_BITS // self.interval, f"l{lane}_m1")
        else:
            m1 = reg(unsigned(M_BITS), "m1", x.m)
        # S - 1 (mod 2**S_BITS): S = 0 is illegal, it just wraps to a shift of 63.
        sh1 = reg(unsigned(S_BITS), "sh1", x.s - 1)
        # The exact product v * M (S - 1 travels alongside), and the stage and load
        # enable of the coarse shift's registers.
        p, p_stage, c_stage, c_en = self._product(m, reg, en, phase, v, m1, f"l{lane}_")
        sh = sh1
        for k in range(2, p_stage + 1):
            sh = reg(unsigned(S_BITS), f"sh{k}", sh)
        # c = p >> 8k kept to 18 bits + "did not fit" flag (saturates either way).
        coarse, over = self._coarse_shift(m, p, sh[3:], f"l{lane}_")
        c_reg = self._stage_register(m, c_en, f"l{lane}_")
        c = c_reg(signed(18), "c", coarse)
        c_over = c_reg(1, "c_over", over)
        c_neg = c_reg(1, "c_neg", p[-1])
        fine = c_reg(unsigned(3), "fine", sh[:3])
        # Fine shift by 0..7.
        t = reg(signed(18), "t", c >> fine)
        t_over = reg(1, "t_over", c_over)
        t_neg = reg(1, "t_neg", c_neg)
        # Round half up, saturate, ReLU (stage c_stage + 2; relu[k] travels with stage
        # k + 1, t with c_stage + 1); with interval > 1 the 8-bit result is held for the
        # remaining stages, so that every interval has the same LATENCY (two copies of y
        # cost 16 flip-flops where a register of the product cost 35).
        sat = self._round_saturate(m, t, t_over, t_neg, f"l{lane}_")
        y = reg(signed(8), "y", Mux(relu[c_stage] & sat[-1], 0, sat))
        for k in range(c_stage + 3, self.LATENCY + 1):
            y = reg(signed(8), f"y{k}", y)
        return y

    @staticmethod
    def _stage_register(m, en, prefix):
        """``reg(shape, name, value)``: a pipeline register loaded with ``value`` when ``en``."""
        def reg(shape, name, value):
            s = Signal(shape, name=f"{prefix}{name}")
            with m.If(en):
                m.d.sync += s.eq(value)
            return s
        return reg

    def _product(self, m, reg, en, phase, v, m1, name):
        """The exact signed product ``v * m1``: returns it, its stage, and the stage and
        load enable of the coarse shift's registers. Interval 1: a stage-3 register, the
        shift in stage 4 loaded with ``en``. Interval > 1: the Horner sum of stage 2,
        which holds the product only in the cycle after ``en``; the shift's registers
        load then and count as stage 2 too."""
        pw = len(v) + M_BITS                   # v * M, M unsigned: exact
        if self.mul16 is not None:
            # 2: v in chunks (15 unsigned bits each, the top one signed) times M, one
            # block each (their registers are this stage's); 3: the shifted sum.
            parts = []
            for k in range(_blocks(len(v))):
                chunk = v[_CHUNK_BITS * k:]
                if len(chunk) > 16:
                    chunk = chunk[:_CHUNK_BITS]
                else:
                    chunk = chunk.as_signed()
                block = self.mul16()
                m.submodules[f"{name}mul{k}"] = block
                m.d.comb += [block.a.eq(chunk), block.b.eq(m1), block.en.eq(en)]
                parts.append(block.p << (_CHUNK_BITS * k))
            return reg(signed(pw), "p", sum(parts)), 3, 4, en
        if self.interval == 1:
            # 2: 8-bit partial products; 3: their sum.
            parts = [reg(signed(len(v) + 9), f"pp{k}", v * m1[8 * k:8 * k + 8])
                     for k in range(-(-M_BITS // 8))]
            total = sum(part << (8 * k) for k, part in enumerate(parts))
            return reg(signed(pw), "p", total), 3, 4, en
        # 2: Horner over the k chunks of M, most significant first, one per phase;
        # the last phase's sum is the exact product. m1 rotates by a chunk each phase
        # (:meth:`_rotating_register`): the chunk is its top bits, no multiplexer.
        bits = M_BITS // self.interval
        chunk = m1[M_BITS - bits:]
        product = Signal(signed(len(v) + bits + 1), name=f"{name}product")
        m.d.comb += product.eq(v * chunk)
        partial = Signal(signed(pw), name=f"{name}partial")
        full = Signal(signed(pw), name=f"{name}full")
        m.d.comb += full.eq(Mux(phase == 0, product, (partial << bits) + product))
        m.d.sync += partial.eq(full)
        after = Signal(name=f"{name}after_en")
        m.d.sync += after.eq(en)
        return partial, 2, 2, after

    @staticmethod
    def _rotating_register(m, en, value, bits, name):
        """A register loaded with ``value`` when ``en`` (at the last phase) and rotated
        left by ``bits`` in every cycle it is not: in phase ``k`` after a load its top
        ``bits`` are the load's chunk ``k`` from the top, and ``interval`` rotations
        bring it back (a stall keeps the phases cycling)."""
        r = Signal(unsigned(len(value)), name=name)
        with m.If(en):
            m.d.sync += r.eq(value)
        with m.Else():
            m.d.sync += r.eq(Cat(r[len(r) - bits:], r[:len(r) - bits]))
        return r

    @staticmethod
    def _coarse_shift(m, p, eighths, name):
        """Stage 4 logic: ``p >> 8*eighths`` kept to 18 bits, and whether it did not fit."""
        coarse = Signal(signed(18), name=f"{name}coarse_c")
        over = Signal(name=f"{name}coarse_over")
        with m.Switch(eighths):
            for k in range(1 << len(eighths)):
                with m.Case(k):
                    shifted = p >> (8 * k)          # arithmetic: p is signed
                    if len(shifted) <= 18:
                        m.d.comb += coarse.eq(shifted)
                    else:
                        high = shifted[17:]
                        m.d.comb += [
                            coarse.eq(shifted[:18]),
                            over.eq(~((high == 0) | (high == (1 << len(high)) - 1))),
                        ]
        return coarse, over

    @staticmethod
    def _round_saturate(m, t, t_over, t_neg, name):
        """Stage 6 logic: ``(t + 1) >> 1`` saturated to int8 (``t_over``: saturate by sign)."""
        r = Signal(signed(19), name=f"{name}rounded")
        m.d.comb += r.eq((t + 1) >> 1)
        # r fits int8 when its bits above 7 all equal its sign: equality, not two
        # magnitude compares (on iCE40 those are carry chains, a cell per bit).
        high = r[7:]
        fits = ~t_over & ((high == 0) | (high == (1 << len(high)) - 1))
        sat = Signal(signed(8), name=f"{name}sat")
        m.d.comb += sat.eq(Mux(fits, r[:8], Mux(Mux(t_over, t_neg, r[-1]), -128, 127)))
        return sat
