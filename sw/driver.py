"""Host driver: load a network into the board and classify images over its serial link.

The same code talks to a real board (``/dev/ttyUSB1``) and to the simulated board
(``socket://127.0.0.1:PORT``, see ``fpgacnn sim-board``): pyserial's
``serial_for_url`` opens both. The wire protocol is :mod:`fpgacnn.hw.protocol`::

    from fpgacnn.sw.driver import Accelerator
    with Accelerator.open("socket://127.0.0.1:9000") as acc:
        acc.load(network, params)                 # compiled for the board acc.identify()
        classes, logits = acc.infer(images)       # uint8 28×28 digits or int8 (C, H, W)

Model loads and inference batches are pipelined (:meth:`Accelerator.pipeline`): requests
go out back to back, never more than the board's receive window unanswered, so the
host→board wire carries image bytes nearly all the time (README, "Throughput", has the
figures measured on the simulated board).

Every failure raises a :class:`DriverError` subclass with a message that says what to
do; nothing waits forever (every read has a deadline). :meth:`Accelerator.open` brings
the board to a known state whatever the last session left (:meth:`Accelerator.resync`);
a damaged frame or a lost answer is retried after a resynchronisation (writes are
idempotent, images are re-run), counted in :attr:`Accelerator.retries`.
"""

import os
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..hw import protocol as proto
from ..hw.config import DEFAULT_BAUD, PIPELINES, AcceleratorConfig
from ..hw.program import Space
from . import compiler, mnist, pipeline

__all__ = ["Accelerator", "BoardInfo", "DriverError", "BoardNotFound", "BoardTimeout",
           "BoardError", "BoardDisconnected", "BoardBusy", "LinkDamaged",
           "ProtocolMismatch", "BaudMismatch", "ModelDoesNotFit", "ImageError",
           "prepare_images", "as_batch", "DEFAULT_BAUD", "BUSY_MARKER"]

#: What the simulated board sends a second client before closing it (``board.cpp``).
BUSY_MARKER = b"sim-board busy"


class DriverError(Exception):
    """Base class of everything the driver raises about the board or the link."""


class BoardNotFound(DriverError):
    """The port or socket could not be opened."""


class BoardTimeout(DriverError):
    """The board did not answer in time."""


class BoardDisconnected(DriverError):
    """The port or socket went away (board unplugged, simulator stopped)."""


class BoardBusy(DriverError):
    """Another program (another client) is using the board."""


class LinkDamaged(DriverError):
    """A response was damaged or out of order (the link is resynchronised and retried)."""


class BoardError(DriverError):
    """The board answered with an error status.

    Attributes
    ----------
    status : protocol.Status
    opcode : protocol.Opcode
    """

    def __init__(self, message, status, opcode):
        super().__init__(message)
        self.status, self.opcode = status, opcode


class ProtocolMismatch(DriverError):
    """The board was built for another version of the wire protocol."""


class BaudMismatch(DriverError):
    """The serial port was opened at another baud rate than the board was built for."""


class ModelDoesNotFit(DriverError, ValueError):
    """The network cannot be compiled for the board's configuration."""


class ImageError(DriverError, ValueError):
    """Images of the wrong shape, dtype or range."""


_HINTS = {
    proto.Status.BAD_CRC: "the frame was damaged on the way; check the cable/baud rate",
    proto.Status.NOT_LOADED: "load a model first (Accelerator.load)",
    proto.Status.BUSY: "a run is still in progress",
    proto.Status.NO_RESULT: "nothing was run since the board started (or was aborted)",
    proto.Status.BAD_ARGUMENT: "an address or count beyond the board's memories; "
                               "recompile the model for this board",
    proto.Status.WATCHDOG: "the board's watchdog stopped a run that did not end (a bad "
                           "layer program); load the model again (Accelerator.load)",
}
#: Statuses of a frame damaged on the way: the request is retried after a resync.
_DAMAGED = (proto.Status.BAD_CRC, proto.Status.BAD_LENGTH, proto.Status.BAD_OPCODE)


@dataclass(frozen=True)
class BoardInfo:
    """A board's :class:`~fpgacnn.hw.protocol.Identity`, decoded.

    Attributes
    ----------
    config : AcceleratorConfig
        What the board was built with, as it reports it: the compiler's input.
    version : int
        Its protocol version (:data:`~fpgacnn.hw.protocol.PROTOCOL_VERSION`).
    max_chunks : int
        Chunks one WRITE frame may carry.
    rx_fifo : int
        Bytes of its receive FIFO: the host's pipelining window (credit).
    """
    config: AcceleratorConfig
    version: int
    max_chunks: int
    rx_fifo: int

    @classmethod
    def decode(cls, raw):
        """An IDENTIFY payload → :class:`BoardInfo`.

        Raises
        ------
        ProtocolMismatch
            The board speaks another protocol version (its first byte), or its identity
            is not a valid one of this version.
        """
        raw = bytes(raw)
        size = proto.struct_bytes(proto.Identity)
        version = raw[0] if raw else None
        if version != proto.PROTOCOL_VERSION:
            raise ProtocolMismatch(
                f"the board speaks protocol version {version}, this driver version "
                f"{proto.PROTOCOL_VERSION}; rebuild and program the bitstream with this "
                f"fpgacnn (fpgacnn build --program), or install the fpgacnn it was built with")
        if len(raw) != size:
            raise ProtocolMismatch(f"the board's identity has {len(raw)} bytes, protocol "
                                   f"version {version} has {size}; reprogram the board")
        f = proto.decode_struct(proto.Identity, raw)
        try:
            config = proto.identity_config(f)
        except ValueError as e:
            raise ProtocolMismatch(f"the board reports an invalid configuration ({e}); "
                                   f"reprogram it") from None
        return cls(config=config, version=version, max_chunks=f["max_chunks"],
                   rx_fifo=config.rx_fifo_bytes)

    def describe(self):
        c = self.config
        return (f"{c.name}: {c.rows}x{c.cols} array, {c.weight_words} weight words, "
                f"{c.act_bytes} B activations, {c.clock_hz / 1e6:g} MHz, {c.baud:,} baud")


def prepare_images(images, input_shape, quant=None):
    """Images → int8 array ``(N, *input_shape)``, or :class:`ImageError`.

    Accepts uint8 pixels 0..255 (converted with :func:`mnist.image_to_int8` and the
    model's input quantisation ``quant``, a :class:`mnist.InputQuant`) or int8
    activations, either as one image or a batch; a single-channel input may omit C.
    """
    x = np.asarray(images)
    if x.dtype not in (np.uint8, np.int8):
        raise ImageError(f"images must be uint8 pixels (0..255) or int8 activations, not "
                         f"{x.dtype}; convert with numpy .astype(np.uint8) after scaling "
                         f"to 0..255")
    x = as_batch(x, input_shape)        # shape first: the conversion is per channel
    return mnist.image_to_int8(x, quant) if x.dtype == np.uint8 else x


def as_batch(images, input_shape):
    """One image or a batch (any dtype) → ``(N, *input_shape)``, or :class:`ImageError`.

    A single-channel input may omit C.
    """
    shape = tuple(input_shape)
    x = np.asarray(images)
    if x.ndim == 0:
        raise ImageError(f"a single value ({x.dtype} scalar) is not an image; pass an array "
                         f"of shape {shape} (C, H, W) or a batch (N, ...) of them")
    if x.size == 0:
        raise ImageError(f"no images: the array of shape {x.shape} is empty; pass at least "
                         f"one image of shape {shape}")
    accepted = [shape] + ([shape[1:]] if shape[0] == 1 else [])
    for one in accepted:
        if x.shape == one:
            return x.reshape((1,) + shape)
        if x.shape[1:] == one:
            return x.reshape((len(x),) + shape)
    raise ImageError(f"images of shape {x.shape} do not match the network input {shape} "
                     f"(C, H, W); pass one image of {' or '.join(map(str, accepted))} or a "
                     f"batch (N, ...) of them")


class Accelerator:
    """A board behind a serial link (use :meth:`open`).

    Attributes
    ----------
    url : str
    info : BoardInfo or None
        Set by :meth:`identify`.
    program : compiler.CompiledProgram or None
        Set by :meth:`load`.
    counters : ndarray of uint32, shape (N, 1 + layers)
        Cycle counters of the last :meth:`infer` batch: total, then per layer (the sum
        of its descriptors' cycles when a streamed plan runs it in bands and copies).
    bytes_sent, bytes_received : int
        Link traffic so far (frames, CRCs and the board's padding included).
    retries : int
        Requests repeated after a damaged frame or a lost answer (each after a
        :meth:`resync`); the work itself never fails silently.
    baud : int or None
        The serial port's baud rate, checked against the board's identity; None for a
        URL (``socket://``: the simulated board has its own rate).
    """

    #: How often one :meth:`load` or :meth:`infer` is retried after a damaged frame.
    max_retries = 3

    def __init__(self, port, url, *, timeout):
        self._port = port
        self.url = url
        self.timeout = timeout
        self.info = None
        self.program = None
        self.input_quant = None
        self.counters = np.zeros((0, 0), np.uint32)
        self.bytes_sent = self.bytes_received = 0
        self.retries = 0
        self._dirty = False
        self._rx = bytearray()              # received, not parsed yet
        self.baud = None                    # the serial port's rate (None: a socket)

    @classmethod
    def open(cls, url, *, timeout=5.0, baud=DEFAULT_BAUD, reset=True):
        """Open ``url`` (a serial device or ``socket://127.0.0.1:PORT``).

        Parameters
        ----------
        timeout : float
            Seconds to wait for any one response before :class:`BoardTimeout`.
        baud : int
            Serial baud rate (ignored by sockets); must match the board's build.
        reset : bool
            Bring the board to a known state first (:meth:`resync`): whatever the last
            session left — half a frame, answers nobody read, a run — is finished,
            discarded or aborted; the loaded model stays.

        Raises
        ------
        BoardNotFound, BoardBusy, BoardTimeout, BoardDisconnected
        """
        import serial
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 < timeout < float("inf"):
            raise DriverError(f"timeout {timeout!r}: give a positive number of seconds")
        socket_url = url.startswith("socket:")
        try:
            port = serial.serial_for_url(url, baudrate=baud, timeout=min(timeout, 0.5),
                                         write_timeout=timeout,
                                         **({} if socket_url or "://" in url
                                            else {"exclusive": True}))
        except (serial.SerialException, ValueError, OSError) as e:
            if "lock" in str(e).lower():
                raise BoardBusy(f"{url} is in use by another program ({e}); close it (another "
                                f"fpgacnn, a serial terminal) and try again") from None
            hint = ("is `fpgacnn sim-board` running on that port?" if socket_url
                    else "is the board plugged in, and is that its port (ls /dev/ttyUSB*)? "
                         "If it is, may this user open it (README, \"Real boards\")?")
            raise BoardNotFound(f"cannot open {url}: {e}; {hint}") from None
        sock = getattr(port, "_socket", None)       # pyserial's socket:// handler
        if sock is not None:
            # Without it, Nagle's algorithm holds back the small writes of a pipeline until
            # the previous ones are acknowledged (tens of ms with delayed ACKs).
            import socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        acc = cls(port, url, timeout=timeout)
        acc.baud = None if "://" in url else baud
        if reset:
            try:
                acc.resync()
            except BaseException:
                acc.close()
                raise
        return acc

    def close(self):
        if self._port is not None:
            port, self._port = self._port, None
            # pyserial skips closing its socket when the peer is already gone: close it.
            sock = getattr(port, "_socket", None)
            try:
                port.close()
            except Exception:           # SerialException, OSError: closing anyway
                pass
            if sock is not None:
                sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- link ------------------------------------------------------------------------------

    def resync(self):
        """Bring the link to a known state: after garbage, a lost answer, a damaged frame,
        or at the start of a session.

        Sends :data:`~fpgacnn.hw.protocol.MAX_REQUEST_BYTES` fill bytes (they complete a
        half frame the board is still receiving; frames never time out), ABORT (stops a
        run, keeps the model) and a one-chunk WRITE of a random nonce to image chunk 0,
        then discards everything until the WRITE's answer with the nonce's CRC: every
        answer still owed to an earlier request came before it. Tried again until
        ``3 * timeout`` has passed.

        Raises
        ------
        BoardTimeout, BoardBusy, BoardDisconnected
        """
        if self._port is None:
            raise DriverError("the accelerator is closed")
        deadline = time.monotonic() + 3 * self.timeout
        self._dirty = True
        self._drop_input()
        while True:
            nonce = int.from_bytes(os.urandom(8), "little")
            payload = proto.write_payload(Space.IMAGE, 0, [nonce])
            want = proto.crc16(payload[proto.ARGS_BYTES:]).to_bytes(2, "little")
            self._write_bytes(bytes([proto.FILL_BYTE]) * proto.MAX_REQUEST_BYTES +
                              proto.encode_request(proto.Opcode.ABORT) +
                              proto.encode_request(proto.Opcode.WRITE, payload))
            attempt = min(time.monotonic() + self.timeout, deadline)
            try:
                while True:
                    status, echo, data = self._receive(attempt, proto.Opcode.WRITE)
                    if (status, echo, data) == (proto.Status.OK, proto.Opcode.WRITE, want):
                        self._dirty = False
                        return
            except (BoardTimeout, proto.ProtocolError):
                pass                # silence or a damaged answer: again until the deadline
            if time.monotonic() >= deadline:
                raise BoardTimeout(f"cannot resynchronise with the board at {self.url}: no "
                                   f"answer to ABORT within {3 * self.timeout:g} s; is it "
                                   f"programmed with this fpgacnn's bitstream (fpgacnn build "
                                   f"--program){self._baud_hint()}? Else reset it")

    def _baud_hint(self):
        if self.baud is None:
            return ""
        return (f", and built for the {self.baud:,} baud this port was opened at (a "
                f"bitstream built with --baud B needs --baud B here too)")

    def _drop_input(self):
        """Discard what was received and not read (stale answers, padding), looking for
        the simulated board's busy message in it."""
        self._rx.clear()
        for _ in range(256):                # bounded: a board may still be sending
            chunk = self._available()
            if not chunk:
                break
            self._rx += chunk
            if BUSY_MARKER in self._rx:
                raise self._lost("refused")
            del self._rx[:-len(BUSY_MARKER)]
        self._rx.clear()

    def _available(self):
        """The bytes received so far, without waiting (b"" if none)."""
        try:
            sock = getattr(self._port, "_socket", None)     # pyserial's socket:// handler
            if sock is not None:
                import socket
                try:
                    chunk = sock.recv(1 << 16, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return b""
                if not chunk:
                    raise OSError("the other end closed the connection")
                return chunk
            waiting = self._port.in_waiting
            return self._port.read(waiting) if waiting else b""
        except Exception as e:          # SerialException, OSError: not ours to leak
            raise self._lost(e) from None

    def _lost(self, error):
        """The exception for a port that failed with ``error``."""
        if BUSY_MARKER in self._rx:
            return BoardBusy(f"the board at {self.url} is busy with another client; close "
                             f"the other program (fpgacnn infer/bench, a demo) and try again")
        return BoardDisconnected(f"lost the connection to {self.url} ({error}); is the board "
                                 f"still plugged in (or `fpgacnn sim-board` still running)?")

    def _fill(self, deadline, opcode, want):
        """Read at least one more byte into the receive buffer, or time out."""
        while True:
            try:
                chunk = self._port.read(1)          # waits up to the port's read timeout
            except Exception as e:      # SerialException, OSError: not ours to leak
                raise self._lost(e) from None
            if chunk:
                self._rx += chunk + self._available()
                if BUSY_MARKER in self._rx:
                    raise self._lost("refused")
                return
            if time.monotonic() > deadline:
                raise BoardTimeout(
                    f"no answer to {opcode.name} from {self.url} within {self.timeout:g} s "
                    f"(got {len(self._rx)} of {want} bytes); is the board programmed with "
                    f"the fpgacnn bitstream and at the same baud rate?")

    def _read(self, n, deadline, opcode):
        while len(self._rx) < n:
            self._fill(deadline, opcode, n)
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out

    def _write_bytes(self, raw):
        try:
            self._port.write(raw)
        except Exception as e:          # SerialException, SerialTimeoutException, OSError
            import serial
            if isinstance(e, serial.SerialTimeoutException):
                raise BoardTimeout(f"the board at {self.url} took no bytes for "
                                   f"{self.timeout:g} s; reset it") from None
            raise self._lost(e) from None
        self.bytes_sent += len(raw)

    def _send(self, opcode, payload):
        self._write_bytes(proto.encode_request(opcode, payload))

    def _receive(self, deadline, opcode):
        """One response frame: ``(status, echoed opcode, payload)``; skips padding and
        garbage before it."""
        while True:
            start = self._rx.find(proto.RESPONSE_SYNC)
            if start >= 0:
                break
            self.bytes_received += len(self._rx)
            self._rx.clear()
            self._fill(deadline, opcode, proto.RESPONSE_HEADER_BYTES)
        self.bytes_received += start
        del self._rx[:start]
        head = self._read(proto.RESPONSE_HEADER_BYTES, deadline, opcode)
        length = proto.decode_struct(proto.ResponseHeader, head)["length"]
        raw = head + self._read(length + 2, deadline, opcode)
        self.bytes_received += len(raw)
        return proto.parse_response(raw)

    def transact(self, opcode, payload=b"", *, timeout=None):
        """Send one request, return the payload of its OK response.

        Raises
        ------
        BoardTimeout, BoardError, DriverError
        """
        if self._port is None:
            raise DriverError("the accelerator is closed")
        if self._dirty:
            self.resync()
        self._send(opcode, payload)
        return self._reply(opcode, self.timeout if timeout is None else timeout)

    def _reply(self, opcode, timeout):
        """Receive the response to ``opcode`` (the oldest unanswered request); its payload."""
        deadline = time.monotonic() + timeout
        try:
            status, echo, data = self._receive(deadline, opcode)
        except BoardTimeout:
            self._dirty = True
            raise
        except proto.ProtocolError as e:
            self._dirty = True
            raise LinkDamaged(f"damaged response to {opcode.name} from {self.url}: {e}") \
                from None
        if status != proto.Status.OK:
            if status in _DAMAGED:
                self._dirty = True
            hint = _HINTS.get(status, "this is a driver/board version mismatch or a bug")
            raise BoardError(f"board answered {opcode.name} with {status.name}: {hint}",
                             status, echo)
        if echo != opcode:
            self._dirty = True
            raise LinkDamaged(f"board answered {echo!r} to {opcode.name}; resynchronising")
        return data

    # -- commands --------------------------------------------------------------------------

    def identify(self):
        """Ask the board what it is; returns (and caches) a :class:`BoardInfo`.

        Raises
        ------
        ProtocolMismatch
            See :meth:`BoardInfo.decode`.
        BaudMismatch
            A serial port opened at another rate than the identity's ``baud`` (the two
            ends then understand each other only by chance; a socket has no rate).
        """
        info = BoardInfo.decode(self.transact(proto.Opcode.IDENTIFY))
        if self.baud is not None and self.baud != info.config.baud:
            raise BaudMismatch(f"the board at {self.url} was built for {info.config.baud:,} "
                               f"baud, the port is open at {self.baud:,}; open it with baud="
                               f"{info.config.baud} (fpgacnn infer --baud {info.config.baud})")
        self.info = info
        return self.info

    @property
    def window(self):
        """Bytes the driver keeps in flight: the board's receive FIFO (see protocol)."""
        return (self.info or self.identify()).rx_fifo

    #: Largest pipelined frame as a fraction of the window. The oldest frame's bytes stay
    #: counted until its answer is back, so only the rest of the window keeps the wire
    #: busy meanwhile: 0.6 leaves ~200 bytes of a 512-byte window for the answer's round
    #: trip; boards with a larger receive queue get full 64-chunk frames (a 784-byte image
    #: in 2 frames, 10 bytes of overhead each). README ("Throughput") has the measurements.
    frame_fraction = 0.6

    def _frame_chunks(self):
        """Most chunks per pipelined WRITE (see :attr:`frame_fraction`)."""
        overhead = proto.REQUEST_HEADER_BYTES + proto.ARGS_BYTES + 2
        limit = min(self.info.max_chunks,
                    (int(self.window * self.frame_fraction) - overhead) // proto.CHUNK_BYTES)
        if limit < 1:
            raise DriverError(f"the board's receive window of {self.window} B cannot hold "
                              f"one WRITE frame; rebuild the bitstream")
        return limit

    def _write_requests(self, space, writes, on_done=None):
        """``[(addr, data), ...]`` → pipelined WRITE requests, contiguous runs split evenly
        into as few frames as fit the window; ``on_done(chunks)`` after each answer."""
        limit = self._frame_chunks()
        runs, i = [], 0
        while i < len(writes):
            j = i + 1
            while j < len(writes) and writes[j][0] == writes[i][0] + (j - i):
                j += 1
            runs.append(writes[i:j])
            i = j
        for run in runs:
            frames = -(-len(run) // limit)
            for f in range(frames):
                part = run[f * len(run) // frames:(f + 1) * len(run) // frames]
                payload = proto.write_payload(space, part[0][0], [d for _, d in part])
                yield proto.Opcode.WRITE, payload, self._check_write(space, payload, on_done)

    @staticmethod
    def _check_write(space, payload, on_done):
        want = proto.crc16(payload[proto.ARGS_BYTES:])
        addr = proto.decode_struct(proto.WriteArgs, payload[:proto.ARGS_BYTES])["addr"]
        chunks = (len(payload) - proto.ARGS_BYTES) // proto.CHUNK_BYTES

        def check(data):
            got = int.from_bytes(data, "little")
            if got != want:
                raise DriverError(f"board stored a different {Space(space).name} block at "
                                  f"{addr} (CRC 0x{got:04x}, sent 0x{want:04x}); reload "
                                  f"the model")
            if on_done is not None:
                on_done(chunks)
        return check

    def pipeline(self, requests):
        """Send ``requests`` back to back, never more than :attr:`window` bytes unanswered.

        ``requests`` is an iterable of ``(opcode, payload, on_reply)``; ``on_reply(data)``
        is called with each OK response's payload, in order. The window rule of
        :mod:`~fpgacnn.hw.protocol` makes a board overrun impossible whatever the timing
        (USB latency, a slow host): the board buffers every byte that can be unanswered.
        Bytes go out as soon as the window allows, even part of a frame, so the host→board
        wire stays busy while responses come back on the other wire.

        Raises
        ------
        BoardTimeout, BoardError, DriverError
            As :meth:`transact`; the link is resynchronised before the next request.
        """
        if self._port is None:
            raise DriverError("the accelerator is closed")
        if self._dirty:
            self.resync()
        window = self.window
        requests = iter(requests)
        pending = bytearray()           # encoded, not written yet
        ends = deque()                  # (start, end) stream offsets of frames in pending
        written = encoded = 0           # stream offsets
        inflight = deque()              # (opcode, frame bytes, on_reply), oldest first
        unanswered = 0                  # bytes written whose request is not answered
        more = True
        while True:
            while more and len(pending) < window:
                try:
                    opcode, payload, on_reply = next(requests)
                except StopIteration:
                    more = False
                    break
                frame = proto.encode_request(opcode, payload)
                if len(frame) > window:
                    raise DriverError(f"a {len(frame)}-byte {opcode.name} frame exceeds the "
                                      f"board's {window}-byte receive window; split it")
                pending += frame
                ends.append((encoded, encoded + len(frame)))
                encoded += len(frame)
                inflight.append((opcode, len(frame), on_reply))
            if pending and unanswered < window:
                n = min(window - unanswered, len(pending))
                self._write(pending, n)
                written += n
                unanswered += n
                while ends and ends[0][1] <= written:
                    ends.popleft()
                continue
            if not inflight:
                return
            # The window is full (so the oldest request was sent whole) or all is sent.
            opcode, size, on_reply = inflight.popleft()
            try:
                data = self._reply(opcode, self.timeout)
                unanswered -= size
                if on_reply is not None:
                    on_reply(data)
            except DriverError:
                if inflight:            # their responses may still come: resync first
                    self._dirty = True
                    if ends and ends[0][0] < written:
                        # Finish a frame sent in part, so the board sees no half frame.
                        self._write(pending, ends[0][1] - written)
                raise

    def _write(self, pending, n):
        self._write_bytes(bytes(pending[:n]))
        del pending[:n]

    def _retrying(self, work):
        """``work()``, repeated after a resync when the link damaged a frame or lost an
        answer (at most :attr:`max_retries` times; each counted in :attr:`retries`)."""
        for attempt in range(self.max_retries + 1):
            try:
                return work()
            except (BoardTimeout, LinkDamaged, BoardError) as e:
                damaged = not isinstance(e, BoardError) or e.status in _DAMAGED
                if not damaged or attempt == self.max_retries:
                    raise
                self.retries += 1
                self.resync()

    def _write_runs(self, space, writes, bar=None):
        """``[(addr, data), ...]`` as pipelined WRITE frames."""
        self.pipeline(self._write_requests(
            space, writes, None if bar is None else bar.update))

    def load(self, network, params, *, progress=True, input_quant=None):
        """Compile ``network`` + ``params`` for this board and load them.

        ``input_quant`` (:class:`mnist.InputQuant`, from a model file's ``meta["input"]``)
        is how :meth:`infer` turns uint8 pixels into the model's int8 input.

        Raises
        ------
        ModelDoesNotFit
            With the compiler's explanation (which layer, which memory, how much).
        """
        from tqdm import tqdm
        info = self.info or self.identify()
        try:
            if info.config.name in PIPELINES:      # a layer pipeline for one network's shapes
                spec = PIPELINES[info.config.name]
                program = pipeline.compile_pipeline(network, params, spec.shape,
                                                    spec.groups)
            else:
                program = compiler.compile_network(network, params, info.config)
        except compiler.CompileError as e:
            raise ModelDoesNotFit(f"{network.name} does not fit the board at {self.url} "
                                  f"({info.describe()}): {e}") from None
        writes = program.model_writes()
        order = [Space.WEIGHTS, Space.QPARAMS, Space.PROGRAM]   # program last: "loaded"
        total = sum(len(writes[s]) for s in order)
        self.program = None
        with tqdm(total=total, unit="chunk", desc=f"loading {network.name}",
                  disable=not progress, leave=False) as bar:
            for space in order:
                self._retrying(lambda space=space: self._write_runs(space, writes[space], bar))
        self.program = program
        self.input_quant = input_quant
        return program

    def _result_args(self, counters):
        return proto.encode_struct(proto.ResultArgs, {
            "n_logits": self.program.output_count,
            "n_counters": 1 + len(self.program.descriptor_stages) if counters else 0})

    def _stage_counters(self, counters):
        """RESULT counters (total, then per descriptor) → ``(N, 1 + stages)``: the total,
        then per stage the sum of its descriptors' cycles (bands, groups, copies)."""
        program = self.program
        raw = np.array(counters, dtype=np.uint32).reshape(
            len(counters), 1 + len(program.descriptor_stages))
        out = np.zeros((len(raw), 1 + len(program.stages)), np.uint32)
        out[:, 0] = raw[:, 0]
        for i, stage in enumerate(program.descriptor_stages):
            out[:, 1 + stage] += raw[:, 1 + i]
        return out

    def infer(self, images, *, progress=True, all_counters=False, taps=None):
        """Classify ``images``; returns ``(classes (N,), logits int8 (N, K))``.

        ``K`` is the size of the last stage's whole output map (``C·H·W``, CHW order).
        With ``taps`` (stage indices), returns ``(classes, logits, maps)`` where
        ``maps[i]`` is stage ``i``'s int8 output, shape ``(N, C, H, W)``: see
        :meth:`infer_taps`.

        Pipelined over the link and the two image slots (the order is in
        :mod:`~fpgacnn.hw.protocol`): image ``b+1`` is sent while image ``b`` computes,
        and no request waits for the previous answer, so the host→board wire carries
        image bytes nearly all the time. The cycle counters (total, then per layer) are
        left in :attr:`counters`: one row per image with ``all_counters``, else only the
        first image's (the schedule does not depend on the data; 24 bytes less per image).

        Raises
        ------
        ImageError
            Wrong dtype or shape (see :func:`prepare_images`).
        DriverError
            No model loaded, or a link failure.
        """
        from tqdm import tqdm
        if self.program is None:
            raise DriverError("no model loaded; call load(network, params) first")
        if taps is not None:
            return self.infer_taps(images, taps, progress=progress, all_counters=all_counters)
        x = prepare_images(images, self.program.network.input_shape, self.input_quant)
        n = len(x)
        k = self.program.output_count
        logits, counters = [], []

        def result(data):
            logits.append(np.frombuffer(data[:k], dtype=np.int8))
            if len(data) > k:
                counters.append(np.frombuffer(data[k:], dtype="<u4"))
            bar.update(1)

        def requests(first):
            """From image ``first`` on (after a retry: the first without a result)."""
            for b in range(first, n + 1):
                if b < n:           # image b into slot b % 2: free once RESULT(b-2) is in
                    yield from self._write_requests(
                        Space.IMAGE, self.program.image_writes(x[b], b % 2))
                if b > first:
                    yield (proto.Opcode.RESULT,
                           self._result_args(all_counters or b == 1), result)
                if b < n:
                    run = proto.encode_struct(
                        proto.RunArgs, {"image_base": self.program.image_base(b % 2)})
                    yield proto.Opcode.RUN, run, None

        with tqdm(total=n, unit="img", desc="inference", disable=not progress or n < 2,
                  leave=False) as bar:
            self._retrying(lambda: self.pipeline(requests(len(logits))))
        if len(logits) != n:
            raise DriverError(f"got {len(logits)} results for {n} images")
        self.counters = self._stage_counters(counters)
        logits = np.array(logits, dtype=np.int8).reshape(n, k)
        return logits.argmax(axis=1), logits

    def infer_taps(self, images, taps, *, progress=True, all_counters=False):
        """:meth:`infer` that also returns the output map of every stage in ``taps``.

        For each tapped stage but the last, the loaded program is cut after it
        (:func:`~fpgacnn.sw.compiler.tap_program`: only the layer program is rewritten,
        a few chunks) and the images run through it, so the map is read from the
        activation memory exactly as the board computed it; then the whole program is
        restored and run (its counters are left in :attr:`counters`).

        Returns
        -------
        classes, logits, maps
            As :meth:`infer`, and ``{stage: int8 array (N, C, H, W)}``.

        Raises
        ------
        ValueError
            A tap that is not a stage index of the loaded network.
        """
        if self.program is None:
            raise DriverError("no model loaded; call load(network, params) first")
        if not hasattr(self.program, "descriptors"):
            raise DriverError(f"taps need the core's layer program; {self.info.config.name} "
                              f"is a layer pipeline, whose inner maps stay on the board")
        full, last = self.program, len(self.program.stages) - 1
        cuts = {int(t): compiler.tap_program(full, t) for t in taps}    # checks each tap
        maps = {}
        try:
            for t, cut in sorted(cuts.items()):
                if t == last:
                    continue                # the whole program's output, below
                self._write_runs(Space.PROGRAM, cut.model_writes()[Space.PROGRAM])
                self.program = cut
                _, out = self.infer(images, progress=progress)
                maps[t] = out.reshape(len(out), *full.stages[t].out_shape)
        finally:
            if self.program is not full:
                self.program = None         # until the whole program is back
                self._write_runs(Space.PROGRAM, full.model_writes()[Space.PROGRAM])
                self.program = full
        classes, logits = self.infer(images, progress=progress, all_counters=all_counters)
        if last in cuts:
            maps[last] = logits.reshape(len(logits), *full.stages[last].out_shape)
        return classes, logits, maps
