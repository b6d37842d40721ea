"""Every DICOM object a PACS stores is accepted: bare data sets without the Part 10 preamble, objects
without pixel data (structured reports, RT structure sets and plans), segmentations, JPEG-LS near-lossless
files (their pixels are not decoded), objects without a StudyInstanceUID; and dcmtk's dcmdump, an
independent reader, reads each one. What is not DICOM, is cut short or corrupt, or is a DICOMDIR is still
refused, naming the file and the problem.

The census at the end runs `validate` over every file pydicom ships and pins which are refused and why.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSNearLossless,
    SegmentationStorage,
    generate_uid,
)

from qlinkmed.qlinkd.content import ContentInfo, ContentKind, group_studies, validate
from qlinkmed.qlinkd.content.limits import DEFAULT_LIMITS, is_binary_kind, size_limit
from qlinkmed.qlinkd.content.studies import BY_PATIENT_AND_FOLDER, BY_STUDY
from qlinkmed.qlinkd.errors import ContentError
from tests.dicom_factory import make_ct_study

PYDICOM_DATA = Path(get_testdata_file("CT_small.dcm", download=False) or "").parent
DCMDUMP = shutil.which("dcmdump")
needs_dcmdump = pytest.mark.skipif(
    DCMDUMP is None, reason="dcmtk's dcmdump is not installed (apt-get install dcmtk; CI installs it)"
)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's remarks on odd test files


def _bundled(name: str) -> bytes:
    return (PYDICOM_DATA / name).read_bytes()


def _refused(name: str, data: bytes) -> str:
    with pytest.raises(ContentError) as caught:
        validate(name, data)
    assert caught.value.name == name
    return caught.value.problem


def _part10(ds: Dataset, syntax: UID = ExplicitVRLittleEndian) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _bare(ds: Dataset, *, implicit: bool = True, little: bool = True) -> bytes:
    """The data set alone, as old tools write it: no preamble, no file meta information."""
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=implicit, little_endian=little)
    data = buffer.getvalue()
    assert data[128:132] != b"DICM" and data[:2] in (b"\x08\x00", b"\x00\x08")
    return data


def _common(sop_class: str, modality: str, *, study: str | None) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = "QLINKTEST^OBJECT"
    ds.PatientID = "QLT-OBJ"
    if study is not None:
        ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    return ds


def basic_text_sr(study: str | None = "1.2.826.0.1.3680043.8.498.1") -> Dataset:
    """A Basic Text SR: a document, no pixel data."""
    ds = _common(BasicTextSRStorage, "SR", study=study)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "18748-4", "LN", "Imaging report"
    ds.ConceptNameCodeSequence = Sequence([concept])
    finding = Dataset()
    finding.RelationshipType, finding.ValueType, finding.TextValue = "CONTAINS", "TEXT", "No acute findings."
    ds.ContentSequence = Sequence([finding])
    return ds


def segmentation(rows: int = 16, columns: int = 16, frames: int = 2) -> Dataset:
    """A binary SEG: 1 bit per pixel, frames packed end to end."""
    ds = _common(SegmentationStorage, "SEG", study="1.2.826.0.1.3680043.8.498.2")
    ds.SegmentationType = "BINARY"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    mask = np.random.default_rng(3).integers(0, 2, size=rows * columns * frames, dtype=np.uint8)
    ds.PixelData = np.packbits(mask, bitorder="little").tobytes()
    return ds


# Accepted -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "syntax", "modality"),
    [
        ("ExplVR_LitEndNoMeta.dcm", ExplicitVRLittleEndian, "RTPLAN"),
        ("ExplVR_BigEndNoMeta.dcm", ExplicitVRBigEndian, "RTPLAN"),
        ("rtstruct.dcm", ImplicitVRLittleEndian, "RTSTRUCT"),
    ],
)
def test_bundled_data_sets_without_preamble_are_accepted(name: str, syntax: str, modality: str) -> None:
    info = validate(name, _bundled(name))
    assert (info.kind, info.part10, info.transfer_syntax, info.modality) == (
        ContentKind.DICOM,
        False,
        syntax,
        modality,
    )
    assert info.study_uid and info.sop_instance_uid and info.pixel_data_offset is None


@pytest.mark.parametrize("implicit", [True, False])
def test_a_bare_ct_slice_is_accepted_with_its_pixels_located(implicit: bool) -> None:
    read = pydicom.dcmread(io.BytesIO(make_ct_study(1, 16, 16, seed=5)[0]))
    ds = Dataset()
    ds.update(read)
    data = _bare(ds, implicit=implicit)
    info = validate("slice", data)
    assert info.part10 is False and info.study_uid == ds.StudyInstanceUID
    assert info.transfer_syntax == (ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    offset, length = info.pixel_data_offset, info.pixel_data_length
    assert offset is not None and length == 16 * 16 * 2
    assert data[offset : offset + length] == ds.PixelData


def test_a_bare_data_set_is_held_to_the_dicom_size_limit_not_the_ehr_one() -> None:
    head = _bundled("rtstruct.dcm")[:132]
    assert is_binary_kind(head)
    assert size_limit(head, DEFAULT_LIMITS)[0] == DEFAULT_LIMITS.max_file_bytes


def test_every_truncation_of_a_bare_data_set_is_refused() -> None:
    data = _bundled("rtstruct.dcm")
    for cut in range(8, len(data), 97):
        problem = _refused("rtstruct.dcm", data[:cut])
        assert any(word in problem for word in ("truncated", "malformed", "no SOP", "not DICOM")), (
            cut,
            problem,
        )


@pytest.mark.parametrize("bare", [False, True])
def test_a_structured_report_without_pixel_data_is_accepted(bare: bool) -> None:
    ds = basic_text_sr()
    data = _bare(ds) if bare else _part10(ds)
    info = validate("report.sr", data)
    assert (info.modality, info.sop_class_uid, info.part10) == ("SR", BasicTextSRStorage, not bare)
    assert info.rows is None and info.pixel_data_offset is None


@pytest.mark.parametrize("name", ["rtplan.dcm", "rtdose.dcm", "rtstruct.dcm"])
def test_rt_objects_are_accepted(name: str) -> None:
    assert validate(name, _bundled(name)).modality in ("RTPLAN", "RTDOSE", "RTSTRUCT")


def test_a_one_bit_segmentation_is_accepted_and_its_packed_frames_checked() -> None:
    ds = segmentation()
    info = validate("seg.dcm", _part10(ds))
    assert (info.modality, info.bits_allocated, info.number_of_frames) == ("SEG", 1, 2)
    assert info.pixel_data_length == 16 * 16 * 2 // 8
    ds.PixelData = ds.PixelData[:-4]
    assert "truncated DICOM pixel data" in _refused("seg.dcm", _part10(ds))


@pytest.mark.parametrize(
    "name",
    [
        "JPEGLSNearLossless_08.dcm",
        "JPEGLSNearLossless_16.dcm",
        "SC_rgb_jls_lossy_line.dcm",
        "SC_rgb_jls_lossy_sample.dcm",
    ],
)
def test_jpeg_ls_near_lossless_files_without_a_study_are_accepted(name: str) -> None:
    info = validate(name, _bundled(name))
    assert info.transfer_syntax == JPEGLSNearLossless
    assert info.study_uid is None and info.sop_instance_uid


def test_a_cut_jpeg_ls_file_is_still_refused() -> None:
    data = _bundled("SC_rgb_jls_lossy_line.dcm")
    assert "truncated" in _refused("cut.dcm", data[:-20])


# Refused ------------------------------------------------------------------------------------------------


def test_a_dicomdir_is_refused_as_an_index_not_an_object() -> None:
    problem = _refused("DICOMDIR", _bundled("dicomdirtests/DICOMDIR"))
    assert problem == "is a DICOMDIR (a media directory index), not a DICOM object: send the files it indexes"


def test_an_image_whose_pixels_are_referenced_by_url_needs_no_pixel_data() -> None:
    ds = pydicom.dcmread(io.BytesIO(make_ct_study(1, 8, 8, seed=6)[0]))
    del ds.PixelData
    ds.PixelDataProviderURL = "https://pacs.example/jpip/1"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert validate("jpip.dcm", buffer.getvalue()).pixel_data_offset is None


def test_a_data_set_without_sop_uids_is_refused() -> None:
    ds = basic_text_sr()
    del ds.SOPInstanceUID
    assert _refused("x.dcm", _bare(ds)) == (
        "DICOM file has no SOPInstanceUID (0008,0018): not a storable DICOM object"
    )


def test_text_that_starts_like_a_tag_is_not_taken_for_dicom() -> None:
    assert "not DICOM" in _refused("notes.txt", b"\x08\x00hello, this is not DICOM at all")


# Grouping -----------------------------------------------------------------------------------------------


def test_objects_without_a_study_are_grouped_by_patient_and_folder() -> None:
    def info(patient: str | None, study: str | None = None) -> ContentInfo:
        ds = basic_text_sr(study=study)
        if patient is None:
            del ds.PatientID
        else:
            ds.PatientID = patient
        return validate("x", _part10(ds))

    entries = [
        ("SE1/a", info("P1")),
        ("SE1/b", info("P1")),
        ("SE1/c", info("P2")),
        ("SE2/a", info("P1")),
        ("d", info(None)),
        ("SE3/e", info("P1", study="1.2.3.4")),
    ]
    groups = group_studies(entries)
    assert [(g.grouped_by, g.folder, g.names) for g in groups] == [
        (BY_PATIENT_AND_FOLDER, "SE1", ("SE1/a", "SE1/b")),
        (BY_PATIENT_AND_FOLDER, "SE1", ("SE1/c",)),
        (BY_PATIENT_AND_FOLDER, "SE2", ("SE2/a",)),
        (BY_PATIENT_AND_FOLDER, "", ("d",)),
        (BY_STUDY, None, ("SE3/e",)),
    ]
    assert [g.study_uid for g in groups] == [None, None, None, None, "1.2.3.4"]


# An independent reader ----------------------------------------------------------------------------------


def _dcmdump(path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([DCMDUMP or "dcmdump", "-q", *args, str(path)], check=False, capture_output=True)


@needs_dcmdump
def test_dcmdump_reads_every_object_accepted_here(tmp_path: Path) -> None:
    objects = {
        "sr.dcm": _part10(basic_text_sr()),
        "sr_bare": _bare(basic_text_sr()),
        "seg.dcm": _part10(segmentation()),
        **{
            name: _bundled(name)
            for name in (
                "rtstruct.dcm",
                "rtplan.dcm",
                "rtdose.dcm",
                "ExplVR_LitEndNoMeta.dcm",
                "ExplVR_BigEndNoMeta.dcm",
                "JPEGLSNearLossless_08.dcm",
                "SC_rgb_jls_lossy_line.dcm",
            )
        },
    }
    for name, data in objects.items():
        info = validate(name, data)
        path = tmp_path / name
        path.write_bytes(data)
        done = _dcmdump(path, "+P", "0008,0018")
        assert done.returncode == 0, (name, done.stderr)
        assert (info.sop_instance_uid or "").encode() in done.stdout, name


@needs_dcmdump
def test_dcmdump_also_refuses_what_is_refused_here(tmp_path: Path) -> None:
    for name in ("MR_truncated.dcm", "rtplan_truncated.dcm", "SC_rgb_jpeg.dcm"):
        _refused(name, _bundled(name))
        path = tmp_path / name
        path.write_bytes(_bundled(name))
        assert _dcmdump(path).returncode != 0


# The census of pydicom's test files ---------------------------------------------------------------------

REFUSED_BUNDLED = {
    "MR_truncated.dcm": "truncated DICOM file",
    "rtplan_truncated.dcm": "truncated DICOM file",
    "badVR.dcm": "NumberOfFrames is not an integer",
    "meta_missing_tsyntax.dcm": "no TransferSyntaxUID",
    # Implicit VR under an explicit transfer syntax: pydicom reads it with a warning, dcmtk cannot.
    "SC_rgb_jpeg.dcm": "the data set is encoded in implicit VR, not as its transfer syntax",
    # Fragments pydicom's own tests parse, not storable objects:
    "UN_sequence.dcm": "no SOPClassUID",
    "empty_charset_LEI.dcm": "no SOPClassUID",
    "nested_priv_SQ.dcm": "no SOPClassUID",
    "no_meta_group_length.dcm": "no SOPClassUID",
    "priv_SQ.dcm": "no SOPClassUID",
    "no_meta.dcm": "not DICOM",  # its first tag is cut in half: no reader can place it
}
"""The .dcm files and DICOMDIRs of pydicom's test data that are refused, and why. Everything else of that
kind is accepted; the CT images of dicomdirtests/ have had their pixel data removed (refused as image
instances without PixelData, see `test_the_census_of_pydicom_test_files`)."""


def test_the_census_of_pydicom_test_files() -> None:
    accepted, refused = [], {}
    for path in sorted(p for p in PYDICOM_DATA.rglob("*") if p.is_file()):
        try:
            validate(path.name, path.read_bytes())
            accepted.append(path)
        except ContentError as exc:
            refused[path.relative_to(PYDICOM_DATA).as_posix()] = exc.problem
    for name, reason in REFUSED_BUNDLED.items():
        assert reason in refused.pop(name), name
    dicomdirs = {n for n, problem in refused.items() if problem.startswith("is a DICOMDIR")}
    stripped = {n for n, problem in refused.items() if problem.endswith("has no PixelData (truncated?)")}
    not_dicom = {n for n, problem in refused.items() if "not DICOM" in problem or "FHIR" in problem}
    assert len(dicomdirs) == 8 and all("DICOMDIR" in n for n in dicomdirs)
    assert stripped and all(n.startswith("dicomdirtests/") for n in stripped)
    assert all(not n.endswith(".dcm") for n in not_dicom), not_dicom
    assert set(refused) == dicomdirs | stripped | not_dicom
    assert len(accepted) == 98


@needs_dcmdump
def test_dcmdump_reads_every_pydicom_test_file_accepted_here() -> None:
    unread = []
    for path in sorted(p for p in PYDICOM_DATA.rglob("*") if p.is_file()):
        try:
            validate(path.name, path.read_bytes())
        except ContentError:
            continue
        if _dcmdump(path).returncode != 0:
            unread.append(path.name)
    assert unread == []
