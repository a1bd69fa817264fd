"""NumPy training: layer gradients against finite differences, golden conventions, smoke run."""

import json

import numpy as np
import pytest

from fpgacnn.sw import golden, mnist
from fpgacnn.sw import network as nets
from fpgacnn.sw import train as tr

TINY = nets.Network("tiny", (1, 8, 8), [
    nets.Conv(2, 3, pad=1), nets.ReLU(), nets.MaxPool(2, 2),
    nets.Conv(3, 3, stride=1), nets.ReLU(),
    nets.FC(5), nets.ReLU(), nets.FC(3),
])


def numeric_grad(f, x, eps=1e-6):
    """Central differences of scalar ``f()`` w.r.t. every element of ``x`` (in place)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def assert_grad(analytic, numeric, tol=1e-6):
    err = np.abs(analytic - numeric).max() / max(np.abs(numeric).max(), 1e-12)
    assert err < tol, f"relative gradient error {err:.3g}"


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("geometry", [(5, 3, 1, 1), (5, 3, 2, 0), (6, 2, 2, 1), (4, 1, 1, 0)])
def test_conv_backward_matches_finite_differences(seed, geometry):
    size, f, stride, pad = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2, size, size))
    w = rng.standard_normal((3, 2, f, f))
    b = rng.standard_normal(3)
    y, cache = tr.conv_forward(x, w, b, stride, pad)
    r = rng.standard_normal(y.shape)
    dx, dw, db = tr.conv_backward(r, cache)

    def loss():
        return float((tr.conv_forward(x, w, b, stride, pad)[0] * r).sum())

    assert_grad(dx, numeric_grad(loss, x))
    assert_grad(dw, numeric_grad(loss, w))
    assert_grad(db, numeric_grad(loss, b))


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("kernel,stride,size", [(2, 2, 4), (3, 2, 5), (2, 1, 3)])
def test_pool_backward_matches_finite_differences(seed, kernel, stride, size):
    rng = np.random.default_rng(seed)
    # Distinct values spaced far wider than eps, so no window max is at a tie (a kink).
    x = rng.permutation(2 * 2 * size * size).reshape(2, 2, size, size) * 0.1
    y, cache = tr.pool_forward(x, kernel, stride)
    r = rng.standard_normal(y.shape)
    dx = tr.pool_backward(r, cache)
    assert_grad(dx, numeric_grad(lambda: float((tr.pool_forward(x, kernel, stride)[0] * r)
                                               .sum()), x))


def test_pool_tie_goes_to_one_element():
    x = np.zeros((1, 1, 2, 2))
    y, cache = tr.pool_forward(x, 2, 2)
    dx = tr.pool_backward(np.ones_like(y), cache)
    np.testing.assert_array_equal(dx, [[[[1, 0], [0, 0]]]])


def test_fc_and_softmax_backward_match_finite_differences():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 2, 2))
    w = rng.standard_normal((4, 8))
    b = rng.standard_normal(4)
    labels = np.array([0, 3, 1])

    def loss():
        return float(tr.softmax_cross_entropy(tr.fc_forward(x, w, b)[0], labels)[0])

    logits, cache = tr.fc_forward(x, w, b)
    _, dlogits = tr.softmax_cross_entropy(logits, labels)
    dx, dw, db = tr.fc_backward(dlogits, cache)
    assert dx.shape == x.shape
    assert_grad(dx, numeric_grad(loss, x))
    assert_grad(dw, numeric_grad(loss, w))
    assert_grad(db, numeric_grad(loss, b))


def test_whole_network_gradients_match_finite_differences():
    rng = np.random.default_rng(7)
    model = tr.init_model(TINY, rng, dtype=np.float64)
    for bias in model.biases:
        bias += rng.standard_normal(bias.shape) * 0.1    # make ReLUs and pools non-trivial
    x = rng.standard_normal((4, 1, 8, 8))
    labels = np.array([0, 1, 2, 1])
    _, grads = tr.loss_and_grads(model, x, labels)

    def loss():
        return float(tr.loss_and_grads(model, x, labels)[0])

    for p, (dw, db) in zip(zip(model.weights, model.biases), grads):
        assert_grad(dw, numeric_grad(loss, p[0]), tol=1e-5)
        assert_grad(db, numeric_grad(loss, p[1]), tol=1e-5)


@pytest.mark.parametrize("stride,pad", [(1, 2), (1, 0), (2, 1)])
def test_float_conv_is_golden_cross_correlation(stride, pad):
    # Same patch order (c, fy, fx), padding and orientation as the integer reference.
    rng = np.random.default_rng(stride * 10 + pad)
    x = rng.integers(-128, 128, (1, 3, 9, 9), dtype=np.int8)
    w = rng.integers(-128, 128, (4, 3, 5, 5), dtype=np.int8)
    b = rng.integers(-1000, 1000, 4).astype(np.int32)
    y, _ = tr.conv_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                           stride, pad)
    ref = golden.conv2d(x[0], w, b, stride=stride, pad=pad)
    np.testing.assert_array_equal(y[0].astype(np.int64), ref)


def test_fc_flattening_is_golden_order():
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (1, 2, 3, 3), dtype=np.int8)
    w = rng.integers(-128, 128, (5, 18), dtype=np.int8)
    y, _ = tr.fc_forward(x.astype(np.float64), w.astype(np.float64), np.zeros(5))
    np.testing.assert_array_equal(y[0].astype(np.int64), golden.fully_connected(x[0], w))


@pytest.mark.parametrize("seed", range(3))
def test_random_shift_translates_within_range(seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 256, (20, 10, 10), dtype=np.uint8)   # no zeros: shifts are unique
    shifted = tr.random_shift(images, rng, 2)
    assert shifted.dtype == np.uint8 and shifted.shape == images.shape
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    seen = set()
    for img, out in zip(padded, shifted):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(img[2 - dy:12 - dy, 2 - dx:12 - dx], out)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 5
    np.testing.assert_array_equal(tr.random_shift(images, rng, 0), images)


@pytest.fixture(scope="module")
def digits():
    (x, y), _ = mnist.split()
    return x[:320], y[:320]


def test_training_reduces_loss_and_is_deterministic(digits):
    x, y = digits
    a = tr.train(nets.lenet5(), x, y, epochs=8, seed=11, progress=False)
    assert a.history[-1] < 0.7 * a.history[0], a.history
    assert a.accuracy(x, y) > 0.5
    b = tr.train(nets.lenet5(), x, y, epochs=8, seed=11, progress=False)
    assert a.history == b.history
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa, wb)


def test_training_rejects_bad_input(digits):
    x, y = digits
    with pytest.raises(TypeError, match="uint8"):
        tr.train(nets.lenet5(), x.astype(np.float32), y, epochs=1, progress=False)
    with pytest.raises(ValueError, match="320 images but 319 labels"):
        tr.train(nets.lenet5(), x, y[:-1], epochs=1, progress=False)
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        tr.train(nets.lenet5(), x, y + 1, epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        tr.train(nets.lenet5(), x, y, epochs=0, progress=False)


def test_train_command_writes_model_and_json(tmp_path, capsys):
    from fpgacnn import cli
    from fpgacnn.sw import modelfile

    out, report = tmp_path / "m.npz", tmp_path / "r" / "acc.json"
    assert cli.main(["train", "--epochs", "3", "--seed", "2", "--train-digits", "500",
                     "--out", str(out), "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "int8" in printed
    result = json.loads(report.read_text())
    assert set(result) == {"accuracy_float", "accuracy_int8", "heldout"}
    assert result["heldout"] == 1000 and 0.4 < result["accuracy_int8"] <= 1
    _, _, meta = modelfile.load(out, expect=nets.lenet5())
    assert meta["epochs"] == 3 and meta["seed"] == 2 and len(meta["train_loss"]) == 3
    assert meta["train"] == 500
    assert {k: meta[k] for k in result} == result
    assert cli.main(["train", "--epochs", "0"]) == 2
    assert cli.main(["train", "--train-digits", "4001"]) == 2
    assert "--train-digits must lie in 1..4000, not 4001" in capsys.readouterr().err


def test_train_command_on_idx_files(tmp_path, capsys):
    from fpgacnn import cli
    from fpgacnn.sw import modelfile

    (tx, ty), (hx, hy) = mnist.split()
    for kind, x, y in (("train", tx[:400], ty[:400]), ("t10k", hx[:150], hy[:150])):
        for what, n, a in (("images", 3, x), ("labels", 1, y)):
            header = bytes([0, 0, 8, a.ndim]) + b"".join(
                int(d).to_bytes(4, "big") for d in a.shape)
            (tmp_path / f"{kind}-{what}-idx{n}-ubyte").write_bytes(header + a.tobytes())
    out = tmp_path / "m.npz"
    assert cli.main(["train", "--idx", str(tmp_path), "--epochs", "3", "--out", str(out)]) == 0
    _, _, meta = modelfile.load(out)
    assert meta["train"] == 400 and meta["heldout"] == 150 and "IDX" in meta["dataset"]
    assert 0.4 < meta["accuracy_int8"] <= 1
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05")
    capsys.readouterr()
    assert cli.main(["train", "--idx", str(tmp_path), "--out", str(out)]) == 2
    assert "file truncated" in capsys.readouterr().err
    assert cli.main(["train", "--idx", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
