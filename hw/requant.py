"""Requantisation pipeline: bias add → ×M → rounding shift by S → saturate int8 → ReLU?

Exactly :func:`fpgacnn.sw.golden.requantize` (there the accumulator already includes the
bias; here the bias is added in the first stage).
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Requantizer", "lane_layout"]


def lane_layout(acc_width):
    """One value to requantise with its output channel's parameters."""
    return data.StructLayout({
        "acc": signed(acc_width),
        "bias": signed(32),
        "m": unsigned(16),
        "s": unsigned(6),
    })


class Requantizer(wiring.Component):
    """``y = sat_int8((acc + bias) * M + (1 << (S-1)) >> S)``, then ReLU if ``relu``.

    The shift is arithmetic and exact for every legal input (``acc`` of ``acc_width``
    bits, any int32 ``bias``, ``0 <= M < 2**16``, ``1 <= S <= 63``); ``S = 0`` is not
    legal and gives an unspecified (but finite) value. Two identities keep it small:

    * ``(p + 2**(S-1)) >> S == ((p >> (S-1)) + 1) >> 1``, so no 64-bit rounding constant
      is added;
    * ``p >> (S-1)`` is done as a shift by a multiple of 8, keeping 18 bits and an
      overflow flag (anything that does not fit saturates anyway), then a shift by 0..7.

    Pipeline (stages, one wide operation each, for ~36 MHz on iCE40):
    1. ``v = acc + bias``; 2. ``v * M[7:0]`` and ``v * M[15:8]`` (two modest multiplies);
    3. sum of the partial products; 4. coarse shift + overflow flag; 5. fine shift;
    6. round, saturate, ReLU.

    Latency ``LATENCY = 6`` stages; throughput one beat (``lanes`` values) per
    ``interval`` cycles (each stage takes ``interval`` cycles, so up to
    ``interval * LATENCY`` cycles from input to output).

    Cost: the exact ``33 × 16``-bit product dominates. Per lane with ``acc_width=26``,
    yosys ``synth_ice40`` without DSPs gives ~1,570 LUT4 at ``interval=1`` (two
    ``33 × 8`` multipliers) and about half the multiplier at ``interval=2`` (one,
    used twice); ``synth_ice40 -dsp`` would take 4 SB_MAC16 instead.
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
    interval : 1 or 2
        Cycles per beat. 2 halves the multiplier hardware (for the iCE40UP5K, whose
        DSPs all serve the systolic array); the stream interface is the same.

    Attributes
    ----------
    i_stream : In(stream.Signature(Struct{lanes: ArrayLayout(lane_layout, lanes),
        relu: 1, tag: tag}))
    o_stream : Out(stream.Signature(Struct{y: ArrayLayout(signed(8), lanes), tag: tag}))
    """
    LATENCY = 6

    def __init__(self, acc_width, lanes=1, tag=None, interval=1):
        if not isinstance(acc_width, int) or not 1 <= acc_width <= 64:
            raise ValueError(f"acc_width must be an integer in 1..64, not {acc_width!r}")
        if interval not in (1, 2):
            raise ValueError(f"interval must be 1 or 2 cycles per beat, not {interval!r}")
        self.interval = interval
        if not isinstance(lanes, int) or lanes < 1:
            raise TypeError(f"lanes must be a positive integer, not {lanes!r}")
        self.acc_width, self.lanes, self.tag = acc_width, lanes, tag
        i_fields = {"lanes": data.ArrayLayout(lane_layout(acc_width), lanes), "relu": 1}
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
        # is. With interval 2 they advance every other cycle (phase 1), and the one
        # 8-bit-wide multiplier computes v*M[7:0] in phase 0, v*M[15:8] in phase 1.
        en = Signal()
        adv = Signal()
        phase = Signal()
        m.d.comb += en.eq(o.ready | ~o.valid)
        if self.interval == 1:
            m.d.comb += adv.eq(en)
        else:
            m.d.sync += phase.eq(~phase)
            m.d.comb += adv.eq(en & phase)
            with m.If(o.valid & o.ready & ~adv):
                m.d.sync += o.valid.eq(0)    # taken in phase 0: do not show it twice
        m.d.comb += i.ready.eq(adv)

        valid = [Signal(name=f"valid{k}") for k in range(n - 1)] + [o.valid]
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
        vw = max(self.acc_width, 32) + 1
        pw = vw + 16                       # v * M, M unsigned 16 bits: exact
        name = f"l{lane}_"

        def reg(shape, stage, value):
            s = Signal(shape, name=f"{name}{stage}")
            with m.If(en):
                m.d.sync += s.eq(value)
            return s

        # 1: bias add; carry M and S alongside.
        v = reg(signed(vw), "v", x.acc + x.bias)
        m1 = reg(unsigned(16), "m1", x.m)
        # S - 1 (mod 64): S = 0 is illegal, it just wraps to a shift of 63.
        sh1 = reg(unsigned(6), "sh1", x.s - 1)
        # 2: two 8-bit partial products.
        if self.interval == 1:
            plo = reg(signed(vw + 9), "plo", v * m1[:8])
            phi = reg(signed(vw + 9), "phi", v * m1[8:])
        else:
            product = Signal(signed(vw + 9), name=f"{name}product")
            m.d.comb += product.eq(v * Mux(phase, m1[8:], m1[:8]))
            early = Signal(signed(vw + 9), name=f"{name}plo_early")
            with m.If(~phase):
                m.d.sync += early.eq(product)
            plo = reg(signed(vw + 9), "plo", early)
            phi = reg(signed(vw + 9), "phi", product)
        sh2 = reg(unsigned(6), "sh2", sh1)
        # 3: the full product.
        p = reg(signed(pw), "p", plo + (phi << 8))
        sh3 = reg(unsigned(6), "sh3", sh2)
        # 4: c = p >> 8k kept to 18 bits + "did not fit" flag (saturates either way).
        coarse = Signal(signed(18), name=f"{name}coarse_c")
        over = Signal(name=f"{name}coarse_over")
        with m.Switch(sh3[3:]):
            for k in range(8):
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
        c = reg(signed(18), "c", coarse)
        c_over = reg(1, "c_over", over)
        c_neg = reg(1, "c_neg", p[-1])
        fine = reg(unsigned(3), "fine", sh3[:3])
        # 5: fine shift by 0..7.
        t = reg(signed(18), "t", c >> fine)
        t_over = reg(1, "t_over", c_over)
        t_neg = reg(1, "t_neg", c_neg)
        # 6: round half up, saturate, ReLU.
        r = Signal(signed(19), name=f"{name}rounded")
        m.d.comb += r.eq((t + 1) >> 1)
        sat = Signal(signed(8), name=f"{name}sat")
        with m.If(t_over):
            m.d.comb += sat.eq(Mux(t_neg, -128, 127))
        with m.Elif(r > 127):
            m.d.comb += sat.eq(127)
        with m.Elif(r < -128):
            m.d.comb += sat.eq(-128)
        with m.Else():
            m.d.comb += sat.eq(r)
        y = reg(signed(8), "y", Mux(relu[4] & sat[-1], 0, sat))
        return y
