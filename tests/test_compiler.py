"""Host compiler: memory plans, weight/qparam/descriptor layouts, chunk writes, rejections."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from fpgacnn.hw import program as prog
from fpgacnn.hw.config import get_config
from fpgacnn.sw import network as nets
from fpgacnn.sw.compiler import CompileError, compile_network, tap_program
from fpgacnn.sw.network import FC, Conv, MaxPool, Network, ReLU

ICEBREAKER = get_config("icebreaker")
ULX3S = get_config("ulx3s-85f")
# Without the activation window: maps that do not fit the block RAM are refused.
BLOCK_RAM = ICEBREAKER.with_(act_window=False)


def lenet(seed=0, config=ICEBREAKER):
    net = nets.lenet5()
    return compile_network(net, nets.random_params(net, seed), config)


def test_lenet5_plan_and_descriptors():
    p = lenet()
    # C1's pooled 6x14x14 and C3's pooled 16x5x5 maps ping-pong, the last stage writes
    # buffer A at 0 (RESULT reads its 10 logits there), then the slots of 784 B.
    assert p.plan.buffers == (0, 1176) and p.plan.output_base == 0
    assert p.plan.buffer_bytes == (1176, 400)
    assert p.plan.image_slots == (1576, 1576 + 784)
    assert p.plan.used_bytes == 3144
    d = p.descriptors
    assert [x["in_base"] for x in d] == [1576, 0, 1176, 0, 1176]
    assert [x["out_base"] for x in d] == [0, 1176, 0, 1176, 0]
    assert [x["in_from_image"] for x in d] == [1, 0, 0, 0, 0]
    assert [x["to_logits"] for x in d] == [0, 0, 0, 0, 1]
    assert [x["relu"] for x in d] == [1, 1, 1, 1, 0]
    assert [x["k_blocks"] for x in d] == [1, 2, 15, 11, 2]
    assert [x["reduction"] for x in d] == [25, 150, 400, 120, 84]
    assert [x["w_base"] for x in d] == [0, 25, 325, 6325, 7645]
    assert [x["q_base"] for x in d] == [0, 6, 22, 142, 226]
    assert (d[0]["out_h"], d[0]["pool_h"], d[0]["pad"]) == (28, 14, 2)
    assert (d[2]["cin"], d[2]["in_h"], d[2]["kernel"]) == (400, 1, 1)
    assert p.weight_words.shape == (7813, 8)
    assert len(p.qparams) == 236 and p.output_count == 10
    # architecture.md's cycle model: 32,288 operand beats on the iCEBreaker's 8x2 array
    # (the FC layers, one pixel wide, on one column).
    assert p.ideal_cycles() == [9800, 15000, 6000, 1320, 168]


@pytest.mark.parametrize("config", [ICEBREAKER, ULX3S,
                                    ULX3S.with_(name="ulx3s-rows", dataflow="systolic",
                                                fc_columns=False, result_lanes=1,
                                                overlap_drain=False)], ids=lambda c: c.name)
@pytest.mark.parametrize("seed", range(2))
def test_weight_words_layout(config, seed):
    net = nets.lenet5()
    _check_weight_layout(net, nets.random_params(net, seed), config)


def test_weight_words_layout_with_column_padding():
    # cifar-small's FC 1024->32 has 2 k-blocks: column mode rounds them up to 4 and starts
    # them at a multiple of 4 words (the convolutions before end at word 1,467).
    net = nets.cifar_small()
    _check_weight_layout(net, nets.random_params(net, 0), ULX3S)


def _check_weight_layout(net, params, config):
    p = compile_network(net, params, config)
    r = config.rows
    covered = np.zeros(len(p.weight_words), bool)
    for stage, qp, desc in zip(p.stages, params, p.descriptors):
        if desc["pixel_pairs"]:
            covered[_check_paired_words(stage, qp, desc, p.weight_words, r)] = True
            continue
        w = qp.weight.reshape(stage.out_channels, -1)
        d_red = w.shape[1]
        # Column mode (program.column_mode): k-block kg*C + c is word
        # w_base + (kg*D + d)*C + c; otherwise k-block kb is words w_base + kb*D + d.
        lanes = (config.cols if prog.column_mode(config.cols, stage.conv_shape[2],
                                                 desc["k_blocks"],
                                                 fc_columns=config.fc_columns) else 1)
        assert desc["w_base"] % lanes == 0
        for kb in range(desc["k_blocks"]):
            kg, c = divmod(kb, lanes)
            words = desc["w_base"] + (kg * d_red + np.arange(d_red)) * lanes + c
            block = p.weight_words[words]                                   # (D, R)
            assert not covered[words].any(), f"stage {stage.index} k-block {kb} overlaps"
            covered[words] = True
            for row in range(r):
                k = kb * r + row
                expect = w[k] if k < stage.out_channels else np.zeros(d_red, np.int8)
                assert_array_equal(block[:, row], expect, err_msg=f"stage {stage.index} k {k}")
    # Padding k-blocks (column mode rounds up to cols) and alignment words hold zeros.
    assert not p.weight_words[~covered].any()


def _check_paired_words(stage, qp, desc, weight_words, rows):
    """A pixel-pairs stage's words: d = (c, fy, fx), fx < F + S; row k holds W[k, c, fy,
    fx], row R/2 + k W[k, c, fy, fx - S], zero outside the kernel. Returns the words."""
    k, c, f, s = stage.out_channels, stage.in_shape[0], stage.kernel, stage.stride
    words = desc["w_base"] + np.arange(c * f * (f + s))
    block = weight_words[words].reshape(c, f, f + s, rows)
    for ch in range(c):
        for fy in range(f):
            for fx in range(f + s):
                expect = np.zeros(rows, np.int8)
                if fx < f:
                    expect[:k] = qp.weight[:, ch, fy, fx]
                if fx >= s:
                    expect[rows // 2:rows // 2 + k] = qp.weight[:, ch, fy, fx - s]
                assert_array_equal(block[ch, fy, fx], expect,
                                   err_msg=f"stage {stage.index} word {(ch, fy, fx)}")
    return words


def test_lenet_c1_pairs_pixels_on_ulx3s():
    """C1 (6 channels, 28 pixels a row) pairs pixels on the ULX3S-85F: 30-beat tiles, half
    as many; C3 (16 channels) cannot, and no layer does on a board without pixel pairs."""
    p = lenet(0, ULX3S)
    assert [d["pixel_pairs"] for d in p.descriptors] == [1, 0, 0, 0, 0]
    assert p.descriptors[0]["reduction"] == 30
    assert p.ideal_cycles()[0] == 49 * 30
    q = lenet(0, ULX3S.with_(pixel_pairs=False))
    assert [d["pixel_pairs"] for d in q.descriptors] == [0] * 5
    assert q.ideal_cycles()[0] == 98 * 25
    assert not any(d["pixel_pairs"] for d in lenet(0, ICEBREAKER).descriptors)


@pytest.mark.parametrize("layers,expected,changes", [
    ([Conv(6, 5, pad=2), ReLU(), MaxPool(2, 2)], 1, {}),       # 16 pixels a row, 6 channels
    ([Conv(6, 4, pad=1), ReLU(), MaxPool(3, 2)], 0, {}),       # 15 pixels a row: odd
    ([Conv(9, 5, pad=2), ReLU(), MaxPool(2, 2)], 0, {}),       # 9 channels: more than 16 / 2
    ([Conv(8, 5, pad=2), ReLU(), MaxPool(2, 2)], 1, {}),       # 8: half the rows exactly
    # No pool: 1,536 writes. Through one write port they bound the layer either way;
    # through two banks (768 cycles) the pairs' fewer tiles pay.
    ([Conv(6, 5, pad=2), ReLU()], 0, {"write_banks": 1}),
    ([Conv(6, 5, pad=2), ReLU()], 1, {"write_banks": 2}),
    # D = 1: drain-bound either way. On four lanes a paired tile drains 8 columns × 16
    # rows in 33 cycles (16 tiles: 528), a plain one 4 rows in 9 (32 tiles: 288); on
    # eight lanes the paired tile's 17 cycles pay (272).
    ([Conv(4, 1), ReLU(), MaxPool(2, 2)], 0, {"result_lanes": 4}),
    ([Conv(4, 1), ReLU(), MaxPool(2, 2)], 1, {"result_lanes": 8}),
])
def test_pixel_pairs_where_they_pay(layers, expected, changes):
    net = Network("t", (1, 16, 16), [*layers, FC(10)])
    p = compile_network(net, nets.random_params(net, 0), ULX3S.with_(**changes))
    assert p.descriptors[0]["pixel_pairs"] == expected


def test_no_pixel_pairs_where_their_weights_do_not_fit():
    """Pairs would take 8,204 of the 8,192 weight words (their kernel is 3 wider): the
    network compiles without them, as it does on a board without pairs."""
    net = Network("t", (9, 21, 32), [Conv(6, 3, pad=1), ReLU(), FC(32), ReLU(), FC(10)])
    params = nets.random_params(net, 0)
    p = compile_network(net, params, ULX3S)
    assert [d["pixel_pairs"] for d in p.descriptors] == [0, 0, 0]
    assert len(p.weight_words) == 8177 <= ULX3S.weight_words
    paired = compile_network(net, params, ULX3S.with_(weight_words=8192 * 2))
    assert paired.descriptors[0]["pixel_pairs"] == 1 and len(paired.weight_words) == 8204


@pytest.mark.parametrize("config", [ICEBREAKER, ULX3S], ids=lambda c: c.name)
def test_model_writes_round_trip(config):
    p = lenet(1, config)
    writes = p.model_writes()
    for space, chunks in writes.items():
        assert [a for a, _ in chunks] == list(range(len(chunks))), space
        assert all(0 <= v < 1 << 64 for _, v in chunks)
    parts = config.rows // 8
    raw = b"".join(v.to_bytes(8, "little") for _, v in writes[prog.Space.WEIGHTS])
    words = np.frombuffer(raw, np.int8).reshape(-1, config.rows)
    assert len(writes[prog.Space.WEIGHTS]) == len(p.weight_words) * parts
    assert_array_equal(words, p.weight_words)
    q = [prog.decode_struct(prog.QParam, v) for _, v in writes[prog.Space.QPARAMS]]
    assert q == p.qparams
    assert q[0]["bias"] == int(nets.random_params(nets.lenet5(), 1)[0].bias[0])
    chunks = [v for _, v in writes[prog.Space.PROGRAM]]
    assert len(chunks) == len(p.stages) * prog.DESCRIPTOR_WORDS
    for i, d in enumerate(p.descriptors):
        value = sum(c << (64 * j) for j, c in
                    enumerate(chunks[i * prog.DESCRIPTOR_WORDS:(i + 1) * prog.DESCRIPTOR_WORDS]))
        assert prog.decode_struct(prog.LayerDescriptor, value) == d


def test_image_writes():
    net = nets.seeds_cifar_example()
    p = compile_network(net, nets.random_params(net, 0), ULX3S)
    assert p.plan.image_slots == (3344, 6416) and p.plan.used_bytes == 9488
    img = np.random.default_rng(0).integers(-128, 128, (3, 32, 32), dtype=np.int8)
    for slot in (0, 1):
        writes = p.image_writes(img, slot)
        assert writes[0][0] == p.image_base(slot) // 8 and len(writes) == 384
        raw = b"".join(v.to_bytes(8, "little") for _, v in writes)
        assert_array_equal(np.frombuffer(raw, np.int8).reshape(3, 32, 32), img)
    # An image that is not a whole number of chunks is padded with zeros.
    small = Network("s", (3, 5, 5), [Conv(2, 3), ReLU(), FC(4)])
    ps = compile_network(small, nets.random_params(small, 0), ICEBREAKER)
    writes = ps.image_writes(np.full((3, 5, 5), -1, np.int8), 1)
    assert len(writes) == 10 and writes[0][0] == ps.image_base(1) // 8
    assert writes[-1][1] == 0xFFFFFFFFFFFFFFFF >> 40
    with pytest.raises(ValueError, match="image slot must be 0 or 1"):
        ps.image_base(2)


@pytest.mark.parametrize("image, message", [
    (np.zeros((28, 28), np.int8), r"shape \(1, 28, 28\) \(C, H, W\), got \(28, 28\); reshape"),
    (np.zeros((1, 32, 32), np.int8), r"got \(1, 32, 32\)"),
    (np.zeros((1, 28, 28), np.uint8), r"must be int8, not uint8"),
])
def test_bad_images_are_rejected(image, message):
    with pytest.raises(CompileError, match=message):
        lenet().image_writes(image, 0)


def _net(layers, shape=(1, 8, 8)):
    return Network("t", shape, layers)


@pytest.mark.parametrize("net, config, message", [
    (nets.lenet5(), ICEBREAKER.with_(weight_words=7000, act_window=False),
     r"layer 3 \(fc 120->84\): needs 1320 weight words \(11 k-blocks × D = 120\), 7645 in "
     r"total, but the weight memory of icebreaker holds 7000 words of 8 weights"),
    (nets.seeds_cifar_example(), BLOCK_RAM,
     r"4096-byte activation memory of icebreaker \(5392 B missing\): ping-pong buffers of "
     r"2560 B and 784 B \+ two image slots of 3072 B = 9488 B"),
    (nets.lenet5(), ICEBREAKER.with_(qparam_entries=200),
     r"layer 3 \(fc 120->84\): needs 84 qparam entries, 226 in total, but icebreaker holds 200"),
    (nets.lenet5(), ICEBREAKER.with_(max_layers=4),
     r"lenet5 has 5 layers but the program memory of icebreaker holds 4 descriptors"),
    (nets.lenet5(), ICEBREAKER.with_(max_reduction=256),
     r"layer 2 \(fc 400->120\): reduction C\*F\*F = 400 exceeds max_reduction 256"),
    (_net([Conv(2, 1), FC(3)], (1, 256, 2)), BLOCK_RAM,     # the window runs it in bands
     r"layer 0 \(conv 2@1x1\): in_h = 256 does not fit the 8-bit descriptor field \(max 255\)"),
    (_net([Conv(2, 3, stride=8, pad=1), FC(3)], (1, 17, 17)), ICEBREAKER,
     r"layer 0 \(conv 2@3x3\): stride = 8 does not fit the 3-bit descriptor field"),
    (_net([Conv(2, 3), MaxPool(4, 2), FC(3)], (1, 12, 12)), ICEBREAKER,
     r"layer 0 \(conv 2@3x3\): max-pool 4x4 stride 2 is not supported"),
    (_net([Conv(2, 3), MaxPool(3, 3), FC(3)], (1, 11, 11)), ICEBREAKER,
     r"layer 0 \(conv 2@3x3\): max-pool 3x3 stride 3 is not supported"),
    (_net([Conv(2, 2), MaxPool(3, 1), FC(3)], (1, 11, 11)), ICEBREAKER,
     r"max-pool 3x3 stride 1 is not supported"),
    (_net([Conv(2, 3), MaxPool(2, 2), FC(3)], (1, 36, 36)), ICEBREAKER,
     r"layer 0 \(conv 2@3x3\): max-pool over 34 columns × 1 k-blocks exceeds the line buffer "
     r"of icebreaker \(32 columns × 2 k-blocks of 8 channels\)"),
    (_net([Conv(17, 3), MaxPool(2, 2), FC(3)], (1, 10, 10)), BLOCK_RAM,
     r"max-pool over 8 columns × 3 k-blocks exceeds the line buffer"),
], ids=["weights", "act", "qparams", "program", "reduction", "in_h", "stride",
        "pool_kernel", "pool_stride", "pool_3_1", "pool_width", "pool_blocks"])
def test_rejections_name_layer_and_sizes(net, config, message):
    with pytest.raises(CompileError, match=message):
        compile_network(net, nets.random_params(net, 0), config)


def test_params_must_match_network():
    net = nets.lenet5()
    params = nets.random_params(net, 0)
    with pytest.raises(ValueError, match="has 5 stages, got 4"):
        compile_network(net, params[:4], ICEBREAKER)
    params[1].weight = params[1].weight[:, :3]
    with pytest.raises(ValueError, match=r"stage 1 weight: shape"):
        compile_network(net, params, ICEBREAKER)


def test_address_field_overflow_is_rejected():
    # A 1 MiB activation memory lets a plan run past the 16-bit address fields.
    big = ICEBREAKER.with_(act_bytes=1 << 20, act_window=False)
    net = _net([Conv(1, 1), ReLU(), Conv(1, 1), FC(2)], (1, 200, 200))
    with pytest.raises(CompileError, match=r"layer 0 \(conv 1@1x1\): in_base = 80000 does "
                                           r"not fit the 16-bit descriptor field"):
        compile_network(net, nets.random_params(net, 0), big.with_(max_layers=8))
    net = _net([Conv(1, 1), ReLU(), Conv(1, 1, stride=5)], (1, 201, 201))
    with pytest.raises(CompileError, match=r"image slot 1 at byte 82504 does not fit the "
                                           r"16-bit image base"):
        compile_network(net, nets.random_params(net, 0), big)


def test_bias_beyond_the_requantiser_width_is_rejected():
    net = nets.lenet5()
    params = nets.random_params(net, 0)
    limit = 1 << (ICEBREAKER.bias_width - 1)
    params[2].bias[7] = limit - 1                       # the largest that fits
    compile_network(net, params, ICEBREAKER)
    params[2].bias[7] = -limit                          # one beyond (magnitude)
    with pytest.raises(CompileError, match=rf"layer 2 .*bias of magnitude {limit} does not "
                                           rf"fit the {ICEBREAKER.bias_width}-bit bias"):
        compile_network(net, params, ICEBREAKER)


def test_tap_program_cuts_after_a_stage():
    p = lenet()
    for t in range(len(p.stages)):
        cut = tap_program(p, t)
        d = cut.descriptors
        assert len(d) == t + 1 and cut.stages == p.stages[:t + 1]
        assert [x["to_logits"] for x in d] == [0] * t + [1]
        assert d[-1]["out_base"] == cut.plan.output_base == 0
        assert cut.output_count == int(np.prod(p.stages[t].out_shape))
        # Same weights and qparams: only the layer program is rewritten on the board.
        assert [(x["w_base"], x["q_base"]) for x in d] == \
            [(x["w_base"], x["q_base"]) for x in p.descriptors[:t + 1]]
        assert cut.plan.used_bytes <= p.plan.used_bytes
        for a, b in zip(d[1:], d):                      # each stage reads the one before
            assert a["in_base"] == b["out_base"]
    assert tap_program(p, 4).descriptors == p.descriptors
    for bad in (5, -1, 1.0):
        with pytest.raises(ValueError, match=rf"tap {bad!r} is not a stage of lenet5: "
                                             r"choose 0 to 4"):
            tap_program(p, bad)
