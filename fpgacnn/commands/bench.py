"""``fpgacnn bench``: measured performance of a board build against its physical limits.

Everything in the table is measured, not assumed:

* cycles per LeNet-5 inference (total and per layer) from the board's own cycle
  counters, running the real top-level gateware on the simulated board;
* sustained images/s and latency of a board at the build's clock and baud rate,
  measured in *simulated* time on the same run (the UART is simulated bit by bit, so
  link time and compute time overlap exactly as on the board; only USB latency is not
  modelled);
* Fmax and utilisation from the board's nextpnr report (a build is re-used when its
  netlist matches the current gateware, otherwise built);
* the limits those follow from: the multipliers' peak MAC/s at Fmax and the link ceiling
  of the board's USB-UART bridge; for reference, the simulated board's and the golden
  model's speed on this machine.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from ..hw.boards import BOARDS

#: Each board's USB-UART bridge and its highest UART rate: the physical link ceiling.
LINK_BRIDGES = {"icebreaker": ("FT2232H", 12_000_000), "ulx3s-85f": ("FT231X", 3_000_000)}


def configure(parser):
    parser.add_argument("--board", default="icebreaker", choices=list(BOARDS),
                        help="board configuration to measure (default: icebreaker)")
    parser.add_argument("--images", type=int, default=20,
                        help="held-out digits streamed through the simulated board (default 20)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write every figure as JSON under stable keys")
    build = parser.add_mutually_exclusive_group()
    build.add_argument("--rebuild", action="store_true",
                       help="build the bitstream even if a matching build exists")
    build.add_argument("--no-build", action="store_true",
                       help="skip the bitstream figures (Fmax, utilisation)")


def golden(net, params, images):
    """Golden-model logits of ``images`` (one row each) and its images/s on this machine."""
    from ..sw.network import run_network
    started = time.perf_counter()
    logits = np.stack([run_network(net, params, image) for image in images])
    return logits.reshape(len(images), -1), len(images) / (time.perf_counter() - started)


def simulate(config, net, params, images_u8):
    """Run a batch on the simulated board; cycle counters and simulated-time throughput."""
    from ..sim.simboard import SimBoard, batch_rate
    from ..sw.driver import Accelerator
    with (SimBoard(config, progress=lambda text: print(text, file=sys.stderr)) as board,
          Accelerator.open(board.url, timeout=60) as acc):
        acc.load(net, params)
        acc.infer(images_u8[:1], progress=False)         # warm-up: both slots in use
        before = board.snapshot()
        classes, logits = acc.infer(images_u8, all_counters=True)
        after = board.snapshot()
        counters = acc.counters.astype(np.int64)
        image_bytes = int(np.prod(net.input_shape))
        rate = batch_rate(config, before, after, len(images_u8), image_bytes)
    return classes, logits, counters, rate


def build_figures(board, config, *, rebuild):
    """The board's :class:`~fpgacnn.hw.flow.BuildReport`: an earlier build of the same
    gateware when there is one (``fpgacnn build`` leaves one), else built now."""
    from ..hw.flow import build_board, load_build
    report = None if rebuild else load_build(board, config=config)
    if report is None:
        print(f"building the {board} bitstream for its Fmax and utilisation "
              f"(several minutes; later runs re-use it)...", file=sys.stderr)
        report = build_board(board, config=config)
    return report


def collect_figures(board, config, net, counters, rate, build, golden_ips):
    """Every figure of the table under its stable JSON key."""
    total = float(np.mean(counters[:, 0]))
    mults, clock_hz = config.multipliers, config.clock_hz
    ideal = net.macs / mults
    fmax_mhz = build.fmax_mhz if build and build.fmax_mhz else None
    image_bytes = int(np.prod(net.input_shape))
    link_s = image_bytes * 10 / config.baud          # 8N1: 10 bits per byte
    compute_s, bridge = total / clock_hz, LINK_BRIDGES[board]
    return {
        "board": board,
        "network": net.name,
        "images": len(counters),
        "multipliers": mults,
        "clock_mhz": clock_hz / 1e6,
        "baud": config.baud,
        "cycles_per_image": total,
        "cycles_per_layer": [float(c) for c in counters[:, 1:].mean(axis=0)],
        "ideal_cycles": ideal,
        "cycles_vs_ideal": total / ideal,
        "mac_utilisation": net.macs / (mults * total),
        "macs_per_cycle": net.macs / total,
        "fmax_mhz": fmax_mhz,
        "utilisation": build.to_json()["utilisation"] if build else None,
        "fits": build.fits if build else None,
        "peak_macs_per_s_at_fmax": mults * fmax_mhz * 1e6 if fmax_mhz else None,
        # One image on an idle board: its bytes in, compute, logits frame out.
        "latency_ms": 1e3 * (link_s + compute_s
                             + rate["from_board_per_image"] * 10 / config.baud),
        "sustained_images_per_s": rate["images_per_s"],
        "link_efficiency": rate["images_per_s"] * link_s,
        "sim_cycles_per_s": rate["sim_rate"],
        "sim_cpu_cycles_per_s": rate["sim_cpu_rate"],
        "golden_images_per_s": golden_ips,
        # Link-bound and compute-bound images/s at the configured baud and clock.
        "link_image_bytes": image_bytes,
        "link_s_per_image": link_s,
        "link_ceiling_images_per_s": 1 / link_s,
        "link_bridge": bridge[0], "link_bridge_max_baud": bridge[1],
        "link_bridge_ceiling_images_per_s": bridge[1] / 10 / image_bytes,
        "link_compute_s_per_image": compute_s,
        "link_compute_ceiling_images_per_s": 1 / compute_s,
        "link_bound": "link" if link_s >= compute_s else "compute",
    }


def run(args):
    from ..sw import mnist, modelfile
    if not 1 <= args.images <= 1000:
        print(f"error: --images {args.images}: choose 1..1000", file=sys.stderr)
        return 2
    config = BOARDS[args.board].config
    net, params, _ = modelfile.load_default()
    x_u8 = mnist.heldout()[0][:args.images]
    x = mnist.image_to_int8(x_u8).reshape((len(x_u8),) + tuple(net.input_shape))
    expected, golden_ips = golden(net, params, x)
    _, logits, counters, rate = simulate(config, net, params, x_u8)
    if not np.array_equal(logits, expected):
        bad = int(np.sum(np.any(logits != expected, axis=1)))
        print(f"error: {bad} of {len(x)} images differ from the golden model; the "
              f"figures below would be meaningless", file=sys.stderr)
        return 1
    cycles = counters[:, 0]
    if not np.all(cycles == cycles[0]):
        print(f"note: cycles vary between images ({cycles.min()}..{cycles.max()})",
              file=sys.stderr)
    build = None if args.no_build else build_figures(args.board, config, rebuild=args.rebuild)
    figures = collect_figures(args.board, config, net, counters, rate, build, golden_ips)
    print(format_table(figures, net))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def format_table(f, net):
    """The figures as the table ``fpgacnn bench`` prints."""
    rows = []

    def row(what, value, reference=""):
        rows.append((what, value, reference))

    row("cycles / LeNet-5 inference", f"{f['cycles_per_image']:,.0f}",
        f"ideal {f['ideal_cycles']:,.0f} = {net.macs:,} MACs / {f['multipliers']} "
        f"multipliers ({f['cycles_vs_ideal']:.2f}x; goal <= 1.3x)")
    for i, c in enumerate(f["cycles_per_layer"]):
        stage = net.stages()[i]
        row(f"  layer {i} ({stage.kind} -> {stage.out_shape[0]})", f"{c:,.0f}",
            f"ideal {stage.macs / f['multipliers']:,.0f}")
    row("MACs per cycle (average)", f"{f['macs_per_cycle']:.1f}",
        f"peak {f['multipliers']} (utilisation {f['mac_utilisation']:.0%}; goal peak >= 16)")
    if f["fmax_mhz"]:
        row("Fmax (nextpnr)", f"{f['fmax_mhz']:.1f} MHz",
            f"core clock {f['clock_mhz']:.0f} MHz (goal >= 36)")
        row("peak MAC/s at Fmax", f"{f['peak_macs_per_s_at_fmax'] / 1e6:,.0f} M",
            f"{f['multipliers']} multipliers")
    for cell, (used, avail) in (f["utilisation"] or {}).items():
        if used:
            row(f"  {cell}", f"{used:,} / {avail:,}", f"{100 * used / avail:.0f}%")
    row("link time per image", f"{f['link_s_per_image'] * 1e3:.2f} ms",
        f"{f['link_image_bytes']} bytes at {f['baud'] / 1e6:g} Mbaud 8N1")
    row("compute time per image", f"{f['link_compute_s_per_image'] * 1e3:.2f} ms",
        f"at {f['clock_mhz']:.0f} MHz; bound: {f['link_bound']}")
    row("sustained images/s (measured)", f"{f['sustained_images_per_s']:.0f}",
        f"{f['link_efficiency']:.0%} of the {f['link_ceiling_images_per_s']:.0f}/s link "
        f"ceiling (goal >= 90%)")
    row("latency, one image", f"{f['latency_ms']:.2f} ms", "image in + compute + logits out")
    row(f"{f['link_bridge']} ceiling ({f['link_bridge_max_baud'] / 1e6:g} Mbaud)",
        f"{f['link_bridge_ceiling_images_per_s']:.0f} images/s", "raw image bytes only")
    row("simulated board speed", f"{f['sim_cycles_per_s'] / 1e6:.2f} M cycles/s",
        f"{f['sim_cpu_cycles_per_s'] / 1e6:.2f} M per CPU-second (goal >= 1 M)")
    row("golden model (NumPy, host)", f"{f['golden_images_per_s']:.0f} images/s", "")
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    title = (f"fpgacnn bench: {f['network']} on {f['board']} ({f['images']} held-out "
             f"digits, bit-exact vs golden)")
    lines = [title, *(f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows)]
    return "\n".join(lines)
