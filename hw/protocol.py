"""The host↔board wire protocol: the one place it is defined.

Gateware (:mod:`.link`) and the host driver (``fpgacnn.sw.driver``) both use these
definitions; nothing here builds gateware, so the host may import it freely.

Framing (all multi-byte fields little-endian, CRC-16/CCITT from ``amaranth.lib.crc``
over every byte of the frame before the CRC, sync byte included; the CRC goes out low
byte first)::

    request  : RequestHeader  (sync 0xA5, opcode, length)          + payload + crc16
    response : ResponseHeader (sync 0x5A, status, opcode, length)  + payload + crc16

The board answers every complete request with exactly one response, in request order. The
host may keep requests in flight (pipelining) under one rule, which makes overrun
impossible without any timing assumption: **at most** ``1 << Identity.rx_fifo_log2``
bytes (the board's receive queue, :attr:`~.config.AcceleratorConfig.rx_fifo_bytes`: the
host's credit) may have been sent whose request has not been answered yet. Every byte the
board has received but not yet consumed belongs to such a request (a request is answered
only after all its bytes were consumed), and the board queues that many bytes in front of
its frame decoder, so none is ever dropped while it commits a write, waits for a run or
sends a response. A request larger than the window must not be sent at all; the driver
splits image writes accordingly. The queue is sized so that the host's credit covers the
link's bandwidth × round-trip time (USB latency included; README, "Real boards").

The board receives a whole frame and checks its CRC, length and arguments *before*
acting on it, so a damaged frame never changes what is loaded. Frames never time out: a
host may pause for any time mid-frame (a busy PC, a USB hub). A header announcing more
than :data:`MAX_PAYLOAD` bytes is answered at once (``BAD_CRC``/``BAD_LENGTH``), so a
frame never holds the decoder for more than :data:`MAX_REQUEST_BYTES`; a host that finds
the link in an unknown state (a session that died mid-frame) completes any half frame by
sending :data:`MAX_REQUEST_BYTES` bytes of :data:`FILL_BYTE`, which the board then skips
as bytes outside a frame (garbage is skipped until the next sync byte), and sends ABORT.

After each response the board sends up to ``Identity.pad_bytes`` bytes of
:data:`FILL_BYTE` (never a sync byte; the host skips them), cut short by the next
response: a USB serial bridge such as the FT2232H holds board→host bytes until 510 wait
or its latency timer expires (16 ms by default on Linux), and the padding pushes every
response through within 510 byte times instead.

Commands (``payload`` → response payload on :attr:`Status.OK`):

``IDENTIFY``  ``-`` → :class:`Identity`.
``WRITE``     :class:`WriteArgs` + ``n`` 8-byte chunks (1 ≤ ``n`` ≤ :data:`MAX_CHUNKS`)
              → 2-byte CRC-16 of the chunk bytes as the board committed them.
              Writes to anything but ``IMAGE`` are refused with ``BUSY`` while a run is
              in progress (image slots are double-buffered by the host); ``IMAGE``
              chunks for the activation window wait for the run's end.
``RUN``       :class:`RunArgs` → ``-``; returns at once (``BUSY`` if a run is in
              progress, ``NOT_LOADED`` before any layer program was written).
``RUN``       also ``BAD_ARGUMENT`` if ``image_base`` is outside the activation
              addresses (``act_space``).
``RESULT``    :class:`ResultArgs` → waits for the run to finish, then ``n_logits``
              int8 outputs (activation bytes ``out_base … out_base + n_logits - 1`` of
              the last descriptor run: its output map, CHW) followed by ``n_counters`` uint32
              cycle counters (total, then one per layer); ``NO_RESULT`` if nothing was
              run (or since ABORT); ``WATCHDOG`` if the run took
              ``2 ** Identity.watchdog_log2`` cycles and was stopped (a layer program
              that never ends).
``ABORT``     ``-`` → ``-``: stops a run (the core's sequencer and datapath go back to
              idle, the loaded weights, qparams and program stay) and forgets it
              (``NO_RESULT``). Answered once the core is idle.

Pipelined inference (what the driver sends for image ``i`` in slot ``i % 2``)::

    WRITE(image 0 → slot 0)  RUN(slot 0)
    WRITE(image i+1 → slot (i+1)%2)  RESULT(i)  RUN(slot (i+1)%2)    for i = 0, 1, ...

All back to back within the window: the image bytes keep the host→board wire busy while
image ``i`` computes, and the small responses travel on the board→host wire meanwhile.
RESULT(i) arrives after the bytes of image ``i+1``, so the run is normally over when it
is decoded; RUN(i+1) follows the RESULT that waited for run ``i``, so it is never BUSY.
"""

from amaranth.lib import crc, data, enum

from .config import MAX_NAME_CHARS, AcceleratorConfig, Dataflow
from .program import CHUNK_BITS, DESCRIPTOR_WORDS, ReadSpace, Space

__all__ = [
    "PROTOCOL_VERSION", "REQUEST_SYNC", "RESPONSE_SYNC", "MAX_CHUNKS", "CHUNK_BYTES",
    "MAX_PAYLOAD", "MAX_REQUEST_BYTES", "FILL_BYTE", "RX_FIFO_BYTES", "CRC",
    "Opcode", "Status", "RequestHeader", "ResponseHeader", "WriteArgs", "RunArgs",
    "ResultArgs", "Identity", "ARGS_BYTES", "IDENTITY_FLAG_ICE40", "IDENTITY_FLAGS",
    "struct_bytes", "encode_struct", "decode_struct", "crc16",
    "encode_request", "encode_response", "ProtocolError", "parse_response",
    "parse_request", "write_payload", "space_chunks", "identity_fields", "identity_words",
    "identity_config",
    "DATAFLOW_CODES", "ReadSpace", "Space", "REQUEST_HEADER_BYTES", "RESPONSE_HEADER_BYTES",
]

#: Version 9: the identity has ``write_banks``. (8: layer descriptors have
#: ``pixel_pairs``, the identity's flags say whether the board obeys it. 7: the
#: identity's reserved byte is ``result_lanes``. 6: layer descriptors have ``copy`` and
#: ``pad_top`` (and copy descriptors exist), RESULT reads from the last descriptor's
#: ``out_base``, the activation window. 5: RESULT returns the last layer's whole output
#: map from the activation memory (16-bit ``n_logits``); the identity no longer has a
#: logits-buffer size. 4: no frame time-out, ABORT, the WATCHDOG status, RUN range check,
#: response padding, the receive queue and watchdog in the identity; 3: the identity
#: carries every field of the board's AcceleratorConfig.)
PROTOCOL_VERSION = 9
REQUEST_SYNC = 0xA5
RESPONSE_SYNC = 0x5A
#: Bytes of one WRITE chunk (a 64-bit ``Core.wr`` beat).
CHUNK_BYTES = CHUNK_BITS // 8
#: Chunks one WRITE frame may carry; the board buffers them (one EBR) before committing.
MAX_CHUNKS = 64
#: Bytes of every command's argument block (the first bytes of a request payload).
ARGS_BYTES = 4
#: Largest request payload the board accepts (a full WRITE).
MAX_PAYLOAD = ARGS_BYTES + MAX_CHUNKS * CHUNK_BYTES
#: The smallest receive queue a board may have (one iCE40 EBR); boards report theirs
#: (``Identity.rx_fifo_log2``, :attr:`~.config.AcceleratorConfig.rx_fifo_bytes`).
RX_FIFO_BYTES = 512
#: The longest request frame: header, a full WRITE payload, CRC.
MAX_REQUEST_BYTES = 4 + MAX_PAYLOAD + 2
#: The byte the host fills a half frame with, and the board pads its responses with:
#: neither sync byte, so it is skipped outside a frame.
FILL_BYTE = 0x00
#: Frame check: CRC-16/CCITT (KERMIT), reflected, bytes in, 16 bits out.
CRC = crc.catalog.CRC16_CCITT(data_width=8)
#: ``Identity.flags`` bit: built with hand-instantiated iCE40 primitives.
IDENTITY_FLAG_ICE40 = 1
#: ``Identity.flags`` bits of the boolean config options that are not ``ice40`` (the host
#: must compile for them: ``fc_columns`` changes the weight layout, ``act_window`` the
#: activation addresses, ``compact_drain`` and ``wrap_rows`` the cycles a layer takes,
#: ``pixel_pairs`` whether a layer may pair pixels, ``overlap_drain`` and
#: ``prefetch_descriptors`` the cycles again).
IDENTITY_FLAGS = {"ice40": IDENTITY_FLAG_ICE40, "compact_drain": 2, "fc_columns": 4,
                  "act_window": 8, "wrap_rows": 16, "pixel_pairs": 32, "overlap_drain": 64,
                  "prefetch_descriptors": 128}
#: ``Identity.dataflow``: the code of each :class:`~.config.Dataflow`.
DATAFLOW_CODES = {Dataflow.SYSTOLIC: 0, Dataflow.BROADCAST: 1}


class Opcode(enum.Enum, shape=8):
    IDENTIFY = 0x01
    WRITE = 0x02
    RUN = 0x03
    RESULT = 0x04
    ABORT = 0x05


class Status(enum.Enum, shape=8):
    OK = 0x00
    BAD_CRC = 0x01       # frame check failed: nothing was done
    BAD_OPCODE = 0x02    # unknown opcode
    BAD_LENGTH = 0x03    # payload length wrong for the opcode, or above MAX_PAYLOAD
    BAD_ARGUMENT = 0x04  # address range beyond a memory, count beyond a buffer
    NOT_LOADED = 0x05    # RUN before any layer program was written
    BUSY = 0x06          # RUN or a model write while a run is in progress
    NO_RESULT = 0x07     # RESULT without a RUN
    WATCHDOG = 0x08      # the run exceeded the watchdog and was stopped (a bad program)


class RequestHeader(data.Struct):
    """First bytes of a request; first field = least significant = first on the wire."""
    sync: 8
    opcode: Opcode
    length: 16           # payload bytes, CRC excluded


class ResponseHeader(data.Struct):
    sync: 8
    status: Status
    opcode: Opcode       # echo of the request's opcode
    length: 16


class WriteArgs(data.Struct):
    space: Space
    _reserved0: 6
    addr: 16             # first chunk; chunk i goes to addr + i
    _reserved1: 8


class RunArgs(data.Struct):
    image_base: 16       # activation byte address of the image slot to run on
    _reserved: 16


class ResultArgs(data.Struct):
    n_logits: 16         # int8 outputs to return (<= AcceleratorConfig.max_logits)
    n_counters: 8        # uint32 counters to return: total, then per layer (<= 1 + max_layers)
    _reserved: 8


class Identity(data.Struct):
    """What the board reports to IDENTIFY: its :class:`~.config.AcceleratorConfig` (every
    field: the host compiles for exactly this build) and the link's limits.

    ``version`` comes first in every protocol version, so a host can tell a board it
    cannot decode. ``name`` is ASCII, NUL-padded.
    """
    version: 8
    rows: 8
    cols: 8
    flags: 8
    weight_words: 32
    act_bytes: 32
    max_reduction: 16
    qparam_entries: 16
    max_layers: 8
    max_chunks: 8
    rx_fifo_log2: 8      # the host's pipelining window is 1 << rx_fifo_log2 bytes
    clock_hz: 32
    baud: 32
    watchdog_log2: 8     # a run is stopped after 2 ** watchdog_log2 cycles
    pad_bytes: 16        # FILL_BYTE padding after each response (0: none)
    result_lanes: 8
    pool_width: 16
    pool_blocks: 8
    dataflow: 8          # DATAFLOW_CODES
    requant_interval: 8
    write_banks: 8
    name: 8 * MAX_NAME_CHARS


assert set(DATAFLOW_CODES) == set(Dataflow), DATAFLOW_CODES
assert RX_FIFO_BYTES & (RX_FIFO_BYTES - 1) == 0, RX_FIFO_BYTES
assert FILL_BYTE not in (REQUEST_SYNC, RESPONSE_SYNC), FILL_BYTE
for _args in (WriteArgs, RunArgs, ResultArgs):
    assert _args.as_shape().size == ARGS_BYTES * 8, _args


def struct_bytes(layout):
    """Size of ``layout`` in whole bytes."""
    return -(-data.Layout.cast(layout).size // 8)


def encode_struct(layout, fields):
    """``fields`` (a dict; enums as members or ints) packed into little-endian bytes.

    Missing fields are zero. Raw ints are accepted for enum fields, so tests can
    encode values the enum does not define (an unknown opcode).
    """
    layout = data.Layout.cast(layout)
    unknown = set(fields) - {name for name, _ in layout}
    if unknown:
        raise KeyError(f"{sorted(unknown)} are not fields of {layout!r}")
    value = 0
    for name, f in layout:
        v = fields.get(name, 0)
        v = v.value if hasattr(v, "value") else int(v)
        if not -(1 << f.width) < v < 1 << f.width:
            raise ValueError(f"{name} = {v} does not fit {f.width} bits")
        value |= (v & ((1 << f.width) - 1)) << f.offset
    return value.to_bytes(struct_bytes(layout), "little")


def decode_struct(layout, raw):
    """Little-endian ``raw`` bytes → dict of ``layout``'s fields as plain ints."""
    value = int.from_bytes(bytes(raw), "little")
    out = {}
    for name, f in data.Layout.cast(layout):
        out[name] = (value >> f.offset) & ((1 << f.width) - 1)
    return out


def crc16(raw):
    """The frame check value of ``raw`` bytes."""
    return CRC.compute(bytes(raw))


def _frame(header, payload):
    body = header + bytes(payload)
    return body + crc16(body).to_bytes(2, "little")


def encode_request(opcode, payload=b""):
    """A complete request frame."""
    payload = bytes(payload)
    if len(payload) >= 1 << 16:
        raise ValueError(f"payload of {len(payload)} bytes does not fit the 16-bit length")
    return _frame(encode_struct(RequestHeader, {
        "sync": REQUEST_SYNC, "opcode": opcode, "length": len(payload)}), payload)


def encode_response(status, opcode, payload=b""):
    """A complete response frame (what the board sends; used by tests and test doubles)."""
    return _frame(encode_struct(ResponseHeader, {
        "sync": RESPONSE_SYNC, "status": Status(status), "opcode": Opcode(opcode),
        "length": len(payload)}), payload)


class ProtocolError(Exception):
    """A frame that cannot be parsed (bad sync, CRC or length)."""


REQUEST_HEADER_BYTES = struct_bytes(RequestHeader)
RESPONSE_HEADER_BYTES = struct_bytes(ResponseHeader)


def _parse(raw, layout, sync, what):
    size = struct_bytes(layout)
    if len(raw) < size + 2:
        raise ProtocolError(f"{what} of {len(raw)} bytes is shorter than a header and CRC")
    header = decode_struct(layout, raw[:size])
    if header["sync"] != sync:
        raise ProtocolError(f"{what} starts with 0x{header['sync']:02x}, not 0x{sync:02x}")
    if len(raw) != size + header["length"] + 2:
        raise ProtocolError(f"{what} of {len(raw)} bytes, header says payload "
                            f"{header['length']} (+{size} header, +2 CRC)")
    got = int.from_bytes(raw[-2:], "little")
    if got != crc16(raw[:-2]):
        raise ProtocolError(f"{what} CRC 0x{got:04x} != computed 0x{crc16(raw[:-2]):04x}")
    return header, bytes(raw[size:-2])


def parse_response(raw):
    """A complete response frame → ``(Status, Opcode or int, payload)``."""
    header, payload = _parse(bytes(raw), ResponseHeader, RESPONSE_SYNC, "response")
    try:
        opcode = Opcode(header["opcode"])
    except ValueError:
        opcode = header["opcode"]
    try:
        status = Status(header["status"])
    except ValueError:
        raise ProtocolError(f"response with unknown status 0x{header['status']:02x}") from None
    return status, opcode, payload


def parse_request(raw):
    """A complete request frame → ``(opcode int, payload)`` (for test doubles)."""
    header, payload = _parse(bytes(raw), RequestHeader, REQUEST_SYNC, "request")
    return header["opcode"], payload


def write_payload(space, addr, chunks):
    """WRITE payload: ``chunks`` (ints of 64 bits) to ``space`` from chunk ``addr``."""
    chunks = list(chunks)
    if not 1 <= len(chunks) <= MAX_CHUNKS:
        raise ValueError(f"a WRITE carries 1..{MAX_CHUNKS} chunks, not {len(chunks)}")
    body = b"".join(int(c).to_bytes(CHUNK_BYTES, "little") for c in chunks)
    return encode_struct(WriteArgs, {"space": Space(space), "addr": addr}) + body


def space_chunks(config, space):
    """Number of 64-bit chunks in memory ``space`` of a board built with ``config``."""
    return {
        Space.WEIGHTS: config.weight_words * config.rows // CHUNK_BYTES,
        Space.QPARAMS: config.qparam_entries,
        Space.PROGRAM: config.max_layers * DESCRIPTOR_WORDS,
        Space.IMAGE: config.act_space // CHUNK_BYTES,
    }[Space(space)]


#: :class:`Identity` fields that are :class:`~.config.AcceleratorConfig` fields unchanged.
_CONFIG_FIELDS = ("rows", "cols", "weight_words", "act_bytes", "max_reduction",
                  "qparam_entries", "max_layers", "clock_hz", "baud",
                  "pool_width", "pool_blocks", "requant_interval", "watchdog_log2",
                  "result_lanes", "write_banks")


def identity_fields(config):
    """The :class:`Identity` a board built with ``config`` reports (a dict of ints).

    Raises
    ------
    ValueError
        If a field of ``config`` does not fit its :class:`Identity` field.
    """
    fields = {name: getattr(config, name) for name in _CONFIG_FIELDS}
    fields.update({
        "version": PROTOCOL_VERSION,
        "flags": sum(bit for flag, bit in IDENTITY_FLAGS.items() if getattr(config, flag)),
        "dataflow": DATAFLOW_CODES[config.dataflow],
        "name": int.from_bytes(config.name.encode("ascii"), "little"),
        "max_chunks": MAX_CHUNKS, "rx_fifo_log2": config.rx_fifo_bytes.bit_length() - 1,
        "pad_bytes": config.tx_pad_bytes,
    })
    layout = data.Layout.cast(Identity)
    for name, value in fields.items():
        if value >> layout[name].width:
            raise ValueError(f"config {config.name}: {name} = {value} does not fit the "
                             f"{layout[name].width}-bit identity field")
    return fields


def identity_words(config):
    """The :class:`Identity` of ``config`` as the 32-bit words the core keeps and answers
    IDENTITY reads with (:class:`~.program.ReadSpace`): bytes ``4k … 4k+3`` in word
    ``k``, LSB first, the last word padded with zeros."""
    raw = encode_struct(Identity, identity_fields(config))
    return [int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4)]


def identity_config(fields):
    """The :class:`~.config.AcceleratorConfig` of a board from its identity ``fields``
    (as :func:`decode_struct` returns them); the inverse of :func:`identity_fields`.

    Raises
    ------
    ValueError
        If the fields do not make a valid configuration (unknown dataflow code, a zero
        size, ...); the message names the field and the value.
    """
    codes = {code: dataflow for dataflow, code in DATAFLOW_CODES.items()}
    if fields["dataflow"] not in codes:
        raise ValueError(f"identity dataflow code {fields['dataflow']} is none of "
                         f"{sorted(codes)}")
    raw_name = fields["name"].to_bytes(MAX_NAME_CHARS, "little").rstrip(b"\0")
    return AcceleratorConfig(
        name=raw_name.decode("ascii", errors="replace"),
        **{flag: bool(fields["flags"] & bit) for flag, bit in IDENTITY_FLAGS.items()},
        dataflow=codes[fields["dataflow"]],
        rx_fifo_bytes=1 << fields["rx_fifo_log2"], tx_pad_bytes=fields["pad_bytes"],
        **{name: fields[name] for name in _CONFIG_FIELDS})
