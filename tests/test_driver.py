"""Host driver failure modes, against small TCP servers that misbehave on purpose.

The driver's working path (load + infer, bit-exact) is tested against the simulated
board in ``test_simboard.py``; here every way the link can fail must end in a clear
exception, quickly, never a hang.
"""

import contextlib
import os
import selectors
import socket
import threading
import time

import numpy as np
import pytest

from fpgacnn.hw import protocol as proto
from fpgacnn.hw.config import get_config
from fpgacnn.sw import network as nets
from fpgacnn.sw.driver import (Accelerator, BaudMismatch, BoardError, BoardNotFound,
                               BoardTimeout,
                               DriverError, ImageError, ModelDoesNotFit, ProtocolMismatch,
                               prepare_images)


class FakeServer:
    """Accepts one client on 127.0.0.1 and answers each request with ``handler``.

    ``handler(opcode, payload) -> bytes or None`` (None: stay silent). Like a board, it
    skips bytes outside a frame (the driver's fill) and answers the driver's session reset
    itself (ABORT, then the nonce WRITE): the handler sees the requests after it.
    ``plumbing_bytes`` counts the request bytes of those.
    """

    def __init__(self, handler):
        self.handler = handler
        self.plumbing_bytes = 0
        self._nonce_next = False
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.url = f"socket://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.stop = False
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.1)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(0.1)
            buf = b""
            while not self.stop:
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                buf += chunk
                while buf and buf[0] != proto.REQUEST_SYNC:      # fill, garbage
                    buf = buf[1:]
                    self.plumbing_bytes += 1
                self.on_receive(len(chunk))
                while len(buf) >= 4:
                    length = int.from_bytes(buf[2:4], "little")
                    if len(buf) < 4 + length + 2:
                        break
                    raw, buf = buf[:4 + length + 2], buf[4 + length + 2:]
                    opcode, payload = proto.parse_request(raw)
                    answer = self._plumbing(opcode, payload)
                    if answer is None:
                        answer = self.handler(opcode, payload)
                    else:
                        self.plumbing_bytes += len(raw)
                    if answer is not None:
                        conn.sendall(answer)
                    while buf and buf[0] != proto.REQUEST_SYNC:
                        buf = buf[1:]
                        self.plumbing_bytes += 1
            conn.close()

    def _plumbing(self, opcode, payload):
        """The answer to a request of the driver's session reset, else None."""
        if opcode == proto.Opcode.ABORT.value:
            self._nonce_next = True
            return proto.encode_response(proto.Status.OK, opcode)
        if self._nonce_next and opcode == proto.Opcode.WRITE.value:
            self._nonce_next = False
            return proto.encode_response(proto.Status.OK, opcode, proto.crc16(
                payload[proto.ARGS_BYTES:]).to_bytes(2, "little"))
        return None

    def on_receive(self, n):
        """Called with the size of every piece the server reads (for subclasses)."""

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def server():
    servers = []

    def make(handler):
        servers.append(FakeServer(handler))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


def identity(config):
    return proto.encode_struct(proto.Identity, proto.identity_fields(config))


def test_absent_port():
    with pytest.raises(BoardNotFound, match="ttyUSB"):
        Accelerator.open("/dev/ttyUSB_fpgacnn_absent")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                  # nothing listens there now
    with pytest.raises(BoardNotFound, match="sim-board"):
        Accelerator.open(f"socket://127.0.0.1:{port}")


def test_silent_board_times_out(server):
    srv = server(lambda opcode, payload: None)
    with Accelerator.open(srv.url, timeout=0.5) as acc:
        t0 = time.monotonic()
        with pytest.raises(BoardTimeout, match="IDENTIFY"):
            acc.identify()
        assert time.monotonic() - t0 < 2


def test_garbage_and_damaged_answers(server):
    answers = [b"\x00\x13garbage", proto.encode_response(proto.Status.OK, proto.Opcode.IDENTIFY,
                                                         identity(get_config("icebreaker")))]
    damaged = bytearray(answers[1])
    damaged[8] ^= 1
    replies = iter([answers[0] + answers[1], bytes(damaged)])
    srv = server(lambda opcode, payload: next(replies))
    with Accelerator.open(srv.url, timeout=1) as acc:
        assert acc.identify().config.rows == 8          # garbage before the sync is skipped
        with pytest.raises(DriverError, match="damaged response"):
            acc.identify()


def test_identity_gives_the_board_config(server):
    """The driver compiles for what the board reports, field by field, not for a known
    configuration that looks similar."""
    odd = get_config("icebreaker").with_(name="custom", pool_width=20, requant_interval=4,
                                         dataflow="systolic", clock_hz=18_000_000)
    srv = server(lambda opcode, payload: proto.encode_response(
        proto.Status.OK, opcode, identity(odd)))
    with Accelerator.open(srv.url, timeout=1) as acc:
        info = acc.identify()
    assert info.config == odd
    assert (info.max_chunks, info.rx_fifo) == (proto.MAX_CHUNKS, odd.rx_fifo_bytes)
    assert info.describe().startswith(f"custom: 8x{odd.cols} array")


@pytest.mark.parametrize("version, size", [(2, 32), (proto.PROTOCOL_VERSION + 1, 53)])
def test_other_protocol_version_is_refused(server, version, size):
    raw = bytes([version]) + identity(get_config("icebreaker"))[1:size]
    srv = server(lambda opcode, payload: proto.encode_response(proto.Status.OK, opcode, raw))
    with Accelerator.open(srv.url, timeout=1) as acc:
        with pytest.raises(ProtocolMismatch, match=f"the board speaks protocol version "
                                                   f"{version}, this driver version "
                                                   f"{proto.PROTOCOL_VERSION}; rebuild"):
            acc.identify()
        assert acc.info is None


def test_malformed_identity_is_refused(server):
    good = identity(get_config("icebreaker"))
    answers = iter([good[:-1], good[:1] + bytes(len(good) - 1)])   # short; all zero
    srv = server(lambda opcode, payload: proto.encode_response(
        proto.Status.OK, opcode, next(answers)))
    with Accelerator.open(srv.url, timeout=1) as acc:
        with pytest.raises(ProtocolMismatch, match=f"identity has 52 bytes, protocol version "
                                                   f"{proto.PROTOCOL_VERSION} has 53"):
            acc.identify()
        with pytest.raises(ProtocolMismatch, match="invalid configuration"):
            acc.identify()


def test_error_status_is_raised(server):
    srv = server(lambda opcode, payload: proto.encode_response(proto.Status.NOT_LOADED, opcode))
    with Accelerator.open(srv.url, timeout=1) as acc:
        with pytest.raises(BoardError, match="NOT_LOADED") as e:
            acc.transact(proto.Opcode.RUN, bytes(4))
        assert e.value.status == proto.Status.NOT_LOADED


def test_model_too_large_for_board(server):
    tiny = get_config("icebreaker").with_(weight_words=1024, act_window=False)
    srv = server(lambda opcode, payload: proto.encode_response(
        proto.Status.OK, opcode, identity(tiny)))
    net = nets.lenet5()
    with Accelerator.open(srv.url, timeout=1) as acc:
        with pytest.raises(ModelDoesNotFit, match="weight"):
            acc.load(net, nets.random_params(net, 0), progress=False)
        with pytest.raises(DriverError, match="no model loaded"):
            acc.infer(np.zeros((1, 28, 28), np.uint8))


def test_prepare_images():
    shape = (1, 28, 28)
    u8 = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28).astype(np.uint8)
    x = prepare_images(u8, shape)
    assert x.shape == (2, 1, 28, 28) and x.dtype == np.int8 and x.max() == 127
    assert prepare_images(u8[0], shape).shape == (1, 1, 28, 28)
    assert prepare_images(np.zeros(shape, np.int8), shape).shape == (1, 1, 28, 28)
    with pytest.raises(ImageError, match="float64"):
        prepare_images(np.zeros((28, 28)), shape)
    with pytest.raises(ImageError, match=r"\(32, 32\)"):
        prepare_images(np.zeros((32, 32), np.uint8), shape)
    with pytest.raises(ImageError, match="do not match"):
        prepare_images(np.zeros((3, 28, 28), np.int8)[None], (3, 32, 32))
    with pytest.raises(ImageError, match="scalar"):
        prepare_images(np.uint8(7), shape)
    for empty in (np.zeros((0,), np.uint8), np.zeros((0, 28, 28), np.uint8)):
        with pytest.raises(ImageError, match="empty"):
            prepare_images(empty, shape)


class FakeBoard:
    """Enough of a board for :meth:`Accelerator.infer`: answers every request, in order,
    ``delay`` seconds after its last byte, and counts the request bytes it answered.

    A RESULT returns logits derived from the image last written to the slot that RUN
    named, so a pipelining mistake (wrong slot, wrong order) changes the answer.
    """

    def __init__(self, config, *, delay=0.0, fail_at=None):
        self.config, self.delay, self.fail_at = config, delay, fail_at
        self.fail_all = False
        self.opcodes = []
        self.image = {}                     # chunk address -> 64-bit data
        self.run_base = None

    def handler(self):
        self._answered = 0                  # request bytes answered so far

        def handler(opcode, payload):
            self.opcodes.append(proto.Opcode(opcode))
            if self.delay:
                time.sleep(self.delay)
            self._answered += proto.REQUEST_HEADER_BYTES + len(payload) + 2
            if len(self.opcodes) == self.fail_at or self.fail_all:
                return proto.encode_response(proto.Status.BAD_CRC, opcode)
            return self.answer(proto.Opcode(opcode), payload)
        return handler

    def answer(self, opcode, payload):
        S = proto.Status
        if opcode == proto.Opcode.IDENTIFY:
            return proto.encode_response(S.OK, opcode, identity(self.config))
        args = payload[:proto.ARGS_BYTES]
        if opcode == proto.Opcode.WRITE:
            addr = proto.decode_struct(proto.WriteArgs, args)["addr"]
            body = payload[proto.ARGS_BYTES:]
            for i in range(len(body) // 8):
                self.image[addr + i] = body[8 * i:8 * i + 8]
            return proto.encode_response(S.OK, opcode, proto.crc16(body).to_bytes(2, "little"))
        if opcode == proto.Opcode.RUN:
            self.run_base = proto.decode_struct(proto.RunArgs, args)["image_base"]
            return proto.encode_response(S.OK, opcode)
        n = proto.decode_struct(proto.ResultArgs, args)
        first = self.image[self.run_base // 8]      # first 8 input bytes of the run
        logits = bytes((first[0] + k) & 0xFF for k in range(n["n_logits"]))
        return proto.encode_response(S.OK, opcode, logits + bytes(4 * n["n_counters"]))


class WindowServer(FakeServer):
    """FakeServer that also measures the host's unanswered bytes whenever it reads."""

    def __init__(self, board):
        self.board = board
        self.max_unanswered = self.received = 0
        super().__init__(board.handler())

    def on_receive(self, n):
        self.received += n
        self.max_unanswered = max(self.max_unanswered, self.received - self.board._answered
                                  - self.plumbing_bytes)


def _tiny_program(acc):
    """LeNet-5 with random weights compiled for the fake board (only image I/O is used)."""
    net = nets.lenet5()
    from fpgacnn.sw import compiler
    acc.program = compiler.compile_network(net, nets.random_params(net, 0), acc.info.config)
    return acc.program


@contextlib.contextmanager
def fake_session(board, timeout):
    """``(accelerator, server)``: a session with ``board`` behind a WindowServer, the
    LeNet-5 program compiled for it."""
    srv = WindowServer(board)
    try:
        with Accelerator.open(srv.url, timeout=timeout) as acc:
            acc.identify()
            _tiny_program(acc)
            yield acc, srv
    finally:
        srv.close()


def test_infer_pipelines_within_the_window():
    """Requests go out back to back in the documented order and the host never has more
    than the board's receive window unanswered, even when answers come slowly."""
    board = FakeBoard(get_config("icebreaker"), delay=0.002)
    with fake_session(board, 2) as (acc, srv):
        rng = np.random.default_rng(3)
        x = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
        x[:, 0, 0] = np.arange(7) * 30            # the fake logits' source byte
        board.opcodes.clear()
        _, logits = acc.infer(x, progress=False)
    want = prepare_images(x, (1, 28, 28))[:, 0, 0, 0].astype(np.int64)
    np.testing.assert_array_equal(logits[:, 0].astype(np.uint8), (want & 0xFF).astype(np.uint8))
    assert logits.shape == (7, 10)
    W, R, U = proto.Opcode.WRITE, proto.Opcode.RUN, proto.Opcode.RESULT
    image = [W] * 2                                   # 98 chunks in frames <= 64 chunks
    want_order = image + [R]
    for _ in range(6):
        want_order += image + [U, R]
    want_order += [U]
    assert board.opcodes == want_order
    window = acc.info.rx_fifo
    assert 0.5 * window < srv.max_unanswered <= window, srv.max_unanswered
    assert acc.counters.shape == (1, 6)               # counters asked for once only


def test_error_in_pipeline_is_retried_then_raised():
    """A damaged frame mid-batch (BAD_CRC) is retried after a resync, counted, and the
    results are complete and right; a link that keeps failing raises after
    ``max_retries``."""
    board = FakeBoard(get_config("icebreaker"), fail_at=6)
    with fake_session(board, 1) as (acc, _):
        board.opcodes.clear()
        x = np.zeros((3, 28, 28), np.uint8)
        x[:, 0, 0] = [10, 20, 30]
        _, logits = acc.infer(x, progress=False)
        assert acc.retries == 1
        want = prepare_images(x, (1, 28, 28))[:, 0, 0, 0].astype(np.uint8)
        np.testing.assert_array_equal(logits[:, 0].astype(np.uint8), want)
        board.fail_all = True
        with pytest.raises(BoardError, match="BAD_CRC"):
            acc.infer(x, progress=False)
        assert acc.retries == 1 + acc.max_retries
        board.fail_all = False
        _, logits = acc.infer(x[:2], progress=False)
        assert logits.shape == (2, 10)


def test_transport_failures_are_driver_errors(server):
    """A board that goes away mid-session is a BoardDisconnected (never a pyserial or OS
    exception); a bad timeout is refused before anything is opened."""
    srv = server(lambda opcode, payload: proto.encode_response(
        proto.Status.OK, opcode, identity(get_config("icebreaker"))))
    with Accelerator.open(srv.url, timeout=1) as acc:
        acc.identify()
        srv.close()
        with pytest.raises(DriverError) as e:
            for _ in range(3):
                acc.identify()
        assert type(e.value).__name__ in ("BoardDisconnected", "BoardTimeout")
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(DriverError, match="timeout"):
            Accelerator.open(srv.url, timeout=bad)


@contextlib.contextmanager
def serial_device(srv):
    """A pseudo-terminal whose other end is wired to ``srv``: a device path that the
    driver opens as a serial port (with a baud rate), as /dev/ttyUSB1."""
    master, slave = os.openpty()
    host, port = srv.url.removeprefix("socket://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    stop = threading.Event()

    def pump():
        with selectors.DefaultSelector() as sel:
            sel.register(master, selectors.EVENT_READ)
            sel.register(sock, selectors.EVENT_READ)
            while not stop.is_set():
                for key, _ in sel.select(0.05):
                    try:
                        if key.fileobj is sock:
                            os.write(master, sock.recv(4096))
                        else:
                            sock.sendall(os.read(master, 4096))
                    except OSError:         # no process has the device open now
                        time.sleep(0.01)
    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield os.ttyname(slave)
    finally:
        stop.set()
        thread.join()
        sock.close()
        os.close(master)
        os.close(slave)


def test_serial_port_at_another_baud_is_refused(server):
    """A serial port's rate must be the one the board was built for (its identity says
    which); a socket has no rate, so the simulated board is not checked."""
    six = get_config("icebreaker").with_(baud=6_000_000)
    srv = server(lambda opcode, payload: proto.encode_response(
        proto.Status.OK, opcode, identity(six)))
    with serial_device(srv) as tty:
        with Accelerator.open(tty, timeout=1, baud=3_000_000) as acc:
            assert acc.baud == 3_000_000
            with pytest.raises(BaudMismatch, match=r"built for 6,000,000 baud, the port is "
                                                   r"open at 3,000,000; .*--baud 6000000"):
                acc.identify()
            assert acc.info is None
        with Accelerator.open(tty, timeout=1, baud=6_000_000) as acc:
            assert acc.identify().config.baud == 6_000_000
    with Accelerator.open(srv.url, timeout=1, baud=3_000_000) as acc:
        assert acc.baud is None and acc.identify().config.baud == 6_000_000
