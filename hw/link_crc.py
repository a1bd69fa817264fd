"""The link's one CRC engine, shared by its stages (they never feed it in the same cycle).

See :class:`CrcEngine`; the CRC itself is :data:`.protocol.CRC`.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from . import protocol as proto

__all__ = ["CrcFeed", "CrcEngine", "crc_next", "crc_step"]


class CrcFeed(wiring.Signature):
    """One client's port into the :class:`CrcEngine`, seen from the client.

    Members
    -------
    valid : Out(1)
        ``data`` is a byte of the frame: fold it into the CRC.
    data : Out(8)
    load : Out(1)
        Start a frame: set the CRC to ``init`` (the value after the frame's constant
        sync byte, so the sync byte itself is never fed).
    init : Out(16)
    """

    def __init__(self):
        super().__init__({"valid": Out(1), "data": Out(8), "load": Out(1), "init": Out(16)})


class CrcEngine(wiring.Component):
    """The reflected CRC-16 of :data:`.protocol.CRC`, one byte per cycle, for ``feeds``
    clients that take turns (at most one drives ``valid`` or ``load`` in a cycle; the
    first has priority otherwise).

    One engine instead of one per stage: a CRC-16 update is 16 XOR trees over 24 inputs,
    the largest piece of logic in the link. The update has no ``start`` multiplexer in
    front (unlike ``lib.crc.Processor``): ``load`` sets the register instead.

    Latency: a byte given in cycle ``t`` is in ``value`` from cycle ``t + 2`` (it is
    registered first: the clients' state decoding and byte multiplexer in front of the
    XOR trees would otherwise be the link's longest path); a ``load`` in cycle ``t``
    shows in cycle ``t + 1``. Throughput: one byte per cycle.

    Parameters
    ----------
    feeds : int
        Number of clients.

    Attributes
    ----------
    feed : In(CrcFeed).array(feeds)
        The clients' ports.
    value : Out(16)
        The CRC register: the CRC of the bytes fed since the last ``load``.
    zero : Out(1)
        ``value == 0``: the residue of a frame followed by its own CRC.
    """

    def __init__(self, feeds):
        if not isinstance(feeds, int) or feeds < 1:
            raise ValueError(f"feeds must be a positive integer, not {feeds!r}")
        _check_crc_parameters()
        self._feeds = feeds
        super().__init__({
            "feed": In(CrcFeed()).array(feeds),
            "value": Out(16),
            "zero": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        valid, data, load, init = Signal(), Signal(8), Signal(), Signal(16)
        m.d.comb += [valid.eq(Cat(f.valid for f in self.feed).any()),
                     load.eq(Cat(f.load for f in self.feed).any())]
        for f in reversed(self.feed):       # later statements win: feed[0] has priority
            with m.If(f.valid):
                m.d.comb += data.eq(f.data)
            with m.If(f.load):
                m.d.comb += init.eq(f.init)
        valid_r, data_r = Signal(), Signal(8)
        m.d.sync += [valid_r.eq(valid), data_r.eq(data)]
        with m.If(valid_r):
            m.d.sync += self.value.eq(crc_next(self.value, data_r))
        with m.Elif(load):
            m.d.sync += self.value.eq(init)
        m.d.comb += self.zero.eq(self.value == 0)
        return m


def _check_crc_parameters():
    alg = proto.CRC.algorithm
    if not (alg.crc_width == 16 and proto.CRC.data_width == 8 and alg.reflect_input and
            alg.reflect_output and alg.initial_crc == 0 and alg.xor_output == 0):
        raise NotImplementedError(f"the link's CRC engine computes reflected CRC-16s with "
                                  f"initial value and output XOR 0, not {alg!r}")


def crc_step(state, byte):
    """One byte of the reflected CRC on integers (the register is the CRC itself)."""
    poly = int(f"{proto.CRC.algorithm.polynomial:016b}"[::-1], 2)
    state ^= byte
    for _ in range(8):
        state = (state >> 1) ^ (poly if state & 1 else 0)
    return state


def crc_next(state, byte):
    """The CRC register after ``byte``: integers in, integer out; else an expression.

    The update is linear, so each bit is the XOR of the state and data bits whose unit
    vectors set it.
    """
    _check_crc_parameters()
    if isinstance(state, int) and isinstance(byte, int):
        return crc_step(state, byte)
    bits = []
    for i in range(16):
        terms = [state[j] for j in range(16) if crc_step(1 << j, 0) >> i & 1]
        terms += [byte[j] for j in range(8) if crc_step(0, 1 << j) >> i & 1]
        bit = terms[0]
        for t in terms[1:]:
            bit = bit ^ t
        bits.append(bit)
    return Cat(*bits)
