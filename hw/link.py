"""The link: frame decoder, checker, command handler, response encoder and response queue
between the UART and the core.

The wire format and the commands are defined in :mod:`.protocol`; this module and its
stages (``link_decoder``, ``link_checker``, ``link_handler``, ``link_encoder``, sharing
the CRC engine of ``link_crc``) are their gateware. See :class:`Link`.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .link_checker import FrameChecker
from .link_crc import CrcEngine
from .link_decoder import FrameDecoder
from .link_encoder import ResponseEncoder
from .link_handler import CommandHandler
from .link_queue import ResponseQueue
from .program import HostInterface

__all__ = ["Link"]


class Link(wiring.Component):
    """Decode request frames from ``rx``, drive the core, answer on ``tx``.

    Four stages take turns on a frame, sharing one :class:`~.link_crc.CrcEngine`:

    1. :class:`~.link_decoder.FrameDecoder` receives it completely — header and
       arguments into registers, a WRITE's chunks into the command handler's buffer —
       skipping bytes outside a frame until the next sync byte (frames never time out,
       see :mod:`.protocol`);
    2. :class:`~.link_checker.FrameChecker` checks its CRC, length and arguments before
       anything reaches the core, so a damaged frame never alters what is loaded;
    3. :class:`~.link_handler.CommandHandler` executes a valid WRITE, RUN, RESULT or
       ABORT on the core's host interface (``wr``, ``start``, ``busy``, ``abort``,
       ``fault``);
    4. :class:`~.link_encoder.ResponseEncoder` writes the response into the
       :class:`~.link_queue.ResponseQueue`, reading a RESULT's payload from the core
       (``rd``, ``rd_data``) as it goes; the queue sends it on ``tx``, then pads (see
       :mod:`.protocol`). The decoder takes the next frame once the response is queued,
       so a RUN after a RESULT starts while the RESULT's answer is still on the wire.

    Every complete frame gets exactly one response (see :mod:`.protocol`). Every
    decision is taken from flip-flops (lengths, chunk counts and range checks are
    registered while the frame arrives; counters are compared for equality; the core's
    ``busy`` is registered for the checker), so no path crosses more than one adder.

    Latency and throughput: the decoder takes one byte per cycle (far above any UART
    rate); a frame is checked 2 cycles after its last byte; the stages' docstrings give
    the rest (a WRITE commits one chunk per 17 cycles).

    Parameters
    ----------
    config : AcceleratorConfig
        Memory sizes (for the address checks), the identity to report, the padding.

    Attributes
    ----------
    rx : In(stream.Signature(8))
        Bytes from the UART receiver, through a FIFO (``BoardTop``): ready only while a
        frame is being received or awaited, i.e. not while a command executes or a
        response is queued; the FIFO holds what arrives meanwhile (the host's window
        rule in :mod:`.protocol` bounds it).
    tx : Out(stream.Signature(8))
        Bytes to the UART transmitter.
    core : In(HostInterface)
        The core's host interface, driven from the host side.
    idle : Out(1)
        Waiting for a byte (of a frame or between frames), nothing in progress or
        queued: lets a simulator skip idle time.
    """

    def __init__(self, config):
        self._config = config
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "core": In(HostInterface()),
            "idle": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        m.submodules.crc = crc = CrcEngine(feeds=3)
        m.submodules.decoder = dec = FrameDecoder()
        m.submodules.checker = chk = FrameChecker(cfg)
        m.submodules.handler = hnd = CommandHandler(cfg)
        m.submodules.encoder = enc = ResponseEncoder(cfg)
        m.submodules.queue = queue = ResponseQueue(cfg.tx_pad_bytes)
        core = self.core

        wiring.connect(m, wiring.flipped(self.rx), dec.rx)
        wiring.connect(m, dec.data, hnd.data)
        wiring.connect(m, hnd.wr, wiring.flipped(core.wr))
        wiring.connect(m, hnd.start, wiring.flipped(core.start))
        wiring.connect(m, enc.rd, wiring.flipped(core.rd))
        wiring.connect(m, wiring.flipped(core.rd_data), enc.rd_data)
        wiring.connect(m, enc.tx, queue.i)
        wiring.connect(m, queue.o, wiring.flipped(self.tx))
        for i, stage in enumerate([dec, hnd, enc]):
            wiring.connect(m, stage.crc, crc.feed[i])

        # The checker sees the core's busy a cycle late (registered: its decision is a
        # long priority chain into the response encoder). That never hides a busy core:
        # it becomes busy only by the handler's RUN, whose response outlasts the cycle.
        busy_r = Signal()
        m.d.sync += busy_r.eq(core.busy)
        m.d.comb += [
            chk.opcode.eq(dec.opcode), chk.length.eq(dec.length), chk.args.eq(dec.args),
            chk.crc_ok.eq(crc.zero), chk.busy.eq(busy_r),
            chk.loaded.eq(hnd.loaded), chk.has_run.eq(hnd.has_run),
            chk.check.eq(dec.end),

            hnd.begin.eq(dec.begin), hnd.args.eq(dec.args), hnd.n_chunks.eq(chk.n_chunks),
            hnd.do_write.eq(chk.do_write), hnd.do_run.eq(chk.do_run),
            hnd.do_result.eq(chk.do_result), hnd.do_abort.eq(chk.do_abort),
            hnd.busy.eq(core.busy), hnd.fault.eq(core.fault), core.abort.eq(hnd.abort),

            # The checker answers errors and IDENTIFY, the handler the executed commands.
            enc.start.eq(chk.respond | hnd.done),
            enc.status.eq(Mux(hnd.done, hnd.status, chk.status)),
            enc.length.eq(Mux(hnd.done, hnd.length, chk.resp_length)),
            enc.opcode.eq(dec.opcode), enc.args.eq(dec.args),
            enc.identity.eq(chk.is_identify), enc.result.eq(chk.is_result),
            enc.crc_value.eq(crc.value),

            queue.start.eq(enc.start), queue.done.eq(enc.done),
            dec.resume.eq(enc.done),
            self.idle.eq(dec.idle & ~queue.busy),
        ]
        return m
