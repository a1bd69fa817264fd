"""The link's command handler: checked WRITE, RUN and RESULT commands → the core.

See :class:`CommandHandler`; the commands are defined in :mod:`.protocol`.
"""

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from . import protocol as proto
from .link_checker import chunk_addr_bits
from .link_crc import CrcFeed
from .memories import Ram
from .program import Space, StartCommand, WriteCommand

__all__ = ["CommandHandler"]


class CommandHandler(wiring.Component):
    """Execute a command the checker accepted, on the core's host interface.

    A WRITE's chunk bytes arrive on ``data`` while the frame is received and wait in a
    :data:`protocol.MAX_CHUNKS` × 8-byte buffer (one EBR) until the frame is checked, so
    a damaged frame never reaches the core. ``do_write`` then commits them: the buffer
    is read back byte by byte into 64-bit chunks (byte 0 = LSBs), each byte fed to the
    CRC engine (the data CRC the response carries: the engine starts from the checked
    frame's residue 0), each chunk written to ``wr`` at the next address. ``do_run``
    offers ``start`` until the core takes it; ``do_result`` waits until the core is
    idle; ``do_abort`` pulses the core's ``abort`` (registered) and waits until it is
    idle. ``done`` then pulses with the response's ``status`` (``OK``, or ``WATCHDOG`` for
    a RESULT of a run the core stopped) and payload ``length``, registered: the core's
    handshake (``wr.ready``, ``start.ready``, ``busy``) never reaches the response
    encoder in the same cycle (on the iCEBreaker that path was the critical one).

    Latency and throughput: a WRITE commits one chunk per 17 cycles (8 buffer reads of 2
    cycles, plus the ``wr`` transfer, more if the core stalls). ``done`` comes 1 cycle
    after the command's end: the last chunk's transfer (WRITE), the core taking ``start``
    (RUN), ``busy`` low (RESULT, ABORT). ``data`` takes one byte per cycle.

    Parameters
    ----------
    config : AcceleratorConfig
        Memory sizes (the WRITE address width).

    Attributes
    ----------
    data : In(stream.Signature(8, always_ready=True))
        A WRITE's chunk bytes, from the frame decoder.
    begin : In(1)
        Pulse: a frame begins (its bytes go to the start of the buffer).
    args : In(ARGS_BYTES * 8)
        The request's arguments.
    n_chunks : In(range(MAX_CHUNKS + 1))
        Chunks of the WRITE.
    do_write, do_run, do_result, do_abort : In(1)
        Pulse: execute the command.
    crc : Out(CrcFeed)
    wr, start : Out(stream of WriteCommand, StartCommand); busy, fault : In(1);
    abort : Out(1)
        The core's host interface (the link's other part of it is the response encoder's).
    done : Out(1), status : Out(Status), length : Out(16)
        Pulse: the command is executed; answer ``status`` with ``length`` payload bytes.
    loaded : Out(1)
        A layer program was written (RUN is refused before).
    has_run : Out(1)
        A run was started and not aborted (RESULT is refused before).
    """

    def __init__(self, config):
        self._config = config
        super().__init__({
            "data": In(stream.Signature(8, always_ready=True)),
            "begin": In(1),
            "args": In(proto.ARGS_BYTES * 8),
            "n_chunks": In(range(proto.MAX_CHUNKS + 1)),
            "do_write": In(1), "do_run": In(1), "do_result": In(1), "do_abort": In(1),
            "crc": Out(CrcFeed()),
            "wr": Out(stream.Signature(WriteCommand)),
            "start": Out(stream.Signature(StartCommand)),
            "busy": In(1), "fault": In(1), "abort": Out(1),
            "done": Out(1), "status": Out(proto.Status), "length": Out(16),
            "loaded": Out(1), "has_run": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        buf_depth = proto.MAX_CHUNKS * proto.CHUNK_BYTES
        # Received while idle, read back only while committing (the decoder holds the
        # next command until this one is answered): no read's data is used whose byte
        # was being written.
        m.submodules.buf = buf = Ram(unsigned(8), buf_depth, rw_exclusive=True)
        wport, rport = buf.wr, buf.rd[0]
        ptr = Signal(range(buf_depth))          # buffer address: receive, then commit
        addr_bits = chunk_addr_bits(self._config)
        addr = Signal(addr_bits)                # the chunk being committed
        chunk = Signal(64)
        wargs = proto.WriteArgs(self.args)
        res_args = proto.ResultArgs(self.args)
        # Payloads are driven in every state (only ``valid`` and ``en`` depend on it):
        # gating them would cost a LUT per bit for nothing.
        m.d.comb += [
            wport.addr.eq(ptr), wport.data.eq(self.data.payload), wport.en.eq(self.data.valid),
            rport.addr.eq(ptr), rport.en.eq(1), self.crc.data.eq(rport.data),
            self.wr.payload.space.eq(wargs.space), self.wr.payload.addr.eq(addr),
            self.wr.payload.data.eq(chunk),
            self.start.payload.image_base.eq(proto.RunArgs(self.args).image_base),
        ]
        with m.If(self.begin):
            m.d.sync += ptr.eq(0)
        with m.Elif(self.data.valid):
            m.d.sync += ptr.eq(ptr + 1)

        # The command's end, registered into ``done``/``status``/``length``.
        finish, status, length = Signal(), Signal(proto.Status), Signal(16)
        m.d.sync += [self.done.eq(finish), self.status.eq(status), self.length.eq(length)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.do_write):
                    # Only the bits a valid address uses (the checker tested the rest).
                    m.d.sync += [ptr.eq(0), addr.eq(wargs.addr[:addr_bits])]
                    m.next = "COMMIT_RD"
                with m.If(self.do_run):
                    m.next = "START"
                with m.If(self.do_result):
                    m.next = "WAIT"
                with m.If(self.do_abort):
                    m.d.sync += [self.abort.eq(1), self.has_run.eq(0)]
                    m.next = "ABORT"
            # After chunk k is latched, ptr = 8 (k + 1).
            with m.State("COMMIT_RD"):
                m.next = "COMMIT_LATCH"
            with m.State("COMMIT_LATCH"):
                m.d.comb += self.crc.valid.eq(1)
                m.d.sync += [chunk.eq((chunk >> 8) | (rport.data << 56)), ptr.eq(ptr + 1)]
                m.next = "COMMIT_RD"
                with m.If(ptr[:3] == 7):            # the chunk's last byte
                    m.next = "COMMIT_WR"
            with m.State("COMMIT_WR"):
                m.d.comb += self.wr.valid.eq(1)
                with m.If(self.wr.ready):
                    m.d.sync += addr.eq(addr + 1)
                    m.next = "COMMIT_RD"
                    # n_chunks <= MAX_CHUNKS: its low bits name the last chunk uniquely.
                    with m.If(ptr[3:] == self.n_chunks[:len(ptr) - 3]):
                        with m.If(wargs.space == Space.PROGRAM):
                            m.d.sync += self.loaded.eq(1)
                        m.d.comb += [finish.eq(1), length.eq(2)]
                        m.next = "IDLE"
            with m.State("START"):
                m.d.comb += self.start.valid.eq(1)
                with m.If(self.start.ready):
                    m.d.sync += self.has_run.eq(1)
                    m.d.comb += finish.eq(1)
                    m.next = "IDLE"
            with m.State("WAIT"):
                with m.If(~self.busy):
                    m.d.comb += finish.eq(1)
                    with m.If(self.fault):
                        m.d.comb += status.eq(proto.Status.WATCHDOG)
                    with m.Else():
                        m.d.comb += length.eq(res_args.n_logits + 4 * res_args.n_counters)
                    m.next = "IDLE"
            with m.State("ABORT"):                  # ``abort`` is high for this cycle
                m.d.sync += self.abort.eq(0)
                m.next = "WAIT_IDLE"
            with m.State("WAIT_IDLE"):
                with m.If(~self.busy):
                    m.d.comb += finish.eq(1)
                    m.next = "IDLE"
        return m
