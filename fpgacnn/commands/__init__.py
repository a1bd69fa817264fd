"""One module per ``fpgacnn`` subcommand (see fpgacnn.cli), and the arguments they share."""


def add_board_argument(parser, purpose):
    """``--board``, one of the supported boards, default icebreaker; ``purpose`` completes
    "board to ..." in the help text."""
    from ..hw.boards import BOARDS
    parser.add_argument("--board", default="icebreaker", choices=list(BOARDS),
                        help=f"board to {purpose} (default: icebreaker)")


def add_baud_argument(parser, what):
    """``--baud``: the UART rate of a build (default: the board configuration's);
    ``what`` says what it applies to."""
    parser.add_argument("--baud", type=int, default=None, metavar="BAUD",
                        help=f"UART baud rate of {what} (default: the board's, 3000000; "
                             f"the iCEBreaker's FT2232H also does 6000000 = 5 clocks per "
                             f"bit at 30 MHz)")


def board_config(board, baud=None):
    """The configuration of ``board``, with the UART at ``baud`` when given.

    Raises
    ------
    ValueError
        One line naming the value and the fix: a rate the board's USB-UART bridge cannot
        send, or one the UART cannot make from the core clock (below 4 clocks per bit, or
        more than 2 % off).
    """
    from ..hw.boards import get_board
    from ..hw.uart import baud_divisor
    from ..sim.benchmark import LINK_BRIDGES
    config = get_board(board).config
    if baud is None:
        return config
    bridge, most = LINK_BRIDGES[board]
    if not 0 < baud <= most:
        raise ValueError(f"--baud {baud}: the {board}'s {bridge} bridge does 1..{most:,} "
                         f"baud; choose a rate in that range (e.g. {config.baud})")
    baud_divisor(config.clock_hz, baud)     # says why a rate does not suit the clock
    return config.with_(baud=baud)


def checked_link_config(args):
    """``board_config(args.board, args.baud)`` after checking ``args.usb_latency_ms``
    (the FT2232H latency timer's range); None after printing the one-line error (the
    command then exits with status 2)."""
    import sys
    if not 0 <= args.usb_latency_ms <= 255:
        print(f"error: --usb-latency-ms {args.usb_latency_ms:g}: choose 0..255 ms (the "
              f"FT2232H latency timer's range)", file=sys.stderr)
        return None
    try:
        return board_config(args.board, args.baud)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
