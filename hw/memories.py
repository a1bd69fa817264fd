"""On-chip memories of the core: weights, activations, qparams, program.

Every memory is a :class:`wiring.Component` with read and write ports as signature
members (:func:`read_port_signature`, :func:`write_port_signature`), so the units that
use them (datapath, sequencer, host writes) only see ports and the core owns the storage.

All read ports have the same timing: ``data`` shows the word at the ``addr`` presented in
the previous cycle in which ``en`` was high, and holds while ``en`` is low (a 1-cycle
synchronous read with a clock enable, which both iCE40 EBR/SPRAM and ECP5 EBR provide).
"""

from amaranth.hdl import Array, C, Cat, ClockSignal, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .toolchain import INIT_DONT_CARE

__all__ = ["read_port_signature", "write_port_signature", "weight_write_signature",
           "one_or_array", "port_list", "Ram",
           "WeightMemory", "SPRAM_DEPTH", "SPRAM_WIDTH"]

#: SB_SPRAM256KA: 16K words of 16 bits.
SPRAM_DEPTH, SPRAM_WIDTH = 16384, 16


def _bits(depth):
    return max(1, (depth - 1).bit_length())


def read_port_signature(depth, shape):
    """A read port seen from its user: ``addr``, ``en`` out; ``data`` (1 cycle later) in."""
    return wiring.Signature({"addr": Out(_bits(depth)), "en": Out(1), "data": In(shape)})


def write_port_signature(depth, shape):
    """A write port seen from its user: ``addr``, ``data``, ``en`` out (written on the edge)."""
    return wiring.Signature({"addr": Out(_bits(depth)), "data": Out(shape), "en": Out(1)})


def one_or_array(member, count):
    """``member`` (a port), or an array of ``count`` of them when ``count`` > 1: one per
    bank or lane, a lone port keeping its plain name. :func:`port_list` lists either."""
    return member if count == 1 else member.array(count)


def port_list(ports):
    """A :func:`one_or_array` member's ports as a list."""
    return list(ports) if isinstance(ports, (list, tuple)) else [ports]


def weight_write_signature(chunks):
    """:class:`WeightMemory`'s write port: :func:`write_port_signature` of ``chunks``
    64-bit chunks plus ``mask``, one enable per byte (all set unless driven)."""
    return wiring.Signature({**dict(write_port_signature(chunks, unsigned(64)).members),
                             "mask": Out(8, init=0xFF)})


class Ram(wiring.Component):
    """``depth`` words of ``shape``: one write port, ``copies`` identical read ports.

    Each read port has its own copy of the storage (so the copies map to separate block
    RAMs with one read and one write port each); every write goes to all copies. The
    activation memory uses ``copies = cols`` to read one byte per array column per cycle.

    Latency 1 cycle (see module docstring); one write and ``copies`` reads per cycle.
    A read of the address being written returns the old word, unless ``rw_exclusive``.

    Parameters
    ----------
    shape : shape-castable
    depth : int
    copies : int
    init : list, optional
        Initial contents (simulation and FPGA configuration), e.g. for tests.
    rw_exclusive : bool
        The user guarantees that the data of a read that met a write of the same word is
        never used (e.g. the host writes the memory only while the core is idle, and only
        a run uses what it reads), and that ``data`` is never used before a first read
        with ``en``. Such a read's data is then undefined on the FPGA (the simulator
        still returns the old word), and synthesis maps the storage to block RAM as it
        is (yosys attribute ``no_rw_check``; the read register has no power-up value):
        an iCE40 EBR has no defined read-during-write result, and yosys otherwise
        emulates the old word with a register on the write port and a bypass
        multiplexer on the read data.
    ram_style : str, optional
        The storage synthesis should use (yosys attribute ``ram_style``: ``"block"``,
        ``"distributed"``, ``"logic"``); default its own choice.
    reads_per_copy : int
        1, or 2 for a memory written only while nobody uses its reads: a copy's second
        read port (``rd[2*i + 1]``) is then the write port's block RAM port, its address
        the write's while ``wr.en`` is high, so a read in a cycle with a write returns
        an unrelated word. Needs ``rw_exclusive`` and one bank.
    banks : int
        A power of two dividing ``depth``: word ``a`` is in bank ``a mod banks``, and
        ``wr`` is then one write port per bank (``wr[b]`` writes only words of bank ``b``;
        its address's low bits are ignored), so ``banks`` words of different banks are
        written in one cycle. Each copy holds every bank (the same storage in total) and
        a read picks its bank's word after the block RAMs' output registers.
    """
    def __init__(self, shape, depth, *, copies=1, init=(), rw_exclusive=False,
                 ram_style=None, banks=1, reads_per_copy=1):
        if not isinstance(depth, int) or depth < 1:
            raise TypeError(f"Memory depth must be a positive integer, not {depth!r}")
        if not isinstance(copies, int) or copies < 1:
            raise TypeError(f"Read-port copies must be a positive integer, not {copies!r}")
        if (not isinstance(banks, int) or banks < 1 or banks & (banks - 1) or
                depth % banks):
            raise ValueError(f"Memory banks must be a power of two dividing the depth "
                             f"{depth}, not {banks!r}")
        if reads_per_copy not in (1, 2):
            raise ValueError(f"A memory copy serves 1 or 2 read ports, not {reads_per_copy!r}")
        if reads_per_copy == 2 and (not rw_exclusive or banks != 1):
            raise ValueError("A copy's second read port shares the write port's address: "
                             "it needs rw_exclusive and one bank")
        self._shape, self._depth, self._copies, self._init = shape, depth, copies, list(init)
        self._reads_per_copy = reads_per_copy
        self._banks = banks
        self._rw_exclusive = bool(rw_exclusive)
        self._attrs = {"no_rw_check": 1} if rw_exclusive else {}
        if ram_style is not None:
            self._attrs["ram_style"] = ram_style
        super().__init__({
            "rd": In(read_port_signature(depth, shape)).array(copies * reads_per_copy),
            "wr": one_or_array(In(write_port_signature(depth, shape)), banks),
        })

    @property
    def write_ports(self):
        """The write ports, one per bank (``wr`` as a list)."""
        return port_list(self.wr)

    def elaborate(self, platform):
        m = Module()
        banks, per_copy = self._banks, self._reads_per_copy
        low = (banks - 1).bit_length()
        for i in range(self._copies):
            ports = range(i * per_copy, (i + 1) * per_copy)
            words = {n: [] for n in ports}
            for b, wr in enumerate(self.write_ports):
                name = f"mem{i}" if banks == 1 else f"mem{i}_{b}"
                mem = m.submodules[name] = memory.Memory(
                    shape=self._shape, depth=self._depth // banks,
                    init=self._init[b::banks], attrs=self._attrs)
                wp = mem.write_port()
                addrs = {n: self.rd[n].addr[low:] for n in ports}
                w_addr = wr.addr[low:]
                if per_copy == 2:
                    # One address for the write and the second read, so that yosys puts
                    # both on one block RAM port and the other read on the second port.
                    w_addr = addrs[ports[1]] = Signal.like(wp.addr, name=f"mem{i}_port_addr")
                    m.d.comb += w_addr.eq(Mux(wr.en, wr.addr, self.rd[ports[1]].addr))
                m.d.comb += [wp.addr.eq(w_addr), wp.data.eq(wr.data), wp.en.eq(wr.en)]
                for n in ports:
                    words[n].append(self._read(m, mem, addrs[n], self.rd[n].en,
                                               f"rd{n}_data" if banks == 1 else f"rd{n}_data{b}"))
            for n in ports:
                rd = self.rd[n]
                if banks == 1:
                    m.d.comb += rd.data.eq(words[n][0])
                else:
                    # The bank is picked after the read registers (a multiplexer in front
                    # of them would keep yosys from merging them into the block RAMs).
                    bank = Signal(low, name=f"rd{n}_bank")
                    with m.If(rd.en):
                        m.d.sync += bank.eq(rd.addr[:low])
                    m.d.comb += rd.data.eq(Array(words[n])[bank])
        return m

    def _read(self, m, mem, addr, en, name):
        """A read port of ``mem`` at ``addr``: its data, a register loaded while ``en``."""
        if self._rw_exclusive:
            # yosys applies no_rw_check when it merges a register into an asynchronous
            # read port (memory_dff), not to a synchronous port. Without a reset or a
            # power-up value, like a synchronous port's data.
            rp = mem.read_port(domain="comb")
            data = Signal(self._shape, reset_less=True, name=name, attrs={INIT_DONT_CARE: 1})
            m.d.comb += rp.addr.eq(addr)
            with m.If(en):
                m.d.sync += data.eq(rp.data)
            return data
        rp = mem.read_port()
        m.d.comb += [rp.addr.eq(addr), rp.en.eq(en)]
        return rp.data


class WeightMemory(wiring.Component):
    """Weight memory: ``depth`` words of ``rows`` int8 weights, written in 64-bit chunks.

    Host chunk ``a`` is part ``a % n`` (bytes ``8*(a % n)`` … ``+7``, i.e. rows
    ``8*(a%n)`` … ``+7``) of word ``a // n``, ``n = rows / 8`` (a power of two). A write
    stores byte ``b`` of the chunk only where ``wr.mask`` bit ``b`` is set (``0xFF``: the
    whole chunk; one bit: a single byte, e.g. an activation byte in the window).

    With ``ice40=True`` the storage is four SB_SPRAM256KA side by side (16K × 64 bits,
    ``rows == 8``), hand-instantiated so the iCE40UP5K's 128 KB single-port RAMs hold
    the weights instead of scarce EBR. Single port: a write in the same cycle as a read
    wins and the read returns garbage; the core only writes while idle. Otherwise
    :class:`amaranth.lib.memory.Memory` (block RAM).

    Read latency 1 cycle, one word per cycle (see module docstring).
    """
    def __init__(self, *, rows, depth, ice40=False, init=()):
        if not isinstance(rows, int) or rows < 8 or rows % 8 or (rows // 8) & (rows // 8 - 1):
            raise ValueError(f"Weight rows must be 8 times a power of two, not {rows!r}")
        if ice40 and (rows != 8 or depth > SPRAM_DEPTH):
            raise ValueError(f"iCE40 SPRAM weight memory holds up to {SPRAM_DEPTH} words of "
                             f"8 weights, not {depth} words of {rows}")
        if ice40 and init:
            raise ValueError("SB_SPRAM256KA cannot be initialised; write it at run time")
        self._rows, self._depth, self._ice40, self._init = rows, depth, ice40, list(init)
        self._parts = rows // 8
        super().__init__({
            "rd": In(read_port_signature(depth, unsigned(rows * 8))),
            "wr": In(weight_write_signature(depth * self._parts)),
        })

    def elaborate(self, platform):
        m = Module()
        part_bits = (self._parts - 1).bit_length()
        word = self.wr.addr[part_bits:]
        if self._ice40:
            addr = Signal(14)
            m.d.comb += addr.eq(Mux(self.wr.en, word, self.rd.addr))
            dout = Signal(64)
            for i in range(4):
                m.submodules[f"spram{i}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=addr, i_DATAIN=self.wr.data[16 * i:16 * (i + 1)],
                    # One mask bit per nibble: bytes 2i (low) and 2i + 1 of the chunk.
                    i_MASKWREN=Cat(self.wr.mask[2 * i], self.wr.mask[2 * i],
                                   self.wr.mask[2 * i + 1], self.wr.mask[2 * i + 1]),
                    i_WREN=self.wr.en,
                    i_CHIPSELECT=self.wr.en | self.rd.en, i_CLOCK=ClockSignal(),
                    i_STANDBY=C(0, 1), i_SLEEP=C(0, 1), i_POWEROFF=C(1, 1),
                    o_DATAOUT=dout[16 * i:16 * (i + 1)])
            m.d.comb += self.rd.data.eq(dout)
        else:
            mem = m.submodules.mem = memory.Memory(
                shape=unsigned(self._rows * 8), depth=self._depth, init=self._init)
            wp = mem.write_port(granularity=8)
            rp = mem.read_port()
            m.d.comb += [
                wp.addr.eq(word), rp.addr.eq(self.rd.addr), rp.en.eq(self.rd.en),
                self.rd.data.eq(rp.data),
            ]
            for p in range(self._parts):
                part = self.wr.en & (self.wr.addr[:part_bits] == p if part_bits else 1)
                m.d.comb += [wp.data[64 * p:64 * (p + 1)].eq(self.wr.data),
                             wp.en[8 * p:8 * (p + 1)].eq(Mux(part, self.wr.mask, 0))]
        return m
