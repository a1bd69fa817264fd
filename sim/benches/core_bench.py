"""cocotb bench: a whole network on :class:`fpgacnn.hw.core.Core` through its host interface.

The pytest side (``tests/test_core_verilator.py``) compiles the network and writes a job
file (JSON): the model's chunk writes per space, the input images, the two image-slot
bases and the golden logits. This bench

1. loads the model through ``wr`` (random idle cycles between beats);
2. runs every image back to back, as the link pipelines them: image ``i+1`` is written
   into the other slot *while* image ``i`` computes (so host writes and the datapath's
   activation writes contend), then ``RESULT`` reads logits and counters; a model write
   offered during the first run must be held off;
3. resets the core and runs a few images again one at a time (memories keep the model):
   same logits as in the pipelined run;
4. checks the logits against the golden ones; outputs are activation bytes, so a read
   at an image slot returns that image's first byte.

Everything measured goes to ``params["out"]`` (JSON) for the pytest side to report.
"""

import json
import random

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from fpgacnn.hw.core import ReadCommand, StartCommand, WriteCommand
from fpgacnn.hw.program import ReadSpace, Space
from fpgacnn.sim.benches._tb import start_clock
from fpgacnn.sim.cocotb_runner import bench_params, pack_fields


class CoreTB:
    """Clock, reset and drivers for the four host-interface streams of Core."""

    def __init__(self, dut, seed):
        self.dut = dut
        self.rng = random.Random(seed)
        self.cycle = 0

    async def start_clock(self):
        start_clock(self.dut)
        await self.reset()

    async def reset(self):
        d = self.dut
        d.rst.value = 1
        for s in (d.wr__valid, d.start__valid, d.rd__valid, d.rd_data__ready):
            s.value = 0
        for _ in range(2):
            await RisingEdge(d.clk)
        await FallingEdge(d.clk)
        d.rst.value = 0

    async def _put(self, name, payload, idle=0.0):
        """Offer one beat on stream ``name`` (after random idle cycles) until taken."""
        d = self.dut
        while self.rng.random() < idle:
            await FallingEdge(d.clk)
        valid, ready = getattr(d, f"{name}__valid"), getattr(d, f"{name}__ready")
        getattr(d, f"{name}__payload").value = payload
        valid.value = 1
        while True:
            await ReadOnly()
            taken = ready.value
            await FallingEdge(d.clk)
            if taken:
                break
        valid.value = 0

    async def write(self, space, addr, data, idle=0.0):
        await self._put("wr", pack_fields(WriteCommand, {"space": space.value, "addr": addr,
                                                         "data": data}), idle)

    async def start(self, image_base):
        await self._put("start", pack_fields(StartCommand, {"image_base": image_base}))

    async def read(self, space, addr):
        """One ``rd`` request and its ``rd_data`` answer (with random back-pressure)."""
        d = self.dut
        await self._put("rd", pack_fields(ReadCommand, {"space": space.value, "addr": addr}))
        while True:
            d.rd_data__ready.value = int(self.rng.random() < 0.6)
            await ReadOnly()
            done = d.rd_data__valid.value and d.rd_data__ready.value
            value = d.rd_data__payload.value.to_unsigned() if done else None
            await FallingEdge(d.clk)
            if done:
                d.rd_data__ready.value = 0
                return value

    async def check_model_writes_held(self, space, addr, data, cycles=8):
        """While busy, a model (non-IMAGE) write must be held off, not taken."""
        d = self.dut
        d.wr__payload.value = pack_fields(WriteCommand, {"space": space, "addr": addr,
                                                         "data": data})
        d.wr__valid.value = 1
        for _ in range(cycles):
            await ReadOnly()
            assert d.busy.value and not d.wr__ready.value, \
                f"a {Space(space).name} write was accepted during a run"
            await FallingEdge(d.clk)
        d.wr__valid.value = 0

    async def wait_idle(self):
        if self.dut.busy.value:
            await FallingEdge(self.dut.busy)
        await FallingEdge(self.dut.clk)

    async def results(self, n_out, n_layers):
        logits = []
        for k in range(n_out):
            v = await self.read(ReadSpace.LOGITS, k)
            logits.append(v - (1 << 32) if v >> 31 else v)
        counters = [await self.read(ReadSpace.COUNTERS, i) for i in range(1 + n_layers)]
        return logits, counters


def image_chunks(raw_hex, base):
    raw = bytes.fromhex(raw_hex)
    return [(base // 8 + i, int.from_bytes(raw[8 * i:8 * i + 8], "little"))
            for i in range(len(raw) // 8)]


@cocotb.test()
async def network_matches_golden(dut):
    p = bench_params()
    with open(p["job"]) as f:
        job = json.load(f)
    tb = CoreTB(dut, p.get("seed", 0))
    await tb.start_clock()
    slots, n_out, n_layers = job["slots"], job["n_out"], job["n_layers"]
    images, expected = job["images"], job["expected"]

    # 1. The model, with random gaps between chunks.
    for space, addr, data in job["writes"]:
        await tb.write(Space(space), addr, data, idle=0.1)

    # 2. Pipelined: LOAD(b) → RUN(b) → LOAD(1-b) during the run → RESULT → RUN(1-b) ...
    for addr, data in image_chunks(images[0], slots[0]):
        await tb.write(Space.IMAGE, addr, data)
    got, counters = [], []
    for i in range(len(images)):
        await tb.start(slots[i % 2])
        assert dut.busy.value == 1, "busy must rise with the accepted start"
        if i == 0:
            await tb.check_model_writes_held(*job["writes"][0])
        if not p.get("overlap", True):
            await tb.wait_idle()
        if i + 1 < len(images):
            for addr, data in image_chunks(images[i + 1], slots[(i + 1) % 2]):
                await tb.write(Space.IMAGE, addr, data)
            assert dut.busy.value == 1 or not p.get("overlap", True), (
                "the next image should load during the run; use a longer network")
        await tb.wait_idle()
        logits, ctr = await tb.results(n_out, n_layers)
        got.append(logits)
        counters.append(ctr)
        assert logits == expected[i], f"image {i}: logits {logits}, golden {expected[i]}"

    # 3. One at a time after a reset: the same answers.
    again = []
    for i in p.get("again", [0]):
        await tb.reset()
        for addr, data in image_chunks(images[i], slots[1]):
            await tb.write(Space.IMAGE, addr, data)
        await tb.start(slots[1])
        await tb.wait_idle()
        logits, ctr = await tb.results(n_out, n_layers)
        again.append(logits)
        assert logits == got[i], f"image {i} alone gives {logits}, back to back {got[i]}"
        assert ctr == counters[i], f"image {i}: counters {ctr} vs {counters[i]}"

    # 4. LOGITS reads are activation bytes: slot 1 still holds the image run last.
    first = bytes.fromhex(images[p.get("again", [0])[-1]])[0]
    assert await tb.read(ReadSpace.LOGITS, slots[1]) == (first - 256 if first > 127 else
                                                       first) & 0xFFFFFFFF

    with open(p["out"], "w") as f:
        json.dump({"logits": got, "counters": counters, "again": again}, f)
