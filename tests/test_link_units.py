"""Unit checks of the link's hand-built arithmetic (its CRC engine, constant compares), of
the frame decoder's length guard and of the response queue; the protocol round trips
are in ``test_link.py``."""

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from fpgacnn.hw import protocol as proto
from fpgacnn.hw.link_checker import above
from fpgacnn.hw.link_crc import CrcEngine, crc_next, crc_step
from fpgacnn.hw.link_decoder import FrameDecoder
from fpgacnn.hw.link_queue import ResponseQueue


@pytest.mark.parametrize("seed", range(3))
def test_crc_step_matches_protocol_crc(seed):
    rng = random.Random(seed)
    raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    state = 0
    for byte in raw:
        state = crc_step(state, byte)
    assert state == proto.crc16(raw)
    # A frame followed by its CRC (low byte first) leaves the residue 0 the link checks.
    for byte in proto.crc16(raw).to_bytes(2, "little"):
        state = crc_step(state, byte)
    assert state == 0


def test_gateware_crc_and_compare_exhaustive():
    m = Module()
    state, byte, value = Signal(16), Signal(8), Signal(6)
    nxt = Signal(16)
    limits = [0, 1, 5, 31, 32, 62, 63, 64, 100]
    flags = [Signal(name=f"above_{c}") for c in limits]
    m.d.comb += [nxt.eq(crc_next(state, byte)),
                 *(a.eq(above(value, c)) for a, c in zip(flags, limits))]
    rng = random.Random(1)

    async def bench(ctx):
        for v in range(64):
            ctx.set(value, v)
            assert [ctx.get(a) for a in flags] == [int(v > c) for c in limits], v
        for _ in range(200):
            s, b = rng.randrange(1 << 16), rng.randrange(256)
            ctx.set(state, s)
            ctx.set(byte, b)
            assert ctx.get(nxt) == crc_step(s, b), (s, b)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("length", [proto.MAX_PAYLOAD, proto.MAX_PAYLOAD + 1, 0x300,
                                    0xFFFF])
def test_decoder_ends_oversized_frames_at_once(length):
    """A header announcing more than MAX_PAYLOAD ends the frame right after the length
    (the payload is left in the FIFO, skipped as garbage); MAX_PAYLOAD itself is taken."""
    dut = FrameDecoder()
    header = bytes([proto.REQUEST_SYNC, proto.Opcode.WRITE.value]) + length.to_bytes(2, "little")
    got = {}

    async def bench(ctx):
        taken = 0
        for byte in header + bytes(8):
            ctx.set(dut.rx.valid, 1)
            ctx.set(dut.rx.payload, byte)
            while not ctx.get(dut.rx.ready):
                await ctx.tick()
            await ctx.tick()
            taken += 1
            if not ctx.get(dut.idle):
                break
        ctx.set(dut.rx.valid, 0)
        for _ in range(4):
            got["end"] = got.get("end", 0) | ctx.get(dut.end)
            await ctx.tick()
        got["taken"], got["idle"] = taken, ctx.get(dut.idle)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    if length > proto.MAX_PAYLOAD:
        assert got == {"taken": 4, "end": 1, "idle": 0}
    else:
        assert got["taken"] == 12 and got["idle"] == 1 and not got["end"]


@pytest.mark.parametrize("seed", range(2))
def test_crc_engine_feeds_take_turns(seed):
    """Bytes from any feed, with idle cycles between them, reach ``value`` two cycles
    later; a load shows the next cycle; a frame followed by its CRC leaves ``zero``."""
    rng = random.Random(seed)
    dut = CrcEngine(feeds=3)
    frames = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))
              for _ in range(4)]

    async def bench(ctx):
        for raw in frames:
            init = rng.randrange(1 << 16)
            loader = dut.feed[rng.randrange(3)]
            ctx.set(loader.load, 1)
            ctx.set(loader.init, init)
            await ctx.tick()
            ctx.set(loader.load, 0)
            assert ctx.get(dut.value) == init
            want = init
            for byte in raw:
                feed = dut.feed[rng.randrange(3)]
                ctx.set(feed.valid, 1)
                ctx.set(feed.data, byte)
                await ctx.tick()
                ctx.set(feed.valid, 0)
                want = crc_step(want, byte)
                for _ in range(rng.randrange(2)):
                    await ctx.tick()
            await ctx.tick().repeat(2)
            assert ctx.get(dut.value) == want
            # The value's own bytes (low first) bring the residue to zero.
            for byte in want.to_bytes(2, "little"):
                ctx.set(dut.feed[0].valid, 1)
                ctx.set(dut.feed[0].data, byte)
                await ctx.tick()
            ctx.set(dut.feed[0].valid, 0)
            await ctx.tick().repeat(2)
            assert ctx.get(dut.zero) == 1 and ctx.get(dut.value) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("seed", range(3))
def test_response_queue_keeps_order_and_pads_only_between_responses(seed):
    """Responses of random lengths (some longer than the queue) written and read at
    random rates come out whole and in order; fill bytes come only after a response's
    last byte, at most ``pad_bytes`` of them before the next response, exactly that many
    when nothing follows."""
    rng, ready_rng = random.Random(seed), random.Random(seed + 100)
    pad = 5
    dut = ResponseQueue(pad, depth=8)
    # Payload bytes are never the fill byte (0), so the two can be told apart.
    responses = [bytes(rng.randrange(1, 256) for _ in range(rng.choice([1, 3, 8, 20])))
                 for _ in range(8)]
    gaps = [rng.choice([0, 2, 150]) for _ in responses]
    out, state = bytearray(), {"written": False}

    async def writer(ctx):
        for raw, gap in zip(responses, gaps):
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            for k, byte in enumerate(raw):
                while rng.random() < 0.3:               # the encoder's own pauses
                    await ctx.tick()
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, byte)
                while True:
                    ready = ctx.get(dut.i.ready)
                    ctx.set(dut.done, ready and k == len(raw) - 1)
                    await ctx.tick()
                    if ready:
                        break
                ctx.set(dut.i.valid, 0)
                ctx.set(dut.done, 0)
            await ctx.tick().repeat(gap + 1)
        state["written"] = True

    async def reader(ctx):
        quiet = 0
        while not state["written"] or quiet < 200:
            ctx.set(dut.o.ready, ready_rng.random() < 0.3)
            _, _, valid, ready, byte = await ctx.tick().sample(dut.o.valid, dut.o.ready,
                                                               dut.o.payload)
            quiet += 1
            if valid and ready:
                out.append(byte)
                quiet = 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(writer)
    sim.add_testbench(reader, background=True)
    sim.run_until(1e-8 * 100_000)
    pos = 0
    for i, raw in enumerate(responses):
        assert bytes(out[pos:pos + len(raw)]) == raw, (i, out.hex())
        pos += len(raw)
        fills = 0
        while pos < len(out) and out[pos] == proto.FILL_BYTE:
            fills, pos = fills + 1, pos + 1
        assert fills <= pad if i < len(responses) - 1 else fills == pad, (i, out.hex())
    assert pos == len(out)
