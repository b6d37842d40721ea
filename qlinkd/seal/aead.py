"""AES-256-GCM frames keyed from QKD key material: traffic-key derivation, the sealing end and the opening
end. Pure: no IO, no clock (time is the `now` argument, in seconds on any monotonic scale both the key's
start and later calls share), no randomness (nonces are counters).

Frame (every byte before the ciphertext is the AAD)::

    version (1) = AEAD_VERSION | n (1) | n key IDs (16 each) | counter (8, big-endian) | ciphertext | tag (16)

The GCM nonce is 4 zero bytes then the counter. A traffic key serves one direction only, so the two ends
never seal under the same (key, nonce). Counters need no durable state: the data plane derives every
session's traffic keys from QKD key taken for that session alone and never resumes a key after a restart,
so a crash ends the key with its counters and no nonce can repeat.

The frames travel over a reliable, ordered stream, so the opening end accepts only the next counter, and
only once the tag has verified.
"""

from __future__ import annotations

import enum
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qlinkmed.qcore.errors import IntegrityFailure, UsageError
from qlinkmed.qlinkd.errors import IntegrityError, RekeyRequired
from qlinkmed.qlinkd.seal.constants import (
    AEAD_KEY_BYTES,
    AEAD_VERSION,
    COUNTER_BYTES,
    HYBRID_SUITE,
    LABEL_TRAFFIC,
    MAX_PLAINTEXT_BYTES,
    MIN_QKD_KEY_BYTES,
    NONCE_PREFIX,
    REJECT_AFTER_BYTES,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_SECONDS,
    REKEY_AFTER_BYTES,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_SECONDS,
    SUITE,
    TAG_BYTES,
)
from qlinkmed.qlinkd.seal.header import (
    KeyIdLike,
    canonical_key_ids,
    encode_key_ids,
    parse_key_ids,
)

_COUNTER = struct.Struct(">Q")


class Direction(enum.Enum):
    """Which way a traffic key carries data, in ETSI GS QKD 014 roles: the master SAE fetched the keys
    with ``enc_keys``, the slave with ``dec_keys``."""

    MASTER_TO_SLAVE = b"master->slave"
    SLAVE_TO_MASTER = b"slave->master"


class KeyStatus(enum.Enum):
    """Where a traffic key stands against its limits."""

    FRESH = "fresh"
    REKEY_DUE = "rekey_due"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficKey:
    """One direction's AES-256-GCM key and the QKD keys it came from."""

    key_ids: tuple[uuid.UUID, ...]
    """The ETSI key_IDs of the QKD key material, in derivation order; carried in every frame header."""
    direction: Direction
    """Which way this key carries data."""
    hybrid: bool
    """True if an ML-KEM-768 shared secret was mixed into the derivation."""
    key: bytes = field(repr=False)
    """The 32-byte AES key. Never logged."""

    def __repr__(self) -> str:
        ids = ",".join(str(k) for k in self.key_ids)
        return (
            f"TrafficKey(key_ids=({ids}), direction={self.direction.name}, hybrid={self.hybrid}, "
            "key=(hidden))"
        )


def derive_traffic_key(
    material: bytes,
    key_ids: Iterable[KeyIdLike],
    *,
    direction: Direction,
    kem_secret: bytes | None = None,
) -> TrafficKey:
    """HKDF-SHA256 from QKD key `material` (at least 256 bits), bound to the suite, the direction and the
    key IDs. With `kem_secret` (an ML-KEM shared secret, see ``hybrid``) the input keying material is the
    concatenation QKD key || KEM secret, as in the TLS hybrid design: the output is secret if either is."""
    if len(material) < MIN_QKD_KEY_BYTES:
        raise UsageError(f"QKD key material must be at least {MIN_QKD_KEY_BYTES} bytes, not {len(material)}")
    ids = canonical_key_ids(key_ids)
    suite = SUITE if kem_secret is None else HYBRID_SUITE
    ikm = bytes(material) if kem_secret is None else bytes(material) + bytes(kem_secret)
    info = b"|".join([LABEL_TRAFFIC, suite.encode(), direction.value, encode_key_ids(ids)])
    key = HKDF(algorithm=hashes.SHA256(), length=AEAD_KEY_BYTES, salt=None, info=info).derive(ikm)
    return TrafficKey(key_ids=ids, direction=direction, hybrid=kem_secret is not None, key=key)


def _status(age: float, messages: int, data_bytes: int) -> KeyStatus:
    if age >= REJECT_AFTER_SECONDS or messages >= REJECT_AFTER_MESSAGES or data_bytes >= REJECT_AFTER_BYTES:
        return KeyStatus.EXPIRED
    if age >= REKEY_AFTER_SECONDS or messages >= REKEY_AFTER_MESSAGES or data_bytes >= REKEY_AFTER_BYTES:
        return KeyStatus.REKEY_DUE
    return KeyStatus.FRESH


@dataclass(frozen=True, slots=True, kw_only=True)
class SendState:
    """Where a sealer starts. A new traffic key starts at ``SendState(next_counter=0, bytes_sealed=0,
    started_at=now)``; the other values only let a test start a key near its limits."""

    next_counter: int
    """The first counter the sealer uses."""
    bytes_sealed: int
    """Plaintext bytes already charged to this key."""
    started_at: float
    """When the key came into use (the `now` scale of seal calls)."""

    def __post_init__(self) -> None:
        if self.next_counter < 0 or self.bytes_sealed < 0:
            raise UsageError("inconsistent SendState")


class Sealer:
    """The sending end of one traffic key."""

    __slots__ = ("_aead", "_bytes", "_header_prefix", "_key", "_next", "_started_at")

    def __init__(self, key: TrafficKey, *, state: SendState) -> None:
        self._key = key
        self._aead = AESGCM(key.key)
        self._header_prefix = bytes([AEAD_VERSION]) + encode_key_ids(key.key_ids)
        self._next = state.next_counter
        self._bytes = state.bytes_sealed
        self._started_at = state.started_at

    def __repr__(self) -> str:
        return f"Sealer(key={self._key!r}, next_counter={self._next})"

    @property
    def next_counter(self) -> int:
        return self._next

    def status(self, now: float) -> KeyStatus:
        """FRESH, REKEY_DUE (start deriving the next key) or EXPIRED (seals no more)."""
        return _status(now - self._started_at, self._next, self._bytes)

    def seal(self, plaintext: bytes, *, now: float) -> bytes:
        """One frame carrying `plaintext`. Raises RekeyRequired past a hard limit."""
        size = len(plaintext)
        if size > MAX_PLAINTEXT_BYTES:
            raise UsageError(f"plaintext of {size} bytes exceeds the frame limit {MAX_PLAINTEXT_BYTES}")
        counter = self._next
        if now - self._started_at >= REJECT_AFTER_SECONDS:
            raise RekeyRequired("age", f"traffic key is {now - self._started_at:.0f} s old")
        if counter >= REJECT_AFTER_MESSAGES:
            raise RekeyRequired("messages", f"traffic key sealed {counter} frames")
        if self._bytes + size > REJECT_AFTER_BYTES:
            raise RekeyRequired("bytes", f"traffic key sealed {self._bytes} bytes")
        counter_bytes = _COUNTER.pack(counter)
        header = self._header_prefix + counter_bytes
        sealed = self._aead.encrypt(NONCE_PREFIX + counter_bytes, plaintext, header)
        self._next = counter + 1
        self._bytes += size
        return header + sealed


class Opener:
    """The receiving end of one traffic key: verifies the tag, then that the frame is the next in order.
    The frames come over a reliable, ordered stream (TCP), so each counter must be the previous one plus
    one: an older counter is a replay, a newer one a gap."""

    __slots__ = ("_aead", "_header_prefix", "_key", "_next", "_started_at")

    def __init__(self, key: TrafficKey, *, started_at: float) -> None:
        self._key = key
        self._aead = AESGCM(key.key)
        self._header_prefix = bytes([AEAD_VERSION]) + encode_key_ids(key.key_ids)
        self._started_at = started_at
        self._next = 0

    def __repr__(self) -> str:
        return f"Opener(key={self._key!r}, next_counter={self._next})"

    def status(self, now: float) -> KeyStatus:
        return _status(now - self._started_at, self._next, 0)

    def open(self, frame: bytes, *, now: float) -> bytes:
        """The plaintext of `frame`. Every failure (truncated, wrong version or key, too large, bad tag,
        replayed or out of order, expired key) raises IntegrityError and leaves the expected counter
        unchanged."""
        prefix = self._header_prefix
        header_len = len(prefix) + COUNTER_BYTES
        if len(frame) < header_len + TAG_BYTES:
            # Tell a frame of another version or key apart from a short one, for the audit log.
            if frame[:1] and frame[0] != AEAD_VERSION:
                raise IntegrityError(IntegrityFailure.VERSION, f"frame version {frame[0]:#04x}")
            raise IntegrityError(IntegrityFailure.TRUNCATED, f"frame of {len(frame)} bytes is too short")
        if frame[0] != AEAD_VERSION:
            raise IntegrityError(IntegrityFailure.VERSION, f"frame version {frame[0]:#04x}")
        if frame[: len(prefix)] != prefix:
            raise IntegrityError(IntegrityFailure.KEY_MISMATCH, "frame names other key IDs")
        if len(frame) - header_len - TAG_BYTES > MAX_PLAINTEXT_BYTES:
            raise IntegrityError(IntegrityFailure.TOO_LARGE, f"frame of {len(frame)} bytes exceeds the limit")
        if now - self._started_at >= REJECT_AFTER_SECONDS:
            raise IntegrityError(IntegrityFailure.KEY_EXPIRED, "traffic key past its age limit")
        view = memoryview(frame)
        counter_bytes = bytes(view[len(prefix) : header_len])
        (counter,) = _COUNTER.unpack(counter_bytes)
        if counter >= REJECT_AFTER_MESSAGES:
            raise IntegrityError(IntegrityFailure.KEY_EXPIRED, f"counter {counter} past the message limit")
        try:
            plaintext = self._aead.decrypt(NONCE_PREFIX + counter_bytes, view[header_len:], view[:header_len])
        except InvalidTag:
            raise IntegrityError(IntegrityFailure.TAG, f"tag check failed on frame {counter}") from None
        # Only now, with the frame authentic, may its counter be judged and move the expected one
        # (wireguard-go's order): a forged frame never moves it.
        expected = self._next
        if counter != expected:
            failure = IntegrityFailure.REPLAY if counter < expected else IntegrityFailure.REORDERED
            raise IntegrityError(failure, f"frame {counter} arrived where {expected} was due")
        self._next = counter + 1
        return plaintext


def peek_key_ids(frame: bytes) -> tuple[uuid.UUID, ...]:
    """The key IDs a frame names, to pick its Opener. Unauthenticated: trust nothing until ``open``."""
    if not frame:
        raise IntegrityError(IntegrityFailure.TRUNCATED, "empty frame")
    if frame[0] != AEAD_VERSION:
        raise IntegrityError(IntegrityFailure.VERSION, f"frame version {frame[0]:#04x}")
    ids, _ = parse_key_ids(frame, 1)
    return ids
