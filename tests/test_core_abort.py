# amaranth: UnusedElaboratable=no
"""An abort in the middle of a run, in Amaranth's simulator: the next run is bit-exact.

The iCE40 DSPs' product registers (``hw/ice40.py``) take only the clock domain's own
reset, not the core's abort/watchdog reset; here a multiplier with the same behaviour (a
reset-less product register) stands in for them, so the generic simulator sees it too.
"""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed

from fpgacnn.hw import program as prog
from fpgacnn.hw.config import AcceleratorConfig, Dataflow
from fpgacnn.hw.core import Core
from fpgacnn.hw.multiplier import DualMul8
from fpgacnn.sim.amaranth_sim import run_simulation
from fpgacnn.sim.streams import stream_get, stream_put
from fpgacnn.sw import network as nets
from fpgacnn.sw.compiler import compile_network
from fpgacnn.sw.network import FC, Conv, Network, ReLU

CONFIG = AcceleratorConfig(name="abort-test", rows=8, cols=1, max_reduction=1024,
                           weight_words=1024, act_bytes=1024, qparam_entries=32,
                           max_layers=4, clock_hz=24_000_000, dataflow=Dataflow.BROADCAST,
                           requant_interval=2)
NET = Network("abort", (2, 6, 6), [Conv(8, 3, pad=1), ReLU(), FC(5)])


class ResetlessDualMul8(DualMul8):
    """:class:`DualMul8` whose product register ignores ``ResetInserter`` (as the SB_MAC16's
    does the core's ``stop``)."""

    def elaborate(self, platform):
        m = Module()
        for i in range(2):
            p = Signal(signed(16), reset_less=True, name=f"p{i}")
            m.d.sync += p.eq(self.a[i] * self.b[i])
            m.d.comb += self.p[i].eq(p)
        return m


@pytest.mark.parametrize("abort_after", [30, 95, 160])
def test_run_after_an_abort_is_bit_exact(request, abort_after):
    params = nets.random_params(NET, abort_after)
    compiled = compile_network(NET, params, CONFIG)
    image = np.random.default_rng(abort_after).integers(-128, 128, NET.input_shape, np.int8)
    image[0, 0, :3] = (-128, 127, 0)
    expected = nets.run_network(NET, params, image)
    dut = Core(CONFIG, mac=ResetlessDualMul8)
    got = []

    async def bench(ctx):
        for space, writes in compiled.model_writes().items():
            for a, v in writes:
                await stream_put(ctx, dut.wr, {"space": space, "addr": a, "data": v})
        for a, v in compiled.image_writes(image, 0):
            await stream_put(ctx, dut.wr, {"space": prog.Space.IMAGE, "addr": a, "data": v})
        for stop_it in (True, False):
            await stream_put(ctx, dut.start, {"image_base": compiled.image_base(0)})
            await ctx.tick().repeat(abort_after if stop_it else 1)
            assert ctx.get(dut.busy), "the run ended before the abort"
            if stop_it:         # mid-run: the array is accumulating the first layer
                ctx.set(dut.abort, 1)
                await ctx.tick()
                ctx.set(dut.abort, 0)
            while ctx.get(dut.busy):
                await ctx.tick()
        for k in range(expected.size):
            await stream_put(ctx, dut.rd, {"space": prog.ReadSpace.LOGITS, "addr": k})
            got.append((await stream_get(ctx, dut.rd_data)).data)

    def check():
        y = np.array(got, dtype=np.int64).astype(np.uint32).astype(np.int32)
        np.testing.assert_array_equal(y, expected)

    run_simulation(dut, [bench], name=request.node.name, check=check, max_cycles=60_000)
