"""``fpgacnn build``: a bitstream for a board, with what it used of the chip and its Fmax.

The flow is Amaranth's own (``platform.build(..., do_build=False)`` writes the yosys
script, constraints and the list of commands to ``build/<board>/``), but the commands
run here, one by one, so that each step shows a one-line live status instead of a wall
of log. Logs stay in ``build/<board>/``: ``top.rpt`` (yosys), ``top.tim`` (nextpnr),
``<n>-<tool>.out`` (console output), ``top_report.json`` (nextpnr's report). Tools are
the venv's YoWASP programs (:func:`fpgacnn.sim.toolchain.setup_yowasp_env`).

Toolchain options added to Amaranth's defaults:

* iCE40: **no** ``synth_ice40 -dsp``, on purpose. Its ``ice40_dsp`` pass matches every
  ``SB_MAC16`` cell, hand-instantiated ones included, and rewrites it as a 16×16
  multiplier (``MODE_8x8 = 0``, output selects, product registers; see
  ``techlibs/ice40/ice40_dsp.cc`` in yosys): the array's two-products-per-block
  multipliers would silently compute garbage on the board. The array already uses all
  8 DSPs of the UP5K, so ``-dsp`` could not place another multiplier anyway. After
  synthesis the build checks that every hand-made 8×8 block is still an 8×8 block
  (:func:`check_hand_dsps`);
* nextpnr: ``--report top_report.json`` (utilisation and Fmax as JSON),
  ``--timing-allow-fail`` (a timing miss is reported here, with its critical path,
  instead of ending the run without numbers) and ``--seed``;
* yosys: ``rename -hide`` of wires whose names contain ``[`` before synthesis. Amaranth
  names array elements ``p[0]``; yosys 0.70's ABC9 re-integration names the bits it
  creates the same way and fails an assertion (``count_id(wire->name) == 0``, yosys
  issue #4349) when such a wire aliases a box output (e.g. an SB_MAC16's ``O``). Only
  debug names are lost; ports keep theirs.

Python API: :func:`build` returns a :class:`BuildResult`; the CLI prints it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["build", "BuildResult", "BuildError", "toolchain_overrides", "DESIGNS",
           "resource_breakdown", "breakdown_from_netlist", "format_breakdown",
           "check_hand_dsps",
           "YOSYS_WORKAROUND"]

#: See the module docstring: hide Amaranth's ``name[index]`` wires from ABC9 (not ports).
YOSYS_WORKAROUND = "rename -hide w:*[[]* x:* %d"

#: What goes inside the board top: the real accelerator, or the build-flow smoke test.
DESIGNS = ("full", "array")

# Amaranth's tool names -> the environment variables that point at YoWASP.
_TOOL_VARS = {"yosys": "YOSYS", "nextpnr-ice40": "NEXTPNR_ICE40", "icepack": "ICEPACK",
              "nextpnr-ecp5": "NEXTPNR_ECP5", "ecppack": "ECPPACK"}
_STEP_NAMES = {"yosys": "synthesis", "nextpnr-ice40": "place & route",
               "nextpnr-ecp5": "place & route", "icepack": "bitstream", "ecppack": "bitstream"}
# Resource rows of the report, per family, in display order: (nextpnr cell, label).
_RESOURCES = {
    "ice40": [("ICESTORM_LC", "LUT4/FF (logic cells)"), ("ICESTORM_DSP", "DSP (SB_MAC16)"),
              ("ICESTORM_RAM", "EBR (4 kbit)"), ("ICESTORM_SPRAM", "SPRAM (256 kbit)"),
              ("ICESTORM_PLL", "PLL"), ("SB_IO", "I/O"), ("SB_GB", "global buffers")],
    "ecp5": [("TRELLIS_COMB", "LUT4"), ("TRELLIS_FF", "FF"), ("TRELLIS_SLICE", "slices"),
             ("MULT18X18D", "DSP (MULT18X18D)"), ("DP16KD", "EBR (DP16KD)"),
             ("EHXPLLL", "PLL"), ("TRELLIS_IO", "I/O")],
}


class BuildError(Exception):
    """A tool failed; the message names the step and its log file."""


@dataclass
class BuildResult:
    """Outcome of one bitstream build (see :func:`build`).

    Attributes
    ----------
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
    """
    board: str
    family: str
    build_dir: Path
    fits: bool = False
    fmax_mhz: float = None
    target_mhz: float = None
    utilisation: dict = field(default_factory=dict)
    bitstream: Path = None
    critical_path: list = field(default_factory=list)
    error: str = None
    seconds: dict = field(default_factory=dict)
    logs: dict = field(default_factory=dict)

    @property
    def meets_timing(self):
        return (self.fmax_mhz is not None and self.target_mhz is not None
                and self.fmax_mhz >= self.target_mhz)

    @property
    def ok(self):
        return self.fits and self.meets_timing and self.bitstream is not None

    def to_json(self):
        return {"board": self.board, "fits": self.fits, "fmax_mhz": self.fmax_mhz,
                "target_mhz": self.target_mhz,
                "utilisation": {k: list(v) for k, v in self.utilisation.items()},
                "bitstream": str(self.bitstream) if self.bitstream else None}

    def report(self):
        """The human-readable summary: resource table, Fmax vs target, bitstream."""
        lines = [f"{'resource':<24} {'cell':<16} {'used':>6} {'avail':>6} {'':>5}"]
        for cell, label in _RESOURCES[self.family]:
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


def toolchain_overrides(family, seed=1, name="top"):
    """Keyword arguments for ``platform.build`` (see the module docstring)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    nextpnr = f"--report {name}_report.json --timing-allow-fail --seed {seed}"
    return {"script_after_read": YOSYS_WORKAROUND, "nextpnr_opts": nextpnr}


def _mac16_modes(cells):
    # MODE_8x8 (0 or 1) of each SB_MAC16 among yosys JSON cell dicts.
    return [int(str(c["parameters"].get("MODE_8x8", "0")), 2)
            for c in cells if c["type"] == "SB_MAC16"]


def check_hand_dsps(build_dir, name="top"):
    """Raise :class:`BuildError` if synthesis turned a hand-made 8×8 SB_MAC16 into 16×16.

    Compares the number of ``SB_MAC16`` with ``MODE_8x8 = 1`` in Amaranth's RTLIL
    (``name.il``) and in yosys' output netlist (``name.json``).
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


def _make_top(board, design, config):
    from ..hw.boards import ArraySmokeTop, make_board
    from ..hw.config import get_config
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, not {design!r}")
    if config is None:
        from ..hw.boards import BOARDS
        if board not in BOARDS:
            raise ValueError(f"unknown board {board!r}; choose one of {', '.join(BOARDS)}")
        config = get_config(BOARDS[board][2])
    top = ArraySmokeTop(config) if design == "array" else None
    platform, board_top = make_board(board, config, top=top)
    return platform, board_top, config


class _Status:
    """One live status line on a terminal; plain per-step lines otherwise."""
    SPIN = "|/-\\"

    def __init__(self, enabled):
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.n = 0
        self.last = 0.0

    def update(self, prefix, text, started):
        if not self.tty:
            return
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last, self.n = now, self.n + 1
        width = shutil.get_terminal_size((100, 20)).columns - 1
        line = f"{self.SPIN[self.n % 4]} {prefix} {now - started:5.0f}s  {text}"
        sys.stderr.write("\r" + line[:width].ljust(width))
        sys.stderr.flush()

    def done(self, text):
        if not self.enabled:
            return
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            sys.stderr.write("\r" + " " * width + "\r")
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _progress_text(tool, line):
    # Short, meaningful snippets of each tool's chatter for the status line.
    if tool == "yosys":
        m = re.match(r"^[\d.]+ Executing (.+?)(?: pass)?[ .(]", line)
        return m and m.group(1)
    if tool.startswith("nextpnr"):
        if line.startswith("Info: ") and not line.startswith("Info:     "):
            return line[6:].strip()[:70] or None
        return None
    return line.strip()[:70] or None


def _tool_log(cmd, build_dir):
    # The tool's own log file (yosys -l, nextpnr --log): complete and flushed as it goes,
    # unlike its stdout (YoWASP's yosys loses stdout after ABC; nextpnr buffers it).
    for flag in ("-l", "--log"):
        if flag in cmd[:-1]:
            return build_dir / cmd[cmd.index(flag) + 1]
    return None


def _run_step(index, total, cmd, env, build_dir, status):
    """Run one tool; returns (exit code, seconds, log path, last ERROR line or None)."""
    tool = cmd[0]
    step = _STEP_NAMES.get(tool, tool)
    exe = env.get(_TOOL_VARS.get(tool, ""), tool)
    argv = [exe] + [a for a in cmd[1:] if a not in ("-q", "--quiet")]
    out_path = build_dir / f"{index}-{tool}.out"
    tool_log = _tool_log(cmd, build_dir)
    if tool_log is not None and tool_log.exists():
        tool_log.unlink()
    prefix = f"[{index}/{total}] {step} ({tool})"
    started = time.monotonic()
    last_error, text, tail = None, "starting", None

    def follow(lines):
        nonlocal last_error, text
        for line in lines:
            if line.startswith("ERROR") or "ERROR:" in line[:12]:
                last_error = line.strip()
            text = _progress_text(tool, line) or text

    with open(out_path, "w") as out, subprocess.Popen(
            argv, cwd=build_dir, env=env, stdout=out, stderr=subprocess.STDOUT) as proc:
        while proc.poll() is None:
            time.sleep(0.25)
            if tail is None and tool_log is not None and tool_log.exists():
                tail = open(tool_log, errors="replace")
            if tail is not None:
                follow(tail.readlines())
            status.update(prefix, text, started)
        code = proc.returncode
    if tail is not None:
        follow(tail.readlines())
        tail.close()
    else:
        follow(out_path.read_text(errors="replace").splitlines())
    seconds = time.monotonic() - started
    log_path = tool_log if tool_log is not None and tool_log.exists() else out_path
    status.done(f"{prefix}: {'done' if code == 0 else 'FAILED'} in {seconds:.0f}s "
                f"(log: {log_path})")
    return code, seconds, log_path, last_error


_UTIL_RE = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%")
_FMAX_RE = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((PASS|FAIL) at "
                      r"([\d.]+) MHz\)")


def _parse_nextpnr(result, log_path, report_path, target_mhz):
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    # Utilisation is printed before placement, so it is known even when the design
    # does not fit (the JSON report is only written by a complete run).
    for line in text.splitlines():
        m = _UTIL_RE.match(line)
        if m:
            result.utilisation[m.group(1)] = [int(m.group(2)), int(m.group(3))]
    fmax = {}
    if report_path.exists():
        report = json.loads(report_path.read_text())
        for cell, v in report.get("utilization", {}).items():
            result.utilisation[cell] = [int(v["used"]), int(v["available"])]
        for clock, v in report.get("fmax", {}).items():
            fmax[clock] = (float(v["achieved"]), float(v["constraint"]))
        paths = report.get("critical_paths", [])
        core = [p for p in paths
                if _is_core(fmax.get(p.get("from"), (0, 0))[1], target_mhz)
                or _is_core(fmax.get(p.get("to"), (0, 0))[1], target_mhz)]
        if core or paths:
            result.critical_path = _describe_path((core or paths)[0])
    else:
        for m in _FMAX_RE.finditer(text):
            fmax[m.group(1)] = (float(m.group(2)), float(m.group(4)))
    # The core clock is the one constrained to the config's frequency (the oscillator
    # only feeds the PLL).
    core_clocks = [a for a, c in fmax.values() if _is_core(c, target_mhz)]
    if core_clocks:
        result.fmax_mhz = min(core_clocks)


def _is_core(constraint_mhz, target_mhz):
    # nextpnr derives the PLL output's constraint from the oscillator's (e.g. 36.0023 MHz
    # for 36 MHz after float rounding), so compare loosely.
    return abs(constraint_mhz - target_mhz) <= 1e-3 * target_mhz


def _describe_path(path):
    out = []
    for seg in path.get("path", []):
        if seg.get("type") == "clk-to-q" or seg.get("type") in ("logic", "routing", "setup",
                                                               "source", "sink"):
            frm = seg.get("from", {})
            to = seg.get("to", {})
            out.append(f"{seg.get('type'):<9} {seg.get('delay', 0):6.2f}  "
                       f"{frm.get('cell', '')}.{frm.get('port', '')} → "
                       f"{to.get('cell', '')}.{to.get('port', '')}"
                       + (f"  [{seg['net']}]" if seg.get("net") else ""))
    return out


def build(board="icebreaker", *, design="full", config=None, build_dir=None, seed=1,
          progress=True):
    """Build the bitstream for ``board``; never raises for a design that misses.

    Parameters
    ----------
    board : str
        ``icebreaker`` or ``ulx3s-85f``.
    design : str
        ``full`` (``BoardTop``: the accelerator) or ``array`` (:class:`ArraySmokeTop`, a
        quick check of the flow, PLL and multipliers).
    config : AcceleratorConfig, optional
        Default: the board's configuration from ``hw/config.py``.
    build_dir : path, optional
        Default ``build/<board>`` (``build/<board>-array`` for the smoke design).
    seed : int
        nextpnr placement seed.
    progress : bool
        Show per-step status on stderr.

    Returns
    -------
    BuildResult
        Check ``.ok``; ``.report()`` is the summary the CLI prints.
    """
    from ..sim.toolchain import setup_yowasp_env
    env = setup_yowasp_env(dict(os.environ))
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
    platform, board_top, config = _make_top(board, design, config)
    family = "ice40" if platform.device.lower().startswith("ice40") else "ecp5"
    if build_dir is None:
        build_dir = Path("build") / (board if design == "full" else f"{board}-{design}")
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    name = "top"
    result = BuildResult(board=board, family=family, build_dir=build_dir,
                         target_mhz=config.clock_hz / 1e6)
    status = _Status(progress)

    started = time.monotonic()
    plan = platform.build(board_top, name=name, build_dir=str(build_dir), do_build=False,
                          **toolchain_overrides(family, seed, name))
    plan.extract(str(build_dir))
    result.seconds["elaborate"] = time.monotonic() - started
    status.done(f"[0] elaborated {design} design for {board} "
                f"({result.seconds['elaborate']:.0f}s) into {build_dir}")

    commands = json.loads((build_dir / f"build_{name}.json").read_text())["commands"]
    for index, cmd in enumerate(commands, 1):
        code, seconds, log_path, error = _run_step(index, len(commands), cmd, env, build_dir,
                                                   status)
        result.seconds[cmd[0]] = seconds
        result.logs[cmd[0]] = log_path
        if cmd[0].startswith("nextpnr"):
            result.fits = code == 0
            _parse_nextpnr(result, log_path, build_dir / f"{name}_report.json",
                           result.target_mhz)
        if code != 0:
            result.error = f"{cmd[0]} failed: {error or 'see ' + str(log_path)}"
            return result
        if cmd[0] == "yosys" and family == "ice40":
            try:
                check_hand_dsps(build_dir, name)
            except BuildError as e:
                result.error = str(e)
                return result
    bitstream = build_dir / (f"{name}.bin" if family == "ice40" else f"{name}.bit")
    result.bitstream = bitstream if bitstream.exists() else None
    return result


def configure(parser):
    from ..hw.boards import BOARDS
    parser.add_argument("--board", default="icebreaker", choices=list(BOARDS),
                        help="board to build for (default: icebreaker)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the result as JSON (board, fits, fmax_mhz, "
                             "target_mhz, utilisation, bitstream)")
    parser.add_argument("--program", action="store_true",
                        help="program the board afterwards (iceprog / openFPGALoader)")
    parser.add_argument("--seed", type=int, default=1,
                        help="nextpnr placement seed (default: 1); try others on a near miss")
    parser.add_argument("--design", choices=DESIGNS, default="full",
                        help="full: the accelerator (default); array: only the systolic "
                             "array behind the UART, a quick check of the toolchain")
    parser.add_argument("--build-dir", metavar="DIR",
                        help="output folder (default: build/<board>, or "
                             "build/<board>-array for --design array)")
    parser.add_argument("--clock-mhz", type=float, metavar="MHZ",
                        help="core clock instead of the board configuration's (the PLL "
                             "must be able to make it exactly)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also synthesise without flattening and print LUT/FF/DSP/RAM "
                             "per unit (automatic when the design does not fit)")


def _program(board, bitstream):
    from ..hw.boards import BOARDS
    tool = BOARDS[board][3]
    exe = shutil.which(tool)
    if exe is None:
        where = {"iceprog": "the IceStorm tools (e.g. `apt install fpga-icestorm`, or the "
                            "OSS CAD Suite)",
                 "openFPGALoader": "openFPGALoader (e.g. `apt install openfpgaloader`, or "
                                   "the OSS CAD Suite)"}[tool]
        print(f"cannot program: {tool} is not on PATH; it comes with {where}. The bitstream "
              f"is {bitstream}", file=sys.stderr)
        return 1
    argv = [exe, str(bitstream)] if tool == "iceprog" else [exe, "-b", "ulx3s", "-m",
                                                             str(bitstream)]
    print("programming:", " ".join(argv))
    return subprocess.call(argv)


def run(args):
    from ..hw.boards import BOARDS
    from ..hw.config import get_config
    config = get_config(BOARDS[args.board][2])
    if args.clock_mhz is not None:
        if not args.clock_mhz > 0:
            print(f"error: --clock-mhz must be positive, not {args.clock_mhz}",
                  file=sys.stderr)
            return 2
        config = config.with_(clock_hz=round(args.clock_mhz * 1e6))
    try:
        result = build(args.board, design=args.design, config=config,
                       build_dir=args.build_dir, seed=args.seed)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result.report())
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    over = [cell for cell, (used, avail) in result.utilisation.items() if used > avail]
    if args.breakdown or over:
        if over:
            print(f"over capacity: {', '.join(over)}; what uses the resources, per unit "
                  f"(post-synthesis cells, not flattened):")
        table = format_breakdown(resource_breakdown(result.build_dir, result.family))
        (result.build_dir / "breakdown.txt").write_text(table + "\n")
        print(table)
    if not result.fits:
        print(f"build FAILED: the design does not fit {args.board} or a tool failed "
              f"(logs in {result.build_dir})", file=sys.stderr)
        return 1
    if not result.meets_timing:
        print(f"build FAILED: timing missed ({result.fmax_mhz} MHz < "
              f"{result.target_mhz} MHz); try another --seed or reduce the clock",
              file=sys.stderr)
        return 1
    if result.bitstream is None:
        print(f"build FAILED: no bitstream ({result.error})", file=sys.stderr)
        return 1
    if args.program:
        return _program(args.board, result.bitstream)
    return 0


# Cell types counted per module by :func:`resource_breakdown`, per family: column -> types.
_BREAKDOWN = {
    "ice40": {"LUT4": ("SB_LUT4",), "FF": ("SB_DFF",), "CARRY": ("SB_CARRY",),
              "DSP": ("SB_MAC16",), "EBR": ("SB_RAM40_4K",), "SPRAM": ("SB_SPRAM256KA",)},
    "ecp5": {"LUT4": ("LUT4",), "FF": ("TRELLIS_FF",), "CARRY": ("CCU2C",),
             "DSP": ("MULT18X18D",), "EBR": ("DP16KD",)},
}


def resource_breakdown(build_dir, family, *, name="top", depth=4, progress=True):
    """Synthesise again without flattening and count cells per instance (hierarchical).

    This is what to read when a design does not fit: which unit spends the LUTs, DSPs
    and RAMs. Numbers are post-synthesis (before packing), so LUT4 + FF slightly
    over-count logic cells (a LUT and its FF share one). Takes as long as synthesis.

    Returns
    -------
    list of (instance path, {column: count}), depth-first, down to ``depth`` levels.
    """
    from ..sim.toolchain import setup_yowasp_env
    env = setup_yowasp_env(dict(os.environ))
    build_dir = Path(build_dir)
    synth = "synth_ice40" if family == "ice40" else "synth_ecp5"
    script = (f"read_rtlil {name}.il; {YOSYS_WORKAROUND}; {synth} -noflatten -top {name}; "
              f"write_json {name}_hier.json")
    cmd = ["yosys", "-l", "breakdown.rpt", "-p", script]
    (build_dir / "breakdown.cmd").write_text(" ".join(cmd) + "\n")
    code, _, log_path, error = _run_step("B", "B", cmd, env, build_dir, _Status(progress))
    if code != 0:
        raise BuildError(f"hierarchical synthesis failed: {error} (log: {log_path})")
    return breakdown_from_netlist(build_dir / f"{name}_hier.json", family, name=name,
                                  depth=depth)


def breakdown_from_netlist(path, family, *, name="top", depth=4):
    """The counting half of :func:`resource_breakdown`, from a non-flattened JSON netlist."""
    modules = json.loads(Path(path).read_text())["modules"]
    # Library cells (SB_LUT4, ...) are modules too, marked as black/white boxes.
    modules = {k: v for k, v in modules.items()
               if not {"blackbox", "whitebox"} & set(v.get("attributes", {}))}
    columns = _BREAKDOWN[family]

    def own(module):
        counts = dict.fromkeys(columns, 0)
        for cell in modules[module]["cells"].values():
            for col, prefixes in columns.items():
                if any(cell["type"].startswith(p) for p in prefixes):
                    counts[col] += 1
        return counts

    totals = {}

    def total(module):
        if module not in totals:
            counts = own(module)
            for cell in modules[module]["cells"].values():
                if cell["type"] in modules:
                    for col, v in total(cell["type"]).items():
                        counts[col] += v
            totals[module] = counts
        return totals[module]

    rows = []

    def walk(module, path, level):
        rows.append((path, total(module)))
        if level >= depth:
            return
        children = [(cname, cell["type"]) for cname, cell in modules[module]["cells"].items()
                    if cell["type"] in modules]
        for cname, ctype in sorted(children, key=lambda c: -sum(total(c[1]).values())):
            walk(ctype, f"{path}.{cname.lstrip(chr(92))}", level + 1)

    walk(name, name, 0)
    return rows


def format_breakdown(rows):
    """A table of :func:`resource_breakdown` rows."""
    cols = list(rows[0][1]) if rows else []
    out = [f"{'instance':<48}" + "".join(f"{c:>7}" for c in cols)]
    for path, counts in rows:
        out.append(f"{path:<48}" + "".join(f"{counts[c]:>7}" for c in cols))
    return "\n".join(out)
