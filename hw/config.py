"""Named accelerator configurations, one per board (array shape, memories, clocks).

Everything that sizes the gateware lives here, so the compiler (host side) can check a
network against exactly what the board was built with, and the board reports the same
numbers in its identity frame.
"""

from dataclasses import dataclass, replace

__all__ = ["AcceleratorConfig", "CONFIGS", "get_config"]


@dataclass(frozen=True)
class AcceleratorConfig:
    """Sizes of one accelerator build.

    Attributes
    ----------
    name : str
        Board/config name (``icebreaker``, ``ulx3s-85f``, ...).
    rows, cols : int
        Systolic array shape: ``rows`` output channels × ``cols`` output pixels per tile.
        The core needs ``rows`` to be a multiple of 8 (weight words are written in
        64-bit chunks); the units accept any positive shape.
    max_reduction : int
        Largest ``Cin*F*F`` a layer may have; sets the accumulator width.
    weight_words : int
        Depth of the weight memory in words of ``rows`` int8 weights.
    act_bytes : int
        Activation memory (image slots and ping-pong buffers), in bytes.
    qparam_entries : int
        Per-output-channel requantisation entries (bias, M, S), all layers together.
    max_layers : int
        Layer descriptors the program memory holds.
    max_logits : int
        Outputs of the last layer the results buffer holds.
    clock_hz, baud : int
        Core clock and UART baud rate.
    ice40 : bool
        Use hand-instantiated iCE40 primitives (SB_MAC16 pairs, SB_SPRAM256KA).
    dataflow : "systolic" or "broadcast"
        Operand movement in the array (see :class:`~fpgacnn.hw.systolic.SystolicArray`).
    requant_interval : int
        Cycles per requantised value; more than 1 trades requantiser area for speed, free
        while ``reduction >= rows * cols * requant_interval`` for every layer.
    pool_width, pool_blocks : int
        Max-pool line buffer: widest pooled layer (convolution output width) and most
        k-blocks it holds (``pool_width * pool_blocks * rows`` bytes of block RAM).
    """
    name: str
    rows: int
    cols: int
    max_reduction: int
    weight_words: int
    act_bytes: int
    qparam_entries: int
    max_layers: int
    max_logits: int
    clock_hz: int
    baud: int
    ice40: bool = False
    pool_width: int = 32
    pool_blocks: int = 2
    dataflow: str = "systolic"
    requant_interval: int = 1

    @property
    def acc_width(self):
        """Signed accumulator width: no sum of ``max_reduction`` int8 products overflows."""
        return (self.max_reduction * (1 << 14)).bit_length() + 1

    @property
    def bias_width(self):
        """Signed bias width the requantiser adds exactly (the compiler checks every bias).

        Trained biases are far smaller than int32 (LeNet-5: |bias| < 2,000); as wide as the
        accumulator keeps the requantiser's multiplier ``(acc_width + 1) × M_BITS``.
        """
        return self.acc_width

    @property
    def act_addr_width(self):
        return (self.act_bytes - 1).bit_length()

    @property
    def weight_addr_width(self):
        return (self.weight_words - 1).bit_length()

    @property
    def multipliers(self):
        return self.rows * self.cols

    def with_(self, **changes):
        return replace(self, **changes)


CONFIGS = {
    # iCE40UP5K: an 8×1 array on 4 SB_MAC16 (two 8×8 products per block); 4 SPRAMs give one
    # 64-bit word (8 weights) per cycle, which is also what FC layers need. An 8×2 array
    # (16 multipliers, all 8 SB_MAC16) is 1.25× faster per image but needs ~6,300 logic
    # cells of 5,280; the link is the bottleneck either way (0.9 vs 1.6 ms of compute
    # against 2.6 ms of UART per image). The requantiser takes 2 cycles per value, free
    # while every tile has reduction >= 16 (LeNet-5's smallest is 25), and the array
    # broadcasts its operands (no pipeline registers between PEs) to save 270 cells.
    # nextpnr reaches ~27.5 MHz (critical path: the requantiser's multiply-accumulate), so
    # the PLL makes 24 MHz; 57k cycles = 2.4 ms per image, still under the UART's 2.8 ms.
    "icebreaker": AcceleratorConfig(
        name="icebreaker", rows=8, cols=1, max_reduction=1024,
        weight_words=16384, act_bytes=4096, qparam_entries=256, max_layers=8,
        max_logits=16, clock_hz=24_000_000, baud=3_000_000, ice40=True,
        dataflow="broadcast", requant_interval=2),
    # ECP5-85F: 156 18×18 multipliers and 3.7 Mbit of EBR; a 16×4 array (16×8 fits on
    # paper but nextpnr does not finish routing it; 16×4 routes at ~62 MHz in ~5 min).
    "ulx3s-85f": AcceleratorConfig(
        name="ulx3s-85f", rows=16, cols=4, max_reduction=4096,
        weight_words=8192, act_bytes=12288, qparam_entries=1024, max_layers=16,
        max_logits=64, clock_hz=50_000_000, baud=3_000_000, ice40=False,
        pool_width=64, pool_blocks=4),
}


def get_config(name):
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown board/config {name!r}; choose one of "
                         f"{', '.join(CONFIGS)}") from None
