# amaranth: UnusedElaboratable=no
"""The layer pipeline (hw/pipeline.py, sw/pipeline.py): small networks through stages of
their own in Amaranth's simulator, images streamed back to back, every output map equal
to the golden model's; the compiler's address moves and its one-line errors."""

import random

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from fpgacnn.hw import program as prog
from fpgacnn.hw.config import get_config, get_pipeline
from fpgacnn.hw.config import PipelineShape, StageShape
from fpgacnn.hw.pipeline import LayerPipeline
from fpgacnn.sim.amaranth_sim import run_simulation
from fpgacnn.sim.pipeline_stream import build_pipeline, steady_cycles, stream_images
from fpgacnn.sw import network as nets
from fpgacnn.sw.compiler import CompileError
from fpgacnn.sw.network import FC, Conv, MaxPool, Network, ReLU
from fpgacnn.sw.pipeline import compile_pipeline, group_networks, pipeline_shape

# Stage configs with small memories (the datapath sees only their port widths).
BASE = get_config("ulx3s-85f").with_(pixel_pairs=False, write_banks=1, fc_columns=False,
                                     result_lanes=1, weight_words=1024, qparam_entries=64,
                                     max_layers=4, pool_width=16, pool_blocks=2,
                                     max_reduction=512)

SMALL_NET = Network("small", (2, 10, 10), [
    Conv(6, 3, pad=1), ReLU(), MaxPool(2, 2),       # 6x10x10 -> 6x5x5
    Conv(12, 3), ReLU(),                            # 12x3x3
    FC(20), ReLU(), FC(7),
])

CASES = {
    # name: (network, groups, stage configs)
    "three_stages": (SMALL_NET, (1, 1, 2), [
        BASE.with_(name="s0", rows=8, cols=5, result_lanes=2),
        BASE.with_(name="s1", rows=16, cols=3),
        BASE.with_(name="s2", rows=8, cols=2, fc_columns=True)]),
    "one_stage_all_layers": (SMALL_NET, (4,), [BASE.with_(name="s0", rows=8, cols=4)]),
    "two_stages_inner_maps": (SMALL_NET, (2, 2), [
        BASE.with_(name="s0", rows=8, cols=3), BASE.with_(name="s1", rows=8, cols=1)]),
}


def edge_images(shape, count, seed):
    """Random int8 images, the first ones of -128, 127 and 0 patches and all-zero."""
    rng = np.random.default_rng(seed)
    out = [rng.integers(-128, 128, shape, dtype=np.int8) for _ in range(count)]
    out[0][:, :shape[1] // 2] = -128
    out[0][:, shape[1] // 2:, :shape[2] // 2] = 127
    if count > 1:
        out[1][:] = 0
    return out


async def put_chunk(ctx, dut, space, addr, data):
    """Offer one host chunk on ``dut.wr`` until it is taken."""
    ctx.set(dut.wr.p, {"space": space, "addr": addr, "data": data})
    ctx.set(dut.wr.valid, 1)
    await ctx.tick().until(dut.wr.ready)
    ctx.set(dut.wr.valid, 0)


def run_pipeline(request, program, params, images, *, stall=0.3, seed=0,
                 max_cycles=200_000):
    """Load ``program`` into a LayerPipeline, stream ``images`` (slots alternating, each
    written while earlier ones compute), then offer a model chunk while they are in
    flight; collect the output maps with random back-pressure and check them; returns
    a dict: the output ``bytes``, each image's last byte's cycle (``ends``), the stages'
    ``cycles``."""
    dut = LayerPipeline(program.shape, mac="generic")
    n_out = program.output_count
    out = {"bytes": [], "ends": [], "cycles": None}

    async def host(ctx):
        async def put(space, addr, data):
            await put_chunk(ctx, dut, space, addr, data)

        for space, writes in program.model_writes().items():
            for addr, data in writes:
                await put(space, addr, data)
        for i, image in enumerate(images):
            slot = i % 2
            ctx.set(dut.start.p, slot)
            # The slot is free once start would be taken.
            while not ctx.get(dut.start.ready):
                await ctx.tick()
            for addr, data in program.image_writes(image, slot):
                await put(prog.Space.IMAGE, addr, data)
            ctx.set(dut.start.valid, 1)
            await ctx.tick().until(dut.start.ready)
            ctx.set(dut.start.valid, 0)
        # A model chunk (the same program chunk again) offered while images are in
        # flight waits for them, and must not hold them back.
        space, writes = prog.Space.PROGRAM, program.model_writes()[prog.Space.PROGRAM]
        await put(space, *writes[0])

    async def sink(ctx):
        rng = random.Random(seed)
        while len(out["ends"]) < len(images):
            ctx.set(dut.o_stream.ready, rng.random() >= stall)
            await ctx.tick()
        ctx.set(dut.o_stream.ready, 0)
        out["cycles"] = [ctx.get(c) for c in dut.cycles]

    async def monitor(ctx):
        cycle = 0
        async for clk_edge, rst, valid, ready, payload in ctx.tick().sample(
                dut.o_stream.valid, dut.o_stream.ready, dut.o_stream.p):
            cycle += 1
            if valid and ready:
                out["bytes"].append(payload.data)
                if payload.last:
                    out["ends"].append(cycle)
                    if len(out["ends"]) == len(images):
                        return

    expected = [nets.run_network(program.network, params, x) for x in images]

    def check():
        got = np.array(out["bytes"], np.uint8).view(np.int8)
        assert got.size == n_out * len(images), f"{got.size} output bytes"
        for i, want in enumerate(expected):
            assert_array_equal(got[i * n_out:(i + 1) * n_out], want.reshape(-1),
                               err_msg=f"image {i}")

    run_simulation(dut, [host, sink, monitor], name=request.node.name, check=check,
                   max_cycles=max_cycles)
    return out


def compiled(case, seed):
    net, groups, configs = CASES[case]
    params = nets.random_params(net, seed)
    shape = pipeline_shape(net, groups, configs)
    return compile_pipeline(net, params, shape, groups), params


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_matches_golden(request, case):
    program, params = compiled(case, seed=len(case))
    images = edge_images(program.network.input_shape, 4, seed=len(case))
    out = run_pipeline(request, program, params, images, seed=len(case))
    print(f"\n{case}: stage cycles {out['cycles']}, images done at {out['ends']}")


def test_lenet5_pipeline_ulx3s(request):
    """LeNet-5 (the shipped model) on the ULX3S-85F's pipeline (C1 on 8x8 in logic, C3
    on 16x6, the FC layers on 8x4) under Verilator: held-out digits streamed back to back,
    outputs bit-exact; an image every ~2,660 cycles: 192 multipliers at >= 80 %."""
    from fpgacnn.sw import mnist, modelfile
    spec = get_pipeline("ulx3s-85f-lenet5")
    if modelfile.default_model_path().is_file():
        net, params, _ = modelfile.load_default()
    else:
        net = nets.lenet5()
        params = nets.random_params(net, 2026)
    shape = spec.shape
    program = compile_pipeline(net, params, shape, spec.groups)
    digits, _ = mnist.heldout()
    images = [mnist.image_to_int8(d).reshape(1, 28, 28) for d in digits[:6]]
    images.append(np.full((1, 28, 28), -128, np.int8))
    images.append(np.zeros((1, 28, 28), np.int8))
    result = stream_images(build_pipeline(shape, "pipeline_ulx3s_85f_lenet5"),
                           request.node.name, program, params, images)
    ends, cycles = result["ends"], result["stage_cycles"]
    steady = steady_cycles(ends)
    clock = get_config(spec.board).clock_hz
    util = net.macs / (shape.multipliers * steady)
    print(f"\nLeNet-5 pipeline: stage cycles {cycles} (array beats "
          f"{program.stage_ideal_cycles()}); images out at {ends}; {steady:.0f} cycles per "
          f"image = {clock / steady:,.0f} images/s at {clock / 1e6:g} MHz; "
          f"{shape.multipliers} multipliers, {util:.1%} MAC utilisation")
    assert steady <= max(cycles) + 20, "the pipeline should take an image per slowest stage"


def test_compile_errors_are_one_line():
    net, groups, configs = CASES["three_stages"]
    params = nets.random_params(net, 1)
    shape = pipeline_shape(net, groups, configs)
    with pytest.raises(CompileError, match=r"groups \(1, 1\) must be positive and add up"):
        group_networks(net, (1, 1))
    with pytest.raises(CompileError, match="does not match the pipeline's 3 stages"):
        compile_pipeline(net, params, shape, (2, 2))
    with pytest.raises(CompileError, match="groups must be a sequence"):
        group_networks(net, 4)
    with pytest.raises(ValueError, match="has 4 stages, got 3 parameter sets"):
        compile_pipeline(net, params[:3], shape, groups)
    # A pipeline built for another network's maps.
    other = Network("other", (2, 12, 12), net.layers)
    with pytest.raises(CompileError, match="the pipeline was built for"):
        compile_pipeline(other, nets.random_params(other, 1), shape, groups)
    # A group too large for its stage's weight memory names the stage.
    tight = pipeline_shape(net, groups, [configs[0], configs[1],
                                         configs[2].with_(weight_words=64)])
    with pytest.raises(CompileError, match=r"pipeline stage 2 \(s2\): .*weight memory") as err:
        compile_pipeline(net, params, tight, groups)
    assert "\n" not in str(err.value)


def test_stage_shape_checks():
    with pytest.raises(ValueError, match="one write bank"):
        StageShape(BASE.with_(write_banks=2), 64)
    with pytest.raises(ValueError, match="slot_bytes must be a positive multiple of 8"):
        StageShape(BASE, 12)
    st = StageShape(BASE, 400, 208)
    assert (st.work_base, st.act_bytes) == (1024, 2048)
    assert StageShape(BASE, 784).act_bytes == 2048
    with pytest.raises(ValueError, match="output_bytes must be a positive integer"):
        PipelineShape([st], 0)
    # Slots and work memory beyond the descriptors' 16-bit activation addresses.
    with pytest.raises(ValueError, match="more than the descriptors' 65536"):
        StageShape(BASE, 20000, 8)


def test_pipeline_core_host_interface(request):
    """PipelineCore through the core's host interface: the model loaded, images run one at
    a time (the next loaded during a run, at either slot's addresses), output bytes
    read back as LOGITS (bit-exact), one counter per stage; an abort in mid-run leaves
    the model, and the next image runs."""
    from fpgacnn.hw.pipeline import PipelineCore, host_config
    from fpgacnn.hw.program import ReadSpace
    program, params = compiled("three_stages", seed=5)
    host = host_config("small-pipe", program.shape, BASE)
    dut = PipelineCore(program.shape, host, mac="generic")
    images = edge_images(program.network.input_shape, 4, seed=5)
    want = [nets.run_network(program.network, params, x).reshape(-1) for x in images]
    n_out, stages = program.output_count, len(program.programs)
    got, counters = [], []

    async def bench(ctx):
        async def put(space, addr, data):
            await put_chunk(ctx, dut, space, addr, data)

        async def read(space, addr):
            ctx.set(dut.rd.p, {"space": space, "addr": addr})
            ctx.set(dut.rd.valid, 1)
            await ctx.tick().until(dut.rd.ready)
            ctx.set(dut.rd.valid, 0)
            ctx.set(dut.rd_data.ready, 1)
            value, = await ctx.tick().sample(dut.rd_data.p.data).until(
                dut.rd_data.valid)
            ctx.set(dut.rd_data.ready, 0)
            return value

        async def start():
            ctx.set(dut.start.p.image_base, 0)
            ctx.set(dut.start.valid, 1)
            await ctx.tick().until(dut.start.ready)
            ctx.set(dut.start.valid, 0)

        for space, writes in program.model_writes().items():
            for addr, data in writes:
                await put(space, addr, data)
        # Image 0 at slot 1's addresses: the core puts it in the slot it runs next.
        for addr, data in program.image_writes(images[0], 1):
            await put(prog.Space.IMAGE, addr, data)
        for i in range(len(images)):
            await start()
            assert ctx.get(dut.busy)
            if i + 1 < len(images):
                for addr, data in program.image_writes(images[i + 1], (i + 1) % 2):
                    await put(prog.Space.IMAGE, addr, data)
            while ctx.get(dut.busy):
                await ctx.tick()
            out = [await read(ReadSpace.LOGITS, k) for k in range(n_out)]
            got.append([v - (1 << 32) if v >> 31 else v for v in out])
            counters.append([await read(ReadSpace.COUNTERS, k) for k in range(1 + stages)])
        # Abort in mid-run; the model stays, the next image runs.
        for addr, data in program.image_writes(images[2], 0):
            await put(prog.Space.IMAGE, addr, data)
        await start()
        await ctx.tick().repeat(100)
        ctx.set(dut.abort, 1)
        await ctx.tick()
        ctx.set(dut.abort, 0)
        await ctx.tick().repeat(3)
        assert not ctx.get(dut.busy), "busy after abort"
        for addr, data in program.image_writes(images[3], 1):
            await put(prog.Space.IMAGE, addr, data)
        await start()
        while ctx.get(dut.busy):
            await ctx.tick()
        out = [await read(ReadSpace.LOGITS, k) for k in range(n_out)]
        got.append([v - (1 << 32) if v >> 31 else v for v in out])

    def check():
        for i, (g, w) in enumerate(zip(got, want + [want[3]])):
            assert_array_equal(np.array(g), w, err_msg=f"run {i}")
        for c in counters:
            assert c[0] >= sum(c[1:]) and all(c[1:]), c

    run_simulation(dut, [bench], name=request.node.name, check=check, max_cycles=300_000)


def test_driver_runs_lenet5_on_the_simulated_pipeline_board():
    """The ULX3S-85F's pipeline design (``fpgacnn build --design pipeline``) on the
    simulated board: the driver identifies it, loads LeNet-5 through the link and
    classifies held-out digits bit-exact; a network of other shapes is refused in one
    line, before anything is sent."""
    from fpgacnn.hw.boards import pipeline_board_top
    from fpgacnn.sim.simboard import SimBoard
    from fpgacnn.sw import mnist, modelfile
    from fpgacnn.sw.driver import Accelerator, ModelDoesNotFit
    if modelfile.default_model_path().is_file():
        net, params, _ = modelfile.load_default()
    else:
        net = nets.lenet5()
        params = nets.random_params(net, 2026)
    top = pipeline_board_top(get_config("ulx3s-85f"), debug=True)
    x = mnist.heldout()[0][:6]
    golden = np.stack([nets.run_network(net, params, img[None])
                       for img in mnist.image_to_int8(x)]).reshape(len(x), -1)
    with SimBoard(top.core.config, top=top, progress=None) as board:
        with Accelerator.open(board.url, timeout=60) as acc:
            assert acc.identify().config.name == "ulx3s-85f-lenet5"
            other = nets.Network("wide", (1, 28, 28), [Conv(8, 5, pad=2), ReLU(),
                                                       MaxPool(2, 2), FC(10)])
            with pytest.raises(ModelDoesNotFit, match="groups") as err:
                acc.load(other, nets.random_params(other, 1), progress=False)
            assert "\n" not in str(err.value)
            acc.load(net, params, progress=False)
            classes, logits = acc.infer(x, progress=False, all_counters=True)
    assert_array_equal(logits, golden)
    assert_array_equal(classes, golden.argmax(axis=1))
    counters = acc.counters
    # The total, then each stage's cycles at its first layer (C1, C3, F5).
    assert counters.shape == (len(x), 1 + len(net.stages()))
    assert (counters[:, 1:4] > 2000).all() and (counters[:, 4:] == 0).all()


def test_cli_bench_pipeline(tmp_path, capsys):
    """``fpgacnn bench --design pipeline`` (no build): bit-exact through the link and
    streamed, the pipeline's figures under the bench's keys; a board without a pipeline
    and another network are refused in one line."""
    import json
    from fpgacnn.cli import main
    out = tmp_path / "bench.json"
    assert main(["bench", "--board", "ulx3s-85f", "--design", "pipeline", "--images", "2",
                 "--no-build", "--json", str(out)]) == 0
    f = json.loads(out.read_text())
    assert f["design"] == "pipeline" and f["multipliers"] == 192
    assert f["pipeline_groups"] == [1, 1, 3] and len(f["pipeline_stage_cycles"]) == 3
    assert f["cycles_per_image"] <= max(f["pipeline_stage_cycles"]) + 20
    assert f["mac_utilisation"] == pytest.approx(
        nets.lenet5().macs / (192 * f["cycles_per_image"]))
    assert f["cycles_one_at_a_time"] > sum(f["pipeline_stage_cycles"])
    table = capsys.readouterr().out
    assert "cycles / image (pipeline, streaming)" in table and "stage 2 (layers 2-4" in table
    assert main(["bench", "--board", "icebreaker", "--design", "pipeline", "--no-build"]) == 2
    assert capsys.readouterr().err.startswith("error: board config icebreaker has no layer "
                                              "pipeline")
    assert main(["bench", "--board", "ulx3s-85f", "--design", "pipeline", "--network",
                 "cifar-small", "--no-build"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "built for lenet5's layer shapes" in err


def test_shipped_pipeline_shape_is_lenet5s():
    """The slots, work memory and output bytes the ULX3S-85F's pipeline is built with are
    those its network's maps need."""
    spec = get_pipeline("ulx3s-85f-lenet5")
    net = getattr(nets, spec.network)()
    assert pipeline_shape(net, spec.groups, [s.config for s in spec.shape.stages],
                          [s.mac for s in spec.shape.stages]) == spec.shape
    assert spec.shape.multipliers == 192
