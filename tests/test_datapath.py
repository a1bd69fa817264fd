# amaranth: UnusedElaboratable=no
"""One layer through Im2col → memories → SystolicArray → Requantizer → MaxPool → writer,
in Amaranth's simulator, against the golden model (bit-exact), with its cycle count."""

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module, unsigned
from amaranth.lib import memory
from numpy.testing import assert_array_equal

from fpgacnn.hw import program as prog
from fpgacnn.hw.config import get_config
from fpgacnn.hw.datapath import Datapath
from fpgacnn.sim.amaranth_sim import run_simulation
from fpgacnn.sw import network as nets
from fpgacnn.sw.compiler import compile_network
from fpgacnn.sw.network import FC, Conv, MaxPool, Network, ReLU

# Small memories keep the simulator quick; the datapath only sees port widths.
SMALL = get_config("icebreaker").with_(weight_words=4096, act_bytes=16384, qparam_entries=64,
                                      max_reduction=4096,
                                      ice40=False)
# A 16x4 array for the largest layer: also covers rows = 16 (two chunks per weight word).
WIDE = SMALL.with_(rows=16, cols=4)


class Harness(Elaboratable):
    """A Datapath with its memories preloaded (what the core owns on the chip)."""

    def __init__(self, config, act_init, w_init, q_init, **kwargs):
        self.dp = Datapath(config, **kwargs)
        self.act = [memory.Memory(shape=unsigned(8), depth=config.act_bytes, init=act_init)
                    for _ in range(config.cols)]
        self.w = memory.Memory(shape=unsigned(config.rows * 8), depth=config.weight_words,
                               init=w_init)
        self.q = memory.Memory(shape=unsigned(prog.QParam.as_shape().size),
                               depth=config.qparam_entries, init=q_init)

    def elaborate(self, platform):
        m = Module()
        dp = m.submodules.dp = self.dp
        for i, mem in enumerate(self.act):
            m.submodules[f"act{i}"] = mem
            rp, wp = mem.read_port(), mem.write_port()
            m.d.comb += [rp.addr.eq(dp.act_rd[i].addr), rp.en.eq(dp.act_rd[i].en),
                         dp.act_rd[i].data.eq(rp.data), wp.addr.eq(dp.act_wr.addr),
                         wp.data.eq(dp.act_wr.data), wp.en.eq(dp.act_wr.en)]
        for name, mem, port in (("w", self.w, dp.w_rd), ("q", self.q, dp.q_rd)):
            m.submodules[name] = mem
            rp = mem.read_port()
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
    words = [int.from_bytes(w.tobytes(), "little") for w in p.weight_words]
    qps = [prog.encode_struct(prog.QParam, q) for q in p.qparams]
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
