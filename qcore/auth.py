"""Wegman-Carter authentication of the classical channel, paid for with key.

A tag is Poly1305 (from ``cryptography``) keyed with (r, s): Poly1305 evaluates the message as a polynomial
at r modulo 2^130 - 5 and adds s modulo 2^128, which is the Wegman-Carter construction h_r(m) + s with an
epsilon-almost-Delta-universal hash. Used with uniformly random, secret r and a fresh one-time pad s per
tag, the forgery probability is information-theoretic: at most 8 * ceil(L / 16) / 2^106 for an L-byte
message (Bernstein, "The Poly1305-AES message-authentication code", 2005, Theorem 3.3), whatever the
attacker's computing power.

Key use per round (the cost counted against the round's key):
- one fresh 128-bit r for the round (rotating r every round also answers Abidin and Larsson's warning,
  arXiv:1109.5168, about hash keys that leak through failed verifications);
- one fresh 128-bit pad s for Alice's tag and one for Bob's.
Both ends draw these 384 bits from identical stores at the same logical point; the tag message names the
store offset it used, so a lost message cannot silently desynchronise the two stores, and an offset
already consumed is refused (no pad is ever used twice).

Authentication is over the round's whole transcript, checked before any key is released: a modified,
inserted, replayed, reordered or dropped message changes the transcript and fails the tag.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

from .errors import AuthKeyExhausted, IntegrityError, IntegrityFailure, LocalProtocolError

TAG_BYTES = 16
HASH_KEY_BYTES = 16
PAD_BYTES = 16
ROUND_AUTH_BYTES = HASH_KEY_BYTES + 2 * PAD_BYTES
ROUND_AUTH_BITS = 8 * ROUND_AUTH_BYTES


@dataclass(frozen=True, slots=True)
class RoundAuthKeys:
    offset: int
    hash_key: bytes
    alice_pad: bytes
    bob_pad: bytes

    def __repr__(self) -> str:
        return f"RoundAuthKeys(offset={self.offset}, keys=(hidden))"


class AuthKeyStore:
    """Secret key reserved for authentication: bootstrapped from a pre-shared key, replenished from
    distilled key. Pure in-memory state; the daemon persists ``snapshot()``."""

    def __init__(self, material: bytes, *, consumed: int = 0) -> None:
        self._buf = bytearray(material)
        self._base = consumed  # absolute offset of _buf[0]

    def __repr__(self) -> str:
        return f"AuthKeyStore(available={self.available_bits} bits, keys=(hidden))"

    @property
    def position(self) -> int:
        """Absolute byte offset of the next unused key byte (monotonic over the store's life)."""
        return self._base

    @property
    def available_bits(self) -> int:
        return 8 * len(self._buf)

    def take_round_keys(self, offset: int | None = None) -> RoundAuthKeys:
        """Consume the keys for one round, at `offset` (skipping ahead if needed) or at the current
        position. An offset behind the current position would reuse a pad: refused."""
        if offset is None:
            offset = self._base
        if offset < self._base:
            raise IntegrityError(
                IntegrityFailure.REPLAY,
                f"authentication key offset {offset} already consumed (now {self._base})",
            )
        skip = offset - self._base
        if skip + ROUND_AUTH_BYTES > len(self._buf):
            raise AuthKeyExhausted(
                f"authentication key store holds {self.available_bits} bits, a round needs {ROUND_AUTH_BITS}"
            )
        start = skip
        chunk = bytes(self._buf[start : start + ROUND_AUTH_BYTES])
        del self._buf[: start + ROUND_AUTH_BYTES]
        self._base = offset + ROUND_AUTH_BYTES
        return RoundAuthKeys(
            offset=offset,
            hash_key=chunk[:HASH_KEY_BYTES],
            alice_pad=chunk[HASH_KEY_BYTES : HASH_KEY_BYTES + PAD_BYTES],
            bob_pad=chunk[HASH_KEY_BYTES + PAD_BYTES :],
        )

    def replenish(self, material: bytes) -> None:
        if not material:
            raise LocalProtocolError("replenishing with no key material")
        self._buf += material

    def snapshot(self) -> tuple[int, bytes]:
        """(position, remaining key bytes) for durable storage."""
        return self._base, bytes(self._buf)


def wegman_carter_tag(hash_key: bytes, pad: bytes, data: bytes) -> bytes:
    return Poly1305.generate_tag(hash_key + pad, data)


def verify_wegman_carter_tag(hash_key: bytes, pad: bytes, data: bytes, tag: bytes) -> None:
    """Raise IntegrityError unless `tag` authenticates `data` (constant-time comparison)."""
    try:
        Poly1305.verify_tag(hash_key + pad, data, tag)
    except InvalidSignature:
        raise IntegrityError(IntegrityFailure.TAG, "Wegman-Carter tag mismatch") from None
