"""Network descriptions: stage grouping, validation, the integer runner, the CLI table."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from fpgacnn.cli import main
from fpgacnn.sw import golden
from fpgacnn.sw.network import (FC, Conv, MaxPool, Network, ReLU, lenet5, random_params,
                                run_network, seeds_cifar_example)


def test_stages_fuse_relu_and_pool():
    s = lenet5().stages()
    assert [(x.kind, x.relu, x.pool) for x in s] == [
        ("conv", True, (2, 2)), ("conv", True, (2, 2)), ("fc", True, None),
        ("fc", True, None), ("fc", False, None)]
    assert s[2].in_shape == (400, 1, 1) and s[2].weight_shape == (120, 400)


@pytest.mark.parametrize("layers, message", [
    ([ReLU(), FC(3)], "ReLU must directly follow"),
    ([MaxPool(2, 2), FC(3)], "MaxPool must follow"),
    ([FC(3), ReLU(), ReLU()], "ReLU must directly follow"),
    ([Conv(2, 3), MaxPool(2, 2), ReLU()], "ReLU must directly follow"),
    ([Conv(2, 3), MaxPool(2, 2), MaxPool(2, 2)], "MaxPool must follow"),
    ([], "at least one Conv or FC"),
])
def test_unsupported_orders_are_rejected(layers, message):
    with pytest.raises(ValueError, match=message):
        Network("n", (1, 8, 8), layers).stages()


def test_run_network_checks_input_and_params():
    net = lenet5()
    params = random_params(net, 0)
    with pytest.raises(ValueError, match=r"int8 input of shape \(1, 28, 28\)"):
        run_network(net, params, np.zeros((28, 28), np.int8))
    with pytest.raises(ValueError, match=r"int8 input"):
        run_network(net, params, np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="5 stages, got 4"):
        run_network(net, params[:4], np.zeros((1, 28, 28), np.int8))
    params[1].weight = params[1].weight[:, :5]
    with pytest.raises(ValueError, match="stage 1 weight: shape"):
        run_network(net, params, np.zeros((1, 28, 28), np.int8))


@pytest.mark.parametrize("seed", range(3))
def test_run_network_is_the_composition_of_golden_units(seed):
    net = seeds_cifar_example()
    params = random_params(net, seed)
    x = np.random.default_rng(seed).integers(-128, 128, net.input_shape, dtype=np.int8)
    p0, p1, p2 = params
    y = golden.requantize(golden.conv2d(x, p0.weight, p0.bias, stride=1, pad=2), p0.m, p0.s,
                          relu=True)
    y = golden.maxpool2d(y, 2, 2)
    y = golden.maxpool2d(golden.requantize(golden.conv2d(y, p1.weight, p1.bias), p1.m, p1.s,
                                           relu=True), 3, 2)
    y = golden.requantize(golden.fully_connected(y, p2.weight, p2.bias), p2.m, p2.s,
                          relu=False)
    assert_array_equal(run_network(net, params, x), y)


def test_random_params_keep_activations_lively():
    net = lenet5()
    params = random_params(net, 7)
    x = np.random.default_rng(7).integers(0, 128, net.input_shape, dtype=np.int8)
    for out in run_network(net, params, x, intermediates=True)[:-1]:
        assert 0.05 < np.mean(out > 0) < 0.95         # neither dead nor saturated


def test_describe_prints_the_lenet5_table(capsys):
    assert main(["describe", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert "61,706" in out and "416,520" in out and "conv 6@5x5 s1 p2 relu pool2/2" in out


def test_readme_limits_table_is_generated(capsys):
    from pathlib import Path

    from fpgacnn.sw.budget import limits_table
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    begin = "<!-- limits: begin (fpgacnn describe --limits) -->\n"
    quoted = readme.split(begin, 1)[1].split("\n<!-- limits: end -->", 1)[0]
    assert quoted == limits_table()
    assert main(["describe", "--limits"]) == 0
    assert capsys.readouterr().out == limits_table() + "\n"
