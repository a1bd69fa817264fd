"""The compute units on the Verilog Amaranth generates, under cocotb + Verilator.

Each design is compiled once (cached under build/verilator/ by a hash of its Verilog);
benches live in ``fpgacnn.sim.benches``. A failing bench leaves
``build/cocotb/<test>/dump.vcd`` and names it.
"""

import json

import pytest
from amaranth.hdl import unsigned

from fpgacnn.hw.config import get_config
from fpgacnn.hw.ice40 import Ice40Mul16
from fpgacnn.hw.maxpool import MaxPool
from fpgacnn.hw.multiplier import DualMul8
from fpgacnn.hw.requant import Requantizer
from fpgacnn.hw.systolic import SystolicArray
from fpgacnn.sim.cocotb_runner import BUILD_DIR, run_cocotb
from fpgacnn.sim.toolchain import ice40_cells_sim

ICE = get_config("icebreaker")


def test_dual_mul8_verilator(request):
    run_cocotb(DualMul8(), "fpgacnn.sim.benches.bench_multiplier", toplevel="dual_mul8",
               name=request.node.name, params={"seed": 3, "latency": DualMul8.LATENCY})


def test_systolic_verilator(request):
    rows, cols, aw = ICE.rows, ICE.cols, ICE.acc_width
    depths = [1, 2, 25, 3, 19, 40, 7, 150, 1, 18]
    run_cocotb(SystolicArray(rows, cols, aw), "fpgacnn.sim.benches.bench_systolic",
               toplevel="systolic", name=request.node.name, testcase="tiles_match_golden",
               params={"rows": rows, "cols": cols, "acc_width": aw, "seed": 5,
                       "depths": depths, "idle": 0.3, "stall": 0.4})


def test_systolic_ice40_macs_verilator(request):
    """The broadcast array on hand-instantiated SB_MAC16s (yosys' cells_sim.v models), as
    the iCE40 builds have it: shift-chain drain, shadows from the accumulator registers,
    weights in the SB_MAC16s' input registers."""
    rows, cols, aw = ICE.rows, ICE.cols, ICE.acc_width
    dut = SystolicArray(rows, cols, aw, mac="ice40", dataflow="broadcast", shift_drain=True,
                        register_capture=True, weights_in_mac=True)
    run_cocotb(dut, "fpgacnn.sim.benches.bench_systolic",
               toplevel="systolic_ice40", name=request.node.name, testcase="tiles_match_golden",
               extra_sources=[ice40_cells_sim()],
               params={"rows": rows, "cols": cols, "acc_width": aw, "seed": 6,
                       "depths": [1, 30, 2, 19, 25, 5], "idle": 0.3, "stall": 0.4})


def test_systolic_lenet_cycles(request):
    """C1 and C3 of LeNet-5 on the iCEBreaker array: cycles vs ideal MACs / PEs."""
    rows, cols, aw = ICE.rows, ICE.cols, ICE.acc_width
    report = BUILD_DIR / "reports" / "systolic_lenet_cycles.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    run_cocotb(SystolicArray(rows, cols, aw), "fpgacnn.sim.benches.bench_systolic",
               toplevel="systolic", name=request.node.name, testcase="lenet_cycles",
               params={"rows": rows, "cols": cols, "acc_width": aw, "seed": 1,
                       "report": str(report), "wrap_rows": ICE.wrap_rows})
    numbers = json.loads(report.read_text())
    for layer, r in numbers.items():
        ratio = r["cycles"] / r["ideal"]
        print(f"{layer}: {r['beats']} beats, {r['cycles']} cycles, ideal {r['ideal']:.0f} "
              f"(MACs {r['macs']} / {rows * cols} PEs): {ratio:.2f}x")
    # C1 has 6 output channels on 8 rows: 8/6 = 1.33x is the array shape's own bound;
    # C3 keeps all 16 PEs busy. Beyond that only the last tile's drain is extra.
    assert numbers["C1"]["cycles"] <= 1.35 * numbers["C1"]["ideal"]
    assert numbers["C3"]["cycles"] <= 1.01 * numbers["C3"]["ideal"]


@pytest.mark.parametrize("lanes,tag_width,interval", [(2, 7, 1), (1, 0, 2)])
def test_requant_verilator(request, lanes, tag_width, interval):
    tag = unsigned(tag_width) if tag_width else None
    dut = Requantizer(ICE.acc_width, lanes=lanes, tag=tag, interval=interval)
    run_cocotb(dut, "fpgacnn.sim.benches.bench_requant",
               toplevel=f"requant_l{lanes}_i{interval}",
               name=request.node.name,
               params={"acc_width": ICE.acc_width, "lanes": lanes, "tag_width": tag_width,
                       "n": 400, "seed": lanes, "idle": 0.3, "stall": 0.3})


def test_requant_ice40_mul16_verilator(request):
    """The iCEBreaker's requantiser: its product on SB_MAC16 blocks (cells_sim.v models)."""
    dut = Requantizer(ICE.acc_width, bias_width=ICE.bias_width, mul16=Ice40Mul16)
    run_cocotb(dut, "fpgacnn.sim.benches.bench_requant", toplevel="requant_ice40",
               name=request.node.name, extra_sources=[ice40_cells_sim()],
               params={"acc_width": ICE.acc_width, "bias_width": ICE.bias_width,
                       "lanes": 1, "tag_width": 0, "n": 600, "seed": 9, "idle": 0.3,
                       "stall": 0.3})


def test_maxpool_verilator(request):
    dut = MaxPool(max_width=28, max_blocks=2, block=ICE.rows)
    run_cocotb(dut, "fpgacnn.sim.benches.bench_maxpool", toplevel="maxpool",
               name=request.node.name,
               params={"block": ICE.rows, "seed": 2, "idle": 0.3, "stall": 0.3,
                       "cases": [[6, 28, 28, 2, 2], [16, 10, 10, 2, 2], [12, 9, 11, 3, 2],
                                 [3, 5, 5, 2, 1]]})
