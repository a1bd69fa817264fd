# amaranth: UnusedElaboratable=no
"""The copy engine against :func:`copy_reference`, on a model of the activation space.

The model is 65,536 bytes behind a 1-cycle read port and a write port, as the core's
block RAM and window present them to the copier; addresses below 4,096 stand for the
block RAM, above for the window (the core-level tests in ``test_core_window.py`` run the
same copies through the real memories).
"""

import random

import pytest

from fpgacnn.hw.copier import Copier, copy_reference
from fpgacnn.sim.amaranth_sim import run_simulation

BRAM = 4096


def copy(segments, length, src_base, dst_base, src_stride=0, dst_stride=0, **flags):
    return {"segments": segments, "length": length, "src_base": src_base,
            "dst_base": dst_base, "src_stride": src_stride, "dst_stride": dst_stride,
            "in_from_image": 0, "to_logits": 0, "copy": 1, **flags}


CASES = {
    # window -> block RAM: three channels' rows of an image slot (the compiler's band in).
    "window_to_bram": [copy(3, 40, 8192 + 24, 0, src_stride=1024, dst_stride=40)],
    # block RAM -> window: a band's output rows into a map twice as tall.
    "bram_to_window": [copy(4, 32, 512, 20000, src_stride=32, dst_stride=64)],
    "bram_to_bram": [copy(2, 7, 100, 2000, src_stride=9, dst_stride=7)],
    "one_segment": [copy(1, 300, 30000, 1000)],
    "one_byte_segments": [copy(17, 1, 4000, 9000, src_stride=3, dst_stride=5)],
    "zero_length": [copy(5, 0, 8192, 0, src_stride=9, dst_stride=9)],
    "zero_segments": [copy(0, 9, 8192, 0)],
    # The source base from START (image_base), and addresses wrapping at 65536.
    "in_from_image": [copy(2, 12, 1, 3000, src_stride=100, dst_stride=12, in_from_image=1)],
    "wrap": [copy(3, 10, 65530, 60, src_stride=65535, dst_stride=65533)],
    # Back to back: in, then out again (the second reads what the first wrote).
    "in_then_out": [copy(2, 16, 50000, 64, src_stride=256, dst_stride=16),
                    copy(2, 16, 64, 40000, src_stride=16, dst_stride=512)],
}


def run_copier(copies, *, seed, name, image_base=0):
    """Run ``copies`` one after the other; return the memory and each copy's cycles
    (start to done) and the expected memory."""
    dut = Copier()
    rng = random.Random(seed)
    mem = [rng.randrange(256) for _ in range(1 << 16)]
    for a in (0, 1, 8192, 8193):          # edge values among the source bytes
        mem[a] = (0x80, 0x7F, 0, 0xFF)[a % 4]
    expected = list(mem)
    for c in copies:
        copy_reference(expected, c, image_base)
    cycles = []

    async def memory(ctx):
        # 1-cycle reads (old data when the same address is written), writes on the edge.
        async for _, _, rd_en, rd_addr, wr_en, wr_addr, wr_data in ctx.tick().sample(
                dut.rd.en, dut.rd.addr, dut.wr.en, dut.wr.addr, dut.wr.data):
            if rd_en:
                ctx.set(dut.rd.data, mem[rd_addr])
            if wr_en:
                mem[wr_addr] = wr_data

    async def bench(ctx):
        ctx.set(dut.image_base, image_base)
        for c in copies:
            ctx.set(dut.desc, c)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            n = 1
            while not ctx.get(dut.done):
                assert ctx.get(dut.busy) or n == 1, "busy fell before done"
                await ctx.tick()
                n += 1
            cycles.append(n)
            await ctx.tick()
            assert not ctx.get(dut.done) and not ctx.get(dut.busy), "done is one pulse"
            for _ in range(rng.randrange(3)):
                await ctx.tick()

    run_simulation(dut, [bench], processes=[memory], name=name, max_cycles=20_000)
    return mem, expected, cycles


@pytest.mark.parametrize("case", CASES)
def test_copier_matches_reference(request, case):
    copies = CASES[case]
    mem, expected, cycles = run_copier(copies, seed=len(case), name=request.node.name,
                                       image_base=8192 + 77)
    diff = [a for a in range(1 << 16) if mem[a] != expected[a]]
    assert not diff, f"{len(diff)} bytes differ, first at {diff[:5]} (seed {len(case)})"
    # One byte per cycle plus 2 (the first read, the last write); 1 for nothing to copy.
    sizes = [c["segments"] * c["length"] for c in copies]
    assert cycles == [n + 2 if n else 1 for n in sizes]


def test_copy_reference_is_the_contract_loop():
    act = list(range(256)) * 256
    copy_reference(act, copy(2, 3, 10, 5000, src_stride=100, dst_stride=4))
    assert act[5000:5003] == [10, 11, 12] and act[5004:5007] == [110, 111, 112]
    assert act[5003] == 5003 % 256          # between the segments: untouched
    copy_reference(act, copy(1, 2, 9999, 0, in_from_image=1), image_base=7)
    assert act[:2] == [7, 8]
