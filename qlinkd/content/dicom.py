"""DICOM validation with pydicom, including the truncation pydicom does not report.

Accepted: every object a PACS stores, whatever its SOP class (images, structured reports, RT objects,
segmentations, presentation states...), with or without pixel data (an image storage SOP class must have
some), in any transfer syntax (a compressed one is checked structurally; its pixels are never decoded),
as a Part 10 file or as a bare data set without the 128-byte preamble and file meta information (the
transfer syntax then is what pydicom infers: implicit or explicit VR, either byte order). Required:
SOPClassUID (0008,0016) and SOPInstanceUID (0008,0018), which name the object; StudyInstanceUID is read
when present (`studies.group_studies` groups the objects that lack it). A DICOMDIR is refused by name: it
indexes files, it is not an object.

pydicom reads a file cut short without complaint: a value that runs past the end of the file is simply
shorter than its length says, and a deferred value is never read at all. So after parsing (the whole
file, values over `DEFER_BYTES` deferred and not copied), the end of the last top-level element is
computed from the bytes (defined length: value offset + length; encapsulated pixel data: its item headers
walked to the sequence delimiter; an undefined-length sequence: the delimiter must end the file) and
must be exactly the end of the file. Native pixel data must also be at least as long as its Rows x
Columns x frames x samples x bits says.

A deflated transfer syntax is never handed to pydicom whole: pydicom would inflate it with one
`zlib.decompress`, however large it grows. `inflate.inflate_dataset` inflates it in bounded steps (held to
the pixel data its header declares and to `ContentLimits.max_decoded_bytes`) and pydicom parses the
inflated data set; there the offsets refer to the inflated bytes, so the end check is skipped and
`pixel_data_offset` is None.
"""

from __future__ import annotations

import io
import struct
from typing import Any, BinaryIO, cast

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from qlinkmed.qlinkd.content.inflate import inflate_dataset
from qlinkmed.qlinkd.content.kinds import DICOM_PREFIX, DICOM_PREFIX_AT, ContentInfo, ContentKind
from qlinkmed.qlinkd.content.limits import DEFAULT_LIMITS, ContentLimits
from qlinkmed.qlinkd.errors import ContentError

DEFER_BYTES = 4096
"""Values longer than this are not read by the parser (pixel data above all): no copy is made."""

PIXEL_DATA = BaseTag(0x7FE00010)
FLOAT_PIXEL_DATA = ("FloatPixelData", "DoubleFloatPixelData")
"""(7FE0,0008) and (7FE0,0009): the pixel data of parametric maps, in place of PixelData."""
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
"""The SOP class of a DICOMDIR (PS3.10 section 8.6)."""
_INFERRED_SYNTAX: dict[tuple[bool | None, bool | None], UID] = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}
_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_REQUIRED = (
    ("SOPClassUID", "(0008,0016)"),
    ("SOPInstanceUID", "(0008,0018)"),
)


def validate_dicom(
    name: str, data: bytes, digest: str, limits: ContentLimits = DEFAULT_LIMITS
) -> ContentInfo:
    """Parse a DICOM object (a Part 10 file or a bare data set) and describe it; ContentError naming what
    is wrong."""
    part10 = data[DICOM_PREFIX_AT : DICOM_PREFIX_AT + len(DICOM_PREFIX)] == DICOM_PREFIX
    ds = _read(name, data, limits, part10)
    if str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY:
        raise ContentError(
            name, "is a DICOMDIR (a media directory index), not a DICOM object: send the files it indexes"
        )
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if not syntax and not part10:
        syntax = _INFERRED_SYNTAX.get(ds.original_encoding)
    if not syntax:
        if _meta_cut_short(data):
            raise ContentError(name, "truncated DICOM file: the file meta information is cut short")
        raise ContentError(name, "DICOM file meta information has no TransferSyntaxUID (0002,0010)")
    syntax = UID(str(syntax))
    deflated = syntax == DeflatedExplicitVRLittleEndian
    little_endian = syntax != ExplicitVRBigEndian
    if not deflated:
        if part10:
            _check_encoding(name, data, _file_meta(data, part10)[1], syntax)
        _check_ends_with_file(name, ds, data, little_endian)
    uids = {}
    for keyword, tag in _REQUIRED:
        value = _attribute(name, ds, keyword)
        if not value:
            raise ContentError(name, f"DICOM file has no {keyword} {tag}: not a storable DICOM object")
        uids[keyword] = str(value)
    study = _attribute(name, ds, "StudyInstanceUID")

    pixels: dict[str, Any] = {}
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
    sop_class = UID(uids["SOPClassUID"])
    # An image IOD without pixel data is most likely a file cut at an element boundary before them, which
    # the end check cannot see. (Pixel data may instead be float, or referenced by a JPIP provider URL.)
    elsewhere = any(keyword in ds for keyword in (*FLOAT_PIXEL_DATA, "PixelDataProviderURL"))
    if raw is None and not elsewhere and sop_class.name.endswith("Image Storage"):
        raise ContentError(name, f"DICOM {sop_class.name} instance has no PixelData (truncated?)")
    if raw is not None:
        pixels = _pixel_fields(name, ds)
        if isinstance(raw, RawDataElement) and raw.length != _UNDEFINED and not deflated:
            if syntax.is_compressed:
                raise ContentError(name, f"PixelData has a defined length under compressed {syntax.name}")
            expected = _expected_pixel_bytes(pixels)
            if raw.length < expected:
                raise ContentError(
                    name,
                    f"truncated DICOM pixel data: PixelData holds {raw.length} bytes, but "
                    f"{pixels['rows']} x {pixels['columns']} x {pixels['number_of_frames']} frame(s) x "
                    f"{pixels['samples_per_pixel']} sample(s) at {pixels['bits_allocated']} bits needs "
                    f"{expected}",
                )
            pixels["pixel_data_offset"] = raw.value_tell
            pixels["pixel_data_length"] = raw.length
    series = _attribute(name, ds, "SeriesInstanceUID")
    modality = _attribute(name, ds, "Modality")
    patient = _attribute(name, ds, "PatientID")
    return ContentInfo(
        patient_name=_text(ds, "PatientName"),
        accession_number=_text(ds, "AccessionNumber"),
        study_date=_text(ds, "StudyDate"),
        study_description=_text(ds, "StudyDescription"),
        dicom_department=_department(ds),
        kind=ContentKind.DICOM,
        size=len(data),
        sha256=digest,
        part10=part10,
        study_uid=str(study) if study else None,
        patient_id=str(patient) if patient else None,
        series_uid=str(series) if series else None,
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        modality=str(modality) if modality else None,
        transfer_syntax=str(syntax),
        **pixels,
    )


def _read(name: str, data: bytes, limits: ContentLimits, part10: bool) -> Dataset:
    """The parsed file. The file meta information is read first, alone: a deflated data set is then
    inflated within its bounds and parsed from the inflated bytes, any other straight from the file (a
    bare data set with `force`: pydicom then infers its encoding from its first element)."""
    try:
        meta, start = _file_meta(data, part10)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return pydicom.dcmread(io.BytesIO(data), defer_size=DEFER_BYTES, force=not part10)
        inflated = DicomBytesIO(inflate_dataset(name, data, start, limits))
        inflated.is_little_endian, inflated.is_implicit_VR = True, False
        ds = read_dataset(
            cast(BinaryIO, inflated), is_implicit_VR=False, is_little_endian=True, defer_size=DEFER_BYTES
        )
    except (ContentError, MemoryError):
        raise  # MemoryError: past the worker's budget (content.worker), not a malformed file
    except EOFError as exc:
        raise ContentError(name, f"truncated DICOM file: {exc}") from exc
    except Exception as exc:
        raise ContentError(name, f"malformed DICOM file: {exc}") from exc
    ds.file_meta = meta
    return ds


def _file_meta(data: bytes, part10: bool) -> tuple[FileMetaDataset, int]:
    """The file meta information as pydicom reads it (empty for a bare data set without it), and where
    the data set starts. (pydicom's reader of the meta group alone is private; `dcmread` would go on to
    inflate a deflated data set whole.)"""
    fp = io.BytesIO(data)
    read_preamble(fp, not part10)
    meta = _read_file_meta_info(fp)
    return meta, fp.tell()


def _meta_cut_short(data: bytes) -> bool:
    """Whether the file ends inside the group length its (0002,0000) element declares."""
    group_length_at = 132  # after the preamble and "DICM": tag (4), "UL" (2), length (2), value (4)
    if data[group_length_at : group_length_at + 6] != b"\x02\x00\x00\x00UL":
        return False
    (length,) = struct.unpack_from("<I", data, group_length_at + 8) if len(data) >= 144 else (0,)
    return len(data) < 144 + length


def _attribute(name: str, ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception as exc:
        raise ContentError(name, f"DICOM {keyword} cannot be read: {exc}") from exc


def _text(ds: Dataset, keyword: str) -> str | None:
    """A descriptive attribute for the inbox listing, or None when absent, empty or unreadable: what only
    describes a study (a name in an undeclared character set, say) never refuses it."""
    try:
        value = ds.get(keyword)
        text = "" if value is None else str(value).strip()
    except Exception:
        return None
    return text or None


def _department(ds: Dataset) -> str | None:
    """InstitutionalDepartmentName (0008,1040), else RequestingService (0032,1033): the first value of
    either (both are VM 1, but a peer may write several, which pydicom reads as a list)."""
    for keyword in ("InstitutionalDepartmentName", "RequestingService"):
        try:
            value = ds.get(keyword)
            if isinstance(value, MultiValue):
                value = value[0] if value else None
            text = "" if value is None else str(value).strip()
        except Exception:
            continue
        if text:
            return text
    return None


def _int_attribute(name: str, ds: Dataset, keyword: str) -> int | None:
    value = _attribute(name, ds, keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ContentError(name, f"DICOM {keyword} is not an integer") from None


def _pixel_fields(name: str, ds: Dataset) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, keyword in (
        ("rows", "Rows"),
        ("columns", "Columns"),
        ("bits_allocated", "BitsAllocated"),
        ("samples_per_pixel", "SamplesPerPixel"),
    ):
        value = _int_attribute(name, ds, keyword)
        if value is None or value < 1:
            raise ContentError(name, f"DICOM file has PixelData but no valid {keyword}")
        fields[key] = value
    bits = fields["bits_allocated"]
    if bits != 1 and bits % 8:
        raise ContentError(name, f"DICOM BitsAllocated {bits} is neither 1 nor a multiple of 8")
    frames = _int_attribute(name, ds, "NumberOfFrames")
    if frames is not None and frames < 1:
        raise ContentError(name, f"DICOM NumberOfFrames {frames} is not positive")
    fields["number_of_frames"] = frames or 1
    photometric = _attribute(name, ds, "PhotometricInterpretation")
    fields["photometric_interpretation"] = str(photometric) if photometric else None
    fields["planar_configuration"] = _int_attribute(name, ds, "PlanarConfiguration")
    return fields


def _expected_pixel_bytes(pixels: dict[str, Any]) -> int:
    """Length of native pixel data without the odd-length padding byte (PS3.5 section 8.1.1)."""
    samples = pixels["samples_per_pixel"]
    if pixels["photometric_interpretation"] == "YBR_FULL_422" and samples == 3:
        samples = 2  # two luminance and one pair of chrominance samples per two pixels
    count = pixels["rows"] * pixels["columns"] * pixels["number_of_frames"] * samples
    if pixels["bits_allocated"] == 1:
        return (count + 7) // 8
    return count * pixels["bits_allocated"] // 8


def _label(tag: BaseTag) -> str:
    keyword = keyword_for_tag(tag)
    location = f"({tag.group:04X},{tag.element:04X})"
    return f"{keyword} {location}" if keyword else location


def _check_encoding(name: str, data: bytes, start: int, syntax: UID) -> None:
    """The data set must be encoded in the VR its transfer syntax says. pydicom reads a mismatch (its first
    element tells) with a warning; readers that follow the standard (dcmtk, and PACS built on it) cannot
    read it at all. Undefined-length sequences may be implicit in either (PS3.5 section 6.2.2): not judged
    from them."""
    vr = data[start + 4 : start + 6]
    if len(vr) < 2:
        return
    looks_explicit = all(0x40 < b < 0x5B for b in vr)
    if looks_explicit == (not syntax.is_implicit_VR):
        return
    found = "explicit" if looks_explicit else "implicit"
    raise ContentError(
        name,
        f"malformed DICOM file: the data set is encoded in {found} VR, not as its transfer syntax "
        f"{syntax.name} says",
    )


def _check_ends_with_file(name: str, ds: Dataset, data: bytes, little_endian: bool) -> None:
    """The last top-level element must end exactly where the file does."""
    tags = list(ds.keys())
    if not tags:
        raise ContentError(
            name, "truncated or malformed DICOM file: no data set after the file meta information"
        )
    tag = max(tags)
    end = _element_end(name, ds, data, tag, little_endian)
    if end > len(data):
        raise ContentError(
            name, f"truncated DICOM file: {_label(tag)} ends at byte {end}, the file has {len(data)} bytes"
        )
    if end < len(data):
        raise ContentError(
            name,
            f"malformed DICOM file: {len(data) - end} byte(s) after the last readable element "
            f"{_label(tag)} (truncated or corrupt)",
        )


def _element_end(name: str, ds: Dataset, data: bytes, tag: BaseTag, little_endian: bool) -> int:
    elem = ds.get_item(tag, keep_deferred=True)
    if isinstance(elem, RawDataElement):
        if elem.length != _UNDEFINED:
            return elem.value_tell + elem.length
        if tag == PIXEL_DATA:
            return _encapsulated_end(name, data, elem.value_tell)
        return _delimited_end(name, data, tag, little_endian)
    # A sequence pydicom has already converted: read its header at the element's start.
    start = elem.file_tell
    if start is None:
        raise ContentError(name, f"malformed DICOM file: cannot locate {_label(tag)}")
    order = "<" if little_endian else ">"
    explicit = data[start + 4 : start + 6] == b"SQ"
    header = 12 if explicit else 8
    if start + header > len(data):
        return start + header
    (length,) = struct.unpack_from(order + "I", data, start + header - 4)
    if length == _UNDEFINED:
        return _delimited_end(name, data, tag, little_endian)
    return start + header + length


def _delimited_end(name: str, data: bytes, tag: BaseTag, little_endian: bool) -> int:
    order = "<" if little_endian else ">"
    delimiter = struct.pack(order + "HHI", _SEQUENCE_DELIMITER >> 16, _SEQUENCE_DELIMITER & 0xFFFF, 0)
    if not data.endswith(delimiter):
        raise ContentError(
            name, f"truncated DICOM file: {_label(tag)} has undefined length and no sequence delimiter"
        )
    return len(data)


def _encapsulated_end(name: str, data: bytes, pos: int) -> int:
    """Walk the items of encapsulated pixel data (always little-endian) to the sequence delimiter."""
    size = len(data)
    while True:
        if pos + 8 > size:
            raise ContentError(
                name, f"truncated DICOM file: encapsulated PixelData item header at byte {pos} is cut off"
            )
        group, element, length = struct.unpack_from("<HHI", data, pos)
        item = (group << 16) | element
        pos += 8
        if item == _SEQUENCE_DELIMITER:
            return pos
        if item != _ITEM or length == _UNDEFINED:
            raise ContentError(
                name, f"malformed DICOM file: ({group:04X},{element:04X}) inside encapsulated PixelData"
            )
        if pos + length > size:
            raise ContentError(
                name,
                f"truncated DICOM file: encapsulated PixelData fragment at byte {pos} needs {length} bytes, "
                f"{size - pos} remain",
            )
        pos += length
