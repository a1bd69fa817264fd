"""``fpgacnn sim-board``: the simulated board (Verilator) on a local TCP port.

Errors go to stderr as one line: exit status 2 for a bad argument, 1 when the simulated
board cannot be built or started.
"""

import sys

from ..hw.config import CONFIGS


def configure(parser):
    parser.add_argument("--port", type=int, default=9000,
                        help="TCP port on 127.0.0.1 (default 9000; 0 picks a free one)")
    parser.add_argument("--board", default="icebreaker", choices=sorted(CONFIGS),
                        help="board configuration to simulate (default icebreaker)")


def run(args):
    from ..sim.simboard import SimBoardError, serve_forever
    if not 0 <= args.port < 65536:
        print(f"error: --port {args.port} is not a TCP port (0..65535)", file=sys.stderr)
        return 2
    try:
        return serve_forever(args.board, port=args.port)
    except (SimBoardError, OSError) as e:
        # A failed Verilator build appends its log's tail; the first line names the log.
        print(f"error: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
        return 1
