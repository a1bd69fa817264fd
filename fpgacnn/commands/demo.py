"""``fpgacnn demo``: LeNet-5 on held-out MNIST digits through the simulated board.

Starts the simulated iCEBreaker (the real top-level gateware under Verilator, built
once), loads the shipped LeNet-5 over the UART link with the host driver, streams
held-out digits, and compares every logit with the NumPy golden model.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from . import add_baud_argument, board_config


def configure(parser):
    parser.add_argument("--images", type=int, default=100,
                        help="held-out MNIST digits to classify (default 100, max 1000)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the results as JSON to PATH")
    parser.add_argument("--model", type=Path, default=None,
                        help="model file (default: the shipped LeNet-5)")
    add_baud_argument(parser, "the simulated iCEBreaker")


def link_bytes_per_image(acc, n):
    """Bytes on the wire per image (both directions, frames included)."""
    return (acc.bytes_sent + acc.bytes_received) / n


def real_board_estimate(cfg, cycles, sent_bytes):
    """Images/s on a real board with the pipelined driver: the slower of the host→board
    wire (``sent_bytes`` per image, 8N1 at baud; answers use the other wire at the same
    time) and compute. USB latency is not included: the driver's pipelining window keeps
    the wire busy across a USB round trip."""
    link_s = sent_bytes * 10 / cfg.baud
    compute_s = cycles / cfg.clock_hz
    bound = "link" if link_s >= compute_s else "compute"
    return 1 / max(link_s, compute_s), bound, link_s, compute_s


def _checked_config(args):
    """The simulated iCEBreaker's configuration for ``--baud`` once ``--images`` and
    ``--baud`` are checked; None after printing the one-line error."""
    if not 1 <= args.images <= 1000:
        print(f"error: --images {args.images}: choose 1..1000 (the held-out set has 1000)",
              file=sys.stderr)
        return None
    try:
        return board_config("icebreaker", args.baud)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def run(args):
    from ..sim.simboard import SimBoard, SimBoardError, batch_rate
    from ..sw import mnist
    from ..sw.driver import Accelerator, DriverError
    from ..sw.network import run_network
    from .infer import load_model_file

    config = _checked_config(args)
    if config is None:
        return 2
    net, params, meta, what = load_model_file(args.model)
    quant = mnist.InputQuant.from_dict(meta.get("input"))      # an imported model's own
    x_u8, labels = mnist.heldout()
    x_u8, labels = x_u8[:args.images], labels[:args.images].astype(np.int64)
    x = mnist.image_to_int8(x_u8, quant).reshape((len(x_u8),) + tuple(net.input_shape))
    golden = np.stack([run_network(net, params, img) for img in x]).reshape(len(x), -1)

    try:
        with SimBoard(config) as board:
            t0 = time.monotonic()
            with Accelerator.open(board.url, timeout=30) as acc:
                info = acc.identify()
                print(f"simulated board: {info.describe()} at {board.url}")
                acc.load(net, params, input_quant=quant)
                load_s = time.monotonic() - t0
                acc.bytes_sent = acc.bytes_received = 0
                before = board.snapshot()
                t1 = time.monotonic()
                classes, logits = acc.infer(x_u8)
                infer_s = time.monotonic() - t1
                measured = batch_rate(board.config, before, board.snapshot(), len(x),
                                      x[0].size)
                cycles = acc.counters[:, 0].astype(np.int64)
                layer_cycles = acc.counters[:, 1:].mean(axis=0)
                wire = link_bytes_per_image(acc, len(x))
    except (DriverError, SimBoardError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    correct = int(np.sum(classes == labels))
    agree = int(np.sum(np.all(logits == golden, axis=1)))
    cfg = board.config
    ips, bound, link_s, compute_s = real_board_estimate(cfg, float(np.mean(cycles)),
                                                        measured["to_board_per_image"])
    print(f"model: {what}; {len(x)} held-out digits (load {load_s:.1f} s, "
          f"inference {infer_s:.1f} s of simulation)")
    print(f"{'accuracy':<28} {correct}/{len(x)} = {correct / len(x):.1%}")
    print(f"{'logits equal golden model':<28} {agree}/{len(x)}")
    print(f"{'core cycles per image':<28} {int(np.mean(cycles)):,} "
          f"(layers: {', '.join(f'{c:,.0f}' for c in layer_cycles)})")
    clock = f"{cfg.clock_hz / 1e6:g} MHz/{cfg.baud / 1e6:g} Mbaud"
    print(f"{'board images/s':<28} {measured['images_per_s']:,.1f} at {clock} (measured in "
          f"simulation: {measured['cycles']:,} cycles for {len(x)} images) = "
          f"{measured['efficiency']:.1%} of the link ceiling {measured['ceiling']:,.1f} "
          f"(baud/10/{x[0].size} B)")
    print(f"{'link':<28} {wire:,.0f} B/image both ways, host->board wire busy "
          f"{measured['wire_busy']:.1%}; {bound}-bound: {compute_s * 1e3:.2f} ms/image of "
          f"compute and {link_s * 1e3:.2f} ms on the wire overlap")
    if measured["starved"]:
        print(f"{'':<28} note: the host left the wire idle {measured['starved']} time(s) "
              f"(a loaded machine); the figure includes those gaps")
    print(f"{'simulator speed':<28} {measured['sim_rate'] / 1e6:.2f} M cycles/s "
          f"({measured['sim_cpu_rate'] / 1e6:.2f} M per CPU second)")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "images": len(x), "correct": correct, "golden_agreement": agree,
            "cycles_per_image": float(np.mean(cycles)), "board_images_per_s": ips,
            "measured_images_per_s": measured["images_per_s"],
            "link_ceiling_images_per_s": measured["ceiling"],
            "link_efficiency": measured["efficiency"],
            "sim_cycles_per_s": measured["sim_rate"],
        }, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if agree == len(x) else 1
