"""Host driver failure modes, against small TCP servers that misbehave on purpose.

The driver's working path (load + infer, bit-exact) is tested against the simulated
board in ``test_simboard.py``; here every way the link can fail must end in a clear
exception, quickly, never a hang.
"""

import socket
import threading
import time

import numpy as np
import pytest

from fpgacnn.hw import protocol as proto
from fpgacnn.hw.config import get_config
from fpgacnn.sw import network as nets
from fpgacnn.sw.driver import (Accelerator, BoardError, BoardNotFound, BoardTimeout,
                               DriverError, ImageError, ModelDoesNotFit, prepare_images)


class FakeServer:
    """Accepts one client on 127.0.0.1 and answers each request with ``handler``.

    ``handler(opcode, payload) -> bytes or None`` (None: stay silent).
    """

    def __init__(self, handler):
        self.handler = handler
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
                while len(buf) >= 4:
                    length = int.from_bytes(buf[2:4], "little")
                    if len(buf) < 4 + length + 2:
                        break
                    raw, buf = buf[:4 + length + 2], buf[4 + length + 2:]
                    opcode, payload = proto.parse_request(raw)
                    answer = self.handler(opcode, payload)
                    if answer is not None:
                        conn.sendall(answer)
            conn.close()

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
        assert acc.identify().rows == 8                 # garbage before the sync is skipped
        with pytest.raises(DriverError, match="damaged response"):
            acc.identify()


def test_error_status_is_raised(server):
    srv = server(lambda opcode, payload: proto.encode_response(proto.Status.NOT_LOADED, opcode))
    with Accelerator.open(srv.url, timeout=1) as acc:
        with pytest.raises(BoardError, match="NOT_LOADED") as e:
            acc.transact(proto.Opcode.RUN, bytes(4))
        assert e.value.status == proto.Status.NOT_LOADED


def test_model_too_large_for_board(server):
    tiny = get_config("icebreaker").with_(weight_words=1024)
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
