"""``fpgacnn sim-board``: the simulated board (Verilator) on a local TCP port.

Errors go to stderr as one line: exit status 2 for a bad argument, 1 when the simulated
board cannot be built or started.
"""

import sys

from . import add_board_argument


def configure(parser):
    parser.add_argument("--port", type=int, default=9000,
                        help="TCP port on 127.0.0.1 (default 9000; 0 picks a free one)")
    add_board_argument(parser, "simulate")
    parser.add_argument("--usb-latency-ms", type=float, default=0, metavar="MS",
                        help="model a real board's FT2232H USB path in simulated time: 1 ms "
                             "USB frames to the board, answers held until 510 bytes wait or "
                             "this latency timer expires (Linux default 16; default 0: an "
                             "ideal link)")


def run(args):
    from ..sim.simboard import SimBoardError, serve_forever
    if not 0 <= args.port < 65536:
        print(f"error: --port {args.port} is not a TCP port (0..65535)", file=sys.stderr)
        return 2
    if not 0 <= args.usb_latency_ms <= 255:
        print(f"error: --usb-latency-ms {args.usb_latency_ms:g}: choose 0..255 ms (the "
              f"FT2232H latency timer's range)", file=sys.stderr)
        return 2
    try:
        return serve_forever(args.board, port=args.port, usb_latency_ms=args.usb_latency_ms)
    except (SimBoardError, OSError) as e:
        # A failed Verilator build appends its log's tail; the first line names the log.
        print(f"error: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
        return 1
