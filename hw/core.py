"""The accelerator core: memories + layer sequencer + datapath, behind a host interface.

The link's command handler (``hw/top.py``) drives :class:`Core` through four streams; the
host compiler (``fpgacnn.sw.compiler``) produces what goes through them.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from . import program
from .config import AcceleratorConfig
from .datapath import Datapath
from .memories import Ram, WeightMemory

__all__ = ["Core", "WriteCommand", "StartCommand", "ReadCommand", "ReadData"]


class WriteCommand(data.Struct):
    """One 64-bit host write (``addr`` counts chunks in ``space``; see program.Space)."""
    space: program.Space
    addr: unsigned(16)
    data: unsigned(64)


class StartCommand(data.Struct):
    """Run the layer program; the ``in_from_image`` layer reads from ``image_base``."""
    image_base: unsigned(16)


class ReadCommand(data.Struct):
    """Read one 32-bit result value (see program.ReadSpace)."""
    space: program.ReadSpace
    addr: unsigned(8)


class ReadData(data.Struct):
    data: unsigned(32)


class _State(enum.Enum):
    IDLE = 0
    FETCH = 1
    RUN = 2
    STORE = 3
    FINISH = 4


class Core(wiring.Component):
    """Runs a compiled network from on-chip memory; host interface for the link.

    Host interface (stable; ``hw/top.py`` builds on it):

    ``wr`` : In(stream of :class:`WriteCommand`)
        One 64-bit chunk per beat into a :class:`~fpgacnn.hw.program.Space`:
        ``WEIGHTS`` (chunk ``a`` = rows ``8*(a % n)…+7`` of weight word ``a // n``,
        ``n = rows/8``), ``QPARAMS`` (one :class:`~fpgacnn.hw.program.QParam` per chunk),
        ``PROGRAM`` (``DESCRIPTOR_WORDS`` chunks per descriptor, LSBs first), ``IMAGE``
        (activation bytes ``8*addr … 8*addr+7``). WEIGHTS/QPARAMS writes take one
        cycle, PROGRAM writes four; all three are held off (``ready`` low) while
        ``busy``. IMAGE writes are accepted during a run too (into the other image slot)
        and take 8 cycles plus any cycle in which the datapath writes the activation
        memory (it has priority; nothing is lost). Addresses beyond a memory wrap; the
        link checks them.
    ``start`` : In(stream of :class:`StartCommand`)
        Ready only when idle (and no PROGRAM write is pending). Runs the program from
        descriptor 0 until the descriptor with ``to_logits`` (or ``max_layers``); the
        layer with ``in_from_image`` reads its input from ``image_base`` (a byte
        address).
    ``busy`` : Out(1)
        High from the accepted start until the last logit and counter are stored.
    ``rd``, ``rd_data`` : In(stream of :class:`ReadCommand`), Out(stream of :class:`ReadData`)
        One 32-bit answer per request, in order, latency 1 (with back-pressure):
        ``LOGITS`` addr ``k`` → output ``k`` of the last run, sign-extended;
        ``COUNTERS`` addr 0 → cycles of the last run (start accepted → idle), addr
        ``1 + i`` → cycles of layer ``i`` (datapath start → last output written).
        Addresses beyond ``max_logits`` / ``1 + max_layers`` read 0. Values are those of
        the last *finished* run only when read while idle.

    Timing: a layer takes its array beats (``out_h·k_blocks·ceil(out_w/cols)·D``) plus
    about 30–45 cycles of pipeline fill and drain, plus 15 cycles of descriptor fetch;
    LeNet-5 on the iCEBreaker configuration: about 32,500 cycles (1.25× 416,520 MACs / 16).

    Parameters
    ----------
    config : AcceleratorConfig
    mac : "generic" or "ice40", optional
        Multiplier blocks of the systolic array; default ``"ice40"`` if ``config.ice40``.
    dataflow : "systolic" or "broadcast", optional
        Operand movement in the array; default ``config.dataflow``.
    requant_interval : int, optional
        See :class:`~fpgacnn.hw.datapath.Datapath`; default ``config.requant_interval``.
    """
    def __init__(self, config, *, mac=None, dataflow=None, requant_interval=None):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"Core needs an AcceleratorConfig, not {config!r}")
        self._config = config
        self._mac = mac if mac is not None else ("ice40" if config.ice40 else "generic")
        if dataflow is None:
            dataflow = config.dataflow
        if requant_interval is None:
            requant_interval = config.requant_interval
        self.datapath = Datapath(config, mac=self._mac, dataflow=dataflow,
                                 requant_interval=requant_interval)
        super().__init__({
            "wr": In(stream.Signature(WriteCommand)),
            "start": In(stream.Signature(StartCommand)),
            "busy": Out(1),
            "rd": In(stream.Signature(ReadCommand)),
            "rd_data": Out(stream.Signature(ReadData)),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        cfg = self._config
        m = Module()
        m.submodules.datapath = dp = self.datapath
        dw = program.DESCRIPTOR_WORDS

        m.submodules.act = act = Ram(unsigned(8), cfg.act_bytes, copies=cfg.cols)
        m.submodules.weights = wmem = WeightMemory(rows=cfg.rows, depth=cfg.weight_words,
                                                   ice40=cfg.ice40)
        m.submodules.qparams = qmem = Ram(program.QParam, cfg.qparam_entries)
        # The program is stored 16 bits wide: one EBR instead of four (64 bits wide).
        m.submodules.program = pmem = Ram(unsigned(16), cfg.max_layers * dw * 4)
        # Results: logits at [0, max_logits), total cycles, then one counter per layer.
        n_results = cfg.max_logits + 1 + cfg.max_layers
        m.submodules.results = rmem = Ram(unsigned(32), n_results)

        for i in range(cfg.cols):
            wiring.connect(m, dp.act_rd[i], act.rd[i])
        wiring.connect(m, dp.w_rd, wmem.rd)
        wiring.connect(m, dp.q_rd, qmem.rd[0])

        state = Signal(_State)
        busy = Signal()
        m.d.comb += busy.eq(state != _State.IDLE)
        m.d.comb += self.busy.eq(busy)

        # ---- host writes --------------------------------------------------------------
        # IMAGE chunks are held here and written one byte per free cycle.
        img_valid = Signal()
        img_addr = Signal(range(cfg.act_bytes // 8 + 1))
        img_data = Signal(64)
        img_byte = Signal(3)
        prog_valid = Signal()
        prog_addr = Signal(range(cfg.max_layers * dw))
        prog_data = Signal(64)
        prog_part = Signal(2)
        wr = self.wr.p
        # WEIGHTS (single-port SPRAM), QPARAMS and PROGRAM are in use during a run.
        m.d.comb += self.wr.ready.eq(Mux(wr.space == program.Space.IMAGE, ~img_valid,
                                         ~busy & ~prog_valid))
        take = self.wr.valid & self.wr.ready
        m.d.comb += [
            wmem.wr.addr.eq(wr.addr), wmem.wr.data.eq(wr.data),
            wmem.wr.en.eq(take & (wr.space == program.Space.WEIGHTS)),
            qmem.wr.addr.eq(wr.addr), qmem.wr.data.eq(wr.data[:len(qmem.wr.data.as_value())]),
            qmem.wr.en.eq(take & (wr.space == program.Space.QPARAMS)),
        ]
        # PROGRAM chunks are held in prog_* and written as four halfwords (while idle).
        with m.If(take & (wr.space == program.Space.PROGRAM)):
            m.d.sync += [prog_valid.eq(1), prog_addr.eq(wr.addr), prog_data.eq(wr.data),
                         prog_part.eq(0)]
        with m.If(prog_valid):
            m.d.comb += [pmem.wr.addr.eq(Cat(prog_part, prog_addr)),
                         pmem.wr.data.eq(prog_data.word_select(prog_part, 16)),
                         pmem.wr.en.eq(1)]
            m.d.sync += prog_part.eq(prog_part + 1)
            with m.If(prog_part == 3):
                m.d.sync += prog_valid.eq(0)
        with m.If(take & (wr.space == program.Space.IMAGE)):
            m.d.sync += [img_valid.eq(1), img_addr.eq(wr.addr), img_data.eq(wr.data),
                         img_byte.eq(0)]
        # The datapath's activation writes win; a host byte waits for a free cycle.
        with m.If(dp.act_wr.en):
            m.d.comb += [act.wr.addr.eq(dp.act_wr.addr), act.wr.data.eq(dp.act_wr.data),
                         act.wr.en.eq(1)]
        with m.Elif(img_valid):
            m.d.comb += [act.wr.addr.eq((img_addr << 3) | img_byte),
                         act.wr.data.eq(img_data.word_select(img_byte, 8)),
                         act.wr.en.eq(1)]
            m.d.sync += img_byte.eq(img_byte + 1)
            with m.If(img_byte == 7):
                m.d.sync += img_valid.eq(0)

        # ---- sequencer ----------------------------------------------------------------
        image_base = Signal(16)
        desc_bits = Signal(dw * 64)   # (only the descriptor's bits are loaded and used)
        desc = program.LayerDescriptor(desc_bits[:program.LayerDescriptor.as_shape().size])
        halves = -(-program.LayerDescriptor.as_shape().size // 16)
        pc = Signal(range(cfg.max_layers * dw * 4 + 1))     # program halfword address
        layer = Signal(range(cfg.max_layers + 1))
        fetch = Signal(range(halves + 1))
        launch = Signal()
        total = Signal(32)
        m.d.comb += [dp.desc.eq(desc), dp.image_base.eq(image_base)]

        with m.If(busy):
            m.d.sync += total.eq(total + 1)

        res_wr_addr = Signal.like(rmem.wr.addr)
        res_wr_data = Signal(32)
        res_wr_en = Signal()
        m.d.comb += [rmem.wr.addr.eq(res_wr_addr), rmem.wr.data.eq(res_wr_data),
                     rmem.wr.en.eq(res_wr_en)]
        with m.If(dp.logit_wr.en):
            m.d.comb += [res_wr_addr.eq(dp.logit_wr.addr),
                         res_wr_data.eq(dp.logit_wr.data.as_signed()), res_wr_en.eq(1)]

        m.d.comb += pmem.rd[0].addr.eq(pc + fetch)
        with m.Switch(state):
            with m.Case(_State.IDLE):
                # A program write still going in must finish before the run reads it.
                m.d.comb += self.start.ready.eq(~prog_valid)
                with m.If(self.start.valid):
                    m.d.sync += [image_base.eq(self.start.p.image_base), pc.eq(0),
                                 layer.eq(0), fetch.eq(0), total.eq(1), state.eq(_State.FETCH)]
            with m.Case(_State.FETCH):
                # Halfword j is requested in cycle j and arrives in cycle j + 1.
                m.d.comb += pmem.rd[0].en.eq(1)
                m.d.sync += fetch.eq(fetch + 1)
                with m.Switch(fetch):
                    for j in range(halves):
                        with m.Case(j + 1):
                            m.d.sync += desc_bits[16 * j:16 * (j + 1)].eq(pmem.rd[0].data)
                with m.If(fetch == halves):
                    m.d.sync += [state.eq(_State.RUN), launch.eq(1), fetch.eq(0)]
            with m.Case(_State.RUN):
                m.d.comb += dp.start.eq(launch)
                m.d.sync += launch.eq(0)
                with m.If(~launch & dp.done):
                    m.d.sync += state.eq(_State.STORE)
            with m.Case(_State.STORE):
                m.d.comb += [res_wr_addr.eq(cfg.max_logits + 1 + layer),
                             res_wr_data.eq(dp.cycles), res_wr_en.eq(1)]
                with m.If(desc.to_logits | (layer == cfg.max_layers - 1)):
                    m.d.sync += state.eq(_State.FINISH)
                with m.Else():
                    m.d.sync += [layer.eq(layer + 1), pc.eq(pc + dw * 4),
                                 state.eq(_State.FETCH)]
            with m.Case(_State.FINISH):
                m.d.comb += [res_wr_addr.eq(cfg.max_logits), res_wr_data.eq(total),
                             res_wr_en.eq(1)]
                m.d.sync += state.eq(_State.IDLE)

        # ---- host reads ---------------------------------------------------------------
        rd = self.rd.p
        rd_index = Signal(range(n_results + 256))
        rd_ok = Signal()
        with m.If(rd.space == program.ReadSpace.LOGITS):
            m.d.comb += [rd_index.eq(rd.addr), rd_ok.eq(rd.addr < cfg.max_logits)]
        with m.Else():
            m.d.comb += [rd_index.eq(cfg.max_logits + rd.addr),
                         rd_ok.eq(rd.addr < 1 + cfg.max_layers)]
        rd_ok_r = Signal()
        with m.If(~self.rd_data.valid | self.rd_data.ready):
            m.d.comb += [self.rd.ready.eq(1), rmem.rd[0].en.eq(1)]
            m.d.sync += [self.rd_data.valid.eq(self.rd.valid), rd_ok_r.eq(rd_ok)]
        m.d.comb += [rmem.rd[0].addr.eq(rd_index),
                     self.rd_data.p.data.eq(Mux(rd_ok_r, rmem.rd[0].data, 0))]
        return m
