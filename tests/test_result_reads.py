# amaranth: UnusedElaboratable=no
"""ResultReads: the host's output and counter reads, with and without the registered data
stage, against the memories' contents under random command and back-pressure timing."""

import random

import pytest
from amaranth.hdl import Elaboratable, Module, unsigned
from amaranth.lib import wiring

from fpgacnn.hw.config import get_config
from fpgacnn.hw.core import ResultReads, _result_words
from fpgacnn.hw.memories import Ram
from fpgacnn.hw.program import ReadSpace
from fpgacnn.sim.amaranth_sim import run_simulation


class _Reads(Elaboratable):
    """ResultReads with an activation memory and a results memory behind it."""

    def __init__(self, cfg, act, results, registered):
        self.act_mem = Ram(unsigned(8), cfg.act_bytes, init=act, rw_exclusive=True)
        self.res_mem = Ram(unsigned(32), _result_words(cfg), init=results, rw_exclusive=True)
        self.reads = ResultReads(cfg, registered=registered)

    def elaborate(self, platform):
        m = Module()
        m.submodules.act_mem, m.submodules.res_mem = self.act_mem, self.res_mem
        m.submodules.reads = self.reads
        wiring.connect(m, self.reads.act, self.act_mem.rd[0])
        wiring.connect(m, self.reads.results, self.res_mem.rd[0])
        return m


@pytest.mark.parametrize("registered", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_reads_return_every_word_in_order(request, registered, seed):
    """Back-to-back and sparse commands, a consumer that stalls at random: every answer
    arrives once, in order, with the memory's word (outputs sign-extended from
    ``base + addr``), and never before its command."""
    cfg = get_config("ulx3s-85f")
    rng = random.Random(seed)
    act = [rng.choice([0x80, 0x7F, 0x00, 0xFF, rng.randrange(256)])
           for _ in range(cfg.act_bytes)]
    n_words = _result_words(cfg)
    results = [rng.getrandbits(32) for _ in range(n_words)]
    base = rng.randrange(cfg.act_bytes - 64)
    commands = [rng.choice([(ReadSpace.LOGITS, rng.randrange(64)),
                            (ReadSpace.COUNTERS, rng.randrange(n_words))])
                for _ in range(200)]

    def expected(space, addr):
        if space == ReadSpace.LOGITS:
            byte = act[base + addr]
            return (byte - 256 if byte & 0x80 else byte) & 0xFFFF_FFFF
        return results[addr]

    dut = _Reads(cfg, act, results, registered)
    reads = dut.reads
    got = []

    async def host(ctx):
        ctx.set(reads.base, base)
        sent = 0
        while sent < len(commands):
            if rng.random() < 0.7:
                space, addr = commands[sent]
                ctx.set(reads.rd.valid, 1)
                ctx.set(reads.rd.payload.space, space)
                ctx.set(reads.rd.payload.addr, addr)
                _, _, ready = await ctx.tick().sample(reads.rd.ready)
                sent += ready
            else:
                ctx.set(reads.rd.valid, 0)
                await ctx.tick()
        ctx.set(reads.rd.valid, 0)

    async def consumer(ctx):
        while len(got) < len(commands):
            take = rng.random() < 0.6
            ctx.set(reads.rd_data.ready, take)
            _, _, valid, data = await ctx.tick().sample(reads.rd_data.valid,
                                                        reads.rd_data.payload.data)
            if take and valid:
                got.append(data & 0xFFFF_FFFF)

    def check():
        want = [expected(space, addr) for space, addr in commands]
        assert got == want

    run_simulation(dut, [host, consumer], name=request.node.name, check=check,
                   max_cycles=5_000)
