"""The one module that converts between protobuf frames and qcore protocol messages.

Fields map by name: every qcore message has a protobuf message of the same name with the same field
names (a test holds the two in step). Arrays travel as bytes (one byte per small integer, four
little-endian bytes per uint32, bits packed MSB first); decoding re-validates everything through the
qcore message constructors, so a frame that parses as protobuf but breaks a protocol invariant is
refused here, before any state machine sees it.
"""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError as ProtobufDecodeError

from qlinkmed.proto import qlinkmed_wire_pb2 as pb
from qlinkmed.qcore import codec
from qlinkmed.qcore import messages as m
from qlinkmed.qcore.errors import LocalProtocolError

from .errors import FrameError

WIRE_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest frame accepted: a 2e8-pulse detection map (25 MB) with room to spare."""

_BODY_FIELD = {
    m.Detections: "detections",
    m.Sifting: "sifting",
    m.Estimate: "estimate",
    m.ParityRequest: "parity_request",
    m.ParityReply: "parity_reply",
    m.Verify: "verify",
    m.Amplify: "amplify",
    m.AuthTag: "auth_tag",
    m.Abort: "abort",
}
_MESSAGE_FOR_FIELD = {field: cls for cls, field in _BODY_FIELD.items()}


def encode_frame(message: codec.Message, round_id: int) -> bytes:
    frame = pb.Frame(version=WIRE_VERSION, round=round_id)
    body = getattr(frame, _BODY_FIELD[type(message)])
    for name, kind in message.layout():
        value = getattr(message, name)
        if kind is codec.BITS:
            bits = np.asarray(value, dtype=np.uint8)
            target = getattr(body, name)
            target.count = bits.size
            target.data = np.packbits(bits).tobytes()
        elif isinstance(kind, codec.ArrayKind):
            setattr(body, name, np.asarray(value).astype(kind.dtype).tobytes())
        else:
            setattr(body, name, value)
    body.SetInParent()  # an empty message still selects its oneof branch
    return frame.SerializeToString()


def _bits(field: pb.Bits, name: str) -> np.ndarray:
    count = field.count
    if len(field.data) != (count + 7) // 8:
        raise FrameError(f"{name}: {len(field.data)} bytes cannot hold exactly {count} bits")
    raw = np.frombuffer(field.data, dtype=np.uint8)
    if count % 8 and raw[-1] & ((1 << (8 - count % 8)) - 1):
        raise FrameError(f"{name}: padding bits set")
    return np.unpackbits(raw, count=count)


def decode_frame(data: bytes) -> tuple[int, codec.Message]:
    """(round, message) from one frame; anything malformed raises FrameError naming the problem."""
    if len(data) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(data)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    frame = pb.Frame()
    try:
        frame.ParseFromString(data)
    except ProtobufDecodeError as exc:
        raise FrameError(f"not a protobuf frame: {exc}") from None
    if frame.version != WIRE_VERSION:
        raise FrameError(f"wire version {frame.version}, expected {WIRE_VERSION}")
    which = frame.WhichOneof("body")
    if which is None:
        raise FrameError("frame carries no message")
    cls = _MESSAGE_FOR_FIELD[which]
    body = getattr(frame, which)
    values = {}
    for name, kind in cls.layout():
        raw = getattr(body, name)
        if kind is codec.BITS:
            values[name] = _bits(raw, f"{which}.{name}")
        elif isinstance(kind, codec.ArrayKind):
            width = kind.dtype.itemsize
            if len(raw) % width:
                raise FrameError(f"{which}.{name}: {len(raw)} bytes is not a whole number of entries")
            values[name] = np.frombuffer(raw, dtype=kind.dtype).astype(kind.dtype.newbyteorder("="))
        else:
            values[name] = raw
    try:
        return frame.round, cls(**values)
    except (ValueError, TypeError, LocalProtocolError) as exc:
        raise FrameError(f"{which}: {exc}") from None
