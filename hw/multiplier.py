"""Multiplier blocks with registered outputs: int8 pairs (the array), 16×16 (requantiser).

The array pairs its processing elements two per multiplier block because an iCE40
SB_MAC16 can compute two independent 8×8 products (``hw/ice40.py: Ice40DualMul8``, same
signature and latency); the requantiser builds its wide product from 16×16 blocks, one
SB_MAC16 each in 16×16 mode (``Ice40Mul16``). This file holds the portable versions:
plain ``*`` that any synthesis tool maps to its DSPs or LUTs.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["DualMul8", "RegisteredDualMul8", "LogicDualMul8", "Mul16",
           "dual_mul8_signature", "mul16_signature"]


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

    Parameters
    ----------
    a_registered : bool
        ``a`` passes through an input register of its own first: the product is of ``a``
        one cycle earlier than ``b`` (a user that registers ``a`` anyway can hand that
        register to the block; an SB_MAC16 has it built in).

    Attributes
    ----------
    LATENCY : int
        Cycles from ``b`` (and an unregistered ``a``) to ``p`` (1: one output register).
    """
    LATENCY = 1

    def __init__(self, *, a_registered=False):
        self.a_registered = bool(a_registered)
        super().__init__(dual_mul8_signature())

    def elaborate(self, platform):
        m = Module()
        for i in range(2):
            a = self.a[i]
            if self.a_registered:
                a = Signal.like(self.a[i], name=f"a_reg{i}")
                m.d.sync += a.eq(self.a[i])
            # (-128)*(-128) = 2**14 fits signed(16): the product never wraps.
            m.d.sync += self.p[i].eq(a * self.b[i])
        return m


class RegisteredDualMul8(DualMul8):
    """:class:`DualMul8` with both operands registered first: ``LATENCY = 2``.

    The registers belong to one block, so placement can put them beside its DSP; a
    broadcast array's operand registers each drive a whole row or column of blocks
    across the chip (on the ULX3S-85F's 16×8 array an activation register reached its
    MULT18X18Ds through 7.3 ns of routing). Costs 32 flip-flops per block.
    """
    LATENCY = 2

    def elaborate(self, platform):
        m = Module()
        for i in range(2):
            a = Signal.like(self.a[i], name=f"a_reg{i}")
            b = Signal.like(self.b[i], name=f"b_reg{i}")
            m.d.sync += [a.eq(self.a[i]), b.eq(self.b[i]), self.p[i].eq(a * b)]
        return m


def logic_partials(a, b):
    """Four partial sums whose total is ``a * b`` (signed 8-bit ``a`` and ``b``): ``a``
    shifted by each bit ``i`` of ``b`` where it is set (subtracted for the sign bit,
    ``i = 7``), bits ``2k`` and ``2k + 1`` in sum ``k`` — adders, no ``*`` for synthesis
    to put on a DSP block."""
    def term(i):
        return Mux(b[i], a << i, 0)
    return [term(0) + term(1), term(2) + term(3), term(4) + term(5), term(6) - term(7)]


class LogicDualMul8(RegisteredDualMul8):
    """:class:`RegisteredDualMul8` with its products in logic (:func:`logic_partials`):
    for arrays beyond the device's DSP blocks (an ECP5-85F has 156 MULT18X18D).

    ``LATENCY = 3``: the operand registers, the four partial sums (one adder each) in
    registers, then their sum (two adders deep) in ``p``; the partial sums are 128
    flip-flops per block more than :class:`RegisteredDualMul8`'s.
    """
    LATENCY = 3

    def elaborate(self, platform):
        m = Module()
        for i in range(2):
            a = Signal.like(self.a[i], name=f"a_reg{i}")
            b = Signal.like(self.b[i], name=f"b_reg{i}")
            partial = [Signal(signed(16), name=f"partial{i}_{k}") for k in range(4)]
            m.d.sync += [a.eq(self.a[i]), b.eq(self.b[i]),
                         *(r.eq(v) for r, v in zip(partial, logic_partials(a, b))),
                         self.p[i].eq((partial[0] + partial[1]) + (partial[2] + partial[3]))]
        return m


def mul16_signature():
    """``a: In(signed(16))``, ``b: In(unsigned(16))``, ``en: In(1)``, ``p: Out(signed(32))``."""
    return wiring.Signature({
        "a": In(signed(16)),
        "b": In(unsigned(16)),
        "en": In(1),
        "p": Out(signed(32)),
    })


class Mul16(wiring.Component):
    """``p = a * b`` for a signed and an unsigned 16-bit operand, registered when ``en``.

    The requantiser's wide multiplier block (:class:`~fpgacnn.hw.requant.Requantizer`
    builds its ``v * M`` from several). ``p`` is the product of the operands present at
    the last clock edge with ``en`` high (0 after reset); the product always fits:
    ``-2**15 * (2**16 - 1) <= a * b < 2**31``.

    This is the portable version (plain ``*``);
    :class:`~fpgacnn.hw.ice40.Ice40Mul16` is the same block on one iCE40 SB_MAC16.

    Attributes
    ----------
    LATENCY : int
        1: an enabled clock edge takes the operands, ``p`` shows their product after it.
    """
    LATENCY = 1

    def __init__(self):
        super().__init__(mul16_signature())

    def elaborate(self, platform):
        m = Module()
        with m.If(self.en):
            m.d.sync += self.p.eq(self.a * self.b)
        return m
