"""Im2col address generator: the operand order of one layer, as memory addresses.

Loop order (docs/architecture.md): ``for y in out_h: for kb in k_blocks: for xt in
x-tiles: for d = (c, fy, fx)``. Column ``j`` of a beat is output pixel ``xt*cols + j``.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .program import LayerDescriptor

__all__ = ["Im2col", "beat_layout", "im2col_reference"]


def beat_layout(cols):
    """Addresses of one operand beat."""
    return data.StructLayout({
        "act_addr": data.ArrayLayout(unsigned(16), cols),
        "act_zero": data.ArrayLayout(1, cols),   # padding or pixel >= out_w: operand is 0
        "w_addr": unsigned(16),
        "last": 1,                               # last d of the tile
        "end": 1,                                # last beat of the layer
    })


def im2col_reference(desc, cols):
    """Pure-Python model of :class:`Im2col`: yields one dict per beat (test scaffolding).

    ``desc`` is a dict with the LayerDescriptor fields used here (``cin, in_h, in_w,
    kernel, stride, pad, out_h, out_w, k_blocks, reduction, in_base, w_base``).
    """
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
                                addr.append((desc["in_base"] + (c * h + iy) * w + ix) & 0xFFFF)
                            last = d == red - 1
                            yield {"act_addr": addr, "act_zero": zero,
                                   "w_addr": (desc["w_base"] + kb * red + d) & 0xFFFF,
                                   "last": int(last),
                                   "end": int(last and y == out_h - 1 and kb == kbs - 1
                                              and xt == tiles - 1)}
                            d += 1


class Im2col(wiring.Component):
    """Generate the operand addresses of one layer, one beat per cycle.

    A layer starts with a beat on ``start`` (a :class:`~fpgacnn.hw.program.LayerDescriptor`;
    ``start.ready`` is high only while idle). The unit then spends 10 cycles computing
    per-layer constants by shift-and-add (no multipliers anywhere), and emits ``out_h * k_blocks *
    ceil(out_w / cols) * reduction`` beats on ``o_stream``, one per cycle unless
    backpressured, the final one with ``end``. Column ``j``'s byte address is
    ``in_base + (c*in_h + iy)*in_w + ix`` (CHW), its ``act_zero`` flags padding or a pixel
    beyond ``out_w``; the weight word is ``w_base + kb*reduction + d``.

    Only ``cin, in_h, in_w, kernel, stride, pad, out_h, out_w, k_blocks, reduction,
    in_base, w_base`` are used; ``reduction`` must equal ``cin*kernel*kernel`` (the host
    compiler guarantees it; :func:`im2col_reference` is the exact model). A descriptor
    with any of those counts zero emits nothing and returns to idle.

    Latency: first beat valid 12 cycles after the ``start`` transfer; throughput one
    beat per cycle.

    Parameters
    ----------
    cols : int
        Output pixels per beat (the systolic array's columns).
    """

    def __init__(self, cols):
        if not isinstance(cols, int) or cols < 1:
            raise TypeError(f"cols must be a positive integer, not {cols!r}")
        self.cols = cols
        super().__init__({
            "start": In(stream.Signature(LayerDescriptor)),
            "o_stream": Out(stream.Signature(beat_layout(cols))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        C = self.cols
        o = self.o_stream
        # Addresses wrap modulo 2**16 like the memories, so address arithmetic is plain
        # 16-bit; only the pixel coordinates that decide padding need a sign.
        A = unsigned(16)
        P = signed(12)          # coordinates: |value| < (255 + cols) * 7 + 15

        # Latched geometry.
        g = Signal(LayerDescriptor)
        # Per-layer constants, built by shift-and-add in INIT.
        hw = Signal(A)          # in_h * in_w
        sw = Signal(A)          # stride * in_w
        pw = Signal(A)          # pad * in_w
        fw = Signal(A)          # kernel * in_w
        cs = Signal(P)          # cols * stride
        joff = [Signal(P, name=f"joff_{j}") for j in range(C)]     # j * stride
        x_hi = [Signal(P, name=f"x_hi_{j}") for j in range(C)]     # in_w - j*stride
        step_y = Signal(A)      # in_w - kernel + 1: next fy
        step_c = Signal(A)      # hw - fw + step_y: next channel
        n = Signal(3)
        wsh = Signal(A)         # in_w << n
        hsh, ssh = Signal(8), Signal(3)             # multiplier bits, LSB first
        psh, fsh = Signal(3), Signal(4)

        # Loop state describing the beat to emit next. Column j of a beat is column 0
        # shifted by j*stride pixels, so only column 0's position is kept.
        y, kb, c = Signal(8), Signal(8), Signal(12)
        fy, fx = Signal(4), Signal(4)
        d = Signal(16)
        iy0 = Signal(P)         # y*stride - pad
        rowb = Signal(A)        # in_base + iy0*in_w
        inner = Signal(A)       # c*hw + fy*in_w + fx
        wrow = Signal(A)        # w_base + kb*reduction
        colb = Signal(P)        # (xt*cols)*stride - pad: input x of column 0 at fx = 0
        pix0 = Signal(9)        # xt*cols

        iy = Signal(P)
        ix0 = Signal(P)
        base = Signal(A)
        m.d.comb += [iy.eq(iy0 + fy), ix0.eq(colb + fx), base.eq(rowb + colb + inner)]
        row_ok = (iy >= 0) & (iy < g.in_h)

        last_d = d == g.reduction - 1
        last_tile = pix0 + C >= g.out_w
        last_kb = kb == g.k_blocks - 1
        last_y = y == g.out_h - 1

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.start.ready.eq(1)
                with m.If(self.start.valid):
                    p = self.start.payload
                    m.d.sync += [
                        g.eq(p), n.eq(0), wsh.eq(p.in_w),
                        hsh.eq(p.in_h), ssh.eq(p.stride), psh.eq(p.pad), fsh.eq(p.kernel),
                        hw.eq(0), sw.eq(0), pw.eq(0), fw.eq(0),
                    ]
                    empty = ((p.cin == 0) | (p.in_h == 0) | (p.in_w == 0) | (p.kernel == 0) |
                             (p.stride == 0) | (p.out_h == 0) | (p.out_w == 0) |
                             (p.k_blocks == 0) | (p.reduction == 0))
                    with m.If(~empty):   # nothing to generate otherwise: stay idle
                        m.next = "INIT"
            with m.State("INIT"):
                m.d.comb += self.busy.eq(1)
                # Products with in_w by shift-and-add, one multiplier bit per cycle: 8
                # cycles (in_h has 8 bits), no multiplier.
                m.d.sync += [wsh.eq(wsh << 1), hsh.eq(hsh >> 1), ssh.eq(ssh >> 1),
                             psh.eq(psh >> 1), fsh.eq(fsh >> 1), n.eq(n + 1)]
                for product, bits in ((hw, hsh), (sw, ssh), (pw, psh), (fw, fsh)):
                    with m.If(bits[0]):
                        m.d.sync += product.eq(product + wsh)
                # Constant × stride: a few shifted adds, settled long before FINAL.
                m.d.sync += cs.eq(g.stride * C)
                m.d.sync += [joff[j].eq(g.stride * j) for j in range(C)]
                with m.If(n == 7):
                    m.next = "FINAL"
            with m.State("FINAL"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [
                    step_y.eq(g.in_w - g.kernel + 1),
                    step_c.eq(hw - fw),
                    y.eq(0), kb.eq(0), c.eq(0), fy.eq(0), fx.eq(0), d.eq(0),
                    iy0.eq(-g.pad), rowb.eq(g.in_base - pw),
                    inner.eq(0), wrow.eq(g.w_base), colb.eq(-g.pad), pix0.eq(0),
                ]
                m.d.sync += [x_hi[j].eq(g.in_w - joff[j]) for j in range(C)]
                m.next = "FINAL2"
            with m.State("FINAL2"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += step_c.eq(step_c + step_y)
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                with m.If(~o.valid | o.ready):
                    # Emit the current beat into the output register...
                    m.d.sync += [
                        o.valid.eq(1),
                        o.payload.w_addr.eq(wrow + d),
                        o.payload.last.eq(last_d),
                        o.payload.end.eq(last_d & last_tile & last_kb & last_y),
                    ]
                    for j in range(C):
                        # ix_j = ix0 + j*stride inside [0, in_w), compared without the add.
                        col_ok = (ix0 >= -joff[j]) & (ix0 < x_hi[j]) & (pix0 + j < g.out_w)
                        m.d.sync += [
                            o.payload.act_addr[j].eq(base + joff[j] if j else base),
                            o.payload.act_zero[j].eq(~(row_ok & col_ok)),
                        ]
                    # ...and step the loop nest (innermost first).
                    with m.If(fx != g.kernel - 1):
                        m.d.sync += [fx.eq(fx + 1), inner.eq(inner + 1), d.eq(d + 1)]
                    with m.Else():
                        m.d.sync += fx.eq(0)
                        with m.If(fy != g.kernel - 1):
                            m.d.sync += [fy.eq(fy + 1), d.eq(d + 1), inner.eq(inner + step_y)]
                        with m.Else():
                            m.d.sync += fy.eq(0)
                            with m.If(c != g.cin - 1):
                                m.d.sync += [c.eq(c + 1), d.eq(d + 1),
                                             inner.eq(inner + step_c)]
                            with m.Else():
                                m.d.sync += [c.eq(0), d.eq(0), inner.eq(0)]
                                self._next_tile(m, g, C, last_tile, last_kb, last_y, kb, y,
                                                colb, pix0, cs, wrow, iy0, rowb, sw)
            with m.State("DRAIN"):
                # The final beat sits in the output register until taken.
                m.d.comb += self.busy.eq(1)
                with m.If(o.ready):
                    m.d.sync += o.valid.eq(0)
                    m.next = "IDLE"
        return m

    @staticmethod
    def _next_tile(m, g, C, last_tile, last_kb, last_y, kb, y, colb, pix0, cs, wrow, iy0,
                   rowb, sw):
        with m.If(~last_tile):
            m.d.sync += [colb.eq(colb + cs), pix0.eq(pix0 + C)]
        with m.Else():
            m.d.sync += [colb.eq(-g.pad), pix0.eq(0)]
            with m.If(~last_kb):
                m.d.sync += [kb.eq(kb + 1), wrow.eq(wrow + g.reduction)]
            with m.Else():
                m.d.sync += [kb.eq(0), wrow.eq(g.w_base)]
                with m.If(~last_y):
                    m.d.sync += [y.eq(y + 1), iy0.eq(iy0 + g.stride), rowb.eq(rowb + sw)]
                with m.Else():
                    m.next = "DRAIN"
