"""Two int8 × int8 multipliers with a registered output: the systolic array's MAC datapath.

The array pairs its processing elements two per multiplier block because an iCE40
SB_MAC16 can compute two independent 8×8 products (``hw/ice40.py: Ice40DualMul8``, same
signature and latency). This file is the portable version: plain ``*`` that any
synthesis tool maps to its DSPs or LUTs.
"""

from amaranth.hdl import Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["DualMul8", "dual_mul8_signature"]


def dual_mul8_signature():
    """``a, b: In(2 × signed(8))``, ``p: Out(2 × signed(16))`` — shared by all DualMul8s."""
    return wiring.Signature({
        "a": In(data.ArrayLayout(signed(8), 2)),
        "b": In(data.ArrayLayout(signed(8), 2)),
        "p": Out(data.ArrayLayout(signed(16), 2)),
    })


class DualMul8(wiring.Component):
    """``p[i] = a[i] * b[i]`` for two signed 8-bit pairs, registered.

    No enable and no handshake: a product appears ``LATENCY`` cycles after its operands,
    every cycle; the user delays its own valid/control bits by the same amount.

    Attributes
    ----------
    LATENCY : int
        Cycles from ``a``/``b`` to ``p`` (1: one output register).
    """
    LATENCY = 1

    def __init__(self):
        super().__init__(dual_mul8_signature())

    def elaborate(self, platform):
        m = Module()
        for i in range(2):
            # (-128)*(-128) = 2**14 fits signed(16): the product never wraps.
            m.d.sync += self.p[i].eq(self.a[i] * self.b[i])
        return m
