"""iCE40 primitives: the SB_MAC16 dual 8×8 multiplier, bit-exact and kept by synthesis."""

import json
import os
import subprocess

import pytest
from amaranth.back import rtlil

from fpgacnn.hw.build_report import BuildError, check_hand_dsps
from fpgacnn.hw.toolchain import YOSYS_WORKAROUND
from fpgacnn.hw.ice40 import (SB_MAC16_8X8_SIGNED_PARAMS, SB_MAC16_16X16_SU_PARAMS,
                               Ice40DualMul8, Ice40Mul16)
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
    script = f"read_rtlil top.il; {YOSYS_WORKAROUND}; synth_ice40 {synth_opts} -top top; " \
             f"write_json top.json"
    subprocess.run([env["YOSYS"], "-q", "-l", "yosys.log", "-p", script], env=env,
                   check=True, cwd=tmp_path, stdout=subprocess.DEVNULL)
    return list(json.loads((tmp_path / "top.json").read_text())["modules"]["top"]
                ["cells"].values())


def test_ice40_dualmul8_survives_synthesis(tmp_path):
    # The build's synthesis must keep the hand-made block as one SB_MAC16 with our
    # parameters and no fabric logic (a re-mapped block would only show on the board).
    cells = synthesise(tmp_path)
    types = sorted(c["type"] for c in cells)
    assert types == ["SB_MAC16"], f"expected exactly one SB_MAC16, synthesis gave {types}"
    params = cells[0]["parameters"]
    for name, value in SB_MAC16_8X8_SIGNED_PARAMS.items():
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
