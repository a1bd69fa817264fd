"""The figures of ``fpgacnn bench``: collected under stable JSON keys, printed as a table.

The measurement itself (the simulated board in simulated time) is
:func:`fpgacnn.sim.simboard.measure_batch`; the bitstream figures come from
:func:`fpgacnn.hw.flow.build_board`. ``fpgacnn bench`` is argument parsing around these.
"""

import sys
import time

import numpy as np

__all__ = ["LINK_BRIDGES", "golden", "build_figures", "collect_figures", "format_table"]

#: Each board's USB-UART bridge and its highest UART rate: the physical link ceiling.
LINK_BRIDGES = {"icebreaker": ("FT2232H", 12_000_000), "ulx3s-85f": ("FT231X", 3_000_000)}

#: The compute goals each board's table quotes (issue 15): the multiplier count and core
#: clock for the iCEBreaker, MAC utilisation and compute-bound images/s for the ULX3S-85F.
GOALS = {
    "icebreaker": {"macs": "goal peak >= 16", "clock": "goal >= 36 MHz", "compute": ""},
    "ulx3s-85f": {"macs": "goal utilisation >= 80%", "clock": "", "compute": "goal >= 20,000"},
}


def golden(net, params, images):
    """Golden-model logits of ``images`` (one row each) and its images/s on this machine."""
    from ..sw.network import run_network
    started = time.perf_counter()
    logits = np.stack([run_network(net, params, image) for image in images])
    return logits.reshape(len(images), -1), len(images) / (time.perf_counter() - started)


def build_figures(board, config, *, rebuild, build_dir=None, design="full"):
    """The board's :class:`~fpgacnn.hw.flow.BuildReport` of ``design``: an earlier build
    of the same gateware in ``build_dir`` (default the design's) when there is one
    (``fpgacnn build`` leaves one), else built now."""
    from ..hw.flow import build_board, load_build
    report = None if rebuild else load_build(board, design=design, config=config,
                                             build_dir=build_dir)
    if report is None:
        print(f"building the {board} bitstream for its Fmax and utilisation "
              f"(several minutes; later runs re-use it)...", file=sys.stderr)
        report = build_board(board, design=design, config=config, build_dir=build_dir)
    return report


def collect_figures(board, config, net, counters, rate, build, golden_ips, *,
                    pipeline=None):
    """Every figure of the table under its stable JSON key.

    ``pipeline`` (the board's layer pipeline, ``fpgacnn bench --design pipeline``): a
    dict with its ``multipliers``, the ``cycles_per_image`` it sustains streaming
    images, each stage's cycles (``stage_cycles``) and compute layers (``groups``); the
    compute figures are then the pipeline's, and ``counters`` (one image at a time
    through the host interface) give ``cycles_one_at_a_time``.
    """
    total = float(np.mean(counters[:, 0]))
    mults, clock_hz = config.multipliers, config.clock_hz
    if pipeline is not None:
        one_at_a_time = total
        mults, total = pipeline["multipliers"], float(pipeline["cycles_per_image"])
    ideal = net.macs / mults
    fmax_mhz = build.fmax_mhz if build and build.fmax_mhz else None
    image_bytes = int(np.prod(net.input_shape))
    link_s = image_bytes * 10 / config.baud          # 8N1: 10 bits per byte
    compute_s, bridge = total / clock_hz, LINK_BRIDGES[board]
    extra = {} if pipeline is None else {
        "design": "pipeline",
        "cycles_one_at_a_time": one_at_a_time,
        "pipeline_stage_cycles": [float(c) for c in pipeline["stage_cycles"]],
        "pipeline_groups": list(pipeline["groups"]),
        "pipeline_stage_multipliers": list(pipeline["stage_multipliers"]),
    }
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
        # One image on an idle board, measured: its frames in, compute, its answer at the
        # host (through the USB model's frame and bridge when there is one).
        "latency_ms": 1e3 * rate["single"]["cycles"] / clock_hz,
        "usb_latency_ms": rate["usb_latency_ms"],
        "link_retries": rate["retries"],
        # Steady state (simboard.sustained_rate); the batch end to end below.
        "sustained_images_per_s": rate["images_per_s"],
        "link_efficiency": rate["images_per_s"] * link_s,
        "batch_images_per_s": rate["batch_images_per_s"],
        "batch_link_efficiency": rate["batch_images_per_s"] * link_s,
        "batch_usb_start_ms": 1e3 * rate["usb_start_s"],
        "batch_usb_release_ms": 1e3 * rate["usb_release_s"],
        "sim_cycles_per_s": rate["sim_rate"],
        "sim_cpu_cycles_per_s": rate["sim_cpu_rate"],
        "golden_images_per_s": golden_ips,
        # Link-bound and compute-bound images/s at the configured baud and clock.
        "link_image_bytes": image_bytes,
        "link_s_per_image": link_s,
        "link_ceiling_images_per_s": 1 / link_s,
        "link_bridge": bridge[0], "link_bridge_max_baud": bridge[1],
        "link_bridge_ceiling_images_per_s": bridge[1] / 10 / image_bytes,
        # Kept for readers of earlier bench JSON; None where the bridge is not an FT2232H.
        "link_ft2232h_ceiling_images_per_s":
            bridge[1] / 10 / image_bytes if bridge[0] == "FT2232H" else None,
        "link_compute_s_per_image": compute_s,
        "link_compute_ceiling_images_per_s": 1 / compute_s,
        "link_bound": "link" if link_s >= compute_s else "compute",
        **extra,
    }


def format_table(f, net):
    """The figures as the table ``fpgacnn bench`` prints."""
    from ..sim.netlist import post_synthesis_row
    rows = []

    def row(what, value, reference=""):
        rows.append((what, value, reference))

    if f.get("design") == "pipeline":
        row("cycles / image (pipeline, streaming)", f"{f['cycles_per_image']:,.0f}",
            f"ideal {f['ideal_cycles']:,.0f} = {net.macs:,} MACs / {f['multipliers']} "
            f"multipliers ({f['cycles_vs_ideal']:.2f}x); one image at a time through "
            f"the link: {f['cycles_one_at_a_time']:,.0f}")
        first, stages = 0, net.stages()
        for s, (c, g, k) in enumerate(zip(f["pipeline_stage_cycles"], f["pipeline_groups"],
                                          f["pipeline_stage_multipliers"])):
            macs = sum(st.macs for st in stages[first:first + g])
            layers = f"layer {first}" if g == 1 else f"layers {first}-{first + g - 1}"
            row(f"  stage {s} ({layers}, {k} multipliers)", f"{c:,.0f}",
                f"ideal {macs / k:,.0f}")
            first += g
    else:
        row("cycles / LeNet-5 inference", f"{f['cycles_per_image']:,.0f}",
            f"ideal {f['ideal_cycles']:,.0f} = {net.macs:,} MACs / {f['multipliers']} "
            f"multipliers ({f['cycles_vs_ideal']:.2f}x; goal <= 1.3x)")
        for i, c in enumerate(f["cycles_per_layer"]):
            stage = net.stages()[i]
            row(f"  layer {i} ({stage.kind} -> {stage.out_shape[0]})", f"{c:,.0f}",
                f"ideal {stage.macs / f['multipliers']:,.0f}")
    goals = GOALS.get(f["board"], {"macs": "", "clock": "", "compute": ""})

    def goal(key):
        return f"; {goals[key]}" if goals[key] else ""

    row("MACs per cycle (average)", f"{f['macs_per_cycle']:.1f}",
        f"peak {f['multipliers']} (utilisation {f['mac_utilisation']:.0%}{goal('macs')})")
    if f["fmax_mhz"]:
        row("Fmax (nextpnr)", f"{f['fmax_mhz']:.1f} MHz",
            f"core clock {f['clock_mhz']:.0f} MHz" +
            (f" ({goals['clock']})" if goals["clock"] else ""))
        row("peak MAC/s at Fmax", f"{f['peak_macs_per_s_at_fmax'] / 1e6:,.0f} M",
            f"{f['multipliers']} multipliers")
    for cell, (used, avail) in (f["utilisation"] or {}).items():
        if used:
            row(f"  {cell}", f"{used:,} / {avail:,}", f"{100 * used / avail:.0f}%")
    row("link time per image", f"{f['link_s_per_image'] * 1e3:.2f} ms",
        f"{f['link_image_bytes']} bytes at {f['baud'] / 1e6:g} Mbaud 8N1")
    row("compute time per image", f"{f['link_compute_s_per_image'] * 1e3:.2f} ms",
        f"at {f['clock_mhz']:.0f} MHz; bound: {f['link_bound']}" +
        (f"; {f['link_compute_ceiling_images_per_s']:,.0f} images/s compute-bound "
         f"({goals['compute']})" if goals["compute"] else ""))
    usb = f", USB latency {f['usb_latency_ms']:g} ms" if f["usb_latency_ms"] else ""
    bound = ("" if f["link_bound"] == "link" else
             f"; {f['sustained_images_per_s'] * f['link_compute_s_per_image']:.0%} of the "
             f"{f['link_compute_ceiling_images_per_s']:.0f}/s compute bound")
    row("sustained images/s (measured)", f"{f['sustained_images_per_s']:.0f}",
        f"{f['link_efficiency']:.0%} of the {f['link_ceiling_images_per_s']:.0f}/s link "
        f"ceiling (goal >= 90%{usb}); steady state{bound}")
    waits = (f"; USB frame {f['batch_usb_start_ms']:.2f} ms, last answer held "
             f"{f['batch_usb_release_ms']:.2f} ms" if f["usb_latency_ms"] else "")
    row(f"{f['images']}-image batch, end to end", f"{f['batch_images_per_s']:.0f}",
        f"{f['batch_link_efficiency']:.0%}: one image's latency included{waits}")
    row("latency, one image", f"{f['latency_ms']:.2f} ms",
        "measured: image in + compute + logits out" + (", USB path" if usb else ""))
    row(f"{f['link_bridge']} ceiling ({f['link_bridge_max_baud'] / 1e6:g} Mbaud)",
        f"{f['link_bridge_ceiling_images_per_s']:.0f} images/s", "raw image bytes only")
    row("simulated board speed", f"{f['sim_cycles_per_s'] / 1e6:.2f} M cycles/s",
        f"{f['sim_cpu_cycles_per_s'] / 1e6:.2f} M per CPU-second (goal >= 1 M)")
    row("golden model (NumPy, host)", f"{f['golden_images_per_s']:.0f} images/s", "")
    if f.get("post_synthesis"):
        row("synthesized netlist (gate level)", *post_synthesis_row(f["post_synthesis"]))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    board = f"{f['board']}'s layer pipeline" if f.get("design") == "pipeline" else f["board"]
    title = (f"fpgacnn bench: {f['network']} on {board} ({f['images']} held-out digits, "
             f"bit-exact vs golden)")
    lines = [title, *(f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows)]
    return "\n".join(lines)
