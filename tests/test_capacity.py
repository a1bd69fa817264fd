"""Outputs of any size and per-stage taps, through the public API on the simulated board.

The final layer's output is read back from the activation memory, so a network may end
in any map that fits it; ``Accelerator.infer(images, taps=[...])`` returns the int8 map of
each requested stage. Everything is compared bit-exact with the golden model
(``network.run_network`` and its per-stage intermediates). The iCEBreaker board is the one
build ``tests/test_simboard.py`` uses (cached); the ULX3S-85F build is compiled once here.
"""

import numpy as np
import pytest
from fpgacnn.sim.simboard import SimBoard
from fpgacnn.sw import mnist
from fpgacnn.sw import network as nets
from fpgacnn.sw.driver import Accelerator
from fpgacnn.sw.taps import first_difference
from numpy.testing import assert_array_equal

from fpgacnn.cli import main


def edge_images(shape, seed, n_random):
    """``n_random`` seeded random int8 images, then all -128, all 127 and all 0."""
    rng = np.random.default_rng(seed)
    x = [rng.integers(-128, 128, shape, dtype=np.int8) for _ in range(n_random)]
    x += [np.full(shape, v, np.int8) for v in (-128, 127, 0)]
    return np.stack(x)


def golden_maps(net, params, images):
    """Per stage, the golden int8 output maps of ``images``: a list of (N, C, H, W)."""
    per_image = [nets.run_network(net, params, x, intermediates=True) for x in images]
    return [np.stack([maps[i] for maps in per_image]) for i in range(len(per_image[0]))]


def connected(config, timeout):
    """An Accelerator on a fresh simulated board of ``config`` (a fixture generator)."""
    with SimBoard(config, progress=None) as b, Accelerator.open(b.url, timeout=timeout) as acc:
        yield acc


@pytest.fixture(scope="module")
def icebreaker():
    yield from connected("icebreaker", 60)


@pytest.fixture(scope="module")
def ulx3s():
    yield from connected("ulx3s-85f", 120)


@pytest.mark.parametrize("seed", [3])
def test_lenet5_every_stage_tapped(icebreaker, seed):
    net = nets.lenet5()
    params = nets.random_params(net, seed)
    icebreaker.load(net, params, progress=False)
    x = edge_images(net.input_shape, seed, 2)
    want = golden_maps(net, params, x)
    classes, logits, maps = icebreaker.infer(x, progress=False, taps=range(len(want)))
    assert sorted(maps) == list(range(len(want)))
    for i, w in enumerate(want):
        assert maps[i].dtype == np.int8
        assert_array_equal(maps[i], w, err_msg=f"stage {i}")
    assert_array_equal(logits, want[-1].reshape(len(x), -1))
    assert_array_equal(classes, want[-1].reshape(len(x), -1).argmax(axis=1))
    # The taps leave the whole program loaded: a plain run gives the same logits.
    again = icebreaker.infer(x[:1], progress=False)[1]
    assert_array_equal(again, logits[:1])


def test_tap_out_of_range_is_refused(icebreaker):
    net = nets.lenet5()
    icebreaker.load(net, nets.random_params(net, 0), progress=False)
    x = edge_images(net.input_shape, 0, 1)[:1]
    with pytest.raises(ValueError, match=r"tap 5 is not a stage of lenet5: choose 0 to 4"):
        icebreaker.infer(x, progress=False, taps=[1, 5])


def test_first_difference_names_stage_image_and_position():
    net = nets.lenet5()
    params = nets.random_params(net, 4)
    x = edge_images(net.input_shape, 4, 2)
    maps = dict(enumerate(golden_maps(net, params, x)))
    assert first_difference(net, params, x, maps) is None
    maps[3] = maps[3].copy()
    maps[3][1, 7, 0, 0] ^= 1                        # stage 3, image 1, channel 7
    maps[1] = maps[1].copy()
    maps[1][2, 15, 4, 3] ^= 0x40                    # an earlier stage wins
    diff = first_difference(net, params, x, maps)
    assert (diff["stage"], diff["image"], diff["index"], diff["count"]) == (1, 2, (15, 4, 3), 1)
    assert diff["board"] == maps[1][2, 15, 4, 3] and diff["golden"] == diff["board"] ^ 0x40


def test_cli_infer_taps(tmp_path, capsys):
    digits = tmp_path / "digits.npy"
    np.save(digits, mnist.heldout()[0][:2])
    with SimBoard("icebreaker", progress=None) as board:    # its own connection
        assert main(["infer", "--port", board.url, "--timeout", "30", "--taps", "--",
                     str(digits)]) == 0
    out = capsys.readouterr().out
    for i, shape in enumerate(s.out_shape for s in nets.lenet5().stages()):
        assert f"stage {i} output {shape}: matches the golden model" in out
    assert "board and golden model agree on every tapped stage of 2 image(s)" in out


def test_large_output_on_icebreaker(icebreaker):
    # 2 × 3x16x16 images + a 16x16x16 map (no logits-sized limit): 5,632 of 4,096 B
    # would not fit, 8x16x16 = 2,048 B does.
    net = nets.Network("big-out", (3, 16, 16), [nets.Conv(8, 3, pad=1), nets.ReLU()])
    params = nets.random_params(net, 5)
    icebreaker.load(net, params, progress=False)
    x = edge_images(net.input_shape, 5, 1)
    _, out = icebreaker.infer(x, progress=False)
    assert out.shape == (len(x), 8 * 16 * 16)
    assert_array_equal(out, golden_maps(net, params, x)[0].reshape(len(x), -1))


@pytest.mark.parametrize("make, seed", [(nets.seeds_layer, 11), (nets.cifar_small, 12),
                                        (nets.wide64, 13)])
def test_networks_on_ulx3s(ulx3s, make, seed):
    check_network(ulx3s, make(), seed, n_random=1)


def random_small_network(seed, conv_geometry):
    """Seeded conv blocks (kernel 1..5, stride 1..2, pad 0..2; pool 2/2, 2/1, 3/2 or none;
    the first block with 1..8 channels half the time, where pixel pairs may pay), then
    0..2 FC layers on at most 1,024 inputs."""
    rng = np.random.default_rng(seed)
    c, h = int(rng.integers(1, 4)), int(rng.integers(8, 25))
    shape, layers = (c, h, h), []
    for i in range(int(rng.integers(1, 4))):
        k, s, p = conv_geometry(rng, shape[1])
        out = int(rng.integers(1, 9 if i == 0 and rng.random() < 0.5 else 25))
        size = (shape[1] - k + 2 * p) // s + 1
        layers += [nets.Conv(out, k, s, p), nets.ReLU()]
        pools = [(pk, ps) for pk, ps in ((2, 2), (2, 1), (3, 2))
                 if size >= pk and (size - pk) % ps == 0]
        if pools and rng.random() < 0.6:
            pk, ps = pools[int(rng.integers(len(pools)))]
            layers.append(nets.MaxPool(pk, ps))
            size = (size - pk) // ps + 1
        shape = (out, size, size)
    for _ in range(int(rng.integers(0, 3))):
        if int(np.prod(shape)) > 1024:
            break
        out = int(rng.integers(1, 40))
        layers += [nets.FC(out), nets.ReLU()]
        shape = (out, 1, 1)
    if isinstance(layers[-1], nets.ReLU):      # the output is a layer's, not rectified
        layers.pop()
    return nets.Network(f"random{seed}", (c, h, h), layers)


# Seeds whose models are a few kilobytes (each loads over the simulated UART in seconds):
# 1 and 51 pair pixels (51 in two layers), 107 and 160 end in column-mode FC layers, 0
# and 22 have layers of two k-blocks (22 an FC one, too few for column mode); pools 2/2,
# 2/1 and 3/2 among them.
RANDOM_SEEDS = [0, 1, 22, 51, 107, 160]


def test_random_geometries_on_ulx3s(ulx3s, conv_geometry):
    # The ULX3S-85F's pixel pairs, column mode, result lanes, write banks and queues on
    # geometries no named network has: first stage (a tap) and output bit-exact, edge
    # images included.
    from fpgacnn.hw.program import column_mode
    paired = columns = 0
    for seed in RANDOM_SEEDS:
        net = random_small_network(seed, conv_geometry)
        check_network(ulx3s, net, seed, n_random=1)
        for d in ulx3s.program.descriptors:
            paired += d["pixel_pairs"]
            columns += bool(column_mode(ulx3s.program.config.cols, d["out_w"], d["k_blocks"],
                                        fc_columns=True))
    assert paired >= 3 and columns >= 2, \
        f"the seeds no longer exercise pixel pairs ({paired}) or column mode ({columns})"


def check_network(acc, net, seed, n_random):
    """``net`` with seeded random parameters on ``acc``: ``n_random`` random images and the
    three edge images, the first stage's map (a tap) and the output bit-exact."""
    params = nets.random_params(net, seed)
    acc.load(net, params, progress=False)
    x = edge_images(net.input_shape, seed, n_random)
    want = golden_maps(net, params, x)
    _, out, maps = acc.infer(x, progress=False, taps=[0])
    assert out.shape == (len(x), int(np.prod(net.stages()[-1].out_shape)))
    assert_array_equal(maps[0], want[0])
    assert_array_equal(out, want[-1].reshape(len(x), -1))
    assert acc.counters.shape[1] == 1 + len(net.stages())


def test_bench_network_figures_count_copies_per_stage():
    # bench --network: per-stage cycles next to the array's beats and the bytes the stage's
    # copy descriptors move (streamed plans); stable JSON keys.
    from fpgacnn.commands.bench_network import figures, format_figures
    from fpgacnn.hw.config import get_config
    from fpgacnn.sw import compiler
    config = get_config("icebreaker").with_(act_window=True, max_layers=32)
    net = nets.cifar_small()
    program = compiler.compile_network(net, nets.random_params(net, 0), config)
    counters = np.array([[1000, 400, 300, 200, 60, 40]] * 2)
    f = figures(config, net, counters, program)
    assert f["descriptors"] == len(program.descriptors) > len(net.stages())
    copied = [layer["copy_bytes"] for layer in f["layers"]]
    assert sum(copied) == program.copy_bytes() > 0 and copied[0] > 0
    assert [layer["ideal_beats"] for layer in f["layers"]] == [
        compiler.ideal_cycles(s, config) for s in net.stages()]
    assert f["cycles_per_image"] == 1000 and f["layers"][2]["cycles"] == 200
    assert f"{sum(copied):,}" in format_figures(f)


@pytest.mark.parametrize("make, seed", [(nets.seeds_layer, 21), (nets.cifar_small, 22),
                                        (nets.wide64, 23)])
def test_networks_beyond_block_ram_on_icebreaker(icebreaker, make, seed):
    # Maps and image slots in the activation window of the SPRAMs, layers run in bands
    # through the 4 KB block RAM; every output and the first stage's map bit-exact.
    check_network(icebreaker, make(), seed, n_random=2)


def test_lenet5_after_a_streamed_network(icebreaker):
    # A LeNet-5 load after a windowed network runs from the block RAM again, bit-exact.
    net = nets.lenet5()
    params = nets.random_params(net, 24)
    icebreaker.load(net, params, progress=False)
    x = edge_images(net.input_shape, 24, 2)
    _, out = icebreaker.infer(x, progress=False)
    assert_array_equal(out, golden_maps(net, params, x)[-1].reshape(len(x), -1))
