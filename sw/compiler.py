"""Host-side compiler: network + quantised parameters + board config → a loadable program.

The result (:class:`CompiledProgram`) holds everything the board needs, in the formats of
``docs/architecture.md`` and :mod:`fpgacnn.hw.program`:

* one :class:`~fpgacnn.hw.program.LayerDescriptor` per stage (dicts and encoded chunks);
* the weight words: word ``w_base + kb*D + d`` holds ``W[kb*R + r, d]`` at byte ``r``
  (zero for rows ``>= K``), ``R = config.rows``; a stage in column mode
  (``config.fc_columns``, :func:`~fpgacnn.hw.program.column_mode`) starts at a multiple of
  ``C = config.cols`` and holds ``W[(kg*C + c)*R + r, d]`` in word ``w_base + (kg*D + d)*C + c``, so one
  memory word of ``C`` such words feeds every column; a stage with pixel pairs
  (``config.pixel_pairs``, :func:`pixel_pairs`) holds :func:`paired_weights`;
* one :class:`~fpgacnn.hw.program.QParam` (bias, M, S) per output channel;
* a memory plan of the activation memory: two ping-pong buffers for the stage outputs
  (the last stage's output, the network's result, at address 0, where RESULT reads it)
  and two image slots (the input is double-buffered, the host may load one slot while
  the board computes from the other), every map in CHW layout.

With ``config.act_window``, a network whose maps do not fit the block RAM that way (or
that pools more k-blocks than the line buffer holds) gets a *streamed* plan instead
(:mod:`.stream`): maps in the activation window, stages run as bands and channel groups,
:class:`~fpgacnn.hw.program.CopyDescriptor` s moving rows between the window and the
block RAM; then several descriptors belong to a stage
(:attr:`CompiledProgram.descriptor_stages`) and the result is at
:attr:`CompiledProgram.output_base`. Whenever the block-RAM plan fits, it is the one used.

Everything that does not fit the board is rejected here, before a byte is sent, by a
:class:`CompileError` that names the layer and the sizes.

The link streams :meth:`CompiledProgram.model_writes` (64-bit chunks per
:class:`~fpgacnn.hw.program.Space`) once, then per image :meth:`CompiledProgram.image_writes`
followed by a START with :meth:`CompiledProgram.image_base`.
"""

from dataclasses import dataclass, replace

import numpy as np

from ..hw import program as prog
from ..hw.config import AcceleratorConfig
from ..hw.protocol import CHUNK_BYTES

__all__ = ["CompileError", "MemoryPlan", "CompiledProgram", "compile_network",
           "plan_activations", "tap_program", "pixel_pairs", "paired_weights",
           "stage_reduction", "POOL_KERNELS", "POOL_STRIDES", "CHUNK_BYTES",
           "ideal_cycles"]

#: Max-pool windows the gateware supports: kernel × kernel at stride, with
#: ``stride <= kernel <= stride + 1`` (one line buffer): 2/1, 2/2, 3/2.
POOL_KERNELS = (2, 3)
POOL_STRIDES = (1, 2)


class CompileError(ValueError):
    """A network that does not fit the accelerator configuration (message says why)."""


def _align(n):
    return -(-n // CHUNK_BYTES) * CHUNK_BYTES


_DESC_WIDTHS = prog.field_widths(prog.LayerDescriptor)


def _describe(stage):
    if stage.kind == "conv":
        what = f"conv {stage.out_channels}@{stage.kernel}x{stage.kernel}"
    else:
        what = f"fc {stage.in_shape[0]}->{stage.out_channels}"
    return f"layer {stage.index} ({what})"


@dataclass(frozen=True)
class MemoryPlan:
    """Byte addresses in the activation memory (all maps CHW, 8-byte aligned).

    Layout: ping-pong buffer A at address 0, buffer B, then the two image slots. The
    stages alternate so that the last one writes buffer A: the network's output map
    starts at address 0, where RESULT reads it (``ReadSpace.LOGITS``), and stays there
    until the next RUN (the image slots are elsewhere, so the next image may arrive).

    Attributes
    ----------
    image_slots : tuple of int
        Base of the two input slots; the START command selects one.
    image_bytes : int
        Size of one input image.
    buffers : tuple of int
        Bases of ping-pong buffers A and B; stage ``i`` of ``n`` writes
        ``buffers[(n - 1 - i) % 2]`` and reads the other one (the first stage reads
        its image slot).
    buffer_bytes : tuple of int
        Space reserved for each buffer (the largest map written there).
    used_bytes : int
        End of the last region.
    """
    image_slots: tuple
    image_bytes: int
    buffers: tuple
    buffer_bytes: tuple
    used_bytes: int

    @property
    def output_base(self):
        """Byte address of the last stage's output map (always 0, see above)."""
        return self.buffers[0]


def ideal_cycles(stage, config, *, pairs=False):
    """Operand beats the array needs for ``stage``: its tiles times ``D``
    (:func:`~fpgacnn.hw.program.array_tiles`; in column mode ``out_h·ceil(k_blocks/cols)``
    tiles; with ``pairs``, pixel pairs (:func:`pixel_pairs`), half the tiles of a wider
    kernel's ``D``)."""
    _, h, w = stage.conv_shape
    k_blocks = -(-stage.out_channels // config.rows)
    lanes = _lanes(stage, config)
    if lanes > 1:
        return h * -(-k_blocks // lanes) * stage.reduction
    return prog.array_tiles(config.cols, h, w, k_blocks, wrap_rows=config.wrap_rows,
                            pixel_pairs=pairs) * stage_reduction(stage, pairs)


def pixel_pairs(stages, config):
    """Which of a network's ``stages`` run with ``pixel_pairs``
    (:class:`~fpgacnn.hw.program.LayerDescriptor`) on ``config``: a list of bools.

    A stage pairs its pixels if the board has pixel pairs, the stage fits them
    (:func:`~fpgacnn.hw.program.pixel_pairs_fit`) and they make it faster by this
    estimate: a tile takes ``max(D, drained beats + 4)`` cycles (its operand beats, or
    its results when the drain is the bound: ``cols`` columns of the rows it uses, all
    ``rows`` with pairs, ``result_lanes`` a beat; ``+ 1`` with ``overlap_drain``), and
    a layer at least one cycle per byte it writes (the one write port). So pairs pay
    where a layer has few channels, short tiles and a pool, as LeNet-5's C1 (6 channels,
    5×5, pool 2/2). With ``write_banks`` the lanes write up to that many bytes a cycle.
    Paired weights take ``cin·F·S`` more words; if the network's weights
    would then not fit the weight memory, no stage pairs.
    """
    paying = [_pairs_pay(stage, config) for stage in stages]
    if any(paying) and _weight_words_used(stages, config, paying) > config.weight_words:
        return [False] * len(stages)
    return paying


def _pairs_pay(stage, config):
    """Whether pixel pairs would run ``stage`` faster on ``config`` (see :func:`pixel_pairs`)."""
    if not config.pixel_pairs:
        return False
    k, h, w = stage.conv_shape
    k_blocks = -(-k // config.rows)
    if not prog.pixel_pairs_fit(config.rows, k, w, k_blocks):
        return False
    # The lanes' bytes leave through up to write_banks ports a cycle.
    writes = -(-int(np.prod(stage.out_shape)) // min(config.write_banks, config.result_lanes))

    def cycles(pairs, rows_used):
        tiles = prog.array_tiles(config.cols, h, w, k_blocks, wrap_rows=config.wrap_rows,
                                 pixel_pairs=pairs)
        drain = (config.cols * -(-rows_used // config.result_lanes) +
                 (1 if config.overlap_drain else 4))
        return max(tiles * max(stage_reduction(stage, pairs), drain), writes)
    return cycles(True, config.rows) < cycles(False, k)


def stage_reduction(stage, pairs):
    """``D`` of ``stage``'s descriptor (weight words per k-block, beats per tile):
    ``cin*F*F``, or with ``pairs`` (pixel pairs) ``cin*F*(F + stride)``."""
    c, f, s = stage.in_shape[0], stage.kernel, stage.stride
    return c * prog.paired_walk(f, s, 0, pairs)[0] * f


def weight_placement(stages, config, pairs=None):
    """The weight memory's layout, stage by stage: yields ``(pad, w_base, k_blocks)``,
    the zero words before the stage, its first word and its k-blocks (``k_blocks * D``
    words, ``D`` with the stage's pixel pairs: ``pairs``, by default
    :func:`pixel_pairs`). Column mode (:func:`_lanes` > 1) rounds the k-blocks up to a
    multiple of ``cols`` and starts at a multiple of ``cols`` words (it reads whole
    memory words)."""
    if pairs is None:
        pairs = pixel_pairs(stages, config)
    w_base = 0
    for stage, paired in zip(stages, pairs):
        lanes = _lanes(stage, config)
        pad = -w_base % lanes
        w_base += pad
        k_blocks = -(-stage.out_channels // (config.rows * lanes)) * lanes
        yield pad, w_base, k_blocks
        w_base += k_blocks * stage_reduction(stage, paired)


def _weight_words_used(stages, config, pairs):
    """Weight words ``stages`` take with ``pairs`` (:func:`weight_placement`)."""
    end = 0
    for stage, paired, (_, w_base, k_blocks) in zip(
            stages, pairs, weight_placement(stages, config, pairs)):
        end = w_base + k_blocks * stage_reduction(stage, paired)
    return end


def _lanes(stage, config):
    """k-blocks side by side in the array for ``stage``: ``cols`` in column mode, else 1."""
    k_blocks = -(-stage.out_channels // config.rows)
    return config.cols if prog.column_mode(config.cols, stage.conv_shape[2], k_blocks,
                                           fc_columns=config.fc_columns) else 1


@dataclass
class CompiledProgram:
    """A network compiled for one :class:`AcceleratorConfig` (see module docstring).

    Attributes
    ----------
    network, config, stages
        What was compiled, for what.
    descriptors : list of dict
        Field values of each :class:`~fpgacnn.hw.program.LayerDescriptor`.
    weight_words : ndarray of int8, shape (n_words, rows)
    qparams : list of dict
        Field values of each :class:`~fpgacnn.hw.program.QParam` (by index ``q_base + k``).
    plan : MemoryPlan or stream.StreamPlan
        The activation plan: all maps in the block RAM (:class:`MemoryPlan`), or a
        streamed plan (:class:`~fpgacnn.sw.stream.StreamPlan`, ``config.act_window``).
    descriptor_stages : list of int
        The stage each descriptor belongs to (one each in a :class:`MemoryPlan`; bands,
        channel groups and copies in a streamed plan).
    """
    network: object
    config: AcceleratorConfig
    stages: list
    descriptors: list
    weight_words: np.ndarray
    qparams: list
    plan: object
    descriptor_stages: list = None

    def __post_init__(self):
        if self.descriptor_stages is None:
            self.descriptor_stages = list(range(len(self.descriptors)))

    @property
    def output_count(self):
        """Values of the last stage's output map (``K·H·W``), at :attr:`output_base`."""
        return int(np.prod(self.stages[-1].out_shape))

    @property
    def output_base(self):
        """Activation address of the result (the last descriptor's output map base)."""
        return self.plan.output_base

    @property
    def streamed(self):
        """The plan uses copies (maps in the window or bands through the block RAM)."""
        return not isinstance(self.plan, MemoryPlan)

    def encoded_descriptors(self):
        """Each descriptor as one integer (``LayerDescriptor`` or ``CopyDescriptor``
        bit positions)."""
        return [prog.encode_struct(prog.CopyDescriptor if d.get("copy") else
                                   prog.LayerDescriptor, d) for d in self.descriptors]

    def descriptor_cycles(self):
        """Ideal cycles of each descriptor: a layer's array beats, a copy's bytes."""
        from .executor import descriptor_cycles
        return [descriptor_cycles(d, self.config) for d in self.descriptors]

    def copy_bytes(self):
        """Bytes the copy descriptors move per image (one cycle each)."""
        return sum(d["segments"] * d["length"] for d in self.descriptors if d.get("copy"))

    def model_writes(self):
        """Chunk writes that load the model: ``{Space: [(addr, data64), ...]}``.

        Addresses count 64-bit chunks and ascend without gaps within each space, so a link
        may send each space as one burst. Images are separate (:meth:`image_writes`).
        """
        mask = (1 << prog.CHUNK_BITS) - 1
        parts = self.config.rows // 8
        weights = []
        packed = self.weight_words.view(np.uint8).reshape(len(self.weight_words), parts, 8)
        for word, chunks in enumerate(packed):
            for part, chunk in enumerate(chunks):
                weights.append((word * parts + part, int.from_bytes(chunk.tobytes(), "little")))
        qparams = [(k, prog.encode_struct(prog.QParam, q)) for k, q in enumerate(self.qparams)]
        program = []
        for i, value in enumerate(self.encoded_descriptors()):
            for j in range(prog.DESCRIPTOR_WORDS):
                program.append((i * prog.DESCRIPTOR_WORDS + j,
                                (value >> (j * prog.CHUNK_BITS)) & mask))
        return {prog.Space.WEIGHTS: weights, prog.Space.QPARAMS: qparams,
                prog.Space.PROGRAM: program}

    def check_image(self, image):
        """Return ``image`` as int8 (C, H, W) or raise :class:`CompileError`."""
        shape = tuple(self.network.input_shape)
        image = np.asarray(image)
        if image.dtype != np.int8:
            raise CompileError(f"{self.network.name} input must be int8, not {image.dtype} "
                               f"(convert pixels with mnist.image_to_int8)")
        if image.shape != shape:
            if image.size == int(np.prod(shape)) and image.ndim < 3:
                hint = f"; reshape it to {shape}"
            else:
                hint = ""
            raise CompileError(f"{self.network.name} expects an input of shape {shape} "
                               f"(C, H, W), got {image.shape}{hint}")
        return image

    def image_base(self, slot):
        """Byte address of image slot ``slot`` (0 or 1): the START command's argument."""
        if slot not in (0, 1):
            raise ValueError(f"image slot must be 0 or 1, not {slot!r}")
        return self.plan.image_slots[slot]

    def image_writes(self, image, slot):
        """IMAGE-space chunk writes ``[(addr, data64), ...]`` that load ``image`` into ``slot``."""
        raw = self.check_image(image).tobytes()
        raw += bytes(_align(len(raw)) - len(raw))
        first = self.image_base(slot) // CHUNK_BYTES
        return [(first + i, int.from_bytes(raw[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES], "little"))
                for i in range(len(raw) // CHUNK_BYTES)]

    def ideal_cycles(self):
        """Per stage, the array's operand beats plus the bytes its copies move (a lower
        bound of the run time; without copies :func:`ideal_cycles` of each stage)."""
        out = [0] * len(self.stages)
        for stage, cycles in zip(self.descriptor_stages, self.descriptor_cycles()):
            out[stage] += cycles
        return out


def _buffer(stage, stages):
    """Ping-pong buffer (0 = A, 1 = B) that ``stage`` writes: the last stage writes A."""
    return (len(stages) - 1 - stage.index) % 2


def plan_activations(network, stages, config=None):
    """The :class:`MemoryPlan` of ``network``; with ``config``, raise :class:`CompileError`
    if it exceeds ``config.act_bytes`` (the message lists every region's size)."""
    image_bytes = int(np.prod(network.input_shape))
    slot = _align(image_bytes)
    sizes = [0, 0]
    for s in stages:
        sizes[_buffer(s, stages)] = max(sizes[_buffer(s, stages)],
                                        _align(int(np.prod(s.out_shape))))
    buffers = (0, sizes[0])
    slots = (sizes[0] + sizes[1], sizes[0] + sizes[1] + slot)
    used = slots[1] + slot
    if config is not None and used > config.act_bytes:
        who = ", ".join(f"{_describe(s)} output {int(np.prod(s.out_shape))} B"
                        for s in stages)
        raise CompileError(
            f"{network.name} does not fit the {config.act_bytes}-byte activation memory of "
            f"{config.name} ({used - config.act_bytes} B missing): ping-pong buffers of "
            f"{sizes[0]} B and {sizes[1]} B + two image slots of {image_bytes} B = "
            f"{used} B ({who}); use a config with a larger act_bytes or a smaller network")
    return MemoryPlan(slots, image_bytes, buffers, tuple(sizes), used)


_COPY_WIDTHS = prog.field_widths(prog.CopyDescriptor)


def _check_field(stage, name, value, widths=_DESC_WIDTHS):
    width = widths[name]
    if not 0 <= value < 1 << width:
        raise CompileError(f"{_describe(stage)}: {name} = {value} does not fit the "
                           f"{width}-bit descriptor field (max {(1 << width) - 1})")


def _check_stage(stage, config, *, groups=False):
    """Reject a stage the units cannot run: reduction beyond the accumulator, a pooling
    window or line buffer the max-pool unit does not have (``groups``: the stage runs in
    channel groups of at most ``pool_blocks`` k-blocks, only the width counts)."""
    where = _describe(stage)
    if stage.reduction > config.max_reduction:
        raise CompileError(f"{where}: reduction C*F*F = {stage.reduction} exceeds "
                           f"max_reduction {config.max_reduction} of {config.name} (the "
                           f"accumulator width is sized for it)")
    if stage.pool is None:
        return
    pk, ps = stage.pool
    if pk not in POOL_KERNELS or ps not in POOL_STRIDES or not ps <= pk <= ps + 1:
        raise CompileError(f"{where}: max-pool {pk}x{pk} stride {ps} is not supported; "
                           f"kernels {POOL_KERNELS}, strides {POOL_STRIDES}, "
                           f"stride <= kernel <= stride + 1 (2/1, 2/2, 3/2)")
    k_blocks = -(-stage.out_channels // config.rows)
    width = stage.conv_shape[2]
    if width > config.pool_width or (k_blocks > config.pool_blocks and not groups):
        raise CompileError(f"{where}: max-pool over {width} columns × {k_blocks} "
                           f"k-blocks exceeds the line buffer of {config.name} "
                           f"({config.pool_width} columns × {config.pool_blocks} "
                           f"k-blocks of {config.rows} channels)")


def _check_capacity(stage, config, w_base, q_base, k_blocks, reduction):
    """Raises if ``stage``'s ``k_blocks`` weight blocks of ``reduction`` words or its
    qparams, placed after the earlier stages' (at ``w_base``, ``q_base``), overflow the
    memories."""
    where = _describe(stage)
    n_words = k_blocks * reduction
    if w_base + n_words > config.weight_words:
        raise CompileError(f"{where}: needs {n_words} weight words ({k_blocks} k-blocks × "
                           f"D = {reduction}), {w_base + n_words} in total, but the "
                           f"weight memory of {config.name} holds {config.weight_words} "
                           f"words of {config.rows} weights")
    k = stage.out_channels
    if q_base + k > config.qparam_entries:
        raise CompileError(f"{where}: needs {k} qparam entries, {q_base + k} in total, "
                           f"but {config.name} holds {config.qparam_entries}")


def _descriptor(stage, plan, config, *, final, out_buffer, w_base, q_base, pairs):
    """The LayerDescriptor fields of ``stage`` on ``config`` (each checked against its
    field width); it writes ping-pong buffer ``out_buffer`` of ``plan``, with pixel
    pairs if ``pairs``."""
    rows = config.rows
    first = stage.index == 0
    c, in_h, in_w = stage.in_shape
    k, out_h, out_w = stage.conv_shape
    _, pool_h, pool_w = stage.out_shape
    desc = dict(
        relu=int(stage.relu), pool_en=int(stage.pool is not None),
        in_from_image=int(first), to_logits=int(final), copy=0,
        cin=c, in_h=in_h, in_w=in_w, kernel=stage.kernel, stride=stage.stride,
        pad=stage.pad, pad_top=stage.pad, out_h=out_h, out_w=out_w, out_channels=k,
        k_blocks=-(-k // rows), reduction=stage_reduction(stage, pairs),
        pool_kernel=stage.pool[0] if stage.pool else 0,
        pool_stride=stage.pool[1] if stage.pool else 0,
        pool_h=pool_h, pool_w=pool_w,
        in_base=plan.image_slots[0] if first else plan.buffers[1 - out_buffer],
        out_base=plan.buffers[out_buffer],
        w_base=w_base, q_base=q_base, pixel_pairs=int(pairs))
    for name, value in desc.items():
        _check_field(stage, name, value)
    return desc


def _weight_words(stage, p, config, pairs):
    """``stage``'s weight words on ``config``: word ``kb*D + d``, byte ``r`` = ``W[kb*R +
    r, d]``; with ``lanes`` k-blocks side by side (column mode), word ``(kg*D + d)*lanes +
    c`` holds k-block ``kg*lanes + c``; with ``pairs`` (pixel pairs)
    :func:`paired_weights`."""
    rows, lanes = config.rows, _lanes(stage, config)
    if pairs:
        return paired_weights(np.asarray(p.weight), rows, stage.stride)
    k, d_red = stage.out_channels, stage.reduction
    groups = -(-k // (rows * lanes))
    wmat = np.zeros((groups * lanes * rows, d_red), dtype=np.int8)
    wmat[:k] = np.asarray(p.weight).reshape(k, d_red)
    return wmat.reshape(groups, lanes, rows, d_red).transpose(0, 3, 1, 2).reshape(-1, rows)


def paired_weights(weight, rows, stride):
    """The weight words of a ``pixel_pairs`` layer (:class:`~fpgacnn.hw.program.
    LayerDescriptor`), shape ``(cin*F*(F + stride), rows)``: word ``d = (c, fy, fx)``
    holds ``weight[k, c, fy, fx]`` on row ``k`` and ``weight[k, c, fy, fx - stride]`` on
    row ``rows/2 + k``, zero outside the ``(K, cin, F, F)`` kernel."""
    k, c, f, _ = weight.shape
    half = rows // 2
    wide = np.zeros((rows, c, f, f + stride), np.int8)
    wide[:k, :, :, :f] = weight
    wide[half:half + k, :, :, stride:] = weight
    return np.ascontiguousarray(wide.reshape(rows, -1).T)


def _check_bias(stage, p, config):
    """Reject a bias the requantiser's ``config.bias_width``-bit adder cannot hold."""
    bias_limit = 1 << (config.bias_width - 1)
    worst = int(np.abs(np.asarray(p.bias, dtype=np.int64)).max(initial=0))
    if worst >= bias_limit:
        raise CompileError(f"{_describe(stage)}: a bias of magnitude {worst} does not fit "
                           f"the {config.bias_width}-bit bias of {config.name}'s "
                           f"requantiser (|bias| < {bias_limit}); the quantiser's biases are "
                           f"normally far smaller — check the scales of this layer")


def compile_network(network, params, config):
    """Compile ``network`` with quantised ``params`` for ``config``.

    Parameters
    ----------
    network : network.Network
    params : list of network.QuantParams
        One per stage, as from training or ``network.random_params``.
    config : AcceleratorConfig

    Returns
    -------
    CompiledProgram

    Raises
    ------
    CompileError
        If anything exceeds the board: weight, activation, qparam or program
        capacity, a reduction above ``max_reduction``, a descriptor field overflow, or an
        unsupported pooling window. The message names the layer and the sizes.
    ValueError
        For parameters that do not match the network (shapes, dtypes, M/S ranges).
    """
    stages = network.stages()
    if len(params) != len(stages):
        raise ValueError(f"{network.name} has {len(stages)} stages, got {len(params)} "
                         f"parameter sets")
    for stage, p in zip(stages, params):
        p.check(stage)
    if len(stages) > config.max_layers:
        raise CompileError(f"{network.name} has {len(stages)} layers but the program memory "
                           f"of {config.name} holds {config.max_layers} descriptors")
    if config.act_window and not _fits_block_ram(network, stages, config):
        return _compile_streamed(network, params, config, stages)
    plan = plan_activations(network, stages, config)
    descriptors = []

    def describe(stage, w_base, q_base, pairs):
        descriptors.append(_descriptor(stage, plan, config, final=stage is stages[-1],
                                       out_buffer=_buffer(stage, stages), w_base=w_base,
                                       q_base=q_base, pairs=pairs))
    _, weight_words, qparams = _place_parameters(stages, params, config, describe)
    base_bits = prog.field_widths(prog.StartCommand)["image_base"]
    if plan.image_slots[1] >> base_bits:
        raise CompileError(f"{network.name}: image slot 1 at byte {plan.image_slots[1]} does "
                           f"not fit the {base_bits}-bit image base of the START command "
                           f"(the activation memory is addressed up to {1 << base_bits} B)")
    return CompiledProgram(network, config, stages, descriptors, weight_words, qparams, plan)


def _fits_block_ram(network, stages, config):
    """Today's plan fits: every map in the block RAM, every pooled stage in one layer,
    every map's rows in a descriptor (taller ones run in bands)."""
    if plan_activations(network, stages).used_bytes > config.act_bytes:
        return False
    if any(s.in_shape[1] >> _DESC_WIDTHS["in_h"] or s.conv_shape[1] >> _DESC_WIDTHS["out_h"]
           for s in stages):
        return False
    return all(-(-s.out_channels // config.rows) <= config.pool_blocks
               for s in stages if s.pool is not None)


def _place_parameters(stages, params, config, describe=None, *, groups=False):
    """Check every stage and lay out its weights and qparams after the earlier stages'
    (``describe(stage, w_base, q_base, pairs)``, if given, is called once a stage's place
    and pixel pairs (:func:`pixel_pairs`) are known, before its bias is checked).

    Returns
    -------
    bases : list of (int, int)
        ``(w_base, q_base)`` of each stage.
    weight_words : ndarray of int8, shape (n_words, rows)
    qparams : list of dict
    """
    rows = config.rows
    bases, words, qparams = [], [], []
    pairs = pixel_pairs(stages, config)
    for stage, p, paired, (pad, w_base, k_blocks) in zip(
            stages, params, pairs, weight_placement(stages, config, pairs)):
        _check_stage(stage, config, groups=groups)
        if pad:
            words.append(np.zeros((pad, rows), np.int8))
        _check_capacity(stage, config, w_base, len(qparams), k_blocks,
                        stage_reduction(stage, paired))
        bases.append((w_base, len(qparams)))
        if describe is not None:
            describe(stage, w_base, len(qparams), paired)
        words.append(_weight_words(stage, p, config, paired))
        _check_bias(stage, p, config)
        for ch in range(stage.out_channels):
            qparams.append(dict(bias=int(p.bias[ch]), m=int(p.m[ch]), s=int(p.s[ch]), _pad=0))
    weight_words = np.ascontiguousarray(np.concatenate(words)) if words else \
        np.zeros((0, rows), np.int8)
    return bases, weight_words, qparams


def _compile_streamed(network, params, config, stages):
    """:func:`compile_network` with a streamed plan (:mod:`.stream`): maps in the
    activation window, stages in bands and channel groups with copy descriptors."""
    from . import stream
    # Streamed descriptors (stream.stage_descriptors) never pair pixels: the weights
    # must not either (the configuration keeps pixel_pairs and act_window apart).
    if any(pixel_pairs(stages, config)):
        raise CompileError(f"{network.name}: a streamed plan cannot run pixel pairs "
                           f"({config.name} has both pixel_pairs and act_window)")
    bases, weight_words, qparams = _place_parameters(stages, params, config, groups=True)
    outputs = int(np.prod(stages[-1].out_shape))
    if outputs > config.max_logits:
        raise CompileError(f"{_describe(stages[-1])}: its {outputs} outputs exceed the "
                           f"{config.max_logits} one RESULT of {config.name} returns (the "
                           f"response also carries 1 + max_layers counters)")
    try:
        plan = stream.plan_stream(network, stages, config)
    except stream.PlanError as e:
        raise CompileError(str(e)) from None
    descriptors, owners = [], []
    for stage, (w_base, q_base) in zip(stages, bases):
        for d in stream.stage_descriptors(stage, plan, config.rows, w_base=w_base,
                                          q_base=q_base):
            widths = _COPY_WIDTHS if d["copy"] else _DESC_WIDTHS
            for name, value in d.items():
                _check_field(stage, name, value, widths)
            descriptors.append(d)
            owners.append(stage.index)
    descriptors[-1]["to_logits"] = 1
    used = weight_words.size
    limit = config.window_weight_byte + plan.window_low - config.act_bytes
    if used > limit:
        raise CompileError(f"{network.name}: its weights take weight-memory bytes 0 to "
                           f"{used - 1}, but its maps in the activation window start at "
                           f"window address {plan.window_low} = weight byte {limit} of "
                           f"{config.name} ({used - limit} B too many)")
    return CompiledProgram(network, config, stages, descriptors, weight_words, qparams, plan,
                           owners)


def tap_program(program, index):
    """``program`` cut after stage ``index``: its output map is then the result.

    The weights and qparams stay where ``program`` put them (stages are laid out in
    order), so only the layer program (:attr:`~fpgacnn.hw.program.Space.PROGRAM`) needs
    rewriting on a board that has ``program`` loaded. A block-RAM plan is redone so
    that stage ``index`` writes address 0 (it never needs more memory than the whole); a
    streamed plan keeps its addresses and ends after the last descriptor of stage
    ``index`` (which writes the first byte of that stage's map: the result base).

    Raises
    ------
    ValueError
        If ``index`` is not a stage of ``program``.
    """
    n = len(program.stages)
    if not isinstance(index, (int, np.integer)) or not 0 <= index < n:
        raise ValueError(f"tap {index!r} is not a stage of {program.network.name}: "
                         f"choose 0 to {n - 1}")
    stages = program.stages[:index + 1]
    if program.streamed:
        keep = sum(1 for s in program.descriptor_stages if s <= index)
        descriptors = [dict(d, to_logits=int(i == keep - 1))
                       for i, d in enumerate(program.descriptors[:keep])]
        plan = replace(program.plan, maps=program.plan.maps[:index + 2],
                       choices=program.plan.choices[:index + 1],
                       buffers=program.plan.buffers[:index + 1])
        return replace(program, stages=stages, descriptors=descriptors, plan=plan,
                       descriptor_stages=program.descriptor_stages[:keep])
    plan = plan_activations(program.network, stages, program.config)
    descriptors = [_descriptor(s, plan, program.config, final=s is stages[-1],
                               out_buffer=_buffer(s, stages), w_base=d["w_base"],
                               q_base=d["q_base"], pairs=bool(d.get("pixel_pairs", 0)))
                   for s, d in zip(stages, program.descriptors)]
    return replace(program, stages=stages, descriptors=descriptors, plan=plan,
                   descriptor_stages=list(range(len(stages))))
