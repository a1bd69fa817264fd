"""Named accelerator configurations, one per board (array shape, memories, clocks).

Everything that sizes the gateware lives here, so the compiler (host side) can check a
network against exactly what the board was built with, and the board reports the same
numbers in its identity frame.
"""

import enum
from dataclasses import dataclass, fields, replace

from amaranth.lib import data

from .program import DESCRIPTOR_WORDS, QParam

__all__ = ["AcceleratorConfig", "Dataflow", "CONFIGS", "get_config", "DEFAULT_BAUD",
           "MAX_NAME_CHARS", "StageShape", "PipelineShape", "PipelineSpec", "PIPELINES",
           "get_pipeline"]

#: UART baud rate of every board configuration unless it says otherwise; the host
#: driver's default too (it must match the build).
DEFAULT_BAUD = 3_000_000
#: Longest configuration name (the board reports it in its identity frame).
MAX_NAME_CHARS = 16
#: Activation byte addresses are 16 bits (descriptor ``in_base``/``out_base``).
ACT_SPACE = 1 << 16


class Dataflow(enum.StrEnum):
    """Operand movement in the array (see :class:`~fpgacnn.hw.systolic.SystolicArray`).

    A ``str`` enum: configurations may be written with the plain strings.
    """
    SYSTOLIC = "systolic"      # operands move one PE per cycle (pipeline registers)
    BROADCAST = "broadcast"    # every PE of a row/column sees the same operand


@dataclass(frozen=True)
class AcceleratorConfig:
    """Sizes of one accelerator build.

    Attributes
    ----------
    name : str
        Board/config name (``icebreaker``, ``ulx3s-85f``, ...).
    rows, cols : int
        Systolic array shape: ``rows`` output channels × ``cols`` output pixels per tile.
        The core needs ``rows`` to be a multiple of 8 (weight words are written in
        64-bit chunks); the units accept any positive shape.
    max_reduction : int
        Largest ``Cin*F*F`` a layer may have; sets the accumulator width.
    weight_words : int
        Depth of the weight memory in words of ``rows`` int8 weights.
    act_bytes : int
        Activation memory (image slots and ping-pong buffers), in bytes.
    qparam_entries : int
        Per-output-channel requantisation entries (bias, M, S), all layers together.
    max_layers : int
        Layer descriptors the program memory holds.
    clock_hz, baud : int
        Core clock and UART baud rate (default :data:`DEFAULT_BAUD`).
    ice40 : bool
        Use hand-instantiated iCE40 primitives (SB_MAC16 pairs, SB_SPRAM256KA).
    dataflow : Dataflow
        Operand movement in the array; the strings ``"systolic"`` and ``"broadcast"`` are
        accepted and converted.
    requant_interval : int
        Cycles per requantised value, a power of two dividing the width of
        :class:`~fpgacnn.hw.program.QParam` ``.m``; more than 1 trades requantiser area
        for speed, nearly free while ``reduction >= rows * cols * requant_interval`` for
        every layer (a result waits in the array while its QParam is read: a cycle or two
        a tile when the requantiser is the bound). With ``ice40`` and interval 1 the
        product is on SB_MAC16 blocks instead
        (:func:`~fpgacnn.hw.datapath.requant_multiplier`: two for a 26-bit accumulator,
        beside the array's ``rows * cols / 2``).
    compact_drain : bool
        Drain only the PEs a tile uses (its layer's channels in the last k-block, its
        pixels in the last x-tile) instead of all ``rows * cols``: layers with few output
        channels (LeNet-5's C1: 6) stop being bound by the array's one result per cycle.
        Off by default (a few registers and comparators).
    fc_columns : bool
        Layers with ``out_w == 1`` (fully connected ones) and more than
        ``max(1, cols // 4)`` k-blocks (:func:`~.program.column_mode`) put a
        different k-block on each array column (all columns see the same activation), so
        they run ``cols`` times fewer beats. The weight memory is then ``weight_words / cols`` words of
        ``rows * cols`` weights (the host still writes ``weight_words`` words of ``rows``);
        ``cols`` must be a power of two dividing ``weight_words``, and the dataflow
        broadcast. Off by default.
    wrap_rows : bool
        A layer with one k-block and rows of at least ``cols`` pixels walks its output
        map row-major as one sequence of tiles (:func:`~.program.wraps_rows`), so rows
        whose width is not a multiple of ``cols`` leave no column idle. It costs per-layer
        wrap offsets and, per column, a next-row address and padding check in the
        address generator (210 logic cells on the iCEBreaker's 8×2 array; README); nothing
        with one column. Off by default.
    pool_width, pool_blocks : int
        Max-pool line buffer: widest pooled layer (convolution output width) and most
        k-blocks it holds (``pool_width * pool_blocks * rows`` bytes of block RAM).
    rx_fifo_bytes : int
        The receive queue in front of the link (block RAM), a power of two >= 512: the
        host's credit of unanswered bytes (:mod:`.protocol`). Throughput stops depending
        on the USB round trip once it covers baud / 10 × round-trip time (README, "Real
        boards", has the memory budget).
    watchdog_log2 : int
        A run is stopped (status ``WATCHDOG``) after ``2 ** watchdog_log2`` cycles: no layer
        program can keep the core busy for ever. 10..31.
    tx_pad_bytes : int
        Fill bytes sent after each response so a USB bridge's 510-byte packet fills and
        goes out at once (:mod:`.protocol`); 0 for none. 0..65535.
    result_lanes : int
        Results the array drains per cycle (its ``lanes``), a power of two dividing
        ``rows``. Each lane has its own requantiser, QParam memory copy (a read port
        of one, two lanes to a copy, with ``shared_qparams``), max-pool and
        address counters (lane ``l`` takes the channels ``l, l + lanes, ...`` of every
        k-block); the lanes' byte writes share the activation memory's write ports (one
        per bank, ``write_banks``), so layers without pooling write at most that many
        bytes a cycle. Layers whose tiles are
        bound by their results (few output channels, short reductions: LeNet-5's C1 on
        many columns) drain ``result_lanes`` times faster. Needs ``compact_drain``, the
        broadcast dataflow and no ``ice40`` (whose array drains through shift chains).
        1 by default.
    pixel_pairs : bool
        Layers with at most ``rows / 2`` output channels and rows of an even number of
        pixels (:func:`~.program.pixel_pairs_fit`) may run with the descriptor's
        ``pixel_pairs``: each array column computes two neighbouring pixels, one on each
        half of the rows, from a kernel ``stride`` columns wider. LeNet-5's C1 (6
        channels, 5×5) then runs half the tiles of 30 beats instead of 25 on 12 of 16
        rows. The compiler uses it where it saves cycles and the weights still fit
        (``compiler.pixel_pairs``). It costs the address generator's wider kernel and
        column step, and a per-lane channel check in the drain. Needs ``compact_drain``, no ``act_window`` (streamed plans do not pair) and
        ``result_lanes`` dividing ``rows / 2``. Off by default.
    overlap_drain : bool
        The array queues its results (:data:`~.datapath.RESULT_QUEUE` beats, more for
        slower multiplier blocks: the array's ``queue``) so a tile's last beat need not wait for the previous tile's last
        results to drain: tiles bound by their results take one cycle more than their
        result beats instead of ``mac.LATENCY + 2`` more (LeNet-5's C1 with pixel pairs
        on the ULX3S-85F's array). Costs the queue (lookup-table RAM on an ECP5) and a
        counter. Needs the broadcast dataflow and no ``ice40`` (whose array drains
        through shift chains). Off by default.
    prefetch_descriptors : bool
        The sequencer reads the next layer descriptor while the current one runs
        (:class:`~fpgacnn.hw.core.Sequencer`): a layer after the first starts a
        descriptor fetch sooner (``ceil(LayerDescriptor bits / 16) + 1`` cycles). Costs
        a second descriptor's worth of flip-flops (the running one is then held in
        flip-flops too). Off by default.
    shared_qparams : bool
        Two result lanes read each copy of the QParam memory, one through the block
        RAM's port that writes it (``memories.Ram(reads_per_copy=2)``; the host writes
        QParams only while the core is idle): half the copies, so eight lanes on the
        ULX3S-85F take the block RAM of four (3 DP16KD a copy). Needs ``result_lanes``
        > 1. Off by default.
    write_banks : int
        The activation memory's banks (``1``, ``2``, ``4``, ...): address ``a`` is in bank
        ``a mod write_banks``, each bank a write port of its own, so the result lanes
        write up to ``write_banks`` bytes a cycle (the lowest lane with a write for a
        bank goes first). Layers whose lanes' writes bound them (fully connected ones:
        one byte a cycle for each output) take that many times fewer cycles to write
        their outputs. Each array column's copy then reads every bank (same block RAM
        in total) and picks the byte. With one result lane it changes nothing but the
        memory. Needs no ``act_window``. 1 by default.
    act_window : bool
        Activation addresses ``act_bytes … 65535`` (the *window*) are bytes of the
        weight memory's top (:attr:`window_weight_byte`): image slots and maps too large
        for the block RAM live there. Only copies (:class:`~.program.CopyDescriptor`),
        IMAGE writes while idle and RESULT reads reach the window; layers read and write
        the block RAM. The compiler keeps the weights below the lowest window byte it
        uses. Needs a weight memory of at least ``65536 - act_bytes`` bytes and no
        ``fc_columns``. Off by default.

    Raises
    ------
    ValueError
        On construction (and :meth:`with_`), for any value the gateware cannot be built
        with; the message names the field, the value and what is allowed.
    """
    name: str
    rows: int
    cols: int
    max_reduction: int
    weight_words: int
    act_bytes: int
    qparam_entries: int
    max_layers: int
    clock_hz: int
    baud: int = DEFAULT_BAUD
    ice40: bool = False
    pool_width: int = 32
    pool_blocks: int = 2
    dataflow: Dataflow = Dataflow.SYSTOLIC
    requant_interval: int = 1
    rx_fifo_bytes: int = 512
    watchdog_log2: int = 26
    tx_pad_bytes: int = 510
    compact_drain: bool = False
    fc_columns: bool = False
    act_window: bool = False
    wrap_rows: bool = False
    result_lanes: int = 1
    pixel_pairs: bool = False
    overlap_drain: bool = False
    prefetch_descriptors: bool = False
    shared_qparams: bool = False
    write_banks: int = 1

    def __post_init__(self):
        name = self.name
        if (not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS or
                not name.isascii() or not name.isprintable()):
            raise ValueError(f"config name must be 1 to {MAX_NAME_CHARS} printable ASCII "
                             f"characters, not {name!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type is int and f.name != "tx_pad_bytes" and (
                    type(value) is not int or value <= 0):
                raise ValueError(f"config {name}: {f.name} must be a positive integer, "
                                 f"not {value!r}")
        if type(self.tx_pad_bytes) is not int or not 0 <= self.tx_pad_bytes < 1 << 16:
            raise ValueError(f"config {name}: tx_pad_bytes must be an integer 0..65535, "
                             f"not {self.tx_pad_bytes!r}")
        if self.rx_fifo_bytes < 512 or self.rx_fifo_bytes & (self.rx_fifo_bytes - 1):
            raise ValueError(f"config {name}: rx_fifo_bytes = {self.rx_fifo_bytes} must be a "
                             f"power of two >= 512 (512, 1024, 2048, ...)")
        if not 10 <= self.watchdog_log2 <= 31:
            raise ValueError(f"config {name}: watchdog_log2 = {self.watchdog_log2} must be "
                             f"10..31 (a run is stopped after 2 ** watchdog_log2 cycles)")
        for flag in ("ice40", "compact_drain", "fc_columns", "act_window", "wrap_rows",
                     "pixel_pairs", "overlap_drain", "prefetch_descriptors",
                     "shared_qparams"):
            if type(getattr(self, flag)) is not bool:
                raise ValueError(f"config {name}: {flag} must be True or False, not "
                                 f"{getattr(self, flag)!r}")
        if self.rows % 8:
            raise ValueError(f"config {name}: rows = {self.rows} must be a multiple of 8 "
                             f"(weight words are written in 64-bit chunks)")
        if (self.rows // 8) & (self.rows // 8 - 1):
            raise ValueError(f"config {name}: rows = {self.rows} must be 8 times a power of "
                             f"two (8, 16, 32, ...): a weight word's chunks are addressed "
                             f"by its low address bits")
        if self.act_bytes % 8:
            raise ValueError(f"config {name}: act_bytes = {self.act_bytes} must be a "
                             f"multiple of 8 (images are written in 64-bit chunks)")
        try:
            object.__setattr__(self, "dataflow", Dataflow(self.dataflow))
        except ValueError:
            raise ValueError(f"config {name}: dataflow must be one of "
                             f"{', '.join(repr(d.value) for d in Dataflow)}, not "
                             f"{self.dataflow!r}") from None
        if self.fc_columns and (self.cols & (self.cols - 1) or self.weight_words % self.cols):
            raise ValueError(f"config {name}: fc_columns needs cols = {self.cols} to be a power "
                             f"of two dividing weight_words = {self.weight_words} (a memory "
                             f"word holds one k-block per column)")
        if self.fc_columns and self.dataflow != Dataflow.BROADCAST:
            raise ValueError(f"config {name}: fc_columns needs dataflow='broadcast' (each PE "
                             f"gets its own weight), not {self.dataflow.value!r}")
        if self.act_window and (self.act_bytes >= ACT_SPACE or self.fc_columns or
                                self.weight_bytes < ACT_SPACE - self.act_bytes):
            raise ValueError(f"config {name}: act_window needs act_bytes < {ACT_SPACE}, no "
                             f"fc_columns and a weight memory of at least "
                             f"{ACT_SPACE} - act_bytes bytes (it has {self.weight_bytes})")
        lanes = self.result_lanes
        if lanes & (lanes - 1) or self.rows % lanes:
            raise ValueError(f"config {name}: result_lanes = {lanes} must be a power of two "
                             f"dividing rows = {self.rows}")
        if lanes > 1 and (self.ice40 or not self.compact_drain or
                          self.dataflow != Dataflow.BROADCAST):
            raise ValueError(f"config {name}: result_lanes = {lanes} needs compact_drain, "
                             f"dataflow='broadcast' and no ice40 (the iCE40 array drains "
                             f"one result a cycle)")
        if self.pixel_pairs and (not self.compact_drain or self.act_window or
                                 (self.rows // 2) % lanes):
            raise ValueError(f"config {name}: pixel_pairs needs compact_drain, no act_window "
                             f"and result_lanes = {lanes} dividing rows / 2 = {self.rows // 2} "
                             f"(a lane's channels are the same in both halves)")
        if self.shared_qparams and lanes == 1:
            raise ValueError(f"config {name}: shared_qparams needs result_lanes > 1 (two "
                             f"lanes to a QParam copy)")
        if self.overlap_drain and (self.ice40 or self.dataflow != Dataflow.BROADCAST):
            raise ValueError(f"config {name}: overlap_drain needs dataflow='broadcast' and "
                             f"no ice40 (the iCE40 array drains through shift chains)")
        banks = self.write_banks
        if banks & (banks - 1) or self.act_bytes % banks:
            raise ValueError(f"config {name}: write_banks = {banks} must be a power of two "
                             f"dividing act_bytes = {self.act_bytes}")
        if banks > 1 and self.act_window:
            raise ValueError(f"config {name}: write_banks = {banks} needs no act_window "
                             f"(the copier writes one byte a cycle)")
        m_bits = data.Layout.cast(QParam)["m"].shape.width     # of the multiplier M
        if self.requant_interval & (self.requant_interval - 1) or \
                m_bits % self.requant_interval:
            raise ValueError(f"config {name}: requant_interval = {self.requant_interval} "
                             f"must be a power of two dividing the {m_bits}-bit "
                             f"multiplier M (1, 2, 4, ...)")

    @property
    def acc_width(self):
        """Signed accumulator width: no sum of ``max_reduction`` int8 products overflows."""
        return (self.max_reduction * (1 << 14)).bit_length() + 1

    @property
    def bias_width(self):
        """Signed bias width the requantiser adds exactly (the compiler checks every bias).

        Trained biases are far smaller than int32 (LeNet-5: |bias| < 2,000); as wide as the
        accumulator keeps the requantiser's multiplier ``(acc_width + 1) × M_BITS``.
        """
        return self.acc_width

    @property
    def max_logits(self):
        """Outputs of the last layer one RESULT returns: the whole activation space.

        The last descriptor leaves the network's output map in activation memory like any
        other (at its ``out_base``) and RESULT reads it from there, so the
        only bound besides the memory is the response's 16-bit payload length, which
        also carries the ``1 + max_layers`` 32-bit counters.
        """
        return min(self.act_space, (1 << 16) - 1 - 4 * (1 + self.max_layers))

    @property
    def act_space(self):
        """Activation addresses in use: ``act_bytes``, or all 65536 with ``act_window``."""
        return ACT_SPACE if self.act_window else self.act_bytes

    @property
    def weight_bytes(self):
        return self.weight_words * self.rows

    @property
    def window_weight_byte(self):
        """Weight-memory byte of window address ``act_bytes`` (window address ``A`` is
        weight byte ``window_weight_byte + A - act_bytes``; the window ends with the
        weight memory). Weight word ``w`` holds bytes ``rows*w … rows*w + rows - 1``."""
        return self.weight_bytes - (ACT_SPACE - self.act_bytes)

    @property
    def act_addr_width(self):
        return (self.act_bytes - 1).bit_length()

    @property
    def weight_addr_width(self):
        return (self.weight_words - 1).bit_length()

    @property
    def weight_lanes(self):
        """Words of ``rows`` weights per weight-memory word (``cols`` with fc_columns)."""
        return self.cols if self.fc_columns else 1

    @property
    def multipliers(self):
        return self.rows * self.cols

    def with_(self, **changes):
        return replace(self, **changes)


CONFIGS = {
    # iCE40UP5K: an 8×2 array on all 8 SB_MAC16 (two 8×8 products per block), its operands
    # broadcast (no pipeline registers between PEs). 4 SPRAMs give one 64-bit word (8
    # weights) per cycle, which bounds FC layers to one column. The requantiser's 27×8-bit
    # product is in logic cells at half rate (requant_interval 2), nearly free while a
    # tile has at least 2 × its results in beats: LeNet-5's C1 (6 channels × 2 pixels, 25
    # beats) needs compact_drain for that. The design fills the UP5K (logic cells and all
    # 30 EBR); its Fmax sets the clock, 30 MHz, at which the FT2232H's 6 Mbaud is 5 clocks
    # per bit. README ("Build", "Throughput") has the measured cells, Fmax and cycles per
    # image. The 4 KB of activation block RAM (a copy per column) is too small for a
    # 3x32x32 input: the top 60 KB of the SPRAM are the activation window (copies,
    # bands), and the program holds 32 descriptors.
    "icebreaker": AcceleratorConfig(
        name="icebreaker", rows=8, cols=2, max_reduction=1024,
        weight_words=16384, act_bytes=4096, qparam_entries=256, max_layers=32,
        clock_hz=30_000_000, ice40=True,
        dataflow=Dataflow.BROADCAST, requant_interval=2, compact_drain=True,
        rx_fifo_bytes=2048, watchdog_log2=24, act_window=True),
    # ECP5-85F: 156 18×18 multipliers and 3.7 Mbit of EBR; a 16×8 array. 28 KB of
    # activations (one copy per array column: 224 KB of EBR, with the 128 KB weight
    # memory most of the block RAM) hold a 3×32×32 input's two slots and the 64×16×16
    # output of 64 3×3 filters with pool 2/2, or 32×32×10 after 10 5×5 filters. Layers
    # with few output channels (LeNet-5's C1: 6 of 16 rows, 25-beat tiles) are bound by
    # the tiles' results, so tiles drain only the PEs they use, four rows a cycle
    # (result_lanes; eight with shared_qparams cut C1 further but missed 60 MHz:
    # README); fully connected layers put a k-block on each column (fc_columns,
    # which needs the broadcast dataflow), 8× fewer beats; C1 pairs its pixels
    # (pixel_pairs: two pixels a column on 12 of 16 rows) and the array queues its
    # results so such tiles overlap their drains (overlap_drain); the sequencer reads
    # the next descriptor while a layer runs (prefetch_descriptors). 60 MHz divides into
    # the 3 Mbaud UART exactly (20 clocks per bit). README ("Build", "Throughput") has the
    # measured Fmax and cycles per image.
    "ulx3s-85f": AcceleratorConfig(
        name="ulx3s-85f", rows=16, cols=8, max_reduction=4096,
        weight_words=8192, act_bytes=28672, qparam_entries=1024, max_layers=16,
        clock_hz=60_000_000, ice40=False, dataflow=Dataflow.BROADCAST, fc_columns=True,
        pool_width=64, pool_blocks=4, rx_fifo_bytes=8192, compact_drain=True,
        wrap_rows=True, result_lanes=4, pixel_pairs=True, overlap_drain=True,
        prefetch_descriptors=True, write_banks=2),
}


def get_config(name):
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown board/config {name!r}; choose one of "
                         f"{', '.join(CONFIGS)}") from None


def _align8(n):
    return -(-n // 8) * 8


@dataclass(frozen=True)
class StageShape:
    """What one pipeline stage is built for.

    Attributes
    ----------
    config : AcceleratorConfig
        The stage's array and memories: ``rows``, ``cols``, the datapath options, and
        ``weight_words``, ``qparam_entries``, ``max_layers`` for its memories (its
        ``act_bytes`` is replaced by :attr:`act_bytes`). One write bank, no window.
    slot_bytes : int
        One input slot: the stage's input map (a multiple of 8).
    work_bytes : int
        The maps of the stage's inner layers (0 for a stage of one layer).
    mac : str
        The array's multiplier blocks (:func:`~.systolic.resolve_mac`): ``"logic"`` for
        a stage beyond the device's DSP blocks.
    """
    config: AcceleratorConfig
    slot_bytes: int
    work_bytes: int = 0
    mac: str = "registered"

    def __post_init__(self):
        cfg = self.config
        if not isinstance(cfg, AcceleratorConfig):
            raise TypeError(f"a stage needs an AcceleratorConfig, not {cfg!r}")
        if cfg.write_banks != 1 or cfg.act_window or cfg.ice40:
            raise ValueError(f"stage {cfg.name}: a pipeline stage needs one write bank, no "
                             f"act_window and no ice40")
        if type(self.slot_bytes) is not int or self.slot_bytes < 8 or self.slot_bytes % 8:
            raise ValueError(f"stage {cfg.name}: slot_bytes must be a positive multiple "
                             f"of 8, not {self.slot_bytes!r}")
        if type(self.work_bytes) is not int or self.work_bytes < 0 or self.work_bytes % 8:
            raise ValueError(f"stage {cfg.name}: work_bytes must be a multiple of 8, not "
                             f"{self.work_bytes!r}")
        if self.act_bytes > ACT_SPACE:
            raise ValueError(f"stage {cfg.name}: two {self.slot_bytes}-byte input slots and "
                             f"{self.work_bytes} bytes of work memory need "
                             f"{self.act_bytes} activation addresses, more than the "
                             f"descriptors' {ACT_SPACE}")

    @property
    def work_base(self):
        """First address of the work memory: a power of two above both input slots."""
        need = max(2 * self.slot_bytes, self.work_bytes, 8)
        return 1 << (need - 1).bit_length()

    @property
    def act_bytes(self):
        """The stage's activation address space (input slots, then the work memory)."""
        return 2 * self.work_base if self.work_bytes else self.work_base

    @property
    def datapath_config(self):
        return self.config.with_(act_bytes=self.act_bytes)

    @property
    def weight_chunks(self):
        """Host chunks the weight memory takes (``weight_words`` words of ``rows``)."""
        return self.config.weight_words * self.config.rows // 8

    @property
    def program_chunks(self):
        return self.config.max_layers * DESCRIPTOR_WORDS


@dataclass(frozen=True)
class PipelineShape:
    """The stages and the output map of a pipeline; where the host writes each stage.

    The host's chunk addresses (:class:`~.program.WriteCommand`) put the stages' memories
    one after the other in each space: stage ``s``'s weight chunk ``a`` is chunk
    ``weight_base[s] + a`` of ``WEIGHTS``, likewise ``QPARAMS`` (:attr:`qparam_base`) and
    ``PROGRAM`` (:attr:`program_base`); ``IMAGE`` chunk ``a`` is bytes ``8a … 8a + 7``
    of stage 0's input buffer (slot ``k`` at byte ``k * slot_bytes``).
    """
    stages: tuple
    output_bytes: int

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages or not all(isinstance(s, StageShape) for s in self.stages):
            raise TypeError("a pipeline needs one or more StageShape")
        if type(self.output_bytes) is not int or self.output_bytes < 1:
            raise ValueError(f"output_bytes must be a positive integer, not "
                             f"{self.output_bytes!r}")
        for space, sizes in (("WEIGHTS", [s.weight_chunks for s in self.stages]),
                             ("QPARAMS", [s.config.qparam_entries for s in self.stages]),
                             ("PROGRAM", [s.program_chunks for s in self.stages])):
            if sum(sizes) > 1 << 16:
                raise ValueError(f"the stages' {space} memories take {sum(sizes)} chunks, "
                                 f"more than the 16-bit chunk address reaches")
        if 2 * self.stages[0].slot_bytes // 8 > 1 << 16:
            raise ValueError("stage 0's input slots exceed the 16-bit IMAGE chunk address")

    @staticmethod
    def _bases(sizes):
        out, at = [], 0
        for n in sizes:
            out.append(at)
            at += n
        return tuple(out)

    @property
    def weight_base(self):
        return self._bases(s.weight_chunks for s in self.stages)

    @property
    def qparam_base(self):
        return self._bases(s.config.qparam_entries for s in self.stages)

    @property
    def program_base(self):
        return self._bases(s.program_chunks for s in self.stages)

    @property
    def output_slot_bytes(self):
        return _align8(self.output_bytes)

    @property
    def multipliers(self):
        return sum(s.config.multipliers for s in self.stages)


def _ulx3s_stage(name, **sizes):
    """A stage of a ULX3S-85F layer pipeline: the board's clock and datapath options,
    one write bank, its own array shape and memory sizes."""
    return CONFIGS["ulx3s-85f"].with_(name=name, pixel_pairs=False, write_banks=1,
                                      shared_qparams=False, **sizes)


@dataclass(frozen=True)
class PipelineSpec:
    """A layer pipeline (``hw/pipeline.py``) a board can be built with instead of its
    core.

    Attributes
    ----------
    board : str
        The board's :data:`CONFIGS` name (clock, link).
    network : str
        The network whose layer shapes it is built for (``fpgacnn.sw.network``'s
        function of that name); any weights of those shapes run on it
        (``fpgacnn.sw.pipeline.compile_pipeline`` checks a network against ``shape``).
    groups : tuple of int
        Compute layers per stage, in order.
    shape : PipelineShape
        The stages (array, memories, multiplier blocks, slot and work bytes) and the
        output map's bytes.
    """
    board: str
    network: str
    groups: tuple
    shape: PipelineShape


#: Layer pipelines by name (at most MAX_NAME_CHARS: the board reports it). On the
#: ULX3S-85F, LeNet-5's C1 (6 channels, 784 pixels) runs on 8×8, C3 (16 channels, 100
#: pixels) on 16×6 and the three fully connected layers on 8×4 with a k-block per column:
#: each stage takes about the same time per image. 192 array multipliers and 8 in the
#: requantisers are more than the 156 MULT18X18D, so C1's 64 are in logic. Slots: the
#: 1×28×28 image, C1's pooled 6×14×14 map, C3's 16×5×5; the FC stage's work memory
#: holds F5's 120 outputs and F6's 84 (at 120); 10 logits.
PIPELINES = {
    "ulx3s-85f-lenet5": PipelineSpec("ulx3s-85f", "lenet5", (1, 1, 3), PipelineShape((
        StageShape(_ulx3s_stage("lenet5-c1", rows=8, cols=8, result_lanes=2,
                                fc_columns=False, weight_words=32, qparam_entries=8,
                                max_layers=1, max_reduction=32, pool_width=28,
                                pool_blocks=1), 784, 0, "logic"),
        StageShape(_ulx3s_stage("lenet5-c3", rows=16, cols=6, result_lanes=1,
                                fc_columns=False, weight_words=256, qparam_entries=16,
                                max_layers=1, max_reduction=160, pool_width=10,
                                pool_blocks=1), 1176),
        StageShape(_ulx3s_stage("lenet5-fc", rows=8, cols=4, result_lanes=1,
                                fc_columns=True, weight_words=8192, qparam_entries=256,
                                max_layers=4, max_reduction=512, pool_width=3,
                                pool_blocks=1), 400, 208),
    ), 10)),
}


def get_pipeline(name):
    try:
        return PIPELINES[name]
    except KeyError:
        raise ValueError(f"unknown pipeline {name!r}; choose one of "
                         f"{', '.join(PIPELINES)}") from None
