"""``fpgacnn sim-board``: the simulated board (Verilator) on a local TCP port.

Errors go to stderr as one line: exit status 2 for a bad argument, 1 when the simulated
board cannot be built or started.
"""

import sys

from . import add_baud_argument, add_board_argument, checked_link_config


def configure(parser):
    parser.add_argument("--port", type=int, default=9000,
                        help="TCP port on 127.0.0.1 (default 9000; 0 picks a free one)")
    add_board_argument(parser, "simulate")
    add_baud_argument(parser, "the simulated board (clients on the socket need not know it)")
    parser.add_argument("--usb-latency-ms", type=float, default=0, metavar="MS",
                        help="model a real board's FT2232H USB path in simulated time: 1 ms "
                             "USB frames to the board, answers held until 510 bytes wait or "
                             "this latency timer expires (Linux default 16; default 0: an "
                             "ideal link)")
    parser.add_argument("--design", choices=("full", "pipeline"), default="full",
                        help="full: the board's core (default); pipeline: its layer "
                             "pipeline (ulx3s-85f: LeNet-5's layer shapes)")


def run(args):
    from ..sim.simboard import SimBoardError, serve_forever
    if not 0 <= args.port < 65536:
        print(f"error: --port {args.port} is not a TCP port (0..65535)", file=sys.stderr)
        return 2
    config = checked_link_config(args)
    if config is None:
        return 2
    top = None
    if args.design == "pipeline":
        from ..hw.boards import pipeline_board_top
        try:
            top = pipeline_board_top(config, debug=True)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        config = top.core.config
    try:
        return serve_forever(config, port=args.port, usb_latency_ms=args.usb_latency_ms,
                             top=top)
    except (SimBoardError, OSError) as e:
        # A failed Verilator build appends its log's tail; the first line names the log.
        print(f"error: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
        return 1
