"""The build flow's pieces without running yosys/nextpnr (real builds: test_build.py).

Tool outputs here are small hand-written files in the formats the tools write, so each
parser is checked against known answers, including the cases a real build rarely hits
(a design that does not fit, a timing miss, a rewritten DSP, a failing tool).
"""

import json
import os
import sys

import pytest

from fpgacnn.cli import main
from fpgacnn.hw.boards import BOARDS, get_board
from fpgacnn.hw.build_report import (BuildError, BuildReport, breakdown_from_netlist,
                                     check_hand_dsps, format_breakdown, read_nextpnr)
from fpgacnn.hw.flow import (RECORD_NAME, build_board, default_build_dir, design_digest,
                             load_build)
from fpgacnn.hw.toolchain import Status, run_step, toolchain_overrides

# nextpnr-ice40's utilisation lines and Fmax lines, as in its log.
NEXTPNR_LOG = """\
Info: Device utilisation:
Info: 	         ICESTORM_LC:  4000/ 5280    75%
Info: 	        ICESTORM_RAM:    40/   30   133%
Info: 	       ICESTORM_DSP:     4/    8    50%
Info: Max frequency for clock 'clk12$SB_IO_IN': 150.10 MHz (PASS at 12.00 MHz)
Info: Max frequency for clock 'pll_clk': 22.50 MHz (FAIL at 24.00 MHz)
"""


def nextpnr_report(core_fmax):
    """A ``--report`` JSON: a 12 MHz oscillator clock and a PLL clock near 24 MHz."""
    segment = {"type": "routing", "delay": 1.25, "net": "n1",
               "from": {"cell": "a", "port": "O"}, "to": {"cell": "b", "port": "I0"}}
    return {
        "utilization": {"ICESTORM_LC": {"used": 4973, "available": 5280},
                        "ICESTORM_DSP": {"used": 4, "available": 8}},
        "fmax": {"clk12": {"achieved": 200.0, "constraint": 12.0},
                 "pll_clk": {"achieved": core_fmax, "constraint": 24.0023}},
        "critical_paths": [
            {"from": "clk12", "to": "clk12", "path": [dict(segment, net="osc")]},
            {"from": "pll_clk", "to": "pll_clk",
             "path": [segment, dict(segment, type="setup", delay=0.5, net=None),
                      dict(segment, type="unknown")]}],
    }


def test_read_nextpnr_prefers_the_json_report(tmp_path):
    (tmp_path / "top.tim").write_text(NEXTPNR_LOG)
    (tmp_path / "top_report.json").write_text(json.dumps(nextpnr_report(27.09)))
    util, fmax, path = read_nextpnr(tmp_path / "top.tim", tmp_path / "top_report.json", 24.0)
    # The report overrides the log's lines it also has; the log's others stay.
    assert util == {"ICESTORM_LC": [4973, 5280], "ICESTORM_RAM": [40, 30],
                    "ICESTORM_DSP": [4, 8]}
    assert fmax == 27.09                      # the core clock's, not the oscillator's
    assert path == ["routing     1.25  a.O → b.I0  [n1]", "setup       0.50  a.O → b.I0"]


def test_read_nextpnr_from_the_log_of_an_unfinished_run(tmp_path):
    (tmp_path / "top.tim").write_text(NEXTPNR_LOG)
    util, fmax, path = read_nextpnr(tmp_path / "top.tim", tmp_path / "absent.json", 24.0)
    assert util["ICESTORM_RAM"] == [40, 30] and fmax == 22.5 and path == []
    assert read_nextpnr(tmp_path / "none.tim", tmp_path / "absent.json", 24.0) == \
        ({}, None, [])


def make_report(**fields):
    base = {"board": "icebreaker", "family": "ice40", "build_dir": "b", "fits": True,
            "fmax_mhz": 27.0, "target_mhz": 24.0, "utilisation": {"ICESTORM_LC": [4973, 5280]}}
    return BuildReport(**{**base, **fields})


def test_report_verdicts_and_summary(tmp_path):
    met = make_report(bitstream=tmp_path / "top.bin")
    assert met.ok and met.meets_timing and met.over_capacity == []
    text = met.summary()
    assert "LUT4/FF (logic cells)    ICESTORM_LC        4973   5280   94%" in text
    assert "Fmax 27.00 MHz vs target 24.00 MHz: timing met" in text
    missed = make_report(fmax_mhz=22.5, critical_path=["routing 1.0"])
    assert not missed.meets_timing and not missed.ok
    assert "timing MISSED" in missed.summary() and "  routing 1.0" in missed.summary()
    over = make_report(fits=False, fmax_mhz=None, utilisation={"ICESTORM_RAM": [40, 30]},
                       error="nextpnr-ice40 failed: ERROR: out of RAM")
    assert over.over_capacity == ["ICESTORM_RAM"]
    text = over.summary()
    assert "133%  OVER" in text and "does NOT fit" in text and "not reached" in text
    assert "error: nextpnr-ice40 failed" in text and text.endswith("bitstream: none")


def test_report_json_keys_and_record_round_trip(tmp_path):
    report = make_report(bitstream=tmp_path / "top.bin", build_dir=tmp_path,
                         logs={"yosys": tmp_path / "top.rpt"}, seconds={"yosys": 1.5},
                         rtlil_sha256="ab" * 32, seed=3)
    assert set(report.to_json()) == {"board", "fits", "fmax_mhz", "target_mhz",
                                     "utilisation", "bitstream"}
    record = json.loads(json.dumps(report.to_record()))
    assert BuildReport.from_record(record) == report


def test_check_hand_dsps(tmp_path):
    # Two 8x8 blocks in the RTLIL; the netlist keeps one (in a submodule) and rewrote one.
    (tmp_path / "top.il").write_text("parameter \\MODE_8x8 1'1\n" * 2)
    cells = [{"type": "SB_MAC16", "parameters": {"MODE_8x8": "1"}},
             {"type": "SB_MAC16", "parameters": {"MODE_8x8": "0"}},
             {"type": "SB_LUT4", "parameters": {}}]
    modules = {"top": {"cells": {"m0": cells[0], "l": cells[2]}}, "sub": {"cells": {}}}
    (tmp_path / "top.json").write_text(json.dumps({"modules": modules}))
    with pytest.raises(BuildError, match="rewrote 1 of 2 hand-instantiated"):
        check_hand_dsps(tmp_path)
    modules["sub"]["cells"]["m1"] = cells[0]
    (tmp_path / "top.json").write_text(json.dumps({"modules": modules}))
    assert check_hand_dsps(tmp_path) == 2


def test_breakdown_counts_submodules_biggest_first(tmp_path):
    def cells(*types):
        return {f"c{i}": {"type": t} for i, t in enumerate(types)}
    modules = {
        "top": {"cells": {"\\small": {"type": "small"}, "\\big": {"type": "big"},
                          **cells("SB_LUT4")}},
        "big": {"cells": {"\\leaf": {"type": "small"}, **cells("SB_LUT4", "SB_DFFE",
                                                               "SB_MAC16")}},
        "small": {"cells": cells("SB_RAM40_4K", "SB_CARRY")},
        "SB_LUT4": {"attributes": {"blackbox": "1"}, "cells": {}},
    }
    (tmp_path / "hier.json").write_text(json.dumps({"modules": modules}))
    rows = breakdown_from_netlist(tmp_path / "hier.json", "ice40")
    zero = dict.fromkeys(["LUT4", "FF", "CARRY", "DSP", "EBR", "SPRAM"], 0)
    small = {**zero, "CARRY": 1, "EBR": 1}
    big = {**zero, "LUT4": 1, "FF": 1, "DSP": 1, "CARRY": 1, "EBR": 1}
    assert rows == [("top", {**big, "LUT4": 2, "CARRY": 2, "EBR": 2}), ("top.big", big),
                    ("top.big.leaf", small), ("top.small", small)]
    assert [path for path, _ in breakdown_from_netlist(tmp_path / "hier.json", "ice40",
                                                       depth=0)] == ["top"]
    table = format_breakdown(rows).splitlines()
    assert table[0].split() == ["instance", *zero] and table[2].split()[0] == "top.big"


def test_toolchain_overrides():
    options = toolchain_overrides(7)
    assert "--seed 7" in options["nextpnr_opts"]
    assert "--report top_report.json" in options["nextpnr_opts"]
    assert "--timing-allow-fail" in options["nextpnr_opts"]
    for bad in (-1, 1.5, "1", True):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            toolchain_overrides(bad)


def fake_tool(tmp_path, script):
    """An executable ``fake-tool`` on a PATH of its own; returns that environment."""
    tool = tmp_path / "bin" / "fake-tool"
    tool.parent.mkdir()
    tool.write_text(f"#!{sys.executable}\n{script}")
    tool.chmod(0o755)
    return {**os.environ, "PATH": str(tool.parent)}


def test_run_step_follows_the_tools_log(tmp_path):
    env = fake_tool(tmp_path, "import sys\nlog = open(sys.argv[sys.argv.index('--log') + 1], "
                              "'w')\nlog.write('Info: placing\\nERROR: no fit\\n')\n"
                              "print('console')\nsys.exit(3)\n")
    step = run_step(2, 3, ["fake-tool", "--log", "fake.log", "-q"], env, tmp_path,
                    Status(False))
    assert step.code == 3 and step.error == "ERROR: no fit"
    assert step.log == tmp_path / "fake.log"
    assert (tmp_path / "2-fake-tool.out").read_text() == "console\n"


def test_run_step_without_log_reads_the_console(tmp_path):
    env = fake_tool(tmp_path, "print('ERROR: bad input')\n")
    step = run_step("B", "B", ["fake-tool"], env, tmp_path, Status(False))
    assert step.code == 0 and step.error == "ERROR: bad input"
    assert step.log == tmp_path / "B-fake-tool.out"


def test_build_refuses_bad_arguments_before_touching_disk(tmp_path):
    config = BOARDS["icebreaker"].config
    with pytest.raises(ValueError, match="cannot make exactly 37 MHz"):
        build_board("icebreaker", config=config.with_(clock_hz=37_000_000),
                    build_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="unknown board 'nope'"):
        build_board("nope", build_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_bad_clock_is_one_line_exit_2(tmp_path, capsys):
    assert main(["build", "--clock-mhz", "37", "--build-dir", str(tmp_path / "o")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "cannot make exactly 37 MHz" in err
    assert main(["build", "--clock-mhz", "-5"]) == 2
    assert capsys.readouterr().err == "error: --clock-mhz must be positive, not -5.0\n"


def test_cli_bad_baud_is_one_line_exit_2(tmp_path, capsys):
    """--baud is checked against the core clock (4 clocks per bit, 2 %) and the board's
    USB-UART bridge before anything is built or simulated."""
    # The iCEBreaker's core clock is 30 MHz: 10 Mbaud is 3 clocks per bit, 5.5 Mbaud's
    # nearest divisor (5) gives 6 Mbaud.
    cases = [(["build", "--baud", "10000000", "--build-dir", str(tmp_path / "o")],
              "3.00 clocks per bit; the UART needs at least 4"),
             (["sim-board", "--baud", "5500000", "--port", "0"], "(9.1% off, over 2%)"),
             (["bench", "--board", "ulx3s-85f", "--baud", "6000000"],
              "the ulx3s-85f's FT231X bridge does 1..3,000,000 baud"),
             (["bench", "--baud", "0"], "FT2232H bridge does 1..12,000,000 baud"),
             (["demo", "--baud", "-3"], "FT2232H bridge does 1..12,000,000 baud")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and message in err, (argv, err)
    assert not (tmp_path / "o").exists()


def test_load_build_reuses_only_a_matching_complete_build(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "top.bin").write_bytes(b"\0")
    digest = design_digest("icebreaker", design="array")
    seed = get_board("icebreaker").seed          # a build without --seed uses the board's
    report = make_report(build_dir=folder, design="array", bitstream=folder / "top.bin",
                         rtlil_sha256=digest, seed=seed)

    def load(**changes):
        record = {**report.to_record(), **changes}
        (folder / RECORD_NAME).write_text(json.dumps(record))
        return load_build("icebreaker", design="array", build_dir=folder)

    reused = load()
    assert reused.reused and reused.fmax_mhz == 27.0 and reused.rtlil_sha256 == digest
    assert load(rtlil_sha256="0" * 64) is None         # the gateware changed since
    assert load(seed=seed + 1) is None
    assert load(fmax_mhz=20.0) is None                 # that build missed timing
    (folder / "top.bin").unlink()
    assert load() is None
    assert load_build("icebreaker", build_dir=tmp_path / "absent") is None
    assert default_build_dir("icebreaker", "array").as_posix() == "build/icebreaker-array"


def test_sim_board_bad_port_goes_to_stderr(capsys):
    assert main(["sim-board", "--port", "70000"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "error: --port 70000 is not a TCP port (0..65535)\n"


def test_sim_board_failure_is_one_line_exit_1(monkeypatch, capsys):
    # A failed Verilator build appends its log's tail to the error; only the line naming
    # the log is printed.
    from fpgacnn.sim import simboard

    def fail(*args, **kwargs):
        raise simboard.SimBoardError("Verilator build of the simulated board failed "
                                     "(log: b/build.log):\n%Error: x.v:1\nmore")
    monkeypatch.setattr(simboard, "serve_forever", fail)
    assert main(["sim-board", "--port", "0"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == ("error: Verilator build of the simulated board failed "
                                 "(log: b/build.log):\n")


def test_cli_bench_few_images_default_post_synthesis(monkeypatch, capsys):
    # The netlist digits default to 3, or --images if fewer: `bench --network` (which runs
    # no netlist) with 2 images used to stop at "--post-synthesis 3" the user never gave.
    from fpgacnn.commands import bench_network
    seen = []
    monkeypatch.setattr(bench_network, "run",
                        lambda args, config: seen.append((args.images, args.post_synthesis)))
    argv = ["bench", "--board", "icebreaker", "--network", "seeds-layer", "--images", "2",
            "--no-build"]
    assert main(argv) == 0 and seen == [(2, 2)]
    assert main(["bench", "--images", "2", "--post-synthesis", "3"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == ("error: --images 2 --post-synthesis 3: choose 1..1000 "
                                 "images, 0..images of them on the netlist\n")
