# amaranth: UnusedElaboratable=no
"""The core with the activation window, in Amaranth's simulator (generic memories).

A hand-written program (``fpgacnn.sim.window_job``) runs a layer as two horizontal
bands: the image is written into the window, each band's input rows are copied into the
block RAM, the band runs there (``pad_top``), and its pooled output rows are copied out
to the window, where RESULT reads the whole map (the last descriptor, a copy of zero
bytes, sets the result base).
The output must equal ``network.run_network`` bit-exactly and the copies' counters their
byte counts + 2. Also: IMAGE chunks for the window wait while the core is busy (block-RAM
ones do not), a copy descriptor on a board without the window ends as a no-op, and the
link's RUN and WRITE range checks span the window.
"""

import numpy as np
import pytest

from fpgacnn.hw import program as prog
from fpgacnn.hw import protocol as proto
from fpgacnn.hw.config import AcceleratorConfig, Dataflow, get_config
from fpgacnn.hw.core import Core
from fpgacnn.hw.link_checker import FrameChecker
from fpgacnn.sim.amaranth_sim import run_simulation
from fpgacnn.sim.streams import stream_get, stream_put
from fpgacnn.sim.window_job import IMG, NET, band_program, copy
from fpgacnn.sw import network as nets
from fpgacnn.sw.compiler import compile_network
from fpgacnn.sw.network import Conv, MaxPool, Network, ReLU

# iCEBreaker-like, small: weight_words 8192 puts the window at weight byte 4096 (window
# address A = weight byte A); 16384 as on the iCEBreaker (A = weight byte 65536 + A).
WIN = AcceleratorConfig(name="win-test", rows=8, cols=1, max_reduction=1024,
                        weight_words=8192, act_bytes=4096, qparam_entries=32, max_layers=8,
                        clock_hz=24_000_000, dataflow=Dataflow.BROADCAST, requant_interval=2,
                        act_window=True)
def chunks_of(data):
    data = bytes(data) + bytes(-len(data) % 8)
    return [int.from_bytes(data[i:i + 8], "little") for i in range(0, len(data), 8)]


async def write(ctx, dut, space, addr, value):
    await stream_put(ctx, dut.wr, {"space": space, "addr": addr, "data": value})


async def read(ctx, dut, space, addr):
    await stream_put(ctx, dut.rd, {"space": space, "addr": addr})
    return (await stream_get(ctx, dut.rd_data)).data


async def run(ctx, dut, image_base):
    await stream_put(ctx, dut.start, {"image_base": image_base})
    await ctx.tick()
    while ctx.get(dut.busy):
        await ctx.tick()


def load(ctx, dut, program, descriptors, image):
    """The coroutine that writes the model, the program and ``image`` (into the window)."""
    async def go():
        for space, writes in program.model_writes().items():
            if space != prog.Space.PROGRAM:
                for a, v in writes:
                    await write(ctx, dut, space, a, v)
        for i, d in enumerate(descriptors):
            for j in range(prog.DESCRIPTOR_WORDS):
                await write(ctx, dut, prog.Space.PROGRAM, i * prog.DESCRIPTOR_WORDS + j,
                            (d >> (64 * j)) & ((1 << 64) - 1))
        for n, v in enumerate(chunks_of(image.tobytes())):
            await write(ctx, dut, prog.Space.IMAGE, IMG // 8 + n, v)
    return go()


@pytest.mark.parametrize("weight_words", [8192, 16384])
def test_bands_through_the_window(request, weight_words):
    config = WIN.with_(weight_words=weight_words)
    params = nets.random_params(NET, 13)
    compiled = compile_network(NET, params, config)
    descriptors = band_program(compiled.descriptors[0])
    rng = np.random.default_rng(weight_words)
    image = rng.integers(-128, 128, NET.input_shape, dtype=np.int8)
    image[0, 0, :3] = (-128, 127, 0)
    expected = nets.run_network(NET, params, image).reshape(-1)
    dut = Core(config)
    got, counters = [], []

    async def bench(ctx):
        await load(ctx, dut, compiled, descriptors, image)
        await run(ctx, dut, IMG)
        for k in range(expected.size):
            got.append(await read(ctx, dut, prog.ReadSpace.LOGITS, k))
        for i in range(1 + len(descriptors)):
            counters.append(await read(ctx, dut, prog.ReadSpace.COUNTERS, i))

    def check():
        y = np.array(got, dtype=np.int64).astype(np.uint32).astype(np.int32)
        np.testing.assert_array_equal(y, expected)
        c, _, w = NET.input_shape
        k = compiled.descriptors[0]["out_channels"]
        for i in (0, 3):            # copies in and out: bytes + 2 cycles
            assert counters[1 + i] == c * 7 * w + 2, f"copy in, descriptor {i}"
            assert counters[3 + i] == k * 3 * 6 + 2, f"copy out, descriptor {i + 2}"
        assert counters[7] == 1, "a copy of zero bytes"
        assert counters[0] > sum(counters[1:])

    run_simulation(dut, [bench], name=request.node.name, check=check, max_cycles=60_000)


def test_window_image_writes_wait_for_idle(request):
    """During a run, a block-RAM IMAGE chunk is taken and a window one is held off until
    the core is idle; then both are where RESULT reads them."""
    dut = Core(WIN)
    # One long copy inside the block RAM keeps the core busy.
    long_copy = prog.encode_struct(prog.CopyDescriptor,
                                   copy(1, 600, 100, 1000, 0, 0, to_logits=1))
    window_chunk, bram_chunk = 0x8001FF7F00112233, 0x0123456789ABCDEF
    got = []

    async def bench(ctx):
        for j in range(prog.DESCRIPTOR_WORDS):
            await write(ctx, dut, prog.Space.PROGRAM, j, (long_copy >> (64 * j)) & (2**64 - 1))
        await stream_put(ctx, dut.start, {"image_base": 0})
        await ctx.tick()
        assert ctx.get(dut.busy)
        await write(ctx, dut, prog.Space.IMAGE, 3, bram_chunk)     # block RAM: taken
        ctx.set(dut.wr.payload, {"space": prog.Space.IMAGE, "addr": 5000, "data": window_chunk})
        ctx.set(dut.wr.valid, 1)
        while ctx.get(dut.busy):
            assert not ctx.get(dut.wr.ready), "window IMAGE chunk taken during a run"
            await ctx.tick()
        await ctx.tick().until(dut.wr.ready)
        ctx.set(dut.wr.valid, 0)
        # Read both back: the result base is the copy's dst_base (1000).
        for a in list(range(8 * 3, 8 * 3 + 8)) + list(range(8 * 5000, 8 * 5000 + 8)):
            got.append(await read(ctx, dut, prog.ReadSpace.LOGITS, (a - 1000) % 65536))

    def check():
        expected = [b - 256 * (b > 127) for v in (bram_chunk, window_chunk)
                    for b in v.to_bytes(8, "little")]
        assert [v - (1 << 32) * (v >> 31) for v in got] == expected

    run_simulation(dut, [bench], name=request.node.name, max_cycles=5_000)


def test_copy_without_window_is_a_no_op(request):
    """A board without the window has no copier: a copy descriptor ends at once."""
    config = WIN.with_(act_window=False, weight_words=1024)
    dut = Core(config)
    desc = prog.encode_struct(prog.CopyDescriptor, copy(2, 50, 0, 100, 50, 50, to_logits=1))
    got = []

    async def bench(ctx):
        await write(ctx, dut, prog.Space.IMAGE, 12, 0x0102030405060708)   # bytes 96..103
        for j in range(prog.DESCRIPTOR_WORDS):
            await write(ctx, dut, prog.Space.PROGRAM, j, (desc >> (64 * j)) & (2**64 - 1))
        await run(ctx, dut, 0)
        got.append(await read(ctx, dut, prog.ReadSpace.COUNTERS, 1))
        got.extend([await read(ctx, dut, prog.ReadSpace.LOGITS, k) for k in range(4)])

    def check():
        # One cycle for the copy; nothing written at 100.. (the image bytes 100-103 stay).
        assert got == [1, 4, 3, 2, 1]

    run_simulation(dut, [bench], name=request.node.name, max_cycles=2_000)


@pytest.mark.parametrize("window", [True, False])
def test_link_checks_follow_the_activation_space(request, window):
    """With the window, RUN takes any 16-bit image base and IMAGE writes reach chunk
    65536/8 - 1; without it, both end at act_bytes."""
    config = WIN.with_(act_window=window)
    dut = FrameChecker(config)
    end = config.act_space // 8
    cases = [  # (opcode, args, expected status or None for executed)
        (proto.Opcode.RUN, proto.encode_struct(proto.RunArgs, {"image_base": 4095}), None),
        (proto.Opcode.RUN, proto.encode_struct(proto.RunArgs, {"image_base": 4096}),
         None if window else proto.Status.BAD_ARGUMENT),
        (proto.Opcode.RUN, proto.encode_struct(proto.RunArgs, {"image_base": 65535}),
         None if window else proto.Status.BAD_ARGUMENT),
        (proto.Opcode.WRITE, proto.encode_struct(proto.WriteArgs, {
            "space": prog.Space.IMAGE, "addr": end - 2}) + bytes(16), None),
        (proto.Opcode.WRITE, proto.encode_struct(proto.WriteArgs, {
            "space": prog.Space.IMAGE, "addr": end - 1}) + bytes(16),
         proto.Status.BAD_ARGUMENT),
    ]
    got = []

    async def bench(ctx):
        ctx.set(dut.loaded, 1)
        ctx.set(dut.crc_ok, 1)
        for opcode, payload, _ in cases:
            ctx.set(dut.opcode, opcode.value)
            ctx.set(dut.length, len(payload))
            ctx.set(dut.args, int.from_bytes(payload[:proto.ARGS_BYTES], "little"))
            await ctx.tick().repeat(4)            # the facts settle
            ctx.set(dut.check, 1)
            status = ctx.get(dut.status) if ctx.get(dut.respond) else None
            got.append((status, ctx.get(dut.do_run) or ctx.get(dut.do_write)))
            await ctx.tick()
            ctx.set(dut.check, 0)

    def check():
        for (opcode, _, want), (status, executed) in zip(cases, got):
            assert status == want and executed == (want is None), (opcode, want, status)

    run_simulation(dut, [bench], name=request.node.name, max_cycles=200)


def test_compiled_streamed_plan_on_the_core(request):
    """A plan from the compiler (``compile_network`` streams maps that do not fit the
    block RAM through the window) on the iCEBreaker core with generic memories: RESULT
    from the plan's output base equals ``network.run_network``, bit-exact."""
    config = get_config("icebreaker").with_(ice40=False)
    # 10x32x32 after the first convolution: bands through the block RAM.
    net = Network("streamed", (3, 32, 32), [Conv(10, 3, 1, 1), ReLU(), MaxPool(2, 2),
                                            Conv(6, 3, 1, 1), ReLU()])
    params = nets.random_params(net, 31)
    compiled = compile_network(net, params, config)
    layers = [d for d in compiled.descriptors if not d.get("copy")]
    assert len(layers) > 2 and any(d["pad_top"] != d["pad"] for d in layers), \
        "the test needs a plan with bands"
    image = np.random.default_rng(31).integers(-128, 128, net.input_shape, dtype=np.int8)
    image[:, 0, :4] = (-128, 127, 0, -1)
    images = [image]
    expected = [nets.run_network(net, params, x).reshape(-1) for x in images]
    dut = Core(config)
    got = []

    async def bench(ctx):
        for space, writes in compiled.model_writes().items():
            for a, v in writes:
                await write(ctx, dut, space, a, v)
        for x in images:
            for a, v in compiled.image_writes(x, 0):
                await write(ctx, dut, prog.Space.IMAGE, a, v)
            await run(ctx, dut, compiled.image_base(0))
            got.append([await read(ctx, dut, prog.ReadSpace.LOGITS, k)
                        for k in range(compiled.output_count)])

    def check():
        for g, e in zip(got, expected):
            y = np.array(g, dtype=np.int64).astype(np.uint32).astype(np.int32)
            np.testing.assert_array_equal(y, e)

    run_simulation(dut, [bench], name=request.node.name, check=check, max_cycles=400_000)
