"""int8 quantisation: weight/multiplier ranges and int8 (golden model) agreement with float."""

import numpy as np
import pytest

from fpgacnn.sw import golden, mnist
from fpgacnn.sw import network as nets
from fpgacnn.sw import quantize as qz
from fpgacnn.sw import train as tr


@pytest.mark.parametrize("seed", range(3))
def test_choose_multiplier_uses_all_m_bits_and_is_accurate(seed):
    rng = np.random.default_rng(seed)
    real = 10.0 ** rng.uniform(-12, np.log10(2.0 ** (golden.M_BITS - 1) - 1), 500)
    m, s = qz.choose_multiplier(real)
    assert m.dtype == np.int64 and s.dtype == np.int64
    assert np.all((golden.S_MIN <= s) & (s <= golden.S_MAX))
    assert np.all((1 << (golden.M_BITS - 1) <= m) & (m < 1 << golden.M_BITS))
    np.testing.assert_array_less(np.abs(m / 2.0 ** s - real) / real, 2.0 ** -golden.M_BITS)


def test_choose_multiplier_edges():
    # Rounds up to 2**M_BITS at the natural shift: the shift must drop by one.
    b = golden.M_BITS
    real = (2 ** b - 0.25) / 2 ** 20
    m, s = qz.choose_multiplier([real])
    assert m[0] < 1 << b and s[0] == 19 and m[0] == 1 << (b - 1)
    # Largest representable (S = 1) and beyond it.
    m, s = qz.choose_multiplier([2.0 ** (b - 1) - 0.5])
    assert (m[0], s[0]) == (2 ** b - 1, 1)
    with pytest.raises(ValueError, match="needs S < 1"):
        qz.choose_multiplier([2.0 ** b])
    # Zero and tiny multipliers saturate the shift at S_MAX.
    m, s = qz.choose_multiplier([0.0, 2.0 ** -60])
    assert list(m) == [0, 1 << 3] and list(s) == [golden.S_MAX] * 2
    for bad in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="finite and >= 0"):
            qz.choose_multiplier([bad])


@pytest.mark.parametrize("seed", range(3))
def test_quantize_weights_per_channel(seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((6, 3, 5, 5)) * rng.uniform(0.01, 3, (6, 1, 1, 1))
    w[2] = 0                                    # an all-zero channel stays all zero
    q, scale = qz.quantize_weights(w)
    assert q.dtype == np.int8 and q.shape == w.shape
    assert q.min() >= -127 and q.max() <= 127
    live = [k for k in range(6) if k != 2]
    np.testing.assert_array_equal(np.abs(q[live]).reshape(5, -1).max(axis=1), 127)
    np.testing.assert_array_equal(q[2], 0)
    err = np.abs(q * scale[:, None, None, None] - w)
    assert np.all(err <= scale[:, None, None, None] / 2 + 1e-12)


@pytest.fixture(scope="module")
def small_model():
    """LeNet-5 trained for a few seconds on 640 digits, with its calibration data."""
    (x, y), _ = mnist.split()
    x, y = x[:640], y[:640]
    model = tr.train(nets.lenet5(), x, y, epochs=12, seed=3, progress=False)
    return model, x, y


def test_quantized_params_are_in_range(small_model):
    model, x, _ = small_model
    params = qz.quantize(model, x[:200])
    stages = model.network.stages()
    for stage, p in zip(stages, params):
        p.check(stage)                                  # dtypes, shapes, M/S ranges
        assert np.all(p.m >= 1 << (golden.M_BITS - 1)), "M should use all M_BITS bits"
        # The bias fits with room to spare; no accumulator can overflow the golden range.
        bound = golden.accumulator_bound(stage.reduction) + np.abs(p.bias).max()
        assert bound < 1 << 40


def test_batched_int8_forward_is_bit_exact_to_golden(small_model):
    model, x, _ = small_model
    params = qz.quantize(model, x[:200])
    xq = mnist.image_to_int8(x[:40]).reshape(-1, 1, 28, 28)
    ref = np.stack([nets.run_network(model.network, params, xi) for xi in xq])
    np.testing.assert_array_equal(qz.forward_int8_batch(model.network, params, xq), ref)


def test_int8_agrees_with_float(small_model):
    model, x, y = small_model
    params, pct, tried = qz.calibrate(model, x, y)
    assert pct in qz.DEFAULT_PERCENTILES and set(tried) == set(qz.DEFAULT_PERCENTILES)
    sample, labels = x[:200], y[:200]
    float_pred = model.predict(sample)
    int8_pred = qz.predict_int8(model.network, params, sample)
    assert np.mean(float_pred == int8_pred) >= 0.97
    acc_f = np.mean(float_pred == labels)
    acc_q = qz.accuracy_int8(model.network, params, sample, labels)
    assert acc_f > 0.8 and abs(acc_q - acc_f) <= 0.02
    # Dequantised logits track the float logits closely.
    scale = qz.activation_scales(model, x, pct)[-1]
    xq = mnist.image_to_int8(sample).reshape(-1, 1, 28, 28)
    logits_q = qz.forward_int8_batch(model.network, params, xq) * scale
    logits_f = model.forward(mnist.image_to_float(sample).reshape(-1, 1, 28, 28))
    assert np.corrcoef(logits_q.ravel(), logits_f.ravel())[0, 1] > 0.99


def test_dead_model_is_rejected(small_model):
    model, x, _ = small_model
    dead = tr.FloatModel(model.network, [np.zeros_like(w) for w in model.weights],
                         [np.zeros_like(b) for b in model.biases])
    with pytest.raises(ValueError, match="stage 0 outputs are all zero"):
        qz.quantize(dead, x[:10])
    with pytest.raises(ValueError, match="percentile"):
        qz.activation_scales(model, x[:10], 0)
