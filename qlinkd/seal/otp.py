"""One-time-pad frames for EHR messages: XOR with QKD key, then a Wegman-Carter tag (Poly1305 under a
fresh one-time key, as ``qcore.auth`` authenticates the classical channel). Information-theoretically
secret and authentic, at the price of key: every message consumes ``otp_key_bytes(len(message))`` bytes
of pool key, never reused.

Two frames (each header is authenticated)::

    version (1) = OTP_VERSION       | n (1) | n key IDs (16 each)   | ciphertext | tag (16)
    version (1) = OTP_RANGE_VERSION | key ID (16) | offset (4, BE)  | ciphertext | tag (16)

The first cuts its pad from the named keys, concatenated, from their start; the second from one session
pad key, at `offset` (``dataplane.pads``). Either way the key material is cut as: 32 bytes of one-time
Poly1305 key (r, then s), then one pad byte per message byte. Material beyond that is not used by the
frame. Replay of the first kind is stopped by the key pool itself (a key ID is delivered to the receiver
only once); of the second by the receiver, which accepts a pad key's offsets only in order.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

from qlinkmed.qcore.errors import IntegrityFailure, UsageError
from qlinkmed.qlinkd.errors import IntegrityError, KeyMaterialShort
from qlinkmed.qlinkd.seal.constants import (
    KEY_ID_BYTES,
    MAX_OTP_PLAINTEXT_BYTES,
    OTP_OFFSET_BYTES,
    OTP_RANGE_VERSION,
    OTP_TAG_KEY_BYTES,
    OTP_VERSION,
    TAG_BYTES,
)
from qlinkmed.qlinkd.seal.header import (
    KeyIdLike,
    canonical_key_ids,
    encode_key_ids,
    parse_key_ids,
)


def otp_key_bytes(message_len: int) -> int:
    """Key bytes one message consumes: one pad byte per message byte plus the one-time tag key."""
    return message_len + OTP_TAG_KEY_BYTES


def _xor(data: bytes | memoryview, pad: bytes | memoryview) -> bytes:
    # Whole-buffer integer XOR runs in C; a per-byte Python loop would be ruinous.
    size = len(data)
    return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(size, "little")


@dataclass(frozen=True, slots=True, kw_only=True)
class OtpSealed:
    """A sealed OTP frame and the key it cost."""

    frame: bytes = field(repr=False)
    """The frame to send."""
    consumed_bytes: int
    """Bytes of key material used (from the start of the material given); the rest is to be discarded."""

    @property
    def consumed_bits(self) -> int:
        return 8 * self.consumed_bytes


def seal_otp(message: bytes, material: bytes, key_ids: Iterable[KeyIdLike]) -> OtpSealed:
    """Seal `message` with `material` (the concatenated QKD keys named by `key_ids`). Raises
    KeyMaterialShort, consuming nothing, if the material cannot cover the message and its tag key."""
    header = bytes([OTP_VERSION]) + encode_key_ids(canonical_key_ids(key_ids))
    return _seal(header, message, material)


def seal_otp_range(message: bytes, pad: bytes, key_id: KeyIdLike, offset: int) -> OtpSealed:
    """Seal `message` with `pad`, the bytes of session pad key `key_id` from `offset` on (at least
    ``otp_key_bytes(len(message))`` of them; the frame consumes exactly that many)."""
    if not 0 <= offset < 1 << (8 * OTP_OFFSET_BYTES):
        raise UsageError(f"pad offset {offset} does not fit the frame")
    key_uuid = key_id if isinstance(key_id, uuid.UUID) else uuid.UUID(key_id)
    header = bytes([OTP_RANGE_VERSION]) + key_uuid.bytes + offset.to_bytes(OTP_OFFSET_BYTES, "big")
    return _seal(header, message, pad)


def _seal(header: bytes, message: bytes, material: bytes) -> OtpSealed:
    if len(message) > MAX_OTP_PLAINTEXT_BYTES:
        raise UsageError(f"OTP message of {len(message)} bytes exceeds {MAX_OTP_PLAINTEXT_BYTES}")
    needed = otp_key_bytes(len(message))
    if len(material) < needed:
        raise KeyMaterialShort(needed_bits=8 * needed, provided_bits=8 * len(material))
    key = memoryview(material)
    body = header + _xor(message, key[OTP_TAG_KEY_BYTES:needed])
    tag = Poly1305.generate_tag(bytes(key[:OTP_TAG_KEY_BYTES]), body)
    return OtpSealed(frame=body + tag, consumed_bytes=needed)


def peek_otp_key_ids(frame: bytes) -> tuple[uuid.UUID, ...]:
    """The key IDs a frame names, to fetch its key material. Unauthenticated until ``open_otp``."""
    _check_version(frame, OTP_VERSION)
    ids, _ = parse_key_ids(frame, 1)
    return ids


@dataclass(frozen=True, slots=True)
class PadRange:
    """Where a range frame says its pad lies (unauthenticated until ``open_otp_range``)."""

    key_id: uuid.UUID
    offset: int
    size: int
    """Bytes of pad key the frame consumes (from its length)."""


_RANGE_BODY = 1 + KEY_ID_BYTES + OTP_OFFSET_BYTES


def peek_otp_range(frame: bytes) -> PadRange:
    """The pad key, offset and size a range frame claims, to cut its pad. Unauthenticated until
    ``open_otp_range``."""
    _check_version(frame, OTP_RANGE_VERSION)
    size = _message_size(frame, _RANGE_BODY)
    key_id = uuid.UUID(bytes=frame[1 : 1 + KEY_ID_BYTES])
    offset = int.from_bytes(frame[1 + KEY_ID_BYTES : _RANGE_BODY], "big")
    return PadRange(key_id, offset, otp_key_bytes(size))


def otp_material_needed(frame: bytes) -> int:
    """Bytes of key material ``open_otp`` will need for `frame` (from its length)."""
    peek_otp_key_ids(frame)
    _, body_start = parse_key_ids(frame, 1)
    return otp_key_bytes(max(0, len(frame) - body_start - TAG_BYTES))


def open_otp(frame: bytes, material: bytes) -> bytes:
    """The message in `frame`, given the key material of its key IDs. A frame that fails any check raises
    IntegrityError; material too short for the frame raises KeyMaterialShort."""
    peek_otp_key_ids(frame)
    _, body_start = parse_key_ids(frame, 1)
    return _open(frame, body_start, material)


def open_otp_range(frame: bytes, pad: bytes) -> bytes:
    """The message in a range frame, given its pad: the pad key's bytes from the frame's offset on."""
    peek_otp_range(frame)
    return _open(frame, _RANGE_BODY, pad)


def _check_version(frame: bytes, version: int) -> None:
    if not frame:
        raise IntegrityError(IntegrityFailure.TRUNCATED, "empty frame")
    if frame[0] != version:
        raise IntegrityError(IntegrityFailure.VERSION, f"frame version {frame[0]:#04x}")


def _message_size(frame: bytes, body_start: int) -> int:
    size = len(frame) - body_start - TAG_BYTES
    if size < 0:
        raise IntegrityError(IntegrityFailure.TRUNCATED, "frame ends inside its header or tag")
    if size > MAX_OTP_PLAINTEXT_BYTES:
        raise IntegrityError(IntegrityFailure.TOO_LARGE, f"OTP frame of {len(frame)} bytes exceeds the limit")
    return size


def _open(frame: bytes, body_start: int, material: bytes) -> bytes:
    size = _message_size(frame, body_start)
    needed = otp_key_bytes(size)
    if len(material) < needed:
        raise KeyMaterialShort(needed_bits=8 * needed, provided_bits=8 * len(material))
    key = memoryview(material)
    view = memoryview(frame)
    try:
        tag_key, tag = bytes(key[:OTP_TAG_KEY_BYTES]), bytes(view[-TAG_BYTES:])
        Poly1305.verify_tag(tag_key, view[: len(frame) - TAG_BYTES], tag)
    except InvalidSignature:
        raise IntegrityError(IntegrityFailure.TAG, "Wegman-Carter tag mismatch") from None
    return _xor(view[body_start : len(frame) - TAG_BYTES], key[OTP_TAG_KEY_BYTES:needed])
