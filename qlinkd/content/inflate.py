"""Bounded inflation of a deflated DICOM data set (transfer syntax 1.2.840.10008.1.2.1.99).

pydicom inflates such a data set with one `zlib.decompress`: a 1 MB file of zeros becomes 1 GiB at once.
Here the deflate stream is inflated in steps of `STEP_BYTES`, and while the first steps come out the
elements are walked (Explicit VR Little Endian, PS3.5 section A.5) far enough to read the pixel module at
the top level: Rows, Columns, SamplesPerPixel, BitsAllocated, NumberOfFrames. The inflated size is then
held to the pixel data they declare plus `DATASET_SLACK_BYTES`, and never beyond the configured
`max_decoded_bytes`; a header declaring more than that is refused before the pixel data is inflated.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from qlinkmed.qlinkd.content.limits import DATASET_SLACK_BYTES, ContentLimits
from qlinkmed.qlinkd.errors import ContentError

STEP_BYTES = 1 << 20
"""Inflated bytes produced per step: the most the data set can overrun its limit by before it is refused."""

_PIXEL_GROUP = 0x0028
_LAST_PIXEL_TAG = 0x00280100  # BitsAllocated, the highest tag of the five read
_ITEM_GROUP = 0xFFFE
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_PIXEL_TAGS = {
    0x00280002: "samples_per_pixel",
    0x00280008: "number_of_frames",
    0x00280010: "rows",
    0x00280011: "columns",
    0x00280100: "bits_allocated",
}


@dataclass(slots=True)
class _PixelHeader:
    """A resumable walk over the top-level elements of the inflated bytes, collecting the pixel module."""

    pos: int = 0
    depth: int = 0
    """Undefined-length sequences entered and not yet left."""
    done: bool = False
    values: dict[str, int] = field(default_factory=dict)

    def feed(self, data: bytearray) -> None:
        """Walk as far as `data` (the inflated bytes so far) allows."""
        while not self.done and self.pos + 8 <= len(data):
            group, element = struct.unpack_from("<HH", data, self.pos)
            tag = (group << 16) | element
            if group == _ITEM_GROUP:  # item, item delimiter, sequence delimiter: tag and length, no VR
                (length,) = struct.unpack_from("<I", data, self.pos + 4)
                self.pos += 8
                if tag == _SEQUENCE_DELIMITER:
                    self.depth = max(self.depth - 1, 0)
                elif length != _UNDEFINED and tag != 0xFFFEE00D:
                    self.pos += length  # an item of defined length: skipped whole
                continue
            if self.depth == 0 and tag > _LAST_PIXEL_TAG:
                self.done = True  # past the pixel module: what was found is all there is
                return
            vr = bytes(data[self.pos + 4 : self.pos + 6])
            if vr in _LONG_VRS:
                if self.pos + 12 > len(data):
                    return
                (length,) = struct.unpack_from("<I", data, self.pos + 8)
                header = 12
            else:
                (length,) = struct.unpack_from("<H", data, self.pos + 6)
                header = 8
            if length == _UNDEFINED:
                self.depth += 1
                self.pos += header
                continue
            if self.depth == 0 and tag in _PIXEL_TAGS:
                end = self.pos + header + length
                if end > len(data):
                    return  # wait for the value
                self.values[_PIXEL_TAGS[tag]] = _number(bytes(data[self.pos + header : end]), vr)
            self.pos += header + length

    def declared_bytes(self) -> int | None:
        """Bytes of native pixel data the header declares (None without Rows and Columns)."""
        v = self.values
        if not v.get("rows") or not v.get("columns"):
            return None
        count = (
            v["rows"]
            * v["columns"]
            * max(v.get("number_of_frames", 1), 1)
            * max(v.get("samples_per_pixel", 1), 1)
        )
        bits = max(v.get("bits_allocated", 8), 1)
        return (count * bits + 7) // 8

    def describe(self) -> str:
        v = self.values
        return (
            f"{v.get('rows')} x {v.get('columns')} x {v.get('number_of_frames', 1)} frame(s) x "
            f"{v.get('samples_per_pixel', 1)} sample(s) at {v.get('bits_allocated', 8)} bits"
        )


def _number(value: bytes, vr: bytes) -> int:
    """A US/UL/IS value as an int (0 if unreadable: the full parse reports it later)."""
    try:
        if vr == b"US" and len(value) >= 2:
            return int(struct.unpack_from("<H", value)[0])
        if vr == b"UL" and len(value) >= 4:
            return int(struct.unpack_from("<I", value)[0])
        return int(value.decode("ascii").strip("\0 ").split("\\")[0])
    except (ValueError, UnicodeDecodeError):
        return 0


def inflate_dataset(name: str, data: bytes, start: int, limits: ContentLimits) -> bytes:
    """The data set deflated in `data[start:]`, inflated; ContentError naming the file and the limit as
    soon as it grows past what its header declares (or `limits.max_decoded_bytes`), or if it is cut short."""
    cap = limits.max_decoded_bytes
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    header = _PixelHeader()
    limit, reason = cap, "decoded content"
    pending = memoryview(data)[start:]
    while not inflater.eof:
        try:
            piece = inflater.decompress(pending, STEP_BYTES)
        except zlib.error as exc:
            raise ContentError(
                name, f"malformed DICOM file: the deflated data set is corrupt ({exc})"
            ) from None
        pending = memoryview(inflater.unconsumed_tail)
        if not piece and not pending:
            raise ContentError(name, "truncated DICOM file: the deflate stream of the data set is cut short")
        out += piece
        if not header.done:
            header.feed(out)
            if header.done:
                limit, reason = _limit_from_header(name, header, cap)
        if len(out) > limit:
            raise ContentError(
                name, f"the deflated data set inflates beyond {limit:,} bytes, the limit for {reason}"
            )
    return bytes(out)


def _limit_from_header(name: str, header: _PixelHeader, cap: int) -> tuple[int, str]:
    declared = header.declared_bytes()
    if declared is None:
        return min(cap, DATASET_SLACK_BYTES), "a data set without pixel data"
    if declared > cap:
        raise ContentError(
            name,
            f"the deflated data set declares {declared:,} bytes of pixel data ({header.describe()}), over "
            f"the {cap:,}-byte limit for decoded content",
        )
    if declared + DATASET_SLACK_BYTES >= cap:
        return cap, "decoded content"
    pixels = f"{declared:,} bytes of pixel data ({header.describe()})"
    return declared + DATASET_SLACK_BYTES, f"{pixels} and {DATASET_SLACK_BYTES:,} bytes of other attributes"
