"""The accelerator core: memories + layer sequencer + datapath, behind a host interface.

The link (``hw/link.py``) drives :class:`Core` through :class:`~.program.HostInterface`;
the host compiler (``fpgacnn.sw.compiler``) produces what goes through it. The core is
three small units around the memories and the :class:`~.datapath.Datapath`:
:class:`HostWrites` (``wr`` into the memories), :class:`Sequencer` (runs the layer
program) and :class:`ResultReads` (``rd`` → ``rd_data``); with
``AcceleratorConfig.act_window`` also the :class:`~.copier.Copier` and the mapping of
activation addresses onto the block RAM and the weight memory (:meth:`Core._window`).
"""

from amaranth.hdl import C, Cat, Module, Mux, ResetInserter, Signal, unsigned
from amaranth.lib import enum, stream, wiring
from amaranth.lib.wiring import In, Out

from . import program
from .config import ACT_SPACE, AcceleratorConfig
from .copier import Copier
from .datapath import Datapath
from .memories import (Ram, WeightMemory, one_or_array, port_list, read_port_signature,
                       weight_write_signature, write_port_signature)
from .program import HostInterface, ReadCommand, ReadData, StartCommand, WriteCommand
from .protocol import identity_words

__all__ = ["Core", "HostWrites", "Sequencer", "ResultReads",
           "WriteCommand", "StartCommand", "ReadCommand", "ReadData"]


def _program_halfwords(cfg):
    """Depth of the program memory: descriptors are stored 16 bits wide (one EBR, not four)."""
    return cfg.max_layers * program.DESCRIPTOR_WORDS * 4


def _identity_base(cfg):
    """Results memory word of the board's identity: the counters (total cycles, one per
    layer; outputs stay in activations) come first, rounded up to a power of two that
    is also above the identity's words, so an IDENTITY read sets an address bit."""
    words = max(1 + cfg.max_layers, len(identity_words(cfg)))
    return 1 << (words - 1).bit_length()


def _result_words(cfg):
    """Results memory: the counters, then the identity (:func:`_identity_base`)."""
    return _identity_base(cfg) + len(identity_words(cfg))


def _result_init(cfg):
    """The results memory's contents at power-up: zero counters, the identity."""
    return [0] * _identity_base(cfg) + identity_words(cfg)


class Core(wiring.Component):
    """Runs a compiled network from on-chip memory; host interface for the link.

    The signature is :class:`~fpgacnn.hw.program.HostInterface` (stable; the link and
    ``hw/top.py`` build on it). Per member:

    ``wr`` : In(stream of ``WriteCommand``)
        One 64-bit chunk per beat into a :class:`~fpgacnn.hw.program.Space`:
        ``WEIGHTS`` (chunk ``a`` = rows ``8*(a % n)…+7`` of weight word ``a // n``,
        ``n = rows/8``), ``QPARAMS`` (one :class:`~fpgacnn.hw.program.QParam` per chunk),
        ``PROGRAM`` (``DESCRIPTOR_WORDS`` chunks per descriptor, LSBs first), ``IMAGE``
        (activation bytes ``8*addr … 8*addr+7``, block RAM or window). See
        :class:`HostWrites` for the timing: WEIGHTS/QPARAMS/PROGRAM and window IMAGE
        chunks are held off (``ready`` low) while ``busy``; block-RAM IMAGE writes are
        accepted during a run too (into the other image slot). Addresses beyond a
        memory wrap; the link checks them.
    ``start`` : In(stream of ``StartCommand``)
        Ready only when idle (and no write other than a block-RAM IMAGE chunk is
        offered). Runs the program from descriptor 0 until the descriptor with
        ``to_logits`` (or ``max_layers``): layers on the datapath, copies on the copier
        (without the window a copy writes nothing and takes 1 cycle); a descriptor with
        ``in_from_image`` reads its input from ``image_base`` (a byte address).
    ``busy`` : Out(1)
        High from the accepted start until the last output and counter are stored, or
        until the run is stopped.
    ``abort`` : In(1), ``fault`` : Out(1)
        A pulse on ``abort`` stops a run: the sequencer and the datapath are reset (2
        cycles later ``busy`` is low; the datapath 1 cycle longer, for the multipliers'
        product registers); the memories keep the model. A run that reaches
        ``2 ** config.watchdog_log2`` cycles (a layer program that never ends, e.g. a
        descriptor of zeros) is stopped the same way and raises ``fault`` until the next
        accepted start or ``abort``.
    ``rd``, ``rd_data`` : In(stream of ``ReadCommand``), Out(stream of ``ReadData``)
        One 32-bit answer per request, in order, latency 1 (with back-pressure):
        ``LOGITS`` addr ``k`` → activation byte ``out_base + k`` of the last descriptor
        run (a copy's ``dst_base``), sign-extended: output ``k`` of the last run;
        ``COUNTERS`` addr 0 → cycles of the last run (start accepted → idle), addr
        ``1 + i`` → cycles of descriptor ``i`` (start → last output written);
        ``IDENTITY`` addr ``k`` → word ``k`` of the board's :class:`~.protocol.Identity`
        (kept above the counters; any time); addresses beyond a memory wrap. Values are
        those of the last *finished* run only when read while idle (the activation
        memory's first read port serves the datapath while ``busy``, the host reads
        otherwise; a counter read in the cycle the sequencer writes that word returns an
        undefined value on the FPGA, see :class:`~.memories.Ram` ``rw_exclusive``).

    Timing: a layer takes its array beats (:func:`~.program.array_tiles` ``·D``) plus
    the datapath's pipeline fill and drain, a copy ``segments·length + 2`` cycles (1 if
    it copies nothing), each plus the descriptor fetch and store (:class:`Sequencer`);
    the counters report the exact figures of a run.

    Parameters
    ----------
    config : AcceleratorConfig
    mac : "generic", "registered" or "ice40", optional
        Multiplier blocks of the systolic array; default ``"ice40"`` if ``config.ice40``,
        else ``"registered"`` (:class:`~fpgacnn.hw.multiplier.RegisteredDualMul8`: each
        block registers its operands beside its DSPs).
    dataflow : Dataflow or str, optional
        Operand movement in the array; default ``config.dataflow``.
    requant_interval : int, optional
        See :class:`~fpgacnn.hw.datapath.Datapath`; default ``config.requant_interval``.
    """
    def __init__(self, config, *, mac=None, dataflow=None, requant_interval=None):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"Core needs an AcceleratorConfig, not {config!r}")
        self._config = config
        self._mac = mac if mac is not None else ("ice40" if config.ice40 else "registered")
        if dataflow is None:
            dataflow = config.dataflow
        if requant_interval is None:
            requant_interval = config.requant_interval
        self.datapath = Datapath(config, mac=self._mac, dataflow=dataflow,
                                 requant_interval=requant_interval)
        super().__init__(HostInterface())

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        cfg = self._config
        m = Module()
        dp = self.datapath
        # Abort and watchdog reset the run's state only (registered: the reset net is
        # large); the memories and the host-write path keep going.
        stop = Signal()
        # The datapath stays in reset one cycle longer: the iCE40 DSPs' product registers
        # take only the domain's own reset, so the first cycle of ``stop`` still latches a
        # product of the stopped run, which the (restarted) accumulators would add into
        # the next run's first tile; in the second they latch a zero product (the
        # activation registers are reset; with ``weights_in_mac`` the weights in the
        # SB_MAC16s' A registers are not, and need not be).
        dp_stop = Signal()
        m.submodules.datapath = ResetInserter({"sync": dp_stop})(dp)
        m.submodules.weights = wmem = WeightMemory(rows=cfg.rows * cfg.weight_lanes,
                                                   depth=cfg.weight_words // cfg.weight_lanes,
                                                   ice40=cfg.ice40)
        # Memories whose read data is never used when the read met a write of the same
        # word: QPARAMS and PROGRAM chunks are held off while the core runs and only a
        # run uses their reads; the sequencer writes the counters only while running and
        # the link uses counter reads (RESULT) only once the core is idle (IDENTIFY reads
        # the identity's words at any time, above every counter). Activations: a
        # layer reads its input map and writes its output map, which the compiler keeps
        # apart (ping-pong buffers, band buffers); a copy does not write onto its source
        # (CopyDescriptor); the host writes an image slot only while no run reads it (the
        # driver's queue alternates slots) and reads outputs only once the core is idle.
        m.submodules.act = act = Ram(unsigned(8), cfg.act_bytes, copies=cfg.cols,
                                     rw_exclusive=True, banks=cfg.write_banks)
        q_reads = 2 if cfg.shared_qparams else 1
        m.submodules.qparams = qmem = Ram(program.stored_qparam(cfg.bias_width),
                                          cfg.qparam_entries,
                                          copies=cfg.result_lanes // q_reads,
                                          rw_exclusive=True, reads_per_copy=q_reads)
        m.submodules.program = pmem = Ram(unsigned(16), _program_halfwords(cfg),
                                          rw_exclusive=True)
        # An iCE40 has no LUT RAM. On an ECP5 the ULX3S-85F's 45 words of 32 bits would
        # take a block RAM in its 36-bit mode, which the netlist simulation's stand-in
        # does not model.
        m.submodules.results = rmem = Ram(unsigned(32), _result_words(cfg),
                                          init=_result_init(cfg), rw_exclusive=True,
                                          ram_style=None if cfg.ice40 else "distributed")
        m.submodules.writes = writes = HostWrites(cfg)
        seq = Sequencer(cfg)
        m.submodules.sequencer = ResetInserter({"sync": stop})(seq)
        # The iCE40's block RAM reaches the link in time, and its cells are scarce.
        m.submodules.reads = reads = ResultReads(cfg, registered=not cfg.ice40)

        for i in range(1, cfg.cols):
            wiring.connect(m, dp.act_rd[i], act.rd[i])
        for lane, q_rd in enumerate(dp.q_rd_ports):
            wiring.connect(m, q_rd, qmem.rd[lane])
        wiring.connect(m, wiring.flipped(self.wr), writes.wr)
        wiring.connect(m, writes.qparams, qmem.wr)
        wiring.connect(m, writes.program, pmem.wr)
        for bank_out, bank_wr in zip(port_list(writes.act), act.write_ports):
            wiring.connect(m, bank_out, bank_wr)
        wiring.connect(m, wiring.flipped(self.start), seq.start)
        wiring.connect(m, seq.program, pmem.rd[0])
        wiring.connect(m, seq.results, rmem.wr)
        m.d.sync += [stop.eq(self.abort | seq.overrun),
                     dp_stop.eq(self.abort | seq.overrun | stop)]
        with m.If(seq.overrun):
            m.d.sync += self.fault.eq(1)
        with m.If(self.abort | (self.start.valid & self.start.ready)):
            m.d.sync += self.fault.eq(0)
        copy = seq.desc.copy
        m.d.comb += [
            self.busy.eq(seq.busy), writes.busy.eq(seq.busy),
            seq.program_pending.eq(writes.program_pending),
            dp.desc.eq(seq.desc), dp.image_base.eq(seq.image_base),
            dp.start.eq(seq.launch & ~copy),
            # Output k is activation byte out_base + k of the last descriptor run.
            reads.base.eq(seq.desc.out_base),
        ]
        if cfg.act_window:
            self._window(m, stop, seq, act, wmem, writes, reads)
        else:
            # Port 0 serves the datapath during a run and the host's output reads otherwise.
            m.d.comb += [act.rd[0].addr.eq(Mux(seq.busy, dp.act_rd[0].addr, reads.act.addr)),
                         act.rd[0].en.eq(Mux(seq.busy, dp.act_rd[0].en, reads.act.en)),
                         dp.act_rd[0].data.eq(act.rd[0].data),
                         reads.act.data.eq(act.rd[0].data)]
            wiring.connect(m, dp.w_rd, wmem.rd)
            wiring.connect(m, writes.weights, wmem.wr)
            for dp_wr, bank_in in zip(dp.act_wr_ports, port_list(writes.act_in)):
                wiring.connect(m, dp_wr, bank_in)
            # No copier on this board: a copy descriptor ends at once, writing nothing.
            noop_done = Signal()
            m.d.sync += noop_done.eq(seq.launch & copy)
            m.d.comb += seq.layer_done.eq(dp.done | noop_done)

        wiring.connect(m, wiring.flipped(self.rd), reads.rd)
        wiring.connect(m, reads.rd_data, wiring.flipped(self.rd_data))
        wiring.connect(m, reads.results, rmem.rd[0])
        return m

    def _window(self, m, stop, seq, act, wmem, writes, reads):
        """The activation window: the copier, and the 16-bit activation addresses of the
        copier and of the host's output reads mapped onto the block RAM (``< act_bytes``)
        or the weight memory (the window). The datapath has both memories during its
        layers; the copier during a copy; the host's reads and writes while idle."""
        cfg, dp = self._config, self.datapath
        cp = Copier()
        m.submodules.copier = ResetInserter({"sync": stop})(cp)
        copy = seq.desc.copy
        lane_bits = (cfg.rows - 1).bit_length()
        m.d.comb += [
            cp.desc.eq(seq.desc), cp.image_base.eq(seq.image_base),
            cp.start.eq(seq.launch & copy), seq.layer_done.eq(dp.done | cp.done),
            reads.hold.eq(writes.program_pending),
        ]
        # Reads: the copier's while it runs, the host's otherwise; one byte a cycle.
        use_dp = seq.busy & ~copy
        src = Signal(16)
        src_en = Signal()
        m.d.comb += [src.eq(Mux(seq.busy, cp.rd.addr, reads.act.addr)),
                     src_en.eq(Mux(seq.busy, cp.rd.en, reads.act.en))]
        in_window, lane = Signal(), Signal(lane_bits)
        with m.If(src_en):
            m.d.sync += [in_window.eq(_at_least(src, cfg.act_bytes)), lane.eq(src[:lane_bits])]
        word = window_chunk(cfg, src[3:]) >> (lane_bits - 3)
        m.d.comb += [
            act.rd[0].addr.eq(Mux(use_dp, dp.act_rd[0].addr, src)),
            act.rd[0].en.eq(Mux(use_dp, dp.act_rd[0].en, src_en)),
            wmem.rd.addr.eq(Mux(use_dp, dp.w_rd.addr, word)),
            wmem.rd.en.eq(Mux(use_dp, dp.w_rd.en, src_en)),
            dp.act_rd[0].data.eq(act.rd[0].data), dp.w_rd.data.eq(wmem.rd.data),
        ]
        byte = Signal(8)
        m.d.comb += [byte.eq(Mux(in_window, wmem.rd.data.word_select(lane, 8),
                                 act.rd[0].data)),
                     cp.rd.data.eq(byte), reads.act.data.eq(byte)]
        # Writes: the datapath's and the copier's block-RAM bytes through the host-write
        # path; the copier's window bytes (during a copy) or the host's chunks (idle)
        # into the weight memory, one byte lane each.
        dst_window = _at_least(cp.wr.addr, cfg.act_bytes)
        m.d.comb += [
            writes.act_in.en.eq(dp.act_wr.en | (cp.wr.en & ~dst_window)),
            writes.act_in.addr.eq(Mux(cp.wr.en, cp.wr.addr, dp.act_wr.addr)),
            writes.act_in.data.eq(Mux(cp.wr.en, cp.wr.data, dp.act_wr.data)),
        ]
        m.d.comb += [writes.window_in.addr.eq(cp.wr.addr), writes.window_in.data.eq(cp.wr.data),
                     writes.window_in.en.eq(cp.wr.en & dst_window)]
        wiring.connect(m, writes.weights, wmem.wr)


class HostWrites(wiring.Component):
    """Host writes (``wr`` beats) into the core's memories.

    QPARAMS chunks go straight to their memory (one cycle per beat), WEIGHTS chunks too
    without ``config.act_window``. The other chunks are written from the beat itself,
    which is taken (``wr.ready``) in the cycle its last part is written: a PROGRAM chunk
    as four halfwords in eight cycles, an IMAGE chunk one byte per cycle in which the
    datapath (or the copier) does not write the activation memory (``act_in`` has
    priority; nothing is lost). ``wr``'s payload must stay put while it waits (the
    stream rule); ``wr.ready`` does not depend on ``wr.valid`` (it is decided from the
    payload, ``busy``, the datapath's writes and ``part``, not after the link's state).

    With ``config.act_window`` the weight memory is written one byte per cycle too
    (``weights.mask`` one-hot, the byte on every lane): WEIGHTS chunks, and IMAGE chunks
    addressed to the activation window (chunk ``a >= act_bytes / 8``: window bytes
    ``8a … 8a + 7``, at weight-memory byte ``window_weight_byte + 8a - act_bytes``).

    Latency and throughput: a block-RAM IMAGE chunk is written during a run too, the
    others only while not ``busy``; one QPARAMS chunk per cycle, a PROGRAM chunk per 8
    cycles, an IMAGE (with the window, WEIGHTS) chunk per 8 cycles in which the
    activation memory is free (the link takes 17 cycles to prepare a chunk).

    Parameters
    ----------
    config : AcceleratorConfig

    Attributes
    ----------
    wr : In(stream.Signature(WriteCommand))
    busy : In(1)
        A run is in progress: the weight (single-port SPRAM), qparam and program
        memories are in use.
    program_pending : Out(1)
        A chunk other than a block-RAM IMAGE chunk is offered: the sequencer must not
        start (it would read a half-written program, or find the weight memory in use);
        with the window, the host's reads of the weight memory wait.
    act_in : In(write port)
        The datapath's (and the copier's) activation writes; with ``config.write_banks``
        > 1 one port per bank (``act`` too), and an IMAGE byte waits only for its own
        bank's.
    window_in : In(write port)
        With the window: the copier's window bytes (16-bit activation addresses), written
        in their cycle (the host's chunks wait: the copier runs only while ``busy``).
    weights, qparams, program, act : Out(write port)
        To the memories.
    """

    def __init__(self, config):
        self._config = config
        super().__init__({
            "wr": In(stream.Signature(WriteCommand)),
            "busy": In(1),
            "program_pending": Out(1),
            "act_in": one_or_array(In(write_port_signature(config.act_bytes, unsigned(8))),
                                   config.write_banks),
            "window_in": In(write_port_signature(ACT_SPACE, unsigned(8))),
            "weights": Out(weight_write_signature(config.weight_words * (config.rows // 8))),
            "qparams": Out(write_port_signature(config.qparam_entries,
                                                program.stored_qparam(config.bias_width))),
            "program": Out(write_port_signature(_program_halfwords(config), unsigned(16))),
            "act": one_or_array(Out(write_port_signature(config.act_bytes, unsigned(8))),
                                config.write_banks),
        })

    def elaborate(self, platform):
        cfg = self._config
        m = Module()
        Space = program.Space
        wr, valid = self.wr.p, self.wr.valid
        # What the payload is, and ``ready``, do not look at ``valid`` (only the writes
        # do): the handshake is decided from registers, not after the link's state.
        space = {s: Signal(name=f"is_{s.name.lower()}") for s in Space}
        for s, sig in space.items():
            m.d.comb += sig.eq(wr.space == s)
        to_window = Signal()                 # an IMAGE chunk for the window
        if cfg.act_window:
            m.d.comb += to_window.eq(_at_least(wr.addr, cfg.act_bytes // 8))
        bram_image = space[Space.IMAGE] & ~to_window
        # A beat that may be written now: a block-RAM image chunk always, others idle.
        may, go = Signal(), Signal()
        m.d.comb += [may.eq(bram_image | ~self.busy), go.eq(valid & may),
                     self.program_pending.eq(valid & ~bram_image)]
        part = Signal(3)                     # byte being written (this cycle if ``step``)
        may_step, step = Signal(), Signal()
        m.d.comb += step.eq(valid & may_step)
        # The byte is picked from the halfword (one multiplexer for both); a PROGRAM
        # halfword is written in the first of its two bytes' cycles.
        qparam = program.QParam(wr.data)     # stored without its padding and high bias bits
        half = wr.data.word_select(part[1:], 16)
        byte = half.word_select(part[0], 8)
        with m.If(step):
            m.d.sync += part.eq(part + 1)
        m.d.comb += [
            self.qparams.addr.eq(wr.addr),
            *(getattr(self.qparams.data, f).eq(getattr(qparam, f)) for f in ("bias", "m", "s")),
            self.qparams.en.eq(go & space[Space.QPARAMS]),
            self.program.addr.eq(Cat(part[1:], wr.addr)),
            self.program.data.eq(half),
            self.program.en.eq(go & space[Space.PROGRAM] & ~part[0]),
        ]
        in_place = space[Space.PROGRAM] | space[Space.IMAGE]
        if cfg.act_window:
            in_place = in_place | space[Space.WEIGHTS]
            # The window ends with the weight memory. One byte lane per cycle: the
            # copier's (during a copy) or the offered chunk's (idle).
            cp = self.window_in
            window = window_chunk(cfg, Mux(cp.en, cp.addr[3:], wr.addr))
            m.d.comb += [self.weights.addr.eq(Mux(space[Space.WEIGHTS] & ~cp.en, wr.addr,
                                                  window)),
                         self.weights.data.eq(Mux(cp.en, cp.data, byte).replicate(8)),
                         self.weights.mask.eq(1 << Mux(cp.en, cp.addr[:3], part)),
                         self.weights.en.eq(cp.en | (go & (space[Space.WEIGHTS] |
                                                           (space[Space.IMAGE] & to_window))))]
        else:
            m.d.comb += [self.weights.addr.eq(wr.addr), self.weights.data.eq(wr.data),
                         self.weights.en.eq(go & space[Space.WEIGHTS])]
        # Each bank's port: the datapath's byte, else an IMAGE byte of that bank.
        low = (cfg.write_banks - 1).bit_length()
        image_addr = Cat(part, wr.addr)
        for bank, (act_in, act) in enumerate(zip(port_list(self.act_in), port_list(self.act))):
            with m.If(act_in.en):
                m.d.comb += [act.addr.eq(act_in.addr), act.data.eq(act_in.data), act.en.eq(1)]
            with m.Elif(bram_image & (image_addr[:low] == bank) if low else bram_image):
                m.d.comb += [act.addr.eq(image_addr), act.data.eq(byte), act.en.eq(valid),
                             may_step.eq(1)]
        with m.If(may & in_place & ~bram_image):
            m.d.comb += may_step.eq(1)
        m.d.comb += self.wr.ready.eq(Mux(in_place, may_step & (part == 7), may))
        return m


def _at_least(value, bound):
    """``value >= bound`` for a constant ``bound``: the OR of ``value``'s bits from
    ``log2(bound)`` up when ``bound`` is a power of two (no carry chain; these compares
    sit on the host-write handshake, the iCEBreaker's critical path), else ``>=``."""
    if bound > 0 and bound & (bound - 1) == 0:
        return value[bound.bit_length() - 1:].any()
    return value >= bound


def window_chunk(cfg, chunk):
    """The weight-memory chunk (64 bits) of activation-window chunk ``chunk`` (bytes
    ``8*chunk … +7``, ``8*chunk >= act_bytes``): ``window_weight_byte - act_bytes`` on
    (a multiple of 8); no adder when that is a multiple of the window (iCEBreaker)."""
    offset = (cfg.window_weight_byte - cfg.act_bytes) // 8
    width = (cfg.weight_bytes // 8 - 1).bit_length()
    low = (ACT_SPACE // 8 - 1).bit_length()
    if offset >= 0 and offset % (1 << low) == 0 and width >= low:
        return Cat(chunk[:low], C(offset >> low, width - low))
    return (chunk + offset)[:width]


class _State(enum.Enum):
    IDLE = 0
    FETCH = 1
    RUN = 2
    STORE = 3
    FINISH = 4


class Sequencer(wiring.Component):
    """Runs the layer program: fetch a descriptor, run it, store its cycle count.

    Per descriptor: it is read from the program memory as halfwords (one per cycle,
    ``ceil(LayerDescriptor bits / 16) + 1`` cycles), the unit that runs it (the
    datapath, or the copier for a :class:`~.program.CopyDescriptor`; the core decodes
    ``desc.copy``) is started by ``launch`` and ends it with ``layer_done``, and the
    cycles from ``launch`` to ``layer_done`` are stored in the results memory (1
    cycle). The run ends after the descriptor with ``to_logits`` (or the
    ``max_layers``-th) with the total cycle count stored (1 cycle). ``desc`` keeps the
    last descriptor until the next run (its ``out_base`` is where the result is); its
    last full halfword is the program memory's read data, which only a fetch changes.

    With ``config.prefetch_descriptors`` the next descriptor is read while the current
    one runs (into a second set of registers; ``desc`` is all flip-flops then), so a
    descriptor after the first starts the cycle after its predecessor's count is stored
    instead of a fetch later.

    Latency: ``busy`` rises the cycle after ``start`` is taken; one run at a time
    (``start.ready`` only while idle and no ``program_pending``). ``overrun`` rises when a
    run reaches ``2 ** config.watchdog_log2`` cycles (the core then resets the sequencer).

    Parameters
    ----------
    config : AcceleratorConfig

    Attributes
    ----------
    start : In(stream.Signature(StartCommand))
    busy : Out(1)
    overrun : Out(1)
        The run has taken ``2 ** watchdog_log2`` cycles (the watchdog).
    program_pending : In(1)
        A program write is still going in: the run must not read it yet.
    program : Out(read port)
        The program memory (16-bit halfwords).
    desc : Out(LayerDescriptor), image_base : Out(16), launch : Out(1)
        To the datapath and the copier: the current descriptor, the image slot, the
        start strobe.
    layer_done : In(1)
        From the datapath or the copier: the descriptor's end strobe.
    results : Out(write port)
        To the results memory: the counters.
    """

    def __init__(self, config):
        self._config = config
        super().__init__({
            "start": In(stream.Signature(StartCommand)),
            "busy": Out(1),
            "overrun": Out(1),
            "program_pending": In(1),
            "program": Out(read_port_signature(_program_halfwords(config), unsigned(16))),
            "desc": Out(program.LayerDescriptor),
            "image_base": Out(16),
            "launch": Out(1),
            "layer_done": In(1),
            "results": Out(write_port_signature(_result_words(config), unsigned(32))),
        })

    def elaborate(self, platform):
        cfg = self._config
        m = Module()
        step = program.DESCRIPTOR_WORDS * 4                  # halfwords per descriptor
        state = Signal(_State)
        desc_size = program.LayerDescriptor.as_shape().size
        halves = -(-desc_size // 16)
        # The last full halfword is fetched last and stays in the program memory's read
        # register (it is not read again before the next fetch): no flip-flops of ours.
        held = desc_size // 16 - 1
        order = [j for j in range(halves) if j != held] + [held]
        words = [self.program.data if j == held else Signal(16, name=f"desc{j}")
                 for j in range(halves)]
        pc = Signal(range(cfg.max_layers * step + 1))       # program halfword address
        layer = Signal(range(cfg.max_layers + 1))
        fetch = Signal(range(halves + 1))
        launch = Signal()
        # No count reaches 2 ** watchdog_log2 + 1: the watchdog stops the run first.
        total = Signal(cfg.watchdog_log2 + 1)
        cycles = Signal(cfg.watchdog_log2 + 1)              # of the current descriptor
        prefetch = cfg.prefetch_descriptors
        fetched = Cat(*words)[:desc_size]
        if prefetch:
            # ``words`` (with the held halfword) is the next descriptor; ``current`` the
            # one running, loaded from it at launch.
            current = Signal(program.LayerDescriptor)
            upcoming = Signal(program.LayerDescriptor)
            fetching = Signal()                             # reading ``upcoming``
            have = Signal()                                 # ``upcoming`` is all in
            next_ready = have | (fetching & (fetch == halves))
            m.d.comb += upcoming.eq(fetched)
        # launch is high only in RUN's first cycle (set on entering RUN, cleared in it):
        # the flip-flop drives the units' start directly, no state decode in front.
        m.d.comb += [self.busy.eq(state != _State.IDLE),
                     self.desc.eq(current if prefetch else fetched),
                     self.overrun.eq(total[cfg.watchdog_log2]), self.launch.eq(launch)]
        with m.If(self.busy):
            m.d.sync += total.eq(total + 1)

        res = self.results

        half = Signal(range(halves))                        # halfword requested now
        with m.Switch(fetch):
            for pos, j in enumerate(order):
                with m.Case(pos):
                    m.d.comb += half.eq(j)
        m.d.comb += self.program.addr.eq(pc + half)

        def read_halfwords():
            # The halfword order[k] is requested in cycle k and arrives in cycle k + 1.
            m.d.comb += self.program.en.eq(fetch != halves)
            m.d.sync += fetch.eq(fetch + 1)
            with m.Switch(fetch):
                for pos, j in enumerate(order[:-1]):
                    with m.Case(pos + 1):
                        m.d.sync += words[j].eq(self.program.data)

        def launch_upcoming():
            # Comes after read_halfwords' statements: its fetch of the successor wins.
            m.d.sync += [current.eq(upcoming), launch.eq(1), cycles.eq(0),
                         state.eq(_State.RUN), have.eq(0)]
            with m.If(~upcoming.to_logits & (pc != (cfg.max_layers - 1) * step)):
                m.d.sync += [pc.eq(pc + step), fetching.eq(1)]

        if prefetch:
            with m.If(fetching):
                read_halfwords()
                with m.If(fetch == halves):
                    m.d.sync += [fetching.eq(0), have.eq(1), fetch.eq(0)]
        with m.Switch(state):
            with m.Case(_State.IDLE):
                m.d.comb += self.start.ready.eq(~self.program_pending)
                with m.If(self.start.valid & self.start.ready):
                    m.d.sync += [self.image_base.eq(self.start.p.image_base), pc.eq(0),
                                 layer.eq(0), fetch.eq(0), total.eq(1), state.eq(_State.FETCH)]
                    if prefetch:
                        m.d.sync += [fetching.eq(1), have.eq(0)]
            with m.Case(_State.FETCH):
                if prefetch:
                    with m.If(next_ready):
                        launch_upcoming()
                else:
                    read_halfwords()
                    with m.If(fetch == halves):
                        m.d.sync += [state.eq(_State.RUN), launch.eq(1), fetch.eq(0),
                                     cycles.eq(0)]
            with m.Case(_State.RUN):
                # Counted like the units' own cycles: launch to the done strobe.
                m.d.sync += launch.eq(0)
                with m.If(~launch & self.layer_done):
                    m.d.sync += state.eq(_State.STORE)
                with m.Else():
                    m.d.sync += cycles.eq(cycles + 1)
            with m.Case(_State.STORE):
                m.d.comb += [res.addr.eq(1 + layer), res.data.eq(cycles), res.en.eq(1)]
                with m.If(self.desc.to_logits | (layer == cfg.max_layers - 1)):
                    m.d.sync += state.eq(_State.FINISH)
                if prefetch:
                    with m.Elif(next_ready):
                        m.d.sync += layer.eq(layer + 1)
                        launch_upcoming()
                with m.Else():
                    if prefetch:
                        m.d.sync += [layer.eq(layer + 1), state.eq(_State.FETCH)]
                    else:
                        m.d.sync += [layer.eq(layer + 1), pc.eq(pc + step),
                                     state.eq(_State.FETCH)]
            with m.Case(_State.FINISH):
                m.d.comb += [res.addr.eq(0), res.data.eq(total), res.en.eq(1)]
                m.d.sync += state.eq(_State.IDLE)
        return m


class ResultReads(wiring.Component):
    """Host reads of the outputs and counters: ``rd`` → ``rd_data``.

    Latency 1 cycle, or 2 with ``registered`` (the read data is registered once more
    before ``rd_data``); one read per cycle; ``rd`` is ready whenever the stage after
    the memory read is empty or being taken and ``hold`` is low. ``LOGITS`` addr ``k``
    reads activation byte ``base + k`` (sign-extended; ``act`` spans the activation
    addresses, block RAM and window),
    ``COUNTERS`` addr ``i`` results word ``i``, ``IDENTITY`` addr ``k`` the identity's
    word ``k`` (stored above the counters); addresses wrap like the memories (the link
    never reads beyond ``1 + max_layers`` counters, its checker refuses it, nor beyond
    the identity, so no logic is spent on zeroing them).

    Parameters
    ----------
    config : AcceleratorConfig
    registered : bool
        Register the read data before ``rd_data``. An ECP5's block RAM output (its
        clock-to-out, then the cascade and bank multiplexers of a large activation
        memory) otherwise reaches the link's response register in one cycle.

    Attributes
    ----------
    rd : In(stream.Signature(ReadCommand))
    rd_data : Out(stream.Signature(ReadData))
    base : In(16)
        Activation byte address of output 0 (the last descriptor's ``out_base``).
    hold : In(1)
        The activation read port is not free this cycle (a weight-memory write).
    results : Out(read port)
        The results memory.
    act : Out(read port)
        Activation bytes (only used while the core is idle).
    """

    def __init__(self, config, *, registered=False):
        self._config = config
        self._registered = registered
        super().__init__({
            "rd": In(stream.Signature(ReadCommand)),
            "rd_data": Out(stream.Signature(ReadData)),
            "base": In(16),
            "hold": In(1),
            "results": Out(read_port_signature(_result_words(config), unsigned(32))),
            "act": Out(read_port_signature(config.act_space, unsigned(8))),
        })

    def elaborate(self, platform):
        m = Module()
        rd = self.rd.p
        # `read`: the stream whose data is the memories' output.
        if self._registered:
            read = stream.Signature(ReadData).create(path=("read",))
        else:
            read = self.rd_data
        output_r = Signal()
        with m.If((~read.valid | read.ready) & ~self.hold):
            m.d.comb += [self.rd.ready.eq(1), self.results.en.eq(1), self.act.en.eq(1)]
            m.d.sync += [read.valid.eq(self.rd.valid),
                         output_r.eq(rd.space == program.ReadSpace.LOGITS)]
        with m.Elif(read.ready):
            m.d.sync += read.valid.eq(0)
        m.d.comb += self.act.addr.eq(self.base + rd.addr)
        identity = rd.space == program.ReadSpace.IDENTITY
        m.d.comb += self.results.addr.eq(Mux(identity, rd.addr | _identity_base(self._config),
                                             rd.addr))
        with m.If(output_r):
            m.d.comb += read.p.data.eq(self.act.data.as_signed())
        with m.Else():
            m.d.comb += read.p.data.eq(self.results.data)
        if self._registered:
            m.d.comb += read.ready.eq(~self.rd_data.valid | self.rd_data.ready)
            with m.If(read.ready):
                m.d.sync += [self.rd_data.valid.eq(read.valid), self.rd_data.p.eq(read.p)]
        return m
