# amaranth: UnusedElaboratable=no
"""The core's Sequencer on its own: a program memory model, a unit that takes each launched
descriptor for a chosen number of cycles, and the counters it stores.

Both fetch schemes (``prefetch_descriptors`` off and on) must launch the same descriptors
in the same order, hold each one stable while it runs, store the same per-layer counts,
stop at ``to_logits`` or after ``max_layers`` descriptors without reading past the
program, start cleanly after a reset mid-run, and launch each descriptor exactly when
their schedule says (prefetching saves a whole fetch for every descriptor after the
first that runs at least that long).
"""

import random

import pytest
from amaranth.hdl import ResetInserter, Signal
from amaranth.lib import data

from fpgacnn.hw import program
from fpgacnn.hw.config import CONFIGS
from fpgacnn.hw.core import Sequencer
from fpgacnn.sim.amaranth_sim import run_simulation

DESC_BITS = program.LayerDescriptor.as_shape().size
HALVES = -(-DESC_BITS // 16)
STEP = program.DESCRIPTOR_WORDS * 4              # halfwords per descriptor slot
TO_LOGITS = 1 << data.Layout.cast(program.LayerDescriptor)["to_logits"].offset
BASE = CONFIGS["ulx3s-85f"].with_(max_layers=6)


def random_descriptors(rng, n, *, last_to_logits=True):
    """``n`` random raw descriptors, ``to_logits`` only on the last (if asked); the
    edge patterns (all zeros but the flag, all ones) among them."""
    mask = (1 << DESC_BITS) - 1
    descs = [rng.getrandbits(DESC_BITS) & ~TO_LOGITS for _ in range(n)]
    descs[0] = 0
    if n > 1:
        descs[1] = mask & ~TO_LOGITS
    if last_to_logits:
        descs[-1] |= TO_LOGITS
    return descs


def run_sequencer(config, descs, durations, *, name, runs=1, seed=0, reset_at=None):
    """Run the program ``descs`` ``runs`` times, back to back (the next START waiting
    as the previous run ends) or a few cycles apart; each launched descriptor takes
    ``durations[i]`` cycles from launch to its done strobe. With ``reset_at``, the
    first run is reset (as the core's abort does) that many cycles after its START
    and left out of the result. Returns per run ``(launched, counters, gaps)``: the
    raw descriptors launched, the results memory's words (0: total, 1 + i:
    descriptor i, whose count is its duration) and the cycles between launches."""
    seq = Sequencer(config)
    reset = Signal()
    dut = ResetInserter({"sync": reset})(seq)
    rng = random.Random(seed)
    size = config.max_layers * STEP
    mem = [rng.getrandbits(16) for _ in range(size)]      # beyond the program: garbage
    for i, d in enumerate(descs):
        for j in range(STEP):
            mem[i * STEP + j] = (d >> (16 * j)) & 0xFFFF if j < HALVES else 0
    runs_out = []
    reads_out_of_range = []

    async def program_memory(ctx):
        async for _, _, en, addr in ctx.tick().sample(seq.program.en, seq.program.addr):
            if en:
                if addr >= size:
                    reads_out_of_range.append(addr)
                else:
                    ctx.set(seq.program.data, mem[addr])

    async def bench(ctx):
        for run in range(runs + (reset_at is not None)):
            launched, launch_cycles, counters, stable = [], [], {}, []
            ctx.set(seq.start.p.image_base, 0x1234 + run)
            ctx.set(seq.start.valid, 1)
            await ctx.tick().until(seq.start.ready)
            ctx.set(seq.start.valid, 0)
            left = None       # cycles until the running unit's done strobe
            cycle = 0
            while True:
                await ctx.tick()
                cycle += 1
                ctx.set(seq.layer_done, 0)
                if run == 0 and cycle == reset_at:
                    ctx.set(reset, 1)
                    await ctx.tick()
                    ctx.set(reset, 0)
                    assert not ctx.get(seq.busy) and not ctx.get(seq.launch)
                    assert 0 < len(launched) < len(descs), "the reset must come mid-run"
                    break
                if ctx.get(seq.results.en):
                    counters[ctx.get(seq.results.addr)] = ctx.get(seq.results.data)
                if not ctx.get(seq.busy):
                    break
                if left is not None:
                    stable.append(ctx.get(seq.desc.as_value()) == launched[-1])
                    left -= 1
                    if left == 0:
                        ctx.set(seq.layer_done, 1)
                        left = None
                if ctx.get(seq.launch):
                    # Done at the earliest the cycle after launch, as the units do.
                    assert left is None, "launch while a descriptor still runs"
                    launched.append(ctx.get(seq.desc.as_value()))
                    launch_cycles.append(cycle)
                    left = durations[len(launched) - 1]
            if run == 0 and reset_at is not None:
                continue
            assert all(stable), "the descriptor changed while its unit ran"
            assert ctx.get(seq.image_base) == 0x1234 + run
            assert ctx.get(seq.desc.as_value()) == launched[-1], \
                "desc must keep the last descriptor after the run"
            gaps = [b - a for a, b in zip(launch_cycles, launch_cycles[1:])]
            runs_out.append((launched, counters, gaps))
            # Every other run starts as soon as it may.
            for _ in range(rng.randrange(4) if run % 2 else 0):
                await ctx.tick()

    run_simulation(dut, [bench], processes=[program_memory], name=name, max_cycles=50_000)
    assert not reads_out_of_range, f"program read past its end: {reads_out_of_range[:3]}"
    return runs_out


def launch_gap(config, duration):
    """Cycles from a descriptor's launch to the next one's when it runs ``duration``
    cycles: its count stored, then a fetch (``HALVES + 1`` cycles), or with prefetching
    only the rest of the fetch started at its launch."""
    if config.prefetch_descriptors:
        return max(duration + 2, HALVES + 1)
    return duration + HALVES + 3


def check_runs(config, descs, durations, name, **kwargs):
    """Run and check every run's launches, counters and timing; the runs' totals."""
    out = run_sequencer(config, descs, durations, name=name, **kwargs)
    n = min(len(descs), config.max_layers)
    for launched, counters, gaps in out:
        assert launched == descs[:n]
        assert sorted(counters) == list(range(n + 1))
        assert [counters[1 + i] for i in range(n)] == list(durations[:n])
        assert gaps == [launch_gap(config, d) for d in durations[:n - 1]]
    return [counters[0] for _, counters, _ in out]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_prefetch_saves_a_fetch_per_layer(request, seed):
    rng = random.Random(seed)
    n = rng.randrange(2, BASE.max_layers + 1)
    descs = random_descriptors(rng, n)
    # Every layer at least as long as a fetch: each later one starts a fetch sooner.
    durations = [rng.randrange(HALVES + 1, 60) for _ in range(n)]
    plain = check_runs(BASE.with_(prefetch_descriptors=False), descs, durations,
                       request.node.name + "_plain", runs=3, seed=seed)
    fast = check_runs(BASE.with_(prefetch_descriptors=True), descs, durations,
                      request.node.name + "_prefetch", runs=3, seed=seed)
    assert len(set(plain)) == 1 and len(set(fast)) == 1
    assert plain[0] - fast[0] == (n - 1) * (HALVES + 1)


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("case", ["short_layers", "one_layer", "max_layers_cap", "reset"])
def test_sequencer_runs_the_program(request, prefetch, case):
    rng = random.Random(f"{case}{prefetch}")
    config = BASE.with_(prefetch_descriptors=prefetch)
    kwargs = {}
    if case == "short_layers":
        # Layers shorter than a fetch (1 cycle: a copy descriptor on a board without a
        # copier), and ones whose prefetch ends as their count is stored.
        descs = random_descriptors(rng, 6)
        durations = [1, 2, HALVES - 1, HALVES, 1, HALVES + 1]
    elif case == "one_layer":
        descs, durations = random_descriptors(rng, 1), [7]
    elif case == "max_layers_cap":
        # No to_logits: the run ends after max_layers descriptors.
        descs = random_descriptors(rng, config.max_layers, last_to_logits=False)
        durations = [rng.randrange(1, 30) for _ in descs]
    else:
        # Reset mid-run: with prefetching in the third layer while the fourth is read,
        # without it while the third is read.
        descs = random_descriptors(rng, 5)
        durations = [20, 3, 25, 9, 14]
        kwargs["reset_at"] = 2 * (HALVES + 1) + 20 + 3 + 10
    totals = check_runs(config, descs, durations, request.node.name, runs=3, **kwargs)
    assert len(set(totals)) == 1
    # Each layer's run and count, the first fetch, the total's count.
    assert totals[0] >= sum(durations) + len(descs) + HALVES + 1
