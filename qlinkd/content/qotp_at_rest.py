"""An EHR message at rest in the quantum one-time-pad form of seed paper 003 (QOTPE, `qcore.qotp`).

`open_blob(seal(data, pad), pad) == data` for every message, with `pad = alpha || beta || MAC key`
(`pad_bytes(len(data))` bytes, cut once from the QKD pool and kept in the key store, never beside the blob).

Blob (integers big-endian)::

    "QLQP" | version (1) | form (1) | length (8) | cipher (length) | HMAC-SHA256 (32)

The cipher is `qcore.qotp.encrypt`: each bit basis-encoded, X^alpha Z^beta applied, measured. On
basis-encoded classical bits that is exactly data XOR alpha (beta only adds a phase no measurement sees),
so the secrecy is a classical one-time pad's: it holds while alpha is uniformly random, used once and kept
away from the blob. A one-time pad alone is malleable (flipping a cipher bit flips the same message bit),
so the HMAC, over the header and the cipher under the pad's own 32-byte MAC key, gives integrity: it is
verified before anything is decrypted, and every failure to open raises one `IntegrityError`.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from qlinkmed.qcore.errors import IntegrityFailure
from qlinkmed.qcore.qotp import KEY_BYTES_PER_DATA_BYTE, QotpKey, decrypt, encrypt
from qlinkmed.qlinkd.errors import IntegrityError, KeyMaterialShort

MAGIC = b"QLQP"
VERSION = 1
FORM_QOTPE = "qotpe"
_FORM_CODE = 1
MAC_KEY_BYTES = 32
TAG_BYTES = 32
_HEADER = struct.Struct(">4sBBQ")


def pad_bytes(length: int) -> int:
    """Key bytes a message of `length` bytes takes: alpha and beta (two bits per data bit) and a MAC key."""
    return KEY_BYTES_PER_DATA_BYTE * length + MAC_KEY_BYTES


def is_qotpe(blob: bytes) -> bool:
    """Whether `blob` claims this format (its magic; not authenticated: it only picks the opener)."""
    return blob[: len(MAGIC)] == MAGIC


def _split(pad: bytes, length: int) -> tuple[QotpKey, bytes]:
    if len(pad) != pad_bytes(length):
        raise KeyMaterialShort(needed_bits=8 * pad_bytes(length), provided_bits=8 * len(pad))
    body = length * KEY_BYTES_PER_DATA_BYTE
    return QotpKey.from_material(pad[:body]), pad[body:]


def _mac(mac_key: bytes, *parts: bytes) -> crypto_hmac.HMAC:
    mac = crypto_hmac.HMAC(mac_key, hashes.SHA256())
    for part in parts:
        mac.update(part)
    return mac


def seal(data: bytes, pad: bytes) -> bytes:
    """The message's blob under `pad` (exactly `pad_bytes(len(data))` bytes, else KeyMaterialShort)."""
    key, mac_key = _split(pad, len(data))
    header = _HEADER.pack(MAGIC, VERSION, _FORM_CODE, len(data))
    cipher = encrypt(data, key)
    return b"".join([header, cipher, _mac(mac_key, header, cipher).finalize()])


def open_blob(blob: bytes, pad: bytes) -> bytes:
    """The message, bit-exact; IntegrityError for any blob that is not what `seal` wrote under `pad`."""
    if len(blob) < _HEADER.size + TAG_BYTES or len(pad) < MAC_KEY_BYTES:
        raise IntegrityError(IntegrityFailure.TRUNCATED, "QOTPE blob or pad too short")
    body, tag = blob[: len(blob) - TAG_BYTES], blob[len(blob) - TAG_BYTES :]
    try:
        _mac(pad[len(pad) - MAC_KEY_BYTES :], body).verify(tag)
    except InvalidSignature:
        raise IntegrityError(IntegrityFailure.TAG, "QOTPE blob: wrong pad or changed blob") from None
    magic, version, code, length = _HEADER.unpack_from(body)
    if magic != MAGIC or version != VERSION or code != _FORM_CODE:
        raise IntegrityError(IntegrityFailure.VERSION, f"QOTPE blob version {version} form {code} unknown")
    cipher = body[_HEADER.size :]
    if length != len(cipher) or len(pad) != pad_bytes(length):
        raise IntegrityError(IntegrityFailure.TRUNCATED, "QOTPE blob: length differs from its pad")
    key, _ = _split(pad, length)
    return decrypt(cipher, key)
