"""cocotb bench: a network streamed through :class:`fpgacnn.hw.pipeline.LayerPipeline`.

The pytest side (``tests/test_pipeline.py``) compiles the network for the pipeline and
writes a job file (JSON): the model's chunk writes, the images (their IMAGE chunks per
slot) and the golden output maps. This bench

1. loads the model through ``wr``;
2. streams the images as a host keeping the pipeline full would: image ``i`` goes into
   slot ``i mod 2`` as soon as that slot is free (``start.ready``), then ``start``;
   meanwhile every output byte is taken from ``o_stream`` (with random back-pressure if
   ``stall`` > 0);
3. checks each image's output map against the golden one.

The cycle of each image's last output byte and the stages' cycle counters go to
``params["out"]`` (JSON): their spacing is the pipeline's time per image.
"""

import json
import random

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from fpgacnn.hw.program import Space, WriteCommand
from fpgacnn.sim.benches._tb import start_clock
from fpgacnn.sim.cocotb_runner import bench_params, pack_fields


@cocotb.test()
async def pipeline_matches_golden(dut):
    p = bench_params()
    with open(p["job"]) as f:
        job = json.load(f)
    rng = random.Random(p.get("seed", 0))
    stall = p.get("stall", 0.0)
    start_clock(dut)
    dut.rst.value = 1
    for s in (dut.wr__valid, dut.start__valid, dut.o_stream__ready):
        s.value = 0
    for _ in range(2):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    clock = {"cycle": 0}

    async def count():
        while True:
            await RisingEdge(dut.clk)
            clock["cycle"] += 1

    cocotb.start_soon(count())

    async def until_ready(ready):
        """Wait for the clock edge at which ``ready`` is high (judged before it)."""
        while True:
            await ReadOnly()
            high = ready.value
            await FallingEdge(dut.clk)
            if high:
                return

    async def put(space, addr, data):
        dut.wr__payload.value = pack_fields(WriteCommand, {"space": space, "addr": addr,
                                                           "data": data})
        dut.wr__valid.value = 1
        await until_ready(dut.wr__ready)
        dut.wr__valid.value = 0

    for space, addr, data in job["writes"]:
        await put(space, addr, data)
    loaded = clock["cycle"]

    n_out, images = job["n_out"], job["images"]
    got, ends = [], []

    async def sink():
        current = []
        while len(ends) < len(images):
            dut.o_stream__ready.value = int(rng.random() >= stall)
            await ReadOnly()
            if dut.o_stream__valid.value and dut.o_stream__ready.value:
                payload = dut.o_stream__payload.value.to_unsigned()
                current.append(payload & 0xFF)
                if payload >> 8:
                    got.append(current)
                    ends.append(clock["cycle"] - loaded)
                    current = []
            await FallingEdge(dut.clk)

    done = cocotb.start_soon(sink())
    starts = []
    for i, chunks in enumerate(images):
        slot = i % 2
        dut.start__payload.value = slot
        await until_ready(dut.start__ready)  # the slot is free once a start would be taken
        for addr, data in chunks[slot]:
            await put(Space.IMAGE.value, addr, data)
        dut.start__valid.value = 1
        await until_ready(dut.start__ready)
        dut.start__valid.value = 0
        starts.append(clock["cycle"] - loaded)
    await done

    for i, (out, want) in enumerate(zip(got, job["expected"])):
        assert len(out) == n_out, f"image {i}: {len(out)} output bytes, not {n_out}"
        out = [v - 256 if v > 127 else v for v in out]
        assert out == want, f"image {i}: output {out}, golden {want}"
    cycles = [int(getattr(dut, f"cycles__{s}").value) for s in range(job["stages"])]
    with open(p["out"], "w") as f:
        json.dump({"ends": ends, "starts": starts, "stage_cycles": cycles}, f)
