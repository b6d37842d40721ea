"""PNG and JPEG validation with Pillow: `verify()`, then a full decode of a reopened image.

A cut-short file must not pass. Pillow refuses one only while `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is
False; that is a process-wide switch other code may flip, so validation refuses to run with it set
(RuntimeError: a local misconfiguration, not the file's fault) rather than flip it back under another
thread. Pillow also accepts a PNG whose final IEND chunk is cut, so the PNG chunk headers are walked
first: the chunks must reach a complete IEND. Bytes after IEND are tolerated, as Pillow does.
"""

from __future__ import annotations

import io
import struct

from PIL import Image, ImageFile, UnidentifiedImageError

from qlinkmed.qlinkd.content.kinds import PNG_SIGNATURE, ContentInfo, ContentKind
from qlinkmed.qlinkd.content.limits import DEFAULT_LIMITS, ContentLimits, check_decoded
from qlinkmed.qlinkd.errors import ContentError

_CHUNK = struct.Struct(">I4s")
_FORMATS = {ContentKind.PNG: ("PNG",), ContentKind.JPEG: ("JPEG", "MPO")}


def validate_raster(
    name: str, data: bytes, kind: ContentKind, digest: str, limits: ContentLimits = DEFAULT_LIMITS
) -> ContentInfo:
    """Decode a PNG or JPEG completely and describe it; ContentError naming what is wrong. The decoded
    size the header declares is checked against `limits.max_decoded_bytes` before any pixel is decoded."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated images would pass validation"
        )
    label = kind.name
    if kind is ContentKind.PNG:
        _check_png_chunks(name, data)
    formats = _FORMATS[kind]
    try:
        with Image.open(io.BytesIO(data), formats=formats[:1]) as image:
            image.verify()
        with Image.open(io.BytesIO(data), formats=formats[:1]) as image:
            width, height = image.size
            check_decoded(
                name, _decoded_bytes(image), limits.max_decoded_bytes, f"{label} {width} x {height}"
            )
            image.load()
            width, height = image.size
            mode = image.mode
            found = image.format
    except Image.DecompressionBombError as exc:
        raise ContentError(name, f"{label} too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise ContentError(name, f"{label} signature but Pillow cannot identify the image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        if "truncat" in str(exc).lower():
            raise ContentError(name, f"{label} truncated: {exc}") from None
        raise ContentError(name, f"corrupt {label}: {exc}") from None
    if found not in formats:
        raise ContentError(name, f"{label} signature but Pillow decoded it as {found}")
    return ContentInfo(kind=kind, size=len(data), sha256=digest, width=width, height=height, mode=mode)


def _decoded_bytes(image: Image.Image) -> int:
    """What Pillow allocates for the decoded image: one byte per pixel for 1, L and P, four for multi-band
    modes (Pillow stores RGB padded to four), and 2 or 4 for the 16- and 32-bit single-band modes."""
    bands = len(image.getbands())
    per_pixel = 4 if bands > 1 else {"I;16": 2, "I;16B": 2, "I;16L": 2, "I": 4, "F": 4}.get(image.mode, 1)
    return image.size[0] * image.size[1] * per_pixel


def _check_png_chunks(name: str, data: bytes) -> None:
    pos, size = len(PNG_SIGNATURE), len(data)
    while True:
        if pos + _CHUNK.size > size:
            raise ContentError(name, f"PNG truncated: no complete chunk header at byte {pos}")
        length, chunk_type = _CHUNK.unpack_from(data, pos)
        end = pos + _CHUNK.size + length + 4  # header, data, CRC
        if end > size:
            kind = chunk_type.decode("latin-1")
            raise ContentError(
                name,
                f"PNG truncated: chunk {kind} at byte {pos} needs {end - pos} bytes, {size - pos} remain",
            )
        if chunk_type == b"IEND":
            return
        pos = end
