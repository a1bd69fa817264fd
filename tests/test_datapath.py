# amaranth: UnusedElaboratable=no
"""One layer through Im2col → memories → SystolicArray → Requantizer → MaxPool → writer,
in Amaranth's simulator, against the golden model (bit-exact), with its cycle count."""

import numpy as np
import pytest
from amaranth.hdl import C, Cat, Elaboratable, Fragment, Module, unsigned
from amaranth.lib import memory
from numpy.testing import assert_array_equal

from fpgacnn.hw import program as prog
from fpgacnn.hw.config import get_config
from fpgacnn.hw.datapath import Datapath
from fpgacnn.sim.amaranth_sim import run_simulation
from fpgacnn.sw import compiler
from fpgacnn.sw import network as nets
from fpgacnn.sw.compiler import compile_network
from fpgacnn.sw.network import FC, Conv, MaxPool, Network, ReLU

# Small memories keep the simulator quick; the datapath only sees port widths.
# The iCEBreaker's memories, an 8x1 array at full rate (the 8x2 board's shape has its own
# cases below).
SMALL = get_config("icebreaker").with_(weight_words=4096, act_bytes=16384, qparam_entries=64,
                                      max_reduction=4096, cols=1, requant_interval=1,
                                      compact_drain=False, ice40=False, act_window=False)
# A 16x4 array for the largest layer: also covers rows = 16 (two chunks per weight word).
WIDE = SMALL.with_(rows=16, cols=4)


class Harness(Elaboratable):
    """A Datapath with its memories preloaded (what the core owns on the chip).

    The memories' ports are made here, once: a failing run is simulated again to record
    its waveform, and a memory takes no new ports once elaborated."""

    def __init__(self, config, act_init, w_init, q_init, **kwargs):
        self.dp = dp = Datapath(config, **kwargs)
        self.act = [memory.Memory(shape=unsigned(8), depth=config.act_bytes, init=act_init)
                    for _ in range(config.cols)]
        lanes = config.weight_lanes     # words of `rows` weights per memory word
        self.w = memory.Memory(shape=unsigned(config.rows * lanes * 8),
                               depth=config.weight_words // lanes, init=w_init)
        self.q = memory.Memory(shape=unsigned(prog.stored_qparam(config.bias_width).size),
                               depth=config.qparam_entries, init=q_init)
        # A write port per bank (config.write_banks): bank b's port writes only addresses
        # whose low bits are b, whatever the datapath sends (a write routed to the wrong
        # bank lands elsewhere and the output differs from the golden model's).
        self._act_ports = [(mem.read_port(), [mem.write_port() for _ in dp.act_wr_ports],
                            dp.act_rd[i]) for i, mem in enumerate(self.act)]
        self._rd_ports = [(mem.read_port(), port) for mem, port in
                          ((self.w, dp.w_rd), *((self.q, q_rd) for q_rd in dp.q_rd_ports))]

    def elaborate(self, platform):
        m = Module()
        dp = m.submodules.dp = self.dp
        for i, mem in enumerate(self.act):
            m.submodules[f"act{i}"] = mem
        low = (len(dp.act_wr_ports) - 1).bit_length()
        for rp, wps, act_rd in self._act_ports:
            m.d.comb += [rp.addr.eq(act_rd.addr), rp.en.eq(act_rd.en),
                         act_rd.data.eq(rp.data)]
            for bank, (wp, port) in enumerate(zip(wps, dp.act_wr_ports)):
                addr = Cat(C(bank, low), port.addr[low:]) if low else port.addr
                m.d.comb += [wp.addr.eq(addr), wp.data.eq(port.data), wp.en.eq(port.en)]
        m.submodules.w, m.submodules.q = self.w, self.q
        for rp, port in self._rd_ports:
            m.d.comb += [rp.addr.eq(port.addr), rp.en.eq(port.en), port.data.eq(rp.data)]
        return m


def run_layer(request, net, params, x, *, config=SMALL, slot=1, layers=1, **kwargs):
    """Run the first ``layers`` stages of ``net`` on the datapath, each started the cycle
    after the previous one is done; return (last output map, cycles per layer, program)."""
    p = compile_network(net, params, config)
    base = p.image_base(slot)
    act = np.zeros(config.act_bytes, np.uint8)
    act[base:base + x.size] = x.reshape(-1).view(np.uint8)
    act[:p.plan.image_slots[0]] = 0x5A     # stale data in the buffers must be overwritten
    # Memory words of `weight_lanes` compiled words each (what the host's chunks build).
    lanes = config.weight_lanes
    wmat = np.zeros((-(-len(p.weight_words) // lanes) * lanes, config.rows), np.int8)
    wmat[:len(p.weight_words)] = p.weight_words
    words = [int.from_bytes(w.tobytes(), "little")
             for w in wmat.reshape(-1, config.rows * lanes)]
    stored = prog.stored_qparam(config.bias_width)
    qps = [prog.encode_struct(stored, {f: q[f] for f in ("bias", "m", "s")}) for q in p.qparams]
    h = Harness(config, act.tolist(), words, qps, **kwargs)
    dp = h.dp
    out = {"cycles": [], "y": []}

    async def bench(ctx):
        for desc, stage in zip(p.descriptors[:layers], p.stages):
            shape = stage.out_shape
            n = int(np.prod(shape))
            ctx.set(dp.desc, desc)
            ctx.set(dp.image_base, base)
            ctx.set(dp.start, 1)
            await ctx.tick()
            ctx.set(dp.start, 0)
            await ctx.tick().until(dp.done)
            out["cycles"].append(ctx.get(dp.cycles))
            raw = [ctx.get(h.act[0].data[desc["out_base"] + i]) for i in range(n)]
            for mem in h.act[1:]:   # every column's copy got the same writes
                assert [ctx.get(mem.data[desc["out_base"] + i]) for i in range(n)] == raw
            out["y"].append(np.array(raw, np.uint8).view(np.int8).reshape(shape))

    expected = nets.run_network(net, params, x, intermediates=True)[:layers]

    def check():
        for i, (got, want) in enumerate(zip(out["y"], expected)):
            assert_array_equal(got, want, err_msg=f"stage {i}")

    run_simulation(h, [bench], name=request.node.name, check=check, max_cycles=200_000)
    return out["y"][-1], out["cycles"], p


def edge_input(shape, seed):
    """Random int8 map with saturated and zero patches."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, shape, dtype=np.int8)
    c, h, w = shape
    x[:, :h // 4, :w // 4] = -128
    x[:, -(h // 4):, -(w // 4):] = 127
    x[0, h // 2:, :w // 3] = 0
    return x


def report(name, cycles, stage, config):
    ideal = stage.macs / config.multipliers
    print(f"\n{name}: {cycles} cycles; ideal MACs/PEs = {stage.macs}/{config.multipliers} = "
          f"{ideal:.0f} ({cycles / ideal:.2f}x)")


LAYERS = {
    # LeNet-5 C1: 28x28 input zero-padded by 2, six 5x5 filters, ReLU, pool 2/2.
    "lenet_c1": (Network("c1", (1, 28, 28), [Conv(6, 5, pad=2), ReLU(), MaxPool(2, 2),
                                             FC(1)]), SMALL),
    # LeNet-5 C3: all six 14x14 maps, sixteen 5x5 filters (2 k-blocks), ReLU, pool 2/2.
    "lenet_c3": (Network("c3", (6, 14, 14), [Conv(16, 5), ReLU(), MaxPool(2, 2), FC(1)]),
                 SMALL),
    # The seeds' layer: 32x32x3, ten 5x5 filters, stride 1, pad 2, ReLU, pool 2/2.
    "seeds_conv1": (Network("s1", (3, 32, 32), [Conv(10, 5, stride=1, pad=2), ReLU(),
                                                MaxPool(2, 2), FC(1)]), WIDE),
}


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_matches_golden(request, layer):
    net, config = LAYERS[layer]
    params = nets.random_params(net, 7)
    x = edge_input(net.input_shape, 3)
    _, (cycles,), p = run_layer(request, net, params, x, config=config)
    report(layer, cycles, p.stages[0], config)
    # The array's beats plus the pipeline's fill and drain (the last tile's R*C results).
    assert cycles <= p.ideal_cycles()[0] + config.rows * config.cols + 64


@pytest.mark.parametrize("case, seed", [("short_tiles", 0), ("pool3_nopad_norelu", 1),
                                        ("logits", 2), ("all_zero", 3), ("slow_requant", 4)])
def test_odd_layers_match_golden(request, case, seed):
    kwargs = {}
    if case == "short_tiles":
        # D = 9 < min_tile: the array back-pressures the fetch stage every tile; stride 2.
        net = Network("t", (1, 9, 9), [Conv(3, 3, stride=2, pad=1), ReLU(), FC(4)])
    elif case == "pool3_nopad_norelu":
        # The seeds' second conv: 16 filters 2x2 on 10 maps, pool 3/2 (overlapping windows).
        net = Network("t", (10, 16, 16), [Conv(16, 2), MaxPool(3, 2), FC(4)])
    elif case == "logits":
        # LeNet's last FC: 84 inputs → 10 logits (2 k-blocks, 6 padding rows dropped).
        net = Network("t", (84, 1, 1), [FC(10)])
    elif case == "slow_requant":
        # One value per 4 cycles out of the requantizer: the array drains into a stalled
        # qparam stage while dropping pixels beyond out_w (7 pixels on 2 columns).
        net = Network("t", (3, 7, 7), [Conv(10, 3, pad=1), ReLU(), FC(4)])
        kwargs = {"requant_interval": 4, "dataflow": "broadcast"}
    else:
        net = Network("t", (2, 6, 6), [Conv(9, 3, pad=1), ReLU(), MaxPool(2, 2), FC(4)])
    params = nets.random_params(net, seed)
    x = edge_input(net.input_shape, seed)
    if case == "all_zero":
        x[:] = 0
        params[0].bias[:] = [-5, 0, 5, 1 << 20, -(1 << 20), 0, 3, -3, 100]
    y, (cycles,), p = run_layer(request, net, params, x, slot=seed % 2, **kwargs)
    report(case, cycles, p.stages[0], SMALL)


@pytest.mark.parametrize("cols", [8])
def test_layers_back_to_back(request, cols):
    """A layer whose last tile ends in dropped columns (12 pixels on 8 columns), then the
    next layer started the cycle after ``done``: nothing of the first may leak into it."""
    config = SMALL.with_(cols=cols)
    net = Network("t", (3, 12, 12), [Conv(10, 5, pad=2), ReLU(), MaxPool(2, 2), FC(10)])
    params = nets.random_params(net, 5)
    _, cycles, p = run_layer(request, net, params, edge_input(net.input_shape, 5),
                             config=config, layers=2)
    print(f"\nback to back on 8x{cols}: {cycles} cycles (array beats {p.ideal_cycles()})")

# ---- compact_drain: the array drains only the PEs a tile uses ------------------------------
# Odd channel counts (partial last k-blocks, also through the max-pool), x-tiles that end in
# unused columns, strides 1-2, pads 0-2, kernels 1-5 and FC layers.

NARROW = SMALL.with_(rows=8, cols=3, compact_drain=True)    # cols not a power of two
# The ULX3S-85F's shape and drain, systolic: tiles wrap rows, so compact tiles span rows.
WIDE_COMPACT = WIDE.with_(compact_drain=True, wrap_rows=True)

CASES = {
    # (network, config, extra Datapath arguments)
    # C1-like: 6 of 8 channels, 10 pixels on 3 columns (last tile 1), pool 2/2.
    "c6_k5_p2_pool": (Network("t", (1, 10, 10), [Conv(6, 5, pad=2), ReLU(), MaxPool(2, 2),
                                                  FC(1)]), NARROW, {}),
    # Stride 2, pad 1, 5 channels: 5 pixels on 3 columns.
    "c5_k3_s2_p1": (Network("t", (3, 9, 9), [Conv(5, 3, stride=2, pad=1), ReLU(), FC(1)]),
                    NARROW, {}),
    # 1x1 kernel, 11 channels: two k-blocks, the last of 3, pooled 3/2 (variable block).
    "c11_k1_pool": (Network("t", (4, 7, 7), [Conv(11, 1), ReLU(), MaxPool(3, 2), FC(1)]),
                    NARROW, {}),
    # 4x4 kernel, stride 2, no padding, no ReLU, 7 channels.
    "c7_k4_s2": (Network("t", (2, 10, 10), [Conv(7, 4, stride=2), FC(1)]), NARROW, {}),
    # Pad 2 on a 3x3 kernel, 9 channels (last block 1), overlapping pool 3/2, broadcast
    # array and a 2-cycle requantiser.
    "c9_k3_p2_pool3": (Network("t", (2, 7, 7), [Conv(9, 3, pad=2), ReLU(), MaxPool(3, 2),
                                                 FC(1)]), NARROW,
                       {"dataflow": "broadcast", "requant_interval": 2}),
    # The iCEBreaker's datapath (8x2, broadcast, 2-cycle requantiser, compact drain) on
    # LeNet-5's C1 shape: 12 results per 25-beat tile, just inside the requantiser's rate.
    "c1_on_8x2": (Network("t", (1, 14, 14), [Conv(6, 5, pad=2), ReLU(), MaxPool(2, 2),
                                              FC(1)]),
                  SMALL.with_(cols=2, compact_drain=True),
                  {"dataflow": "broadcast", "requant_interval": 2}),
    # FC layers: 13 outputs (last block 5) and LeNet's last one, 84 → 10.
    "fc_20_13": (Network("t", (20, 1, 1), [FC(13)]), NARROW, {}),
    "fc_84_10": (Network("t", (84, 1, 1), [FC(10)]), WIDE_COMPACT, {}),
    # LeNet-5's C1 shape on the 16x4 array: 6 of 16 rows, 14 pixels on 4 columns.
    "c1_on_16x4": (Network("t", (1, 14, 14), [Conv(6, 5, pad=2), ReLU(), MaxPool(2, 2),
                                               FC(1)]), WIDE_COMPACT, {}),
    # 17 channels on 16 rows (last block 1), stride 2: 5 pixels on 4 columns.
    "c17_k3_s2_on_16x4": (Network("t", (3, 9, 9), [Conv(17, 3, stride=2, pad=1), ReLU(),
                                                    FC(1)]), WIDE_COMPACT, {}),
}


def compact_bound(p, config, extra):
    """Cycles a compact layer may take: per tile ``max(D, used PEs + 2 + latency)`` plus
    the pipeline's fill and drain."""
    stage, desc = p.stages[0], p.descriptors[0]
    interval = extra.get("requant_interval", 1)
    lat2 = 4 + (interval - 1)              # mac.LATENCY + 2 (+ 1: register_capture), generously
    out_h, out_w, cols = desc["out_h"], desc["out_w"], config.cols
    if prog.wraps_rows(cols, out_w, desc["k_blocks"], wrap_rows=config.wrap_rows):
        # Tiles of cols pixels over the whole map, the last one possibly partial.
        k = desc["out_channels"]
        pixels = out_h * out_w
        return sum(max(stage.reduction, k * min(cols, pixels - p0) * interval + lat2)
                   for p0 in range(0, pixels, cols)) + config.rows * cols + 64
    total = 0
    for kb in range(desc["k_blocks"]):
        k = min(config.rows, desc["out_channels"] - kb * config.rows)
        for x0 in range(0, out_w, cols):
            n = k * min(cols, out_w - x0)
            total += max(stage.reduction, n * interval + lat2)
    return out_h * total + config.rows * cols + 64


def run_case(request, cases, case, net, config, **kwargs):
    """``run_layer`` on ``net`` with parameters, input and slot seeded by the case's name;
    returns (cycles per layer, program)."""
    seed = sorted(cases).index(case)
    x = edge_input(net.input_shape, seed)
    _, cycles, p = run_layer(request, net, nets.random_params(net, seed), x, config=config,
                             slot=seed % 2, **kwargs)
    for stage, c in zip(p.stages, cycles):
        report(case, c, stage, config)
    return cycles, p


@pytest.mark.parametrize("case", CASES)
def test_compact_layer_matches_golden(request, case):
    net, config, extra = CASES[case]
    (cycles,), p = run_case(request, CASES, case, net, config, **extra)
    assert cycles <= compact_bound(p, config, extra)


WRAPPING = {
    # (network, config, extra Datapath arguments): layers whose tiles can run on into the
    # next row (one k-block, out_w % cols != 0) without compact_drain, so the drop stage
    # discards only what lies past the map (with wrap_rows) or past each row (without):
    # 11x11 pixels on 3 columns (the last tile 2 past the map) pooled 3/2; 5x5 on 4
    # columns with stride 2 and pooled 2/1.
    "11x11_on_3_pool3": (Network("t", (2, 11, 11), [Conv(5, 3, pad=1), ReLU(),
                                                     MaxPool(3, 2), FC(1)]),
                         SMALL.with_(cols=3), {"dataflow": "broadcast"}),
    "5x5_on_4_s2_pool2": (Network("t", (3, 9, 9), [Conv(8, 3, stride=2, pad=1), ReLU(),
                                                    MaxPool(2, 1), FC(1)]),
                          SMALL.with_(cols=4), {}),
}


@pytest.mark.parametrize("wrap_rows", [True, False])
@pytest.mark.parametrize("case", WRAPPING)
def test_wrapping_tiles_match_golden(request, case, wrap_rows):
    """Bit-exact with and without ``wrap_rows``, in ``array_tiles`` tiles of ``max(D,
    rows*cols + 4)`` cycles (each drains every PE) plus the pipeline's fill and drain;
    wrapping takes fewer tiles."""
    net, base, extra = WRAPPING[case]
    config = base.with_(wrap_rows=wrap_rows)
    (cycles,), p = run_case(request, WRAPPING, case, net, config, **extra)
    desc, pes = p.descriptors[0], config.rows * config.cols
    shape = config.cols, desc["out_h"], desc["out_w"], desc["k_blocks"]
    assert prog.wraps_rows(config.cols, desc["out_w"], desc["k_blocks"],
                           wrap_rows=wrap_rows) == wrap_rows
    tiles = prog.array_tiles(*shape, wrap_rows=wrap_rows)
    assert (tiles < prog.array_tiles(*shape, wrap_rows=not wrap_rows)) == wrap_rows
    assert cycles <= tiles * max(desc["reduction"], pes + 4) + pes + 64


def test_wrapping_layer_then_blocked_layer(request):
    """A layer whose tiles wrap rows (10 pixels on 4 columns, one k-block), then one
    whose do not (two k-blocks), back to back on the ULX3S-85F's compact 16x4 shape."""
    net = Network("t", (3, 10, 10), [Conv(6, 3, pad=1), ReLU(), Conv(20, 3), ReLU(),
                                     MaxPool(2, 2), FC(3)])
    params = nets.random_params(net, 12)
    _, cycles, p = run_layer(request, net, params, edge_input(net.input_shape, 12),
                             config=WIDE_COMPACT, layers=2)
    print(f"\nwrapping then blocked on 16x4: {cycles} cycles (array beats {p.ideal_cycles()})")


def test_shift_drain_layers_match_golden(request):
    """An iCE40 configuration drains the array through shift chains: a C1-like layer
    pooled 2/2, then a fully connected layer of two k-blocks, back to back."""
    config = SMALL.with_(ice40=True)
    net = Network("t", (1, 10, 10), [Conv(6, 5, pad=2), ReLU(), MaxPool(2, 2), FC(12)])
    params = nets.random_params(net, 13)
    dp = Datapath(config, dataflow="broadcast")
    assert dp.array.shift_drain
    Fragment.get(dp, None)      # elaborated (its units are built in hw/, not here)
    run_layer(request, net, params, edge_input(net.input_shape, 13), config=config,
              layers=2, dataflow="broadcast")


def test_compact_two_layers_back_to_back(request):
    """Layer 2 starts the cycle after layer 1's ``done``: the latched tile shapes, the
    pool's last block and the writer's channel count all follow the new descriptor."""
    net = Network("t", (3, 10, 10), [Conv(10, 5, pad=2), ReLU(), MaxPool(2, 2), FC(13)])
    params = nets.random_params(net, 11)
    run_layer(request, net, params, edge_input(net.input_shape, 11), config=NARROW,
              layers=2)


def test_compact_cuts_c1_cycles(request):
    """C1 of LeNet-5 (28x28, 6 channels) on the 16x4 array: drain-bound without the
    option (64 results per 25-beat tile), beat-bound with it."""
    net = Network("t", (1, 28, 28), [Conv(6, 5, pad=2), ReLU(), MaxPool(2, 2), FC(1)])
    params = nets.random_params(net, 1)
    x = edge_input(net.input_shape, 1)
    _, (full,), p = run_layer(request, net, params, x, config=WIDE)
    _, (compact,), _ = run_layer(request, net, params, x, config=WIDE_COMPACT)
    print(f"\nC1 on 16x4: {full} cycles, compact {compact} (array beats {p.ideal_cycles()})")
    assert full >= 28 * 7 * WIDE_COMPACT.multipliers
    assert compact <= 28 * 7 * (6 * 4 + 4) + 200


# ---- fc_columns: layers with out_w == 1 put a k-block on each column ----------------------

FC_COLS = SMALL.with_(rows=8, cols=4, dataflow="broadcast", fc_columns=True,
                      qparam_entries=128)

FC_CASES = {
    # (network, config, layers run)
    # 9 k-blocks on 4 columns: 3 tiles, the last of one k-block of 6 channels.
    "fc_100_70": (Network("t", (100, 1, 1), [FC(70), ReLU(), FC(1)]), FC_COLS, 1),
    "fc_100_70_compact": (Network("t", (100, 1, 1), [FC(70), FC(1)]),
                          FC_COLS.with_(compact_drain=True), 1),
    # Two write banks with one result lane: each write goes to its byte's bank.
    "fc_100_70_banks": (Network("t", (100, 1, 1), [FC(70), FC(1)]),
                        FC_COLS.with_(compact_drain=True, write_banks=2), 1),
    # One k-block: no column mode (it would only waste weight words).
    "fc_20_5": (Network("t", (20, 1, 1), [FC(5)]), FC_COLS, 1),
    # Two k-blocks on four columns (the last of 5 channels): columns 2-3 unused.
    "fc_20_13": (Network("t", (20, 1, 1), [FC(13)]), FC_COLS, 1),
    # LeNet's F6 on the ULX3S's shape: 6 k-blocks, two column tiles (the last of 2).
    "fc_120_84_16x4": (Network("t", (120, 1, 1), [FC(84), ReLU(), FC(1)]),
                      WIDE.with_(dataflow="broadcast", fc_columns=True, compact_drain=True,
                                 qparam_entries=128), 1),
    # A convolution with out_w == 1 (a 1-pixel-wide map, 3x3 kernel, pad 1), out_h = 5:
    # column mode on a real window walk, with padding on both axes.
    "conv_w1_pad": (Network("t", (2, 5, 1), [Conv(19, 3, pad=1), FC(1)]), FC_COLS, 1),
    # Conv (weights picked by lane from packed words), then FC 250 -> 13 (column mode,
    # its weights realigned to a whole memory word), with and without compact_drain.
    "conv_then_fc": (Network("t", (3, 10, 10), [Conv(10, 5, pad=2), ReLU(), MaxPool(2, 2),
                                                FC(13)]), FC_COLS, 2),
    "conv_then_fc_compact": (Network("t", (3, 10, 10), [Conv(10, 5, pad=2), ReLU(),
                                                        MaxPool(2, 2), FC(13)]),
                             FC_COLS.with_(compact_drain=True), 2),
}


@pytest.mark.parametrize("case", FC_CASES)
def test_fc_columns_match_golden(request, case):
    net, config, layers = FC_CASES[case]
    cycles, p = run_case(request, FC_CASES, case, net, config, layers=layers,
                         dataflow=config.dataflow)
    for stage, c, ideal in zip(p.stages, cycles, p.ideal_cycles()):
        # Beats, or one array drain per tile (min_tile = R*C + 4) if tiles are shorter.
        tiles = ideal // stage.reduction
        slowest = max(stage.reduction, config.multipliers + 4)
        assert c <= tiles * slowest + config.multipliers + 64


@pytest.mark.parametrize("cols", [4, 8])
def test_fc_columns_cut_fc_beats(cols):
    """LeNet-5's F5 (400 -> 120) on 16x4 and 16x8: 8 k-blocks in 8 / cols column tiles,
    not 8 tiles; F6 (6 k-blocks) in column mode too, the last FC (one k-block) not."""
    net = nets.lenet5()
    params = nets.random_params(net, 0)
    plain = get_config("ulx3s-85f").with_(cols=cols, dataflow="systolic", fc_columns=False,
                                          overlap_drain=False,
                                          result_lanes=1)
    config = plain.with_(dataflow="broadcast", fc_columns=True)
    p, q = compile_network(net, params, plain), compile_network(net, params, config)
    assert p.ideal_cycles()[2:] == [8 * 400, 6 * 120, 84]
    assert q.ideal_cycles()[2:] == [8 // cols * 400, -(-6 // cols) * 120, 84]
    assert q.descriptors[2]["w_base"] % config.cols == 0


@pytest.mark.parametrize("cols, k_blocks, expected", [
    (4, 1, False), (4, 2, True), (8, 2, False), (8, 3, True), (16, 4, False), (16, 5, True),
    (1, 2, True), (2, 2, True)])
def test_column_mode_needs_enough_k_blocks(cols, k_blocks, expected):
    """Column mode only where the weight words are mostly used: more than max(1, C // 4)
    k-blocks; one pixel wide; only with fc_columns."""
    assert prog.column_mode(cols, 1, k_blocks, fc_columns=True) == expected
    assert not prog.column_mode(cols, 2, k_blocks, fc_columns=True)
    assert not prog.column_mode(cols, 1, k_blocks, fc_columns=False)


def test_two_k_block_fc_fits_ulx3s_weights():
    """cifar-small's 1024 -> 32 layer (2 k-blocks) on the 16x8 ULX3S-85F runs as two
    tiles, so its weights take 2 x 1024 words, not 8 x 1024 (which would not fit)."""
    net = nets.cifar_small()
    p = compile_network(net, nets.random_params(net, 0), get_config("ulx3s-85f"))
    assert p.descriptors[3]["k_blocks"] == 2 and p.ideal_cycles()[3] == 2 * 1024


# ---- result_lanes: several results a cycle, each lane its own requantiser, pool, writer ----

LANES = WIDE_COMPACT.with_(dataflow="broadcast", fc_columns=True, result_lanes=4,
                           qparam_entries=128)

LANE_CASES = {
    # (network, config, layers run)
    # LeNet-5's C1 shape on 16x8 with 4 lanes: 6 channels, lanes 0-1 take two, 2-3 one.
    "c1_16x8_l4": (Network("t", (1, 14, 14), [Conv(6, 5, pad=2), ReLU(), MaxPool(2, 2),
                                               FC(1)]), LANES.with_(cols=8), 1),
    # 3 channels on 4 lanes: lane 3 has none (it writes nothing); no pool, so the lanes'
    # bytes queue for the one write port.
    "c3_k3_nopool_l4": (Network("t", (2, 9, 9), [Conv(3, 3, pad=1), ReLU(), FC(1)]),
                        LANES, 1),
    # 3 channels pooled 2/1 on 4 lanes: lane 3's max-pool gets no k-block at all.
    "c3_pool2s1_l4": (Network("t", (1, 7, 9), [Conv(3, 3, pad=1), ReLU(), MaxPool(2, 1),
                                               FC(1)]), LANES, 1),
    # 17 channels: the second k-block has one, for lane 0 only; pool 3/2 (overlapping).
    "c17_pool3_l4": (Network("t", (3, 9, 9), [Conv(17, 3, pad=1), ReLU(), MaxPool(3, 2),
                                               FC(1)]), LANES, 1),
    # Two lanes, stride 2, 11 channels, then a layer of 20 (two k-blocks) back to back.
    "two_layers_l2": (Network("t", (3, 11, 11), [Conv(11, 3, stride=2, pad=1), ReLU(),
                                                  Conv(20, 3), ReLU(), FC(2)]),
                      LANES.with_(result_lanes=2), 2),
    # Conv, then FC 250 -> 70 in column mode (5 k-blocks on 4 columns) and on to 10.
    "conv_fc_fc_l4": (Network("t", (3, 10, 10), [Conv(10, 5, pad=2), ReLU(), MaxPool(2, 2),
                                                 FC(70), ReLU(), FC(10)]), LANES, 3),
    # Lanes on 8 rows (two channels each), 9 channels, pooled 2/2.
    "c9_8x3_l4": (Network("t", (2, 8, 8), [Conv(9, 3, pad=1), ReLU(), MaxPool(2, 2),
                                            FC(1)]), LANES.with_(rows=8, cols=3,
                                                                 fc_columns=False), 1),
    # Write banks: the lanes' bytes go out through two ports (four below), each taking
    # the lowest lane whose next byte is in its bank. Conv + pool, then FC in column mode
    # (consecutive outputs: the lanes' bytes alternate banks) and a last small FC.
    "conv_fc_fc_l4_b2": (Network("t", (3, 10, 10), [Conv(10, 5, pad=2), ReLU(),
                                                    MaxPool(2, 2), FC(70), ReLU(), FC(10)]),
                         LANES.with_(write_banks=2), 3),
    # No pool, an odd plane (9x9: a lane's channels alternate banks), four banks.
    "c3_k3_nopool_l4_b4": (Network("t", (2, 9, 9), [Conv(3, 3, pad=1), ReLU(), FC(1)]),
                           LANES.with_(write_banks=4), 1),
    # 17 channels pooled 3/2, two lanes, two banks.
    "c17_pool3_l2_b2": (Network("t", (3, 9, 9), [Conv(17, 3, pad=1), ReLU(), MaxPool(3, 2),
                                                  FC(1)]),
                        LANES.with_(result_lanes=2, write_banks=2), 1),
}


@pytest.mark.parametrize("case", LANE_CASES)
def test_result_lanes_match_golden(request, case):
    net, config, layers = LANE_CASES[case]
    # The multiplier blocks of the ECP5 builds (operands registered in each block).
    cycles, p = run_case(request, LANE_CASES, case, net, config, layers=layers,
                         dataflow=config.dataflow, mac="registered")
    for stage, c, ideal in zip(p.stages, cycles, p.ideal_cycles()):
        # Beats, or per tile one drain of R*C/lanes beats, plus fill and drain; without a
        # pool every result is a write of the shared port.
        tiles = -(-ideal // stage.reduction)
        per_tile = max(stage.reduction, config.multipliers // config.result_lanes + 4)
        writes = int(np.prod(stage.out_shape))
        assert c <= max(tiles * per_tile, writes) + config.multipliers + 64


PAIRS = LANES.with_(pixel_pairs=True)
PAIR_CASES = {
    # (network, config, layers run); every case's first layer runs with pixel pairs
    # (forced where the compiler would find them no faster: no-pool layers).
    # C1's shape on 16x8: 10 pairs a row on 8 columns (tiles wrap rows), pooled 2/2.
    "c6_pool_16x8_l4": (Network("t", (1, 20, 20), [Conv(6, 5, pad=2), ReLU(), MaxPool(2, 2),
                                                    FC(1)]), PAIRS.with_(cols=8), 1),
    # 8 channels (half the rows exactly), no pool: every lane's bytes queue for the port.
    "c8_nopool_l4": (Network("t", (2, 8, 10), [Conv(8, 3, pad=1), ReLU(), FC(1)]), PAIRS, 1),
    # Stride 2 (columns 4 input columns apart, a kernel 2 wider), 3 channels: lane 3 has
    # none; pool 2/1 (overlapping windows) over 4 pairs a row.
    "c3_stride2_pool2s1_l4": (Network("t", (2, 15, 15), [Conv(3, 5, stride=2, pad=2), ReLU(),
                                                          MaxPool(2, 1), FC(1)]), PAIRS, 1),
    # Stride 3: a kernel 3 wider, columns 6 input columns apart; 4 pairs a row on 4
    # columns, the right padding read by the last pair.
    "c5_stride3_l4": (Network("t", (2, 24, 24), [Conv(5, 5, stride=3, pad=1), ReLU(),
                                                  FC(3)]), PAIRS, 1),
    # One lane on 8 rows and 2 columns, pooled 2/1, no ReLU; then a plain layer.
    "c4_then_plain_l1": (Network("t", (1, 9, 12), [Conv(4, 5, pad=2), MaxPool(2, 1),
                                                   Conv(9, 3), ReLU(), FC(1)]),
                         PAIRS.with_(rows=8, cols=2, result_lanes=1, fc_columns=False), 2),
    # Two lanes on 8 rows, 3 columns: 8 pairs a row, tiles wrap rows; then an FC layer.
    "c2_wrap_l2": (Network("t", (1, 6, 16), [Conv(2, 3, pad=1), ReLU(), FC(10)]),
                   PAIRS.with_(rows=8, cols=3, result_lanes=2, fc_columns=False), 2),
    # The ULX3S-85F's overlapped drains (result queue): 3x3 tiles of 18 beats, 32 result
    # beats each, no pool (the writes hold the queue back); then FC in column mode.
    "c7_overlap_nopool_l4": (Network("t", (2, 6, 16), [Conv(7, 3, pad=1), ReLU(),
                                                        FC(20), ReLU(), FC(3)]),
                             PAIRS.with_(cols=8, overlap_drain=True), 3),
    # C1's shape, overlapped drains, pooled 2/2.
    "c6_pool_overlap_l4": (Network("t", (1, 12, 16), [Conv(6, 5, pad=2), ReLU(),
                                                       MaxPool(2, 2), FC(1)]),
                           PAIRS.with_(cols=8, overlap_drain=True), 1),
    # The ULX3S-85F's options together (two write banks), no pool, then FC.
    "c7_overlap_banks_l4": (Network("t", (2, 6, 16), [Conv(7, 3, pad=1), ReLU(),
                                                       FC(20), ReLU(), FC(3)]),
                            PAIRS.with_(cols=8, overlap_drain=True, write_banks=2), 3),
    # Eight lanes (a channel of each half of the rows per lane; the ULX3S-85F with
    # shared_qparams): C1's shape pooled 2/2, overlapped drains, two banks; then FC in
    # column mode and a last FC.
    "c6_pool_overlap_banks_l8": (Network("t", (1, 10, 16), [Conv(6, 5, pad=2), ReLU(),
                                                            MaxPool(2, 2), FC(24), ReLU(),
                                                            FC(5)]),
                                 PAIRS.with_(cols=8, overlap_drain=True, write_banks=2,
                                             result_lanes=8), 3),
}


@pytest.mark.parametrize("case", PAIR_CASES)
def test_pixel_pairs_match_golden(request, monkeypatch, case):
    net, config, layers = PAIR_CASES[case]

    def fits(stage, config):     # every layer that may pair does (the hardware's cases)
        k, _, w = stage.conv_shape
        return config.pixel_pairs and prog.pixel_pairs_fit(config.rows, k, w,
                                                           -(-k // config.rows))
    monkeypatch.setattr(compiler, "_pairs_pay", fits)
    cycles, p = run_case(request, PAIR_CASES, case, net, config, layers=layers,
                         dataflow=config.dataflow, mac="registered")
    assert p.descriptors[0]["pixel_pairs"] == 1
    for stage, c, ideal, desc in zip(p.stages, cycles, p.ideal_cycles(), p.descriptors):
        # Beats, or per tile a drain of every row (pairs) or the used ones, plus fill and
        # drain; without a pool every result is a write of the shared port.
        tiles = -(-ideal // desc["reduction"])
        rows = config.rows if desc["pixel_pairs"] else min(stage.out_channels, config.rows)
        drain = (config.cols * -(-rows // config.result_lanes) +
                 (1 if config.overlap_drain else 4))
        writes = int(np.prod(stage.out_shape))
        assert c <= max(tiles * max(desc["reduction"], drain), writes) + \
            config.multipliers + 64


def test_pixel_pairs_cut_c1_cycles(request):
    """LeNet-5's C1 on a 16x8 array with 4 lanes: 98 tiles of 25 beats, or 49 of 30
    beats (drain-bound: 32 result beats, and the array's capture latency unless drains
    overlap) with pixel pairs; with 8 lanes bound by the 30 beats."""
    net = Network("t", (1, 28, 28), [Conv(6, 5, pad=2), ReLU(), MaxPool(2, 2), FC(1)])
    params = nets.random_params(net, 2)
    x = edge_input(net.input_shape, 2)
    plain = LANES.with_(cols=8)
    _, (slow,), p = run_layer(request, net, params, x, config=plain, dataflow="broadcast")
    _, (fast,), q = run_layer(request, net, params, x, config=plain.with_(pixel_pairs=True),
                              dataflow="broadcast")
    print(f"\nC1 on 16x8, 4 lanes: {slow} cycles, {fast} with pixel pairs (array beats "
          f"{p.ideal_cycles()[0]}, {q.ideal_cycles()[0]})")
    assert q.descriptors[0]["pixel_pairs"] == 1
    assert slow >= 98 * 25
    assert fast <= 49 * 37 + 150
    _, (overlapped,), _ = run_layer(request, net, params, x, dataflow="broadcast",
                                    config=plain.with_(pixel_pairs=True, overlap_drain=True))
    print(f"with overlapped drains: {overlapped} cycles")
    # 33 cycles a tile instead of 32 + DualMul8.LATENCY + 2; the queue adds 2 to the fill.
    assert overlapped <= 49 * 33 + 150 and fast - overlapped >= 49 * 2 - 10
    _, (eight,), _ = run_layer(request, net, params, x, dataflow="broadcast",
                               config=plain.with_(pixel_pairs=True, overlap_drain=True,
                                                  result_lanes=8))
    print(f"on eight lanes: {eight} cycles")
    # 16 result beats a tile: the 30 operand beats are the bound.
    assert eight <= 49 * 31 + 150 and overlapped - eight >= 49 * 2 - 10


def test_result_lanes_cut_c1_cycles(request):
    """LeNet-5's C1 on 16x8: drain-bound with one lane (48 results per 25-beat tile),
    beat-bound with four."""
    net = Network("t", (1, 28, 28), [Conv(6, 5, pad=2), ReLU(), MaxPool(2, 2), FC(1)])
    params = nets.random_params(net, 1)
    x = edge_input(net.input_shape, 1)
    one = LANES.with_(cols=8, result_lanes=1)
    _, (slow,), p = run_layer(request, net, params, x, config=one, dataflow="broadcast")
    _, (fast,), _ = run_layer(request, net, params, x, config=one.with_(result_lanes=4),
                              dataflow="broadcast")
    print(f"\nC1 on 16x8: {slow} cycles with 1 lane, {fast} with 4 (array beats "
          f"{p.ideal_cycles()})")
    assert slow >= 98 * 48
    assert fast <= 98 * 25 + 150


def test_write_banks_cut_fc_cycles(request):
    """LeNet-5's F6 (120 -> 84) in column mode on 16x8 with 4 lanes: its 84 outputs leave
    through the one write port a byte a cycle after its 120 beats, or two a cycle with
    two banks (consecutive outputs alternate banks)."""
    net = Network("t", (120, 1, 1), [FC(84), ReLU(), FC(1)])
    params = nets.random_params(net, 3)
    x = edge_input(net.input_shape, 3)
    one = LANES.with_(cols=8)
    _, (slow,), p = run_layer(request, net, params, x, config=one, dataflow="broadcast")
    _, (fast,), _ = run_layer(request, net, params, x, config=one.with_(write_banks=2),
                              dataflow="broadcast")
    print(f"\nF6 on 16x8, 4 lanes: {slow} cycles with one write port, {fast} with two "
          f"banks (array beats {p.ideal_cycles()[0]})")
    assert p.ideal_cycles()[0] == 120
    assert slow >= 120 + 84
    assert fast <= slow - 84 // 2 + 2
