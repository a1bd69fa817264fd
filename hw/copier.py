"""The copy engine: runs a :class:`~.program.CopyDescriptor`, one byte per cycle.

The core uses it to move activation bytes between the block RAM and the activation
window (``AcceleratorConfig.act_window``): an image slot or a layer's bands in and out
of the block RAM. The copier sees the 16-bit activation address space as one byte read
port and one byte write port; the core maps each address to the block RAM or the weight
memory (:class:`~.core.Core`).
"""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .config import ACT_SPACE
from .memories import read_port_signature, write_port_signature
from .program import CopyDescriptor, field_widths

__all__ = ["Copier", "copy_reference"]

_FIELDS = field_widths(CopyDescriptor)


def copy_reference(act, desc, image_base=0):
    """What :class:`Copier` does to ``act`` (a list of :data:`ACT_SPACE` bytes), in place.

    ``desc`` is a dict of :class:`CopyDescriptor` fields (``segments, length,
    src_stride, dst_stride, src_base, dst_base, in_from_image``).
    """
    src = image_base if desc.get("in_from_image") else desc["src_base"]
    for s in range(desc["segments"]):
        for i in range(desc["length"]):
            act[(desc["dst_base"] + s * desc["dst_stride"] + i) % ACT_SPACE] = \
                act[(src + s * desc["src_stride"] + i) % ACT_SPACE]


class Copier(wiring.Component):
    """Copy ``segments`` blocks of ``length`` bytes: ``for s: for i: act[dst_base +
    s*dst_stride + i] = act[src_base + s*src_stride + i]`` (16-bit addresses, modulo
    65536; with ``in_from_image`` the source base is ``image_base``).

    Control, like :class:`~.datapath.Datapath`: hold ``desc`` and ``image_base`` stable
    and pulse ``start`` while idle; ``done`` pulses once the last byte is written
    (:func:`copy_reference` is the exact model). A copy of zero bytes (``length`` or
    ``segments`` zero) writes nothing.

    Latency and throughput: the reads of the source bytes are issued one per cycle from
    the cycle after ``start``; each byte is written in the cycle after its read (the
    read port's 1-cycle latency), so ``done`` pulses ``segments*length + 2`` cycles after
    ``start`` (1 for a copy of zero bytes). The read of byte ``n + 1`` and the write of
    byte ``n`` go out in the same cycle (a copy onto its own source is not defined).

    Attributes
    ----------
    desc : In(CopyDescriptor)
    image_base : In(16)
    start : In(1), done : Out(1), busy : Out(1)
    rd : Out(read port)
        Activation byte reads (16-bit address, data one cycle after ``en``).
    wr : Out(write port)
        Activation byte writes (16-bit address), written on the edge when ``en``.
    """

    def __init__(self):
        super().__init__({
            "desc": In(CopyDescriptor),
            "image_base": In(_FIELDS["src_base"]),
            "start": In(1),
            "done": Out(1),
            "busy": Out(1),
            "rd": Out(read_port_signature(ACT_SPACE, unsigned(8))),
            "wr": Out(write_port_signature(ACT_SPACE, unsigned(8))),
        })

    def elaborate(self, platform):
        m = Module()
        desc = self.desc
        i = Signal.like(desc.length)          # byte of the segment being read
        seg = Signal.like(desc.segments)      # its segment
        src_row = Signal(16)                  # first byte of the segment (source)
        dst_row = Signal(16)                  # first byte of the segment (destination)
        reading = Signal()
        writing = Signal()                    # a byte read last cycle is written now
        i_next = Signal(len(i) + 1)
        m.d.comb += [
            i_next.eq(i + 1),
            self.busy.eq(reading | writing),
            self.rd.addr.eq(src_row + i), self.rd.en.eq(reading),
            self.wr.data.eq(self.rd.data), self.wr.en.eq(writing),
        ]
        m.d.sync += [writing.eq(reading), self.done.eq(writing & ~reading)]
        with m.If(reading):
            # The write address is registered with the read: it goes out a cycle later.
            m.d.sync += [self.wr.addr.eq(dst_row + i), i.eq(i_next)]
            with m.If(i_next == desc.length):
                m.d.sync += [i.eq(0), seg.eq(seg + 1),
                             src_row.eq(src_row + desc.src_stride),
                             dst_row.eq(dst_row + desc.dst_stride)]
                with m.If(seg + 1 == desc.segments):
                    m.d.sync += reading.eq(0)
        with m.If(self.start):
            empty = (desc.length == 0) | (desc.segments == 0)
            m.d.sync += [
                i.eq(0), seg.eq(0), reading.eq(~empty), self.done.eq(empty),
                src_row.eq(Mux(desc.in_from_image, self.image_base, desc.src_base)),
                dst_row.eq(desc.dst_base),
            ]
        return m
