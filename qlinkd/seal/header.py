"""What AEAD and one-time-pad frames share: the key-ID list after the version byte, and the reasons a
frame fails to open.

Layout of the key-ID list: one byte `n` (1..255), then `n` 16-byte UUIDs (the ETSI GS QKD 014 key_IDs of
the QKD keys the frame's key was taken from). It is part of the authenticated header.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from qlinkmed.qcore.errors import IntegrityFailure, UsageError
from qlinkmed.qlinkd.errors import IntegrityError
from qlinkmed.qlinkd.seal.constants import KEY_ID_BYTES, MAX_KEY_IDS

KeyIdLike = str | uuid.UUID


def canonical_key_ids(key_ids: Iterable[KeyIdLike]) -> tuple[uuid.UUID, ...]:
    """Key IDs as UUIDs; a malformed ID, none at all, or too many raise UsageError (a local misuse)."""
    ids = tuple(k if isinstance(k, uuid.UUID) else uuid.UUID(k) for k in key_ids)
    if not 1 <= len(ids) <= MAX_KEY_IDS:
        raise UsageError(f"a frame names 1 to {MAX_KEY_IDS} key IDs, not {len(ids)}")
    return ids


def encode_key_ids(ids: tuple[uuid.UUID, ...]) -> bytes:
    return bytes([len(ids)]) + b"".join(k.bytes for k in ids)


def parse_key_ids(frame: bytes, offset: int) -> tuple[tuple[uuid.UUID, ...], int]:
    """The key IDs starting at `offset` and the offset after them. Untrusted until the tag verifies."""
    if len(frame) <= offset:
        raise IntegrityError(IntegrityFailure.TRUNCATED, "frame ends before its key-ID count")
    count = frame[offset]
    end = offset + 1 + count * KEY_ID_BYTES
    if count == 0:
        raise IntegrityError(IntegrityFailure.TRUNCATED, "frame names no key ID")
    if len(frame) < end:
        raise IntegrityError(IntegrityFailure.TRUNCATED, "frame ends inside its key IDs")
    ids = tuple(
        uuid.UUID(bytes=bytes(frame[i : i + KEY_ID_BYTES])) for i in range(offset + 1, end, KEY_ID_BYTES)
    )
    return ids, end
