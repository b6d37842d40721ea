"""Optional post-quantum hybrid: an ML-KEM-768 shared secret mixed with the QKD key in the traffic-key
derivation, so the key stays secret if either the QKD key or ML-KEM holds.

Exchange (over the authenticated link): the master offers an ephemeral encapsulation key (``offer``), the
slave encapsulates to it (``respond``) and returns the ciphertext, the master decapsulates (``finish``).
Both then call ``derive_hybrid_traffic_key`` with the same QKD material. ML-KEM comes from ``cryptography``
(``hazmat.primitives.asymmetric.mlkem``); without it every entry point raises HybridUnavailable.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm

from qlinkmed.qcore.errors import DecodeError, UsageError
from qlinkmed.qlinkd.errors import HybridUnavailable
from qlinkmed.qlinkd.seal.aead import Direction, TrafficKey, derive_traffic_key
from qlinkmed.qlinkd.seal.header import KeyIdLike

try:
    from cryptography.hazmat.primitives.asymmetric import mlkem as _mlkem
except ImportError:  # cryptography < 47 has no ML-KEM
    # None stands for the missing module (a test sets it too); every use is behind hybrid_available().
    _mlkem = None  # type: ignore[assignment]

MLKEM_SEED_BYTES = 64
"""An ML-KEM private key is derived from a 64-byte seed (d || z, FIPS 203)."""


@functools.cache
def _backend_has_mlkem() -> bool:
    try:
        _mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes(MLKEM_SEED_BYTES))
    except UnsupportedAlgorithm:  # a cryptography build whose OpenSSL lacks ML-KEM
        return False
    return True


def hybrid_available() -> bool:
    """True if the installed cryptography (and its OpenSSL) provides ML-KEM-768."""
    return _mlkem is not None and _backend_has_mlkem()


def _require() -> None:
    if not hybrid_available():
        raise HybridUnavailable("the installed cryptography provides no ML-KEM-768")


@dataclass(frozen=True, slots=True, kw_only=True)
class KemSecret:
    """An ML-KEM-768 shared secret, ready to mix into ``derive_traffic_key``."""

    secret: bytes = field(repr=False)
    """The 32-byte shared secret. Never logged."""

    def __repr__(self) -> str:
        return "KemSecret(secret=(hidden))"


class HybridOffer:
    """The master's side: an ephemeral ML-KEM-768 key pair for one rekey."""

    __slots__ = ("_private",)

    def __init__(self, seed: bytes) -> None:
        """`seed`: 64 bytes from the OS CSPRNG (``os.urandom``); passed in so this module stays pure and
        tests are reproducible."""
        _require()
        if len(seed) != MLKEM_SEED_BYTES:
            raise UsageError(f"an ML-KEM seed is {MLKEM_SEED_BYTES} bytes")
        self._private = _mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)

    def __repr__(self) -> str:
        return "HybridOffer(private_key=(hidden))"

    def public_bytes(self) -> bytes:
        """The encapsulation key to send to the slave (1184 bytes)."""
        return self._private.public_key().public_bytes_raw()

    def finish(self, ciphertext: bytes) -> KemSecret:
        """The shared secret from the slave's ciphertext. ML-KEM decapsulation never fails outright: a
        tampered ciphertext yields another secret, so the first frame's tag is what detects it."""
        try:
            secret = self._private.decapsulate(ciphertext)
        except ValueError as exc:
            raise DecodeError(f"malformed ML-KEM ciphertext: {exc}") from None
        return KemSecret(secret=secret)


def respond(public_bytes: bytes) -> tuple[bytes, KemSecret]:
    """The slave's side: encapsulate to the master's key; returns (ciphertext to send back, secret)."""
    _require()
    try:
        public = _mlkem.MLKEM768PublicKey.from_public_bytes(public_bytes)
    except ValueError as exc:
        raise DecodeError(f"malformed ML-KEM encapsulation key: {exc}") from None
    secret, ciphertext = public.encapsulate()
    return ciphertext, KemSecret(secret=secret)


def derive_hybrid_traffic_key(
    material: bytes, key_ids: Iterable[KeyIdLike], *, direction: Direction, kem: KemSecret
) -> TrafficKey:
    """The traffic key from QKD `material` and the ML-KEM secret together (see ``derive_traffic_key``)."""
    _require()
    return derive_traffic_key(material, key_ids, direction=direction, kem_secret=kem.secret)
