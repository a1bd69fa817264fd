"""One module per ``fpgacnn`` subcommand (see fpgacnn.cli), and the arguments they share."""


def add_board_argument(parser, purpose):
    """``--board``, one of the supported boards, default icebreaker; ``purpose`` completes
    "board to ..." in the help text."""
    from ..hw.boards import BOARDS
    parser.add_argument("--board", default="icebreaker", choices=list(BOARDS),
                        help=f"board to {purpose} (default: icebreaker)")
