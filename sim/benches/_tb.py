"""Shared cocotb bench plumbing: clock, reset, and a stream driver/monitor with stalls.

Timing discipline (simulator independent): inputs change just after the falling edge,
handshakes are judged in the ``ReadOnly`` phase before the next rising edge, so what a
bench counts as a transfer is exactly what the registers see.
"""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

__all__ = ["StreamTB", "start_clock"]

#: Clock period of every bench (the value is arbitrary: benches count cycles, not time).
CLOCK_NS = 10


def start_clock(dut):
    """Drive ``dut.clk`` with a free-running clock for the rest of the test."""
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())


class StreamTB:
    """One ``i_stream`` → ``o_stream`` unit under random idle cycles and backpressure.

    Parameters
    ----------
    dut : cocotb handle of the Amaranth top (ports ``clk``, ``rst``, ``<name>__valid`` …).
    seed : int
        Seeds the idle/backpressure pattern.
    idle, stall : float
        Probability of an idle input cycle / a cycle with ``o_stream.ready`` low.
    """
    def __init__(self, dut, *, seed, idle=0.3, stall=0.3, i_name="i_stream",
                 o_name="o_stream"):
        self.dut = dut
        self.rng = random.Random(seed)
        self.idle, self.stall = idle, stall
        self.i = {f: getattr(dut, f"{i_name}__{f}") for f in ("valid", "ready", "payload")}
        self.o = {f: getattr(dut, f"{o_name}__{f}") for f in ("valid", "ready", "payload")}
        self.cycles = 0

    async def start(self):
        """Start the clock and hold reset for two cycles."""
        start_clock(self.dut)
        self.dut.rst.value = 1
        self.i["valid"].value = 0
        self.o["ready"].value = 0
        for _ in range(2):
            await RisingEdge(self.dut.clk)
        await FallingEdge(self.dut.clk)
        self.dut.rst.value = 0

    async def run(self, beats, n_out, *, max_cycles=100_000):
        """Send packed ``beats``, collect ``n_out`` packed outputs; returns the outputs.

        ``self.cycles`` is set to the number of clock cycles the exchange took.
        """
        out, k, cycles = [], 0, 0
        while len(out) < n_out or k < len(beats):
            await FallingEdge(self.dut.clk)
            offer = k < len(beats) and self.rng.random() >= self.idle
            self.i["valid"].value = int(offer)
            if offer:
                self.i["payload"].value = beats[k]
            self.o["ready"].value = int(self.rng.random() >= self.stall)
            await ReadOnly()
            if offer and self.i["ready"].value:
                k += 1
            if self.o["valid"].value and self.o["ready"].value:
                out.append(self.o["payload"].value.to_unsigned())
            cycles += 1
            if cycles > max_cycles:
                raise AssertionError(f"no progress after {max_cycles} cycles: sent {k} of "
                                     f"{len(beats)} beats, received {len(out)} of {n_out}")
        await FallingEdge(self.dut.clk)
        self.i["valid"].value = 0
        self.o["ready"].value = 0
        self.cycles = cycles
        return out
