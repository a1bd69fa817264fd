"""iCE40 synthesis: the SB_MAC16 blocks bit-exact and kept, accumulators that pack into
one logic cell per bit, block RAMs without emulation logic."""

import collections
import json
import os
import re
import subprocess

import pytest
from amaranth.back import rtlil
from amaranth.hdl import C, unsigned

from fpgacnn.hw.build_report import BuildError, check_hand_dsps
from fpgacnn.hw.toolchain import YOSYS_PREP
from fpgacnn.hw.ice40 import (SB_MAC16_8X8_SIGNED_PARAMS, SB_MAC16_16X16_SU_PARAMS,
                               Ice40DualMul8, Ice40Mul16)
from fpgacnn.hw.memories import Ram
from fpgacnn.hw.systolic import SystolicArray
from fpgacnn.sim.cocotb_runner import run_cocotb
from fpgacnn.sim.toolchain import ice40_cells_sim, setup_yowasp_env


def test_ice40_dualmul8_exhaustive(request):
    # Every (a, b) pair on both products, against the SB_MAC16 model from cells_sim.v.
    run_cocotb(Ice40DualMul8(), "fpgacnn.sim.benches.ice40_dualmul8",
               name=request.node.name, toplevel="ice40_dualmul8",
               extra_sources=[ice40_cells_sim()], params={"latency": Ice40DualMul8.LATENCY})


@pytest.mark.parametrize("seed", range(2))
def test_ice40_mul16_matches_products(request, seed):
    # Signed x unsigned 16x16 with enable and reset, against the cells_sim.v model.
    run_cocotb(Ice40Mul16(), "fpgacnn.sim.benches.ice40_mul16", name=request.node.name,
               toplevel="ice40_mul16", extra_sources=[ice40_cells_sim()],
               params={"seed": seed, "n": 4000})


def synthesise(tmp_path, synth_opts="", dut=None):
    """Amaranth RTLIL → synth_ice40 as the build runs it; the netlist's cells of ``top``."""
    env = setup_yowasp_env(dict(os.environ))
    dut = Ice40DualMul8() if dut is None else dut
    (tmp_path / "top.il").write_text(rtlil.convert(dut, name="top"))
    # YoWASP tools see only the working directory: relative paths.
    script = f"read_rtlil top.il; {YOSYS_PREP}; synth_ice40 {synth_opts} -top top; " \
             f"write_json top.json"
    subprocess.run([env["YOSYS"], "-q", "-l", "yosys.log", "-p", script], env=env,
                   check=True, cwd=tmp_path, stdout=subprocess.DEVNULL)
    return list(json.loads((tmp_path / "top.json").read_text())["modules"]["top"]
                ["cells"].values())


@pytest.mark.parametrize("a_registered", [False, True])
def test_ice40_dualmul8_survives_synthesis(tmp_path, a_registered):
    # The build's synthesis must keep the hand-made block as one SB_MAC16 with our
    # parameters and no fabric logic (a re-mapped block would only show on the board).
    cells = synthesise(tmp_path, dut=Ice40DualMul8(a_registered=a_registered))
    types = sorted(c["type"] for c in cells)
    assert types == ["SB_MAC16"], f"expected exactly one SB_MAC16, synthesis gave {types}"
    params = cells[0]["parameters"]
    expected = {**SB_MAC16_8X8_SIGNED_PARAMS, "A_REG": C(int(a_registered), 1)}
    for name, value in expected.items():
        assert int(params[name], 2) == value.value, f"{name} = {params[name]} after synthesis"
    assert check_hand_dsps(tmp_path) == 1


def test_ice40_mul16_survives_synthesis(tmp_path):
    cells = synthesise(tmp_path, dut=Ice40Mul16())
    types = sorted(c["type"] for c in cells)
    assert types == ["SB_MAC16"], f"expected exactly one SB_MAC16, synthesis gave {types}"
    params = cells[0]["parameters"]
    for name, value in SB_MAC16_16X16_SU_PARAMS.items():
        assert int(params[name], 2) == value.value, f"{name} = {params[name]} after synthesis"


def test_dsp_option_rewrite_is_caught(tmp_path):
    # synth_ice40 -dsp (yosys ice40_dsp) turns any SB_MAC16 into a 16x16 multiplier; the
    # build must notice instead of writing a bitstream with broken multipliers.
    cells = synthesise(tmp_path, "-dsp")
    assert [int(c["parameters"]["MODE_8x8"], 2) for c in cells if c["type"] == "SB_MAC16"] \
        == [0], "yosys no longer rewrites SB_MAC16 with -dsp: -dsp could be allowed again"
    with pytest.raises(BuildError, match="rewrote 1 of 1"):
        check_hand_dsps(tmp_path)


def _lone_flip_flops(tmp_path, dut, net_pattern):
    """Flip-flops on nets matching ``net_pattern`` that nextpnr cannot pack with a LUT:
    their D is not a LUT output that drives nothing else."""
    synthesise(tmp_path, dut=dut)
    top = json.loads((tmp_path / "top.json").read_text())["modules"]["top"]
    drivers, loads = {}, {}
    for name, cell in top["cells"].items():
        for port, bits in cell["connections"].items():
            for bit in bits:
                if cell["port_directions"][port] == "output":
                    drivers[bit] = cell["type"]
                else:
                    loads[bit] = loads.get(bit, 0) + 1
    bits = {b for n, v in top["netnames"].items() if re.fullmatch(net_pattern, n)
            for b in v["bits"]}
    flops = [c for c in top["cells"].values()
             if c["type"].startswith("SB_DFF") and c["connections"]["Q"][0] in bits]
    assert flops, f"no flip-flop on {net_pattern}"
    d = [c["connections"]["D"][0] for c in flops]
    return sum(not (drivers.get(b) == "SB_LUT4" and loads.get(b) == 1) for b in d)


@pytest.mark.parametrize("register_capture", [False, True])
def test_accumulators_pack_one_cell_per_bit(tmp_path, register_capture):
    """With ``register_capture`` every accumulator flip-flop takes the output of a LUT that
    feeds nothing else (the adder with the restart multiplexer folded in), so each bit
    is one logic cell; without it the adder also feeds the shadow capture."""
    dut = SystolicArray(8, 1, 26, mac="ice40", dataflow="broadcast", shift_drain=True,
                        register_capture=register_capture)
    lone = _lone_flip_flops(tmp_path, dut, r"acc_\d+_\d+")
    if register_capture:
        assert lone == 0, f"{lone} accumulator flip-flops cannot share their adder's cell"
    else:
        assert lone >= 8 * 20      # the pattern register_capture exists to avoid


@pytest.mark.parametrize("rw_exclusive", [False, True])
def test_rw_exclusive_ram_is_bare_block_ram(tmp_path, rw_exclusive):
    """A ``Ram(rw_exclusive=True)`` of 256 × 64 bits is four EBRs and its read enable; the
    default one needs yosys' read-first emulation (write-data registers, a bypass
    multiplexer per bit)."""
    cells = synthesise(tmp_path, dut=Ram(unsigned(64), 256, rw_exclusive=rw_exclusive))
    types = collections.Counter(c["type"] for c in cells)
    assert types.pop("SB_RAM40_4K") == 4
    logic = sum(types.values())
    if rw_exclusive:
        assert logic <= 1, f"rw_exclusive Ram synthesised with extra logic: {dict(types)}"
    else:
        assert logic > 64
