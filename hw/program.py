"""The layer program: descriptors the core's sequencer executes, and memory spaces.

This is part of the host↔board contract (like :mod:`.protocol`): the host compiler
(``fpgacnn.sw.compiler``) encodes these structs, the gateware decodes them. It also holds
the number formats (widths of activations, weights, biases, the requantisation ``M`` and
``S``) and the layer geometry rule, which the gateware and the host's golden model
(``fpgacnn.sw.golden``, the single source of the arithmetic) both import from here.
Pure definitions, no gateware.

A fully connected layer is a convolution whose kernel covers the flattened input:
``cin = D, in_h = in_w = kernel = 1``.
"""

from numbers import Integral

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Space", "ReadSpace", "LayerDescriptor", "CopyDescriptor", "QParam", "stored_qparam",
           "WriteCommand", "StartCommand", "ReadCommand", "ReadData", "HostInterface",
           "DESCRIPTOR_WORDS", "CHUNK_BITS", "encode_struct", "decode_struct", "field_widths",
           "ACT_BITS", "WEIGHT_BITS", "BIAS_BITS", "M_BITS", "S_MIN", "S_MAX", "S_BITS",
           "GeometryError", "conv_output_size", "pool_output_size", "wraps_rows",
           "column_mode", "pixel_pairs_fit", "paired_walk", "array_tiles"]

#: Host writes move 64-bit chunks.
CHUNK_BITS = 64


class Space(enum.Enum, shape=2):
    """Memory space of a host write (``addr`` counts 64-bit chunks in every space)."""
    WEIGHTS = 0   # weight memory; chunk a holds weights for rows 8*(a%n)..+7, n = rows/8
    QPARAMS = 1   # one QParam per chunk, indexed by output channel (q_base + k)
    PROGRAM = 2   # DESCRIPTOR_WORDS chunks per layer descriptor
    IMAGE = 3     # activation bytes 8*addr..+7 (block RAM or the window; image slots)


class ReadSpace(enum.Enum, shape=2):
    """What a host read returns (32-bit values)."""
    LOGITS = 0    # addr k: output k of the last run (activation byte out_base + k of its
    #               last descriptor), sign-extended
    COUNTERS = 1  # addr 0: cycles of the last run; addr 1+i: cycles of layer i
    IDENTITY = 2  # addr k: bytes 4k … 4k+3 of the board's protocol.Identity, LSB first


class LayerDescriptor(data.Struct):
    """One stage: Conv/FC → requant → ReLU? → max-pool?; first field = LSBs.

    The input map is ``cin × in_h × in_w`` (CHW at ``in_base``); output row ``y`` reads
    input rows ``y*stride + fy - pad_top`` and columns ``x*stride + fx - pad``, and any
    row or column outside the map reads as zero. A whole layer has ``pad_top = pad`` and
    ``out_h = (in_h - kernel + 2*pad)/stride + 1``; a horizontal band of a layer (the
    compiler's streamed plans, see :class:`CopyDescriptor`) holds only the input rows it
    needs, with ``pad_top`` the zero rows above them and ``out_h`` its own rows (rows
    beyond ``in_h`` are the zero rows below).

    The output map must not overlap the input map (a read that meets the write of the
    same byte returns an undefined value on the FPGA).

    ``pixel_pairs = 1`` (a board built with ``AcceleratorConfig.pixel_pairs``): array
    column ``j`` of a tile computes output pixels ``2j`` and ``2j + 1`` of the tile's
    pixels, the first on rows ``r < R/2`` and the second on rows ``r >= R/2``, both for
    channel ``r mod R/2`` (``R`` = rows). Both read one operand stream, a kernel
    ``stride`` columns wider than the layer's (:func:`paired_walk`): the weight word of
    ``d = (c, fy, fx)``, ``fx < kernel + stride``, holds ``W[k, c, fy, fx]`` on row ``k``
    and ``W[k, c, fy, fx - stride]`` on row ``R/2 + k`` (zero outside the kernel), and
    ``reduction = cin*kernel*(kernel + stride)``. The layer must satisfy
    :func:`pixel_pairs_fit`. Layers with few output channels use twice the rows.

    ``copy = 0``: with ``copy = 1`` the same bits are a :class:`CopyDescriptor`.
    """
    relu: 1
    pool_en: 1
    in_from_image: 1      # read the input from the image base given with START
    to_logits: 1          # last descriptor: stop after it (its output map is the result)
    copy: 1               # 0 here; 1: these bits are a CopyDescriptor
    cin: unsigned(12)
    in_h: unsigned(8)
    in_w: unsigned(8)
    kernel: unsigned(4)
    stride: unsigned(3)
    pad: unsigned(3)      # zero columns left (and right, up to in_w) of the input
    pad_top: unsigned(3)  # zero rows above the input (below: rows >= in_h)
    out_h: unsigned(8)    # convolution output (before pooling)
    out_w: unsigned(8)
    out_channels: unsigned(12)
    k_blocks: unsigned(8)     # ceil(out_channels / rows)
    reduction: unsigned(16)   # cin * kernel * kernel (pixel pairs: * (kernel + stride))
    pool_kernel: unsigned(3)
    pool_stride: unsigned(3)
    pool_h: unsigned(8)       # pooled output
    pool_w: unsigned(8)
    in_base: unsigned(16)     # activation byte address of the input map (C, H, W)
    out_base: unsigned(16)    # activation byte address of the output map (C, H, W)
    w_base: unsigned(16)      # weight word address of this layer's first weight word
    q_base: unsigned(12)      # QParam index of output channel 0
    pixel_pairs: 1            # each array column computes two pixels (pixel_pairs_fit)


def _field_offset(layout, name):
    return data.Layout.cast(layout)[name].offset


_SRC_OFFSET = _field_offset(LayerDescriptor, "in_base")
_DST_OFFSET = _field_offset(LayerDescriptor, "out_base")


class CopyDescriptor(data.Struct):
    """A copy between activation addresses: a 2-D block of bytes, one byte per cycle.

    ``for s in range(segments): for i in range(length):``
    ``act[dst_base + s*dst_stride + i] = act[src_base + s*src_stride + i]``
    (16-bit addresses, modulo the activation address space; with ``in_from_image`` the
    source base is START's image base instead of ``src_base``). Source and destination
    are each in the block RAM (address < ``act_bytes``) or in the activation window of
    the weight memory (``AcceleratorConfig.act_window``); a copy from the window into the
    window, or onto its own source, is not defined. A copy of zero bytes does nothing.

    Same size as :class:`LayerDescriptor`; the flags ``in_from_image``, ``to_logits`` and
    ``copy`` (= 1), and ``src_base``/``dst_base``, sit at the bit positions of the layer
    descriptor's flags and ``in_base``/``out_base``, so the sequencer reads them the same
    way for both kinds (the last descriptor's ``out_base``/``dst_base`` is where RESULT
    reads the output).
    """
    _unused_flags: 2
    in_from_image: 1
    to_logits: 1
    copy: 1
    segments: unsigned(12)
    length: unsigned(16)
    src_stride: unsigned(16)
    dst_stride: unsigned(16)
    _gap: unsigned(_SRC_OFFSET - 5 - 12 - 3 * 16)
    src_base: unsigned(16)
    dst_base: unsigned(16)
    _tail: unsigned(LayerDescriptor.as_shape().size - _DST_OFFSET - 16)


assert _field_offset(CopyDescriptor, "src_base") == _SRC_OFFSET
assert _field_offset(CopyDescriptor, "dst_base") == _DST_OFFSET
assert CopyDescriptor.as_shape().size == LayerDescriptor.as_shape().size
for _flag in ("in_from_image", "to_logits", "copy"):
    assert _field_offset(CopyDescriptor, _flag) == _field_offset(LayerDescriptor, _flag)


# ---- Number formats ---------------------------------------------------------------------
#: Activations and weights are two's complement integers of this many bits (int8).
ACT_BITS = WEIGHT_BITS = 8
#: A bias as a model file and a :class:`QParam` hold it (int32). The requantiser adds
#: ``bias_width <= BIAS_BITS`` bits of it (``AcceleratorConfig.bias_width``, as wide as the
#: accumulator); the compiler rejects a bias that does not fit that width.
BIAS_BITS = 32
#: Width of the unsigned requantisation multiplier: ``0 <= M < 2**M_BITS``. Eight bits, not
#: 16: the quantiser normalises M into ``[2**(M_BITS-1), 2**M_BITS)`` (relative error at
#: most ``2**-M_BITS``), enough for LeNet-5 to match its float accuracy (README has the
#: measurement), and half the width halves the requantiser's multiplier, which matters on
#: the iCE40UP5K whose DSP blocks all serve the systolic array.
M_BITS = 8
#: Range of the requantisation shift: ``S_MIN <= S <= S_MAX``, held in ``S_BITS`` bits.
S_MIN, S_MAX = 1, 63
S_BITS = S_MAX.bit_length()


class QParam(data.Struct):
    """Requantisation of one output channel (``fpgacnn.sw.golden.requantize``), one chunk."""
    bias: signed(BIAS_BITS)
    m: unsigned(M_BITS)
    s: unsigned(S_BITS)
    _pad: unsigned(CHUNK_BITS - BIAS_BITS - M_BITS - S_BITS)


def stored_qparam(bias_width):
    """A :class:`QParam` as the qparams memory holds it: the ``bias_width`` bias bits the
    requantiser adds (the compiler rejects a bias that does not fit them), M and S, no
    padding; on the iCEBreaker 40 bits (3 block RAMs) instead of a 64-bit chunk (4)."""
    return data.StructLayout({"bias": signed(bias_width), "m": unsigned(M_BITS),
                              "s": unsigned(S_BITS)})


# ---- Layer geometry -----------------------------------------------------------------------
class GeometryError(ValueError):
    """A layer geometry that does not produce an integer output size, or is empty."""


def conv_output_size(size, kernel, stride=1, pad=0):
    """Output size ``(size - kernel + 2*pad) / stride + 1`` of a convolution or pool.

    A descriptor's ``out_h``/``out_w`` (and ``pool_h``/``pool_w``) are exactly this; the
    address generator relies on it.

    Raises
    ------
    GeometryError
        If the division is not exact or the output would be empty; the message names
        the numbers, so the user can see which of ``W, F, S, P`` to change.
    """
    for name, value, low in (("input size", size, 1), ("kernel", kernel, 1),
                             ("stride", stride, 1), ("padding", pad, 0)):
        if not isinstance(value, Integral) or value < low:
            raise GeometryError(f"{name} must be an integer >= {low}, not {value!r}")
    span = size - kernel + 2 * pad
    if span < 0:
        raise GeometryError(
            f"kernel {kernel} does not fit in input {size} with padding {pad}: "
            f"W - F + 2P = {size} - {kernel} + 2*{pad} = {span} < 0")
    if span % stride:
        raise GeometryError(
            f"(W - F + 2P)/S + 1 = ({size} - {kernel} + 2*{pad})/{stride} + 1 = "
            f"{span / stride + 1:g} is not an integer; change the stride or the padding")
    return span // stride + 1


def pool_output_size(size, kernel, stride):
    """Output size of an unpadded ``kernel``/``stride`` pooling window (see conv_output_size)."""
    return conv_output_size(size, kernel, stride, 0)


def wraps_rows(cols, out_w, k_blocks, *, wrap_rows):
    """Whether a layer's tiles of ``cols`` output pixels run on into the next output row,
    on an array built with ``wrap_rows`` (:class:`~.config.AcceleratorConfig`).

    Tiles then walk the output map row-major as one sequence of pixels (tile ``t`` is
    pixels ``t*cols … t*cols + cols - 1``), so rows whose width is not a multiple of
    ``cols`` leave no column idle. That needs one k-block (the stream order ``for y: for
    kb: for x`` stays ``for y: for x``) and rows of at least ``cols`` pixels (a tile
    spans at most two rows); otherwise each row starts a new tile. Works on ints and on
    Amaranth values alike.
    """
    if cols == 1 or not wrap_rows:
        return False
    return (k_blocks == 1) & (out_w >= cols)


def column_mode(cols, out_w, k_blocks, *, fc_columns):
    """Whether a layer runs in column mode on an array built with ``fc_columns``
    (:class:`~.config.AcceleratorConfig`): one k-block per array column, all columns on
    the same activation, a layer's memory words holding ``cols`` k-blocks side by side.

    Layers one pixel wide (fully connected ones) with more than ``max(1, cols // 4)``
    k-blocks: with fewer, most of each weight word would be padding (a 1024 → 32 layer
    on 8 columns would take 4 times the weight memory for 2 tiles' time). Works on ints
    and on Amaranth values alike.
    """
    if not fc_columns:
        return False
    return (out_w == 1) & (k_blocks > max(1, cols // 4))


def pixel_pairs_fit(rows, out_channels, out_w, k_blocks):
    """Whether a layer may run with ``pixel_pairs`` (:class:`LayerDescriptor`): its
    channels fit half the array's ``rows`` (one k-block) and its rows have an even number
    of pixels (a column's two pixels are in the same row). Plain ints."""
    return k_blocks == 1 and 0 < out_channels <= rows // 2 and out_w % 2 == 0


def paired_walk(kernel, stride, out_w, pixel_pairs):
    """``(kernel_w, column_step, walk_w)`` of a layer's operand walk: the kernel width
    it reads, the input columns between neighbouring array columns and the output pixels
    of a row as the array's columns see them (with ``pixel_pairs`` a column is two
    pixels). Plain ints."""
    if pixel_pairs:
        return kernel + stride, 2 * stride, out_w // 2
    return kernel, stride, out_w


def array_tiles(cols, out_h, out_w, k_blocks, *, wrap_rows, pixel_pairs=False):
    """Tiles (of ``D`` operand beats each) the array runs for one layer (not column mode);
    ``out_w`` is the layer's, halved here with ``pixel_pairs``."""
    out_w = paired_walk(1, 1, out_w, pixel_pairs)[2]
    if wraps_rows(cols, out_w, k_blocks, wrap_rows=wrap_rows):
        return -(-out_h * out_w // cols)
    return out_h * k_blocks * -(-out_w // cols)


def field_widths(layout):
    """``{name: width}`` of every field of ``layout``, e.g. to size a register or check a
    value against a :class:`LayerDescriptor` field."""
    return {name: f.width for name, f in data.Layout.cast(layout)}


DESCRIPTOR_WORDS = -(-LayerDescriptor.as_shape().size // CHUNK_BITS)


class WriteCommand(data.Struct):
    """One 64-bit host write (``addr`` counts chunks in ``space``; see :class:`Space`)."""
    space: Space
    addr: unsigned(16)
    data: unsigned(CHUNK_BITS)


class StartCommand(data.Struct):
    """Run the layer program; the ``in_from_image`` layer reads from ``image_base``."""
    image_base: unsigned(16)


class ReadCommand(data.Struct):
    """Read one 32-bit result value (see :class:`ReadSpace`)."""
    space: ReadSpace
    addr: unsigned(16)


class ReadData(data.Struct):
    """The answer to a :class:`ReadCommand`."""
    data: unsigned(32)


class HostInterface(wiring.Signature):
    """The core's host interface, seen from the core (the link uses it flipped).

    Members
    -------
    wr : In(stream.Signature(WriteCommand))
        One 64-bit chunk per beat into a :class:`Space`; the core may back-pressure.
    start : In(stream.Signature(StartCommand))
        Run the layer program; taken only while the core is idle.
    busy : Out(1)
        High from the accepted ``start`` until the run's results are stored, or the run
        is stopped.
    abort : In(1)
        Pulse: stop the run now (the memories keep their contents).
    fault : Out(1)
        The last run was stopped by the core's watchdog (it ran too long); low again
        from the next accepted ``start`` or ``abort``.
    rd : In(stream.Signature(ReadCommand))
        One result read per beat.
    rd_data : Out(stream.Signature(ReadData))
        One answer per ``rd`` beat, in order.

    ``fpgacnn.hw.core.Core`` documents the timing of each stream.
    """

    def __init__(self):
        super().__init__({
            "wr": In(stream.Signature(WriteCommand)),
            "start": In(stream.Signature(StartCommand)),
            "busy": Out(1),
            "abort": In(1),
            "fault": Out(1),
            "rd": In(stream.Signature(ReadCommand)),
            "rd_data": Out(stream.Signature(ReadData)),
        })


def encode_struct(layout, fields):
    """Pack ``fields`` (a dict) into an int with ``layout``'s bit positions (a layout or a
    ``data.Struct``)."""
    layout = data.Layout.cast(layout)
    return layout.const(fields).as_value().value & ((1 << layout.size) - 1)


def decode_struct(layout, value):
    """Unpack an int into a dict of ``layout``'s fields (plain ints)."""
    out = {}
    for name, f in data.Layout.cast(layout):
        raw = (value >> f.offset) & ((1 << f.width) - 1)
        shape = f.shape if not hasattr(f.shape, "as_shape") else f.shape.as_shape()
        if getattr(shape, "signed", False) and raw >> (f.width - 1):
            raw -= 1 << f.width
        out[name] = raw
    return out

