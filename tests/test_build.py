"""Bitstream builds (``fpgacnn build``): PLL settings, the flow, fit and timing.

Builds are slow (minutes each, more on a fresh machine where each YoWASP tool is
compiled first), so each is done once per module and shared by the tests that read it.
Unit tests of the flow's pieces without running the tools: test_flow.py.
"""

import json
import os
import re
import subprocess

import pytest

from fpgacnn.cli import main
from fpgacnn.hw.boards import ecp5_pll, ice40_pll
from fpgacnn.hw.config import get_config
from fpgacnn.hw.flow import build_board
from fpgacnn.hw.requant import mul16_blocks
from fpgacnn.sim.toolchain import setup_yowasp_env

pytestmark = pytest.mark.slow


def run_tool(tool, *args, cwd):
    env = setup_yowasp_env(dict(os.environ))
    exe = os.path.join(os.path.dirname(env["YOSYS"]), tool)
    return subprocess.run([exe, *args], env=env, cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


@pytest.mark.parametrize("mhz", [36, 30, 48, 24])
def test_ice40_pll_matches_icepll(mhz, tmp_path):
    out = run_tool("yowasp-icepll", "-i", "12", "-o", str(mhz), cwd=tmp_path)
    assert f"F_PLLOUT:   {mhz:.3f} MHz (achieved)" in out, out
    expected = {k: int(v) for k, v in re.findall(r"^(DIVR|DIVF|DIVQ|FILTER_RANGE):\s+(\d+)",
                                                   out, re.MULTILINE)}
    ours = ice40_pll(12e6, mhz * 1e6)
    assert {k: ours[k] for k in expected} == expected


def test_plls_refuse_inexact_clocks():
    # icepll/ecppll would silently pick the nearest frequency; the UART divisor and the
    # board's identity frame assume the exact one.
    with pytest.raises(ValueError, match="cannot make exactly 37 MHz"):
        ice40_pll(12e6, 37e6)
    with pytest.raises(ValueError, match="cannot make exactly 36 MHz from 25 MHz"):
        ecp5_pll(25e6, 36e6)


@pytest.mark.parametrize("mhz", [50, 40, 75, 25])
def test_ecp5_pll_matches_ecppll(mhz, tmp_path):
    run_tool("yowasp-ecppll", "-i", "25", "-o", str(mhz), "-f", "pll.v", cwd=tmp_path)
    text = (tmp_path / "pll.v").read_text()
    expected = {k: int(v) for k, v in re.findall(
        r"\.(CLKI_DIV|CLKFB_DIV|CLKOP_DIV|CLKOP_CPHASE)\((\d+)\)", text)}
    ours = ecp5_pll(25e6, mhz * 1e6)
    assert {k: ours[k] for k in expected} == expected


@pytest.fixture(scope="module")
def icebreaker_full(build_dir):
    return build_board("icebreaker", build_dir=build_dir / "test-icebreaker", progress=False)


def test_icebreaker_full_build_reports(icebreaker_full):
    # The real BoardTop goes through synthesis with its hand-made SB_MAC16 intact
    # (check_hand_dsps ran after yosys) and nextpnr reports every resource of the UP5K.
    r, config = icebreaker_full, get_config("icebreaker")
    assert r.error is None or "nextpnr" in r.error, r.summary()
    for cell, total in [("ICESTORM_LC", 5280), ("ICESTORM_DSP", 8), ("ICESTORM_RAM", 30),
                        ("ICESTORM_SPRAM", 4)]:
        assert r.utilisation[cell][1] == total, r.utilisation
    # The array's 8x8 pairs, and a full-rate requantiser's 16x16 blocks (at 2 cycles per
    # value its product is in logic cells).
    requant = (mul16_blocks(config.acc_width, config.bias_width)
               if config.requant_interval == 1 else 0)
    assert r.utilisation["ICESTORM_DSP"][0] == config.multipliers // 2 + requant, r.summary()
    assert r.target_mhz == config.clock_hz / 1e6


def test_icebreaker_full_fits_and_meets_its_clock(icebreaker_full):
    r = icebreaker_full
    assert r.fits, r.summary()
    assert r.fmax_mhz >= get_config("icebreaker").clock_hz / 1e6, r.summary()
    assert r.bitstream is not None and r.bitstream.stat().st_size > 100_000


def test_icebreaker_array_build_cli(build_dir, capsys):
    # The whole flow on the systolic array behind the UART: PLL, DSPs, fits, meets the
    # configured clock, bitstream, the --json summary and the per-unit breakdown.
    out_dir, summary = build_dir / "test-icebreaker-array", build_dir / "test-ice-array.json"
    assert main(["build", "--design", "array", "--build-dir", str(out_dir),
                 "--json", str(summary), "--breakdown"]) == 0, capsys.readouterr()
    report = json.loads(summary.read_text())
    assert set(report) == {"board", "fits", "fmax_mhz", "target_mhz", "utilisation",
                           "bitstream"}
    assert report["board"] == "icebreaker" and report["fits"] is True
    config = get_config("icebreaker")
    assert report["target_mhz"] == config.clock_hz / 1e6
    assert report["fmax_mhz"] >= report["target_mhz"]
    assert report["utilisation"]["ICESTORM_DSP"] == [config.multipliers // 2, 8]
    assert report["utilisation"]["ICESTORM_PLL"] == [1, 1]
    # An iCE40UP5K image is 104,090 bytes.
    assert os.path.getsize(report["bitstream"]) == 104_090
    text = capsys.readouterr().out
    assert "timing met" in text and "DSP (SB_MAC16)" in text
    # Breakdown: the top's row first, the array's multipliers are all its DSPs.
    table = (out_dir / "breakdown.txt").read_text().splitlines()
    assert table[0].split() == ["instance", "LUT4", "FF", "CARRY", "DSP", "EBR", "SPRAM"]
    rows = {line.split()[0]: [int(v) for v in line.split()[1:]] for line in table[1:]}
    assert table[1].split()[0] == "top" and rows["top"][3] == config.multipliers // 2
    assert rows["top.top.array"][3] == config.multipliers // 2, table
    assert "\n".join(table) in text


def test_timing_miss_exits_nonzero(build_dir, capsys):
    # 120 MHz is far beyond the array's Fmax on an iCE40: reported, critical path shown,
    # exit status 1.
    summary = build_dir / "test-ice-120.json"
    assert main(["build", "--design", "array", "--clock-mhz", "120", "--build-dir",
                 str(build_dir / "test-icebreaker-120"), "--json", str(summary)]) == 1
    captured = capsys.readouterr()
    assert "timing MISSED" in captured.out and "critical path" in captured.out
    assert "timing missed" in captured.err
    report = json.loads(summary.read_text())
    assert report["fits"] is True and report["target_mhz"] == 120.0
    assert report["fmax_mhz"] < 120.0


def test_ulx3s_smoke_build(build_dir):
    # An 8x1 array (the smallest shape a configuration allows) behind the UART on the
    # ECP5-85F: EHXPLLL 25 MHz -> the configuration's clock, one MULT18X18D per
    # multiplier, bitstream written (the full design takes much longer to route).
    config = get_config("ulx3s-85f").with_(rows=8, cols=1, result_lanes=4)
    r = build_board("ulx3s-85f", design="array", config=config,
                    build_dir=build_dir / "test-ulx3s-array", progress=False)
    assert r.ok, r.summary()
    assert r.target_mhz == config.clock_hz / 1e6 and r.fmax_mhz >= r.target_mhz
    assert r.utilisation["MULT18X18D"] == [8, 156], r.utilisation
    assert r.utilisation["EHXPLLL"][0] == 1
    assert r.bitstream.suffix == ".bit" and r.bitstream.stat().st_size > 100_000
