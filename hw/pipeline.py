"""A layer pipeline: each group of layers on a datapath of its own, images handed on.

The core (``hw/core.py``) runs a network one layer at a time on one array, so the
array's shape suits some layers and not others (LeNet-5's C1 has 6 output channels for
16 rows). A pipeline gives each group of layers a :class:`~.datapath.Datapath` shaped
for it and runs different images on the stages at once: stage ``s`` works on image
``n`` while stage ``s + 1`` works on image ``n - 1``, so an image leaves every
``max(stage cycles)`` cycles (FINN's dataflow builds work this way).

Each stage is the core's machinery without the link: a :class:`~.core.Sequencer`
running the stage's layer program, its own weight, QParam and program memories written
through a :class:`~.core.HostWrites`, and two activation memories:

* the *input buffer*: two slots of the stage's input map, one copy per array column.
  Stage 0's is written by the host (``IMAGE`` chunks), stage ``s > 0``'s by stage
  ``s - 1``'s last layer; the stage reads image ``n`` from slot ``n mod 2`` while the
  previous stage writes image ``n + 1`` into the other.
* the *work memory* (only for a stage of several layers): the maps of its inner layers.

A stage's activation addresses (:class:`StageShape`): its input slots at ``0`` and
``slot_bytes``, its inner maps from ``work_base`` (a power of two) on; its last layer
writes its output map from address 0, which goes to the next stage's input slot (or
the output buffer, after the last stage) instead of its own memories.

Stage ``s`` starts image ``n`` when its input slot ``n mod 2`` is full and the slot it
writes (the next stage's, or the output buffer's) is free; when it finishes, its input
slot is free and the next one full. The output buffer's slots leave through
``o_stream`` a byte per cycle, in image order.
"""

from amaranth.hdl import Cat, Module, Mux, ResetInserter, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from . import program
from .config import Dataflow, PipelineShape, StageShape
from .core import (HostWrites, ResultReads, Sequencer, _program_halfwords, _result_init,
                   _result_words)
from .datapath import Datapath
from .memories import Ram, WeightMemory
from .program import HostInterface, WriteCommand

__all__ = ["StageShape", "PipelineShape", "LayerPipeline", "OutputByte", "PipelineCore",
           "host_config"]


class OutputByte(data.Struct):
    """One byte of an output map; ``last`` marks an image's last byte."""
    data: unsigned(8)
    last: unsigned(1)


class LayerPipeline(wiring.Component):
    """The stages of a :class:`PipelineShape`, their memories and the slots between.

    Members
    -------
    wr : In(stream.Signature(WriteCommand))
        Host chunks (addresses: :class:`PipelineShape`), one every other cycle at
        most, ``ready`` a flip-flop. ``WEIGHTS``, ``QPARAMS`` and
        ``PROGRAM`` chunks wait while any stage runs (``busy``); ``IMAGE`` chunks go into
        stage 0's input buffer at any time (the host writes only a free slot:
        ``next_slot`` once ``start.ready``). A chunk beyond every stage's memory is
        taken and dropped.
    start : In(stream.Signature(1))
        The host has written slot ``payload`` of stage 0's input buffer: run that image.
        Taken when ``payload`` is ``next_slot`` and that slot is free (slots alternate
        from 0 after reset or ``abort``; another slot is never taken).
    next_slot : Out(1)
        The slot the next image goes in.
    wr_pending : Out(1)
        A chunk taken from ``wr`` is not yet written (``start`` waits for it).
    o_stream : Out(stream.Signature(OutputByte))
        Each image's output map (``output_bytes`` bytes, CHW), images in start order.
    busy : Out(1)
        A stage runs or an image is in flight (started and not all of it out).
    abort : In(1)
        Pulse: stop every stage and drop every image in flight (the model stays).
    fault : Out(1)
        A stage ran ``2 ** watchdog_log2`` cycles on one image and everything was
        stopped as by ``abort``; low again after ``abort`` or the next ``start``.
    cycles : Out(32) per stage
        Cycles of the stage's last image (start to its results stored).

    Timing: stage ``s`` takes its layers' cycles (see :class:`~.core.Core`: the
    datapath's beats and fills plus the sequencer's descriptor fetches) per image;
    an image leaves every ``max`` over the stages of their ``cycles`` plus 1 (the slot
    flags' handshake). An output
    byte leaves per cycle of ``o_stream.ready``, from 2 cycles after the last stage
    finishes.

    Parameters
    ----------
    shape : PipelineShape
    mac : str, optional
        Multiplier blocks of every array (:func:`~.systolic.resolve_mac`) instead of
        each stage's :attr:`StageShape.mac`.
    """
    def __init__(self, shape, *, mac=None):
        if not isinstance(shape, PipelineShape):
            raise TypeError(f"LayerPipeline needs a PipelineShape, not {shape!r}")
        self.shape = shape
        self.datapaths = [Datapath(s.datapath_config, mac=mac or s.mac,
                                   dataflow=s.config.dataflow,
                                   requant_interval=s.config.requant_interval)
                          for s in shape.stages]
        super().__init__({
            "wr": In(stream.Signature(WriteCommand)),
            "start": In(stream.Signature(1)),
            "next_slot": Out(1),
            "wr_pending": Out(1),
            "o_stream": Out(stream.Signature(OutputByte)),
            "busy": Out(1),
            "abort": In(1),
            "fault": Out(1),
            "cycles": Out(32).array(len(shape.stages)),
        })

    def elaborate(self, platform):
        m = Module()
        shape, n = self.shape, len(self.shape.stages)
        stop, dp_stop = Signal(), Signal()
        overrun = Signal()
        # full[s][k]: slot k of stage s's input buffer holds an image not yet used up;
        # full[n] is the output buffer's.
        full = [[Signal(name=f"full{s}_{k}") for k in range(2)] for s in range(n + 1)]
        slot = [Signal(name=f"slot{s}") for s in range(n + 1)]     # next slot per stage
        host_slot = Signal()                                        # next slot to start
        running = []
        writers = []        # per stage: its HostWrites
        inbufs = []
        finishing = []
        exports = []        # per stage: (addr, data, en) registers written downstream
        overruns = []

        for s, (st, dp) in enumerate(zip(shape.stages, self.datapaths)):
            cfg = st.datapath_config
            m.submodules[f"datapath{s}"] = ResetInserter({"sync": dp_stop})(dp)
            seq = Sequencer(cfg)
            m.submodules[f"sequencer{s}"] = ResetInserter({"sync": stop})(seq)
            wmem = m.submodules[f"weights{s}"] = WeightMemory(
                rows=cfg.rows * cfg.weight_lanes, depth=cfg.weight_words // cfg.weight_lanes)
            q_reads = 2 if cfg.shared_qparams else 1
            qmem = m.submodules[f"qparams{s}"] = Ram(
                program.stored_qparam(cfg.bias_width), cfg.qparam_entries,
                copies=cfg.result_lanes // q_reads, rw_exclusive=True,
                reads_per_copy=q_reads)
            pmem = m.submodules[f"program{s}"] = Ram(unsigned(16), _program_halfwords(cfg),
                                                     rw_exclusive=True)
            writes = m.submodules[f"writes{s}"] = HostWrites(cfg)
            # The previous stage writes one slot while this stage reads the other; the
            # host writes stage 0's the same way.
            inbuf = m.submodules[f"inbuf{s}"] = Ram(unsigned(8), 2 * st.slot_bytes,
                                                    copies=cfg.cols, rw_exclusive=True)
            wiring.connect(m, dp.w_rd, wmem.rd)
            wiring.connect(m, writes.weights, wmem.wr)
            for lane, q_rd in enumerate(dp.q_rd_ports):
                wiring.connect(m, q_rd, qmem.rd[lane])
            wiring.connect(m, writes.qparams, qmem.wr)
            wiring.connect(m, writes.program, pmem.wr)
            wiring.connect(m, seq.program, pmem.rd[0])
            # Model chunks are written only while nothing is in flight (writes.busy), so
            # a stage never starts on a half-written program; a chunk that waits must not
            # hold back the stages, whose images keep ``busy`` high until they are out.
            m.d.comb += [seq.program_pending.eq(0),
                         writes.busy.eq(self.busy),
                         dp.desc.eq(seq.desc), dp.image_base.eq(seq.image_base),
                         dp.start.eq(seq.launch), seq.layer_done.eq(dp.done)]

            # Reads: addresses from work_base on are the work memory's.
            base_bit = (st.work_base - 1).bit_length()
            if st.work_bytes:
                work = m.submodules[f"work{s}"] = Ram(unsigned(8), st.work_bytes,
                                                      copies=cfg.cols, rw_exclusive=True)
            for j in range(cfg.cols):
                rd = dp.act_rd[j]
                if st.work_bytes:
                    in_work, was_work = Signal(name=f"in_work{s}_{j}"), Signal(
                        name=f"was_work{s}_{j}")
                    m.d.comb += in_work.eq(rd.addr[base_bit])
                    with m.If(rd.en):
                        m.d.sync += was_work.eq(in_work)
                    m.d.comb += [work.rd[j].addr.eq(rd.addr), work.rd[j].en.eq(rd.en & in_work),
                                 inbuf.rd[j].addr.eq(rd.addr),
                                 inbuf.rd[j].en.eq(rd.en & ~in_work),
                                 rd.data.eq(Mux(was_work, work.rd[j].data, inbuf.rd[j].data))]
                else:
                    m.d.comb += [inbuf.rd[j].addr.eq(rd.addr), inbuf.rd[j].en.eq(rd.en),
                                 rd.data.eq(inbuf.rd[j].data)]

            # Writes: the last layer's (to_logits) leave the stage, a cycle later; an
            # inner layer's go to the work memory.
            wr = dp.act_wr
            final = seq.desc.to_logits
            if st.work_bytes:
                m.d.comb += [work.wr.addr.eq(wr.addr), work.wr.data.eq(wr.data),
                             work.wr.en.eq(wr.en & ~final)]
            next_slot_bytes = (shape.stages[s + 1].slot_bytes if s + 1 < n
                               else shape.output_slot_bytes)
            ex_addr = Signal(range(2 * next_slot_bytes), name=f"export_addr{s}")
            ex_data = Signal(8, name=f"export_data{s}")
            ex_en = Signal(name=f"export_en{s}")
            m.d.sync += [ex_addr.eq(wr.addr + Mux(slot[s], next_slot_bytes, 0)),
                         ex_data.eq(wr.data), ex_en.eq(wr.en & final)]
            exports.append((ex_addr, ex_data, ex_en))

            # Start the image in slot[s] once it is in and its output slot is free.
            m.d.comb += [seq.start.valid.eq(full[s][0] & ~full[s + 1][0] & ~slot[s] |
                                            full[s][1] & ~full[s + 1][1] & slot[s]),
                         seq.start.p.image_base.eq(Mux(slot[s], st.slot_bytes, 0))]
            # The sequencer stores the run's total last (results word 0), then idles.
            done = Signal(name=f"finishing{s}")
            m.d.comb += done.eq(seq.results.en & (seq.results.addr == 0))
            with m.If(done):
                m.d.sync += self.cycles[s].eq(seq.results.data)
            finishing.append(done)
            running.append(seq.busy)
            overruns.append(seq.overrun)
            writers.append(writes)
            inbufs.append(inbuf)

        # Stage 0's input buffer takes the host's IMAGE chunks; stage s's the exports of
        # stage s - 1.
        w0 = writers[0]
        m.d.comb += [inbufs[0].wr.addr.eq(w0.act.addr), inbufs[0].wr.data.eq(w0.act.data),
                     inbufs[0].wr.en.eq(w0.act.en)]
        for s in range(1, n):
            ex_addr, ex_data, ex_en = exports[s - 1]
            m.d.comb += [inbufs[s].wr.addr.eq(ex_addr), inbufs[s].wr.data.eq(ex_data),
                         inbufs[s].wr.en.eq(ex_en)]
        out_slot = shape.output_slot_bytes
        obuf = m.submodules.outbuf = Ram(unsigned(8), 2 * out_slot, rw_exclusive=True)
        ex_addr, ex_data, ex_en = exports[-1]
        m.d.comb += [obuf.wr.addr.eq(ex_addr), obuf.wr.data.eq(ex_data),
                     obuf.wr.en.eq(ex_en)]

        m.d.comb += overrun.eq(Cat(*overruns).any())
        self._host_writes(m, writers)

        # Slot flags: a stage that finishes frees its input slot and fills its output's.
        for s in range(n):
            with m.If(finishing[s]):
                m.d.sync += slot[s].eq(~slot[s])
                for k in range(2):
                    with m.If(slot[s] == k):
                        m.d.sync += [full[s][k].eq(0), full[s + 1][k].eq(1)]
        # The host's start fills stage 0's next slot. It waits for the chunk in the
        # register (its image's last, maybe), and for a stop to end (which empties the
        # slots).
        m.d.comb += [self.next_slot.eq(host_slot),
                     self.start.ready.eq((self.start.p == host_slot) & ~self.wr_pending &
                                         ~stop & ~self.abort &
                                         ~Mux(host_slot, full[0][1], full[0][0]))]
        with m.If(self.start.valid & self.start.ready):
            m.d.sync += host_slot.eq(~host_slot)
            for k in range(2):
                with m.If(host_slot == k):
                    m.d.sync += full[0][k].eq(1)

        self._output(m, obuf, full[n], slot[n], stop)

        in_flight = Cat(*(f for pair in full for f in pair)).any()
        m.d.comb += self.busy.eq(Cat(*running).any() | in_flight)
        m.d.sync += [stop.eq(self.abort | overrun), dp_stop.eq(self.abort | overrun | stop)]
        with m.If(overrun):
            m.d.sync += self.fault.eq(1)
        with m.If(self.abort | (self.start.valid & self.start.ready)):
            m.d.sync += self.fault.eq(0)
        # Stopped: every image in flight is dropped (last, so it wins).
        with m.If(stop):
            m.d.sync += [host_slot.eq(0), *(sl.eq(0) for sl in slot),
                         *(f.eq(0) for pair in full for f in pair)]
        return m

    def _host_writes(self, m, writers):
        """Each host chunk into a register, with its stage and its address in that stage
        decided on the way in, then to the stage's HostWrites; ``wr.ready`` is that
        register's emptiness (a flip-flop: the link's handshake sees no logic of ours).
        A chunk every other cycle at most (the link prepares one in 17)."""
        shape, wr = self.shape, self.wr
        Space = program.Space
        bases = {Space.WEIGHTS: (shape.weight_base, [s.weight_chunks for s in shape.stages]),
                 Space.QPARAMS: (shape.qparam_base,
                                 [s.config.qparam_entries for s in shape.stages]),
                 Space.PROGRAM: (shape.program_base, [s.program_chunks for s in shape.stages])}
        image_chunks = 2 * shape.stages[0].slot_bytes // 8
        held = Signal()                                   # a chunk waits in the register
        owner = [Signal(name=f"chunk_for{s}") for s in range(len(writers))]
        local = Signal(16)
        space, data_ = Signal(Space), Signal.like(wr.p.data)
        m.d.comb += [self.wr.ready.eq(~held), self.wr_pending.eq(held)]
        with m.If(self.wr.valid & ~held):
            # A chunk no stage owns is taken and dropped: a bad address cannot hang the link.
            m.d.sync += [held.eq(1), space.eq(wr.p.space), data_.eq(wr.p.data)]
            for s in range(len(writers)):
                with m.Switch(wr.p.space):
                    for sp, (base, size) in bases.items():
                        with m.Case(sp):
                            lo, hi = base[s], base[s] + size[s]
                            m.d.sync += owner[s].eq((wr.p.addr >= lo) & (wr.p.addr < hi))
                            with m.If((wr.p.addr >= lo) & (wr.p.addr < hi)):
                                m.d.sync += local.eq(wr.p.addr - lo)
                    with m.Case(Space.IMAGE):
                        if s == 0:      # stage 0's two slots
                            m.d.sync += [owner[s].eq(wr.p.addr < image_chunks),
                                         local.eq(wr.p.addr)]
                        else:
                            m.d.sync += owner[s].eq(0)
        taken = []
        for s, writes in enumerate(writers):
            m.d.comb += [writes.wr.valid.eq(held & owner[s]),
                         writes.wr.p.space.eq(space), writes.wr.p.addr.eq(local),
                         writes.wr.p.data.eq(data_)]
            taken.append(owner[s] & writes.wr.ready)
        with m.If(held & (Cat(*taken).any() | ~Cat(*owner).any())):
            m.d.sync += held.eq(0)

    def _output(self, m, obuf, full, slot, stop):
        """The output buffer's full slots → ``o_stream``, a byte per cycle."""
        count = self.shape.output_bytes
        out_slot = self.shape.output_slot_bytes
        o = self.o_stream
        idx = Signal(range(count + 1))
        last = Signal()
        have = Mux(slot, full[1], full[0])
        issue = Signal()
        m.d.comb += [issue.eq((~o.valid | o.ready) & have & (idx != count)),
                     obuf.rd[0].addr.eq(Mux(slot, out_slot, 0) + idx),
                     obuf.rd[0].en.eq(issue),
                     o.p.data.eq(obuf.rd[0].data), o.p.last.eq(last)]
        with m.If(issue):
            m.d.sync += [idx.eq(idx + 1), o.valid.eq(1), last.eq(idx == count - 1)]
        with m.Elif(o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(o.valid & o.ready & o.p.last):
            m.d.sync += [idx.eq(0), slot.eq(~slot)]
            for k in range(2):
                with m.If(slot == k):
                    m.d.sync += full[k].eq(0)
        with m.If(stop):
            m.d.sync += [idx.eq(0), o.valid.eq(0)]


def host_config(name, shape, board_config):
    """The :class:`AcceleratorConfig` a :class:`PipelineCore` reports to the host and its
    link checks against: ``board_config``'s clock, link and watchdog; as many weight,
    QParam and program chunks as all stages (8-weight words, ``rows`` 8); two stage-0
    slots of activation bytes (the IMAGE space); a counter per stage.
    """
    stages = shape.stages
    return board_config.with_(
        name=name, rows=8, cols=1, dataflow=Dataflow.BROADCAST,
        max_reduction=max(s.config.max_reduction for s in stages),
        weight_words=sum(s.weight_chunks for s in stages),
        act_bytes=2 * stages[0].slot_bytes,
        qparam_entries=sum(s.config.qparam_entries for s in stages),
        max_layers=sum(s.config.max_layers for s in stages),
        compact_drain=False, fc_columns=False, wrap_rows=False, result_lanes=1,
        pixel_pairs=False, overlap_drain=False, prefetch_descriptors=False,
        shared_qparams=False, write_banks=1, act_window=False, pool_width=1,
        pool_blocks=1)


class _Run(enum.Enum):
    IDLE = 0
    RUN = 1      # the image is in the pipeline; its output bytes are collected
    STORE = 2    # the counters are written, one a cycle


class PipelineCore(wiring.Component):
    """A :class:`LayerPipeline` behind the core's host interface, one image at a time.

    The signature is :class:`~.program.HostInterface`, so ``BoardTop`` and the link run
    it as they run :class:`~.core.Core`, with the addresses of ``config``
    (:func:`host_config`): ``WEIGHTS``, ``QPARAMS`` and ``PROGRAM`` chunks as
    :class:`PipelineShape` lays them out; ``IMAGE`` chunk ``a`` is byte ``8a mod
    slot_bytes`` of the slot the next ``start`` runs (either slot's addresses: the
    pipeline picks the slot, so a host that loads the next image during a run, as the
    driver does, writes the free one); ``start`` runs that image (its ``image_base`` is
    not used) and ``busy`` stays high until its output map is in the result buffer and
    the counters are stored. ``LOGITS`` addr ``k`` reads output byte ``k``,
    ``COUNTERS`` addr 0 the cycles from ``start`` to the last output byte, addr ``1 + s``
    stage ``s``'s cycles, ``IDENTITY`` the identity of ``config``.

    One image at a time, a run takes the stages' cycles one after the other (about
    ``sum`` of them, not ``max``): what the link delivers (about 2.6 ms an MNIST image
    at 3 Mbaud) is far below the pipeline either way; the pipeline's own rate is that of
    :class:`LayerPipeline` streaming images (``tests/test_pipeline.py``).
    """
    def __init__(self, shape, config, *, mac=None):
        self.pipeline = LayerPipeline(shape, mac=mac)
        self._config = config
        super().__init__(HostInterface())

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg, shape = self._config, self.pipeline.shape
        pipe = m.submodules.pipeline = self.pipeline
        results = m.submodules.results = Ram(unsigned(32), _result_words(cfg),
                                             init=_result_init(cfg), rw_exclusive=True,
                                             ram_style="distributed")
        logits = m.submodules.logits = Ram(unsigned(8), shape.output_slot_bytes,
                                           rw_exclusive=True)
        reads = m.submodules.reads = ResultReads(cfg, registered=True)
        wiring.connect(m, wiring.flipped(self.rd), reads.rd)
        wiring.connect(m, reads.rd_data, wiring.flipped(self.rd_data))
        wiring.connect(m, reads.results, results.rd[0])
        m.d.comb += [logits.rd[0].addr.eq(reads.act.addr), logits.rd[0].en.eq(reads.act.en),
                     reads.act.data.eq(logits.rd[0].data)]

        # Host chunks; an IMAGE chunk goes into the next slot, wherever it was addressed.
        slot_chunks = shape.stages[0].slot_bytes // 8
        wr = self.wr.p
        in_slot = Signal.like(wr.addr)
        m.d.comb += in_slot.eq(Mux(wr.addr >= slot_chunks, wr.addr - slot_chunks, wr.addr))
        m.d.comb += [pipe.wr.valid.eq(self.wr.valid), self.wr.ready.eq(pipe.wr.ready),
                     pipe.wr.p.space.eq(wr.space), pipe.wr.p.data.eq(wr.data),
                     pipe.wr.p.addr.eq(Mux(wr.space == program.Space.IMAGE,
                                           in_slot + Mux(pipe.next_slot, slot_chunks, 0),
                                           wr.addr))]

        state = Signal(_Run)
        total = Signal(32)
        out_idx = Signal(range(shape.output_bytes + 1))
        store = Signal(range(len(shape.stages) + 1))
        m.d.comb += [self.busy.eq(state != _Run.IDLE), pipe.abort.eq(self.abort),
                     self.fault.eq(pipe.fault),
                     pipe.start.p.eq(pipe.next_slot)]
        with m.If(self.busy):
            m.d.sync += total.eq(total + 1)
        with m.Switch(state):
            with m.Case(_Run.IDLE):
                m.d.comb += [pipe.start.valid.eq(self.start.valid),
                             self.start.ready.eq(pipe.start.ready)]
                with m.If(self.start.valid & pipe.start.ready):
                    m.d.sync += [state.eq(_Run.RUN), total.eq(1), out_idx.eq(0)]
            with m.Case(_Run.RUN):
                o = pipe.o_stream
                m.d.comb += [o.ready.eq(1), logits.wr.addr.eq(out_idx),
                             logits.wr.data.eq(o.p.data), logits.wr.en.eq(o.valid)]
                with m.If(o.valid):
                    m.d.sync += out_idx.eq(out_idx + 1)
                    with m.If(o.p.last):
                        m.d.sync += [state.eq(_Run.STORE), store.eq(0)]
            with m.Case(_Run.STORE):
                # Word 0 is the run's total, then a word per stage.
                m.d.comb += [results.wr.addr.eq(store), results.wr.en.eq(1)]
                with m.Switch(store):
                    with m.Case(0):
                        m.d.comb += results.wr.data.eq(total)
                    for s in range(len(shape.stages)):
                        with m.Case(s + 1):
                            m.d.comb += results.wr.data.eq(pipe.cycles[s])
                m.d.sync += store.eq(store + 1)
                with m.If(store == len(shape.stages)):
                    m.d.sync += state.eq(_Run.IDLE)
        # A stopped run (abort, or a stage's watchdog) ends at once; its counters stay.
        with m.If(self.abort | pipe.fault & (state == _Run.RUN)):
            m.d.sync += state.eq(_Run.IDLE)
        return m
