"""The byte form of a cipher image, so one can be stored or sent: pure (bytes in, bytes out).

    magic b"QIMG" | version (1) | header length (2, big-endian) | header (JSON, UTF-8) | pixels

The header names the original shape, the dtype, the nonce and the tag (hex); the pixels are the padded
2^n x 2^n cipher array, little-endian, row-major. Nothing here is secret: the key is not in it.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from ..errors import ConfigError
from .cipher import VERSION, CipherImage
from .neqr import layout_for

MAGIC = b"QIMG"
_FIXED = struct.Struct(">4sBH")
_MAX_HEADER = 4096


def pack(cipher: CipherImage, nonce: bytes) -> bytes:
    """`cipher` and the per-image `nonce` it was made with, as bytes."""
    header = json.dumps(
        {"shape": list(cipher.shape), "dtype": cipher.dtype, "nonce": nonce.hex(), "tag": cipher.tag.hex()},
        separators=(",", ":"),
    ).encode()
    pixels = np.ascontiguousarray(cipher.data, dtype=cipher.data.dtype.newbyteorder("<"))
    return _FIXED.pack(MAGIC, cipher.version, len(header)) + header + pixels.tobytes()


def unpack(blob: bytes) -> tuple[CipherImage, bytes]:
    """The cipher image and nonce in `blob`; ConfigError naming the problem if it is not one."""
    if len(blob) < _FIXED.size:
        raise ConfigError("cipher image", f"{len(blob)} bytes is too short for a cipher image")
    magic, version, header_len = _FIXED.unpack_from(blob)
    if magic != MAGIC:
        raise ConfigError("cipher image", "not a qlink cipher image (bad magic)")
    if version != VERSION:
        raise ConfigError("cipher image", f"unsupported cipher image version {version}")
    if header_len > _MAX_HEADER or len(blob) < _FIXED.size + header_len:
        raise ConfigError("cipher image", "truncated or oversized header")
    try:
        header = json.loads(blob[_FIXED.size : _FIXED.size + header_len])
        shape = tuple(int(v) for v in header["shape"])
        dtype = str(header["dtype"])
        nonce = bytes.fromhex(header["nonce"])
        tag = bytes.fromhex(header["tag"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError("cipher image", f"malformed header ({exc})") from None
    layout = layout_for(shape, dtype)
    pixels = memoryview(blob)[_FIXED.size + header_len :]
    expected = int(np.prod(layout.padded_shape)) * layout.dtype.itemsize
    if len(pixels) != expected:
        raise ConfigError("cipher image", f"pixel data is {len(pixels)} bytes, {expected} expected")
    data = np.frombuffer(pixels, dtype=layout.dtype.newbyteorder("<")).astype(layout.dtype)
    return CipherImage(data=data.reshape(layout.padded_shape), shape=shape, dtype=dtype, tag=tag), nonce
