"""``fpgacnn build``: a bitstream for a board, with what it used of the chip and its Fmax.

Argument parsing and printing only; the flow is :func:`fpgacnn.hw.flow.build_board`.
Exit status: 0 when the design fits, meets timing and has a bitstream (and, with
``--program``, the programmer's status); 1 when it does not; 2 for bad arguments.
"""

import json
import sys
from pathlib import Path

from ..hw.boards import DESIGNS
from . import add_baud_argument, add_board_argument, board_config


def configure(parser):
    add_board_argument(parser, "build for")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the result as JSON (board, fits, fmax_mhz, "
                             "target_mhz, utilisation, bitstream)")
    parser.add_argument("--program", action="store_true",
                        help="program the board afterwards (its SRAM; see `fpgacnn program`)")
    parser.add_argument("--flash", action="store_true",
                        help="with --program: write the board's SPI flash instead, so the "
                             "design survives a power cycle")
    parser.add_argument("--seed", type=int, default=None,
                        help="nextpnr placement seed (default: the board's, one that meets "
                             "its clock); try others on a near miss")
    parser.add_argument("--design", choices=list(DESIGNS), default="full",
                        help="full: the accelerator (default); pipeline: the board's "
                             "layer pipeline for one network's layer shapes (ulx3s-85f: "
                             "LeNet-5); array: only the systolic array behind the UART, a "
                             "quick check of the toolchain")
    parser.add_argument("--build-dir", metavar="DIR",
                        help="output folder (default: build/<board>, or "
                             "build/<board>-array for --design array)")
    parser.add_argument("--clock-mhz", type=float, metavar="MHZ",
                        help="core clock instead of the board configuration's (the PLL "
                             "must be able to make it exactly)")
    add_baud_argument(parser, "the bitstream's link (the host must use the same)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also synthesise without flattening and print LUT/FF/DSP/RAM "
                             "per unit (automatic when the design does not fit)")


def _error(message, status):
    print(f"error: {message}", file=sys.stderr)
    return status


def _print_breakdown(report):
    from ..hw.flow import BuildError, format_breakdown, resource_breakdown
    if report.over_capacity:
        print(f"over capacity: {', '.join(report.over_capacity)}; what uses the resources, "
              f"per unit (post-synthesis cells, not flattened):")
    try:
        table = format_breakdown(resource_breakdown(report.build_dir, report.family))
    except BuildError as e:
        print(f"breakdown: {e}", file=sys.stderr)
        return
    (report.build_dir / "breakdown.txt").write_text(table + "\n")
    print(table)


def _verdict(report):
    """Exit status of a finished build, with the one-line reason on stderr."""
    if not report.fits:
        print(f"build FAILED: the design does not fit {report.board} or a tool failed "
              f"(logs in {report.build_dir})", file=sys.stderr)
        return 1
    if not report.meets_timing:
        print(f"build FAILED: timing missed ({report.fmax_mhz} MHz < "
              f"{report.target_mhz} MHz); try another --seed or reduce the clock",
              file=sys.stderr)
        return 1
    if report.bitstream is None:
        print(f"build FAILED: no bitstream ({report.error})", file=sys.stderr)
        return 1
    return 0


def run(args):
    from ..hw.flow import build_board
    try:
        config = board_config(args.board, args.baud)
    except ValueError as e:
        return _error(e, 2)
    if args.clock_mhz is not None:
        if not args.clock_mhz > 0:
            return _error(f"--clock-mhz must be positive, not {args.clock_mhz}", 2)
        config = config.with_(clock_hz=round(args.clock_mhz * 1e6))
    try:
        report = build_board(args.board, design=args.design, config=config,
                             build_dir=args.build_dir, seed=args.seed)
    except ValueError as e:
        return _error(e, 2)
    except FileNotFoundError as e:          # a YoWASP tool is not installed
        return _error(e, 1)
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if args.breakdown or report.over_capacity:
        _print_breakdown(report)
    status = _verdict(report)
    if status == 0 and args.program:
        from .program import program_board
        return program_board(args.board, report.bitstream, flash=args.flash)
    return status
