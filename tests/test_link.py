"""Protocol round trips through the gateware: host → UART → link → core → UART → host.

``BoardTop`` runs in the Amaranth simulator with its real UART at 4 clocks per bit and
a small stand-in for the core (:class:`FakeCore`, the core's host interface with
predictable answers), so every command and every fault of the wire protocol is checked
bit-level here; ``test_simboard.py`` repeats the important ones against the real core.
"""

import random

import pytest
from amaranth.hdl import Array, C, Module, Signal
from amaranth.lib import wiring

from fpgacnn.hw import protocol as proto
from fpgacnn.hw.config import get_config
from fpgacnn.hw.program import HostInterface, ReadSpace, Space
from fpgacnn.hw.top import BoardTop
from fpgacnn.sim.amaranth_sim import run_simulation

DIVISOR = 4
# A small board: same memories as the iCEBreaker, a clock that makes the divisor 4, a
# short padding after each response (the Python simulator is slow; the simulated board
# runs the real 510 bytes). No activation window: with it every 16-bit image base is
# valid (tests/test_core_window.py checks the window's ranges).
CONFIG = get_config("icebreaker").with_(clock_hz=4_000_000, baud=1_000_000, tx_pad_bytes=3,
                                        rx_fifo_bytes=512, act_window=False)


def fake_word(space, addr, base):
    """What FakeCore answers to a read of ``addr`` in ``space`` after a run from ``base``."""
    return (base * 0x9E37 + addr * 0x1F1 + space.value * 0x7777 + 0x12345678) & 0xFFFFFFFF


class FakeCore(wiring.Component):
    """The core's host interface with scripted behaviour (test double).

    ``start`` makes it busy for ``run_cycles`` (``abort`` ends that at once; a run from
    image base ``0xFF8`` ends with ``fault``, as one the core's watchdog stops); reads
    return :func:`fake_word`, IDENTITY reads the board's identity (as the core); ``wr.ready``
    is left undriven so the testbench can apply backpressure and record the beats, unless
    ``wr_ready`` (for Verilator, where nothing else drives it).
    """

    def __init__(self, run_cycles, *, wr_ready=False):
        self._run_cycles = run_cycles
        self._wr_ready = wr_ready
        super().__init__(HostInterface())

    def elaborate(self, platform):
        m = Module()
        count = Signal(range(self._run_cycles + 1))
        base = Signal(16)
        m.d.comb += self.start.ready.eq(~self.busy)
        if self._wr_ready:
            m.d.comb += self.wr.ready.eq(1)
        forever = Signal()
        with m.If(self.start.valid & self.start.ready):
            m.d.sync += [self.busy.eq(1), count.eq(self._run_cycles), self.fault.eq(0),
                         base.eq(self.start.payload.image_base),
                         forever.eq(self.start.payload.image_base == 0xFF8)]
        with m.Elif(self.abort):
            m.d.sync += [self.busy.eq(0), self.fault.eq(0)]
        with m.Elif(self.busy):
            m.d.sync += count.eq(count - 1)
            with m.If(count == 0):
                m.d.sync += [self.busy.eq(0), self.fault.eq(forever)]
        m.d.comb += self.rd.ready.eq(~self.rd_data.valid | self.rd_data.ready)
        identity = Array(C(word, 32) for word in proto.identity_words(CONFIG))
        rd = self.rd.payload
        with m.If(self.rd.valid & self.rd.ready):
            m.d.sync += self.rd_data.valid.eq(1)
            with m.If(rd.space == ReadSpace.IDENTITY):     # the core keeps the identity
                m.d.sync += self.rd_data.payload.data.eq(identity[rd.addr])
            with m.Else():
                m.d.sync += self.rd_data.payload.data.eq(
                    base * 0x9E37 + rd.addr * 0x1F1 + rd.space.as_value() * 0x7777 +
                    0x12345678)
        with m.Elif(self.rd_data.ready):
            m.d.sync += self.rd_data.valid.eq(0)
        return m


class LinkBench:
    """BoardTop + FakeCore driven bit-level through its UART pins.

    ``script(bench, ctx)`` sends frames with :meth:`send` and reads responses with
    :meth:`response`; every ``wr`` beat the core took is in :attr:`beats`.
    """

    def __init__(self, *, seed=0, run_cycles=200, backpressure=True,
                 rx_fifo=proto.RX_FIFO_BYTES):
        self.core = FakeCore(run_cycles)
        self.dut = BoardTop(CONFIG, core=self.core, rx_fifo=rx_fifo)
        self.seed, self.backpressure = seed, backpressure
        self.beats, self.received, self.done = [], bytearray(), False
        self.cycle, self.starts = 0, []         # cycles run; those the core took start

    async def send(self, ctx, raw, *, gap=0):
        for byte in bytes(raw):
            for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                ctx.set(self.dut.uart_rx, bit)
                for _ in range(DIVISOR):
                    await ctx.tick()
            for _ in range(gap):
                await ctx.tick()

    async def idle(self, ctx, cycles):
        for _ in range(cycles):
            await ctx.tick()

    async def response(self, ctx, *, limit=20_000):
        """Wait for one complete response frame and parse it (padding before it skipped)."""
        header = proto.struct_bytes(proto.ResponseHeader)
        for _ in range(limit):
            while self.received and self.received[0] == proto.FILL_BYTE:
                del self.received[0]
            if len(self.received) >= header:
                fields = proto.decode_struct(proto.ResponseHeader, self.received[:header])
                size = header + fields["length"] + 2
                if len(self.received) >= size:
                    raw = bytes(self.received[:size])
                    del self.received[:size]
                    return proto.parse_response(raw)
            await ctx.tick()
        raise AssertionError(f"no complete response after {limit} cycles; "
                             f"received {bytes(self.received).hex()}")

    async def transact(self, ctx, opcode, payload=b""):
        await self.send(ctx, proto.encode_request(opcode, payload))
        status, echo, data = await self.response(ctx)
        assert echo == opcode, (echo, opcode)
        return status, data

    async def _monitor(self, ctx):
        # Decode the board's TX pin: wait for a start bit, sample each bit mid-way.
        while not self.done:
            _, _, line = await ctx.tick().sample(self.dut.uart_tx)
            if line:
                continue
            for _ in range(DIVISOR // 2):
                await ctx.tick()
            byte = 0
            for i in range(8):
                for _ in range(DIVISOR):
                    await ctx.tick()
                byte |= ctx.get(self.dut.uart_tx) << i
            for _ in range(DIVISOR):
                await ctx.tick()
            assert ctx.get(self.dut.uart_tx) == 1, "board sent a byte without a stop bit"
            self.received.append(byte)

    async def _core_wr(self, ctx):
        rng = random.Random(self.seed)
        wr = self.core.wr
        while not self.done:
            ctx.set(wr.ready, rng.random() < 0.6 if self.backpressure else 1)
            _, _, valid, ready, payload = await ctx.tick().sample(wr.valid, wr.ready,
                                                                  wr.payload)
            if valid and ready:
                self.beats.append((Space(payload.space), payload.addr, payload.data))

    async def _clock(self, ctx):
        while not self.done:
            _, _, valid, ready = await ctx.tick().sample(self.core.start.valid,
                                                        self.core.start.ready)
            self.cycle += 1
            if valid and ready:
                self.starts.append(self.cycle)

    def run(self, script, name, *, max_cycles=200_000):
        async def main(ctx):
            ctx.set(self.dut.uart_rx, 1)
            await ctx.tick().repeat(4)
            try:
                await script(self, ctx)
            finally:
                self.done = True
        run_simulation(self.dut, [main, self._monitor, self._core_wr, self._clock], name=name,
                       max_cycles=max_cycles)


def chunks_bytes(chunks):
    return b"".join(c.to_bytes(8, "little") for c in chunks)


def test_identify(request):
    got = {}

    async def script(bench, ctx):
        got["r"] = await bench.transact(ctx, proto.Opcode.IDENTIFY)

    LinkBench().run(script, request.node.name)
    status, data = got["r"]
    assert status == proto.Status.OK
    assert proto.decode_struct(proto.Identity, data) == proto.identity_fields(CONFIG)


@pytest.mark.parametrize("seed", range(3))
def test_write_commits_exact_chunks(request, seed):
    rng = random.Random(seed)
    writes = []
    # Full 64-chunk frames are exercised on the simulated board (test_simboard.py), where
    # they are cheap; the Python simulator gets short ones.
    for n in [1, 5, 3]:
        space = rng.choice(list(Space))
        end = proto.space_chunks(CONFIG, space)
        addr = rng.choice([0, end - n, rng.randrange(end - n)])
        chunks = [rng.choice([0, (1 << 64) - 1, rng.getrandbits(64)]) for _ in range(n)]
        writes.append((space, addr, chunks))
    answers = []

    async def script(bench, ctx):
        for space, addr, chunks in writes:
            answers.append(await bench.transact(
                ctx, proto.Opcode.WRITE, proto.write_payload(space, addr, chunks)))

    bench = LinkBench(seed=seed)
    bench.run(script, request.node.name)
    expected = [(space, addr + i, c) for space, addr, chunks in writes
                for i, c in enumerate(chunks)]
    assert bench.beats == expected
    for (status, data), (_, _, chunks) in zip(answers, writes):
        assert status == proto.Status.OK
        assert int.from_bytes(data, "little") == proto.crc16(chunks_bytes(chunks))


def test_run_result_and_state_errors(request):
    cfg = CONFIG
    got = []
    program = proto.write_payload(Space.PROGRAM, 0, [0x1234])
    run = proto.encode_struct(proto.RunArgs, {"image_base": 0x0320})
    n_out = 300     # more than 8 bits of count; the activation memory holds up to 4 KB
    result = proto.encode_struct(proto.ResultArgs, {"n_logits": n_out,
                                                    "n_counters": 1 + cfg.max_layers})

    async def script(bench, ctx):
        got.append(await bench.transact(ctx, proto.Opcode.RUN, run))       # NOT_LOADED
        got.append(await bench.transact(ctx, proto.Opcode.RESULT, result))  # NO_RESULT
        got.append(await bench.transact(ctx, proto.Opcode.WRITE, program))
        got.append(await bench.transact(ctx, proto.Opcode.RUN, run))
        got.append(await bench.transact(ctx, proto.Opcode.RUN, run))       # BUSY
        got.append(await bench.transact(ctx, proto.Opcode.WRITE, program))  # BUSY
        got.append(await bench.transact(ctx, proto.Opcode.WRITE,            # images may
                                        proto.write_payload(Space.IMAGE, 7, [5])))
        got.append(await bench.transact(ctx, proto.Opcode.RESULT, result))  # waits

    bench = LinkBench(run_cycles=5000)
    bench.run(script, request.node.name)
    S = proto.Status
    assert [s for s, _ in got] == [S.NOT_LOADED, S.NO_RESULT, S.OK, S.OK, S.BUSY, S.BUSY,
                                   S.OK, S.OK]
    assert [b[0] for b in bench.beats] == [Space.PROGRAM, Space.IMAGE]
    data = got[-1][1]
    logits = [fake_word(ReadSpace.LOGITS, k, 0x320) & 0xFF for k in range(n_out)]
    counters = [fake_word(ReadSpace.COUNTERS, i, 0x320) for i in range(1 + cfg.max_layers)]
    assert data == bytes(logits) + b"".join(c.to_bytes(4, "little") for c in counters)


def test_answer_is_queued_and_the_next_request_taken(request):
    """The link takes the next request once a response is queued, not sent: a RUN right
    behind a RESULT starts while the RESULT's answer (41 bytes, as LeNet-5's with all
    its counters) is still on the wire, so the core does not idle for it. Fill bytes
    follow an answer once it is out (``tx_pad_bytes`` of them if nothing else is due),
    never inside one."""
    program = proto.write_payload(Space.PROGRAM, 0, [0x1234])
    runs = [proto.encode_struct(proto.RunArgs, {"image_base": base}) for base in (0, 0x320)]
    result = proto.encode_struct(proto.ResultArgs, {"n_logits": 10, "n_counters": 6})
    got, marks = [], {}

    async def script(bench, ctx):
        for opcode, payload in [(proto.Opcode.WRITE, program), (proto.Opcode.RUN, runs[0])]:
            await bench.send(ctx, proto.encode_request(opcode, payload))
            got.append((await bench.response(ctx))[:2])
        await bench.send(ctx, proto.encode_request(proto.Opcode.RESULT, result) +
                         proto.encode_request(proto.Opcode.RUN, runs[1]))
        got.append((await bench.response(ctx))[:2])
        marks["answer_out"] = bench.cycle
        got.append((await bench.response(ctx))[:2])
        await bench.idle(ctx, 20 * 10 * DIVISOR)
        marks["after"] = bytes(bench.received)

    bench = LinkBench(backpressure=False, run_cycles=3000)
    bench.run(script, request.node.name)
    S, O = proto.Status, proto.Opcode
    assert got == [(S.OK, O.WRITE), (S.OK, O.RUN), (S.OK, O.RESULT), (S.OK, O.RUN)]
    answer_cycles = (proto.RESPONSE_HEADER_BYTES + 10 + 4 * 6 + 2) * 10 * DIVISOR
    assert len(bench.starts) == 2
    assert bench.starts[1] < marks["answer_out"] - answer_cycles // 2, (bench.starts, marks)
    assert marks["after"] == bytes([proto.FILL_BYTE] * CONFIG.tx_pad_bytes)


def test_faults_answered_and_nothing_committed(request):
    rng = random.Random(7)
    good = proto.encode_request(proto.Opcode.WRITE, proto.write_payload(Space.WEIGHTS, 0, [1]))
    bad_crc = bytearray(good)
    bad_crc[9] ^= 0x10
    cases = [
        ("bad CRC", bytes(bad_crc), proto.Status.BAD_CRC),
        ("bad opcode", proto.encode_request(0x77, b"abcd"), proto.Status.BAD_OPCODE),
        # (an oversized frame, > MAX_PAYLOAD, is checked on the simulated board)
        ("ragged write", proto.encode_request(proto.Opcode.WRITE, bytes(4 + 7)),
         proto.Status.BAD_LENGTH),
        ("identify with payload", proto.encode_request(proto.Opcode.IDENTIFY, b"x"),
         proto.Status.BAD_LENGTH),
        ("write past the end", proto.encode_request(proto.Opcode.WRITE, proto.write_payload(
            Space.QPARAMS, CONFIG.qparam_entries - 1, [1, 2])), proto.Status.BAD_ARGUMENT),
        ("too many logits", proto.encode_request(proto.Opcode.RESULT, proto.encode_struct(
            proto.ResultArgs, {"n_logits": CONFIG.max_logits + 1, "n_counters": 0})),
         proto.Status.BAD_ARGUMENT),
        ("oversized", proto.encode_request(proto.Opcode.WRITE, bytes(4))[:2] +
         (proto.MAX_PAYLOAD + 1).to_bytes(2, "little"), proto.Status.BAD_CRC),
        ("run outside the activations", proto.encode_request(
            proto.Opcode.RUN, proto.encode_struct(proto.RunArgs, {
                "image_base": CONFIG.act_bytes})), proto.Status.BAD_ARGUMENT),
        ("abort with payload", proto.encode_request(proto.Opcode.ABORT, b"x"),
         proto.Status.BAD_LENGTH),
    ]
    got = []

    async def script(bench, ctx):
        for _, raw, _ in cases:
            await bench.send(ctx, raw)
            got.append((await bench.response(ctx))[0])
        # Garbage (sync bytes included), a half frame, then the driver's fill and ABORT:
        # the board completes the half frame, skips the fill and keeps serving.
        await bench.send(ctx, bytes([rng.randrange(256) for _ in range(24)] + [0xA5, 0x02]))
        await bench.idle(ctx, 3000)
        await bench.send(ctx, bytes(proto.MAX_REQUEST_BYTES // 8) +
                         proto.encode_request(proto.Opcode.ABORT))
        while (await bench.response(ctx))[1] != proto.Opcode.ABORT:
            pass
        got.append((await bench.transact(ctx, proto.Opcode.WRITE,
                                         proto.write_payload(Space.WEIGHTS, 0, [1])))[0])

    bench = LinkBench(backpressure=False)
    bench.run(script, request.node.name, max_cycles=800_000)
    assert got == [expected for _, _, expected in cases] + [proto.Status.OK], \
        [name for (name, _, want), status in zip(cases, got) if want != status]
    assert bench.beats == [(Space.WEIGHTS, 0, 1)]


@pytest.mark.parametrize("seed", range(2))
def test_pipelined_burst_is_buffered(request, seed):
    """Requests sent back to back, as the driver pipelines them: the bytes that arrive
    while the link commits, waits for a run or answers are held in the RX FIFO, and
    every request is answered in order (before the FIFO, they were dropped)."""
    rng = random.Random(seed)
    bases = [0x0000, 0x0320, 0x0000]
    images = [[rng.getrandbits(64) for _ in range(rng.randrange(3, 7))] for _ in bases]
    result = proto.encode_struct(proto.ResultArgs, {"n_logits": 4,
                                                    "n_counters": rng.randrange(2)})

    def run(base):
        return proto.encode_request(proto.Opcode.RUN, proto.encode_struct(
            proto.RunArgs, {"image_base": base}))

    burst = [proto.encode_request(proto.Opcode.WRITE,
                                  proto.write_payload(Space.PROGRAM, 0, [0x1234]))]
    burst += [proto.encode_request(proto.Opcode.WRITE,
                                   proto.write_payload(Space.IMAGE, 0, images[0])), run(0)]
    for i in range(1, len(bases)):
        burst += [proto.encode_request(proto.Opcode.WRITE, proto.write_payload(
                      Space.IMAGE, bases[i] // 8, images[i])),
                  proto.encode_request(proto.Opcode.RESULT, result), run(bases[i])]
    burst += [proto.encode_request(proto.Opcode.RESULT, result)]
    assert sum(map(len, burst)) <= proto.RX_FIFO_BYTES
    got = []

    async def script(bench, ctx):
        await bench.send(ctx, b"".join(burst))
        for _ in burst:
            got.append(await bench.response(ctx))

    bench = LinkBench(seed=seed, run_cycles=3000)
    bench.run(script, request.node.name)
    S, O = proto.Status, proto.Opcode
    assert [(s, o) for s, o, _ in got] == [
        (S.OK, O(proto.parse_request(f)[0])) for f in burst]
    n_counters = proto.decode_struct(proto.ResultArgs, result)["n_counters"]
    results = [data for _, o, data in got if o == O.RESULT]
    for data, base in zip(results, bases):
        logits = [fake_word(ReadSpace.LOGITS, k, base) & 0xFF for k in range(4)]
        counters = [fake_word(ReadSpace.COUNTERS, i, base) for i in range(n_counters)]
        assert data == bytes(logits) + b"".join(c.to_bytes(4, "little") for c in counters)
    assert [b for b in bench.beats if b[0] == Space.IMAGE] == [
        (Space.IMAGE, base // 8 + j, c) for base, img in zip(bases, images)
        for j, c in enumerate(img)]


def test_window_overrun_is_answered_not_hung(request):
    """A host that breaks the window rule loses bytes in the RX FIFO (here shrunk to 16
    bytes): the damaged frame is answered with an error or completed by the host's fill,
    nothing reaches the core, and the board keeps serving."""
    run = proto.encode_request(proto.Opcode.RUN, proto.encode_struct(
        proto.RunArgs, {"image_base": 0}))
    result = proto.encode_request(proto.Opcode.RESULT, proto.encode_struct(
        proto.ResultArgs, {"n_logits": 1, "n_counters": 0}))
    image = proto.encode_request(proto.Opcode.WRITE, proto.write_payload(
        Space.IMAGE, 0, list(range(1, 7))))           # 58 B arrive while RESULT waits
    got = []

    async def script(bench, ctx):
        got.append((await bench.transact(ctx, proto.Opcode.WRITE, proto.write_payload(
            Space.PROGRAM, 0, [0x1234])))[0])
        await bench.send(ctx, run + result + image)
        for _ in range(2):
            got.append((await bench.response(ctx))[0])
        await bench.idle(ctx, 3000)
        # The fill completes what is left of the image frame (at most MAX_REQUEST_BYTES;
        # 70 here, the frame was 58), in pieces the 16-byte FIFO takes.
        for _ in range(5):
            await bench.send(ctx, bytes(14))
            await bench.idle(ctx, 400)
        await bench.send(ctx, proto.encode_request(proto.Opcode.ABORT))
        while True:
            status, echo, _ = await bench.response(ctx)
            got.append(status)
            if echo == proto.Opcode.ABORT:
                break

    bench = LinkBench(run_cycles=2500, rx_fifo=16, backpressure=False)
    bench.run(script, request.node.name)
    S = proto.Status
    assert got[:3] == [S.OK, S.OK, S.OK] and got[-1] == S.OK, got
    assert len(got) <= 6, got
    assert all(s in (S.BAD_CRC, S.BAD_LENGTH, S.BAD_OPCODE) for s in got[3:-1])
    assert [b[0] for b in bench.beats] == [Space.PROGRAM]   # the image never committed


def test_pause_mid_frame_abort_and_watchdog(request):
    """Frames never time out: a WRITE with a long pause before its last bytes commits;
    ABORT ends a run at once and RESULT then says NO_RESULT; a run the core's watchdog
    stopped is answered WATCHDOG; the link keeps serving."""
    program = proto.encode_request(proto.Opcode.WRITE, proto.write_payload(
        Space.PROGRAM, 0, [0x1234]))
    run = proto.encode_struct(proto.RunArgs, {"image_base": 0x100})
    forever = proto.encode_struct(proto.RunArgs, {"image_base": 0xFF8})
    result = proto.encode_struct(proto.ResultArgs, {"n_logits": 1, "n_counters": 0})
    got = []

    async def script(bench, ctx):
        await bench.send(ctx, program[:7])
        await bench.idle(ctx, 20_000)               # far beyond the old 10 ms time-out
        await bench.send(ctx, program[7:])
        got.append((await bench.response(ctx))[0])
        got.append((await bench.transact(ctx, proto.Opcode.RUN, run))[0])
        got.append((await bench.transact(ctx, proto.Opcode.RUN, run))[0])        # BUSY
        got.append((await bench.transact(ctx, proto.Opcode.ABORT))[0])
        got.append((await bench.transact(ctx, proto.Opcode.RESULT, result))[0])
        got.append((await bench.transact(ctx, proto.Opcode.RUN, forever))[0])
        got.append((await bench.transact(ctx, proto.Opcode.RESULT, result))[0])
        got.append((await bench.transact(ctx, proto.Opcode.RUN, run))[0])
        got.append((await bench.transact(ctx, proto.Opcode.RESULT, result))[0])

    bench = LinkBench(backpressure=False, run_cycles=20_000)
    bench.run(script, request.node.name, max_cycles=600_000)
    S = proto.Status
    assert got == [S.OK, S.OK, S.BUSY, S.OK, S.NO_RESULT, S.OK, S.WATCHDOG, S.OK, S.OK], got
    assert bench.beats == [(Space.PROGRAM, 0, 0x1234)]
