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
from ..hw.config import CONFIGS
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


def memory_budget(network, config):
    """Every memory of ``config`` with what ``network`` needs of it (never raises for a
    network that does not fit: a memory's ``headroom`` is then negative).

    Returns
    -------
    list of MemoryUse
        Weights (in bytes: ``rows`` bytes per word), activations, qparams, program.
    """
    stages = network.stages()
    rows = config.rows
    weights = tuple((f"{compiler._describe(s)}: {-(-s.out_channels // rows)} x {s.reduction} words",
                     -(-s.out_channels // rows) * s.reduction * rows) for s in stages)
    qparams = tuple((compiler._describe(s), s.out_channels) for s in stages)
    copies = f" x {config.cols} copies" if config.cols > 1 else ""
    return [
        MemoryUse("weights", "B", config.weight_words * rows, weights,
                  "4 SPRAM" if config.ice40 else "block RAM"),
        MemoryUse("activations", "B", config.act_bytes, _act_contents(network, stages),
                  f"block RAM{copies}"),
        MemoryUse("qparams", "entries", config.qparam_entries, qparams, "block RAM"),
        MemoryUse("program", "descriptors", config.max_layers,
                  (("layer descriptors", len(stages)),), "block RAM"),
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
    """Bytes left for the two ping-pong buffers next to two slots of ``shape``."""
    left = config.act_bytes - 2 * compiler._align(int(np.prod(shape)))
    return f"{left:,}" if left > 0 else "none"


def limits_table(configs=None):
    """The limits of every board configuration as a Markdown table (README quotes it).

    Derived from the configurations and the descriptor field widths only, so it cannot
    drift from what the compiler accepts.
    """
    configs = list((configs or CONFIGS).values())
    widths = prog.field_widths(prog.LayerDescriptor)
    rows = [
        ("activation memory (B)", lambda c: f"{c.act_bytes:,}"),
        ("largest input C·H·W (B), 8-byte output",
         lambda c: f"{(c.act_bytes - 8) // 2 // 8 * 8:,}"),
        ("maps A+B next to a 1×28×28 input (B)", lambda c: _maps_pair(c, (1, 28, 28))),
        ("maps A+B next to a 3×32×32 input (B)", lambda c: _maps_pair(c, (3, 32, 32))),
        ("outputs of the last layer", lambda c: "its map fits buffer A "
                                                f"(≤ {c.max_logits:,})"),
        ("reduction C·F·F", lambda c: f"≤ {c.max_reduction:,}"),
        ("max-pool", lambda c: f"2/1, 2/2, 3/2; width ≤ {c.pool_width}, "
                               f"≤ {c.pool_blocks * c.rows} channels"),
        ("map height / width", lambda c: f"≤ {(1 << widths['in_h']) - 1}"),
        ("layers", lambda c: f"≤ {c.max_layers}"),
        ("output channels (all layers)", lambda c: f"≤ {c.qparam_entries:,}"),
        ("weight bytes", lambda c: f"{c.weight_words * c.rows:,}"),
    ]
    lines = ["| limit | " + " | ".join(c.name for c in configs) + " |",
             "|---|" + "---|" * len(configs)]
    for name, cell in rows:
        lines.append(f"| {name} | " + " | ".join(cell(c) for c in configs) + " |")
    return "\n".join(lines)
