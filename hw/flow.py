"""Bitstream builds as a library: ``build_board("icebreaker")`` returns a :class:`BuildReport`.

The flow is Amaranth's own (``platform.build(..., do_build=False)`` writes the yosys
script, constraints and the list of commands to ``build/<board>/``), but the commands
run here, one by one (:func:`fpgacnn.hw.toolchain.run_step`), so that each step shows a
one-line live status instead of a wall of log. Logs stay in the build folder:
``top.rpt`` (yosys), ``top.tim`` (nextpnr), ``<n>-<tool>.out`` (console output),
``top_report.json`` (nextpnr's report), ``fpgacnn_build.json`` (the report of a
complete build, which :func:`load_build` re-uses). The tools are the venv's YoWASP
programs (:func:`fpgacnn.hw.toolchain.setup_yowasp_env`).

Toolchain options added to Amaranth's defaults
(:func:`~fpgacnn.hw.toolchain.toolchain_overrides`):

* iCE40: **no** ``synth_ice40 -dsp``, on purpose. Its ``ice40_dsp`` pass matches every
  ``SB_MAC16`` cell, hand-instantiated ones included, and rewrites it as a 16×16
  multiplier (``MODE_8x8 = 0``, output selects, product registers; see
  ``techlibs/ice40/ice40_dsp.cc`` in yosys): the array's two-products-per-block
  multipliers would silently compute garbage on the board. The array's multipliers are
  hand-made ``SB_MAC16`` blocks already; other multiplications stay in the fabric. After
  synthesis the build checks that every hand-made 8×8 block is still an 8×8 block
  (:func:`~fpgacnn.hw.build_report.check_hand_dsps`);
* nextpnr: a JSON report, ``--timing-allow-fail`` and ``--seed``;
* yosys: :data:`~fpgacnn.hw.toolchain.YOSYS_PREP` before synthesis.

This module is the host side of the board tops in :mod:`fpgacnn.hw.boards`; ``fpgacnn
build`` and ``fpgacnn bench`` only parse arguments and print what it returns.
"""

import hashlib
import json
import os
import time
from pathlib import Path

from .boards import BOARDS, DESIGNS, get_board
from .build_report import (
    BuildError,
    BuildReport,
    breakdown_from_netlist,
    check_hand_dsps,
    format_breakdown,
    read_nextpnr,
)
from .toolchain import YOSYS_PREP, Status, run_step, setup_yowasp_env, toolchain_overrides

__all__ = [
    "BOARDS",
    "DESIGNS",
    "BuildError",
    "BuildReport",
    "build_board",
    "default_build_dir",
    "design_digest",
    "format_breakdown",
    "load_build",
    "resource_breakdown",
    "synthesize",
]

#: File in the build folder holding a complete build's :class:`BuildReport`.
RECORD_NAME = "fpgacnn_build.json"
#: File in the build folder recording a synthesis-only run (:func:`synthesize`).
SYNTH_RECORD_NAME = "fpgacnn_synth.json"

def default_build_dir(board, design="full"):
    """``build/<board>``, or ``build/<board>-<design>`` for a design other than ``full``."""
    return Path("build") / (board if design == "full" else f"{board}-{design}")


def _plan(board, design, config, seed):
    # Amaranth's build plan (RTLIL, constraints, yosys script, tool commands), unbuilt.
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
    platform, board_top, config = get_board(board).make(config, design=design)
    plan = platform.build(board_top, name="top", do_build=False,
                          **toolchain_overrides(seed, "top"))
    return plan, config


def _digest(plan):
    rtlil = plan.files["top.il"]
    return hashlib.sha256(rtlil.encode() if isinstance(rtlil, str) else rtlil).hexdigest()


def design_digest(board, *, design="full", config=None):
    """SHA-256 of the design's RTLIL as a build would write it (elaboration only, no tools).

    Two builds with the same digest (and seed) synthesise the same netlist.
    """
    plan, _ = _plan(board, design, config, 1)
    return _digest(plan)


def load_build(board, *, design="full", config=None, build_dir=None, seed=None):
    """The report of an earlier complete build of exactly this design, or None.

    Parameters are those of :func:`build_board`. A build is re-used when its folder
    holds a report of a successful build (fits, meets timing, bitstream present) whose
    RTLIL digest and seed match the current gateware's.

    Returns
    -------
    BuildReport or None
        With ``reused = True``.
    """
    build_dir = Path(build_dir or default_build_dir(board, design))
    seed = get_board(board).seed if seed is None else seed
    try:
        report = BuildReport.from_record(json.loads((build_dir / RECORD_NAME).read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not (report.ok and report.bitstream.exists() and report.seed == seed
            and report.board == board and report.design == design):
        return None
    if report.rtlil_sha256 != design_digest(board, design=design, config=config):
        return None
    report.reused = True
    return report


def build_board(board="icebreaker", *, design="full", config=None, build_dir=None, seed=None,
                progress=True):
    """Build the bitstream for ``board``; a design that misses is reported, not raised.

    Parameters
    ----------
    board : str
        A key of :data:`~fpgacnn.hw.boards.BOARDS`: ``icebreaker`` or ``ulx3s-85f``.
    design : str
        ``full`` (``BoardTop``: the accelerator) or ``array``
        (:class:`~fpgacnn.hw.boards.ArraySmokeTop`, a quick check of the flow, PLL and
        multipliers).
    config : AcceleratorConfig, optional
        Default: the board's configuration from :mod:`fpgacnn.hw.config`.
    build_dir : path, optional
        Default :func:`default_build_dir`.
    seed : int, optional
        nextpnr placement seed; default the board's (:attr:`~fpgacnn.hw.boards.Board.seed`).
    progress : bool
        Show per-step status on stderr.

    Returns
    -------
    BuildReport
        Check ``.ok`` (or ``.fits`` and ``.meets_timing``); ``.summary()`` is the table
        ``fpgacnn build`` prints.

    Raises
    ------
    ValueError
        Unknown board or design, a clock the PLL cannot make, a bad seed.
    """
    env = setup_yowasp_env(dict(os.environ))
    status = Status(progress)
    started = time.monotonic()
    if seed is None:
        seed = get_board(board).seed        # refuses an unknown board too
    plan, config = _plan(board, design, config, seed)   # refuses bad arguments first
    build_dir = Path(build_dir or default_build_dir(board, design)).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / RECORD_NAME).unlink(missing_ok=True)
    plan.extract(str(build_dir))
    report = BuildReport(board=board, family=get_board(board).family, build_dir=build_dir,
                         design=design, target_mhz=config.clock_hz / 1e6, seed=seed,
                         rtlil_sha256=_digest(plan))
    report.seconds["elaborate"] = time.monotonic() - started
    status.done(f"[0] elaborated {design} design for {board} "
                f"({report.seconds['elaborate']:.0f}s) into {build_dir}")
    _run_plan(report, env, status)
    if report.error is None:
        bitstream = build_dir / get_board(board).bitstream_name
        report.bitstream = bitstream if bitstream.exists() else None
    if report.ok:
        (build_dir / RECORD_NAME).write_text(json.dumps(report.to_record(), indent=2) + "\n")
    return report


def _run_plan(report, env, status):
    # The plan's commands in order; stops at the first failure, recorded in report.error.
    build_dir = report.build_dir
    commands = json.loads((build_dir / "build_top.json").read_text())["commands"]
    for index, cmd in enumerate(commands, 1):
        tool = cmd[0]
        step = run_step(index, len(commands), cmd, env, build_dir, status)
        report.seconds[tool], report.logs[tool] = step.seconds, step.log
        if tool.startswith("nextpnr"):
            report.fits = step.code == 0
            report.utilisation, report.fmax_mhz, report.critical_path = read_nextpnr(
                step.log, build_dir / "top_report.json", report.target_mhz)
        if step.code != 0:
            report.error = f"{tool} failed: {step.error or 'see ' + str(step.log)}"
            return
        if tool == "yosys" and report.family == "ice40":
            try:
                check_hand_dsps(build_dir)
            except BuildError as e:
                report.error = str(e)
                return


def synthesize(board="icebreaker", *, design="full", config=None, build_dir=None,
               progress=True):
    """The synthesized netlist of the bitstream flow: yosys' ``top.json``, as
    :func:`build_board` makes it, without place and route.

    Runs only the first command of the same build plan (same RTLIL, same yosys script),
    so the netlist is the one a bitstream of this gateware is made from. Re-uses the
    folder's netlist when a complete build (:data:`RECORD_NAME`) or an earlier call
    (:data:`SYNTH_RECORD_NAME`) made it from the same RTLIL; otherwise synthesises into
    the folder, replacing a stale build there (its record is removed first).

    Parameters are those of :func:`build_board`.

    Returns
    -------
    Path
        The netlist JSON (``read_json`` it into yosys, e.g. to ``write_verilog``).

    Raises
    ------
    BuildError
        If yosys fails (the message names its log) or, on the iCE40, rewrote a
        hand-made 8×8 DSP block.
    """
    plan, _ = _plan(board, design, config, 1)
    digest = _digest(plan)
    build_dir = Path(build_dir or default_build_dir(board, design)).resolve()
    netlist = build_dir / "top.json"
    for name in (RECORD_NAME, SYNTH_RECORD_NAME):
        try:
            record = json.loads((build_dir / name).read_text())
        except (OSError, ValueError):
            continue
        same = (record.get("rtlil_sha256"), record.get("board"), record.get("design"))
        if same != (digest, board, design) or not netlist.exists():
            continue
        # A synthesis-only record also names its netlist's hash: a later build_board
        # that stopped after yosys may have replaced top.json without removing it.
        if name == RECORD_NAME or record.get("netlist_sha256") == _file_digest(netlist):
            return netlist
    env = setup_yowasp_env(dict(os.environ))
    build_dir.mkdir(parents=True, exist_ok=True)
    for name in (RECORD_NAME, SYNTH_RECORD_NAME):
        (build_dir / name).unlink(missing_ok=True)
    plan.extract(str(build_dir))
    commands = json.loads((build_dir / "build_top.json").read_text())["commands"]
    step = run_step(1, len(commands), commands[0], env, build_dir, Status(progress))
    if step.code != 0:
        raise BuildError(f"synthesis failed: {step.error or 'see its log'} (log: {step.log})")
    if get_board(board).family == "ice40":
        check_hand_dsps(build_dir)
    record = {"board": board, "design": design, "rtlil_sha256": digest,
              "netlist_sha256": _file_digest(netlist)}
    (build_dir / SYNTH_RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return netlist


def _file_digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resource_breakdown(build_dir, family, *, name="top", depth=4, progress=True):
    """Synthesise a build's RTLIL again without flattening and count cells per instance.

    This is what to read when a design does not fit: which unit spends the LUTs, DSPs
    and RAMs. Numbers are post-synthesis (before packing), so LUT4 + FF slightly
    over-count logic cells (a LUT and its FF share one). Takes as long as synthesis.

    Returns
    -------
    list of (instance path, {column: count})
        See :func:`~fpgacnn.hw.build_report.breakdown_from_netlist`;
        :func:`~fpgacnn.hw.build_report.format_breakdown` makes it a table.

    Raises
    ------
    BuildError
        If yosys fails; the message names its log.
    """
    env = setup_yowasp_env(dict(os.environ))
    build_dir = Path(build_dir)
    synth = "synth_ice40" if family == "ice40" else "synth_ecp5"
    script = (f"read_rtlil {name}.il; {YOSYS_PREP}; {synth} -noflatten -top {name}; "
              f"write_json {name}_hier.json")
    cmd = ["yosys", "-l", "breakdown.rpt", "-p", script]
    (build_dir / "breakdown.cmd").write_text(" ".join(cmd) + "\n")
    step = run_step("B", "B", cmd, env, build_dir, Status(progress))
    if step.code != 0:
        raise BuildError(f"hierarchical synthesis failed: {step.error} (log: {step.log})")
    return breakdown_from_netlist(build_dir / f"{name}_hier.json", family, name=name,
                                  depth=depth)

