"""Im2col address generator: the operand order of one layer, as memory addresses.

Loop order (docs/architecture.md): ``for y in out_h: for kb in k_blocks: for xt in
x-tiles: for d = (c, fy, fx)``. Column ``j`` of a beat is output pixel ``xt*cols + j``.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .program import LayerDescriptor

__all__ = ["Im2col", "beat_layout", "im2col_reference"]


def beat_layout(cols, act_addr_width=16, w_addr_width=16):
    """Addresses of one operand beat."""
    return data.StructLayout({
        "act_addr": data.ArrayLayout(unsigned(act_addr_width), cols),
        "act_zero": data.ArrayLayout(1, cols),   # padding or pixel >= out_w: operand is 0
        "w_addr": unsigned(w_addr_width),
        "last": 1,                               # last d of the tile
        "end": 1,                                # last beat of the layer
    })


def im2col_reference(desc, cols, act_addr_width=16, w_addr_width=16):
    """Pure-Python model of :class:`Im2col`: yields one dict per beat (test scaffolding).

    ``desc`` is a dict with the LayerDescriptor fields used here (``cin, in_h, in_w,
    kernel, stride, pad, out_h, out_w, k_blocks, reduction, in_base, w_base``).
    Addresses wrap modulo ``2**act_addr_width`` / ``2**w_addr_width`` like the unit's.
    """
    a_mask, w_mask = (1 << act_addr_width) - 1, (1 << w_addr_width) - 1
    c_n, h, w = desc["cin"], desc["in_h"], desc["in_w"]
    f, s, p = desc["kernel"], desc["stride"], desc["pad"]
    out_h, out_w, kbs, red = desc["out_h"], desc["out_w"], desc["k_blocks"], desc["reduction"]
    tiles = -(-out_w // cols)
    for y in range(out_h):
        for kb in range(kbs):
            for xt in range(tiles):
                d = 0
                for c in range(c_n):
                    for fy in range(f):
                        for fx in range(f):
                            addr, zero = [], []
                            iy = y * s + fy - p
                            for j in range(cols):
                                ox = xt * cols + j
                                ix = ox * s + fx - p
                                pad = not (0 <= iy < h and 0 <= ix < w) or ox >= out_w
                                zero.append(int(pad))
                                addr.append((desc["in_base"] + (c * h + iy) * w + ix) & a_mask)
                            last = d == red - 1
                            yield {"act_addr": addr, "act_zero": zero,
                                   "w_addr": (desc["w_base"] + kb * red + d) & w_mask,
                                   "last": int(last),
                                   "end": int(last and y == out_h - 1 and kb == kbs - 1
                                              and xt == tiles - 1)}
                            d += 1


class Im2col(wiring.Component):
    """Generate the operand addresses of one layer, one beat per cycle.

    A layer starts with a beat on ``start`` (a :class:`~fpgacnn.hw.program.LayerDescriptor`;
    ``start.ready`` is high only while idle). The unit then spends 8 cycles computing
    per-layer constants by shift-and-add (no multipliers anywhere), and emits ``out_h *
    k_blocks * ceil(out_w / cols) * reduction`` beats on ``o_stream``, one per cycle unless
    backpressured, the final one with ``end``. Column ``j``'s byte address is
    ``in_base + (c*in_h + iy)*in_w + ix`` (CHW), its ``act_zero`` flags padding or a pixel
    beyond ``out_w``; the weight word is ``w_base + kb*reduction + d``. Addresses of
    zeroed operands are unspecified (they are never read).

    Only ``cin, in_h, in_w, kernel, stride, pad, out_h, out_w, k_blocks, reduction,
    in_base, w_base`` are used. The geometry must be a consistent convolution:
    ``reduction = cin*kernel**2`` and ``out = (in - kernel + 2*pad)/stride + 1`` on both
    axes (the host compiler guarantees it; :func:`im2col_reference` is the exact model).
    A descriptor with any of those counts zero emits nothing and returns to idle.

    How it stays small: the payload is driven by the loop state itself (no output copy);
    addresses are registers stepped by one addition as the loops advance (``+1`` per
    ``fx``, one precomputed step per ``fy`` and per channel, reloads from per-tile and
    per-row origins) instead of being recomputed from the loop indices; the padding
    coordinates are a tile/row origin plus ``fx``/``fy``. Column ``j > 0`` is column 0
    shifted by ``j*stride`` (one adder each).

    Latency: first beat valid 10 cycles after the ``start`` transfer; throughput one
    beat per cycle. The payload is combinational from registers (one adder deep).

    Parameters
    ----------
    cols : int
        Output pixels per beat (the systolic array's columns).
    act_addr_width, w_addr_width : int
        Widths of the activation byte address and of the weight word address (16, the
        descriptor's, by default; a board with a 4 KiB activation memory and 16K weight
        words passes 12 and 14). Addresses wrap modulo ``2**width``.
    """

    def __init__(self, cols, *, act_addr_width=16, w_addr_width=16):
        if not isinstance(cols, int) or cols < 1:
            raise TypeError(f"cols must be a positive integer, not {cols!r}")
        for name, value in (("act_addr_width", act_addr_width),
                            ("w_addr_width", w_addr_width)):
            if not isinstance(value, int) or not 1 <= value <= 16:
                raise ValueError(f"{name} must be an integer in 1..16 (descriptor addresses "
                                 f"have 16 bits), not {value!r}")
        self.cols = cols
        self.act_addr_width, self.w_addr_width = act_addr_width, w_addr_width
        super().__init__({
            "start": In(stream.Signature(LayerDescriptor)),
            "o_stream": Out(stream.Signature(beat_layout(cols, act_addr_width,
                                                         w_addr_width))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        C = self.cols
        o = self.o_stream
        A = unsigned(self.act_addr_width)
        WA = unsigned(self.w_addr_width)
        # Pixel coordinates that decide padding. For a consistent geometry a real pixel's
        # input x/y lies in [-pad, in + pad) ⊂ [-7, 262); a pixel beyond out_w (zeroed
        # anyway) adds at most (cols-1)*stride.
        P = signed(max(10, (262 + 7 * (C - 1)).bit_length() + 1))

        # Latched geometry (only what the run needs).
        km1 = Signal(4)            # kernel - 1
        cm1 = Signal(12)           # cin - 1
        kbm1 = Signal(8)           # k_blocks - 1
        ohm1 = Signal(8)           # out_h - 1
        out_w = Signal(8)
        in_h, in_w = Signal(8), Signal(8)
        stride, pad = Signal(3), Signal(3)
        w_base = Signal(WA)
        # Per-layer steps.
        step_y = Signal(signed(10))   # in_w - kernel + 1: next fy (may be <= 0 with padding)
        step_c = Signal(A)            # (in_h - kernel + 1)*in_w - kernel + 1: next channel
        step_r = Signal(A)            # stride*in_w: next output row
        cs = Signal(range(7 * C + 1))  # cols*stride: next x-tile
        m.d.comb += cs.eq(stride * C)

        # Loop state = the beat on o_stream.
        fx, fy, c = Signal(4), Signal(4), Signal(12)
        kb, y = Signal(8), Signal(8)
        rem = Signal(8)            # out_w - xt*cols: pixels left in this output row
        a0 = Signal(A)             # column 0's address
        tile_a = Signal(A)         # a0 at (c, fy, fx) = 0 of this tile
        row_a = Signal(A)          # a0 at (c, fy, fx) = 0 of tile 0 of this row
        tile_x = Signal(P)         # column 0's input x at fx = 0
        iy0 = Signal(P)            # input y at fy = 0
        wa, w_row = Signal(WA), Signal(WA)   # weight word; its value at d = 0 of this kb

        last_tile = rem <= C
        last_kb = kb == kbm1
        wrap_x = fx == km1                         # each level wraps when all inner do
        wrap_y = wrap_x & (fy == km1)
        wrap_c = wrap_y & (c == cm1)               # last d of the tile
        wrap_t = wrap_c & last_tile
        wrap_kb = wrap_t & last_kb
        end = wrap_kb & (y == ohm1)

        # Coordinates are sums, not registers: cheaper than stepping them.
        iy = Signal(P)
        m.d.comb += iy.eq(iy0 + fy)
        row_ok = ~iy[-1] & (iy < in_h)
        m.d.comb += [o.payload.w_addr.eq(wa), o.payload.last.eq(wrap_c),
                     o.payload.end.eq(end)]
        for j in range(C):
            ix = Signal(P, name=f"ix_{j}")
            m.d.comb += ix.eq(tile_x + (fx + stride * j if j else fx))
            ok = row_ok & ~ix[-1] & (ix < in_w) & (rem > j)
            m.d.comb += [o.payload.act_addr[j].eq(a0 + stride * j if j else a0),
                         o.payload.act_zero[j].eq(~ok)]

        # Next values, each register with one adder and few sources.
        row_next = Signal(A)
        tile_a_next = Signal(A)
        a0_inc = Signal(A)
        m.d.comb += [
            row_next.eq(row_a + step_r),
            tile_a_next.eq(Mux(last_tile, Mux(last_kb, row_next, row_a), tile_a + cs)),
            a0_inc.eq(Mux(~wrap_x, 1, Mux(~wrap_y, step_y, step_c))),
        ]
        step = Signal()            # a beat is taken: advance the loop nest

        # Shift-and-add products with in_w, LSB first, one bit per cycle; each starts
        # at its additive constant so no adder is needed afterwards.
        wsh = Signal(A)            # in_w << n
        hsh = Signal(8)            # in_h, shifted right each cycle
        n = Signal(3)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.start.ready.eq(1)
                with m.If(self.start.valid):
                    p = self.start.payload
                    base = p.in_base - p.pad
                    m.d.sync += [
                        km1.eq(p.kernel - 1), cm1.eq(p.cin - 1), kbm1.eq(p.k_blocks - 1),
                        ohm1.eq(p.out_h - 1), out_w.eq(p.out_w), in_h.eq(p.in_h),
                        in_w.eq(p.in_w), stride.eq(p.stride), pad.eq(p.pad),
                        w_base.eq(p.w_base), n.eq(0), wsh.eq(p.in_w),
                        hsh.eq(p.in_h), step_y.eq(p.in_w - p.kernel + 1),
                        step_c.eq(1 - p.kernel), step_r.eq(0), row_a.eq(base),
                    ]
                    empty = ((p.cin == 0) | (p.in_h == 0) | (p.in_w == 0) | (p.kernel == 0) |
                             (p.stride == 0) | (p.out_h == 0) | (p.out_w == 0) |
                             (p.k_blocks == 0) | (p.reduction == 0))
                    with m.If(~empty):   # nothing to generate otherwise: stay idle
                        m.next = "INIT"
            with m.State("INIT"):
                # 8 cycles: step_c += (in_h - (kernel-1))*in_w (the factor may be
                # negative with padding, so its two terms go in separately),
                # step_r += stride*in_w, row_a -= pad*in_w; one multiplier bit per cycle.
                m.d.comb += self.busy.eq(1)
                m.d.sync += [wsh.eq(wsh << 1), hsh.eq(hsh >> 1), n.eq(n + 1)]
                k_bit = km1.bit_select(n, 1) & (n < 4)
                with m.If(hsh[0] & ~k_bit):
                    m.d.sync += step_c.eq(step_c + wsh)
                with m.Elif(k_bit & ~hsh[0]):
                    m.d.sync += step_c.eq(step_c - wsh)
                with m.If(stride.bit_select(n, 1) & (n < 3)):
                    m.d.sync += step_r.eq(step_r + wsh)
                with m.If(pad.bit_select(n, 1) & (n < 3)):
                    m.d.sync += row_a.eq(row_a - wsh)
                with m.If(n == 7):
                    m.next = "RUN"
                    m.d.sync += [
                        fx.eq(0), fy.eq(0), c.eq(0), kb.eq(0), y.eq(0), rem.eq(out_w),
                        tile_x.eq(-pad), iy0.eq(-pad), wa.eq(w_base), w_row.eq(w_base),
                    ]
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), o.valid.eq(n != 0), step.eq(o.ready & (n != 0))]
                with m.If(n == 0):
                    # First RUN cycle: row_a is final now (the INIT sum landed).
                    m.d.sync += [a0.eq(row_a), tile_a.eq(row_a), n.eq(1)]
                with m.If(step & end):
                    m.next = "IDLE"

        with m.If(step):
            m.d.sync += [
                fx.eq(Mux(wrap_x, 0, fx + 1)),
                a0.eq(Mux(wrap_c, tile_a_next, a0 + a0_inc)),
                wa.eq(Mux(wrap_kb, w_base, Mux(wrap_c & ~last_tile, w_row, wa + 1))),
            ]
            with m.If(wrap_x):
                m.d.sync += fy.eq(Mux(wrap_y, 0, fy + 1))
            with m.If(wrap_y):
                m.d.sync += c.eq(Mux(wrap_c, 0, c + 1))
            with m.If(wrap_c):
                m.d.sync += [rem.eq(Mux(last_tile, out_w, rem - C)),
                             tile_x.eq(Mux(last_tile, -pad, tile_x + cs)),
                             tile_a.eq(tile_a_next)]
            with m.If(wrap_t):
                m.d.sync += [kb.eq(Mux(last_kb, 0, kb + 1)),
                             w_row.eq(Mux(last_kb, w_base, wa + 1))]
            with m.If(wrap_kb):
                m.d.sync += [y.eq(y + 1), iy0.eq(iy0 + stride), row_a.eq(row_next)]
        return m
