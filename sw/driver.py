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
do; nothing waits forever (every read has a deadline).
"""

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..hw import protocol as proto
from ..hw.config import DEFAULT_BAUD, AcceleratorConfig
from ..hw.program import Space
from . import compiler, mnist

__all__ = ["Accelerator", "BoardInfo", "DriverError", "BoardNotFound", "BoardTimeout",
           "BoardError", "ProtocolMismatch", "ModelDoesNotFit", "ImageError",
           "prepare_images", "as_batch", "DEFAULT_BAUD"]


class DriverError(Exception):
    """Base class of everything the driver raises about the board or the link."""


class BoardNotFound(DriverError):
    """The port or socket could not be opened."""


class BoardTimeout(DriverError):
    """The board did not answer in time."""


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


class ModelDoesNotFit(DriverError, ValueError):
    """The network cannot be compiled for the board's configuration."""


class ImageError(DriverError, ValueError):
    """Images of the wrong shape, dtype or range."""


_HINTS = {
    proto.Status.BAD_CRC: "the frame was damaged on the way; check the cable/baud rate",
    proto.Status.NOT_LOADED: "load a model first (Accelerator.load)",
    proto.Status.BUSY: "a run is still in progress",
    proto.Status.NO_RESULT: "nothing was run since the board started",
}


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
        Bytes of its receive FIFO: the host's pipelining window.
    timeout_us : int
        Its frame time-out.
    """
    config: AcceleratorConfig
    version: int
    max_chunks: int
    rx_fifo: int
    timeout_us: int

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
                   rx_fifo=1 << f["rx_fifo_log2"], timeout_us=f["timeout_us"])

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
        Cycle counters of the last :meth:`infer` batch: total, then per layer.
    bytes_sent, bytes_received : int
        Link traffic so far (frames and CRCs included).
    """

    def __init__(self, port, url, *, timeout):
        self._port = port
        self.url = url
        self.timeout = timeout
        self.info = None
        self.program = None
        self.input_quant = None
        self.counters = np.zeros((0, 0), np.uint32)
        self.bytes_sent = self.bytes_received = 0
        self._dirty = False

    @classmethod
    def open(cls, url, *, timeout=5.0, baud=DEFAULT_BAUD):
        """Open ``url`` (a serial device or ``socket://127.0.0.1:PORT``).

        Parameters
        ----------
        timeout : float
            Seconds to wait for any one response before :class:`BoardTimeout`.
        baud : int
            Serial baud rate (ignored by sockets); must match the board's build.
        """
        import serial
        try:
            port = serial.serial_for_url(url, baudrate=baud, timeout=min(timeout, 0.5),
                                         write_timeout=timeout)
        except (serial.SerialException, ValueError, OSError) as e:
            hint = ("is `fpgacnn sim-board` running on that port?" if url.startswith("socket:")
                    else "is the board plugged in, and is that its port (ls /dev/ttyUSB*)?")
            raise BoardNotFound(f"cannot open {url}: {e}; {hint}") from None
        sock = getattr(port, "_socket", None)       # pyserial's socket:// handler
        if sock is not None:
            # Without it, Nagle's algorithm holds back the small writes of a pipeline until
            # the previous ones are acknowledged (tens of ms with delayed ACKs).
            import socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(port, url, timeout=timeout)

    def close(self):
        if self._port is not None:
            self._port.close()
            self._port = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- link ------------------------------------------------------------------------------

    def resync(self):
        """Bring the link back to a known state after garbage, a timeout or a bad frame.

        Waits for the board to drop any half-received frame (its frame timeout), discards
        stale input, then sends IDENTIFY until its answer comes back, skipping stale
        responses. The simulated board runs slower than real time, hence the retries.
        """
        wait = (self.info.timeout_us if self.info else proto.FRAME_TIMEOUT_US) * 2e-6
        deadline = time.monotonic() + max(2 * self.timeout, 1.0)
        self._dirty = False
        while True:
            if time.monotonic() >= deadline:
                self._dirty = True
                raise BoardTimeout(f"cannot resynchronise with the board at {self.url}: "
                                   f"no answer to IDENTIFY; reset or reprogram it")
            time.sleep(wait)
            self._port.reset_input_buffer()
            self._send(proto.Opcode.IDENTIFY, b"")
            attempt = min(time.monotonic() + min(self.timeout, 1.0), deadline)
            try:
                while True:
                    status, echo, _ = self._receive(attempt, proto.Opcode.IDENTIFY)
                    if status == proto.Status.OK and echo == proto.Opcode.IDENTIFY:
                        return
                    if status in (proto.Status.TRUNCATED, proto.Status.BAD_CRC):
                        break       # our IDENTIFY was swallowed by a damaged frame: again
            except (BoardTimeout, proto.ProtocolError):
                pass                # silence or a damaged answer: try again until deadline

    def _read(self, n, deadline, opcode):
        out = bytearray()
        while len(out) < n:
            if time.monotonic() > deadline:
                raise BoardTimeout(
                    f"no answer to {opcode.name} from {self.url} within {self.timeout:g} s "
                    f"(got {len(out)} of {n} bytes); is the board programmed with the "
                    f"fpgacnn bitstream and at the same baud rate?")
            out += self._port.read(n - len(out))
        return bytes(out)

    def _send(self, opcode, payload):
        frame = proto.encode_request(opcode, payload)
        self._port.write(frame)
        self.bytes_sent += len(frame)

    def _receive(self, deadline, opcode):
        """One response frame: ``(status, echoed opcode, payload)``; skips garbage."""
        skipped = 0
        while self._read(1, deadline, opcode)[0] != proto.RESPONSE_SYNC:
            skipped += 1
        head = bytes([proto.RESPONSE_SYNC]) + self._read(
            proto.RESPONSE_HEADER_BYTES - 1, deadline, opcode)
        length = proto.decode_struct(proto.ResponseHeader, head)["length"]
        raw = head + self._read(length + 2, deadline, opcode)
        self.bytes_received += len(raw) + skipped
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
            raise DriverError(f"damaged response to {opcode.name} from {self.url}: {e}") \
                from None
        if status != proto.Status.OK:
            if status in (proto.Status.TRUNCATED, proto.Status.BAD_CRC):
                self._dirty = True
            hint = _HINTS.get(status, "this is a driver/board version mismatch or a bug")
            raise BoardError(f"board answered {opcode.name} with {status.name}: {hint}",
                             status, echo)
        if echo != opcode:
            self._dirty = True
            raise DriverError(f"board answered {echo!r} to {opcode.name}; resynchronising")
        return data

    # -- commands --------------------------------------------------------------------------

    def identify(self):
        """Ask the board what it is; returns (and caches) a :class:`BoardInfo`."""
        self.info = BoardInfo.decode(self.transact(proto.Opcode.IDENTIFY))
        return self.info

    @property
    def window(self):
        """Bytes the driver keeps in flight: the board's receive FIFO (see protocol)."""
        return (self.info or self.identify()).rx_fifo

    #: Largest pipelined frame as a fraction of the window. The oldest frame's bytes stay
    #: counted until its answer is back, so only the rest of the window keeps the wire
    #: busy meanwhile: 0.6 leaves ~200 bytes of a 512-byte window for the answer's round
    #: trip and sends a 784-byte image in 3 frames (10 bytes of overhead each); README
    #: ("Throughput") has the measurements that chose it.
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
        self._port.write(bytes(pending[:n]))
        del pending[:n]
        self.bytes_sent += n

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
                self._write_runs(space, writes[space], bar)
        self.program = program
        self.input_quant = input_quant
        return program

    def _result_args(self, counters):
        return proto.encode_struct(proto.ResultArgs, {
            "n_logits": self.program.output_count,
            "n_counters": 1 + len(self.program.stages) if counters else 0})

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

        def requests():
            for b in range(n + 1):
                if b < n:           # image b into slot b % 2: free once RESULT(b-2) is in
                    yield from self._write_requests(
                        Space.IMAGE, self.program.image_writes(x[b], b % 2))
                if b > 0:
                    yield (proto.Opcode.RESULT,
                           self._result_args(all_counters or b == 1), result)
                if b < n:
                    run = proto.encode_struct(
                        proto.RunArgs, {"image_base": self.program.image_base(b % 2)})
                    yield proto.Opcode.RUN, run, None

        with tqdm(total=n, unit="img", desc="inference", disable=not progress or n < 2,
                  leave=False) as bar:
            self.pipeline(requests())
        if len(logits) != n:
            raise DriverError(f"got {len(logits)} results for {n} images")
        self.counters = np.array(counters, dtype=np.uint32).reshape(
            len(counters), 1 + len(self.program.stages))
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
