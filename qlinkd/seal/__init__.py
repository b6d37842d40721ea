"""The data-plane sealing layer, pure (no IO, no clock: time is an argument).

- ``aead``: AES-256-GCM frames keyed through HKDF from QKD key material, counter nonces accepted strictly
  in order, rekey limits (the default for studies).
- ``otp``: one-time pad plus a Wegman-Carter tag, for EHR messages when the pool holds enough key.
- ``hybrid``: an ML-KEM-768 shared secret mixed into the AEAD key derivation.
Every failure to open a frame raises ``IntegrityError``, its ``reason`` an ``IntegrityFailure``
(both in ``qcore.errors``).
"""

from __future__ import annotations

from qlinkmed.qlinkd.seal.aead import (
    Direction,
    KeyStatus,
    Opener,
    Sealer,
    SendState,
    TrafficKey,
    derive_traffic_key,
    peek_key_ids,
)

__all__ = [
    "Direction",
    "KeyStatus",
    "Opener",
    "Sealer",
    "SendState",
    "TrafficKey",
    "derive_traffic_key",
    "peek_key_ids",
]
