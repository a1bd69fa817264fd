"""Im2col address generator: the operand order of one layer, as memory addresses.

Loop order (docs/architecture.md): ``for y in out_h: for kb in k_blocks: for xt in
x-tiles: for d = (c, fy, fx)``. Column ``j`` of a beat is output pixel ``xt*cols + j``,
or, when the unit is built with ``wrap_rows`` and the layer's tiles wrap rows
(:func:`~.program.wraps_rows`), pixel ``t*cols + j`` of the map read row-major (tile ``t``).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .program import LayerDescriptor, column_mode, field_widths, paired_walk, wraps_rows

__all__ = ["Im2col", "beat_layout", "im2col_reference"]

#: Widths of the descriptor fields: the registers that hold them, and the address limits.
_FIELDS = field_widths(LayerDescriptor)
_ACT_ADDR, _W_ADDR = _FIELDS["in_base"], _FIELDS["w_base"]


def shift_add(value, k):
    """``value * k`` for a constant ``k >= 0`` as shifted copies of ``value`` added up
    (one per set bit of ``k``): no multiplier for synthesis to map onto a DSP block."""
    total = None
    for b in range(k.bit_length()):
        if k >> b & 1:
            total = value << b if total is None else total + (value << b)
    return Const(0, 1) if total is None else total


def beat_layout(cols, act_addr_width=_ACT_ADDR, w_addr_width=_W_ADDR):
    """Addresses of one operand beat."""
    return data.StructLayout({
        "act_addr": data.ArrayLayout(unsigned(act_addr_width), cols),
        "act_zero": data.ArrayLayout(1, cols),   # padding or pixel past the map: operand 0
        "w_addr": unsigned(w_addr_width),
        "last": 1,                               # last d of the tile
        "end": 1,                                # last beat of the layer
        # The tile's last column holding a real pixel (column mode: a real k-block).
        "last_col": range(cols),
        "last_kb": 1,                            # the tile is in the last k-block(s)
    })


def im2col_reference(desc, cols, act_addr_width=_ACT_ADDR, w_addr_width=_W_ADDR,
                     column_blocks=False, wrap_rows=False):
    """Pure-Python model of :class:`Im2col`: yields one dict per beat (test scaffolding).

    ``desc`` is a dict with the LayerDescriptor fields used here (``cin, in_h, in_w,
    kernel, stride, pad, out_h, out_w, k_blocks, reduction, in_base, w_base``, and
    ``pad_top``, which defaults to ``pad``, and ``pixel_pairs``, to 0). With
    ``pixel_pairs`` the walk's pixels are the layer's pairs (:func:`~.program.paired_walk`).
    Addresses wrap modulo ``2**act_addr_width`` / ``2**w_addr_width`` like the unit's.
    ``column_blocks`` and ``wrap_rows`` as in :class:`Im2col`.
    """
    a_mask, w_mask = (1 << act_addr_width) - 1, (1 << w_addr_width) - 1
    c_n, h, w = desc["cin"], desc["in_h"], desc["in_w"]
    f, s, p = desc["kernel"], desc["stride"], desc["pad"]
    p_top = desc.get("pad_top", p)
    out_h, kbs, red = desc["out_h"], desc["k_blocks"], desc["reduction"]
    # Column j's pixel x of the walk reads input columns x*step + fx - pad, fx < f_w.
    f_w, step, out_w = paired_walk(f, s, desc["out_w"], desc.get("pixel_pairs", 0))
    colmode = column_mode(cols, out_w, kbs, fc_columns=column_blocks)
    kb_starts = list(range(0, kbs, cols if colmode else 1))
    w_base = desc["w_base"] // cols if colmode else desc["w_base"]
    # Each tile: (k-block index, its columns' output pixels (y, x), y = out_h: none).
    if colmode:
        tiles = [(n, [(y, 0)] * cols) for y in range(out_h) for n in range(len(kb_starts))]
    elif wraps_rows(cols, out_w, kbs, wrap_rows=wrap_rows):
        tiles = [(0, [divmod(t * cols + j, out_w) for j in range(cols)])
                 for t in range(-(-out_h * out_w // cols))]
    else:
        x_tiles = -(-out_w // cols)
        tiles = [(n, [(y, xt * cols + j) for j in range(cols)])
                 for y in range(out_h) for n in range(kbs) for xt in range(x_tiles)]
    for t, (n_kb, pixels) in enumerate(tiles):
        if colmode:
            last_col = min(cols, kbs - kb_starts[n_kb]) - 1
        else:
            last_col = max(j for j, (oy, ox) in enumerate(pixels) if ox < out_w and oy < out_h)
        d = 0
        for c in range(c_n):
            for fy in range(f):
                for fx in range(f_w):
                    addr, zero = [], []
                    for oy, ox in pixels:
                        iy, ix = oy * s + fy - p_top, ox * step + fx - p
                        pad = (not (0 <= iy < h and 0 <= ix < w) or ox >= out_w
                               or oy >= out_h)
                        zero.append(int(pad))
                        addr.append((desc["in_base"] + (c * h + iy) * w + ix) & a_mask)
                    last = d == red - 1
                    yield {"act_addr": addr, "act_zero": zero,
                           "w_addr": (w_base + n_kb * red + d) & w_mask,
                           "last": int(last), "end": int(last and t == len(tiles) - 1),
                           "last_col": last_col, "last_kb": int(n_kb == len(kb_starts) - 1)}
                    d += 1


class Im2col(wiring.Component):
    """Generate the operand addresses of one layer, one beat per cycle.

    A layer starts with a beat on ``start`` (a :class:`~fpgacnn.hw.program.LayerDescriptor`;
    ``start.ready`` is high only while idle); the payload must stay unchanged until the
    layer's last beat (the unit reads its plain fields from it, copying none). The unit
    then spends 8 cycles (one per bit of the descriptor's ``in_h``) computing per-layer
    constants by shift-and-add (no multipliers anywhere), and emits
    :func:`~.program.array_tiles` ``* reduction`` beats on ``o_stream`` (``out_h *
    k_blocks * ceil(out_w / cols) * reduction``, or ``ceil(out_h * out_w / cols) *
    reduction`` when the tiles wrap rows), one per cycle unless backpressured, the final
    one with ``end``. Every beat also carries its tile's shape: ``last_kb`` (the tile is
    in the layer's last k-block) and ``last_col``, the last column with a real pixel
    (in column mode, with a real k-block).
    Column ``j``'s byte address is ``in_base + (c*in_h + iy)*in_w + ix`` (CHW) with
    ``iy = y*stride + fy - pad_top`` and ``ix = x*stride + fx - pad``, its ``act_zero``
    flags a row outside ``[0, in_h)``, a column outside ``[0, in_w)`` or a pixel past the
    map (beyond ``out_w``, or past the last row in a wrapping tile); the weight word is
    ``w_base + kb*reduction + d``. Addresses of zeroed
    operands are unspecified (they are never read).

    Only ``cin, in_h, in_w, kernel, stride, pad, pad_top, out_h, out_w, k_blocks,
    reduction, in_base, w_base`` (and with ``pixel_pairs`` below, ``pixel_pairs``) are
    used. The geometry must be a consistent convolution across: ``reduction =
    cin*kernel**2`` (pixel pairs: ``cin*kernel*(kernel + stride)``) and ``out_w = (in_w -
    kernel + 2*pad)/stride + 1`` (the host compiler guarantees it;
    :func:`im2col_reference` is the exact model).
    Down, ``out_h`` is free (a horizontal band of a layer, ``pad_top`` zero rows above
    its ``in_h`` input rows, any rows below them zero) as long as the last row's input
    rows stay below ``in_h + 256``. A whole layer has ``pad_top = pad``. A descriptor
    with any of those counts zero emits nothing and returns to idle.

    How it stays small: the payload is driven by the loop state itself (no output copy);
    addresses are registers stepped by one addition as the loops advance (``+1`` per
    ``fx``, one precomputed step per ``fy`` and per channel, reloads from per-tile and
    per-row origins) instead of being recomputed from the loop indices; the padding
    coordinates are a tile/row origin plus ``fx``/``fy``. Column ``j > 0`` is column 0
    shifted by ``j*stride`` (one adder each; the products are shifts and adds of the
    latched stride). How it stays fast: each loop's end is a flip-flop set as its counter
    moves (channels, k-blocks and rows count down, so the flag's next value is a compare
    with a constant), and a beat is taken by one LUT from registers.

    Latency: first beat valid 10 cycles after the ``start`` transfer; throughput one
    beat per cycle. The payload is combinational from registers (one adder deep).

    With ``column_blocks``, a layer in :func:`~.program.column_mode` (``out_w == 1``, more
    than ``max(1, cols // 4)`` k-blocks) runs in column mode: column ``j``
    of a tile computes k-block ``kb + j`` of the one pixel (all columns get column 0's
    address and padding flag), ``kb`` steps by ``cols``, and the weight word is
    ``w_base/cols + (kb/cols)*reduction + d``, a word of ``cols`` k-blocks (``w_base`` a
    multiple of ``cols``, a power of two).

    Parameters
    ----------
    cols : int
        Output pixels per beat (the systolic array's columns).
    act_addr_width, w_addr_width : int
        Widths of the activation byte address and of the weight word address (16, the
        descriptor's, by default; a board with a 4 KiB activation memory and 16K weight
        words passes 12 and 14). Addresses wrap modulo ``2**width``.
    column_blocks : bool
        Run layers in :func:`~.program.column_mode` in column mode (above);
        ``cols`` a power of two.
    wrap_rows : bool
        Let tiles wrap rows where :func:`~.program.wraps_rows` allows it (per-layer wrap
        offsets and, per column, a next-row address and padding check); without it every
        output row starts a new tile.
    pixel_pairs : bool
        Obey the descriptor's ``pixel_pairs``: column ``j`` then stands for the pixel pair
        ``2j, 2j + 1`` and reads a kernel ``stride`` columns wider, columns ``2*stride``
        apart (:func:`~.program.paired_walk`; everything above holds with ``kernel``,
        ``stride`` and ``out_w`` of the walk). Without it the field is ignored.
    """

    def __init__(self, cols, *, act_addr_width=_ACT_ADDR, w_addr_width=_W_ADDR,
                 column_blocks=False, wrap_rows=False, pixel_pairs=False):
        if not isinstance(cols, int) or cols < 1:
            raise TypeError(f"cols must be a positive integer, not {cols!r}")
        for name, value, field in (("act_addr_width", act_addr_width, "in_base"),
                                   ("w_addr_width", w_addr_width, "w_base")):
            if not isinstance(value, int) or not 1 <= value <= _FIELDS[field]:
                raise ValueError(f"{name} must be an integer in 1..{_FIELDS[field]} (the "
                                 f"descriptor's {field} has {_FIELDS[field]} bits), not "
                                 f"{value!r}")
        if column_blocks and cols & (cols - 1):
            raise ValueError(f"column_blocks needs cols to be a power of two, not {cols}")
        self.cols, self.column_blocks = cols, bool(column_blocks)
        self.wrap_rows = bool(wrap_rows) and cols > 1
        self.pixel_pairs = bool(pixel_pairs)
        self.act_addr_width, self.w_addr_width = act_addr_width, w_addr_width
        super().__init__({
            "start": In(stream.Signature(LayerDescriptor)),
            "o_stream": Out(stream.Signature(beat_layout(cols, act_addr_width,
                                                         w_addr_width))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        r = _Registers(self.start.payload, self.cols, self.act_addr_width, self.w_addr_width,
                       self.column_blocks, self.wrap_rows, self.pixel_pairs)
        o = self.o_stream
        # Coordinates are sums, not registers: cheaper than stepping them.
        iy = Signal(r.P)
        m.d.comb += iy.eq(r.iy0 + r.fy)
        row_ok = ~iy[-1] & (iy < r.in_h)
        m.d.comb += [o.payload.w_addr.eq(r.wa), o.payload.last.eq(r.wrap_c),
                     o.payload.end.eq(r.end), o.payload.last_kb.eq(r.last_kb)]
        # The tile's real pixels: rem of them in its row's last tile (a wrapping tile
        # runs on into the next row unless this is the last).
        short = r.last_tile & (~r.wrap | r.y_last)
        last_col = Mux(short, r.rem - 1, self.cols - 1)
        if self.column_blocks:
            last_col = Mux(r.colmode, Mux(r.last_kb, r.kb_left, self.cols - 1), last_col)
        m.d.comb += o.payload.last_col.eq(last_col)
        if self.wrap_rows:
            # Columns past the row's end: the next output row (the last row has none).
            iy_next = Signal(r.P)
            m.d.comb += iy_next.eq(iy + r.stride)
            next_row_ok = r.wrap & ~iy_next[-1] & (iy_next < r.in_h) & ~r.y_last
        for j in range(self.cols):
            ix = Signal(r.P, name=f"ix_{j}")
            ok = row_ok & (r.rem > j)
            addr = r.a0
            if j and self.wrap_rows:
                # Column j is column 0 shifted by j*stride, or by j*stride - out_w*stride
                # (x) and that plus stride*in_w (address) in the next row.
                wrapped = r.wrapped[j]
                ok = Mux(wrapped, next_row_ok, row_ok)
                m.d.comb += ix.eq(r.tile_x + r.fx + Mux(wrapped, r.next_x[j], r.stride_x[j]))
                addr = r.a0 + Mux(wrapped, r.next_a[j], r.stride_x[j])
            elif j:     # column j is column 0 shifted by j*stride
                m.d.comb += ix.eq(r.tile_x + r.fx + r.stride_x[j])
                addr = r.a0 + r.stride_x[j]
            else:
                m.d.comb += ix.eq(r.tile_x + r.fx)
            ok = ok & ~ix[-1] & (ix < r.in_w)
            if j and self.column_blocks:     # column mode: every column reads pixel 0
                addr, ok = Mux(r.colmode, r.a0, addr), Mux(r.colmode, ~o.payload.act_zero[0], ok)
            m.d.comb += [o.payload.act_addr[j].eq(addr), o.payload.act_zero[j].eq(~ok)]
        step = Signal()            # a beat is taken: advance the loop nest
        self._control(m, r, step)
        self._advance(m, r, step)
        return m

    def _control(self, m, r, step):
        """IDLE (latch a descriptor) → INIT (per-layer products) → RUN (emit beats)."""
        # Shift-and-add products with in_w, LSB first, one multiplier bit per cycle; each
        # starts at its additive constant so no adder is needed afterwards. INIT lasts as
        # many cycles as the widest multiplier (in_h) has bits.
        wsh = Signal.like(r.row_a)      # in_w << n
        hsh = Signal.like(r.in_h)       # in_h, shifted right each cycle
        init_cycles = max(len(hsh), len(r.km1), len(r.stride), len(r.pad_top))
        n = Signal(range(init_cycles))
        o = self.o_stream
        # RUN after its first cycle, a flip-flop of its own: the beat is valid, and the
        # loop nest steps whenever it is taken (step is one LUT from registers).
        emitting = Signal()
        m.d.comb += [o.valid.eq(emitting), step.eq(emitting & o.ready)]
        if self.wrap_rows:
            osh = Signal.like(r.ows)                    # out_w << n
            dsh = Signal.like(r.wrap_step)              # (in_w - out_w) << n
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.start.ready.eq(1)
                with m.If(self.start.valid):
                    p = self.start.payload
                    base = p.in_base - p.pad
                    # The kernel width the walk reads, the step between columns.
                    kernel_w, col_step = p.kernel, p.stride
                    if self.pixel_pairs:
                        kernel_w = p.kernel + Mux(p.pixel_pairs, p.stride, 0)
                        col_step = p.stride << p.pixel_pairs
                        m.d.sync += r.kwm1.eq(kernel_w - 1)
                    m.d.sync += [
                        r.km1.eq(p.kernel - 1), r.cm1.eq(p.cin - 1),
                        r.kbm1.eq(p.k_blocks - 1), r.ohm1.eq(p.out_h - 1),
                        r.iy0.eq(-p.pad_top),
                        n.eq(0), wsh.eq(p.in_w), hsh.eq(p.in_h),
                        r.step_y.eq(p.in_w - kernel_w + 1), r.step_c.eq(1 - kernel_w),
                        r.step_r.eq(0), r.row_a.eq(base),
                    ]
                    if self.cols > 1:
                        # (A product by 1, which synthesis removes: the iCEBreaker's
                        # netlist, placed at 30 MHz with no margin, stays as it was.)
                        m.d.sync += r.stride_x[1].eq(col_step * 1)
                    if self.wrap_rows:
                        walk_w = p.out_w >> p.pixel_pairs if self.pixel_pairs else p.out_w
                        m.d.sync += [r.wrap.eq(wraps_rows(self.cols, walk_w, p.k_blocks,
                                                          wrap_rows=True)),
                                     osh.eq(p.out_w), dsh.eq(p.in_w - p.out_w),
                                     r.ows.eq(0), r.wrap_step.eq(0)]
                    if self.column_blocks:
                        log_c = (self.cols - 1).bit_length()
                        colmode = column_mode(self.cols, p.out_w, p.k_blocks,
                                              fc_columns=True)
                        m.d.sync += [r.colmode.eq(colmode),
                                     r.w_base.eq(Mux(colmode, p.w_base >> log_c, p.w_base))]
                    empty = ((p.cin == 0) | (p.in_h == 0) | (p.in_w == 0) | (p.kernel == 0) |
                             (p.stride == 0) | (p.out_h == 0) | (p.out_w == 0) |
                             (p.k_blocks == 0) | (p.reduction == 0))
                    with m.If(~empty):   # nothing to generate otherwise: stay idle
                        m.next = "INIT"
            with m.State("INIT"):
                # step_c += (in_h - (kernel-1))*in_w (the factor may be negative with
                # padding, so its two terms go in separately), step_r += stride*in_w,
                # row_a -= pad_top*in_w.
                m.d.comb += self.busy.eq(1)
                m.d.sync += [wsh.eq(wsh << 1), hsh.eq(hsh >> 1), n.eq(n + 1)]
                # Column j's offset (and a tile's step, cols*col_step) from the latched
                # col_step by shifts and adds: a multiplier here is a DSP block that
                # placement may put far from the address generator.
                m.d.sync += [r.stride_x[j].eq(shift_add(r.stride_x[1], j))
                             for j in range(2, self.cols)]
                if r.cs_latched:
                    m.d.sync += r.cs.eq(shift_add(r.stride_x[1], self.cols))
                k_bit = r.km1.bit_select(n, 1) & (n < len(r.km1))
                with m.If(hsh[0] & ~k_bit):
                    m.d.sync += r.step_c.eq(r.step_c + wsh)
                with m.Elif(k_bit & ~hsh[0]):
                    m.d.sync += r.step_c.eq(r.step_c - wsh)
                with m.If(r.stride.bit_select(n, 1) & (n < len(r.stride))):
                    m.d.sync += r.step_r.eq(r.step_r + wsh)
                    if self.wrap_rows:
                        # ows = out_w*stride; wrap_step = (in_w - out_w)*stride.
                        m.d.sync += [r.ows.eq(r.ows + osh),
                                     r.wrap_step.eq(r.wrap_step + dsh)]
                if self.wrap_rows:
                    m.d.sync += [osh.eq(osh << 1), dsh.eq(dsh << 1)]
                with m.If(r.pad_top.bit_select(n, 1) & (n < len(r.pad_top))):
                    m.d.sync += r.row_a.eq(r.row_a - wsh)
                with m.If(n == init_cycles - 1):
                    m.next = "RUN"
                    m.d.sync += [
                        n.eq(0), r.fx.eq(0), r.fy.eq(0), r.c_left.eq(r.cm1),
                        r.kb_left.eq(r.kbm1), r.y_left.eq(r.ohm1), *r.set_rem(r.out_w),
                        r.tile_x.eq(-r.pad), r.wa.eq(r.w_base), r.w_row.eq(r.w_base),
                        *r.load_flags(r.first_flags()),
                    ]
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                with m.If(~emitting):
                    # First RUN cycle: row_a is final now (the INIT sum landed).
                    m.d.sync += [r.a0.eq(r.row_a), r.tile_a.eq(r.row_a), emitting.eq(1)]
                    if self.wrap_rows:
                        # The wrapping tiles' column offsets and tile steps.
                        m.d.sync += [r.next_x[j].eq(r.stride_x[j] - r.ows)
                                     for j in range(1, self.cols)]
                        m.d.sync += [r.next_a[j].eq(r.stride_x[j] + r.wrap_step)
                                     for j in range(1, self.cols)]
                        m.d.sync += [r.cs_wrap_x.eq(r.cs - r.ows),
                                     r.cs_wrap_a.eq(r.cs + r.wrap_step),
                                     r.rem_wrap.eq(r.out_w - self.cols)]
                with m.If(step & r.end):
                    m.d.sync += emitting.eq(0)
                    m.next = "IDLE"

    def _advance(self, m, r, step):
        """Step the loop nest and its addresses by one beat when ``step``."""
        C = self.cols
        # Next values, each register with one adder and few sources.
        row_next = Signal.like(r.row_a)
        tile_a_next = Signal.like(r.row_a)
        a0_inc = Signal.like(r.row_a)
        # A row's last tile: the next starts a row (or the k-block's row) afresh, or
        # with wrapping tiles where this one ends in the next row.
        new_row = r.last_tile & ~r.wrap
        tile_a_step, tile_x_step, rem_next = r.cs, r.cs, r.rem - C
        if self.wrap_rows:
            tile_a_step = Mux(r.last_tile, r.cs_wrap_a, r.cs)
            tile_x_step = Mux(r.last_tile, r.cs_wrap_x, r.cs)
            rem_next = Mux(r.last_tile, r.rem + r.rem_wrap, r.rem - C)
        if not r.cs_latched:
            m.d.comb += r.cs.eq(r.col_step * C)     # a shift
        m.d.comb += [
            row_next.eq(r.row_a + r.step_r),
            tile_a_next.eq(Mux(new_row, Mux(r.last_kb, row_next, r.row_a),
                               r.tile_a + tile_a_step)),
            a0_inc.eq(Mux(~r.wrap_x, 1, Mux(~r.wrap_y, r.step_y, r.step_c))),
        ]
        rem_load = Signal.like(r.rem)
        m.d.comb += rem_load.eq(Mux(new_row, r.out_w, rem_next))
        with m.If(step):
            m.d.sync += r.load_flags(r.next_flags(rem_load))
            m.d.sync += [
                r.fx.eq(Mux(r.wrap_x, 0, r.fx + 1)),
                r.a0.eq(Mux(r.wrap_c, tile_a_next, r.a0 + a0_inc)),
                r.wa.eq(Mux(r.wrap_kb, r.w_base, Mux(r.wrap_c & ~r.last_tile, r.w_row,
                                                     r.wa + 1))),
            ]
            with m.If(r.wrap_x):
                m.d.sync += r.fy.eq(Mux(r.wrap_y, 0, r.fy + 1))
            with m.If(r.wrap_y):
                m.d.sync += r.c_left.eq(Mux(r.wrap_c, r.cm1, r.c_left - 1))
            with m.If(r.wrap_c):
                m.d.sync += [*r.set_rem(rem_load),
                             r.tile_x.eq(Mux(new_row, -r.pad, r.tile_x + tile_x_step)),
                             r.tile_a.eq(tile_a_next)]
            with m.If(r.wrap_t):
                m.d.sync += [r.kb_left.eq(Mux(r.last_kb, r.kbm1, r.kb_left - r.kb_step)),
                             r.w_row.eq(Mux(r.last_kb, r.w_base, r.wa + 1))]
            with m.If(r.wrap_kb):
                m.d.sync += [r.y_left.eq(r.y_left - 1), r.iy0.eq(r.iy0 + r.stride),
                             r.row_a.eq(row_next)]


class _Registers:
    """The state of one :class:`Im2col` run: the latched geometry, the per-layer steps and
    the loop nest, whose values drive the beat on ``o_stream`` directly.

    Registers that hold a descriptor field (or count up to one) take that field's shape.
    """

    def __init__(self, desc, cols, act_addr_width, w_addr_width, column_blocks=False,
                 wrap_rows=False, pixel_pairs=False):
        A, WA = unsigned(act_addr_width), unsigned(w_addr_width)
        # Pixel coordinates that decide padding. For a consistent geometry a real pixel's
        # input x lies in [-pad, in_w + pad), y in [-pad_top, in_h + 256) (a band's rows
        # below its input); a pixel beyond out_w (zeroed anyway) adds at most
        # (cols-1)*stride.
        max_in = (1 << max(len(desc.in_h), len(desc.in_w))) - 1
        max_pad, max_stride = (1 << len(desc.pad)) - 1, (1 << len(desc.stride)) - 1
        # With pixel pairs, columns are 2*stride apart and the kernel stride wider.
        max_step = 2 * max_stride if pixel_pairs else max_stride
        max_x = max_in + max_pad + max_step * (cols - 1)
        if pixel_pairs:
            max_x += max_stride
        self.P = signed(max_x.bit_length() + 1)

        # Latched geometry (only what the run needs).
        self.km1 = Signal.like(desc.kernel)      # kernel - 1
        # The kernel width - 1 (the fx loop's end) and the step between columns: with
        # pixel pairs the kernel is stride wider and the columns 2*stride apart.
        self.kwm1 = Signal(range(max_stride + (1 << len(desc.kernel)))) if pixel_pairs \
            else self.km1
        self.col_step = desc.stride << desc.pixel_pairs if pixel_pairs else desc.stride
        self.cm1 = Signal.like(desc.cin)         # cin - 1
        self.kbm1 = Signal.like(desc.k_blocks)   # k_blocks - 1
        self.ohm1 = Signal.like(desc.out_h)      # out_h - 1
        # Fields used as they are: read from the descriptor, which stays put (no copy).
        self.out_w, self.in_h, self.in_w = desc.out_w, desc.in_h, desc.in_w
        if pixel_pairs:     # the pixels of a row as the columns see them
            self.out_w = desc.out_w >> desc.pixel_pairs
        self.stride, self.pad, self.pad_top = desc.stride, desc.pad, desc.pad_top
        self.w_base = Signal(WA) if column_blocks else desc.w_base[:w_addr_width]
        # Per-layer steps.
        # in_w - kernel + 1: next fy (may be <= 0 with padding).
        self.step_y = Signal(signed(len(desc.in_w) + 2))
        # (in_h - kernel + 1)*in_w - kernel + 1: next channel.
        self.step_c = Signal(A)
        self.step_r = Signal(A)                         # stride*in_w: next output row
        self.cs = Signal(range(max_step * cols + 1))  # cols*col_step: next x-tile
        # A shift of the descriptor's col_step for a power-of-two cols, else latched.
        self.cs_latched = bool(cols & (cols - 1))
        # j*col_step: column j's input x and address offset from column 0's, latched with
        # the descriptor so no multiplier sits between the loop state and the beat.
        self.stride_x = [None] + [Signal(range(max_step * j + 1), name=f"stride_x{j}")
                                  for j in range(1, cols)]
        # Wrapping tiles (program.wraps_rows; only built with wrap_rows, never with one
        # column): out_w*stride, (in_w - out_w)*stride, column j's x and address offsets
        # in the next row, the step from a row's last tile to the next tile, and rem's
        # (out_w - cols).
        self.wrap = Signal() if wrap_rows else Const(0, 1)
        if wrap_rows:
            self.ows = Signal(range((1 << len(desc.out_w)) * max_stride))
            self.wrap_step = Signal(A)
            self.next_x = [None] + [Signal(self.P, name=f"next_x{j}") for j in range(1, cols)]
            self.next_a = [None] + [Signal(A, name=f"next_a{j}") for j in range(1, cols)]
            self.cs_wrap_x = Signal(self.P)
            self.cs_wrap_a = Signal(A)
            self.rem_wrap = Signal.like(desc.out_w)
            # rem <= j, kept with rem: column j is in the next row (registered, so the
            # compare is not between rem and the padding checks).
            self.wrapped = [None] + [Signal(name=f"wrapped{j}") for j in range(1, cols)]

        # Loop state = the beat on o_stream.
        self.fx = Signal.like(self.kwm1, name="fx") if pixel_pairs else Signal.like(desc.kernel)
        self.fy = Signal.like(desc.kernel)
        # Channel, k-block and row count down (k-blocks by kb_step): kb_left is the
        # k-blocks after the tile's first, which column mode's last column needs anyway.
        self.c_left = Signal.like(desc.cin)
        self.kb_left = Signal.like(desc.k_blocks)
        self.y_left = Signal.like(desc.out_h)
        self.rem = Signal.like(desc.out_w)   # out_w - xt*cols: pixels left in this row
        self.a0 = Signal(A)                  # column 0's address
        self.tile_a = Signal(A)              # a0 at (c, fy, fx) = 0 of this tile
        self.row_a = Signal(A)               # a0 at (c, fy, fx) = 0 of tile 0 of this row
        self.tile_x = Signal(self.P)         # column 0's input x at fx = 0
        self.iy0 = Signal(self.P)            # input y at fy = 0
        self.wa = Signal(WA)                 # weight word
        self.w_row = Signal(WA)              # its value at d = 0 of this kb

        # Each loop's last value as a flip-flop (innermost first), and which loops wrap
        # at this beat as flip-flops too: ``wraps[k]`` is the AND of the first ``k + 1``
        # flags. The loop nest's enables are then one AND with ``step`` each, not a chain
        # through the loops; the flags' next values (``next_flags``) are computed from
        # registers, off the step's path.
        self.fx_last, self.fy_last = Signal(name="fx_last"), Signal(name="fy_last")
        self.c_last, self.last_tile = Signal(name="c_last"), Signal(name="last_tile")
        self.last_kb, self.y_last = Signal(name="last_kb"), Signal(name="y_last")
        self.flags = [self.fx_last, self.fy_last, self.c_last, self.last_tile,
                      self.last_kb, self.y_last]
        self.wraps = [Signal(name=f"wraps{k}") for k in range(len(self.flags))]
        self._cols, self._wrap_rows = cols, wrap_rows
        if column_blocks:
            # Column mode: a tile is cols k-blocks, kb_left counts down by cols.
            self.colmode = Signal()
            self.kb_step = Mux(self.colmode, cols, 1)
        else:
            self.colmode = None
            self.kb_step = 1
        # wrap_x: the beat is fx's last; wrap_y: fx's and fy's; ... end: the layer's.
        (self.wrap_x, self.wrap_y, self.wrap_c, self.wrap_t, self.wrap_kb,
         self.end) = self.wraps

    def first_flags(self):
        """Each loop's flag when its counter starts (a layer constant)."""
        kb_first = self.kbm1 == 0
        if self.colmode is not None:
            # Column mode: the tile's k-blocks kb .. kb + cols - 1 include the last one.
            kb_first = Mux(self.colmode, self.kbm1 < self._cols, kb_first)
        return [self.kwm1 == 0, self.km1 == 0, self.cm1 == 0, self.out_w <= self._cols,
                kb_first, self.ohm1 == 0]

    def next_flags(self, rem_load):
        """The flags after a beat is taken (``rem_load``: what ``rem`` is loaded with if
        the tile ends): loop k's changes only if the loops inside it wrap, to its first
        value's if it wraps too, else to whether its counter's next value is its last."""
        kb_next_last = self.kb_left == 1
        if self.colmode is not None:
            kb_next_last = Mux(self.colmode, self.kb_left < 2 * self._cols, kb_next_last)
        first = self.first_flags()
        stepped = [Mux(self.fx_last, first[0], self.fx + 1 == self.kwm1),
                   Mux(self.fy_last, first[1], self.fy + 1 == self.km1),
                   Mux(self.c_last, first[2], self.c_left == 1),
                   rem_load <= self._cols,
                   Mux(self.last_kb, first[4], kb_next_last),
                   self.y_left == 1]
        return [stepped[0]] + [Mux(self.wraps[k - 1], stepped[k], self.flags[k])
                               for k in range(1, len(self.flags))]

    def load_flags(self, values):
        """Assignments that load the flags with ``values`` and ``wraps`` with their ANDs."""
        statements = [f.eq(v) for f, v in zip(self.flags, values)]
        statements += [w.eq(Cat(*values[:k + 1]).all()) for k, w in enumerate(self.wraps)]
        return statements

    def set_rem(self, value):
        """Assignments that load ``rem`` with ``value`` (and the columns' wrapped flags)."""
        statements = [self.rem.eq(value)]
        held = Value.cast(value)[:len(self.rem)]
        if self._wrap_rows:
            statements += [w.eq(held <= j) for j, w in enumerate(self.wrapped) if j]
        return statements
