"""Host side of the wire protocol: encode/parse round trips, CRC, struct sizes.

The gateware side of the same definitions is exercised bit-level in ``test_link.py``.
"""

import random

import pytest

from fpgacnn.hw import protocol as proto
from fpgacnn.hw.config import CONFIGS, MAX_NAME_CHARS
from fpgacnn.hw.program import Space


def test_crc_is_the_amaranth_catalog_crc16_ccitt():
    assert proto.crc16(b"123456789") == 0x2189        # CRC-16/KERMIT check value
    assert proto.CRC.residue() == 0


@pytest.mark.parametrize("seed", range(3))
def test_request_round_trip(seed):
    rng = random.Random(seed)
    for _ in range(20):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 600)))
        opcode = rng.choice(list(proto.Opcode))
        assert proto.parse_request(proto.encode_request(opcode, payload)) == \
            (opcode.value, payload)


@pytest.mark.parametrize("status", list(proto.Status))
def test_response_round_trip(status):
    frame = proto.encode_response(status, proto.Opcode.RESULT, b"\x80\x7f\x00")
    assert proto.parse_response(frame) == (status, proto.Opcode.RESULT, b"\x80\x7f\x00")


def test_damaged_frames_are_rejected():
    frame = bytearray(proto.encode_response(proto.Status.OK, proto.Opcode.IDENTIFY, b"ab"))
    for i in range(len(frame)):
        bad = bytearray(frame)
        bad[i] ^= 0x04
        with pytest.raises(proto.ProtocolError):
            proto.parse_response(bytes(bad))
    with pytest.raises(proto.ProtocolError, match="shorter"):
        proto.parse_response(bytes(frame[:4]))
    with pytest.raises(proto.ProtocolError, match="payload"):
        proto.parse_response(bytes(frame[:-1]))


def test_write_payload_layout():
    payload = proto.write_payload(Space.PROGRAM, 0x1234, [0x0807060504030201, (1 << 64) - 1])
    assert payload[:4] == bytes([Space.PROGRAM.value, 0x34, 0x12, 0])
    assert payload[4:12] == bytes(range(1, 9)) and payload[12:] == b"\xff" * 8
    assert len(proto.write_payload(Space.IMAGE, 0, [0] * proto.MAX_CHUNKS)) == \
        proto.MAX_PAYLOAD
    with pytest.raises(ValueError, match="1..64"):
        proto.write_payload(Space.IMAGE, 0, [0] * (proto.MAX_CHUNKS + 1))
    with pytest.raises(ValueError, match="fit"):
        proto.encode_struct(proto.WriteArgs, {"addr": 1 << 16})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_identity_round_trip(name):
    """Every configuration survives the identity frame whole: the host compiles for
    exactly what the board was built with."""
    cfg = CONFIGS[name]
    raw = proto.encode_struct(proto.Identity, proto.identity_fields(cfg))
    assert len(raw) == proto.struct_bytes(proto.Identity) == 53
    assert raw[0] == proto.PROTOCOL_VERSION              # first in every version
    fields = proto.decode_struct(proto.Identity, raw)
    assert fields == proto.identity_fields(cfg)
    assert proto.identity_config(fields) == cfg
    # Every memory's chunk count fits the 16-bit WRITE address.
    assert all(proto.space_chunks(cfg, s) <= 1 << 16 for s in Space)


def test_identity_carries_non_default_fields():
    cfg = CONFIGS["icebreaker"].with_(name="x" * MAX_NAME_CHARS, pool_width=300,
                                      pool_blocks=7, requant_interval=4, baud=115_200,
                                      dataflow="systolic", ice40=False, cols=2,
                                      wrap_rows=True)
    raw = proto.encode_struct(proto.Identity, proto.identity_fields(cfg))
    assert proto.identity_config(proto.decode_struct(proto.Identity, raw)) == cfg


def test_identity_rejects_what_it_cannot_carry():
    with pytest.raises(ValueError, match="rows = 256 does not fit the 8-bit identity field"):
        proto.identity_fields(CONFIGS["icebreaker"].with_(rows=256))
    fields = proto.identity_fields(CONFIGS["icebreaker"])
    with pytest.raises(ValueError, match="dataflow code 9 is none of"):
        proto.identity_config({**fields, "dataflow": 9})
    with pytest.raises(ValueError, match="pool_width must be a positive integer, not 0"):
        proto.identity_config({**fields, "pool_width": 0})
