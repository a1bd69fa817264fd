# amaranth: UnusedElaboratable=no
"""Requantizer vs golden.requantize, in Amaranth's simulator."""

import random

import numpy as np
import pytest
from amaranth.hdl import unsigned
from fpgacnn.hw.multiplier import Mul16
from fpgacnn.hw.program import M_BITS
from fpgacnn.hw.requant import Requantizer, mul16_blocks
from fpgacnn.sim.amaranth_sim import run_simulation
from fpgacnn.sim.streams import stream_get, stream_put
from fpgacnn.sim.vectors import requant_expected, requant_inputs


def run_requant(dut, inputs, *, seed, name, idle=0.3, stall=0.3):
    acc, bias, m, s, relu = inputs
    lanes = dut.lanes
    beats = len(acc) // lanes
    got, tags = [], []

    async def producer(ctx):
        rng = random.Random(seed)
        for b in range(beats):
            sl = range(b * lanes, (b + 1) * lanes)
            payload = {"lanes": [{"acc": int(acc[j]), "bias": int(bias[j]), "m": int(m[j]),
                                  "s": int(s[j])} for j in sl],
                       "relu": int(relu[b * lanes])}
            if dut.tag is not None:
                payload["tag"] = b % 1024
            await stream_put(ctx, dut.i_stream, payload)
            while rng.random() < idle:
                await ctx.tick()

    async def consumer(ctx):
        rng = random.Random(seed + 1)
        for _ in range(beats):
            p = await stream_get(ctx, dut.o_stream)
            got.extend(p.y[j] for j in range(lanes))
            if dut.tag is not None:
                tags.append(p.tag)
            while rng.random() < stall:
                await ctx.tick()

    # relu is per beat: all lanes of a beat share lane 0's flag.
    relu_per_value = np.repeat(relu[::lanes][:beats], lanes)
    expected = requant_expected(acc, bias, m, s, relu_per_value)[:beats * lanes]

    def check():
        np.testing.assert_array_equal(np.array(got, dtype=np.int8), expected,
                                      err_msg=f"seed={seed}")
        if dut.tag is not None:
            assert tags == [b % 1024 for b in range(beats)]

    run_simulation(dut, [producer, consumer], name=name, check=check)


@pytest.mark.parametrize("acc_width", [26, 40])
@pytest.mark.parametrize("seed", range(3))
def test_requant_matches_golden(request, acc_width, seed):
    inputs = requant_inputs(300, acc_width, seed)
    run_requant(Requantizer(acc_width), inputs, seed=seed, name=request.node.name)


@pytest.mark.parametrize("seed", range(2))
def test_requant_narrow_bias_matches_golden(request, seed):
    """The core's configuration: bias as wide as the accumulator, extremes included."""
    acc, bias, m, s, relu = requant_inputs(300, 26, seed + 20)
    lo, hi = -(1 << 25), (1 << 25) - 1
    bias = np.clip(bias, lo, hi)
    bias[:4] = [hi, lo, hi, lo]
    acc[:4] = [hi, lo, lo, hi]
    run_requant(Requantizer(26, bias_width=26), (acc, bias, m, s, relu), seed=seed,
                name=request.node.name)


@pytest.mark.parametrize("acc_width, bias_width, blocks", [
    (26, 26, 2),       # the iCEBreaker's: v has 27 bits
    (15, 15, 1),       # v fits one signed 16-bit operand
    (16, 16, 2),       # a 2-bit top chunk
    (26, 32, 3),       # full int32 bias
])
@pytest.mark.parametrize("seed", range(2))
def test_requant_mul16_matches_golden(request, acc_width, bias_width, blocks, seed):
    """``v * M`` from 16×16 blocks (the SB_MAC16 path's chunking), extremes included."""
    assert mul16_blocks(acc_width, bias_width) == blocks
    acc, bias, m, s, relu = requant_inputs(300, acc_width, seed + 30)
    lo, hi = -(1 << (bias_width - 1)), (1 << (bias_width - 1)) - 1
    a_lo, a_hi = -(1 << (acc_width - 1)), (1 << (acc_width - 1)) - 1
    bias = np.clip(bias, lo, hi)
    bias[:6] = [hi, lo, hi, lo, 0, -1]
    acc[:6] = [a_hi, a_lo, a_lo, a_hi, -1, a_lo]
    m_max = (1 << M_BITS) - 1
    m[:6] = [m_max, m_max, 1, 1, m_max, m_max]
    s[:6] = [63, 63, 1, 1, 1, 63]
    run_requant(Requantizer(acc_width, bias_width=bias_width, mul16=Mul16),
                (acc, bias, m, s, relu), seed=seed, name=request.node.name)


@pytest.mark.parametrize("interval", [2, 4, 8])
def test_requant_interval_matches_golden(request, interval):
    inputs = requant_inputs(200, 26, interval + 10)
    run_requant(Requantizer(26, interval=interval), inputs, seed=interval,
                name=request.node.name)


@pytest.mark.parametrize("interval", [1, 2])
def test_requant_lanes_and_tag(request, interval):
    dut = Requantizer(24, lanes=3, tag=unsigned(10), interval=interval)
    run_requant(dut, requant_inputs(240, 24, 11), seed=11, name=request.node.name,
                idle=0.2, stall=0.6)


@pytest.mark.parametrize("interval", [1, 2, 4])
def test_requant_full_rate(request, interval):
    """No idle, no backpressure: one value per ``interval`` cycles after the latency."""
    dut = Requantizer(26, interval=interval)
    inputs = requant_inputs(100, 26, 5)
    cycles = {}

    async def producer(ctx):
        acc, bias, m, s, relu = inputs
        for j in range(100):
            await stream_put(ctx, dut.i_stream, {"lanes": [{"acc": int(acc[j]),
                             "bias": int(bias[j]), "m": int(m[j]), "s": int(s[j])}],
                             "relu": int(relu[j])})

    async def consumer(ctx):
        ctx.set(dut.o_stream.ready, 1)
        n, count = 0, 0
        while n < 100:
            await ctx.tick()
            count += 1
            n += ctx.get(dut.o_stream.valid)
        cycles["n"] = count

    run_simulation(dut, [producer, consumer], name=request.node.name)
    assert cycles["n"] <= interval * (100 + Requantizer.LATENCY)


def test_requant_bad_arguments():
    with pytest.raises(TypeError, match="lanes"):
        Requantizer(26, lanes=0)
    with pytest.raises(ValueError, match="acc_width"):
        Requantizer(0)
    with pytest.raises(ValueError, match="interval"):
        Requantizer(26, interval=3)
    with pytest.raises(ValueError, match="mul16.*interval 2"):
        Requantizer(26, interval=2, mul16=Mul16)
