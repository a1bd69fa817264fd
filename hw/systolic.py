"""Output-stationary systolic array of int8 multiply-accumulate PEs.

See docs/architecture.md ("Dataflow") for how convolutions and fully connected layers
are fed to it as matrix products.
"""

import inspect

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .multiplier import DualMul8, LogicDualMul8, RegisteredDualMul8

__all__ = ["SystolicArray", "operands_layout", "resolve_mac", "result_layout"]


def operands_layout(rows, cols, compact=False, column_weights=False):
    """One operand beat: ``rows`` weights, ``cols`` activations, end-of-tile flag; with
    ``compact``, also the tile's last row and column to drain (read with ``last``); with
    ``column_weights``, ``rows * cols`` weights and the flag ``per_col``."""
    fields = {
        "w": data.ArrayLayout(signed(8), rows * cols if column_weights else rows),
        "x": data.ArrayLayout(signed(8), cols),
        "last": 1,
    }
    if compact:
        fields.update(last_row=range(rows), last_col=range(cols))
    if column_weights:
        fields.update(per_col=1)
    return data.StructLayout(fields)


def result_layout(rows, cols, acc_width, lanes=1):
    """One result: the accumulator of PE (``row``, ``col``); ``last`` ends the tile.

    With ``lanes > 1`` a beat carries the accumulators of PEs ``(row + l, col)`` for
    ``l < lanes`` (``acc[l]``; ``row`` a multiple of ``lanes``) and ``valid[l]`` says
    which of them the tile drains."""
    if lanes == 1:
        return data.StructLayout({
            "acc": signed(acc_width),
            "row": range(rows),
            "col": range(cols),
            "last": 1,
        })
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(acc_width), lanes),
        "valid": lanes,
        "row": range(rows),
        "col": range(cols),
        "last": 1,
    })


def resolve_mac(mac):
    """The DualMul8-compatible class for ``mac`` (``"generic"``, ``"registered"``,
    ``"logic"``, ``"ice40"`` or a class)."""
    if mac == "generic":
        return DualMul8
    if mac == "registered":
        return RegisteredDualMul8
    if mac == "logic":
        return LogicDualMul8
    if mac == "ice40":
        # Imported lazily: the iCE40 primitive wrapper is only needed for iCE40 builds.
        from .ice40 import Ice40DualMul8
        return Ice40DualMul8
    if isinstance(mac, type) and isinstance(getattr(mac, "LATENCY", None), int):
        return mac
    raise ValueError(f"mac must be 'generic', 'registered', 'logic', 'ice40' or a "
                     f"DualMul8-like class with an int LATENCY attribute, not {mac!r}")


class SystolicArray(wiring.Component):
    """``rows × cols`` output-stationary systolic array computing ``W[K×D] · X[D×N]`` tiles.

    PE (r, c) accumulates ``sum_d w[r, d] * x[d, c]`` for one tile. Weights enter row r at
    the left edge and move right one PE per cycle; activations enter column c at the top
    and move down one PE per cycle; the skew that makes ``w[r, d]`` and ``x[d, c]`` meet
    in PE (r, c) is applied inside the array, so a beat carries one ``d`` for all rows and
    columns. PEs are paired two per ``DualMul8`` (one iCE40 SB_MAC16 each with
    ``mac="ice40"``).

    Why output-stationary: the only wide values, the accumulators, never move until a
    tile is done; only 8-bit operands travel between PEs. At the end of a tile (the beat
    with ``last``) every PE moves its sum into a shadow register and starts the next
    tile at once, while the shadows drain through ``o_stream`` in the order
    ``for col: for row``, read through a ``rows*cols``-way multiplexer (``shift_drain``:
    through shift chains, see below), or ``lanes`` rows per beat.

    The array itself never stalls: a bubble on ``i_stream`` (``valid`` low) enters as
    zero operands, which add nothing. Backpressure on ``o_stream`` only holds back the
    *last* beat of the next tile: it is accepted once every result of the previous tile
    has left the shadow registers (with ``queue``: once the rest is sure to leave them
    before the capture), so no sum is ever lost or overwritten. (``ready`` therefore
    depends combinationally on ``i_stream.payload.last``, never on ``valid``.)

    Latency and throughput: one operand beat per cycle as long as tiles have
    ``D >= min_tile = rows*cols/lanes + mac.LATENCY + 2 + e`` beats (``e`` is 1 with
    ``register_capture``, else 0; e.g. 19 for 8×2 with
    ``DualMul8``; with ``queue``, ``max(rows*cols/lanes + 1, mac.LATENCY + 2 + e)``:
    :meth:`tile_cycles`) and ``o_stream`` keeps up; shorter tiles run at one tile per
    ``min_tile`` cycles, since the array emits one result beat per cycle. The first
    result of a tile is valid ``result_latency = mac.LATENCY + 3 + e`` cycles (2 more
    with ``queue``) after its last beat was accepted, the tile's last result
    ``rows*cols/lanes - 1`` cycles after that.

    Parameters
    ----------
    rows, cols : int
        Array shape: output channels × output pixels per tile.
    acc_width : int
        Signed accumulator width (see ``fpgacnn.sw.golden.accumulator_bits``); sums wrap
        beyond it.
    mac : ``"generic"``, ``"registered"``, ``"ice40"`` or class
        Multiplier block with the ``DualMul8`` signature and a ``LATENCY`` attribute.
    dataflow : ``"systolic"`` or ``"broadcast"``
        ``"systolic"`` (default) moves operands one PE per cycle as described above.
        ``"broadcast"`` registers each row's weight and each column's activation once
        and fans them out to the whole row/column: same results, order, latency and
        throughput, but with ``(rows + cols)*8`` operand flip-flops instead of
        ``rows*cols*16`` plus ``4*(rows*(rows-1) + cols*(cols-1))`` for the skew. Worth
        it on small arrays, where the fan-out (``cols`` per weight, ``rows`` per
        activation) is harmless; large arrays should stay systolic, whose wires are all
        PE to PE.
    compact : bool
        The last beat of each tile also carries ``last_row``/``last_col``, and only
        PEs ``(r <= last_row, c <= last_col)`` are drained (same order): a tile that
        uses ``n`` PEs (few output channels, a narrow last x-tile) takes
        ``max(D, tile_cycles(n))`` cycles instead of ``max(D, min_tile)`` (with
        lanes, ``n`` counts result beats). Costs two small registers and comparators.
    column_weights : bool
        Beats carry ``rows * cols`` weights; on a beat with ``per_col`` PE (r, c) takes
        weight ``c*rows + r`` (a different matrix per column, as fully connected layers
        need), otherwise weight ``r`` as usual. Broadcast dataflow only.
    shift_drain : bool
        Each column's shadows form a shift chain towards row 0, shifted once per result
        drained from that column, and only a ``cols``-way multiplexer is left (same
        order and timing). Broadcast dataflow only (there every PE captures in the same
        cycle). Costs a 2:1 multiplexer per shadow bit, which on an iCE40 sits in the
        logic cell the shadow's flip-flop takes anyway (its input passes through the
        cell's LUT), so there it saves the whole ``rows*cols``-way multiplexer.
    register_capture : bool
        At a tile's end each shadow copies its accumulator's register, one cycle after
        the last product (one cycle more ``result_latency`` and ``min_tile``), and the
        accumulator loads the next tile's first product instead of adding it; otherwise
        the shadow takes the adder's output and the accumulator resets. The adder then
        drives only the accumulator: on an iCE40 the load multiplexer folds into the
        adder's LUT (a carry cell's LUT has a free input), so an accumulator bit is one
        logic cell instead of two (the flip-flop of an adder that also feeds the shadow
        cannot share the adder's cell). On an ECP5 the multiplexer is a LUT per bit.
    weights_in_mac : bool
        Broadcast dataflow without ``column_weights``: the weights go to the multiplier
        blocks unregistered and each block registers them itself (``mac(a_registered=
        True)``; an iCE40 SB_MAC16's A input register), instead of a fabric register per
        row; only the activations are zeroed on bubbles. Same results and timing. An iCE40
        weight register copies a RAM's output and takes a logic cell alone.
    lanes : int
        Results per ``o_stream`` beat, a power of two dividing ``rows``: a beat carries
        rows ``row … row + lanes - 1`` of one column (:func:`result_layout`; each lane
        through its own ``rows*cols/lanes``-way multiplexer), so a tile drains in
        ``lanes`` times fewer cycles. Broadcast dataflow only (every PE captures in the
        same cycle), not with ``shift_drain``.
    queue : int
        0 (default), or the depth (at least ``mac.LATENCY + 6 + e``) of a result queue
        between the drain and ``o_stream``. A tile's last beat is then accepted while up
        to ``mac.LATENCY + 1 + e`` of the previous tile's result beats are still in the
        shadow registers, as long as the queue has room for all of them: they leave the
        shadows before the new capture whatever ``o_stream`` does. Tiles then take
        ``max(D, n + 1, mac.LATENCY + 2 + e)`` cycles for ``n`` result beats instead of
        ``max(D, n + mac.LATENCY + 2 + e)``, and ``result_latency`` is 2 cycles more.
        Broadcast dataflow only, not with ``shift_drain``; ``mac.LATENCY >= 1``.

    Attributes
    ----------
    i_stream : In(stream.Signature(operands_layout(rows, cols)))
    o_stream : Out(stream.Signature(result_layout(rows, cols, acc_width, lanes)))
    """

    def __init__(self, rows, cols, acc_width, mac="generic", dataflow="systolic",
                 compact=False, column_weights=False, shift_drain=False,
                 register_capture=False, weights_in_mac=False, lanes=1, queue=0):
        for name, value in (("rows", rows), ("cols", cols)):
            if not isinstance(value, int) or value < 1:
                raise TypeError(f"{name} must be a positive integer, not {value!r}")
        if not isinstance(acc_width, int) or acc_width < 17:
            raise ValueError(f"acc_width must be an integer >= 17 (one int8×int8 product "
                             f"needs 16 bits plus room to sum), not {acc_width!r}")
        if dataflow not in ("systolic", "broadcast"):
            raise ValueError(f"dataflow must be 'systolic' or 'broadcast', not {dataflow!r}")
        if column_weights and dataflow != "broadcast":
            raise ValueError("column_weights needs the broadcast dataflow (per-PE weights "
                             "would need a skew register chain each in a systolic array)")
        if weights_in_mac and (dataflow != "broadcast" or column_weights):
            raise ValueError("weights_in_mac needs the broadcast dataflow without "
                             "column_weights (one weight register per row)")
        if shift_drain and dataflow != "broadcast":
            raise ValueError("shift_drain needs the broadcast dataflow (a systolic array's "
                             "PEs capture their sums one skew step apart)")
        if (not isinstance(lanes, int) or lanes < 1 or lanes & (lanes - 1) or
                rows % lanes):
            raise ValueError(f"lanes must be a power of two dividing rows = {rows}, not "
                             f"{lanes!r}")
        if shift_drain and lanes > 1:
            raise ValueError("shift_drain drains one result per cycle (lanes = 1)")
        if lanes > 1 and dataflow != "broadcast":
            raise ValueError("lanes > 1 needs the broadcast dataflow (a systolic array's "
                             "rows capture their sums one cycle apart)")
        self._mac = resolve_mac(mac)
        extra = int(bool(register_capture))
        min_queue = self._mac.LATENCY + 6 + extra
        if queue and (not isinstance(queue, int) or queue < min_queue or
                      dataflow != "broadcast" or shift_drain or self._mac.LATENCY < 1):
            raise ValueError(f"queue must be 0 or an integer >= {min_queue} (mac.LATENCY + "
                             f"6 + register_capture), with the broadcast dataflow, no "
                             f"shift_drain and mac.LATENCY >= 1, not {queue!r}")
        if weights_in_mac and "a_registered" not in inspect.signature(self._mac).parameters:
            raise ValueError(f"weights_in_mac needs a multiplier block with an "
                             f"a_registered option, not {mac!r}")
        self.shift_drain = bool(shift_drain)
        self.register_capture = bool(register_capture)
        self.weights_in_mac = bool(weights_in_mac)
        self.column_weights = bool(column_weights)
        self.dataflow, self.compact = dataflow, bool(compact)
        self.rows, self.cols, self.acc_width, self.lanes = rows, cols, acc_width, lanes
        self.queue = queue
        # Cycles from a tile's last beat until its sums are captured, and one more.
        self._capture_gap = self._mac.LATENCY + 2 + extra
        self.result_latency = self._mac.LATENCY + 3 + extra + (2 if queue else 0)
        self.min_tile = self.tile_cycles(rows * cols // lanes)
        super().__init__({
            "i_stream": In(stream.Signature(operands_layout(rows, cols, compact,
                                                            column_weights))),
            "o_stream": Out(stream.Signature(result_layout(rows, cols, acc_width, lanes))),
        })

    def tile_cycles(self, beats):
        """Fewest cycles between two tiles' last beats when each drains ``beats`` result
        beats (``o_stream`` keeping up): a tile of ``D`` operand beats takes
        ``max(D, tile_cycles(beats))``."""
        if self.queue:
            return max(beats + 1, self._capture_gap)
        return beats + self._capture_gap

    def elaborate(self, platform):
        m = Module()
        i = self.i_stream
        busy = Signal()        # a tile's results are still in the shadow registers
        accept = Signal()
        # With a queue, a last beat waits while the previous one's sums are not captured
        # yet, or while their drain might not end before this tile's capture.
        hold = busy
        if self.queue:
            pending, early = Signal(), Signal()
            hold = pending | (busy & ~early)
        m.d.comb += [
            i.ready.eq(~(i.payload.last & hold)),
            accept.eq(i.valid & i.ready),
        ]
        wreg, xreg = self._operands(m, accept)
        prod = self._multipliers(m, wreg, xreg)
        # lastpipe[j] is high in cycle A + 1 + j after the last beat was accepted in
        # cycle A; the products of that beat sit in the diagonal r + c = j - lat then,
        # and their sums in the accumulators one cycle later.
        lat = self._mac.LATENCY
        capture = lat + int(self.register_capture)
        lastpipe = Signal(capture + self._skew(self.rows - 1, self.cols - 1) + 1)
        m.d.sync += lastpipe.eq(Cat(accept & i.payload.last, lastpipe[:-1]))
        shadow = self._accumulators(m, prod, lastpipe)
        captured = lastpipe[capture]
        if self.queue:
            # busy (results in the shadows) is set by the capture, below.
            with m.If(accept & i.payload.last):
                m.d.sync += pending.eq(1)
            with m.If(captured):
                m.d.sync += pending.eq(0)
        else:
            with m.If(accept & i.payload.last):
                m.d.sync += busy.eq(1)
        # The drained shape of the tile: latched with its last beat, which is accepted
        # only once the previous tile has drained, so it never changes under a drain;
        # with a queue it may be accepted during the drain, so the shape waits for the
        # capture.
        if self.compact:
            last_r, last_c = Signal(range(self.rows)), Signal(range(self.cols))
            latched_r, latched_c = last_r, last_c
            if self.queue:
                latched_r, latched_c = Signal.like(last_r), Signal.like(last_c)
                with m.If(captured):
                    m.d.sync += [last_r.eq(latched_r), last_c.eq(latched_c)]
            with m.If(accept & i.payload.last):
                m.d.sync += [latched_r.eq(i.payload.last_row),
                             latched_c.eq(i.payload.last_col)]
        else:
            last_r, last_c = latched_r, latched_c = self.rows - 1, self.cols - 1
        if not self.queue:
            self._drain(m, shadow, captured, busy, last_r, last_c, self.o_stream)
            return m
        # The drain fills the queue through a register; ``left`` counts the result beats
        # still in the shadows.
        out = stream.Signature(result_layout(self.rows, self.cols, self.acc_width,
                                             self.lanes)).create()
        queue = m.submodules.result_queue = SyncFIFOBuffered(
            width=out.payload.shape().size, depth=self.queue)
        m.d.comb += [queue.w_en.eq(out.valid), queue.w_data.eq(out.payload),
                     out.ready.eq(queue.w_rdy),
                     self.o_stream.valid.eq(queue.r_rdy),
                     self.o_stream.payload.eq(queue.r_data),
                     queue.r_en.eq(self.o_stream.ready)]
        G = self.rows // self.lanes
        log_l = (self.lanes - 1).bit_length()
        left = Signal(range(G * self.cols + 1))
        # The result beats of the tile captured next, registered: its shape is latched at
        # least two cycles before its capture.
        beats = G * self.cols
        if self.compact:
            beats = Signal.like(left)
            groups, used_cols = (latched_r >> log_l) + 1, latched_c + 1
            # Shift and add: as a ``*`` this became a multiplier block and a 45 MHz path.
            m.d.sync += beats.eq(sum(Mux(groups[b], used_cols << b, 0)
                                     for b in range(len(groups))))
        with m.If(captured):
            m.d.sync += [busy.eq(1), left.eq(beats)]
        read = self._drain(m, shadow, captured, busy, last_r, last_c, out)
        with m.If(read):
            m.d.sync += left.eq(left - 1)
        # ``early`` is registered: computed in cycle t for a last beat accepted in t + 1,
        # whose capture comes ``gap`` cycles after that. The drain reads a beat in every
        # cycle from t on (t + 1 on after a capture in t, hence its ``+ 1``) while the
        # queue has room for every beat left, so its last read comes before that
        # capture if at most ``gap + 1`` are left.
        gap = self._capture_gap - 1
        expect = Mux(captured, beats + 1, left)
        m.d.sync += early.eq((expect <= gap + 1) &
                             (queue.level + out.valid + expect + 1 <= self.queue))
        return m

    def _skew(self, r, c):
        """Cycles between PE (0, 0) and PE (r, c) seeing one beat."""
        return r + c if self.dataflow == "systolic" else 0

    def _operands(self, m, accept):
        """The operand registers each PE multiplies: ``wreg[r][c]``, ``xreg[r][c]``."""
        R, C, i = self.rows, self.cols, self.i_stream
        if self.dataflow == "broadcast":
            # One register per row and per column, fanned out to the whole row/column.
            xcol = [Signal(signed(8), name=f"x_{c}") for c in range(C)]
            m.d.sync += [xcol[c].eq(Mux(accept, i.payload.x[c], 0)) for c in range(C)]
            if self.weights_in_mac:
                # The multipliers' own input registers hold the weights; a zero
                # activation is enough to make a bubble's products zero.
                return [[i.payload.w[r]] * C for r in range(R)], [xcol for _ in range(R)]
            wrow = [Signal(signed(8), name=f"w_{r}") for r in range(R)]
            m.d.sync += [wrow[r].eq(Mux(accept, i.payload.w[r], 0)) for r in range(R)]
            wreg = [[wrow[r]] * C for r in range(R)]
            if self.column_weights:
                # Column 0 takes weight r either way; the others get their own register.
                for r in range(R):
                    for c in range(1, C):
                        wreg[r][c] = Signal(signed(8), name=f"w_{r}_{c}")
                        own = Mux(i.payload.per_col, i.payload.w[c * R + r], i.payload.w[r])
                        m.d.sync += wreg[r][c].eq(Mux(accept, own, 0))
            return wreg, [xcol for _ in range(R)]

        # Edge inputs: zero operands on bubbles, then the skew (row r delayed r cycles,
        # column c delayed c cycles) so w[r, d] and x[d, c] meet in PE (r, c).
        def skewed(values, n, name):
            out = []
            for k in range(n):
                v = Mux(accept, values[k], 0)
                for s in range(k):
                    reg = Signal(signed(8), name=f"{name}_skew{k}_{s}")
                    m.d.sync += reg.eq(v)
                    v = reg
                out.append(v)
            return out
        w_edge = skewed(i.payload.w, R, "w")
        x_edge = skewed(i.payload.x, C, "x")
        wreg = [[Signal(signed(8), name=f"w_{r}_{c}") for c in range(C)] for r in range(R)]
        xreg = [[Signal(signed(8), name=f"x_{r}_{c}") for c in range(C)] for r in range(R)]
        for r in range(R):
            for c in range(C):
                m.d.sync += wreg[r][c].eq(w_edge[r] if c == 0 else wreg[r][c - 1])
                m.d.sync += xreg[r][c].eq(x_edge[c] if r == 0 else xreg[r - 1][c])
        return wreg, xreg

    def _multipliers(self, m, wreg, xreg):
        """Products ``{(r, c): p}``, two PEs per multiplier block; an odd PE out
        multiplies zeros in lane 1."""
        pes = [(r, c) for r in range(self.rows) for c in range(self.cols)]
        prod = {}
        for k in range(0, len(pes), 2):
            mul = self._mac(a_registered=True) if self.weights_in_mac else self._mac()
            m.submodules[f"mul{k // 2}"] = mul
            for lane, pe in enumerate(pes[k:k + 2]):
                r, c = pe
                m.d.comb += [mul.a[lane].eq(wreg[r][c]), mul.b[lane].eq(xreg[r][c])]
                prod[pe] = mul.p[lane]
            if len(pes[k:k + 2]) == 1:
                m.d.comb += [mul.a[1].eq(0), mul.b[1].eq(0)]
        return prod

    def _accumulators(self, m, prod, lastpipe):
        """Per PE an accumulator whose sum moves to its shadow register at the end of a
        tile while it starts the next; returns the shadows ``{(r, c): Signal}``.

        The shadow takes the adder's output as the tile's last product arrives (the
        accumulator resets), or with ``register_capture`` the accumulator's register one
        cycle later (the accumulator loads the next tile's first product instead of
        adding it)."""
        lat = self._mac.LATENCY
        shadow = {}
        for (r, c), p in prod.items():
            acc = Signal(signed(self.acc_width), name=f"acc_{r}_{c}")
            shadow[(r, c)] = Signal(signed(self.acc_width), name=f"sh_{r}_{c}")
            total = acc + p
            # (The drain's shift, assigned later, would win over this capture; the two
            # never meet: a tile's last beat is accepted only once the drain is over, or
            # with a queue will be before the capture.)
            if self.register_capture:
                restart = lastpipe[lat + self._skew(r, c) + 1]
                m.d.sync += acc.eq(Mux(restart, p, total))
                with m.If(restart):
                    m.d.sync += shadow[(r, c)].eq(acc)
            else:
                with m.If(lastpipe[lat + self._skew(r, c)]):
                    m.d.sync += [shadow[(r, c)].eq(total), acc.eq(0)]
                with m.Else():
                    m.d.sync += acc.eq(total)
        return shadow

    def _drain(self, m, shadow, captured, busy, last_r, last_c, o):
        """Stream the shadows ``(r <= last_r, c <= last_c)`` out ``for col: for row``
        (``lanes`` rows a beat) into the stream ``o`` through its payload register, from
        the cycle after ``captured``; ``busy`` is cleared with the last. Returns the
        signal that is high in each cycle a beat is read.

        PE (r, c) captures in cycle A + 1 + lat + e + r + c (+ 0 when broadcast; e = 1 with
        ``register_capture``, else 0); reading index j = c*R + r from cycle A + 2 + lat + e
        on, one per cycle at most, is never early (with lanes, broadcast only: all rows of
        a beat captured in the same cycle). With
        ``shift_drain`` every PE has captured by then; draining a column shifts its chain
        once per result.
        """
        R, C, L = self.rows, self.cols, self.lanes
        G = R // L                              # beats per column
        log_l = (L - 1).bit_length()
        draining = Signal()
        idx_r = Signal(range(G))                # the beat's first row, divided by L
        idx_c = Signal(range(C))
        final = Signal()
        last_g = last_r >> log_l if L > 1 else last_r
        m.d.comb += final.eq((idx_r == last_g) & (idx_c == last_c))
        with m.If(captured):
            m.d.sync += [draining.eq(1), idx_r.eq(0), idx_c.eq(0)]

        # Binary multiplexer trees on the index bits, not a case per PE: one-hot case
        # selects (a decoder whose outputs each reach every bit of the result) made the
        # ULX3S-85F's 16×4 array too congested for nextpnr to route.
        selected = Signal(signed(self.acc_width))
        if self.shift_drain:
            with m.If(draining & (o.ready | ~o.valid)):
                for c in range(C):
                    with m.If(idx_c == c):
                        m.d.sync += [shadow[(r, c)].eq(shadow[(r + 1, c)])
                                     for r in range(R - 1)]
            m.d.comb += selected.eq(Cat(shadow[(0, c)] for c in range(C)).word_select(
                idx_c, self.acc_width))
        else:
            flat = Signal(range(G * C))
            m.d.comb += flat.eq(idx_c * G + idx_r)
            ordered = [Cat(shadow[(g * L + lane, c)] for c in range(C) for g in range(G))
                       for lane in range(L)]
            lane_values = [selected] if L == 1 else [
                Signal(signed(self.acc_width), name=f"selected{lane}") for lane in range(L)]
            for lane in range(L):
                m.d.comb += lane_values[lane].eq(ordered[lane].word_select(flat,
                                                                          self.acc_width))

        with m.If(o.ready | ~o.valid):
            m.d.sync += o.valid.eq(0)
            with m.If(draining):
                m.d.sync += o.valid.eq(1)
                if L == 1:
                    m.d.sync += [o.payload.acc.eq(selected), o.payload.row.eq(idx_r)]
                m.d.sync += [o.payload.col.eq(idx_c), o.payload.last.eq(final)]
                if L > 1:
                    m.d.sync += [o.payload.acc[lane].eq(lane_values[lane])
                                 for lane in range(L)]
                    m.d.sync += o.payload.row.eq(idx_r << log_l)
                    # Lane l holds row idx_r*L + l: drained if it is <= last_r.
                    m.d.sync += [o.payload.valid[lane].eq(
                        (idx_r < last_g) | (lane <= (last_r & (L - 1))))
                        for lane in range(L)]
                with m.If(final):
                    m.d.sync += [draining.eq(0), busy.eq(0)]
                with m.Elif(idx_r == last_g):
                    m.d.sync += [idx_r.eq(0), idx_c.eq(idx_c + 1)]
                with m.Else():
                    m.d.sync += idx_r.eq(idx_r + 1)
        return draining & (o.ready | ~o.valid)
