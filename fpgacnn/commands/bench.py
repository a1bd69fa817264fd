"""``fpgacnn bench``: measured performance of a board build against its physical limits.

Everything in the table is measured, not assumed:

* cycles per LeNet-5 inference (total and per layer) from the board's own cycle
  counters, running the real top-level gateware on the simulated board;
* sustained images/s and latency of a board at the build's clock and baud rate,
  measured in *simulated* time on the same run (the UART is simulated bit by bit, so
  link time and compute time overlap exactly as on the board; ``--usb-latency-ms``
  adds the FT2232H's USB path): sustained is the steady state, the slope between one
  image and the batch on the board's pins, and the batch's end-to-end rate (one
  image's latency included) is printed next to it (``sim.simboard.sustained_rate``);
* Fmax and utilisation from the board's nextpnr report (a build is re-used when its
  netlist matches the current gateware, otherwise built);
* the limits those follow from: the multipliers' peak MAC/s at Fmax and the link ceiling
  of the board's USB-UART bridge; for reference, the simulated board's and the golden
  model's speed on this machine;
* ``post_synthesis``: the first ``--post-synthesis`` digits on the board top's yosys
  netlist under Verilator (:mod:`fpgacnn.sim.netlist`), bit-exact or not.
"""

import sys
from pathlib import Path

import numpy as np

from ..hw.config import get_config
from ..sim.benchmark import build_figures, collect_figures, format_table, golden
from . import add_baud_argument, add_board_argument, checked_link_config
from .bench_network import NETWORK_HELP, write_json


def configure(parser):
    add_board_argument(parser, "measure")
    add_baud_argument(parser, "the simulated board and the build measured")
    parser.add_argument("--images", type=int, default=20,
                        help="held-out digits streamed through the simulated board (default 20)")
    parser.add_argument("--network", default="lenet5", help=NETWORK_HELP)
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write every figure as JSON under stable keys")
    parser.add_argument("--usb-latency-ms", type=float, default=0, metavar="MS",
                        help="model the FT2232H USB path with this latency timer (1 ms USB "
                             "frames; Linux default 16; default 0: an ideal link)")
    build = parser.add_mutually_exclusive_group()
    build.add_argument("--rebuild", action="store_true",
                       help="build the bitstream even if a matching build exists")
    build.add_argument("--no-build", action="store_true",
                       help="skip the bitstream figures (Fmax, utilisation)")
    parser.add_argument("--design", choices=("full", "pipeline"), default="full",
                        help="full: the board's core (default); pipeline: its layer "
                             "pipeline (`fpgacnn build --design pipeline`; ulx3s-85f, "
                             "lenet5): compute figures from images streamed through it")
    parser.add_argument("--post-synthesis", type=int, default=None, metavar="N",
                        help="digits run on the synthesized netlist (gate level, slow: "
                             "minutes); 0 skips it (default 3, or --images if fewer; "
                             "lenet5 only)")


def run(args):
    from ..sim.netlist import post_synthesis_figures
    netlist_asked = args.post_synthesis is not None
    if args.post_synthesis is None:     # the default never exceeds --images
        args.post_synthesis = min(3, args.images)
    if not 1 <= args.images <= 1000 or not 0 <= args.post_synthesis <= args.images:
        print(f"error: --images {args.images} --post-synthesis {args.post_synthesis}: "
              f"choose 1..1000 images, 0..images of them on the netlist", file=sys.stderr)
        return 2
    config = checked_link_config(args)
    if config is None:
        return 2
    if args.design == "pipeline":
        return run_pipeline(args, config, netlist_asked=netlist_asked)
    if args.network != "lenet5":        # random parameters and images (bench_network)
        from . import bench_network
        return bench_network.run(args, config)
    measured = _measure_lenet5(args, config, "; the figures below would be meaningless")
    if measured is None:
        return 1
    net, params, x_u8, expected, golden_ips, counters, rate = measured
    cycles = counters[:, 0]
    if not np.all(cycles == cycles[0]):
        print(f"note: cycles vary between images ({cycles.min()}..{cycles.max()})",
              file=sys.stderr)
    # Another --baud builds and synthesises in a folder of its own: the board's build stays.
    folder = None if config == get_config(args.board) else \
        Path("build") / f"{args.board}-{config.baud}baud"
    build = None if args.no_build else build_figures(args.board, config, rebuild=args.rebuild,
                                                     build_dir=folder)
    figures = collect_figures(args.board, config, net, counters, rate, build, golden_ips)
    n = args.post_synthesis
    figures["post_synthesis"] = post_synthesis_figures(     # the netlist at this --baud
        config, net, params, x_u8[:n], expected[:n], counters[:n], build_dir=folder)
    print(format_table(figures, net))
    write_json(args.json, figures)
    return 0


def _measure_lenet5(args, config, what, *, top=None):
    """The shipped LeNet-5 on ``--images`` held-out digits through the simulated board
    (``top``, default the board's core): ``(net, params, digits, golden logits, golden
    images/s, counters, rate)``, or None after a one-line error when a logit differs
    from the golden model's (``what`` ends that line)."""
    from ..sim.simboard import measure_batch
    from ..sw import mnist, modelfile
    net, params, _ = modelfile.load_default()
    x_u8 = mnist.heldout()[0][:args.images]
    x = mnist.image_to_int8(x_u8).reshape((len(x_u8),) + tuple(net.input_shape))
    expected, golden_ips = golden(net, params, x)
    _, logits, counters, rate = measure_batch(
        config, net, params, x_u8, usb_latency_ms=args.usb_latency_ms, top=top,
        progress=lambda text: print(text, file=sys.stderr))
    if not np.array_equal(logits, expected):
        bad = int(np.sum(np.any(logits != expected, axis=1)))
        print(f"error: {bad} of {len(x)} images differ from the golden model{what}",
              file=sys.stderr)
        return None
    return net, params, x_u8, expected, golden_ips, counters, rate


def run_pipeline(args, config, *, netlist_asked=False):
    """``--design pipeline``: LeNet-5 through the link one image at a time on the
    simulated board (bit-exact, link figures), then streamed through the pipeline
    itself under Verilator (its cycles per image, bit-exact), then the build."""
    from ..hw.boards import board_pipeline, pipeline_board_top
    from ..sim.pipeline_stream import build_pipeline, steady_cycles, stream_images
    from ..sw import mnist
    from ..sw.pipeline import compile_pipeline
    try:
        name, spec = board_pipeline(config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.network != spec.network:
        print(f"error: the {name} pipeline is built for {spec.network}'s layer shapes, not "
              f"{args.network}'s", file=sys.stderr)
        return 2
    if netlist_asked and args.post_synthesis:
        print("note: --post-synthesis runs the core's netlist; not done for the pipeline "
              "design", file=sys.stderr)
    top = pipeline_board_top(config, debug=True)
    measured = _measure_lenet5(args, top.core.config, " through the link", top=top)
    if measured is None:
        return 1
    net, params, x_u8, expected, golden_ips, counters, rate = measured
    x = mnist.image_to_int8(x_u8).reshape((len(x_u8),) + tuple(net.input_shape))
    shape = spec.shape
    program = compile_pipeline(net, params, shape, spec.groups)
    # The steady state needs a few images past the fill: repeat the digits if few.
    streamed = [x[i % len(x)] for i in range(max(len(x), 8))]
    print(f"streaming {len(streamed)} images through the {name} pipeline (Verilator; "
          f"a few minutes the first time)...", file=sys.stderr)
    stream = stream_images(build_pipeline(shape, f"pipeline_{name.replace('-', '_')}"),
                           f"bench_{name}", program, params, streamed)
    folder = None if config == get_config(args.board) else \
        Path("build") / f"{args.board}-pipeline-{config.baud}baud"
    build = None if args.no_build else build_figures(args.board, config, rebuild=args.rebuild,
                                                     build_dir=folder, design="pipeline")
    figures = collect_figures(args.board, config, net, counters, rate, build, golden_ips,
                              pipeline={"multipliers": shape.multipliers,
                                        "cycles_per_image": steady_cycles(stream["ends"]),
                                        "stage_cycles": stream["stage_cycles"],
                                        "groups": spec.groups,
                                        "stage_multipliers": [s.config.multipliers
                                                              for s in shape.stages]})
    figures["post_synthesis"] = None
    print(format_table(figures, net))
    write_json(args.json, figures)
    return 0
