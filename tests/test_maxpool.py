# amaranth: UnusedElaboratable=no
"""MaxPool vs golden.maxpool2d on the k-block-interleaved raster, in Amaranth's simulator."""

import random

import numpy as np
import pytest

from fpgacnn.hw.maxpool import MaxPool, check_pool_geometry
from fpgacnn.sim.amaranth_sim import run_simulation
from fpgacnn.sim.streams import stream_get, stream_put
from fpgacnn.sim.vectors import from_kblock_stream, kblock_stream
from fpgacnn.sw import golden


def make_map(channels, h, w, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (channels, h, w), dtype=np.int8)
    x[0, :2] = -128                      # windows that are all -128
    if channels > 1:
        x[1] = 127
    return x


def run_pool(dut, frames, kernel, stride, *, seed, name, idle=0.3, stall=0.3):
    """Pool each (C, H, W) map of ``frames`` (same geometry) in one simulation."""
    c, h, w = frames[0].shape
    blocks = -(-c // dut.block)
    h2, w2 = dut.check_geometry(h, w, blocks, kernel, stride)
    beats = [kblock_stream(f, dut.block) for f in frames]
    n_out = blocks * dut.block * h2 * w2
    got = []

    async def producer(ctx):
        rng = random.Random(seed)
        for port, value in (("height", h), ("width", w), ("blocks", blocks),
                            ("kernel", kernel), ("stride", stride), ("start", 1)):
            ctx.set(getattr(dut, port), value)
        await ctx.tick()
        ctx.set(dut.start, 0)
        assert not ctx.get(dut.error)
        for frame in beats:
            for v in frame.tolist():
                await stream_put(ctx, dut.i_stream, v)
                while rng.random() < idle:
                    await ctx.tick()

    async def consumer(ctx):
        rng = random.Random(seed + 1)
        for _ in range(n_out * len(frames)):
            got.append(await stream_get(ctx, dut.o_stream))
            while rng.random() < stall:
                await ctx.tick()

    def check():
        out = np.array(got, dtype=np.int8).reshape(len(frames), -1)
        for f, frame in enumerate(frames):
            expected = golden.maxpool2d(frame, kernel, stride)
            np.testing.assert_array_equal(from_kblock_stream(out[f], c, dut.block, h2, w2)[:c],
                                          expected, err_msg=f"seed={seed} frame={f}")

    run_simulation(dut, [producer, consumer], name=name, check=check)


CASES = [  # (channels, h, w, kernel, stride, block)
    (6, 8, 8, 2, 2, 8),      # C1-like: one k-block, 6 of 8 channels used
    (16, 6, 6, 2, 2, 8),     # two k-blocks
    (5, 7, 9, 3, 2, 4),      # overlapping 3/2 windows
    (3, 5, 5, 3, 2, 1),      # block 1
    (4, 4, 5, 2, 1, 2),      # 2/1: overlapping by one
    (2, 3, 3, 1, 1, 2),      # identity
    (2, 5, 5, 1, 2, 2),      # 1/2: subsampling
    (2, 3, 3, 3, 2, 2),      # one window covering the map
]


@pytest.mark.parametrize("registered_read", [False, True], ids=["", "registered"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "c{}h{}w{}k{}s{}b{}".format(*c))
@pytest.mark.parametrize("seed", range(2))
def test_maxpool_matches_golden(request, case, seed, registered_read):
    c, h, w, kernel, stride, block = case
    dut = MaxPool(max_width=12, max_blocks=4, block=block, registered_read=registered_read)
    frames = [make_map(c, h, w, seed), make_map(c, h, w, seed + 100)]
    run_pool(dut, frames, kernel, stride, seed=seed, name=request.node.name)


@pytest.mark.parametrize("registered_read", [False, True], ids=["", "registered"])
def test_maxpool_line_buffer_of_one_entry(request, registered_read):
    """block 1, one k-block, pooled width 1: read and write hit the same entry each row."""
    dut = MaxPool(max_width=3, max_blocks=1, block=1, registered_read=registered_read)
    run_pool(dut, [make_map(1, 7, 3, 4)], 3, 2, seed=4, name=request.node.name, idle=0, stall=0)


def test_maxpool_reconfigure(request):
    """A second start with another geometry resets the counters."""
    dut = MaxPool(max_width=8, max_blocks=2, block=2)
    first, second = make_map(4, 4, 4, 1), make_map(3, 5, 7, 2)
    got = []

    async def bench(ctx):
        for x, (k, s) in ((first, (2, 2)), (second, (3, 2))):
            c, h, w = x.shape
            for port, value in (("height", h), ("width", w), ("blocks", 2), ("kernel", k),
                                ("stride", s), ("start", 1)):
                ctx.set(getattr(dut, port), value)
            await ctx.tick()
            ctx.set(dut.start, 0)
            ctx.set(dut.o_stream.ready, 1)
            out = []
            for v in kblock_stream(x, 2).tolist():
                ctx.set(dut.i_stream.valid, 1)
                ctx.set(dut.i_stream.payload, v)
                _, _, ov, op = await ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload)
                if ov:
                    out.append(op)
            ctx.set(dut.i_stream.valid, 0)
            for _ in range(3):
                _, _, ov, op = await ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload)
                if ov:
                    out.append(op)
            h2, w2 = golden.pool_output_size(h, k, s), golden.pool_output_size(w, k, s)
            got.append(from_kblock_stream(np.array(out, dtype=np.int8), c, 2, h2, w2)[:c])

    def check():
        np.testing.assert_array_equal(got[0], golden.maxpool2d(first, 2, 2))
        np.testing.assert_array_equal(got[1], golden.maxpool2d(second, 3, 2))

    run_simulation(dut, [bench], name=request.node.name, check=check)


def test_maxpool_error_flag(request):
    dut = MaxPool(max_width=8, max_blocks=2, block=2)

    async def bench(ctx):
        for (k, s), bad in (((3, 1), True), ((2, 2), False), ((3, 2), False)):
            for port, value in (("height", 6), ("width", 6), ("blocks", 1), ("kernel", k),
                                ("stride", s), ("start", 1)):
                ctx.set(getattr(dut, port), value)
            await ctx.tick()
            assert ctx.get(dut.error) == bad, (k, s)

    run_simulation(dut, [bench], name=request.node.name)


def test_bad_geometry_raises():
    with pytest.raises(ValueError, match="kernel 3 with stride 1"):
        check_pool_geometry(8, 8, 1, 3, 1)
    with pytest.raises(ValueError, match="max_width"):
        MaxPool(max_width=8, max_blocks=1, block=8).check_geometry(8, 9, 1, 2, 2)
    with pytest.raises(golden.GeometryError, match="not an integer"):
        check_pool_geometry(7, 8, 1, 2, 2)
    with pytest.raises(ValueError, match="block must be a positive integer"):
        MaxPool(max_width=8, max_blocks=1, block=0)
    with pytest.raises(ValueError, match="no window would fit"):
        MaxPool(max_width=2, max_blocks=1, block=1, max_kernel=3)
