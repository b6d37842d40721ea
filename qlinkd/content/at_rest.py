"""Received content at rest: images in the seed paper's cipher-image form, everything else under AEAD.

`open_at_rest(seal_at_rest(name, data, info, key), key) == data`, byte for byte, for every input.

Forms (`at_rest_form`):

- "cipher-image": DICOM with native (uncompressed) pixel data, 1 or more frames, 8 or 16 bits allocated,
  1 or 3 samples per pixel, planar configuration 0, little-endian transfer syntax (or Explicit VR Big
  Endian at 16 bits). The file is prefix + pixel bytes + suffix. The prefix and suffix (the header: PHI)
  are sealed with AES-256-GCM; each frame becomes a cipher image (`qcore.image.encrypt`, its own random
  16-byte nonce, `container.pack`). Opening decrypts the frames and splices their bytes back in. At seal
  time the bytes re-encoded from the frame arrays, spliced between prefix and suffix, are compared with
  the input; the odd-length padding byte and any trailing excess of PixelData travel in the suffix.
- "aead": everything else, the whole file under AES-256-GCM. That covers PNG and JPEG and compressed
  DICOM (the cipher needs raw pixels, and re-encoding a compressed stream is not bit-exact), deflated
  DICOM, native DICOM the image cipher cannot take (1 or 32 bits, planar configuration 1, YBR 4:2:2,
  8 bits in big-endian), and FHIR and HL7.

Blob (every integer big-endian)::

    "QLAR" | version (1) | form (1) | salt (16) | sealed length (8) | frame count (4)
    | sealed: AES-256-GCM in chunks of CHUNK_BYTES, each with its 16-byte tag
    | frame count x [ frame length (8) | cipher image (qcore.image.container) ]

Sealed plaintext: the file ("aead"), or SHA-256 of the file (32) | pixel byte order (1: 0 little, 1 big)
| prefix length (8) | prefix | suffix ("cipher-image").

Keys: HKDF-SHA256 over the 32-byte QKD-derived key with the blob's fresh random salt gives the AES key
and the image-cipher key (two `info` labels), so every blob has its own sub-keys; GCM nonces are the chunk
counter. The associated data of every chunk is the fixed header plus SHA-256 of the frame section, so the
GCM tags authenticate every byte of the blob: a changed cipher image fails before the image cipher sees
it, and the image cipher's own tag and a final SHA-256 of the reassembled file back that up. Every failure
to open raises `qlinkd.errors.IntegrityError` (reason a `seal.IntegrityFailure`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from qlinkmed.qcore.errors import IntegrityFailure, QlinkError
from qlinkmed.qcore.image import decrypt, encrypt
from qlinkmed.qcore.image.container import pack, unpack
from qlinkmed.qlinkd.content.kinds import ContentInfo, ContentKind
from qlinkmed.qlinkd.errors import ContentError, IntegrityError, KeyMaterialShort
from qlinkmed.qlinkd.ops import entropy

MAGIC = b"QLAR"
VERSION = 1
FORM_AEAD = "aead"
FORM_CIPHER_IMAGE = "cipher-image"
_FORM_CODES = {FORM_AEAD: 1, FORM_CIPHER_IMAGE: 2}
_FORMS = {code: form for form, code in _FORM_CODES.items()}

KEY_BYTES = 32
"""QKD-derived key material per blob (at least)."""
SALT_BYTES = 16
IMAGE_NONCE_BYTES = 16
CHUNK_BYTES = 4 << 20
"""AES-GCM plaintext per chunk (one `cryptography` call each, well below its 2^31-byte limit)."""
TAG_BYTES = 16
_INFO_AEAD = b"qlink at-rest v1 aes-256-gcm"
_INFO_IMAGE = b"qlink at-rest v1 image cipher"

_HEADER = struct.Struct(">4sBB16sQI")
_FRAME_LENGTH = struct.Struct(">Q")
_META = struct.Struct(">32sBQ")
_LITTLE, _BIG = 0, 1
_NATIVE_SYNTAXES = {str(ImplicitVRLittleEndian), str(ExplicitVRLittleEndian), str(ExplicitVRBigEndian)}


@dataclass(frozen=True, slots=True)
class _Pixels:
    """Where the frames lie in a native DICOM file and how to read them."""

    offset: int
    frame_shape: tuple[int, ...]
    frames: int
    dtype: np.dtype  # with the file's byte order
    big_endian: bool

    @property
    def length(self) -> int:
        return self.frames * int(np.prod(self.frame_shape)) * self.dtype.itemsize


def seal_at_rest(name: str, data: bytes, info: ContentInfo, key: bytes) -> bytes:
    """Seal a validated file (`info` from `validate(name, data)`) for storage under `key`.

    Native DICOM images become cipher images, everything else one AEAD blob (see the module docstring).
    ContentError if `info` does not describe `data`; KeyMaterialShort if `key` is under 32 bytes.
    """
    _check_key(key)
    digest = hashlib.sha256(data).digest()
    if info.size != len(data) or info.sha256 != digest.hex():
        raise ContentError(name, "the content info does not describe these bytes (size or SHA-256 differ)")
    salt = entropy.random_bytes(SALT_BYTES)
    aead_key, image_key = _derive(key, salt)
    pixels = _native_pixels(info, len(data))
    if pixels is not None:
        sealed = _seal_cipher_image(data, digest, pixels, salt, aead_key, image_key)
        if sealed is not None:
            return sealed
    header = _HEADER.pack(MAGIC, VERSION, _FORM_CODES[FORM_AEAD], salt, _sealed_length(len(data)), 0)
    aad = header + hashlib.sha256(b"").digest()
    return b"".join([header, *_aead_chunks(aead_key, aad, memoryview(data))])


def open_at_rest(blob: bytes, key: bytes) -> bytes:
    """The original file, bit-exact. IntegrityError for a wrong key, a changed or cut blob, or anything
    that is not a blob of this version."""
    _check_key(key)
    view = memoryview(blob)
    form, salt, sealed, frames = _parse(view)
    aead_key, image_key = _derive(key, salt)
    header = bytes(view[: _HEADER.size])
    frame_section = view[_HEADER.size + len(sealed) :]
    aad = header + hashlib.sha256(frame_section).digest()
    plain = _aead_open(aead_key, aad, sealed)
    if form == FORM_AEAD:
        return plain
    if len(plain) < _META.size:
        raise IntegrityError(IntegrityFailure.TRUNCATED, "at-rest blob: sealed header too short")
    digest, order, prefix_length = _META.unpack_from(plain)
    meta = memoryview(plain)[_META.size :]
    if prefix_length > len(meta) or order not in (_LITTLE, _BIG):
        raise IntegrityError(IntegrityFailure.TRUNCATED, "at-rest blob: malformed sealed header")
    parts: list[bytes | memoryview] = [meta[:prefix_length]]
    for i, frame in enumerate(frames):
        try:
            cipher, nonce = unpack(bytes(frame))
            image = decrypt(cipher, image_key, nonce)
        except QlinkError as exc:  # the image cipher refused the frame (a bad tag or layout)
            raise IntegrityError(IntegrityFailure.TAG, f"at-rest blob: frame {i} does not decrypt") from exc
        parts.append(_encode(image, order))
    parts.append(meta[prefix_length:])
    out = b"".join(parts)
    if hashlib.sha256(out).digest() != digest:
        raise IntegrityError(IntegrityFailure.TAG, "at-rest blob: the reassembled file fails its SHA-256")
    return out


def at_rest_form(blob: bytes) -> str:
    """The blob's form, FORM_CIPHER_IMAGE or FORM_AEAD, read from its header: not authenticated, for
    listings only. IntegrityError if `blob` is not an at-rest blob of this version."""
    return _parse_header(memoryview(blob))[0]


# Sealing ------------------------------------------------------------------------------------------------


def _native_pixels(info: ContentInfo, size: int) -> _Pixels | None:
    """The frame layout if the image cipher can carry this file's pixels, else None (AEAD fallback)."""
    if info.kind is not ContentKind.DICOM or info.pixel_data_offset is None:
        return None
    if info.transfer_syntax not in _NATIVE_SYNTAXES or info.pixel_data_length is None:
        return None
    rows, columns, frames = info.rows or 0, info.columns or 0, info.number_of_frames or 0
    bits, samples = info.bits_allocated, info.samples_per_pixel
    big_endian = info.transfer_syntax == str(ExplicitVRBigEndian)
    if rows < 1 or columns < 1 or frames < 1 or bits not in (8, 16) or samples not in (1, 3):
        return None
    if samples == 3 and (info.planar_configuration or 0) != 0:
        return None
    if (info.photometric_interpretation or "").startswith(("YBR_FULL_422", "YBR_PARTIAL")):
        return None
    if big_endian and bits == 8:
        return None  # OW at 8 bits swaps byte pairs in big-endian files
    dtype = np.dtype(np.uint8) if bits == 8 else np.dtype(">u2" if big_endian else "<u2")
    pixels = _Pixels(
        offset=info.pixel_data_offset,
        frame_shape=(rows, columns) if samples == 1 else (rows, columns, 3),
        frames=frames,
        dtype=dtype,
        big_endian=big_endian,
    )
    if pixels.length > info.pixel_data_length or pixels.offset + pixels.length > size:
        return None
    return pixels


def _seal_cipher_image(
    data: bytes, digest: bytes, pixels: _Pixels, salt: bytes, aead_key: bytes, image_key: bytes
) -> bytes | None:
    """The cipher-image blob, or None if the frame arrays would not give back `data` exactly."""
    view = memoryview(data)
    end = pixels.offset + pixels.length
    stack = np.frombuffer(view[pixels.offset : end], dtype=pixels.dtype)
    stack = stack.reshape((pixels.frames, *pixels.frame_shape))
    order = _BIG if pixels.big_endian else _LITTLE
    images = [
        frame if frame.dtype.isnative else frame.astype(frame.dtype.newbyteorder("=")) for frame in stack
    ]
    rebuilt = b"".join([view[: pixels.offset], *(_encode(image, order) for image in images), view[end:]])
    if rebuilt != data:
        return None
    del rebuilt
    frame_parts: list[bytes] = []
    for image in images:
        nonce = entropy.random_bytes(IMAGE_NONCE_BYTES)
        packed = pack(encrypt(image, image_key, nonce), nonce)
        frame_parts += [_FRAME_LENGTH.pack(len(packed)), packed]
    meta = b"".join([_META.pack(digest, order, pixels.offset), view[: pixels.offset], view[end:]])
    header = _HEADER.pack(
        MAGIC, VERSION, _FORM_CODES[FORM_CIPHER_IMAGE], salt, _sealed_length(len(meta)), len(images)
    )
    frames_digest = hashlib.sha256()
    for part in frame_parts:
        frames_digest.update(part)
    aad = header + frames_digest.digest()
    return b"".join([header, *_aead_chunks(aead_key, aad, memoryview(meta)), *frame_parts])


def _encode(image: np.ndarray, order: int) -> memoryview:
    """The pixel bytes of one decrypted frame in the file's byte order (no copy when already so)."""
    target = image.dtype.newbyteorder(">" if order == _BIG else "<")
    return np.ascontiguousarray(image, dtype=target).data.cast("B")


# AEAD and keys ------------------------------------------------------------------------------------------


def _check_key(key: bytes) -> None:
    if len(key) < KEY_BYTES:
        raise KeyMaterialShort(needed_bits=KEY_BYTES * 8, provided_bits=len(key) * 8)


def _derive(key: bytes, salt: bytes) -> tuple[bytes, bytes]:
    def hkdf(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)

    return hkdf(_INFO_AEAD), hkdf(_INFO_IMAGE)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _sealed_length(plain_length: int) -> int:
    chunks = max(1, -(-plain_length // CHUNK_BYTES))
    return plain_length + chunks * TAG_BYTES


def _aead_chunks(key: bytes, aad: bytes, plain: memoryview) -> Iterator[bytes]:
    aead = AESGCM(key)
    starts = range(0, len(plain), CHUNK_BYTES) if len(plain) else range(1)
    for index, start in enumerate(starts):
        yield aead.encrypt(_nonce(index), plain[start : start + CHUNK_BYTES], aad)


def _aead_open(key: bytes, aad: bytes, sealed: memoryview) -> bytes:
    aead = AESGCM(key)
    step = CHUNK_BYTES + TAG_BYTES
    try:
        return b"".join(
            aead.decrypt(_nonce(index), sealed[start : start + step], aad)
            for index, start in enumerate(range(0, len(sealed), step))
        )
    except InvalidTag:
        raise IntegrityError(IntegrityFailure.TAG, "at-rest blob: wrong key or changed blob") from None


# Parsing ------------------------------------------------------------------------------------------------


def _parse_header(view: memoryview) -> tuple[str, bytes, int, int]:
    if len(view) < _HEADER.size:
        raise IntegrityError(IntegrityFailure.TRUNCATED, "at-rest blob: shorter than its header")
    magic, version, code, salt, sealed_length, frame_count = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise IntegrityError(IntegrityFailure.VERSION, "not a qlink at-rest blob")
    if version != VERSION or code not in _FORMS:
        raise IntegrityError(IntegrityFailure.VERSION, f"at-rest blob version {version} form {code} unknown")
    return _FORMS[code], salt, sealed_length, frame_count


def _parse(view: memoryview) -> tuple[str, bytes, memoryview, list[memoryview]]:
    form, salt, sealed_length, frame_count = _parse_header(view)
    pos = _HEADER.size + sealed_length
    if sealed_length < TAG_BYTES or pos > len(view):
        raise IntegrityError(IntegrityFailure.TRUNCATED, "at-rest blob: sealed part cut short")
    if (form == FORM_AEAD) != (frame_count == 0) or frame_count * _FRAME_LENGTH.size > len(view) - pos:
        raise IntegrityError(IntegrityFailure.TRUNCATED, "at-rest blob: frame count does not fit")
    sealed = view[_HEADER.size : pos]
    frames = []
    for _ in range(frame_count):
        if pos + _FRAME_LENGTH.size > len(view):
            raise IntegrityError(IntegrityFailure.TRUNCATED, "at-rest blob: frame table cut short")
        (length,) = _FRAME_LENGTH.unpack_from(view, pos)
        pos += _FRAME_LENGTH.size
        if pos + length > len(view):
            raise IntegrityError(IntegrityFailure.TRUNCATED, "at-rest blob: cipher image cut short")
        frames.append(view[pos : pos + length])
        pos += length
    if pos != len(view):
        raise IntegrityError(IntegrityFailure.TRUNCATED, "at-rest blob: bytes after the last frame")
    return form, salt, sealed, frames
