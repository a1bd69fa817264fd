"""The memory budget of a network on a board, and the limits table of every board.

:func:`memory_budget` lays a network out in each on-chip memory of an
:class:`~fpgacnn.hw.config.AcceleratorConfig` exactly as :func:`.compiler.compile_network`
does (same activation plan, same weight and qparam order), but reports every memory
instead of stopping at the first that overflows: what goes where, the size, the headroom,
and for a memory that is too small the bytes missing. ``fpgacnn describe NETWORK --board
B`` prints it; :func:`limits_table` is the table of limits README quotes.
"""

from dataclasses import dataclass

import numpy as np

from ..hw import program as prog
from ..hw.config import ACT_SPACE, CONFIGS
from . import compiler

__all__ = ["MemoryUse", "format_budget", "limits_table", "memory_budget"]


@dataclass(frozen=True)
class MemoryUse:
    """One on-chip memory: its size and what the plan puts there (all in ``unit``).

    Attributes
    ----------
    memory : str
        Name (``weights``, ``activations``, ``qparams``, ``program``).
    unit : str
        What ``capacity`` and the amounts count (``B``, ``entries``, ``descriptors``).
    capacity : int
    contents : tuple of (str, int)
        What the plan puts there, in address order.
    where : str
        The storage on the chip (e.g. ``4 SPRAM``), for the reader.
    """
    memory: str
    unit: str
    capacity: int
    contents: tuple
    where: str

    @property
    def used(self):
        return sum(n for _, n in self.contents)

    @property
    def headroom(self):
        """``capacity - used``; negative: that much is missing."""
        return self.capacity - self.used


def _act_contents(network, stages):
    plan = compiler.plan_activations(network, stages)
    names = ["buffer A", "buffer B"]
    maps = [[], []]
    for s in stages:
        maps[compiler._buffer(s, stages)].append(f"{s.index}")
    result = ["; the result at 0", ""]
    out = [(f"{names[i]} (stage {', '.join(maps[i]) or '-'} outputs{result[i]})",
            plan.buffer_bytes[i]) for i in (0, 1)]
    slot = plan.image_slots[1] - plan.image_slots[0]
    out += [(f"image slot {i} ({plan.image_bytes} B input)", slot) for i in (0, 1)]
    return tuple((what, n) for what, n in out if n)


def _stream_plan(network, stages, config):
    """The streamed plan the compiler would use; if it needs more descriptors than the
    program memory holds, the one with the fewest; ``None`` if the block-RAM plan fits
    or no streamed plan exists (the compiler's message says why)."""
    if not config.act_window or compiler._fits_block_ram(network, stages, config):
        return None
    from . import stream
    for fewest in (False, True):
        try:
            return stream.plan_stream(network, stages, config, fewest=fewest)
        except stream.PlanError:
            pass
    return None


def _stream_contents(plan, stages):
    """Block RAM during the plan's peak stage, and the window, as ``(what, bytes)``."""
    i = plan.peak_stage
    act = []
    if plan.resident[0]:
        slot = plan.image_slots[1] - plan.image_slots[0]
        act += [(f"image slot {k} ({plan.image_bytes} B input)", slot) for k in (0, 1)]
    for j in (i, i + 1):
        if j >= 1 and plan.resident[j]:
            act.append((f"stage {j - 1} output map",
                        compiler._align(plan.maps[j][1])))
    if plan.buffers[i][1]:
        act.append((f"stage {i} band buffers (input and output rows; the busiest stage)",
                    plan.buffers[i][1]))
    window = []
    if not plan.resident[0]:
        window.append((f"image slot 0 = 1 ({plan.image_bytes} B input)",
                       ACT_SPACE - plan.image_slots[0]))
    bases = sorted({b for (b, _), r in zip(plan.maps[1:], plan.resident[1:]) if not r},
                   reverse=True)
    ends = [plan.image_slots[0] if not plan.resident[0] else ACT_SPACE] + bases
    for base, end in zip(bases, ends):
        who = [str(j - 1) for j, ((b, _), r) in enumerate(zip(plan.maps, plan.resident))
               if j and not r and b == base]
        window.append((f"stage {', '.join(who)} output{'s' * (len(who) > 1)}", end - base))
    return tuple(act), tuple(window)


def _weight_contents(stages, config):
    """Weight memory contents in the compiler's order (:func:`compiler.weight_placement`):
    each stage's k-blocks × D words, after the padding column mode needs."""
    rows, contents = config.rows, []
    pairs = compiler.pixel_pairs(stages, config)
    for s, paired, (pad, _, k_blocks) in zip(stages, pairs,
                                             compiler.weight_placement(stages, config, pairs)):
        if pad:
            contents.append((f"padding to a word of {config.cols} k-blocks", pad * rows))
        reduction = compiler.stage_reduction(s, paired)
        how = " (pixel pairs)" if paired else ""
        contents.append((f"{compiler._describe(s)}: {k_blocks} x {reduction} words{how}",
                         k_blocks * reduction * rows))
    return tuple(contents)


def memory_budget(network, config):
    """Every memory of ``config`` with what ``network`` needs of it (never raises for a
    network that does not fit: a memory's ``headroom`` is then negative).

    With ``config.act_window`` and a network whose maps do not fit the block RAM, the
    streamed plan's (:mod:`.stream`): the block RAM of its busiest stage, the activation
    window (which shares the weight memory: the weights' headroom is what lies between
    them) and its descriptors.

    Returns
    -------
    list of MemoryUse
        Weights (in bytes: ``rows`` bytes per word), activations, window (with
        ``act_window``), qparams, program.
    """
    stages = network.stages()
    rows = config.rows
    weights = _weight_contents(stages, config)
    qparams = tuple((compiler._describe(s), s.out_channels) for s in stages)
    copies = f" x {config.cols} copies" if config.cols > 1 else ""
    plan = _stream_plan(network, stages, config)
    act, descriptors = _act_contents(network, stages), len(stages)
    window = None
    if plan is not None:
        act, window = _stream_contents(plan, stages)
        weights += (("activation window (top of this memory)", plan.window_bytes),)
        descriptors = sum(c.descriptors for c in plan.choices)
    uses = [
        MemoryUse("weights", "B", config.weight_words * rows, weights,
                  "4 SPRAM" if config.ice40 else "block RAM"),
        MemoryUse("activations", "B", config.act_bytes, act, f"block RAM{copies}"),
    ]
    if config.act_window:
        uses.append(MemoryUse("window", "B", ACT_SPACE - config.act_bytes,
                              window or (), "top of the weight memory"))
    kind = "layers, bands and copies" if plan else "layer descriptors"
    return uses + [
        MemoryUse("qparams", "entries", config.qparam_entries, qparams, "block RAM"),
        MemoryUse("program", "descriptors", config.max_layers, ((kind, descriptors),),
                  "block RAM"),
    ]


def format_budget(network, config):
    """The budget as text lines; the last one says whether ``network`` fits, and if not
    which memories are short by how much."""
    lines = [f"memory budget of {network.name} on {config.name}:",
             f"  {'memory':<12} {'size':>9} {'used':>9} {'headroom':>9}  unit / storage"]
    short = []
    for use in memory_budget(network, config):
        lines.append(f"  {use.memory:<12} {use.capacity:>9,} {use.used:>9,} "
                     f"{use.headroom:>9,}  {use.unit} / {use.where}")
        for what, n in use.contents:
            lines.append(f"    {n:>9,} {use.unit:<3} {what}")
        if use.headroom < 0:
            short.append(f"{use.memory} ({-use.headroom:,} {use.unit} missing)")
    if short:
        lines.append(f"{network.name} does NOT fit {config.name}: " + ", ".join(short))
    else:
        lines.append(f"{network.name} fits {config.name}")
    return lines


def _maps_pair(config, shape):
    """Bytes left for the maps next to an input of ``shape``: the two ping-pong buffers
    next to two block-RAM slots, and with the window the window next to one slot."""
    image = compiler._align(int(np.prod(shape)))
    left = config.act_bytes - 2 * image
    text = f"{left:,}" if left > 0 else "none"
    if config.act_window:
        text += f"; window {ACT_SPACE - config.act_bytes - image:,}"
    return text


def _window(config):
    if not config.act_window:
        return "none"
    return (f"{ACT_SPACE - config.act_bytes:,} (weight bytes from "
            f"{config.window_weight_byte:,})")


def _largest_input(config):
    ebr = f"{(config.act_bytes - 8) // 2 // 8 * 8:,}"
    if not config.act_window:
        return ebr
    return f"{ebr}; window {ACT_SPACE - config.act_bytes - 8:,} (in bands)"


def _pool(config):
    text = f"2/1, 2/2, 3/2; width ≤ {config.pool_width}, "
    if config.act_window:
        return text + f"channels in groups of ≤ {config.pool_blocks * config.rows}"
    return text + f"≤ {config.pool_blocks * config.rows} channels"


def _weight_bytes(config):
    text = f"{config.weight_bytes:,}"
    return text + "; a streamed plan's window maps take its top" if config.act_window else text


def limits_table(configs=None):
    """The limits of every board configuration as a Markdown table (README quotes it).

    Derived from the configurations and the descriptor field widths only, so it cannot
    drift from what the compiler accepts.
    """
    configs = list((configs or CONFIGS).values())
    widths = prog.field_widths(prog.LayerDescriptor)
    rows = [
        ("activation memory (B)", lambda c: f"{c.act_bytes:,}"),
        ("activation window (B)", _window),
        ("image slots", lambda c: "2 in the block RAM" + (
            ", or 1 in the window (written between runs)" if c.act_window else "")),
        ("largest input C·H·W (B), 8-byte output", _largest_input),
        ("maps next to a 1×28×28 input (B)", lambda c: _maps_pair(c, (1, 28, 28))),
        ("maps next to a 3×32×32 input (B)", lambda c: _maps_pair(c, (3, 32, 32))),
        ("outputs of the last layer", lambda c: f"its map fits (≤ {c.max_logits:,})"),
        ("reduction C·F·F", lambda c: f"≤ {c.max_reduction:,}" + (
            f"; C ≤ {(1 << widths['cin']) - 1:,}"
            if c.max_reduction >= 1 << widths['cin'] else "")),
        ("max-pool", _pool),
        ("map height / width", lambda c: (
            f"height: what fits the window, in bands of ≤ {(1 << widths['in_h']) - 1} rows; width "
            f"≤ {(1 << widths['in_w']) - 1}" if c.act_window
            else f"≤ {(1 << widths['in_h']) - 1}")),
        ("descriptors (layers; bands and copies)", lambda c: f"≤ {c.max_layers}"),
        ("output channels (all layers)", lambda c: f"≤ {c.qparam_entries:,}"),
        ("weight bytes", _weight_bytes),
    ]
    lines = ["| limit | " + " | ".join(c.name for c in configs) + " |",
             "|---|" + "---|" * len(configs)]
    for name, cell in rows:
        lines.append(f"| {name} | " + " | ".join(cell(c) for c in configs) + " |")
    return "\n".join(lines)
