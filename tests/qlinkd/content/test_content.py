"""Content sniffing and validation (qlinkd.content): every kind validates, and truncated, incomplete or
mistyped files are refused with ContentError naming the file and the precise problem. Also study grouping
and path expansion.

DICOM samples are pydicom's bundled test files (offline) and synthetic instances from `dicom_factory`;
FHIR and HL7 samples are in tests/data.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from qlinkmed.qlinkd.content import (
    UNKNOWN_KIND,
    ContentInfo,
    ContentKind,
    collect_paths,
    group_studies,
    sniff,
    validate,
)
from qlinkmed.qlinkd.content.validate import WARM_UP_MESSAGES
from qlinkmed.qlinkd.errors import ContentError
from tests.dicom_factory import make_ct_study, make_image_dicom
from tests.paths import DATA


def pydicom_file(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom test file {name} is not bundled"
    return Path(path).read_bytes()


def image_bytes(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def refused(name: str, data: bytes) -> str:
    """The problem ContentError reports for `data`, after checking it names the file."""
    with pytest.raises(ContentError) as caught:
        validate(name, data)
    assert caught.value.name == name
    return caught.value.problem


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    y, x = np.mgrid[0:48, 0:64]
    return np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def hl7_message() -> bytes:
    return (DATA / "oru_r01.hl7").read_bytes()


# Sniffing -----------------------------------------------------------------------------------------------


def test_sniff_every_kind_by_content_not_name(rgb: np.ndarray, hl7_message: bytes) -> None:
    assert sniff("scan.png", pydicom_file("CT_small.dcm")) is ContentKind.DICOM
    assert sniff("scan.dcm", image_bytes(rgb, "PNG")) is ContentKind.PNG
    assert sniff("photo.png", image_bytes(rgb, "JPEG")) is ContentKind.JPEG
    assert sniff("x.hl7", (DATA / "fhir_bundle.json").read_bytes()) is ContentKind.FHIR
    assert sniff("x.json", hl7_message) is ContentKind.HL7


def test_sniff_unknown_and_empty() -> None:
    with pytest.raises(ContentError) as caught:
        sniff("notes.txt", b"Dear colleague, please find attached...")
    assert (caught.value.name, caught.value.problem) == ("notes.txt", UNKNOWN_KIND)
    assert str(caught.value) == f"notes.txt: {UNKNOWN_KIND}"
    with pytest.raises(ContentError, match="empty file"):
        sniff("empty.dcm", b"")
    with pytest.raises(ContentError, match=UNKNOWN_KIND):
        sniff("archive.zip", b"PK\x03\x04" + bytes(200))


def test_dicom_without_part10_preamble_is_sniffed_as_dicom() -> None:
    assert sniff("bare.dcm", pydicom_file("ExplVR_LitEndNoMeta.dcm")) is ContentKind.DICOM
    assert sniff("bare_be.dcm", pydicom_file("ExplVR_BigEndNoMeta.dcm")) is ContentKind.DICOM
    assert "preamble is missing" in refused("dicm.dcm", b"DICM" + pydicom_file("CT_small.dcm")[132:])


def test_json_errors_name_line_and_column() -> None:
    problem = refused("obs.json", b'{\n  "resourceType": "Observation",\n  "status": ,\n}')
    assert problem.startswith("invalid JSON at line 3 column 13:")
    assert refused("x.json", b'{"id": "1"}') == 'JSON object without "resourceType": not a FHIR resource'
    assert "not valid UTF-8" in refused("x.json", b'{"resourceType": "Patient", "id": "\xff"}')


# DICOM --------------------------------------------------------------------------------------------------


def test_dicom_fields_from_bundled_ct() -> None:
    data = pydicom_file("CT_small.dcm")
    info = validate("CT_small.dcm", data)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert info.kind is ContentKind.DICOM
    assert info.size == len(data)
    assert info.study_uid == ds.StudyInstanceUID and info.series_uid == ds.SeriesInstanceUID
    assert info.sop_instance_uid == ds.SOPInstanceUID and info.sop_class_uid == ds.SOPClassUID
    assert (info.modality, info.rows, info.columns) == ("CT", 128, 128)
    assert (info.bits_allocated, info.samples_per_pixel, info.number_of_frames) == (16, 1, 1)
    assert info.transfer_syntax == ExplicitVRLittleEndian
    assert info.pixel_data_length == 128 * 128 * 2
    offset = info.pixel_data_offset
    assert offset is not None
    assert data[offset : offset + info.pixel_data_length] == ds.PixelData


@pytest.mark.parametrize(
    ("name", "modality", "shape"),
    [("MR_small.dcm", "MR", (64, 64, 1)), ("examples_rgb_color.dcm", "US", (240, 320, 3))],
)
def test_dicom_bundled_mr_and_rgb(name: str, modality: str, shape: tuple[int, int, int]) -> None:
    info = validate(name, pydicom_file(name))
    assert (info.modality, info.rows, info.columns, info.samples_per_pixel) == (modality, *shape)


def test_dicom_compressed_validates_without_native_offsets() -> None:
    info = validate("jpeg.dcm", pydicom_file("SC_rgb_jpeg_dcmtk.dcm"))
    assert info.transfer_syntax == JPEGBaseline8Bit
    assert info.pixel_data_offset is None and info.pixel_data_length is None
    assert (info.rows, info.columns, info.samples_per_pixel) == (100, 100, 3)


def test_dicom_synthetic_multiframe() -> None:
    info = validate("mf.dcm", make_image_dicom(20, 30, frames=5, bits=8, samples=3))
    assert (info.number_of_frames, info.rows, info.columns, info.samples_per_pixel) == (5, 20, 30, 3)
    assert info.pixel_data_length == 5 * 20 * 30 * 3


def test_dicom_truncated_half_file() -> None:
    data = pydicom_file("CT_small.dcm")
    problem = refused("CT_small.dcm", data[: len(data) // 2])
    assert problem.startswith("truncated DICOM file: PixelData (7FE0,0010) ends at byte")


def test_dicom_truncated_pixel_data() -> None:
    data = make_ct_study(1, 64, 64)[0]
    problem = refused("slice.dcm", data[:-5])
    assert problem == (
        f"truncated DICOM file: PixelData (7FE0,0010) ends at byte {len(data)}, "
        f"the file has {len(data) - 5} bytes"
    )
    assert refused("MR_truncated.dcm", pydicom_file("MR_truncated.dcm")).startswith("truncated DICOM file")


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the cut-off values it reads
def test_dicom_every_truncation_is_refused() -> None:
    data = make_ct_study(1, 8, 8)[0]
    assert validate("tiny.dcm", data).rows == 8
    for cut in range(len(data)):
        with pytest.raises(ContentError):
            validate("tiny.dcm", data[:cut])


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")
def test_dicom_truncated_encapsulated_pixel_data() -> None:
    data = pydicom_file("JPEG-lossy.dcm")
    assert validate("lossy.dcm", data).pixel_data_offset is None
    assert "truncated" in refused("lossy.dcm", data[:-5])
    assert "truncated" in refused("lossy.dcm", data[:-300])


def test_dicom_trailing_garbage_is_refused() -> None:
    data = make_ct_study(1, 8, 8)[0]
    assert "3 byte(s) after the last readable element" in refused("x.dcm", data + b"abc")


def test_dicom_pixel_data_shorter_than_its_geometry() -> None:
    ds = pydicom.dcmread(io.BytesIO(make_ct_study(1, 16, 16)[0]))
    ds.PixelData = ds.PixelData[:-32]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    problem = refused("short.dcm", buffer.getvalue())
    assert problem.startswith("truncated DICOM pixel data: PixelData holds 480 bytes")
    assert problem.endswith("needs 512")


@pytest.mark.parametrize(
    ("keyword", "tag"),
    [("SOPInstanceUID", "(0008,0018)"), ("SOPClassUID", "(0008,0016)")],
)
def test_dicom_missing_required_uid(keyword: str, tag: str) -> None:
    data = make_image_dicom(4, 4, omit=[keyword])
    assert refused("no_uid.dcm", data) == f"DICOM file has no {keyword} {tag}: not a storable DICOM object"


def test_dicom_image_without_pixel_data() -> None:
    ds = pydicom.dcmread(io.BytesIO(make_ct_study(1, 4, 4)[0]))
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert refused("nopix.dcm", buffer.getvalue()) == (
        "DICOM CT Image Storage instance has no PixelData (truncated?)"
    )


def test_dicom_missing_transfer_syntax() -> None:
    problem = refused("meta.dcm", pydicom_file("meta_missing_tsyntax.dcm"))
    assert problem == "DICOM file meta information has no TransferSyntaxUID (0002,0010)"


# PNG and JPEG -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "mode"),
    [
        (np.arange(48 * 64, dtype=np.uint8).reshape(48, 64), "L"),
        (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 13, "I;16"),
    ],
)
def test_png_gray_validates(array: np.ndarray, mode: str) -> None:
    info = validate("gray.png", image_bytes(array, "PNG"))
    assert (info.kind, info.width, info.height, info.mode) == (ContentKind.PNG, 64, 48, mode)


def test_png_and_jpeg_rgb_validate(rgb: np.ndarray) -> None:
    png = validate("rgb.png", image_bytes(rgb, "PNG"))
    jpeg = validate("rgb.jpg", image_bytes(rgb, "JPEG"))
    assert (png.kind, png.width, png.height, png.mode) == (ContentKind.PNG, 64, 48, "RGB")
    assert (jpeg.kind, jpeg.width, jpeg.height, jpeg.mode) == (ContentKind.JPEG, 64, 48, "RGB")


def test_png_truncated(rgb: np.ndarray) -> None:
    data = image_bytes(rgb, "PNG")
    for cut in (1, 12, len(data) // 2, len(data) - 20):
        assert refused("cut.png", data[:-cut]).startswith("PNG truncated")


def test_png_every_truncation_is_refused() -> None:
    data = image_bytes(np.arange(64, dtype=np.uint8).reshape(8, 8), "PNG")
    for cut in range(len(data)):
        with pytest.raises(ContentError):
            validate("tiny.png", data[:cut])


def test_png_corrupt_chunk(rgb: np.ndarray) -> None:
    data = bytearray(image_bytes(rgb, "PNG"))
    data[60] ^= 0x01  # inside the IDAT chunk: its CRC no longer matches
    assert refused("bad.png", bytes(data)).startswith("corrupt PNG")


def test_jpeg_truncated(rgb: np.ndarray) -> None:
    data = image_bytes(rgb, "JPEG")
    for cut in (1, 2, len(data) // 2):
        assert refused("cut.jpg", data[:-cut]).startswith("JPEG truncated")


def test_not_an_image_behind_an_image_signature() -> None:
    assert "PNG" in refused("fake.png", b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    assert "JPEG" in refused("fake.jpg", b"\xff\xd8\xff" + bytes(64))


def test_load_truncated_images_must_be_off(monkeypatch: pytest.MonkeyPatch, rgb: np.ndarray) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        validate("rgb.png", image_bytes(rgb, "PNG"))


# FHIR ---------------------------------------------------------------------------------------------------


def test_fhir_bundle_validates() -> None:
    data = (DATA / "fhir_bundle.json").read_bytes()
    info = validate("bundle.json", data)
    assert (info.kind, info.resource_type, info.bundle_entries, info.fhir_version) == (
        ContentKind.FHIR,
        "Bundle",
        2,
        "R5",
    )


def test_warm_up_loads_every_common_fhir_model_and_validates_its_own_samples() -> None:
    # A fresh interpreter: in this one, earlier tests may have loaded the models already.
    probe = (
        "import sys\n"
        "from qlinkmed.qlinkd.content.ehr import COMMON_RESOURCE_TYPES\n"
        "from qlinkmed.qlinkd.content.validate import warm_up\n"
        "before = {t for t in COMMON_RESOURCE_TYPES if f'fhir.resources.{t.lower()}' in sys.modules}\n"
        "warm_up()\n"
        "after = {t for t in COMMON_RESOURCE_TYPES if f'fhir.resources.{t.lower()}' in sys.modules}\n"
        "print(len(COMMON_RESOURCE_TYPES), len(before), len(after))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    total, before, after = map(int, out.split())
    assert total >= 20 and before < total and after == total
    infos = [validate(name, data) for name, data in WARM_UP_MESSAGES]
    assert [(i.kind, i.fhir_version or i.hl7_version) for i in infos] == [
        (ContentKind.FHIR, "R5"),
        (ContentKind.HL7, "2.5"),
    ]


def test_fhir_single_resource_validates() -> None:
    data = b'{"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}'
    info = validate("patient.json", data)
    assert (info.resource_type, info.bundle_entries) == ("Patient", None)


def test_fhir_r4b_only_resource_validates_as_r4b() -> None:
    data = (
        b'{"resourceType": "MedicationRequest", "status": "active", "intent": "order",'
        b' "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": {"text": "aspirin"}}'
    )
    assert validate("rx.json", data).fhir_version == "R4B"


def test_fhir_wrong_type_in_bundle_entry() -> None:
    problem = refused("bad.json", (DATA / "fhir_bundle_invalid.json").read_bytes())
    assert problem.startswith("FHIR Bundle.entry[1].resource.status: Input should be a valid string")


def test_fhir_bad_field_in_single_resource() -> None:
    problem = refused("patient.json", b'{"resourceType": "Patient", "birthDate": "1970-13-45"}')
    assert problem.startswith("FHIR Patient.birthDate: Date value string does not match spec regex")


def test_fhir_unknown_or_missing_resource_type_in_entry() -> None:
    unknown = (
        b'{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "X"}}]}'
    )
    assert refused("b.json", unknown) == "FHIR Bundle.entry[0].resource: unknown resourceType"
    missing = b'{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"id": "x"}}]}'
    assert refused("b.json", missing) == "FHIR Bundle.entry[0].resource: no resourceType"
    assert refused("x.json", b'{"resourceType": "../../os"}') == "FHIR ../../os: unknown resourceType"


# HL7 v2 -------------------------------------------------------------------------------------------------


def test_hl7_oru_validates(hl7_message: bytes) -> None:
    info = validate("oru.hl7", hl7_message)
    assert (info.kind, info.message_type, info.control_id, info.hl7_version) == (
        ContentKind.HL7,
        "ORU^R01^ORU_R01",
        "QLT00001",
        "2.5.1",
    )


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_hl7_other_line_ends_validate_and_bytes_are_unchanged(hl7_message: bytes, line_end: bytes) -> None:
    variant = hl7_message.replace(b"\r", line_end)
    info = validate("oru.hl7", variant)
    assert info.control_id == "QLT00001"
    assert info.sha256 == hashlib.sha256(variant).hexdigest() != hashlib.sha256(hl7_message).hexdigest()


def test_hl7_without_msh(hl7_message: bytes) -> None:
    without = hl7_message.split(b"\r", 1)[1]
    assert refused("nomsh.hl7", without) == "HL7 v2 message has no MSH segment"
    pid, rest = without.split(b"\r", 1)
    misplaced = pid + b"\r" + hl7_message.split(b"\r", 1)[0] + b"\r" + rest
    assert refused("late.hl7", misplaced) == "HL7 v2 message must begin with its MSH segment, not PID"


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (b"ORU^R01^ORU_R01", b"", "HL7 v2 MSH-9: message type is empty"),
        (b"QLT00001", b"", "HL7 v2 MSH-10: message control ID is empty"),
        (b"|2.5.1|", b"||", "HL7 v2 MSH-12: version ID is missing or not a 2.x version"),
        (b"^~\\&", b"^~", "HL7 v2 MSH-2 (encoding characters) must be four distinct separators"),
        (b"OBR|", b"ob|", "HL7 v2 segment 3: does not start with a segment ID"),
        (b"Alice", b"Al\xe9ce", "HL7 v2 message declares UNICODE UTF-8 in MSH-18 but is not valid utf-8"),
        (b"UNICODE UTF-8", b"ISO IR87", "HL7 v2 MSH-18 character set 'ISO IR87' is not supported"),
    ],
)
def test_hl7_bad_header_fields(hl7_message: bytes, old: bytes, new: bytes, problem: str) -> None:
    assert old in hl7_message
    assert refused("bad.hl7", hl7_message.replace(old, new, 1)).startswith(problem)


def test_hl7_latin1_declared_or_undeclared(hl7_message: bytes) -> None:
    latin1 = hl7_message.replace(b"UNICODE UTF-8", b"8859/1").replace(b"Alice", b"Al\xe9ce")
    assert validate("latin1.hl7", latin1).control_id == "QLT00001"
    undeclared = hl7_message.replace(b"UNICODE UTF-8", b"").replace(b"Alice", b"Al\xe9ce")
    assert validate("plain.hl7", undeclared).control_id == "QLT00001"


def test_hl7_msh_alone_and_framing(hl7_message: bytes) -> None:
    msh = hl7_message.split(b"\r", 1)[0] + b"\r"
    assert refused("msh.hl7", msh) == "HL7 v2 message has no segment after MSH"
    assert "MLLP framing" in refused("mllp.hl7", b"\x0b" + hl7_message + b"\x1c\r")


# Studies ------------------------------------------------------------------------------------------------


def named_infos(files: list[bytes], prefix: str) -> list[tuple[str, ContentInfo]]:
    return [(f"{prefix}{i}.dcm", validate(f"{prefix}{i}.dcm", data)) for i, data in enumerate(files)]


def test_group_studies_by_study_uid(rgb: np.ndarray) -> None:
    a = named_infos(make_ct_study(3, 8, 8, seed=1), "a")
    b = named_infos(make_ct_study(2, 8, 8, seed=2), "b")
    png = ("photo.png", validate("photo.png", image_bytes(rgb, "PNG")))
    groups = group_studies([a[0], b[0], png, a[1], b[1], a[2]])
    assert [g.study_uid for g in groups] == [a[0][1].study_uid, b[0][1].study_uid]
    assert groups[0].names == ("a0.dcm", "a1.dcm", "a2.dcm")
    assert groups[1].names == ("b0.dcm", "b1.dcm")
    assert (groups[0].instances, groups[0].modalities, len(groups[0].series_uids)) == (3, ("CT",), 1)
    assert groups[0].size == sum(info.size for _, info in a)


def test_group_studies_joins_series_of_one_study() -> None:
    study = "1.2.826.0.1.3680043.8.498.1"
    a = named_infos(make_ct_study(2, 8, 8, study_uid=study, seed=1), "a")
    b = named_infos(make_ct_study(2, 8, 8, study_uid=study, seed=2), "b")
    (group,) = group_studies(a + b)
    assert group.study_uid == study and group.instances == 4 and len(group.series_uids) == 2


def test_group_studies_refuses_duplicate_sop_instance() -> None:
    files = make_ct_study(2, 8, 8, seed=3)
    infos = [*named_infos(files, "s"), ("copy.dcm", validate("copy.dcm", files[1]))]
    with pytest.raises(ContentError) as caught:
        group_studies(infos)
    assert caught.value.name == "copy.dcm"
    assert caught.value.problem == f"duplicate SOPInstanceUID {infos[1][1].sop_instance_uid}: also in s1.dcm"


def test_collect_paths_expands_directories(tmp_path: Path) -> None:
    root = tmp_path / "study"
    for rel in ("b/2.dcm", "b/10.dcm", "a.dcm", ".hidden", ".git/x.dcm", "sub/.cache/y.dcm", "DICOMDIR"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    os.mkfifo(root / "pipe")
    loose = tmp_path / ".loose.hl7"
    loose.write_bytes(b"x")
    found = collect_paths([root, loose, root / "a.dcm"])
    assert found == [root / "a.dcm", root / "b/10.dcm", root / "b/2.dcm", loose]


def test_collect_paths_refuses_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.dcm"
    with pytest.raises(ContentError) as caught:
        collect_paths([tmp_path, missing])
    assert (caught.value.name, caught.value.problem) == (str(missing), "no such file or directory")
