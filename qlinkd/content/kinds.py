"""What a file is: the five content kinds qlink carries, what validation learns about one, and sniffing.

Sniffing looks at the bytes only, never at the file name (a name is what the user typed; the bytes are
what arrives):

- DICOM: a Part 10 file, "DICM" at byte 128 after the preamble; or a bare data set without the preamble
  and file meta information (what older tools and some PACS exports write, PS3.10 does not forbid a PACS
  storing it): it starts with a group 0x0008 tag in either byte order, or with the file meta group 0x0002
  written without its preamble. Its transfer syntax is inferred by pydicom (implicit or explicit VR,
  either byte order) and `dicom.validate_dicom` then holds it to the same rules as a Part 10 file.
- PNG: the 8-byte PNG signature. JPEG: the SOI marker followed by another marker (FF D8 FF).
- FHIR: a JSON object (UTF-8, optional BOM) with a string "resourceType".
- HL7 v2: a message starting with its MSH segment. Text that looks like HL7 segments but does not start
  with MSH, an MLLP-framed message and an FHS/BHS batch each get their own message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from qlinkmed.qcore.errors import UsageError
from qlinkmed.qlinkd.errors import ContentError

UNKNOWN_KIND = "not DICOM, PNG, JPEG, FHIR JSON or HL7 v2"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
DICOM_PREFIX_AT = 128
DICOM_PREFIX = b"DICM"

_JSON_START = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*\{")
_SEGMENT_START = re.compile(rb"(\x0b)?([A-Z][A-Z0-9]{2})\|")
_SEGMENT_ANYWHERE = re.compile(rb"[\r\n]MSH\|")
# A data set without a preamble starts with a group 0x0002 or 0x0008 tag (either byte order), and the
# element number of the first tag is small (0x0000-0x00FF: group length, specific character set,
# image type, SOP class...): four bytes that no text kind starts with.
_BARE_DICOM_HEADS = re.compile(rb"[\x02\x08]\x00.\x00|\x00[\x02\x08]\x00.", re.DOTALL)


class ContentKind(StrEnum):
    """The kinds of content qlink carries."""

    DICOM = "dicom"
    PNG = "png"
    JPEG = "jpeg"
    FHIR = "fhir"
    HL7 = "hl7"


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentInfo:
    """What validation learned about one file. Fields that do not apply to the kind are None."""

    kind: ContentKind
    """What the file is."""
    size: int
    """Length in bytes."""
    sha256: str
    """SHA-256 of the whole file, lowercase hex."""

    part10: bool | None = None
    """DICOM: True for a Part 10 file (preamble, "DICM", file meta information), False for a bare data
    set."""
    study_uid: str | None = None
    """DICOM StudyInstanceUID (0020,000D): every instance sharing it is one study; None when the object
    has none (`studies.group_studies` says how those are grouped)."""
    patient_id: str | None = field(default=None, repr=False)
    """DICOM PatientID (0010,0020), when present: groups objects without a StudyInstanceUID. HL7 v2: PID-3
    (first identifier's ID). FHIR: the Patient's first identifier value (or its id). Patient data: never
    logged (kept out of repr)."""
    patient_name: str | None = field(default=None, repr=False)
    """DICOM PatientName (0010,0010) as written (decoded per SpecificCharacterSet, PN groups and
    components kept: "Müller^Jörg"); HL7 v2 PID-5 and FHIR Patient.name in the same PN form
    (family^given middle). Patient data: never logged."""
    accession_number: str | None = field(default=None, repr=False)
    """DICOM AccessionNumber (0008,0050)."""
    study_date: str | None = None
    """DICOM StudyDate (0008,0020) as written (YYYYMMDD)."""
    study_description: str | None = field(default=None, repr=False)
    """DICOM StudyDescription (0008,1030)."""
    series_uid: str | None = None
    """DICOM SeriesInstanceUID (0020,000E), None when the file has none."""
    sop_instance_uid: str | None = None
    """DICOM SOPInstanceUID (0008,0018)."""
    sop_class_uid: str | None = None
    """DICOM SOPClassUID (0008,0016)."""
    modality: str | None = None
    """DICOM Modality (0008,0060), e.g. "CT"."""
    dicom_department: str | None = field(default=None, repr=False)
    """DICOM InstitutionalDepartmentName (0008,1040), or RequestingService (0032,1033) when the object has
    none: the department the object names as written ("CARDIOLOGY"). The facility's `[departments]` rules
    map it to one of its departments; it is text from the peer, never logged."""
    rows: int | None = None
    """DICOM Rows (0028,0010)."""
    columns: int | None = None
    """DICOM Columns (0028,0011)."""
    bits_allocated: int | None = None
    """DICOM BitsAllocated (0028,0100)."""
    samples_per_pixel: int | None = None
    """DICOM SamplesPerPixel (0028,0002)."""
    number_of_frames: int | None = None
    """DICOM NumberOfFrames (0028,0008); 1 for a single-frame image, None without pixel data."""
    transfer_syntax: str | None = None
    """DICOM TransferSyntaxUID (0002,0010), e.g. "1.2.840.10008.1.2.1"."""
    photometric_interpretation: str | None = None
    """DICOM PhotometricInterpretation (0028,0004), e.g. "MONOCHROME2", "RGB"."""
    planar_configuration: int | None = None
    """DICOM PlanarConfiguration (0028,0006), for colour images."""
    pixel_data_offset: int | None = None
    """Where the native PixelData value starts in the file (None when encapsulated, deflated or absent)."""
    pixel_data_length: int | None = None
    """Length of that value, including an odd-length padding byte (None when not native)."""

    width: int | None = None
    """PNG/JPEG width in pixels."""
    height: int | None = None
    """PNG/JPEG height in pixels."""
    mode: str | None = None
    """PNG/JPEG Pillow mode, e.g. "L", "I;16", "RGB"."""

    resource_type: str | None = None
    """FHIR resourceType."""
    bundle_entries: int | None = None
    """FHIR Bundle: number of entries."""
    fhir_version: str | None = None
    """FHIR release the resource validated against: "R5", or "R4B" when it is valid there only."""

    message_type: str | None = None
    """HL7 v2 MSH-9 as written, e.g. "ORU^R01^ORU_R01"."""
    control_id: str | None = None
    """HL7 v2 MSH-10, the message control ID."""
    hl7_version: str | None = None
    """HL7 v2 MSH-12 (its first component), e.g. "2.5.1"."""
    sender: str | None = None
    """HL7 v2 sending application and facility (MSH-3 and MSH-4, first components), "APP@FACILITY"."""
    receiving_application: str | None = field(default=None, repr=False)
    """HL7 v2 MSH-5 (its first component): the application the message is addressed to ("CARDIO_EHR")."""
    hospital_service: str | None = field(default=None, repr=False)
    """HL7 v2 PV1-10 (its first component), the hospital service ("CAR"), when the message has a PV1."""
    bundle_type: str | None = None
    """FHIR Bundle.type, e.g. "transaction"."""

    def __post_init__(self) -> None:
        if self.size < 0:
            raise UsageError("size must not be negative")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise UsageError("sha256 must be 64 lowercase hex digits")


def sniff(name: str, data: bytes) -> ContentKind:
    """The kind of `data`, judged by its content; ContentError naming the problem if it is none of them."""
    return identify(name, data)[0]


def identify(name: str, data: bytes) -> tuple[ContentKind, dict[str, Any] | None]:
    """`sniff`, also returning the parsed JSON object for FHIR so validation need not parse it again."""
    if not data:
        raise ContentError(name, "empty file")
    if data[DICOM_PREFIX_AT : DICOM_PREFIX_AT + 4] == DICOM_PREFIX or is_bare_dicom(data):
        return ContentKind.DICOM, None
    if data.startswith(PNG_SIGNATURE):
        return ContentKind.PNG, None
    if data.startswith(JPEG_SOI):
        return ContentKind.JPEG, None
    if data.startswith(b"MSH"):
        return ContentKind.HL7, None
    if _JSON_START.match(data):
        return ContentKind.FHIR, _fhir_json(name, data)
    segment = _SEGMENT_START.match(data)
    if segment:
        raise ContentError(name, _hl7_without_msh(segment, data))
    if data.startswith(DICOM_PREFIX):
        raise ContentError(
            name, "'DICM' at byte 0 instead of byte 128: a DICOM file whose 128-byte preamble is missing"
        )
    raise ContentError(name, UNKNOWN_KIND)


def is_bare_dicom(head: bytes) -> bool:
    """Whether `head` (at least its first 4 bytes) starts a DICOM data set written without the Part 10
    preamble: a group 0x0002 or 0x0008 tag, little- or big-endian."""
    return _BARE_DICOM_HEADS.match(head[:4]) is not None


def _fhir_json(name: str, data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ContentError(name, f"FHIR JSON is not valid UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContentError(name, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ContentError(name, "invalid JSON: nested too deeply") from None
    if not isinstance(obj, dict) or "resourceType" not in obj:
        raise ContentError(name, 'JSON object without "resourceType": not a FHIR resource')
    if not isinstance(obj["resourceType"], str):
        raise ContentError(name, 'FHIR "resourceType" must be a string')
    return obj


def _hl7_without_msh(segment: re.Match[bytes], data: bytes) -> str:
    mllp, seg_id = segment.group(1), segment.group(2).decode("ascii")
    if mllp:
        return "HL7 v2 message in MLLP framing (0x0B ... 0x1C 0x0D): send the bare message"
    if seg_id in ("FHS", "BHS"):
        return "HL7 v2 batch (FHS/BHS) files are not accepted: send each message on its own"
    if _SEGMENT_ANYWHERE.search(data):
        return f"HL7 v2 message must begin with its MSH segment, not {seg_id}"
    return "HL7 v2 message has no MSH segment"
