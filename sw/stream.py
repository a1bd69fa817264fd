"""Streamed plans: activation maps beyond the block RAM (``config.act_window``).

When a network's maps do not fit the block RAM next to each other (the plan of
:func:`.compiler.plan_activations`), each map lives either in the block RAM (*resident*)
or in the activation window of the weight memory, and each stage runs in *chunks*:

* horizontal **bands** of its output rows (pooled rows when it pools; the convolution rows
  of neighbouring bands overlap for a 3/2 pool): a copy descriptor brings the band's input
  rows into a block-RAM buffer, the band runs with ``pad_top`` the zero rows above it, and
  a copy moves its output rows to the map (:class:`~fpgacnn.hw.program.CopyDescriptor`);
* **passes** over the output channels: the output buffer holds one pass's channels of a
  band; within a pass, a layer descriptor per channel **group** of at most
  ``pool_blocks`` k-blocks when the stage pools (the max-pool line buffer's limit).

A stage whose input is resident and whose whole output fits reads and writes the maps in
place (no copies). The image sits in two block-RAM slots when the image and the working
set fit together and the first stage reads the image whole; else in one window slot (both
slot numbers name it: window IMAGE writes wait until the core is idle, so a second slot
would not let the next image arrive earlier), read by copies.

The planner tries every placement of the maps (a chain, so a dynamic programme over the
stages) and per stage every pass size with the fewest bands that fit the block RAM left,
and keeps the plan with the fewest estimated cycles (array beats + copied bytes + a
planning overhead per descriptor, + the image's wire time when it is in the window: it
then cannot arrive during the previous run) within ``config.max_layers`` descriptors.

Block RAM: image slots at the top, resident maps alternately at the bottom (odd maps)
and under the slots (even maps), a stage's band buffers between them. Window: the image
slot at its top, then the even and the odd window maps (two regions: a map is alive for
two stages), so the weights below may grow up to the lowest window byte used.

Every descriptor of a stage is emitted so that the last one writes the first byte of the
stage's output map: a program cut after any stage (taps) ends with its map's base.
"""

from dataclasses import dataclass

import numpy as np

from ..hw.config import ACT_SPACE
from ..hw.program import LayerDescriptor, array_tiles, field_widths
from ..hw.protocol import CHUNK_BYTES

__all__ = [
    "COPY_OVERHEAD",
    "LAYER_OVERHEAD",
    "Band",
    "PlanError",
    "StageChoice",
    "bands",
    "StreamPlan",
    "plan_stream",
    "stage_choices",
    "stage_descriptors",
]

#: Planning weights of a descriptor beyond its beats or bytes, in cycles: a layer's
#: pipeline fill and drain and the descriptor fetch (a rough figure; the board's counters
#: have the exact ones), a copy's 2-cycle latency (``hw/copier.py``). They steer the
#: planner between fewer, larger chunks and more, smaller ones.
LAYER_OVERHEAD = 48
COPY_OVERHEAD = 2


#: Most rows a layer descriptor holds: input (``in_h``), convolution (``out_h``) and pooled
#: (``pool_h``) rows of a chunk; taller maps run in bands.
_MAX_ROWS = {name: (1 << width) - 1 for name, width in field_widths(LayerDescriptor).items()
             if name in ("in_h", "out_h", "pool_h")}


class PlanError(ValueError):
    """No streamed plan (the compiler turns it into a CompileError)."""


def _align(n):
    """``n`` rounded up to whole 64-bit chunks (maps start on chunks, like images)."""
    return -(-n // CHUNK_BYTES) * CHUNK_BYTES


@dataclass(frozen=True)
class Band:
    """Output rows ``[p0, p1)`` of a stage (pooled if it pools), their convolution rows
    ``[c0, c1)``, the input rows ``[r0, r1)`` they read and the zero rows above them."""
    p0: int
    p1: int
    c0: int
    c1: int
    r0: int
    r1: int
    pad_top: int


def _band(stage, p0, p1):
    h = stage.in_shape[1]
    pk, ps = stage.pool if stage.pool else (1, 1)
    c0, c1 = p0 * ps, (p1 - 1) * ps + pk
    r0 = max(0, c0 * stage.stride - stage.pad)
    r1 = min(h, (c1 - 1) * stage.stride + stage.kernel - stage.pad)
    return Band(p0, p1, c0, c1, r0, r1, stage.pad - c0 * stage.stride + r0)


def bands(stage, n):
    """``stage``'s output rows in ``n`` balanced bands; a band that would read padding
    rows only (``pad >= kernel``) joins its neighbour, so there may be fewer."""
    out_h = stage.out_shape[1]
    out = [_band(stage, b * out_h // n, (b + 1) * out_h // n) for b in range(n)
           if (b + 1) * out_h // n > b * out_h // n]
    while True:
        empty = [i for i, b in enumerate(out) if b.r1 <= b.r0]
        if not empty:
            return tuple(out)
        i = empty[0]
        j = i + 1 if i + 1 < len(out) else i - 1
        lo, hi = min(i, j), max(i, j)
        out[lo:hi + 1] = [_band(stage, out[lo].p0, out[hi].p1)]


@dataclass(frozen=True)
class StageChoice:
    """How one stage runs: its bands, channel passes ``(k0, k1)``, channels per layer
    descriptor, whether it copies its input in and its output out, the band buffers'
    bytes, and its descriptor count and estimated cycles."""
    bands: tuple
    passes: tuple
    group: int
    copy_in: bool
    copy_out: bool
    in_buf: int
    out_buf: int
    descriptors: int
    cycles: int


def _choice(stage, config, bs, passes, group, copy_in, copy_out):
    c, _, w = stage.in_shape
    k, _, conv_w = stage.conv_shape
    _, out_h, out_w = stage.out_shape
    rows = config.rows
    layers = beats = copied = 0
    for k0, k1 in passes:
        for g0 in range(k0, k1, group):
            layers += len(bs)
            kb = -(-(min(k1, g0 + group) - g0) // rows)
            beats += sum(array_tiles(config.cols, b.c1 - b.c0, conv_w, kb,
                                     wrap_rows=config.wrap_rows)
                         for b in bs) * stage.reduction
        if copy_in:
            copied += sum(c * (b.r1 - b.r0) * w for b in bs)
    copies = len(passes) * len(bs) * (copy_in + copy_out)
    copied += k * out_h * out_w if copy_out else 0
    in_buf = max(c * (b.r1 - b.r0) * w for b in bs) if copy_in else 0
    out_buf = (passes[0][1] - passes[0][0]) * max(b.p1 - b.p0 for b in bs) * out_w \
        if copy_out else 0
    return StageChoice(bs, tuple(passes), group, copy_in, copy_out, in_buf, out_buf,
                       layers + copies,
                       beats + copied + LAYER_OVERHEAD * layers + COPY_OVERHEAD * copies)


def stage_choices(stage, config, *, in_resident, out_resident, gap, from_image):
    """The ways ``stage`` can run with ``gap`` bytes of block RAM for its band buffers,
    none both slower and longer than another (sorted by descriptors).

    ``in_resident``/``out_resident``: its input/output map is in the block RAM (then a
    whole-height chunk reads/writes it in place); ``from_image``: its input is a
    block-RAM image slot, which only a whole-height chunk can read (START's image base
    has no row offset).
    """
    k = stage.out_channels
    group = min(k, config.pool_blocks * config.rows) if stage.pool else k
    found = []
    for per_pass in range(-(-k // group), 0, -1):
        step = per_pass * group
        passes = [(k0, min(k, k0 + step)) for k0 in range(0, k, step)]

        def fits(n, passes=passes):
            bs = bands(stage, n)
            if from_image and not (n == 1 and in_resident) or not _rows_fit(bs):
                return None
            option = _choice(stage, config, bs, passes, group, not (n == 1 and in_resident),
                             not (n == 1 and out_resident))
            return option if option.in_buf + option.out_buf <= gap else None

        option = _fewest(fits, stage.out_shape[1])
        if option is not None:
            found.append(option)
    found.sort(key=lambda o: (o.descriptors, o.cycles))
    best = []
    for o in found:
        if not best or o.cycles < best[-1].cycles:
            best.append(o)
    return best


def _rows_fit(bs):
    """Every band's input, convolution and pooled rows fit their descriptor fields."""
    return all(b.r1 - b.r0 <= _MAX_ROWS["in_h"] and b.c1 - b.c0 <= _MAX_ROWS["out_h"] and
               b.p1 - b.p0 <= _MAX_ROWS["pool_h"] for b in bs)


def _fewest(fits, most):
    """``fits(n)`` for the fewest bands ``n`` in ``1..most`` it accepts (None: none);
    the buffers shrink as ``n`` grows, so a binary search."""
    first = fits(1)
    if first is not None or most == 1:
        return first
    lo, hi, best = 2, most, fits(most)
    if best is None:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        option = fits(mid)
        if option is None:
            lo = mid + 1
        else:
            hi, best = mid, option
    return best


@dataclass(frozen=True)
class StreamPlan:
    """Where a streamed plan puts everything (activation addresses; see module docstring).

    Attributes
    ----------
    image_slots : tuple of int
        Bases of image slots 0 and 1 (equal when the image is in the window).
    image_bytes : int
    maps : tuple of (int, int)
        Base and bytes of the input (slot 0) and of every stage's output map.
    resident : tuple of bool
        Per map: in the block RAM (else in the window).
    buffers : tuple of (int, int)
        Per stage: base and bytes of its band buffers in the block RAM (input rows, then
        output rows).
    choices : tuple of StageChoice
    used_bytes : int
        Block RAM in use during :attr:`peak_stage`, the stage that uses most: image
        slots, its resident input and output maps, its band buffers.
    window_low : int
        Lowest window address used (``65536``: none).
    peak_stage : int
    """
    image_slots: tuple
    image_bytes: int
    maps: tuple
    resident: tuple
    buffers: tuple
    choices: tuple
    used_bytes: int
    window_low: int
    peak_stage: int

    @property
    def output_base(self):
        """Activation address of the last stage's output map (where RESULT reads)."""
        return self.maps[-1][0]

    @property
    def window_bytes(self):
        return ACT_SPACE - self.window_low


def _gap(i, resident, sizes, top):
    """Block RAM between stage ``i``'s resident maps (odd maps at the bottom, even maps
    under the image slots at ``top``); ``None`` if they do not fit."""
    lo, hi = 0, top
    for j in (i, i + 1):
        if j >= 1 and resident[j - i]:
            if j % 2:
                lo = _align(sizes[j])
            else:
                hi = top - _align(sizes[j])
    return hi - lo if hi >= lo else None


def _search(stages, config, sizes, res0):
    """Dynamic programme over the stages for a given image placement.

    Returns ``(tables, None)``: per stage (after a first entry for the image) and per
    residency of its output map, ``{descriptors: (cycles, back)}``; or ``(None, i)`` if
    stage ``i`` cannot run with any placement."""
    slot = _align(sizes[0])
    top = config.act_bytes - 2 * slot if res0 else config.act_bytes
    tables = [{res0: {0: (0, None)}}]
    for i, stage in enumerate(stages):
        table = {}
        for res_in, prev in tables[-1].items():
            for res_out in (True, False):
                if res_out and _align(sizes[i + 1]) > top:
                    continue
                gap = _gap(i, (res_in, res_out), sizes, top)
                if gap is None:
                    continue
                options = stage_choices(stage, config, in_resident=res_in,
                                        out_resident=res_out, gap=gap,
                                        from_image=res0 and i == 0)
                for d0, (cy0, _) in prev.items():
                    for o in options:
                        d, cy = d0 + o.descriptors, cy0 + o.cycles
                        entry = table.setdefault(res_out, {})
                        if d not in entry or entry[d][0] > cy:
                            entry[d] = (cy, (res_in, d0, o))
        if not table:
            return None, i
        tables.append(table)
    return tables, None


def _backtrack(tables, limit, fewest=False):
    """The cheapest final state within ``limit`` descriptors (``fewest``: the one with
    the fewest descriptors): (cycles, residency per map, choice per stage), or None."""
    finals = [(cy, d, res) for res, entry in tables[-1].items()
              for d, (cy, _) in entry.items() if d <= limit]
    if not finals:
        return None
    cycles, d, res = min(finals, key=lambda f: (f[1], f[0]) if fewest else f[:2])
    resident, choices = [res], []
    for table in reversed(tables[1:]):
        res_in, d, choice = table[res][d][1]
        choices.append(choice)
        resident.append(res_in)
        res = res_in
    return cycles, tuple(reversed(resident)), tuple(reversed(choices))


def plan_stream(network, stages, config, *, fewest=False):
    """The cheapest :class:`StreamPlan` of ``network`` on ``config`` (``act_window``), or
    with ``fewest`` the one with the fewest descriptors, however many the program memory
    holds (what :mod:`.budget` shows when it holds too few).

    Raises
    ------
    PlanError
        A stage that cannot run in the block RAM even one output row at a time, more
        descriptors than the program memory holds, or maps the window cannot hold; the
        message names the stage, the memory and the bytes.
    """
    sizes = [int(np.prod(network.input_shape))] + [int(np.prod(s.out_shape)) for s in stages]
    plans, least, stuck = [], [], None
    for res0 in (True, False):
        if res0 and 2 * _align(sizes[0]) > config.act_bytes:
            continue
        tables, failed = _search(stages, config, sizes, res0)
        if tables is None:
            stuck = failed
            continue
        least.append(min(d for entry in tables[-1].values() for d in entry))
        found = _backtrack(tables, 1 << 30 if fewest else config.max_layers, fewest)
        if found is not None:
            # The link fills a window slot only while the core is idle: the image's wire
            # time no longer overlaps the previous image's run.
            wire = 0 if res0 else sizes[0] * 10 * config.clock_hz // config.baud
            plans.append((found[0] + wire,) + found[1:])
    if plans:
        _, resident, choices = min(plans, key=lambda p: (
            sum(c.descriptors for c in p[2]), p[0]) if fewest else p[0])
        return _layout(network, config, sizes, resident, choices)
    if not least:
        raise PlanError(_no_room(stages[stuck], config))
    raise PlanError(f"{network.name} needs at least {min(least)} descriptors to run in bands "
                    f"through the {config.act_bytes}-byte block RAM, but the program memory "
                    f"of {config.name} holds {config.max_layers}")


def _no_room(stage, config):
    c, _, w = stage.in_shape
    k = stage.out_channels
    group = min(k, config.pool_blocks * config.rows) if stage.pool else k
    rows_in = max(b.r1 - b.r0 for b in bands(stage, stage.out_shape[1]))
    need = c * rows_in * w + group * stage.out_shape[2]
    from .compiler import _describe
    return (f"{_describe(stage)} does not fit the {config.act_bytes}-byte block RAM of "
            f"{config.name} even one output row at a time: {need} B (input rows "
            f"{c}x{rows_in}x{w} + output {group}x1x{stage.out_shape[2]})")


def _layout(network, config, sizes, resident, choices):
    """Addresses of a placement: image slots, maps, band buffers (module docstring)."""
    a, slot = config.act_bytes, _align(sizes[0])
    top = a - 2 * slot if resident[0] else a
    if resident[0]:
        slots = (top, top + slot)
        wtop = ACT_SPACE
    else:
        slots = (ACT_SPACE - slot,) * 2
        wtop = ACT_SPACE - slot
    region = [max([_align(sizes[j]) for j in range(1, len(sizes))
                   if not resident[j] and j % 2 == parity] or [0]) for parity in (0, 1)]
    maps = [(slots[0], sizes[0])]
    for j in range(1, len(sizes)):
        if resident[j]:
            base = 0 if j % 2 else top - _align(sizes[j])
        else:
            base = wtop - region[0] if j % 2 == 0 else wtop - region[0] - region[1]
        maps.append((base, sizes[j]))
    low = min([base for (base, _), r in zip(maps, resident) if not r] or [ACT_SPACE])
    if low < a:
        raise PlanError(f"{network.name}: the maps in the activation window need "
                        f"{ACT_SPACE - low} B, the window of {config.name} has "
                        f"{ACT_SPACE - a} B")
    buffers, use = [], []
    for i, choice in enumerate(choices):
        lo = max([_align(sizes[j]) for j in (i, i + 1) if j % 2 and resident[j]] or [0])
        buffers.append((lo, choice.in_buf + choice.out_buf))
        use.append(a - top + buffers[-1][1] +
                   sum(_align(sizes[j]) for j in (i, i + 1) if j >= 1 and resident[j]))
    return StreamPlan(slots, sizes[0], tuple(maps), tuple(resident), tuple(buffers),
                      tuple(choices), max(use), low, use.index(max(use)))


def _copy(src, src_stride, dst, dst_stride, segments, length):
    if segments > 1 and src_stride == dst_stride == length:     # contiguous: one segment
        segments, length = 1, segments * length
    return dict(_unused_flags=0, in_from_image=0, to_logits=0, copy=1, segments=segments,
                length=length, src_stride=src_stride, dst_stride=dst_stride, _gap=0,
                src_base=src, dst_base=dst, _tail=0)


def stage_descriptors(stage, plan, rows, *, w_base, q_base):
    """The descriptors of stage ``stage.index`` in ``plan`` (dicts of LayerDescriptor or
    CopyDescriptor fields, ``to_logits`` 0); the last writes its map's first byte."""
    i = stage.index
    choice = plan.choices[i]
    c, h, w = stage.in_shape
    _, _, conv_w = stage.conv_shape
    _, out_h, out_w = stage.out_shape
    in_map, out_map = plan.maps[i][0], plan.maps[i + 1][0]
    in_buf = plan.buffers[i][0]
    out_buf = in_buf + choice.in_buf
    from_image = plan.resident[0] and i == 0
    out = []
    for k0, k1 in reversed(choice.passes):
        for b in reversed(choice.bands):
            rin, rout = b.r1 - b.r0, b.p1 - b.p0
            if choice.copy_in:
                out.append(_copy(in_map + b.r0 * w, h * w, in_buf, rin * w, c, rin * w))
            for g0 in reversed(range(k0, k1, choice.group)):
                g1 = min(k1, g0 + choice.group)
                out.append(dict(
                    relu=int(stage.relu), pool_en=int(stage.pool is not None),
                    in_from_image=int(from_image and not choice.copy_in), to_logits=0,
                    copy=0, cin=c, in_h=rin, in_w=w, kernel=stage.kernel,
                    stride=stage.stride, pad=stage.pad, pad_top=b.pad_top,
                    out_h=b.c1 - b.c0, out_w=conv_w, out_channels=g1 - g0,
                    k_blocks=-(-(g1 - g0) // rows), reduction=stage.reduction,
                    pool_kernel=stage.pool[0] if stage.pool else 0,
                    pool_stride=stage.pool[1] if stage.pool else 0,
                    pool_h=rout, pool_w=out_w,
                    in_base=in_buf if choice.copy_in else in_map,
                    out_base=(out_buf + (g0 - k0) * rout * out_w if choice.copy_out
                              else out_map + g0 * out_h * out_w),
                    w_base=w_base + g0 // rows * stage.reduction, q_base=q_base + g0))
            if choice.copy_out:
                out.append(_copy(out_buf, rout * out_w, out_map + k0 * out_h * out_w
                                 + b.p0 * out_w, out_h * out_w, k1 - k0, rout * out_w))
    return out
