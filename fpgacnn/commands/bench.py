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
* the limits those follow from: the multipliers' peak MAC/s at Fmax and the FT2232H
  link ceiling; and, for reference, the simulated board's and the NumPy golden model's
  speed on this machine.
"""

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

#: The FT2232H's highest UART rate (12 Mbaud), the physical ceiling of the iCEBreaker link.
FT2232H_MAX_BAUD = 12_000_000


def configure(parser):
    from ..hw.boards import BOARDS
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


def golden_speed(net, params, images):
    """Images/s of the NumPy golden model on this machine."""
    from ..sw.network import run_network
    started = time.perf_counter()
    for image in images:
        run_network(net, params, image)
    return len(images) / (time.perf_counter() - started)


def simulate(config, net, params, images_u8):
    """Run a batch on the simulated board; cycle counters and simulated-time throughput."""
    from ..sim.simboard import SimBoard, batch_rate
    from ..sw.driver import Accelerator
    with SimBoard(config, progress=lambda text: print(text, file=sys.stderr)) as board:
        with Accelerator.open(board.url, timeout=60) as acc:
            acc.load(net, params)
            acc.infer(images_u8[:1], progress=False)         # warm-up: both slots in use
            before = board.snapshot()
            classes, logits = acc.infer(images_u8, all_counters=True)
            after = board.snapshot()
            counters = acc.counters.astype(np.int64)
            image_bytes = int(np.prod(net.input_shape))
            rate = batch_rate(config, before, after, len(images_u8), image_bytes)
    return classes, logits, counters, rate


def _rtlil_digest(board, config):
    """Hash of the design's RTLIL as a build would write it (cheap: no synthesis)."""
    from .build import _make_top, toolchain_overrides
    platform, top, _ = _make_top(board, "full", config)
    family = "ice40" if platform.device.lower().startswith("ice40") else "ecp5"
    plan = platform.build(top, name="top", do_build=False,
                          **toolchain_overrides(family, 1, "top"))
    return hashlib.sha256(plan.files["top.il"].encode()
                          if isinstance(plan.files["top.il"], str)
                          else plan.files["top.il"]).hexdigest()


def build_figures(board, config, *, rebuild):
    """The board's build report: re-used when its netlist matches, else built now."""
    from .build import build
    folder = Path("build") / board
    cache = folder / "bench_build.json"
    digest = _rtlil_digest(board, config)
    if not rebuild and cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("rtlil_sha256") == digest:
            cached["reused"] = True
            return cached
    print(f"building the {board} bitstream for its Fmax and utilisation "
          f"(several minutes; later runs re-use it)...", file=sys.stderr)
    result = build(board, config=config, build_dir=folder)
    figures = result.to_json()
    figures.update(rtlil_sha256=digest, meets_timing=result.meets_timing,
                   seconds=result.seconds, reused=False)
    if result.ok:
        cache.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def link_figures(config, image_bytes, fmax_hz, cycles):
    """Link-bound and compute-bound images/s at the configured baud and at the FT2232H max."""
    per_image_s = image_bytes * 10 / config.baud          # 8N1: 10 bits per byte
    compute_s = cycles / fmax_hz
    return {
        "image_bytes": image_bytes,
        "link_s_per_image": per_image_s,
        "link_ceiling_images_per_s": 1 / per_image_s,
        "ft2232h_ceiling_images_per_s": FT2232H_MAX_BAUD / 10 / image_bytes,
        "compute_s_per_image": compute_s,
        "compute_ceiling_images_per_s": 1 / compute_s,
        "bound": "link" if per_image_s >= compute_s else "compute",
    }


def run(args):
    from ..hw.boards import BOARDS
    from ..hw.config import get_config
    from ..sw import mnist, modelfile
    from ..sw.network import run_network
    if not 1 <= args.images <= 1000:
        print(f"error: --images {args.images}: choose 1..1000", file=sys.stderr)
        return 2
    config = get_config(BOARDS[args.board][2])
    net, params, _ = modelfile.load_default()
    x_u8, labels = mnist.heldout()
    x_u8 = x_u8[:args.images]
    x = mnist.image_to_int8(x_u8).reshape((len(x_u8),) + tuple(net.input_shape))
    golden = np.stack([run_network(net, params, img) for img in x]).reshape(len(x), -1)

    classes, logits, counters, rate = simulate(config, net, params, x_u8)
    if not np.array_equal(logits, golden):
        bad = int(np.sum(np.any(logits != golden, axis=1)))
        print(f"error: {bad} of {len(x)} images differ from the golden model; the "
              f"figures below would be meaningless", file=sys.stderr)
        return 1
    cycles = counters[:, 0]
    if not np.all(cycles == cycles[0]):
        print(f"note: cycles vary between images ({cycles.min()}..{cycles.max()})",
              file=sys.stderr)
    total = float(np.mean(cycles))
    per_layer = counters[:, 1:].mean(axis=0)
    mults = config.multipliers
    ideal = net.macs / mults

    build = None if args.no_build else build_figures(args.board, config,
                                                     rebuild=args.rebuild)
    fmax_mhz = build["fmax_mhz"] if build and build.get("fmax_mhz") else None
    clock_hz = config.clock_hz
    link = link_figures(config, int(np.prod(net.input_shape)), clock_hz, total)

    figures = {
        "board": args.board,
        "network": net.name,
        "images": len(x),
        "multipliers": mults,
        "clock_mhz": clock_hz / 1e6,
        "baud": config.baud,
        "cycles_per_image": total,
        "cycles_per_layer": [float(c) for c in per_layer],
        "ideal_cycles": ideal,
        "cycles_vs_ideal": total / ideal,
        "mac_utilisation": net.macs / (mults * total),
        "macs_per_cycle": net.macs / total,
        "fmax_mhz": fmax_mhz,
        "utilisation": build["utilisation"] if build else None,
        "fits": build["fits"] if build else None,
        "peak_macs_per_s_at_fmax": mults * fmax_mhz * 1e6 if fmax_mhz else None,
        "latency_ms": None,
        "sustained_images_per_s": rate["images_per_s"],
        "link_efficiency": rate["images_per_s"] / link["link_ceiling_images_per_s"],
        "sim_cycles_per_s": rate["sim_rate"],
        "sim_cpu_cycles_per_s": rate["sim_cpu_rate"],
        "golden_images_per_s": golden_speed(net, params, x),
        **{f"link_{k}" if not k.startswith("link") else k: v for k, v in link.items()},
    }
    # Latency of one image on an idle board: its bytes in, compute, logits frame out.
    figures["latency_ms"] = 1e3 * (link["link_s_per_image"] + total / clock_hz
                                   + rate["from_board_per_image"] * 10 / config.baud)
    print(format_table(figures, net))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def format_table(f, net):
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
    row("FT2232H ceiling (12 Mbaud)", f"{f['link_ft2232h_ceiling_images_per_s']:.0f} images/s",
        "raw image bytes only")
    row("simulated board speed", f"{f['sim_cycles_per_s'] / 1e6:.2f} M cycles/s",
        f"{f['sim_cpu_cycles_per_s'] / 1e6:.2f} M per CPU-second (goal >= 1 M)")
    row("golden model (NumPy, host)", f"{f['golden_images_per_s']:.0f} images/s", "")
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"fpgacnn bench: {f['network']} on {f['board']} ({f['images']} held-out digits, "
             f"bit-exact vs golden)"]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)
