# amaranth: UnusedElaboratable=no
"""SystolicArray vs the golden matrix product, in Amaranth's simulator."""

import random

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring

from fpgacnn.hw.multiplier import DualMul8, dual_mul8_signature
from fpgacnn.hw.systolic import SystolicArray
from fpgacnn.sim.amaranth_sim import run_simulation
from fpgacnn.sim.streams import stream_put
from fpgacnn.sim.vectors import systolic_results, systolic_tiles
from fpgacnn.sw import golden


def run_array(dut, tiles, *, seed, name, idle=0.3, stall=0.3, shapes=None):
    """Feed ``tiles`` to ``dut``; return (results array, cycles from first beat to last).

    ``shapes`` (a compact array): per tile the ``(last_row, last_col)`` to drain."""
    shapes = shapes or [None] * len(tiles)
    expected = systolic_results([(w, x) if s is None else (w[:s[0] + 1], x[:, :s[1] + 1])
                                 for (w, x), s in zip(tiles, shapes)])
    got, times = [], {}

    async def producer(ctx):
        rng = random.Random(seed)
        times["start"] = 0
        for (w, x), shape in zip(tiles, shapes):
            d = w.shape[1]
            extra = {} if shape is None else {"last_row": shape[0], "last_col": shape[1]}
            for k in range(d):
                await stream_put(ctx, dut.i_stream, {
                    "w": w[:, k].tolist(), "x": x[k, :].tolist(), "last": int(k == d - 1),
                    **extra})
                while rng.random() < idle:
                    await ctx.tick()

    async def consumer(ctx):
        rng = random.Random(seed + 1000)
        cycles = 0
        while len(got) < len(expected):
            ctx.set(dut.o_stream.ready, 1)
            while True:
                _, _, valid, p = await ctx.tick().sample(dut.o_stream.valid,
                                                          dut.o_stream.payload)
                cycles += 1
                if valid:
                    break
            ctx.set(dut.o_stream.ready, 0)
            if dut.lanes == 1:
                got.append((p.acc, p.row, p.col, p.last))
            else:
                # A beat of lanes is rows row .. row + lanes - 1, in the one-lane order.
                lanes = [lane for lane in range(dut.lanes) if p.valid >> lane & 1]
                assert lanes == list(range(len(lanes))) and lanes, f"lanes {p.valid:b}"
                got.extend((p.acc[lane], p.row + lane, p.col,
                            p.last and lane == lanes[-1]) for lane in lanes)
            while rng.random() < stall:
                await ctx.tick()
                cycles += 1
        times["cycles"] = cycles

    def check():
        np.testing.assert_array_equal(np.array(got, dtype=np.int64).reshape(-1, 4), expected,
                                      err_msg=f"seed={seed}")

    # ready is only raised for whole beats, so count cycles in the consumer.
    run_simulation(dut, [producer, consumer], name=name, check=check,
                   max_cycles=50 * len(expected) + 20 * sum(w.shape[1] for w, _ in tiles))
    return np.array(got), times["cycles"]


SHAPES = [(1, 1), (4, 4), (8, 2), (2, 8), (3, 1)]


@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("seed", range(2))
def test_array_matches_golden(request, rows, cols, seed):
    rng = random.Random(seed)
    # Short tiles (D = 1, 2, < rows*cols) and long ones, back to back.
    depths = [1, 2, rows * cols + 5, 3] + [rng.randrange(1, 2 * rows * cols + 8)
                                           for _ in range(4)]
    dut = SystolicArray(rows, cols, acc_width=golden.accumulator_bits(max(depths)))
    run_array(dut, systolic_tiles(rows, cols, depths, seed), seed=seed, name=request.node.name)


@pytest.mark.parametrize("shift_drain", [False, True], ids=["mux", "shift"])
@pytest.mark.parametrize("rows,cols", [(1, 1), (4, 4), (8, 2), (2, 8), (8, 1)])
def test_broadcast_dataflow_matches_golden(request, rows, cols, shift_drain):
    """The broadcast variant: same results, order and timing as the systolic one."""
    depths = [1, 2, rows * cols + 5, 3, 2 * rows * cols, 7]
    dut = SystolicArray(rows, cols, acc_width=golden.accumulator_bits(max(depths)),
                        dataflow="broadcast", shift_drain=shift_drain)
    run_array(dut, systolic_tiles(rows, cols, depths, 9), seed=9, name=request.node.name)


DRAINS = {"systolic": {}, "broadcast": {"dataflow": "broadcast"},
          "shift": {"dataflow": "broadcast", "shift_drain": True},
          # Shadows copy the accumulators' registers (with the skew; and as on the iCE40).
          "systolic_register": {"register_capture": True},
          "shift_register": {"dataflow": "broadcast", "shift_drain": True,
                             "register_capture": True},
          # Operands registered in each multiplier block (LATENCY 2; the ECP5 builds').
          "registered": {"dataflow": "broadcast", "mac": "registered"},
          # The iCE40 builds' array: also the weights registered inside the multipliers.
          "ice40": {"dataflow": "broadcast", "shift_drain": True, "register_capture": True,
                    "weights_in_mac": True},
          # A result queue: last beats accepted while the previous tile still drains.
          "queued": {"dataflow": "broadcast", "mac": "registered", "queue": 8},
          "queued_register": {"dataflow": "broadcast", "register_capture": True,
                              "queue": 8}}


@pytest.mark.parametrize("drain", DRAINS)
def test_heavy_backpressure(request, drain):
    """The drain under a consumer that stalls 80 % of the time (shift chains move only
    when a result is taken)."""
    dut = SystolicArray(4, 2, acc_width=24, **DRAINS[drain])
    tiles = systolic_tiles(4, 2, [9, 1, 12, 2, 30], seed=7)
    run_array(dut, tiles, seed=7, name=request.node.name, idle=0.1, stall=0.8)


class SlowMul(wiring.Component):
    """A DualMul8 stand-in with LATENCY = 3, to prove the array follows the attribute."""
    LATENCY = 3

    def __init__(self):
        super().__init__(dual_mul8_signature())

    def elaborate(self, platform):
        m = Module()
        inner = m.submodules.inner = DualMul8()
        m.d.comb += [inner.a.eq(self.a), inner.b.eq(self.b)]
        delayed = inner.p
        for n in range(self.LATENCY - DualMul8.LATENCY):
            reg = Signal(inner.p.shape(), name=f"d{n}")
            m.d.sync += reg.eq(delayed)
            delayed = reg
        m.d.comb += self.p.eq(delayed)
        return m


@pytest.mark.parametrize("register_capture", [False, True])
def test_other_multiplier_latency(request, register_capture):
    dut = SystolicArray(2, 3, acc_width=24, mac=SlowMul, register_capture=register_capture)
    run_array(dut, systolic_tiles(2, 3, [1, 8, 2, 11, 5], seed=3), seed=3, name=request.node.name)


@pytest.mark.parametrize("drain", DRAINS)
def test_throughput_one_beat_per_cycle(request, drain):
    """Tiles of D = min_tile beats stream with no stall: cycles = beats + drain latency."""
    rows, cols = 8, 2
    dut = SystolicArray(rows, cols, acc_width=24, **DRAINS[drain])
    depths = [dut.min_tile] * 4
    _, cycles = run_array(dut, systolic_tiles(rows, cols, depths, seed=1), seed=1,
                          name=request.node.name, idle=0, stall=0)
    ideal = sum(depths) + dut.result_latency + rows * cols - 1
    print(f"8x2 array: {sum(depths)} beats, {cycles} cycles (ideal {ideal})")
    assert cycles <= ideal + 1
    if dut.queue:
        assert dut.min_tile == rows * cols + 1


def test_bad_arguments():
    with pytest.raises(TypeError, match="rows must be a positive integer"):
        SystolicArray(0, 2, acc_width=24)
    with pytest.raises(ValueError, match="acc_width"):
        SystolicArray(2, 2, acc_width=8)
    with pytest.raises(ValueError, match="mac must be"):
        SystolicArray(2, 2, acc_width=24, mac="dsp48")
    with pytest.raises(ValueError, match="dataflow must be"):
        SystolicArray(2, 2, acc_width=24, dataflow="weight-stationary")
    with pytest.raises(ValueError, match="shift_drain needs the broadcast dataflow"):
        SystolicArray(2, 2, acc_width=24, shift_drain=True)
    with pytest.raises(ValueError, match="weights_in_mac needs the broadcast dataflow"):
        SystolicArray(2, 2, acc_width=24, dataflow="broadcast", column_weights=True,
                      weights_in_mac=True)
    with pytest.raises(ValueError, match="weights_in_mac needs a multiplier block"):
        SystolicArray(2, 3, acc_width=24, mac=SlowMul, dataflow="broadcast",
                      weights_in_mac=True)


@pytest.mark.parametrize("drain", DRAINS)
@pytest.mark.parametrize("rows,cols", [(3, 2), (4, 4), (1, 5)])
def test_array_compact_drains_used_pes(request, rows, cols, drain):
    """The array alone: tiles with every (last_row, last_col) emit exactly those PEs'
    sums, ``for col: for row``, under random bubbles and back-pressure (a partly drained
    shift chain is overwritten by the next capture)."""
    dut = SystolicArray(rows, cols, 24, compact=True, **DRAINS[drain])
    shapes = [(r, c) for r in range(rows) for c in range(cols)]
    shapes += shapes[::-1]
    tiles = systolic_tiles(rows, cols, [(1, 2, 7, 30)[n % 4] for n in range(len(shapes))],
                           seed=rows * 10 + cols)
    got, _ = run_array(dut, tiles, seed=rows + cols, name=request.node.name, shapes=shapes)
    assert len(got) == sum((r + 1) * (c + 1) for r, c in shapes)


@pytest.mark.parametrize("queue", [0, 8], ids=["direct", "queued"])
@pytest.mark.parametrize("compact", [False, True], ids=["full", "compact"])
@pytest.mark.parametrize("rows,cols,lanes", [(4, 2, 2), (8, 3, 4), (4, 1, 4), (2, 2, 2)])
def test_result_lanes(request, rows, cols, lanes, compact, queue):
    """Several rows a beat: the same results in the same order (lanes past a compact
    tile's last row invalid), under bubbles and back-pressure; a tile of D >= min_tile
    beats streams without stall."""
    dut = SystolicArray(rows, cols, 24, dataflow="broadcast", compact=compact, lanes=lanes,
                        mac="registered", queue=queue)
    beats = rows * cols // lanes
    assert dut.min_tile == (max(beats + 1, dut.result_latency - 3) if queue else
                            beats + dut.result_latency - 1)
    shapes = None
    depths = [1, 2, 7, 30, dut.min_tile, 3]
    if compact:
        shapes = [(r, c) for r in range(rows) for c in range(cols)]
        depths = [depths[n % len(depths)] for n in range(len(shapes))]
    tiles = systolic_tiles(rows, cols, depths, seed=rows * 10 + cols)
    run_array(dut, tiles, seed=lanes, name=request.node.name, shapes=shapes)
    if not compact:
        depths = [dut.min_tile] * 4
        _, cycles = run_array(dut, systolic_tiles(rows, cols, depths, seed=1), seed=1,
                              name=request.node.name + "_rate", idle=0, stall=0)
        assert cycles <= sum(depths) + dut.result_latency + rows * cols // lanes


@pytest.mark.parametrize("seed", range(3))
def test_queue_overlaps_drains(request, seed):
    """Tiles bound by their results (as LeNet-5's C1 on the ULX3S-85F: fewer operand
    beats than result beats) take one cycle more than their result beats with a queue,
    ``mac.LATENCY + 2`` more without; the same results either way, also when the
    consumer stalls right as a tile's last beat comes (the queue must then hold the
    previous tile's remaining results)."""
    rows, cols, lanes = 8, 4, 2
    beats = rows * cols // lanes
    depths = [beats - 2] * 12
    tiles = systolic_tiles(rows, cols, depths, seed=seed)
    cycles = {}
    for queue in (0, 8):
        dut = SystolicArray(rows, cols, 24, dataflow="broadcast", lanes=lanes,
                            mac="registered", queue=queue)
        _, cycles[queue] = run_array(dut, tiles, seed=seed, idle=0, stall=0,
                                     name=f"{request.node.name}_{queue}")
        assert cycles[queue] <= len(depths) * dut.min_tile + dut.result_latency + beats
        run_array(dut, tiles, seed=seed, idle=0.05, stall=0.4,
                  name=f"{request.node.name}_{queue}_stalls")
    # Tiles RegisteredDualMul8.LATENCY + 1 cycles apart, less the queue's 2 cycles.
    assert cycles[0] - cycles[8] >= (len(depths) - 1) * 3 - 2, cycles


def test_logic_multipliers_with_a_queue(request):
    """An array of LogicDualMul8 (latency 3, as a layer pipeline's C1 stage on the
    ULX3S-85F): the queue it needs is one longer (9); results exact under stalls."""
    rows, cols, lanes = 8, 4, 2
    tiles = systolic_tiles(rows, cols, [rows * cols // lanes - 2] * 8, seed=4)
    with pytest.raises(ValueError, match="queue must be 0 or an integer >= 9"):
        SystolicArray(rows, cols, 24, dataflow="broadcast", lanes=lanes, mac="logic",
                      queue=8)
    dut = SystolicArray(rows, cols, 24, dataflow="broadcast", lanes=lanes, mac="logic",
                        queue=9)
    run_array(dut, tiles, seed=4, idle=0.05, stall=0.4, name=request.node.name)


def test_result_lanes_bad_arguments():
    for lanes in (0, 3, 8, "2"):
        with pytest.raises(ValueError, match="lanes must be a power of two dividing rows"):
            SystolicArray(4, 2, 24, dataflow="broadcast", lanes=lanes)
    with pytest.raises(ValueError, match="shift_drain drains one result per cycle"):
        SystolicArray(4, 2, 24, dataflow="broadcast", shift_drain=True, lanes=2)
    # A systolic array's rows capture one cycle apart: a beat of lanes would be early.
    with pytest.raises(ValueError, match="lanes > 1 needs the broadcast dataflow"):
        SystolicArray(4, 2, 24, lanes=2)


def test_queue_bad_arguments():
    for kwargs in ({"dataflow": "broadcast", "queue": 3},           # too short to help
                   {"dataflow": "broadcast", "queue": "8"},
                   {"queue": 8},                                    # systolic: skewed
                   {"dataflow": "broadcast", "shift_drain": True, "queue": 8}):
        with pytest.raises(ValueError, match="queue must be 0 or an integer >= 7"):
            SystolicArray(4, 2, 24, **kwargs)
