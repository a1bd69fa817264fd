"""What a bitstream build produced, read from the tools' outputs.

* :class:`BuildReport`: fit, Fmax against the core clock, utilisation, critical path,
  bitstream, as :func:`fpgacnn.hw.flow.build_board` returns it (``summary()`` is the
  table ``fpgacnn build`` prints, ``to_json()`` its ``--json`` file);
* :func:`read_nextpnr`: utilisation, Fmax and critical path from nextpnr's log and its
  ``--report`` JSON;
* :func:`check_hand_dsps`: the hand-made 8×8 ``SB_MAC16`` blocks survived synthesis
  (see :mod:`fpgacnn.hw.flow` for why this can go wrong);
* :func:`breakdown_from_netlist`: cells per unit from a non-flattened yosys netlist, what
  to read when a design does not fit.
"""

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "BREAKDOWN_COLUMNS",
    "RESOURCES",
    "BuildError",
    "BuildReport",
    "breakdown_from_netlist",
    "check_hand_dsps",
    "format_breakdown",
    "read_nextpnr",
]

#: Resource rows of :meth:`BuildReport.summary`, per family, in display order:
#: (nextpnr cell type, label).
RESOURCES = {
    "ice40": [("ICESTORM_LC", "LUT4/FF (logic cells)"), ("ICESTORM_DSP", "DSP (SB_MAC16)"),
              ("ICESTORM_RAM", "EBR (4 kbit)"), ("ICESTORM_SPRAM", "SPRAM (256 kbit)"),
              ("ICESTORM_PLL", "PLL"), ("SB_IO", "I/O"), ("SB_GB", "global buffers")],
    "ecp5": [("TRELLIS_COMB", "LUT4"), ("TRELLIS_FF", "FF"), ("TRELLIS_SLICE", "slices"),
             ("MULT18X18D", "DSP (MULT18X18D)"), ("DP16KD", "EBR (DP16KD)"),
             ("EHXPLLL", "PLL"), ("TRELLIS_IO", "I/O")],
}

#: Columns of :func:`breakdown_from_netlist`, per family: column -> yosys cell types.
BREAKDOWN_COLUMNS = {
    "ice40": {"LUT4": ("SB_LUT4",), "FF": ("SB_DFF",), "CARRY": ("SB_CARRY",),
              "DSP": ("SB_MAC16",), "EBR": ("SB_RAM40_4K",), "SPRAM": ("SB_SPRAM256KA",)},
    "ecp5": {"LUT4": ("LUT4",), "FF": ("TRELLIS_FF",), "CARRY": ("CCU2C",),
             "DSP": ("MULT18X18D",), "EBR": ("DP16KD",)},
}


class BuildError(Exception):
    """A tool failed or its output is wrong; the message names the step and its log."""


@dataclass
class BuildReport:
    """Outcome of one bitstream build (see :func:`fpgacnn.hw.flow.build_board`).

    Attributes
    ----------
    board, family, design : str
        Board name, ``"ice40"`` or ``"ecp5"``, and ``"full"`` or ``"array"``.
    build_dir : Path
        Where the tools ran; every log is there.
    fits : bool
        Placement and routing succeeded (the design fits the device).
    fmax_mhz, target_mhz : float or None
        Fmax of the core clock reached by nextpnr, and the core clock asked for.
    utilisation : dict
        nextpnr cell type -> ``[used, available]``.
    bitstream : Path or None
        The bitstream, when every step succeeded.
    critical_path : list of str
        The core clock's critical path (nextpnr report), source to sink.
    error : str or None
        Why the build failed (a tool's error line), if it did.
    seconds, logs : dict
        Per tool: wall time of its step, and its log file.
    seed : int
        nextpnr placement seed.
    rtlil_sha256 : str or None
        Hash of the design's RTLIL: a later build of the same gateware can re-use this one.
    reused : bool
        This report was read back from an earlier build, not built now.
    """
    board: str
    family: str
    build_dir: Path
    design: str = "full"
    fits: bool = False
    fmax_mhz: float = None
    target_mhz: float = None
    utilisation: dict = field(default_factory=dict)
    bitstream: Path = None
    critical_path: list = field(default_factory=list)
    error: str = None
    seconds: dict = field(default_factory=dict)
    logs: dict = field(default_factory=dict)
    seed: int = 1
    rtlil_sha256: str = None
    reused: bool = False

    @property
    def meets_timing(self):
        """The core clock's Fmax is at least the target."""
        return (self.fmax_mhz is not None and self.target_mhz is not None
                and self.fmax_mhz >= self.target_mhz)

    @property
    def ok(self):
        """Fits, meets timing and has a bitstream."""
        return self.fits and self.meets_timing and self.bitstream is not None

    @property
    def over_capacity(self):
        """Cell types the design uses more of than the device has."""
        return [cell for cell, (used, avail) in self.utilisation.items() if used > avail]

    def to_json(self):
        """The summary ``fpgacnn build --json`` writes (stable keys)."""
        return {"board": self.board, "fits": self.fits, "fmax_mhz": self.fmax_mhz,
                "target_mhz": self.target_mhz,
                "utilisation": {k: list(v) for k, v in self.utilisation.items()},
                "bitstream": str(self.bitstream) if self.bitstream else None}

    def to_record(self):
        """Every field, JSON-serialisable (see :meth:`from_record`)."""
        record = asdict(self)
        record.update(build_dir=str(self.build_dir), logs={k: str(v) for k, v in
                                                           self.logs.items()},
                      bitstream=str(self.bitstream) if self.bitstream else None)
        return record

    @classmethod
    def from_record(cls, record):
        """A report from :meth:`to_record`'s dict."""
        record = dict(record)
        record.update(build_dir=Path(record["build_dir"]),
                      logs={k: Path(v) for k, v in record.get("logs", {}).items()},
                      bitstream=Path(record["bitstream"]) if record.get("bitstream") else None)
        return cls(**record)

    def summary(self):
        """The human-readable summary: resource table, Fmax vs target, bitstream."""
        lines = [f"{'resource':<24} {'cell':<16} {'used':>6} {'avail':>6} {'':>5}"]
        for cell, label in RESOURCES[self.family]:
            if cell in self.utilisation:
                used, avail = self.utilisation[cell]
                pct = f"{100 * used / avail:.0f}%" if avail else ""
                flag = "  OVER" if used > avail else ""
                lines.append(f"{label:<24} {cell:<16} {used:>6} {avail:>6} {pct:>5}{flag}")
        if self.fmax_mhz is not None:
            verdict = "met" if self.meets_timing else "MISSED"
            lines.append(f"Fmax {self.fmax_mhz:.2f} MHz vs target {self.target_mhz:.2f} MHz: "
                         f"timing {verdict}")
        elif self.target_mhz is not None:
            lines.append(f"Fmax: not reached (target {self.target_mhz:.2f} MHz)")
        if not self.fits:
            lines.append("the design does NOT fit / was not placed and routed")
        if self.error:
            lines.append(f"error: {self.error}")
        if self.critical_path and not self.meets_timing:
            lines.append("critical path (source → sink, ns):")
            lines += [f"  {p}" for p in self.critical_path]
        lines.append(f"bitstream: {self.bitstream}" if self.bitstream else "bitstream: none")
        return "\n".join(lines)


_UTIL_RE = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%")
_FMAX_RE = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((PASS|FAIL) at "
                      r"([\d.]+) MHz\)")
_PATH_SEGMENTS = ("clk-to-q", "logic", "routing", "setup", "source", "sink")


def read_nextpnr(log_path, report_path, target_mhz):
    """Utilisation, core-clock Fmax and critical path of a nextpnr run.

    Parameters
    ----------
    log_path : Path
        nextpnr's log; its utilisation lines come before placement, so they are there
        even when the design does not fit.
    report_path : Path
        nextpnr's ``--report`` JSON, written only by a complete run; preferred when present.
    target_mhz : float
        The core clock: the clock constrained to this frequency is the one reported (the
        oscillator's only feeds the PLL).

    Returns
    -------
    utilisation : dict
        Cell type -> ``[used, available]``.
    fmax_mhz : float or None
        The core clock's Fmax, None if nextpnr did not get that far.
    critical_path : list of str
        Segments of the core clock's critical path (the first path if none is the core's).
    """
    text = Path(log_path).read_text(errors="replace") if Path(log_path).exists() else ""
    utilisation, fmax, critical_path = {}, {}, []
    for line in text.splitlines():
        m = _UTIL_RE.match(line)
        if m:
            utilisation[m.group(1)] = [int(m.group(2)), int(m.group(3))]
    if Path(report_path).exists():
        report = json.loads(Path(report_path).read_text())
        for cell, v in report.get("utilization", {}).items():
            utilisation[cell] = [int(v["used"]), int(v["available"])]
        for clock, v in report.get("fmax", {}).items():
            fmax[clock] = (float(v["achieved"]), float(v["constraint"]))
        paths = report.get("critical_paths", [])
        core = [p for p in paths
                if _is_core(fmax.get(p.get("from"), (0, 0))[1], target_mhz)
                or _is_core(fmax.get(p.get("to"), (0, 0))[1], target_mhz)]
        if core or paths:
            critical_path = _describe_path((core or paths)[0])
    else:
        for m in _FMAX_RE.finditer(text):
            fmax[m.group(1)] = (float(m.group(2)), float(m.group(4)))
    core_clocks = [achieved for achieved, constraint in fmax.values()
                   if _is_core(constraint, target_mhz)]
    return utilisation, min(core_clocks) if core_clocks else None, critical_path


def _is_core(constraint_mhz, target_mhz):
    # nextpnr derives the PLL output's constraint from the oscillator's through the
    # dividers, with float rounding in the last digits, so compare loosely.
    return abs(constraint_mhz - target_mhz) <= 1e-3 * target_mhz


def _describe_path(path):
    out = []
    for seg in path.get("path", []):
        if seg.get("type") in _PATH_SEGMENTS:
            frm, to = seg.get("from", {}), seg.get("to", {})
            out.append(f"{seg.get('type'):<9} {seg.get('delay', 0):6.2f}  "
                       f"{frm.get('cell', '')}.{frm.get('port', '')} → "
                       f"{to.get('cell', '')}.{to.get('port', '')}"
                       + (f"  [{seg['net']}]" if seg.get("net") else ""))
    return out


def _mac16_modes(cells):
    # MODE_8x8 (0 or 1) of each SB_MAC16 among yosys JSON cell dicts.
    return [int(str(c["parameters"].get("MODE_8x8", "0")), 2)
            for c in cells if c["type"] == "SB_MAC16"]


def check_hand_dsps(build_dir, name="top"):
    """Raise :class:`BuildError` if synthesis turned a hand-made 8×8 SB_MAC16 into 16×16.

    Compares the number of ``SB_MAC16`` with ``MODE_8x8 = 1`` in Amaranth's RTLIL
    (``name.il``) and in yosys' output netlist (``name.json``).

    Returns
    -------
    int
        The number of hand-made 8×8 blocks (all intact).
    """
    build_dir = Path(build_dir)
    before = len(re.findall(r"parameter \\MODE_8x8 1'1\b",
                            (build_dir / f"{name}.il").read_text()))
    netlist = json.loads((build_dir / f"{name}.json").read_text())
    after = sum(sum(_mac16_modes(m.get("cells", {}).values()))
                for m in netlist["modules"].values())
    if after < before:
        raise BuildError(
            f"synthesis rewrote {before - after} of {before} hand-instantiated 8x8 SB_MAC16 "
            f"blocks (yosys ice40_dsp, enabled by synth_ice40 -dsp, treats every SB_MAC16 "
            f"as a 16x16 multiplier); build without -dsp")
    return before


class _Hierarchy:
    """Cell counts of a non-flattened netlist's modules, own and with their submodules."""

    def __init__(self, modules, columns):
        # Library cells (SB_LUT4, ...) are modules too, marked as black/white boxes.
        self.modules = {k: v for k, v in modules.items()
                        if not {"blackbox", "whitebox"} & set(v.get("attributes", {}))}
        self.columns = columns
        self.totals = {}

    def children(self, module):
        return [(name, cell["type"]) for name, cell in self.modules[module]["cells"].items()
                if cell["type"] in self.modules]

    def total(self, module):
        if module not in self.totals:
            counts = dict.fromkeys(self.columns, 0)
            for cell in self.modules[module]["cells"].values():
                for col, prefixes in self.columns.items():
                    if any(cell["type"].startswith(p) for p in prefixes):
                        counts[col] += 1
            for _, child in self.children(module):
                for col, v in self.total(child).items():
                    counts[col] += v
            self.totals[module] = counts
        return self.totals[module]

    def rows(self, module, path, depth):
        yield path, self.total(module)
        if depth > 0:
            biggest_first = sorted(self.children(module),
                                   key=lambda c: -sum(self.total(c[1]).values()))
            for name, child in biggest_first:
                yield from self.rows(child, f"{path}.{name.lstrip(chr(92))}", depth - 1)


def breakdown_from_netlist(path, family, *, name="top", depth=4):
    """Cells per instance of a non-flattened yosys JSON netlist, submodules included.

    Parameters
    ----------
    path : Path
        ``write_json`` output of ``synth_* -noflatten``.
    family : str
        ``"ice40"`` or ``"ecp5"``: which cell types count (:data:`BREAKDOWN_COLUMNS`).
    name : str
        Top module.
    depth : int
        Levels of hierarchy below the top to list.

    Returns
    -------
    list of (instance path, {column: count})
        Depth-first, the biggest child first.
    """
    modules = json.loads(Path(path).read_text())["modules"]
    return list(_Hierarchy(modules, BREAKDOWN_COLUMNS[family]).rows(name, name, depth))


def format_breakdown(rows):
    """A table of :func:`breakdown_from_netlist` rows."""
    cols = list(rows[0][1]) if rows else []
    out = [f"{'instance':<48}" + "".join(f"{c:>7}" for c in cols)]
    for path, counts in rows:
        out.append(f"{path:<48}" + "".join(f"{counts[c]:>7}" for c in cols))
    return "\n".join(out)
