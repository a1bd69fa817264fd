"""Streaming max-pool over a k-block-interleaved raster, with one line buffer.

Input and output order (docs/architecture.md): ``for y: for kb: for x: for r in
range(block)``, channel ``kb*block + r``.
"""

from types import SimpleNamespace

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .program import pool_output_size

__all__ = ["MaxPool", "check_pool_geometry"]


def check_pool_geometry(height, width, blocks, kernel, stride, *, max_width=None,
                        max_blocks=None, max_kernel=None, max_stride=None):
    """Raise :class:`ValueError` naming the problem if MaxPool cannot pool this geometry.

    Returns the pooled ``(height, width)``.
    """
    for name, value in (("height", height), ("width", width), ("blocks", blocks),
                        ("kernel", kernel), ("stride", stride)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"pool {name} must be a positive integer, not {value!r}")
    if kernel > stride + 1:
        raise ValueError(f"pool kernel {kernel} with stride {stride}: windows overlapping by "
                         f"more than one row/column need a second line buffer; use "
                         f"kernel <= stride + 1")
    for name, value, limit in (("width", width, max_width), ("blocks", blocks, max_blocks),
                               ("kernel", kernel, max_kernel), ("stride", stride, max_stride)):
        if limit is not None and value > limit:
            raise ValueError(f"pool {name} {value} exceeds this MaxPool's max_{name} {limit}; "
                             f"build it with a larger max_{name}")
    if height > 255:
        raise ValueError(f"pool height {height} exceeds 255 (8-bit height port)")
    return pool_output_size(height, kernel, stride), pool_output_size(width, kernel, stride)


class _Axis:
    """Window bookkeeping along one axis: position ``u``, phase ``k = u mod stride``."""

    def __init__(self, m, name, limit, max_stride, stride):
        self.u = Signal(range(limit), name=f"{name}_u")
        self.k = Signal(range(max_stride), name=f"{name}_k")
        self.m, self.stride = m, stride

    def flags(self, size, kernel, stride, over):
        """(start, end, member) of the current position; see MaxPool's docstring."""
        first = self.k == 0
        start = first & (self.u + kernel <= size)
        end = Mux(over, first & (self.u != 0), self.k == kernel - 1)
        member = over | (self.k < kernel)
        return start, end, member

    def step(self, last):
        """Advance (in the caller's m.If); wrap to 0 when ``last``."""
        m = self.m
        with m.If(last):
            m.d.sync += [self.u.eq(0), self.k.eq(0)]
        with m.Else():
            m.d.sync += self.u.eq(self.u + 1)
            m.d.sync += self.k.eq(Mux(self.k + 1 >= self.stride, 0, self.k + 1))


class MaxPool(wiring.Component):
    """``kernel×kernel`` max-pooling at ``stride`` of a streamed ``C×H×W`` int8 map.

    The map arrives as one int8 per beat in the order ``for y: for kb: for x: for r``
    (``blocks`` k-blocks of ``block`` channels) and leaves pooled in the same order, with
    the pooled height/width ``(H - kernel)/stride + 1``.

    Horizontally, each channel keeps one running maximum (a ring of ``block``
    registers, rotated one per beat). Vertically, one line buffer (``lib.memory``, depth
    ``max_blocks * max_width * block``) holds the partial column maxima of the pooled
    row in progress — never a frame. A position that ends one window and starts the next
    (``kernel = stride + 1``, e.g. 3/2) emits ``max(partial, v)`` and restarts the
    partial at ``v``, so overlapping windows need no second buffer; the unit therefore
    supports ``kernel <= stride + 1`` (1/1, 2/1, 2/2, 3/2, 1/2, ...). Positions beyond
    the last whole window are dropped (as the geometry check rejects such shapes, this
    only matters for bad input; the unit never hangs on it).

    Configuration: put the geometry on ``height``, ``width``, ``blocks``, ``kernel``,
    ``stride`` and pulse ``start`` (while no frame is in flight); the values are latched
    and the position counters reset. Frames of the same geometry may follow back to back
    without another ``start``. ``error`` is high while the latched geometry is not
    supported (see :func:`check_pool_geometry`); outputs are then meaningless, but
    every input beat is still consumed.

    Latency 2 cycles (3 with ``registered_read``); throughput one input beat per cycle
    (``i_stream.ready`` follows ``o_stream.ready`` combinationally while the output
    register is full).

    Parameters
    ----------
    max_width, max_blocks, block : int
        Largest input width, largest number of k-blocks, channels per k-block.
    max_kernel, max_stride : int
        Largest window and stride the geometry ports accept.
    variable_block : bool
        Add the geometry port ``last_block`` (latched on ``start`` like the others): the
        last k-block has ``last_block + 1 <= block`` channels instead of ``block`` (the
        stream of an array that drains only the channels a layer has). Costs a 2:1 mux
        per ring register.
    registered_read : bool
        Register the line buffer's read data (and stage A) before the vertical compare
        and write-back: the compare starts from a flip-flop instead of the block RAM's
        output (an ECP5 DP16KD's read data arrives 5.8 ns after the clock edge).
        Latency 3 cycles instead of 2; about 30 more flip-flops.
    """

    def __init__(self, max_width, max_blocks, block, max_kernel=3, max_stride=2,
                 variable_block=False, registered_read=False):
        for name, value in (("max_width", max_width), ("max_blocks", max_blocks),
                            ("block", block), ("max_kernel", max_kernel),
                            ("max_stride", max_stride)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MaxPool {name} must be a positive integer, not {value!r}")
        if max_kernel > max_width:
            raise ValueError(f"MaxPool max_kernel {max_kernel} is wider than max_width "
                             f"{max_width}: no window would fit")
        if max_width > 255:
            raise ValueError(f"MaxPool max_width {max_width} exceeds 255 (8-bit geometry)")
        self.max_width, self.max_blocks, self.block = max_width, max_blocks, block
        self.max_kernel, self.max_stride = max_kernel, max_stride
        self.variable_block = bool(variable_block)
        self.registered_read = bool(registered_read)
        self.depth = max_blocks * max_width * block
        ports = {"last_block": In(range(block))} if variable_block else {}
        super().__init__({
            **ports,
            "start": In(1),
            "height": In(unsigned(8)),
            "width": In(range(max_width + 1)),
            "blocks": In(range(max_blocks + 1)),
            "kernel": In(range(max_kernel + 1)),
            "stride": In(range(max_stride + 1)),
            "error": Out(1),
            "i_stream": In(stream.Signature(signed(8))),
            "o_stream": Out(stream.Signature(signed(8))),
        })

    def check_geometry(self, height, width, blocks, kernel, stride):
        """:func:`check_pool_geometry` against this unit's limits; returns pooled (h, w)."""
        return check_pool_geometry(height, width, blocks, kernel, stride,
                                   max_width=self.max_width, max_blocks=self.max_blocks,
                                   max_kernel=self.max_kernel, max_stride=self.max_stride)

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        g = self._latch_geometry(m)
        en = Signal()
        accept = Signal()
        m.d.comb += [en.eq(o.ready | ~o.valid), i.ready.eq(en), accept.eq(i.valid & en)]
        pos = self._position(m, g, accept)

        lb = m.submodules.lb = memory.Memory(shape=signed(8), depth=self.depth, init=[])
        wr = lb.write_port()
        rd = lb.read_port(transparent_for=(wr,))
        m.d.comb += [rd.addr.eq(pos.addr), rd.en.eq(en)]
        a = self._horizontal(m, g, pos, en, accept)
        b, above = a, rd.data
        if self.registered_read:
            # Stage B': the read and stage A one cycle later. The entry stage B writes in
            # that cycle is never the one stage A read: two results in a row share an
            # entry only in a one-pixel-wide, one-channel map, whose kernel is then 1
            # and whose results never use the entry's old value.
            b = SimpleNamespace(**{k: Signal.like(v, name=f"b_{k}")
                                   for k, v in vars(a).items()})
            above = Signal(signed(8), name="b_above")
            with m.If(en):
                m.d.sync += [getattr(b, k).eq(v) for k, v in vars(a).items()]
                m.d.sync += above.eq(rd.data)

        # Vertical (stage B): combine with the line buffer, write back, emit row ends.
        column = Mux(above > b.val, above, b.val)
        m.d.comb += [
            wr.addr.eq(b.addr),
            wr.data.eq(Mux(b.start, b.val, column)),
            wr.en.eq(en & b.valid),
        ]
        with m.If(en):
            m.d.sync += [o.valid.eq(b.valid & b.end),
                         o.payload.eq(Mux(b.start & ~g.over, b.val, column))]
        return m

    def _latch_geometry(self, m):
        """Registers for the geometry ports, loaded on ``start``; drives ``error``."""
        g = SimpleNamespace(height=Signal.like(self.height, name="height"),
                            width=Signal.like(self.width, name="width"),
                            blocks=Signal.like(self.blocks, name="blocks"),
                            kernel=Signal.like(self.kernel, name="kernel"),
                            stride=Signal.like(self.stride, name="stride"),
                            over=Signal(name="over"))
        m.d.comb += g.over.eq(g.kernel == g.stride + 1)
        m.d.comb += self.error.eq((g.height == 0) | (g.width == 0) | (g.blocks == 0) |
                                  (g.kernel == 0) | (g.stride == 0) |
                                  (g.kernel > g.stride + 1) | (g.kernel > g.width) |
                                  (g.kernel > g.height))
        # Channels of the last k-block, minus one.
        g.last_block = Signal(range(self.block), name="last_block")
        if self.variable_block:
            with m.If(self.start):
                m.d.sync += g.last_block.eq(self.last_block)
        with m.If(self.start):
            m.d.sync += [g.height.eq(self.height), g.width.eq(self.width),
                         g.blocks.eq(self.blocks), g.kernel.eq(self.kernel),
                         g.stride.eq(self.stride)]
        return g

    def _position(self, m, g, accept):
        """Position of the input beat (``x``/``y`` axes, ``kb``, ``r``) and its line-buffer
        entry ``addr``, stepped per accepted beat and reset on ``start``."""
        B = self.block
        pos = SimpleNamespace(xa=_Axis(m, "x", self.max_width, self.max_stride, g.stride),
                              ya=_Axis(m, "y", 256, self.max_stride, g.stride),
                              r=Signal(range(B), name="r"),
                              kb=Signal(range(self.max_blocks), name="kb"),
                              addr=Signal(range(self.depth), name="lb_addr"))
        xa, ya, r, kb, addr = pos.xa, pos.ya, pos.r, pos.kb, pos.addr
        pos.x_flags = xa.flags(g.width, g.kernel, g.stride, g.over)     # start, end, member
        pos.y_flags = ya.flags(g.height, g.kernel, g.stride, g.over)
        last_kb = kb == g.blocks - 1
        # Channels of the current k-block, minus one.
        g.block_m1 = B - 1
        if self.variable_block:
            g.block_m1 = Signal(range(B), name="block_m1")
            m.d.comb += g.block_m1.eq(Mux(last_kb, g.last_block, B - 1))
        with m.If(accept):
            last_x = xa.u == g.width - 1
            x_end = pos.x_flags[1]
            # The line buffer holds one entry per (kb, pooled x, r) of the current row.
            m.d.sync += addr.eq(Mux((r == g.block_m1) & last_x & last_kb, 0, addr + x_end))
            with m.If(r == g.block_m1):
                m.d.sync += r.eq(0)
                xa.step(last_x)
                with m.If(last_x):
                    m.d.sync += kb.eq(Mux(last_kb, 0, kb + 1))
                    with m.If(last_kb):
                        ya.step(ya.u == g.height - 1)
            with m.Else():
                m.d.sync += r.eq(r + 1)
        with m.If(self.start):
            m.d.sync += [r.eq(0), kb.eq(0), addr.eq(0),
                         xa.u.eq(0), xa.k.eq(0), ya.u.eq(0), ya.k.eq(0)]
        return pos

    def _horizontal(self, m, g, pos, en, accept):
        """Stage A: per channel a running maximum along ``x`` (a ring of ``block``
        registers, rotated one per beat); one result per pooled column, with its
        line-buffer address and its row's flags."""
        B = self.block
        x_start, x_end, x_member = pos.x_flags
        y_start, y_end, y_member = pos.y_flags
        # ring[0] is the running maximum of the channel of this beat.
        ring = [Signal(signed(8), name=f"ring{n}") for n in range(B)]
        v = self.i_stream.payload
        head = ring[0]
        bigger = Mux(v > head, v, head)
        h_val = Mux(x_start & ~g.over, v, bigger)   # start & end of one window: kernel 1
        new_head = Mux(x_start, v, Mux(x_member, bigger, head))
        with m.If(accept):
            # A block of n channels rotates the first n registers (new head into n-1).
            if self.variable_block:
                m.d.sync += [ring[n].eq(Mux(g.block_m1 == n, new_head, ring[n + 1]))
                             for n in range(B - 1)]
            else:
                m.d.sync += [ring[n].eq(ring[n + 1]) for n in range(B - 1)]
            m.d.sync += ring[B - 1].eq(new_head)

        a = SimpleNamespace(valid=Signal(name="a_valid"), val=Signal(signed(8), name="a_val"),
                            addr=Signal.like(pos.addr, name="a_addr"),
                            start=Signal(name="a_start"), end=Signal(name="a_end"))
        with m.If(en):
            m.d.sync += [a.valid.eq(accept & x_end & y_member), a.val.eq(h_val),
                         a.addr.eq(pos.addr), a.start.eq(y_start),
                         a.end.eq(y_end & ~self.error)]
        return a
