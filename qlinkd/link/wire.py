"""The one module that converts between protobuf frames and protocol messages: qcore's distillation
messages, and qlinkd's link-control and quantum-channel messages.

Distillation fields map by name: every qcore message has a protobuf message of the same name with the
same field names (a test holds the two in step). Arrays travel as bytes (one byte per small integer, four
little-endian bytes per uint32, bits packed MSB first); decoding re-validates everything through the
qcore message constructors, so a frame that parses as protobuf but breaks a protocol invariant is
refused here, before any state machine sees it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf.message import DecodeError as ProtobufDecodeError

from qlinkmed.proto import qlinkmed_wire_pb2 as pb
from qlinkmed.qcore import codec
from qlinkmed.qcore import messages as m
from qlinkmed.qcore.errors import LocalProtocolError
from qlinkmed.qlinkd.errors import FrameError, StoreError
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.pool.values import KeyNotice, Segment

WIRE_VERSION = 1
MAX_FRAME_BYTES = 128 * 1024 * 1024
"""Largest frame accepted: Alice's pulse train for a 2e8-pulse round (bits and bases a bit each, decoy
classes two bits: 100 MB) with room to spare."""

_BODY_FIELD: dict[type[codec.Message], str] = {
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

_SIMPLE_FIELD: dict[type[lm.WireMessage], str] = {
    lm.Hello: "hello",
    lm.RoundStart: "round_start",
    lm.KeyStored: "key_stored",
    lm.NoticeAck: "notice_ack",
    lm.AuditAnchor: "audit_anchor",
    lm.ChannelHello: "channel_hello",
    lm.PulsesSent: "pulses_sent",
    lm.ChannelError: "channel_error",
}
"""Link messages whose fields are plain scalars with the same names in both worlds."""
_SIMPLE_FOR_FIELD = {field: cls for cls, field in _SIMPLE_FIELD.items()}
MAX_TEXT = 512
"""Longest string accepted in any text field (names, reasons, SAE ids)."""
MAX_REPEATED = 16
"""Most entries accepted in a repeated scalar of a link message (decoy intensities and probabilities)."""


def _repeated(descriptor: Any) -> bool:
    # A protobuf FieldDescriptor (untyped in the stubs).
    return bool(descriptor.is_repeated)


def _put_bits(target: pb.Bits, values: np.ndarray) -> None:
    bits = np.asarray(values, dtype=np.uint8)
    target.count = bits.size
    target.data = np.packbits(bits).tobytes()


def _put_crumbs(values: np.ndarray) -> bytes:
    """Entries 0..3, four to a byte, the first in the top two bits; the padding is zero."""
    v = np.asarray(values, dtype=np.uint8)
    if v.size % 4:
        v = np.concatenate([v, np.zeros(4 - v.size % 4, dtype=np.uint8)])
    q = v.reshape(-1, 4)
    packed = (q[:, 0] << 6) | (q[:, 1] << 4) | (q[:, 2] << 2) | q[:, 3]
    return packed.astype(np.uint8).tobytes()


def _crumbs(data: bytes, count: int, name: str) -> np.ndarray:
    if count > 4 * MAX_FRAME_BYTES:
        raise FrameError(f"{name}: {count} entries cannot fit in one frame")
    if len(data) != (count + 3) // 4:
        raise FrameError(f"{name}: {len(data)} bytes cannot hold exactly {count} 2-bit entries")
    raw = np.frombuffer(data, dtype=np.uint8)
    out = np.empty((raw.size, 4), dtype=np.uint8)
    for i, shift in enumerate((6, 4, 2, 0)):
        np.bitwise_and(raw >> shift, 3, out=out[:, i])
    flat = out.reshape(-1)
    if flat[count:].any():
        raise FrameError(f"{name}: padding bits set")
    return flat[:count]


def _encode_link(frame: pb.Frame, message: lm.WireMessage) -> None:
    simple = _SIMPLE_FIELD.get(type(message))
    if simple is not None:
        body = getattr(frame, simple)
        for name, descriptor in body.DESCRIPTOR.fields_by_name.items():
            if _repeated(descriptor):
                getattr(body, name).extend(getattr(message, name))
            else:
                setattr(body, name, getattr(message, name))
        body.SetInParent()
    elif isinstance(message, KeyNotice):
        frame.key_notice.key_id = message.key_id
        frame.key_notice.master_sae = message.master_sae
        frame.key_notice.slave_sae = message.slave_sae
        for seg in message.segments:
            frame.key_notice.segments.add(round_id=seg.round_id, start=seg.start, length=seg.length)
    elif isinstance(message, lm.PulseTrain):
        _put_bits(frame.pulse_train.bits, message.bits)
        _put_bits(frame.pulse_train.bases, message.bases)
        if message.intensities is not None:
            frame.pulse_train.intensities = _put_crumbs(message.intensities)
        if message.mu is not None:
            frame.pulse_train.mu.extend(message.mu)
    elif isinstance(message, lm.AnalyserSettings):
        frame.analyser_settings.settings = _put_crumbs(message.settings)
        frame.analyser_settings.count = message.settings.size
    elif isinstance(message, lm.DetectionRecord):
        _put_bits(frame.detection_record.detected, message.detected)
        _put_bits(frame.detection_record.bits, message.bits)
    else:
        raise LocalProtocolError(f"no wire form for {type(message).__name__}")


def encode_frame(message: lm.WireMessage, round_id: int) -> bytes:
    frame = pb.Frame(version=WIRE_VERSION, round=round_id)
    if not isinstance(message, codec.Message):
        _encode_link(frame, message)
        data: bytes = frame.SerializeToString()
        return data
    field_name = _BODY_FIELD.get(type(message))
    if field_name is None:
        raise LocalProtocolError(f"no wire form for {type(message).__name__}")
    body = getattr(frame, field_name)
    for name, kind in message.layout():
        value = getattr(message, name)
        if kind is codec.BITS:
            bits = np.asarray(value, dtype=np.uint8)
            target = getattr(body, name)
            target.count = bits.size
            target.data = np.packbits(bits).tobytes()
        elif isinstance(kind, codec.ArrayKind):
            setattr(body, name, np.asarray(value).astype(_dtype(kind)).tobytes())
        else:
            setattr(body, name, value)
    body.SetInParent()  # an empty message still selects its oneof branch
    encoded: bytes = frame.SerializeToString()
    return encoded


def _dtype(kind: codec.ArrayKind) -> np.dtype[Any]:
    if kind.dtype is None:  # only BITS has none, and it is packed, never stored per element
        raise LocalProtocolError(f"array kind {kind!r} has no element type")
    return kind.dtype


def _bits(field: pb.Bits, name: str) -> np.ndarray:
    count = field.count
    if count > 8 * MAX_FRAME_BYTES:
        raise FrameError(f"{name}: {count} bits cannot fit in one frame")
    if len(field.data) != (count + 7) // 8:
        raise FrameError(f"{name}: {len(field.data)} bytes cannot hold exactly {count} bits")
    raw = np.frombuffer(field.data, dtype=np.uint8)
    if count % 8 and raw[-1] & ((1 << (8 - count % 8)) - 1):
        raise FrameError(f"{name}: padding bits set")
    return np.unpackbits(raw, count=count)


def _text(value: str, name: str) -> str:
    if len(value) > MAX_TEXT:
        raise FrameError(f"{name}: text of {len(value)} characters exceeds {MAX_TEXT}")
    return value


def _key_notice(body: pb.KeyNotice) -> KeyNotice:
    segments = tuple(Segment(round_id=s.round_id, start=s.start, length=s.length) for s in body.segments)
    if not segments:
        raise FrameError("key_notice.segments: a key needs at least one segment")
    return KeyNotice(
        key_id=_text(body.key_id, "key_notice.key_id"),
        master_sae=_text(body.master_sae, "key_notice.master_sae"),
        slave_sae=_text(body.slave_sae, "key_notice.slave_sae"),
        segments=segments,
    )


def _decode_link(which: str, body: Any) -> lm.WireMessage:
    # `body` is the protobuf message of the oneof branch named `which`, picked by name at run time.
    simple = _SIMPLE_FOR_FIELD.get(which)
    if simple is not None:
        values: dict[str, Any] = {}  # protobuf scalars, checked by the message's constructor
        for name, descriptor in body.DESCRIPTOR.fields_by_name.items():
            value = getattr(body, name)
            if _repeated(descriptor):
                if len(value) > MAX_REPEATED:
                    raise FrameError(f"{which}.{name}: {len(value)} entries exceed {MAX_REPEATED}")
                values[name] = tuple(value)
            else:
                values[name] = _text(value, f"{which}.{name}") if isinstance(value, str) else value
        return simple(**values)
    if which == "key_notice":
        try:
            return _key_notice(body)
        except StoreError as exc:
            raise FrameError(f"key_notice: {exc}") from None
    if which == "pulse_train":
        raw = body.intensities
        if len(body.mu) > MAX_REPEATED:
            raise FrameError(f"pulse_train.mu: {len(body.mu)} entries exceed {MAX_REPEATED}")
        bits = _bits(body.bits, "pulse_train.bits")
        return lm.PulseTrain(
            bits=bits,
            bases=_bits(body.bases, "pulse_train.bases"),
            intensities=_crumbs(raw, bits.size, "pulse_train.intensities") if raw else None,
            mu=tuple(body.mu) if body.mu else None,
        )
    if which == "analyser_settings":
        return lm.AnalyserSettings(settings=_crumbs(body.settings, body.count, "analyser_settings.settings"))
    if which == "detection_record":
        return lm.DetectionRecord(
            detected=_bits(body.detected, "detection_record.detected"),
            bits=_bits(body.bits, "detection_record.bits"),
        )
    raise FrameError(f"frame body {which} has no decoder")  # unreachable while the schema and maps agree


def decode_frame(data: bytes) -> tuple[int, lm.WireMessage]:
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
    body = getattr(frame, which)
    cls = _MESSAGE_FOR_FIELD.get(which)
    if cls is None:
        return frame.round, _decode_link(which, body)
    values: dict[str, object] = {}
    for name, kind in cls.layout():
        raw = getattr(body, name)
        if kind is codec.BITS:
            values[name] = _bits(raw, f"{which}.{name}")
        elif isinstance(kind, codec.ArrayKind):
            dtype = _dtype(kind)
            if len(raw) % dtype.itemsize:
                raise FrameError(f"{which}.{name}: {len(raw)} bytes is not a whole number of entries")
            values[name] = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
        else:
            values[name] = raw
    try:
        message = cls(**values)
    except (ValueError, TypeError, LocalProtocolError) as exc:
        raise FrameError(f"{which}: {exc}") from None
    if not isinstance(message, lm.DISTILL_TYPES):  # every class in _BODY_FIELD is one of them
        raise FrameError(f"frame body {which} is no distillation message")
    return frame.round, message
