"""``fpgacnn sim-board``: the simulated board (Verilator) on a local TCP port."""

from ..hw.config import CONFIGS


def configure(parser):
    parser.add_argument("--port", type=int, default=9000,
                        help="TCP port on 127.0.0.1 (default 9000; 0 picks a free one)")
    parser.add_argument("--board", default="icebreaker", choices=sorted(CONFIGS),
                        help="board configuration to simulate (default icebreaker)")


def run(args):
    from ..sim.simboard import SimBoardError, serve_forever
    if not 0 <= args.port < 65536:
        print(f"error: --port {args.port} is not a TCP port (0..65535)")
        return 2
    try:
        return serve_forever(args.board, port=args.port)
    except SimBoardError as e:
        print(f"error: {e}")
        return 1
