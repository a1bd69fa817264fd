"""One network layer: address generator → memories → array → requant → pool → writer.

See docs/architecture.md for the loop order and the stream orders this relies on.
"""

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from . import program
from .config import AcceleratorConfig
from .im2col import Im2col
from .maxpool import MaxPool
from .memories import one_or_array, port_list, read_port_signature, write_port_signature
from .requant import Requantizer
from .systolic import SystolicArray, resolve_mac

__all__ = ["Datapath", "requant_multiplier", "RESULT_QUEUE", "REQUANT_QUEUE", "WRITE_QUEUE"]

#: Writes each result lane may queue for the activation memory's write ports.
WRITE_QUEUE = 16
#: Result beats the array queues with ``config.overlap_drain`` (its ``queue``), or the
#: least its multiplier blocks allow (:class:`~.systolic.SystolicArray`) if more.
RESULT_QUEUE = 8
#: Requantised beats queued behind the requantiser with ``config.result_lanes`` > 1:
#: room for every beat in flight (:attr:`Requantizer.LATENCY` + 1) and a few more, so
#: the drop stage advances on its own count of free places, never on the lanes' ready.
REQUANT_QUEUE = 16


def requant_multiplier(mac, interval):
    """The requantiser's ``mul16`` block class for the array's ``mac``, or None.

    An iCE40 build (``mac="ice40"``) at full rate (``interval`` 1) puts the product on
    SB_MAC16 blocks in 16×16 mode; otherwise it stays plain ``*`` (logic cells on iCE40,
    DSP blocks wherever synthesis infers them).
    """
    if mac == "ice40" and interval == 1:
        # Imported lazily, like the array's iCE40 multiplier: only iCE40 builds need it.
        from .ice40 import Ice40Mul16
        return Ice40Mul16
    return None


class Datapath(wiring.Component):
    """Runs one :class:`~fpgacnn.hw.program.LayerDescriptor` on the systolic array.

    Stages, all valid/ready pipelines that never lose a beat:

    1. :class:`~fpgacnn.hw.im2col.Im2col` walks ``for y: for kb: for xt: for d`` (tiles
       that run on into the next row when ``config.wrap_rows`` and
       :func:`~fpgacnn.hw.program.wraps_rows`) and
       gives per beat ``cols`` activation addresses (+ padding flags), the weight word
       address and ``last``;
    2. fetch: one read per array column from the activation memory copies and one
       ``rows``-byte word from the weight memory (1-cycle reads), padded operands
       zeroed → :class:`~fpgacnn.hw.systolic.SystolicArray`;
    3. the array's results (``for col: for row`` per tile): pixels past the map dropped,
       the channel's :class:`~fpgacnn.hw.program.QParam` read at ``q_base + kb*R + row``
       (1-cycle read) → :class:`~fpgacnn.hw.requant.Requantizer` (``relu`` from the
       descriptor); at full rate through a register, at ``requant_interval > 1`` from
       the array's own output register once the read is done;
    4. optional :class:`~fpgacnn.hw.maxpool.MaxPool`;
    5. writer: the stream ``for y: for kb: for x: for r`` becomes byte writes at
       ``out_base + (k*H + y)*W + x`` (CHW), channels ``k >= out_channels`` dropped (the
       ``to_logits`` layer too: the host reads the network's output from there).

    With ``config.result_lanes`` L > 1, stages 3 to 5 are L lanes: the array drains L
    rows a beat, lane ``l`` takes channels ``l, l + L, ...`` of each k-block (its own
    QParam port ``q_rd[l]``, requantiser lane, max-pool and writer counters) and queues
    its writes (:data:`WRITE_QUEUE`) for ``act_wr``, lowest lane first (with
    ``config.write_banks`` B > 1, ``act_wr`` is B ports, bank ``b`` taking addresses
    ``b mod B``: each port takes the lowest lane whose next write is in its bank). The
    requantiser (at full rate) never stalls: :data:`REQUANT_QUEUE` beats wait behind it
    and the drop stage counts their free places, so the lanes' ready does not reach back
    into the array.

    Throughput: one operand beat per cycle (``array_tiles·D`` cycles per layer,
    :func:`~fpgacnn.hw.program.array_tiles`) as long as ``D >= array.min_tile``, plus the
    pipeline's fill and drain once per layer: Im2col's start latency, the array's
    ``result_latency`` and the last tile's ``rows·cols / result_lanes`` result beats,
    and the requantiser's and max-pool's latencies. With
    ``config.compact_drain`` a tile drains only its real channels and pixels (the array's
    ``compact`` option): ``max(D, n + 2 + e + mac.LATENCY)`` cycles for a tile of ``n``
    result beats (``e`` = 1 with the array's ``register_capture``, iCE40 builds; else 0;
    ``max(D, n + 1, 2 + e + mac.LATENCY)`` with ``config.overlap_drain``, whose result
    queue adds 2 cycles to the array's latency), and no results past ``out_channels``
    reach the requantiser or the writer. All lanes'
    bytes share ``act_wr``: ``write_banks`` writes per cycle at most, which bounds
    layers without pooling.
    With ``config.fc_columns`` a layer in :func:`~fpgacnn.hw.program.column_mode` runs
    ``ceil(k_blocks / cols)`` tiles per output row, column ``c`` computing k-block
    ``kb + c`` from its own lane of a ``rows·cols``-weight memory word (Im2col's column
    mode); other layers pick their ``rows`` weights from a lane of such a word.

    With ``config.pixel_pairs`` a descriptor with ``pixel_pairs`` runs half the tiles
    (Im2col's walk of pixel pairs, a wider kernel): every row of a tile drains, and the
    drop stage keeps rows whose channel ``r mod R/2`` is the layer's, reading its QParam
    there; pixel ``2j`` of a column drains before ``2j + 1``, so stages 4 and 5 see the
    layer's own stream.

    Control: hold ``desc``/``image_base`` stable and pulse ``start``; ``done`` pulses
    once the layer's last output is written. The descriptor must be consistent, as the
    compiler makes it (``k_blocks = ceil(out_channels / rows)``, the geometry of
    :class:`~.im2col.Im2col`); the executor refuses any other. ``cycles`` then holds the
    layer's cycles (start to done). Memory ports are signature members; the core owns
    the memories and must let ``act_wr`` write whenever ``act_wr.en`` is high.

    Parameters
    ----------
    config : AcceleratorConfig
    mac : "generic", "registered" or "ice40"
        Multiplier blocks of the array (:func:`~.systolic.resolve_mac`).
    dataflow : "systolic" or "broadcast"
        Operand movement in the array (see SystolicArray); same timing.
    requant_interval : int
        Cycles per value of the Requantizer (1: full rate; 2, 4, …: a smaller
        multiplier, but tiles with fewer than about ``interval × kept results`` beats
        stall: a result waits in the array while its QParam is read).
        With ``mac="ice40"`` and interval 1 the requantiser's product is on SB_MAC16
        blocks (:func:`requant_multiplier`).
    """
    def __init__(self, config, *, mac="generic", dataflow="systolic", requant_interval=1):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"Datapath needs an AcceleratorConfig, not {config!r}")
        self._config = config
        rows, cols = config.rows, config.cols
        self.im2col = Im2col(cols, act_addr_width=config.act_addr_width,
                             w_addr_width=config.weight_addr_width,
                             column_blocks=config.fc_columns,
                             wrap_rows=config.wrap_rows, pixel_pairs=config.pixel_pairs)
        compact = config.compact_drain
        ice40_broadcast = config.ice40 and dataflow == "broadcast"
        # iCE40: the shadows' flip-flops take their cells' LUTs anyway, so the drain's
        # shift chains cost nothing there, capturing from the accumulators' registers puts
        # each accumulator bit in one cell (on an ECP5 both cost a LUT per bit), and the
        # SB_MAC16s hold the weights in their own input registers.
        lanes = self.lanes = config.result_lanes
        self.array = SystolicArray(rows, cols, config.acc_width, mac=mac, dataflow=dataflow,
                                   compact=compact, column_weights=config.fc_columns,
                                   shift_drain=ice40_broadcast,
                                   register_capture=config.ice40,
                                   weights_in_mac=ice40_broadcast and not config.fc_columns,
                                   lanes=lanes,
                                   queue=self._result_queue(config, mac))
        # With lanes, the tag says which of a beat's lanes hold a result to write.
        self.requant = Requantizer(config.acc_width, lanes=lanes, interval=requant_interval,
                                   tag=unsigned(lanes) if lanes > 1 else None,
                                   bias_width=config.bias_width,
                                   mul16=requant_multiplier(mac, requant_interval))
        # An ECP5's block RAM read data is late in the cycle; an iCE40's is not, and the
        # UP5K has no logic cells to spare for the extra stage. A lane pools its own
        # channels (every lanes-th of a k-block).
        self.pools = [MaxPool(config.pool_width, config.pool_blocks, rows // lanes,
                              variable_block=compact, registered_read=not config.ice40)
                      for _ in range(lanes)]
        self.pool = self.pools[0]
        q_port = read_port_signature(config.qparam_entries,
                                     program.stored_qparam(config.bias_width))
        super().__init__({
            "desc": In(program.LayerDescriptor),
            "image_base": In(program.field_widths(program.LayerDescriptor)["in_base"]),
            "start": In(1),
            "done": Out(1),
            "busy": Out(1),
            "cycles": Out(32),
            "act_rd": Out(read_port_signature(config.act_bytes, unsigned(8))).array(cols),
            "w_rd": Out(read_port_signature(config.weight_words // config.weight_lanes,
                                            unsigned(rows * config.weight_lanes * 8))),
            # One port per result lane (``q_rd_ports`` lists them).
            "q_rd": one_or_array(Out(q_port), lanes),
            # One port per bank of the activation memory (``act_wr_ports`` lists them).
            "act_wr": one_or_array(Out(write_port_signature(config.act_bytes, unsigned(8))),
                                   config.write_banks),
        })

    @staticmethod
    def _result_queue(config, mac):
        """The array's result queue: :data:`RESULT_QUEUE` beats with ``overlap_drain``,
        more for multiplier blocks of a longer latency (the array's minimum)."""
        if not config.overlap_drain:
            return 0
        return max(RESULT_QUEUE, resolve_mac(mac).LATENCY + 6 + int(config.ice40))

    def _lane_name(self, name, lane):
        """``name`` with the lane's number when there are several."""
        return name if self.lanes == 1 else f"{name}{lane}"

    @property
    def act_wr_ports(self):
        """The activation write ports, one per bank (``act_wr`` as a list)."""
        return port_list(self.act_wr)

    @property
    def q_rd_ports(self):
        """The QParam read ports, one per result lane (``q_rd`` as a list)."""
        return port_list(self.q_rd)

    def elaborate(self, platform):
        m = Module()
        m.submodules.im2col = self.im2col
        m.submodules.array = self.array
        m.submodules.requant = self.requant
        for lane, pool in enumerate(self.pools):
            m.submodules[f"pool{lane or ''}"] = pool

        running = Signal()
        m.d.comb += self.busy.eq(running)
        with m.If(running):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        with m.If(self.start):
            m.d.sync += [running.eq(1), self.cycles.eq(1)]

        # ---- 1: address generator (idle whenever a layer starts) -------------------------
        desc, gen = self.desc, self.im2col
        m.d.comb += [gen.start.valid.eq(self.start), gen.start.p.eq(desc),
                     gen.start.p.in_base.eq(Mux(desc.in_from_image, self.image_base,
                                                desc.in_base))]
        # Column mode (config.fc_columns): a layer of one pixel per row and several
        # k-blocks puts k-block kb + c on column c (see Im2col); constant while it runs.
        self.colmode = Signal()
        if self._config.fc_columns:
            m.d.comb += self.colmode.eq(program.column_mode(self._config.cols, desc.out_w,
                                                            desc.k_blocks, fc_columns=True))
        # The pixels of a row as the array's columns see them: with pixel pairs, a
        # column is two.
        self.walk_w = desc.out_w
        if self._config.pixel_pairs:
            self.walk_w = Signal.like(desc.out_w)
            m.d.comb += self.walk_w.eq(desc.out_w >> desc.pixel_pairs)
        # Tiles that run on into the next output row (as Im2col's).
        self.wrap = Signal()
        m.d.comb += self.wrap.eq(program.wraps_rows(self._config.cols, self.walk_w,
                                                    desc.k_blocks,
                                                    wrap_rows=self._config.wrap_rows))
        # The last k-block's last channel, (K - 1) mod rows (rows is a power of two): the
        # last row its tiles drain, the pool's and the writer's last channel.
        self.k_last = Signal(range(self._config.rows))
        m.d.comb += self.k_last.eq(
            (desc.out_channels - 1)[:(self._config.rows - 1).bit_length()])
        self._fetch(m)
        self._requant_out = self._requant_queue(m)
        tiles_done = self._drop_and_read_qparam(m)
        written = []
        for lane, (valid, value, ready) in enumerate(self._lane_streams(m)):
            out_valid, out_value, out_ready = self._optional_pool(m, lane, valid, value, ready)
            written.append(self._writer(m, lane, out_valid, out_value, out_ready, running))
        written = Cat(written).all() & ~self._writes_queued if self.lanes > 1 else written[0]
        with m.If(running & written & tiles_done):
            m.d.sync += [running.eq(0), self.done.eq(1)]
        return m

    def _fetch(self, m):
        """Stage 2: the beat's activation and weight reads, padded operands zeroed, into
        the array (one beat per cycle unless the array holds back)."""
        ops = self.array.i_stream
        beat = self.im2col.o_stream
        advance = Signal()
        pad_r = Signal(self._config.cols)
        m.d.comb += [advance.eq(~ops.valid | ops.ready), beat.ready.eq(advance)]
        for j in range(self._config.cols):
            m.d.comb += [self.act_rd[j].addr.eq(beat.p.act_addr[j]),
                         self.act_rd[j].en.eq(advance),
                         ops.p.x[j].eq(Mux(pad_r[j], 0, self.act_rd[j].data))]
        m.d.comb += [self.w_rd.addr.eq(beat.p.w_addr), self.w_rd.en.eq(advance),
                     ops.p.w.eq(self.w_rd.data)]
        if self._config.fc_columns:
            self._fetch_wide_weights(m, advance)
        with m.If(advance):
            m.d.sync += [ops.valid.eq(beat.valid), pad_r.eq(beat.p.act_zero),
                         ops.p.last.eq(beat.p.last)]
        if self._config.compact_drain:
            # The tile's used shape rides on its last beat (the array latches it): the
            # columns im2col names, the rows of the layer's channels in its last k-block,
            # every row in column mode and with pixel pairs (the drop stage drops channels
            # >= K).
            every_row = self.colmode | ~beat.p.last_kb
            if self._config.pixel_pairs:
                every_row = every_row | self.desc.pixel_pairs
            with m.If(advance):
                m.d.sync += [
                    ops.p.last_row.eq(Mux(every_row, self._config.rows - 1, self.k_last)),
                    ops.p.last_col.eq(beat.p.last_col)]

    def _fetch_wide_weights(self, m, advance):
        """Weight words of ``cols`` k-blocks: column mode uses all of a word (Im2col's
        address is the word's); otherwise Im2col's address counts ``rows``-weight words,
        and its low bits pick one of the word's ``cols`` lanes."""
        ops, beat, rows = self.array.i_stream, self.im2col.o_stream, self._config.rows
        log_c = (self._config.cols - 1).bit_length()
        lane = Signal(log_c)
        with m.If(advance):
            m.d.sync += lane.eq(beat.p.w_addr[:log_c])
        m.d.comb += [
            self.w_rd.addr.eq(Mux(self.colmode, beat.p.w_addr, beat.p.w_addr >> log_c)),
            ops.p.w.eq(Mux(self.colmode, self.w_rd.data,
                           self.w_rd.data.word_select(lane, rows * 8))),
            ops.p.per_col.eq(self.colmode)]

    def _tile_walk(self, m, step):
        """The tile order ``for y: for kb: for xt``, advanced by one tile when ``step``
        and reset on ``start``: ``xbase`` (first pixel), ``kbase`` (``kb * rows``),
        ``kb_left`` and ``y_left`` (k-blocks after ``kb``, rows after the first pixel's:
        counted down, so the ends are compares with zero, not with sums), ``done``
        (every tile stepped past). In
        column mode a tile is ``cols`` k-blocks; when tiles wrap rows
        (:func:`~.program.wraps_rows`, ``self.wrap``), a row's last tile ends in the next
        row and the next tile starts where it ended: ``runs_on`` (a value) says the tile's
        columns past its row's end are pixels of the next row, which exists."""
        desc, rows, cols = self.desc, self._config.rows, self._config.cols
        t = SimpleNamespace(xbase=Signal.like(desc.out_w), kbase=Signal.like(desc.q_base),
                            kb_left=Signal.like(desc.k_blocks), y_left=Signal.like(desc.out_h),
                            done=Signal())
        t.runs_on = self.wrap & (t.y_left != 0)
        kb_step, last_kb = 1, t.kb_left == 0
        if self._config.fc_columns:
            kb_step = Mux(self.colmode, cols, 1)
            last_kb = t.kb_left < kb_step
        with m.If(step):
            with m.If(t.xbase + cols >= self.walk_w):
                m.d.sync += t.xbase.eq(Mux(self.wrap, t.xbase + cols - self.walk_w, 0))
                with m.If(last_kb):
                    m.d.sync += [t.kb_left.eq(desc.k_blocks - 1), t.kbase.eq(0),
                                 t.y_left.eq(t.y_left - 1)]
                    with m.If(t.y_left == 0):
                        m.d.sync += t.done.eq(1)
                with m.Else():
                    m.d.sync += [t.kb_left.eq(t.kb_left - kb_step),
                                 t.kbase.eq(t.kbase + kb_step * rows)]
            with m.Else():
                m.d.sync += t.xbase.eq(t.xbase + cols)
        with m.If(self.start):
            m.d.sync += [t.xbase.eq(0), t.kbase.eq(0), t.kb_left.eq(desc.k_blocks - 1),
                         t.y_left.eq(desc.out_h - 1), t.done.eq(0)]
        return t

    def _drop_and_read_qparam(self, m):
        """Stage 3: drop the array's results for pixels ``>= out_w`` (column mode: for
        k-blocks ``>= k_blocks``, and channels ``>= out_channels`` if compact; a compact
        drain brings no such pixel or k-block), read each kept result's QParam into the
        requantiser (lane ``l``'s from ``q_rd[l]``). Returns ``tiles_done``: every tile
        of the layer has left the array."""
        desc, res, rq_in = self.desc, self.array.o_stream, self.requant.i_stream
        L = self.lanes
        # The tile being drained.
        tile = self._tile_walk(m, res.valid & res.ready & res.p.last)
        xbase, kbase = tile.xbase, tile.kbase
        keep = [Signal(name=self._lane_name("keep", lane)) for lane in range(L)]
        # kb*R + row + lane (+ col*R in column mode)
        channel = [Signal.like(desc.q_base, name=self._lane_name("channel", lane))
                   for lane in range(L)]
        for lane in range(L):
            # A compact drain brings only the tile's real pixels (column mode: k-blocks),
            # with lanes, only its real channels' lanes valid.
            if L > 1:
                kept = res.p.valid[lane]
            elif self._config.compact_drain:
                kept = 1
            else:
                kept = (xbase + res.p.col < desc.out_w) | tile.runs_on
            row = res.p.row + lane if lane else res.p.row
            m.d.comb += [keep[lane].eq(kept), channel[lane].eq(kbase + row)]
            if self._config.pixel_pairs:
                # Both halves of the rows hold channels 0 .. R/2 - 1 (one k-block); the
                # tile drains every row, those past the layer's channels are dropped.
                half_row = row[:(self._config.rows // 2 - 1).bit_length()]
                with m.If(desc.pixel_pairs):
                    m.d.comb += [channel[lane].eq(half_row),
                                 keep[lane].eq(kept & (half_row <= self.k_last))]
            if self._config.fc_columns:
                # Column mode: column c is k-block kb + c; with compact_drain the writer
                # expects only the channels the layer has.
                log_r = (self._config.rows - 1).bit_length()
                col_channel = kbase + (res.p.col << log_r) + row
                in_layer = res.p.col <= tile.kb_left
                if self._config.compact_drain:
                    in_layer = channel[lane] < desc.out_channels
                with m.If(self.colmode):
                    m.d.comb += [channel[lane].eq(col_channel),
                                 keep[lane].eq(in_layer & kept if L > 1 else in_layer)]
            m.d.comb += self.q_rd_ports[lane].addr.eq(desc.q_base + channel[lane])
        any_kept = Cat(keep).any() if L > 1 else keep[0]
        if self.requant.interval == 1 and L > 1:
            # A value every cycle into a requantiser that never stalls: a kept result
            # moves into a register (its QParam read meanwhile) while the queue behind
            # the requantiser has a free place for it (``_requant_queue``). Results are
            # taken only then, kept or not: the array's ready is then a register, not the
            # end of the descriptor -> keep comparisons.
            acc = [Signal(signed(self._config.acc_width), name=self._lane_name("acc", lane))
                   for lane in range(L)]
            m.d.comb += [self.q_rd_ports[lane].en.eq(1) for lane in range(L)]
            m.d.comb += [res.ready.eq(self._rq_room),
                         self._rq_push.eq(res.valid & any_kept & self._rq_room)]
            m.d.sync += [rq_in.valid.eq(self._rq_push), rq_in.p.tag.eq(Cat(keep))]
            m.d.sync += [acc[lane].eq(res.p.acc[lane]) for lane in range(L)]
        elif self.requant.interval == 1:
            # A value every cycle: the result moves into a register while its QParam is
            # read.
            adv_q = Signal()
            acc = [Signal(signed(self._config.acc_width), name=self._lane_name("acc", lane))
                   for lane in range(L)]
            m.d.comb += adv_q.eq(~rq_in.valid | rq_in.ready)
            m.d.comb += [self.q_rd_ports[lane].en.eq(adv_q) for lane in range(L)]
            with m.If(adv_q):
                m.d.comb += res.ready.eq(1)
                m.d.sync += rq_in.valid.eq(res.valid & any_kept)
                if L == 1:
                    m.d.sync += acc[0].eq(res.p.acc)
                else:
                    m.d.sync += [acc[lane].eq(res.p.acc[lane]) for lane in range(L)]
                    m.d.sync += rq_in.p.tag.eq(Cat(keep))
            with m.Elif(~any_kept):
                m.d.comb += res.ready.eq(1)
        else:
            # The requantiser takes a value every other cycle at most: the result stays
            # in the array's output register while its QParam is read, then goes in.
            loaded = Signal()       # q_rd.data is the QParam of the result on ``res``
            acc = [res.p.acc] if L == 1 else [res.p.acc[lane] for lane in range(L)]
            m.d.comb += [self.q_rd_ports[lane].en.eq(~loaded) for lane in range(L)]
            m.d.comb += [rq_in.valid.eq(res.valid & any_kept & loaded),
                         res.ready.eq((rq_in.valid & rq_in.ready) | ~any_kept)]
            if L > 1:
                m.d.comb += rq_in.p.tag.eq(Cat(keep))
            with m.If(res.valid & res.ready):
                m.d.sync += loaded.eq(0)
            with m.Elif(res.valid):
                m.d.sync += loaded.eq(1)
        for lane in range(L):
            qp, lane_in = self.q_rd_ports[lane].data, rq_in.p.lanes[lane]
            m.d.comb += [lane_in.acc.eq(acc[lane]), lane_in.bias.eq(qp.bias),
                         lane_in.m.eq(qp.m), lane_in.s.eq(qp.s)]
        m.d.comb += rq_in.p.relu.eq(desc.relu)
        # The final tile's dropped columns may leave the array after the last output is
        # written; the layer is only done once they have (the next layer resets these).
        return tile.done

    def _requant_queue(self, m):
        """With several lanes at full rate: :data:`REQUANT_QUEUE` beats behind the
        requantiser, which then never stalls. The drop stage pushes a beat only while
        ``_rq_room`` (fewer than ``REQUANT_QUEUE`` beats between its register and the
        queue's output), so the queue always takes the requantiser's output, and the
        lanes' ready (max-pool, writer) stops at the queue instead of running through
        the requantiser and the drop stage into the array. Adds the queue's read
        register to a layer's fill. Returns the stream the lanes take (the requantiser's
        output itself otherwise)."""
        rq_out = self.requant.o_stream
        if self.lanes == 1 or self.requant.interval != 1:
            return rq_out
        self._rq_push = Signal()
        self._rq_room = Signal(init=1)
        queue = m.submodules.requant_queue = SyncFIFOBuffered(
            width=rq_out.payload.shape().size, depth=REQUANT_QUEUE)
        out = SimpleNamespace(valid=queue.r_rdy, ready=queue.r_en,
                              p=rq_out.payload.shape()(queue.r_data))
        m.d.comb += [rq_out.ready.eq(1), queue.w_en.eq(rq_out.valid),
                     queue.w_data.eq(rq_out.payload)]
        # Beats pushed and not yet read from the queue, each counted the cycle after its
        # push (the push ends a long path from the descriptor through the drop stage's
        # keep), so at most one push is not yet in `held`: room while below the depth
        # less one.
        held = Signal(range(REQUANT_QUEUE + 1))
        pushed = Signal()
        pop = queue.r_rdy & queue.r_en
        held_next = held + pushed - pop
        m.d.sync += [pushed.eq(self._rq_push), held.eq(held_next),
                     self._rq_room.eq(held_next < REQUANT_QUEUE - 1)]
        return out

    def _lane_streams(self, m):
        """The requantiser's output (through :meth:`_requant_queue`) as one ``(valid,
        value, ready)`` stream per lane: a beat is taken once each lane its tag names has
        taken its value."""
        rq_out, L = self._requant_out, self.lanes
        if L == 1:
            return [(rq_out.valid, rq_out.p.y[0], rq_out.ready)]
        taken = Signal(L)           # lanes of the current beat already taken
        streams, finished = [], []
        for lane in range(L):
            valid, ready = Signal(name=f"lane{lane}_valid"), Signal(name=f"lane{lane}_ready")
            m.d.comb += valid.eq(rq_out.valid & rq_out.p.tag[lane] & ~taken[lane])
            finished.append(~rq_out.p.tag[lane] | taken[lane] | ready)
            streams.append((valid, rq_out.p.y[lane], ready))
        m.d.comb += rq_out.ready.eq(Cat(finished).all())
        with m.If(rq_out.valid & rq_out.ready):
            m.d.sync += taken.eq(0)
        with m.Elif(rq_out.valid):
            m.d.sync += taken.eq(taken | Cat(v & r for v, _, r in streams))
        return streams

    def _lane_channels(self, lane):
        """Lane ``lane``'s share of the layer's channels: ``(blocks, last)``, the
        k-blocks it has channels in and the index (within the lane) of its last channel
        in the last of them. ``blocks`` is 0 when the layer has no channel for it."""
        desc, L = self.desc, self.lanes
        if L == 1:
            return desc.k_blocks, self.k_last
        log_l = (L - 1).bit_length()
        has_last = self.k_last >= lane        # a channel in the last k-block
        per_block = self._config.rows // L
        return (Mux(has_last, desc.k_blocks, desc.k_blocks - 1),
                Mux(has_last, (self.k_last - lane)[log_l:], per_block - 1))

    def _optional_pool(self, m, lane, in_valid, in_value, in_ready):
        """Stage 4: lane ``lane``'s requantised stream through its max-pool or past it;
        returns the stream to write as ``(valid, value, ready)``."""
        desc, pool = self.desc, self.pools[lane]
        blocks, last = self._lane_channels(lane)
        m.d.comb += [pool.start.eq(self.start), pool.height.eq(desc.out_h),
                     pool.width.eq(desc.out_w), pool.blocks.eq(blocks),
                     pool.kernel.eq(desc.pool_kernel), pool.stride.eq(desc.pool_stride)]
        if self._config.compact_drain:
            m.d.comb += pool.last_block.eq(last)
        out_valid = Signal(name=self._lane_name("out_valid", lane))
        out_value = Signal(8, name=self._lane_name("out_value", lane))
        out_ready = Signal(name=self._lane_name("out_ready", lane))
        with m.If(desc.pool_en):
            m.d.comb += [pool.i_stream.valid.eq(in_valid),
                         pool.i_stream.p.eq(in_value),
                         in_ready.eq(pool.i_stream.ready),
                         out_valid.eq(pool.o_stream.valid), out_value.eq(pool.o_stream.p),
                         pool.o_stream.ready.eq(out_ready)]
        with m.Else():
            m.d.comb += [out_valid.eq(in_valid), out_value.eq(in_value),
                         in_ready.eq(out_ready)]
        return out_valid, out_value, out_ready

    def _writer(self, m, lane, out_valid, out_value, out_ready, running):
        """Stage 5: lane ``lane``'s stream ``for y: for kb: for x: for r`` (its channels
        ``r = lane, lane + lanes, ...``) as CHW byte writes. Returns ``written``: the
        lane's last output is written, or with several lanes queued (set at once if the
        layer has no channel for the lane; the layer is done once the queues are empty).

        One lane writes through ``act_wr``'s registers (the port of its byte's bank);
        several through a queue each (:data:`WRITE_QUEUE` writes), each bank's port
        taking a write every cycle from the lowest-numbered lane whose next write is in
        that bank."""
        desc, R, L = self.desc, self._config.rows, self.lanes
        log_r = (R - 1).bit_length()
        log_l = (L - 1).bit_length()
        out_h = Mux(desc.pool_en, desc.pool_h, desc.out_h)
        out_w = Mux(desc.pool_en, desc.pool_w, desc.out_w)
        if lane == 0:
            self._plane = self._plane_size(m, out_h, out_w)
            self._writes_queued = Const(0)
        plane, plane_ok = self._plane
        blocks, last_channel = self._lane_channels(lane)

        # Row and pixel counted from 1 (the one being written, plus one): the ends are
        # equalities of flip-flops with the descriptor, no adder in front. K-blocks left
        # after this one: the next k-block is the last when it is 1.
        wy = Signal.like(desc.out_h, name=self._lane_name("wy", lane))
        wx = Signal.like(desc.out_w, name=self._lane_name("wx", lane))
        kb_left = Signal.like(desc.k_blocks, name=self._lane_name("kb_left", lane))
        wr_ = Signal(range(R // L), name=self._lane_name("wr_", lane))
        # addr = (out_base + y*W + kb*R*H*W) + ((r*L + lane)*H*W + x), two registers kept
        # by additions alone, so the address costs one adder.
        aw = self._config.act_addr_width     # addresses wrap like the memory
        row_addr = Signal(aw, name=self._lane_name("row_addr", lane))   # out_base + y*W
        kb_row = Signal(aw, name=self._lane_name("kb_row", lane))       # row_addr + kb*R*H*W
        rx = Signal(aw, name=self._lane_name("rx", lane))               # (r*L + lane)*H*W + x
        if L == 1:
            m.d.comb += out_ready.eq(plane_ok & running)
        # The lane's first channel's plane, lane*H*W, by shifts and adds of the constant.
        lane_plane = sum((plane << b for b in range(log_l) if lane >> b & 1), Const(0, aw))
        step = plane << log_l if L > 1 else plane       # the lane's next channel
        # The last k-block's last channel (of the lane) and whether the k-block is the
        # last: flip-flops set as the layer and the k-block start, so the writes' control
        # starts from them. A k-block's last channel in the stream is R/L - 1, but k_last
        # in the last one when compact.
        last_kb = Signal(name=self._lane_name("last_kb", lane))
        k_last_r = Signal(range(R // L), name=self._lane_name("k_last_r", lane))
        last_r = (Mux(last_kb, k_last_r, R // L - 1) if self._config.compact_drain
                  else R - 1)
        addr = Signal(aw, name=self._lane_name("addr", lane))
        m.d.comb += addr.eq(kb_row + rx)
        if L == 1:
            ports = self.act_wr_ports
            take = out_valid & out_ready
            written = Signal(name="written")
            m.d.sync += [port.en.eq(0) for port in ports]
            m.d.sync += self.done.eq(0)
        else:
            # A queue per lane: a pooled row's writes come in bursts (a tile's results at
            # once, only on the rows that end a window), the port takes one a cycle.
            queue = m.submodules[f"write_queue{lane}"] = SyncFIFOBuffered(
                width=aw + 8, depth=WRITE_QUEUE)
            port = SimpleNamespace(en=queue.w_en, addr=queue.w_data[:aw],
                                   data=queue.w_data[aw:])
            m.d.comb += out_ready.eq(plane_ok & running & queue.w_rdy)
            # Lower lanes first: a bank's port takes this lane's write when no lane below
            # has one for the same bank (the bank: the address's low bits).
            ports = self.act_wr_ports
            if lane == 0:
                self._writes_pending = [Const(0)] * len(ports)
                m.d.sync += [port_.en.eq(0) for port_ in ports]
                m.d.sync += self.done.eq(0)
            head = queue.r_data[:(len(ports) - 1).bit_length()]
            grants = []
            for bank, port_ in enumerate(ports):
                wants = queue.r_rdy & (head == bank) if len(ports) > 1 else queue.r_rdy
                grant = Signal(name=f"grant{lane}_{bank}" if len(ports) > 1 else
                               f"grant{lane}")
                m.d.comb += grant.eq(wants & ~self._writes_pending[bank])
                with m.If(grant):
                    m.d.sync += [port_.addr.eq(queue.r_data[:aw]),
                                 port_.data.eq(queue.r_data[aw:]), port_.en.eq(1)]
                self._writes_pending[bank] = self._writes_pending[bank] | wants
                grants.append(grant)
            m.d.comb += queue.r_en.eq(Cat(grants).any())
            self._writes_queued = self._writes_queued | (queue.level != 0)
            take = out_valid & out_ready
            written = Signal(name=self._lane_name("written", lane))
            m.d.comb += [port.addr.eq(addr), port.data.eq(out_value), port.en.eq(take)]
        with m.If(take):
            # Channels >= out_channels are not written; a compact drain brings none (the
            # drop stage drops them in column mode).
            in_range = 1 if self._config.compact_drain else ~last_kb | (wr_ <= k_last_r)
            if L == 1:
                low = (len(ports) - 1).bit_length()
                for bank, port in enumerate(ports):
                    m.d.sync += [port.addr.eq(addr), port.data.eq(out_value),
                                 port.en.eq(in_range & (addr[:low] == bank) if low else
                                            in_range)]
            m.d.sync += [wr_.eq(wr_ + 1), rx.eq(rx + step)]
            with m.If(wr_ == last_r):
                m.d.sync += [wr_.eq(0), rx.eq(lane_plane + wx if L > 1 else wx),
                             wx.eq(wx + 1)]
                with m.If(wx == out_w):
                    m.d.sync += [wx.eq(1), rx.eq(lane_plane if L > 1 else 0),
                                 kb_left.eq(kb_left - 1),
                                 last_kb.eq(kb_left == 1),
                                 kb_row.eq(kb_row + (plane << log_r))]
                    with m.If(last_kb):
                        m.d.sync += [kb_left.eq(blocks - 1),
                                     last_kb.eq(blocks == 1),
                                     wy.eq(wy + 1), row_addr.eq(row_addr + out_w),
                                     kb_row.eq(row_addr + out_w)]
                        with m.If(wy == out_h):
                            m.d.sync += written.eq(1)
        with m.If(self.start):
            m.d.sync += [wy.eq(1), wx.eq(1), kb_left.eq(blocks - 1), wr_.eq(0),
                         rx.eq(0),
                         last_kb.eq(blocks == 1),
                         k_last_r.eq(last_channel),
                         row_addr.eq(desc.out_base), kb_row.eq(desc.out_base),
                         written.eq(0 if L == 1 else blocks == 0)]
        if L > 1:
            # lane*H*W is known once the plane is: the first pixel's offset.
            with m.If(~plane_ok):
                m.d.sync += rx.eq(lane_plane)
        return written

    def _plane_size(self, m, out_h, out_w):
        """``plane = out_h * out_w`` by repeated addition at layer start (no multiplier to
        spare); ``plane_ok`` once it is final."""
        aw = self._config.act_addr_width     # addresses wrap like the memory
        plane = Signal(aw)                  # H * W
        plane_rows = Signal.like(self.desc.out_h)
        plane_ok = Signal()
        with m.If(self.start):
            m.d.sync += [plane.eq(0), plane_rows.eq(0), plane_ok.eq(0)]
        with m.Elif(~plane_ok):
            with m.If(plane_rows == out_h):
                m.d.sync += plane_ok.eq(1)
            with m.Else():
                m.d.sync += [plane.eq(plane + out_w), plane_rows.eq(plane_rows + 1)]
        return plane, plane_ok
