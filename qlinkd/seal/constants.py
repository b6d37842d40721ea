"""Every policy constant of the sealing layer, in one place (wireguard-go ``device/constants.go``).

One suite, no negotiation: a later suite gets a new version byte, never an option.
Sources: docs/references.md §5 (WireGuard, TLS 1.3 RFC 8446 s5.5, NIST SP 800-38D).
"""

from __future__ import annotations

SUITE = "qlink-seal-v1:AES-256-GCM:HKDF-SHA256"
"""The only AEAD suite. It is bound into every traffic-key derivation, so a peer running another suite
derives another key and every frame fails its tag."""

HYBRID_SUITE = "qlink-seal-v1:AES-256-GCM:HKDF-SHA256:ML-KEM-768"
"""The same suite with an ML-KEM-768 shared secret mixed into the key derivation."""

OTP_SUITE = "qlink-seal-v1:OTP:Poly1305-WC"
"""One-time pad with a Wegman-Carter (Poly1305, one-time key) tag."""

AEAD_VERSION = 0x01
"""First byte of every AEAD frame."""

OTP_VERSION = 0x02
"""First byte of every one-time-pad frame whose pad is whole QKD keys, from their start."""

OTP_RANGE_VERSION = 0x03
"""First byte of every one-time-pad frame whose pad is a range of one session pad key (key ID, offset)."""

OTP_OFFSET_BYTES = 4
"""The pad offset in a range frame: a pad key is far smaller than 4 GiB."""

KEY_ID_BYTES = 16
"""An ETSI GS QKD 014 key_ID is a UUID: 16 bytes on the wire."""

MAX_KEY_IDS = 255
"""At most this many key IDs in one header (the count is one byte). A traffic key usually comes from one
or two ETSI keys; an OTP frame names every key its pad was cut from."""

MAX_SESSION_KEY_IDS = 16
"""At most this many key IDs in a data-plane session's opening frame (``dataplane.wire.decode_open``).
A policy limit, not a format one (the header format allows MAX_KEY_IDS): the sender names the one key it
took, and the receiver fetches every named key from its pool before anything is authenticated, so an
unauthenticated peer must not make it look up 255."""

COUNTER_BYTES = 8
"""The frame counter on the wire; the 96-bit GCM nonce is 4 zero bytes then this counter (WireGuard's
layout). Each direction has its own key, so the two directions never share a (key, nonce) pair."""

NONCE_PREFIX = b"\x00" * 4

TAG_BYTES = 16
"""AES-GCM and Poly1305 tags are both 128 bits."""

AEAD_KEY_BYTES = 32
"""AES-256."""

MIN_QKD_KEY_BYTES = 32
"""Traffic keys are derived from at least 256 bits of QKD key, so the QKD part alone carries the key's
full strength."""

MAX_PLAINTEXT_BYTES = 1 << 20
"""Largest plaintext in one frame (1 MiB: large enough that bulk AEAD runs in native code, small enough
to bound a receiver's buffer)."""

MAX_OTP_PLAINTEXT_BYTES = 1 << 20
"""Largest one-time-pad message: OTP suits EHR messages, not studies (docs/references.md §5)."""

MAX_SEALED_FRAME_BYTES = MAX_PLAINTEXT_BYTES + 4096
"""Largest sealed frame a data-plane reader accepts: the largest plaintext plus room for any header and tag
(an AEAD header naming MAX_SESSION_KEY_IDS keys is 282 bytes with its tag). Checked on the length prefix,
before the frame is read."""

# Rekey limits. WireGuard rekeys after 120 s and refuses after 180 s. TLS 1.3 allows 2^24.5 full-size
# (2^14-byte) records per AES-GCM key, i.e. 2^38.5 bytes; our frames may be larger than TLS records, so
# bytes are limited as well as messages. The soft limit asks for a rekey with a wide margin before the
# hard limit refuses.
REKEY_AFTER_SECONDS = 120.0
"""Age at which a traffic key asks to be replaced (WireGuard REKEY_AFTER_TIME)."""

REJECT_AFTER_SECONDS = 180.0
"""Age at which a traffic key neither seals nor opens (WireGuard REJECT_AFTER_TIME)."""

REKEY_AFTER_MESSAGES = 1 << 24
"""Frames after which a traffic key asks to be replaced."""

REJECT_AFTER_MESSAGES = 23_726_566
"""floor(2^24.5): TLS 1.3's AES-GCM record limit; counters at or past it are refused both ways. Far below
2^64, so the 64-bit counter never wraps."""

REKEY_AFTER_BYTES = 1 << 36
"""Plaintext bytes (64 GiB) after which a traffic key asks to be replaced."""

REJECT_AFTER_BYTES = 1 << 38
"""Plaintext bytes (256 GiB) past which a traffic key seals no more (under TLS 1.3's 2^38.5)."""

OTP_TAG_KEY_BYTES = 32
"""One-time Poly1305 key per OTP message: 128-bit r (hash key) and 128-bit s (pad), both fresh."""

LABEL_TRAFFIC = b"qlink seal traffic key"
"""HKDF info prefix of a traffic key."""
