"""The one place data-plane protobuf messages are built, checked and converted to and from the typed
messages of ``events``. Decoding refuses anything that is not one well-formed message (FrameError), so the
session machines only see messages whose fields make sense."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from qlinkmed.proto import qlinkmed_wire_pb2 as pb
from qlinkmed.qlinkd.dataplane.events import (
    DATA_VERSION,
    REFUSAL_TEXT_CHARS,
    Accept,
    Ack,
    Chunk,
    DataMessage,
    Delivered,
    EhrMessage,
    Offer,
    Open,
    PadKey,
    Position,
    Ready,
    Refused,
    SessionRefusal,
    TransferState,
    check_uuid,
)
from qlinkmed.qlinkd.errors import FrameError
from qlinkmed.qlinkd.seal.constants import MAX_SESSION_KEY_IDS

__all__ = [
    "DATA_VERSION",
    "decode",
    "decode_answer",
    "decode_message",
    "decode_open",
    "encode_answer",
    "encode_message",
    "encode_open",
]

_KINDS = frozenset({"ready", "offer", "position", "chunk", "ack", "delivered", "refused", "ehr", "pad"})
_PB_STATE = {
    TransferState.NEW: pb.TRANSFER_STATE_NEW,
    TransferState.PARTIAL: pb.TRANSFER_STATE_PARTIAL,
    TransferState.COMPLETE: pb.TRANSFER_STATE_COMPLETE,
}
_STATE_OF_PB = {int(v): k for k, v in _PB_STATE.items()}


def encode_open(opening: Open) -> bytes:
    return pb.DataOpen(
        version=opening.version,
        facility=opening.facility,
        key_ids=list(opening.key_ids),
        mlkem_encapsulation_key=opening.mlkem_encapsulation_key,
    ).SerializeToString()


def decode_open(frame: bytes) -> Open:
    message = pb.DataOpen()
    try:
        message.ParseFromString(frame)
    except DecodeError as exc:
        raise FrameError(f"data open does not parse: {exc}") from None
    if message.version != DATA_VERSION:
        raise FrameError(f"data plane version {message.version}, this qlinkd speaks {DATA_VERSION}")
    if not 1 <= len(message.key_ids) <= MAX_SESSION_KEY_IDS:
        raise FrameError(f"data open names {len(message.key_ids)} key IDs")
    return Open(
        version=message.version,
        facility=message.facility,
        key_ids=tuple(message.key_ids),
        mlkem_encapsulation_key=message.mlkem_encapsulation_key,
    )


def encode_answer(answer: Accept | SessionRefusal) -> bytes:
    """The plain DataAccept frame carrying a hybrid session's ciphertext or a refusal."""
    if isinstance(answer, Accept):
        return pb.DataAccept(mlkem_ciphertext=answer.mlkem_ciphertext).SerializeToString()
    return pb.DataAccept(refused=answer.reason[:REFUSAL_TEXT_CHARS]).SerializeToString()


def decode_answer(frame: bytes) -> Accept | SessionRefusal:
    """A plain DataAccept: exactly one of a ciphertext or a refusal (FrameError otherwise)."""
    message = pb.DataAccept()
    try:
        message.ParseFromString(frame)
    except DecodeError as exc:
        raise FrameError(f"data accept does not parse: {exc}") from None
    if bool(message.mlkem_ciphertext) == bool(message.refused):
        raise FrameError("data accept must carry either an ML-KEM ciphertext or a refusal")
    if message.refused:
        return SessionRefusal(reason=message.refused[:REFUSAL_TEXT_CHARS])
    return Accept(mlkem_ciphertext=message.mlkem_ciphertext)


def decode(plaintext: bytes) -> pb.DataMessage:
    """An authenticated plaintext as a DataMessage whose body is set and whose IDs are UUIDs."""
    message = pb.DataMessage()
    try:
        message.ParseFromString(plaintext)
    except DecodeError as exc:
        raise FrameError(f"data message does not parse: {exc}") from None
    kind = message.WhichOneof("body")
    if kind not in _KINDS:
        raise FrameError("data message has no body")
    body = getattr(message, kind)
    if kind == "pad":
        check_uuid(body.key_id, "pad key ID")
    elif kind != "ready":
        check_uuid(body.transfer_id, "transfer ID")
    if kind == "position" and body.state == pb.TRANSFER_STATE_UNSPECIFIED:
        raise FrameError("position without a state")
    return message


def ready() -> bytes:
    return pb.DataMessage(ready=pb.Ready()).SerializeToString()


def offer(transfer_id: str, manifest: bytes) -> bytes:
    return pb.DataMessage(offer=pb.Offer(transfer_id=transfer_id, manifest=manifest)).SerializeToString()


def position(transfer_id: str, state: TransferState, file_index: int, offset: int) -> bytes:
    body = pb.Position(transfer_id=transfer_id, state=_PB_STATE[state], file_index=file_index, offset=offset)
    return pb.DataMessage(position=body).SerializeToString()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field_number: int, length: int) -> bytes:
    """The key and length that open a length-delimited field (wire type 2) in protobuf's encoding."""
    return _varint(field_number << 3 | 2) + _varint(length)


def chunk(transfer_id: str, file_index: int, offset: int, data: bytes) -> bytes:
    """The DataMessage carrying a chunk, byte for byte what protobuf serializes
    (tests/qlinkd/dataplane/test_dataplane.py checks it). The small fields go through protobuf; the data
    field, the highest-numbered and so the last protobuf writes, is appended here: protobuf 7's upb takes
    about 1.8 ms to serialize a 1 MiB bytes field, six times as long as sealing it, and that was most of
    the sending daemon's CPU."""
    head = pb.Chunk(transfer_id=transfer_id, file_index=file_index, offset=offset).SerializeToString()
    # proto3 leaves an empty bytes field out, and so does this.
    data_field = _length_delimited(pb.Chunk.DATA_FIELD_NUMBER, len(data)) if data else b""
    size = len(head) + len(data_field) + len(data)
    return b"".join((_length_delimited(pb.DataMessage.CHUNK_FIELD_NUMBER, size), head, data_field, data))


def ack(transfer_id: str, file_index: int, offset: int) -> bytes:
    body = pb.Ack(transfer_id=transfer_id, file_index=file_index, offset=offset)
    return pb.DataMessage(ack=body).SerializeToString()


def delivered(transfer_id: str, manifest_sha256: str) -> bytes:
    body = pb.Delivered(transfer_id=transfer_id, manifest_sha256=manifest_sha256)
    return pb.DataMessage(delivered=body).SerializeToString()


def refused(transfer_id: str, reason: str) -> bytes:
    return pb.DataMessage(
        refused=pb.Refused(transfer_id=transfer_id, reason=reason[:500])
    ).SerializeToString()


def ehr(transfer_id: str, manifest: bytes, body: bytes) -> bytes:
    message = pb.EhrMessage(transfer_id=transfer_id, manifest=manifest, body=body)
    return pb.DataMessage(ehr=message).SerializeToString()


def pad_key(key_id: str) -> bytes:
    return pb.DataMessage(pad=pb.PadKey(key_id=key_id)).SerializeToString()


# ---- typed messages (events) ----------------------------------------------------------------------------


def _position(body: Any) -> Position:
    state = _STATE_OF_PB.get(int(body.state))
    if state is None:
        raise FrameError(f"position with unknown state {body.state}")
    return Position(transfer_id=body.transfer_id, state=state, file_index=body.file_index, offset=body.offset)


_FROM_PB: dict[str, Callable[[Any], DataMessage]] = {
    "ready": lambda b: Ready(),
    "offer": lambda b: Offer(transfer_id=b.transfer_id, manifest=b.manifest),
    "position": _position,
    "chunk": lambda b: Chunk(
        transfer_id=b.transfer_id, file_index=b.file_index, offset=b.offset, data=b.data
    ),
    "ack": lambda b: Ack(transfer_id=b.transfer_id, file_index=b.file_index, offset=b.offset),
    "delivered": lambda b: Delivered(transfer_id=b.transfer_id, manifest_sha256=b.manifest_sha256),
    "refused": lambda b: Refused(transfer_id=b.transfer_id, reason=b.reason),
    "ehr": lambda b: EhrMessage(transfer_id=b.transfer_id, manifest=b.manifest, body=b.body),
    "pad": lambda b: PadKey(key_id=b.key_id),
}


def decode_message(plaintext: bytes) -> DataMessage:
    """An authenticated plaintext as the typed message it carries (FrameError if it is not one)."""
    message = decode(plaintext)
    kind = message.WhichOneof("body")
    return _FROM_PB[kind](getattr(message, kind))


def encode_message(message: DataMessage) -> bytes:
    """The plaintext of a sealed frame carrying `message`."""
    match message:
        case Chunk():
            return chunk(message.transfer_id, message.file_index, message.offset, message.data)
        case Ack():
            return ack(message.transfer_id, message.file_index, message.offset)
        case Offer():
            return offer(message.transfer_id, message.manifest)
        case Position():
            return position(message.transfer_id, message.state, message.file_index, message.offset)
        case Delivered():
            return delivered(message.transfer_id, message.manifest_sha256)
        case Refused():
            return refused(message.transfer_id, message.reason)
        case EhrMessage():
            return ehr(message.transfer_id, message.manifest, message.body)
        case PadKey():
            return pad_key(message.key_id)
        case Ready():
            return ready()
