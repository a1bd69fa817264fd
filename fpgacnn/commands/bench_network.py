"""``fpgacnn bench --network NAME``: cycles per layer of any described network.

For the networks of ``fpgacnn describe`` (``cifar-small``, ``seeds-layer``, ``wide64``,
...): seeded random int8 parameters (``network.random_params``) and images, run on the
simulated board of ``--board``, checked bit-exact against the golden model, then the
board's own cycle counters per layer next to the array's ideal (its operand beats,
``out_h·k_blocks·ceil(out_w/cols)·D``), the bytes its copy descriptors move through the
block RAM (streamed plans, one cycle each) and the MAC bound (MACs / multipliers).
"""

import json
import sys

import numpy as np

NETWORK_HELP = ("lenet5 (the shipped model, the full table) or a network of `fpgacnn "
                "describe` with random int8 parameters and images (cifar-small, seeds-layer, "
                "wide64): cycles per layer vs ideal")


def measure(config, net, params, images):
    """Run ``images`` on the simulated board for ``config``: ``(outputs, counters)``."""
    from ..sim.simboard import SimBoard
    from ..sw.driver import Accelerator
    with (SimBoard(config, progress=lambda text: print(text, file=sys.stderr)) as board,
          Accelerator.open(board.url, timeout=120) as acc):
        acc.load(net, params, progress=False)
        _, outputs = acc.infer(images, all_counters=True, progress=False)
        return outputs, acc.counters.astype(np.int64)


def stage_copy_bytes(program):
    """Per stage, the bytes its copy descriptors move per image (0 without the window)."""
    out = [0] * len(program.stages)
    for stage, d in zip(program.descriptor_stages, program.descriptors):
        if d.get("copy"):
            out[stage] += d["segments"] * d["length"]
    return out


def figures(config, net, counters, program):
    """Per-layer and total cycles against the ideal, under stable JSON keys."""
    from ..sw import compiler
    stages = net.stages()
    beats = [compiler.ideal_cycles(s, config, pairs=paired)
             for s, paired in zip(stages, compiler.pixel_pairs(stages, config))]
    copied = stage_copy_bytes(program)
    layers = counters[:, 1:].mean(axis=0)
    total = float(counters[:, 0].mean())
    return {
        "board": config.name, "network": net.name, "images": len(counters),
        "multipliers": config.multipliers, "macs": net.macs,
        "cycles_per_image": total, "mac_bound_cycles": net.macs / config.multipliers,
        "descriptors": len(program.descriptors),
        "layers": [{"stage": s.index, "out_shape": list(s.out_shape), "cycles": float(c),
                    "ideal_beats": b, "copy_bytes": n, "mac_bound": s.macs / config.multipliers}
                   for s, c, b, n in zip(stages, layers, beats, copied)],
        "images_per_s_compute": config.clock_hz / total,
    }


def format_figures(f):
    lines = [(f"fpgacnn bench: {f['network']} on {f['board']} ({f['images']} random images, "
              f"bit-exact vs golden; {f['descriptors']} descriptors)"),
             f"{'':<26} {'cycles':>10} {'ideal beats':>12} {'copied B':>9} {'MAC bound':>10}"]
    for layer in f["layers"]:
        lines.append(f"  layer {layer['stage']} -> {tuple(layer['out_shape'])!s:<14} "
                     f"{layer['cycles']:>10,.0f} {layer['ideal_beats']:>12,} "
                     f"{layer['copy_bytes']:>9,} {layer['mac_bound']:>10,.0f}")
    lines.append(f"{'cycles / image':<26} {f['cycles_per_image']:>10,.0f} "
                 f"{sum(x['ideal_beats'] for x in f['layers']):>12,} "
                 f"{sum(x['copy_bytes'] for x in f['layers']):>9,} "
                 f"{f['mac_bound_cycles']:>10,.0f}  ({f['macs']:,} MACs / "
                 f"{f['multipliers']} multipliers)")
    lines.append(f"{'compute-bound images/s':<26} {f['images_per_s_compute']:>10,.1f}")
    return "\n".join(lines)


def write_json(path, figures):
    """Write ``figures`` to ``path`` as JSON (nothing if ``path`` is None)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {path}")


def run(args, config):
    """The ``bench --network`` command for ``config``; returns the exit status."""
    from ..sw import compiler
    from ..sw import network as nets
    from ..sw.budget import format_budget
    from .describe import NETWORKS
    if args.network not in NETWORKS:
        print(f"error: --network {args.network!r}: choose one of "
              f"{', '.join(sorted(NETWORKS))}", file=sys.stderr)
        return 2
    net = NETWORKS[args.network]()
    params = nets.random_params(net, 0)
    try:
        program = compiler.compile_network(net, params, config)
    except compiler.CompileError as e:
        print("\n".join(format_budget(net, config)), file=sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (args.images,) + tuple(net.input_shape), dtype=np.int8)
    outputs, counters = measure(config, net, params, x)
    expected = np.stack([nets.run_network(net, params, img).reshape(-1) for img in x])
    if not np.array_equal(outputs, expected):
        bad = int(np.sum(np.any(outputs != expected, axis=1)))
        print(f"error: {bad} of {len(x)} images differ from the golden model",
              file=sys.stderr)
        return 1
    f = figures(config, net, counters, program)
    print(format_figures(f))
    write_json(args.json, f)
    return 0
