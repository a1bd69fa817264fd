"""The descriptor-level reference executor (``sw/executor.py``): today's block-RAM plans
bit-exact against the golden model, copy semantics, the window aliasing the weights, and
the descriptors it refuses."""

import numpy as np
import pytest
from fpgacnn.hw.config import get_config
from fpgacnn.sw import network as nets
from fpgacnn.sw.compiler import compile_network
from fpgacnn.sw.executor import ExecutionError, Machine, descriptor_cycles, run_program
from numpy.testing import assert_array_equal

ICEBREAKER = get_config("icebreaker").with_(act_window=False, max_layers=8)
ULX3S = get_config("ulx3s-85f")
WINDOW = ICEBREAKER.with_(act_window=True, max_layers=32)


# The ULX3S-85F runs FC layers in column mode (fc_columns); the same array in row mode too.
ROWS = ULX3S.with_(fc_columns=False, dataflow="systolic", result_lanes=1,
                   overlap_drain=False)


@pytest.mark.parametrize("config", [ICEBREAKER, ULX3S, ROWS],
                         ids=["icebreaker", "ulx3s", "ulx3s-rows"])
@pytest.mark.parametrize("seed", range(2))
def test_block_ram_plans_match_the_golden_model(config, seed, edge_images):
    net = nets.lenet5()
    params = nets.random_params(net, seed)
    program = compile_network(net, params, config)
    machine = Machine(config)
    machine.load(program)
    for i, x in enumerate(edge_images(net.input_shape, seed)):
        got = run_program(program, x, slot=i % 2, machine=machine)
        assert_array_equal(got, nets.run_network(net, params, x))
    assert machine.cycles == program.descriptor_cycles()
    assert sum(machine.cycles) == sum(program.ideal_cycles())


def test_seeds_network_on_ulx3s_matches(edge_images):
    net = nets.seeds_cifar_example()
    params = nets.random_params(net, 5)
    program = compile_network(net, params, ULX3S)
    for x in edge_images(net.input_shape, 5):
        assert_array_equal(run_program(program, x), nets.run_network(net, params, x))


@pytest.mark.parametrize("layers,shape", [
    ([nets.Conv(6, 5, pad=2), nets.ReLU(), nets.MaxPool(2, 2)], (1, 28, 28)),
    ([nets.Conv(3, 5, stride=2, pad=2), nets.MaxPool(2, 1)], (2, 31, 31)),
    ([nets.Conv(8, 3, pad=1), nets.ReLU(), nets.MaxPool(2, 2)], (3, 10, 18)),
    ([nets.Conv(5, 5, stride=3, pad=1)], (2, 48, 48)),
])
def test_pixel_pairs_match_the_golden_model(layers, shape, edge_images):
    net = nets.Network("t", shape, [*layers, nets.FC(10)])
    params = nets.random_params(net, 3)
    program = compile_network(net, params, ULX3S)
    assert program.descriptors[0]["pixel_pairs"] == 1
    for x in edge_images(net.input_shape, 3):
        assert_array_equal(run_program(program, x), nets.run_network(net, params, x))


def test_pixel_pairs_need_a_board_with_them():
    net = nets.Network("t", (1, 12, 12), [nets.Conv(6, 5, pad=2), nets.MaxPool(2, 2),
                                          nets.FC(10)])
    program = compile_network(net, nets.random_params(net, 0), ULX3S)
    assert program.descriptors[0]["pixel_pairs"] == 1
    m = Machine(ULX3S.with_(pixel_pairs=False))
    m.load(program)
    with pytest.raises(ExecutionError, match="descriptor 0: pixel_pairs needs a board built "
                                             "with them"):
        m.run(program.image_base(0))


def copy(src, dst, segments, length, src_stride=0, dst_stride=0, **flags):
    return dict(_unused_flags=0, in_from_image=0, to_logits=0, copy=1, segments=segments,
                length=length, src_stride=src_stride, dst_stride=dst_stride, _gap=0,
                src_base=src, dst_base=dst, _tail=0) | flags


def test_copies_move_segments_between_block_ram_and_window():
    m = Machine(WINDOW)
    m.act[:64] = np.arange(64)
    m.descriptors = [
        # 3 segments of 5 bytes, source stride 10, into the window with stride 7.
        copy(0, 60000, 3, 5, 10, 7),
        # back into the block RAM from the window, contiguous
        copy(60000, 100, 1, 19),
        # from START's image base (src_base ignored), the last descriptor
        copy(9999, 200, 2, 2, 30, 2, in_from_image=1, to_logits=1)]
    assert m.run(image_base=4) == 200
    want = [0, 1, 2, 3, 4, 0, 0, 10, 11, 12, 13, 14, 0, 0, 20, 21, 22, 23, 24]
    assert_array_equal(m.act[100:119], want)
    assert_array_equal(m.act[200:204], [4, 5, 34, 35])
    # Window address 60000 is weight-memory byte 69,632 + 60000 - 4096.
    assert_array_equal(m.weights[69632 + 60000 - 4096:][:5], [0, 1, 2, 3, 4])
    assert m.cycles == [15, 19, 4]
    assert m.read([4096, 65535]).tolist() == [m.weights[69632], m.weights[-1]]


def test_a_map_in_the_window_overwrites_weights_below_it(edge_images):
    # The executor keeps one weight memory: what a window write lands on, a layer reads.
    net = nets.lenet5()
    params = nets.random_params(net, 1)
    program = compile_network(net, params, WINDOW)
    m = Machine(WINDOW)
    m.load(program)
    x = edge_images(net.input_shape, 1)[0]
    assert_array_equal(run_program(program, x, machine=m), nets.run_network(net, params, x))
    small = WINDOW.with_(weight_words=7813)      # LeNet-5's words: the window covers them
    m = Machine(small)
    m.load(program)
    m.write(small.act_bytes + np.arange(64), np.full(64, 0x7F))   # window bytes 0..63
    assert m.weights[small.window_weight_byte] == 0x7F
    assert not np.array_equal(run_program(program, x, machine=m),
                              nets.run_network(net, params, x))


def layer_program():
    net = nets.Network("t", (2, 6, 6), [nets.Conv(3, 3, pad=1), nets.ReLU()])
    return compile_network(net, nets.random_params(net, 0), ICEBREAKER)


@pytest.mark.parametrize("change, message", [
    (dict(out_w=5), r"descriptor 0: out_w = 5, the geometry gives 6"),
    (dict(reduction=17), r"descriptor 0: reduction = 17, the geometry gives 18"),
    (dict(out_base=4090), r"descriptor 0: its output \(108 B at 4090\) leaves the 4096-byte "
                          r"block RAM \(layers never touch the window\)"),
    (dict(to_logits=0), r"no descriptor of the 1 has to_logits: the run would not end"),
    (dict(q_base=250), r"descriptor 0: qparams 250\.\.\+3 beyond the 3 loaded"),
])
def test_bad_layer_descriptors_are_refused(change, message):
    program = layer_program()
    m = Machine(ICEBREAKER)
    m.load(program)
    m.descriptors[0].update(change)
    with pytest.raises(ExecutionError, match=message):
        m.run(program.image_base(0))


@pytest.mark.parametrize("shift", [-107, -1, 0, 71])
def test_a_layer_writing_over_its_input_is_refused(shift):
    # The activation memory's reads are undefined when they meet a write (Ram rw_exclusive).
    program = layer_program()
    m = Machine(ICEBREAKER)
    m.load(program)
    base = program.image_base(0)
    m.descriptors[0].update(out_base=base + shift)
    with pytest.raises(ExecutionError, match=rf"descriptor 0: its output \(108 B at "
                                             rf"{base + shift}\) overlaps its input \(72 B "
                                             rf"at {base}\)"):
        m.run(base)
    m.descriptors[0].update(out_base=base + 72)       # right after it: fine
    m.run(base)


@pytest.mark.parametrize("desc, message", [
    (copy(5000, 6000, 1, 8, to_logits=1), r"descriptor 0: a copy from the window into the "
                                          r"window"),
    (copy(0, 4, 1, 8, to_logits=1), r"descriptor 0: a copy onto its own source"),
])
def test_bad_copies_are_refused(desc, message):
    m = Machine(WINDOW)
    m.descriptors = [desc]
    with pytest.raises(ExecutionError, match=message):
        m.run(0)


def test_no_window_without_act_window():
    m = Machine(ICEBREAKER)
    m.descriptors = [copy(0, 5000, 1, 8, to_logits=1)]
    with pytest.raises(ExecutionError, match=r"reaches activation address 5000 beyond the "
                                             r"4096-byte block RAM \(no activation window"):
        m.run(0)


def test_descriptor_cycles():
    program = layer_program()
    # 6 rows x 1 k-block x ceil(6 / cols) x-tiles x D = 18
    assert descriptor_cycles(program.descriptors[0], ICEBREAKER) == \
        6 * -(-6 // ICEBREAKER.cols) * 18
    assert descriptor_cycles(copy(0, 8, 3, 5), ICEBREAKER) == 15
