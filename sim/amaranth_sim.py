"""Run Amaranth-simulator testbenches so that a failure always leaves a waveform.

Usage (see ``tests/test_systolic.py`` for a full example)::

    from fpgacnn.sim.amaranth_sim import run_simulation

    def test_thing(request):
        dut, out = Thing(), []
        async def producer(ctx): ...
        async def consumer(ctx): ...      # appends to out
        def check():                      # compares with the golden model
            np.testing.assert_array_equal(np.array(out), expected)
        run_simulation(dut, [producer, consumer], name=request.node.name, check=check)

The first run records nothing (the Python simulator runs about twice as fast without a
VCD). If a testbench, the watchdog or ``check`` raises, the simulation is built again
and re-run while recording ``build/waves/<name>.vcd``; then an :class:`AssertionError`
naming that path is raised, chained to the original error. So that the re-run shows the
same failure, testbenches must be deterministic: create their random generators inside
the ``async def`` (from a seed in the closure), not outside it.

A watchdog turns a hung design (a consumer waiting for a beat that never comes) into a
:class:`SimulationTimeout` after ``max_cycles`` clock cycles instead of a hang.

Set ``FPGACNN_WAVES=1`` in the environment to record waveforms on every run.
"""

import os
import re
from pathlib import Path

from amaranth.sim import Simulator

__all__ = ["WAVES_DIR", "SimulationTimeout", "run_simulation", "waves_path"]

#: Where failing (or FPGACNN_WAVES=1) simulations leave their waveforms.
WAVES_DIR = Path(__file__).resolve().parent.parent / "build" / "waves"


class SimulationTimeout(AssertionError):
    """The testbenches did not finish within the cycle budget (the design hung)."""


def waves_path(name):
    """``build/waves/<name>.vcd`` with ``name`` made safe for a file name."""
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_") or "sim"
    return WAVES_DIR / f"{safe}.vcd"


def _make(dut, testbenches, processes, clock, max_cycles, domain):
    sim = Simulator(dut)
    sim.add_clock(clock, domain=domain)
    for tb in testbenches:
        sim.add_testbench(tb)
    for proc in processes:
        sim.add_process(proc)

    if max_cycles is not None:
        async def watchdog(ctx):
            # One long delay, not ``tick().repeat()``: a background testbench is
            # abandoned mid-await when the run ends, and repeat() cannot be closed then.
            await ctx.delay(max_cycles * clock)
            raise SimulationTimeout(
                f"simulation still running after {max_cycles} cycles: the design (or a "
                f"testbench) is stuck waiting; raise max_cycles if the run is legitimately "
                f"longer")
        sim.add_testbench(watchdog, background=True)
    return sim


def run_simulation(dut, testbenches, *, name, processes=(), check=None, clock=1e-8,
                   max_cycles=200_000, domain="sync", traces=()):
    """Simulate ``dut`` with async ``testbenches``; on failure re-run and write a VCD.

    Parameters
    ----------
    dut : Elaboratable
        Design under test (usually a ``wiring.Component``).
    testbenches : list of async callables ``f(ctx)``
        Added with ``Simulator.add_testbench``; the run ends when all have returned.
    name : str
        Names the waveform file; pass pytest's ``request.node.name``.
    processes : list of async callables
        Added with ``Simulator.add_process`` (rarely needed).
    check : callable, optional
        Called with no arguments after a successful run, e.g. the comparison with the
        golden model; a failure there also produces the waveform.
    clock : float
        Clock period in seconds.
    max_cycles : int or None
        Watchdog: raise :class:`SimulationTimeout` after this many cycles.
    domain : str
        Clock domain to drive and count.
    traces : iterable of signals
        Extra signals for the VCD (the design's own are always recorded).

    Raises
    ------
    AssertionError
        Whatever went wrong, with ``waveform: build/waves/<name>.vcd`` in the message.
    """
    path = waves_path(name)
    always = os.environ.get("FPGACNN_WAVES", "") not in ("", "0")
    try:
        sim = _make(dut, testbenches, processes, clock, max_cycles, domain)
        if always:
            path.parent.mkdir(parents=True, exist_ok=True)
            with sim.write_vcd(str(path), traces=list(traces)):
                sim.run()
        else:
            sim.run()
        if check is not None:
            check()
    except Exception as error:
        if not always:
            path.parent.mkdir(parents=True, exist_ok=True)
            rerun = _make(dut, testbenches, processes, clock, max_cycles, domain)
            try:
                with rerun.write_vcd(str(path), traces=list(traces)):
                    rerun.run()
            except Exception:
                pass  # the same failure again, or a consequence of it; the VCD is written
        raise AssertionError(f"{type(error).__name__}: {error}\nwaveform: {path}") from error
