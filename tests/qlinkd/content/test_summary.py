"""What the inbox listing learns of a transfer on arrival (`content.summary`), from the validators' own
parse: DICOM patient, accession, modality, study date and description (with and without those tags,
non-ASCII names, PN groups and components), HL7 v2 type, patient and sender (ORU, ADT), FHIR type and
patient (Bundle, Patient, a subject reference); the department the facility's rules name from DICOM
(0008,1040)/(0032,1033) and modality, HL7 MSH-5, PV1-10 and type, and the peer; and none of it in a repr
(patient data is never logged)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

from qlinkmed.qlinkd.access.departments import DepartmentRule, DepartmentRules
from qlinkmed.qlinkd.content.kinds import ContentInfo
from qlinkmed.qlinkd.content.summary import format_person_name, iso_date, summarize
from qlinkmed.qlinkd.content.validate import validate
from tests.dicom_factory import PATIENT_ID, make_ct_study
from tests.paths import REPO

DATA = REPO / "tests" / "data"


def _resave(data: bytes, **attributes: object) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _bare_report() -> bytes:
    """A structured report with none of the descriptive tags: no name, accession, date or description."""
    ds = Dataset()
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_ct_study_with_a_latin1_name_is_summarised_from_its_headers() -> None:
    slices = make_ct_study(3, 8, 8, seed=5, patient_name="Müller^Jörg")
    slices[1] = _resave(slices[1], StudyDescription="CT THORAX  ABDOMEN")
    infos = [validate(f"IM{i}", s) for i, s in enumerate(slices)]
    assert infos[0].patient_name == "Müller^Jörg"  # decoded per SpecificCharacterSet ISO_IR 100
    summary = summarize(infos)
    assert summary.patient_name == "Müller, Jörg"
    assert summary.patient_id == PATIENT_ID
    assert summary.accession == "QLT-ACC-1"
    assert summary.modalities == "CT"
    assert summary.study_date == "2024-06-04"
    # The first instance has no description: the first that has one gives it.
    assert summary.study_description == "CT THORAX  ABDOMEN"
    assert summary.instances == 3
    assert summary.message_type is None and summary.sender is None


def test_a_utf8_name_with_ideographic_and_phonetic_groups_reads_as_its_alphabetic_group() -> None:
    data = make_ct_study(1, 8, 8, seed=6)[0]
    data = _resave(
        data, SpecificCharacterSet="ISO_IR 192", PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう"
    )
    info = validate("IM1", data)
    assert info.patient_name == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert summarize([info]).patient_name == "Yamada, Tarou"


def test_a_study_of_several_modalities_lists_each_once() -> None:
    slices = make_ct_study(2, 8, 8, seed=7)
    infos = [validate("ct", slices[0]), validate("sr", _bare_report()), validate("ct2", slices[1])]
    summary = summarize(infos)
    assert summary.modalities == "CT\\SR"
    assert summary.instances == 3


def test_an_object_without_the_descriptive_tags_has_an_empty_summary_but_its_count() -> None:
    summary = summarize([validate("report.dcm", _bare_report())])
    assert (summary.patient_name, summary.patient_id, summary.accession) == (None, None, None)
    assert (summary.study_date, summary.study_description) == (None, None)
    assert summary.modalities == "SR" and summary.instances == 1


@pytest.mark.parametrize(
    ("pn", "shown"),
    [
        ("Müller^Jörg", "Müller, Jörg"),
        ("Doe^John^Quincy^Dr^Jr", "Doe, Dr John Quincy, Jr"),
        ("Doe", "Doe"),
        ("^John", "John"),
        ("=山田^太郎", "山田, 太郎"),
        ("Smith^Anna==", "Smith, Anna"),
        ("", None),
        ("^^^^", None),
    ],
)
def test_person_names_are_formatted_from_their_components(pn: str, shown: str | None) -> None:
    assert format_person_name(pn) == shown


def test_dates_become_iso_and_anything_else_stays_as_written() -> None:
    assert iso_date("20240604") == "2024-06-04"
    assert iso_date("2024.06.04") == "2024.06.04"
    assert iso_date(None) is None


def test_text_from_the_peer_is_clipped_and_control_characters_dropped() -> None:
    data = _resave(make_ct_study(1, 8, 8, seed=8)[0], StudyDescription="X" * 64)
    info = validate("IM1", data)
    long = ContentInfo(
        kind=info.kind,
        size=info.size,
        sha256=info.sha256,
        patient_name="A" * 300,
        study_description="line\none",
    )
    summary = summarize([long])
    assert summary.patient_name is not None and len(summary.patient_name) == 128
    assert summary.patient_name.endswith("…")
    assert summary.study_description == "line one"


def test_an_hl7_oru_names_its_type_patient_and_sending_application_and_facility() -> None:
    info = validate("oru.hl7", (DATA / "oru_r01.hl7").read_bytes())
    summary = summarize([info])
    assert summary.message_type == "ORU^R01^ORU_R01"
    assert summary.patient_id == "QLT-0042"
    assert summary.patient_name == "Qlinktest, Alice"
    assert summary.sender == "QLINKLAB@GENERAL HOSPITAL"
    assert summary.instances is None and summary.accession is None


ADT_A01 = (
    "MSH|^~\\&|ADT1|ST MARY^1.2.3^ISO|RAD|HOSP_B|20240604101500||ADT^A01^ADT_A01|MSG0001|P|2.5.1\r"
    "EVN|A01|20240604101500\r"
    "PID|1||4711^^^STM^MR~99-1^^^SSN||Müller&van^Jörg^Peter||19600101|M\r"
    "PV1|1|I\r"
).encode()


def test_an_hl7_adt_takes_the_first_identifier_and_name_and_the_first_components() -> None:
    summary = summarize([validate("adt.hl7", ADT_A01)])
    assert summary.message_type == "ADT^A01^ADT_A01"
    assert summary.patient_id == "4711"
    assert summary.patient_name == "Müller, Jörg Peter"
    assert summary.sender == "ADT1@ST MARY"


def test_an_hl7_message_without_pid_has_no_patient() -> None:
    ack = b"MSH|^~\\&|ENGINE||LAB||20240604||ACK|A1|P|2.5.1\rMSA|AA|MSG0001\r"
    summary = summarize([validate("ack.hl7", ack)])
    assert (summary.patient_id, summary.patient_name) == (None, None)
    assert summary.sender == "ENGINE" and summary.message_type == "ACK"


def test_a_fhir_bundle_names_its_type_and_its_patient_entry() -> None:
    summary = summarize([validate("bundle.json", (DATA / "fhir_bundle.json").read_bytes())])
    assert summary.message_type == "Bundle (collection)"
    assert summary.patient_id == "QLT-0042"
    assert summary.patient_name == "Qlinktest, Alice"
    assert summary.sender is None  # the peer facility is a FHIR message's sender


def test_a_fhir_patient_without_identifier_is_named_by_its_id() -> None:
    patient = {"resourceType": "Patient", "id": "p-17", "name": [{"family": "Müller", "given": ["Jörg"]}]}
    summary = summarize([validate("patient.json", json.dumps(patient).encode())])
    assert summary.message_type == "Patient"
    assert (summary.patient_id, summary.patient_name) == ("p-17", "Müller, Jörg")


def test_a_fhir_resource_about_a_patient_names_the_referenced_id() -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "pulse"},
        "subject": {"reference": "Patient/abc-1"},
    }
    summary = summarize([validate("obs.json", json.dumps(observation).encode())])
    assert (summary.message_type, summary.patient_id, summary.patient_name) == ("Observation", "abc-1", None)


def test_patient_data_stays_out_of_repr(tmp_path: Path) -> None:
    info = validate("IM1", make_ct_study(1, 8, 8, seed=9, patient_name="Müller^Jörg")[0])
    summary = summarize([info])
    for text in (repr(info), repr(summary)):
        assert "Müller" not in text and PATIENT_ID not in text and "QLT-ACC-1" not in text


# Departments ----------------------------------------------------------------------------------------

CARDIOLOGY = DepartmentRules(
    rules=(
        DepartmentRule(department="Cardiology", dicom_departments=("CARDIOLOGY",)),
        DepartmentRule(department="Cardiology", modalities=("US",)),
        DepartmentRule(department="Laboratory", peers=("hospital-a",), hl7_receiving_applications=("lis",)),
        DepartmentRule(department="Wards", hl7_services=("MED",), message_types=("ADT^A01",)),
    ),
)


def test_a_dicom_object_names_its_institutional_department() -> None:
    data = _resave(make_ct_study(1, 8, 8, seed=10)[0], InstitutionalDepartmentName="Cardiology ")
    info = validate("IM1", data)
    assert info.dicom_department == "Cardiology"
    summary = summarize([info], peer="hospital-a", departments=CARDIOLOGY)
    assert summary.department == "Cardiology"  # the configured name, matched in any case
    # Without [departments] the summary names none, whatever the object says.
    assert summarize([info]).department is None


def test_without_0008_1040_the_requesting_service_names_the_department() -> None:
    data = _resave(make_ct_study(1, 8, 8, seed=11)[0], RequestingService="CARDIOLOGY")
    info = validate("IM1", data)
    assert info.dicom_department == "CARDIOLOGY"
    assert summarize([info], peer="hospital-a", departments=CARDIOLOGY).department == "Cardiology"
    both = _resave(data, InstitutionalDepartmentName="ONCOLOGY")
    assert validate("IM1", both).dicom_department == "ONCOLOGY"  # (0008,1040) comes first


def test_a_study_is_for_a_department_when_any_instance_names_it_and_by_modality() -> None:
    slices = make_ct_study(2, 8, 8, seed=12)
    infos = [
        validate("a", slices[0]),
        validate("b", _resave(slices[1], InstitutionalDepartmentName="CARDIOLOGY")),
    ]
    assert summarize(infos, peer="p", departments=CARDIOLOGY).department == "Cardiology"
    echo = validate("us", _resave(slices[0], Modality="US"))
    assert summarize([echo], peer="p", departments=CARDIOLOGY).department == "Cardiology"
    # A CT naming no department matches nothing, and there is no default.
    assert summarize([validate("a", slices[0])], peer="p", departments=CARDIOLOGY).department is None


def test_a_department_name_the_peer_writes_long_is_clipped_before_it_is_compared() -> None:
    info = validate("IM1", _resave(make_ct_study(1, 8, 8, seed=13)[0], InstitutionalDepartmentName="C" * 64))
    long = ContentInfo(kind=info.kind, size=info.size, sha256=info.sha256, dicom_department="X" * 100_000)
    rules = DepartmentRules(rules=(DepartmentRule(department="X", dicom_departments=("X" * 64,)),))
    assert summarize([long], peer="p", departments=rules).department is None


ORU_TO_LAB = (
    b"MSH|^~\\&|LABSYS|ST MARY|Lis^1.2.3^ISO|HOSP_B|20240604101500||ORU^R01^ORU_R01|MSG0002|P|2.5.1\r"
    b"PID|1||4711^^^STM^MR||Doe^Jane\r"
    b"OBR|1|ORD-1|FIL-1|2345-7^Glucose^LN\r"
    b"OBX|1|NM|2345-7^Glucose^LN||95|mg/dL|70-99|N|||F\r"
)
ADT_ON_A_WARD = (
    b"MSH|^~\\&|ADT1|ST MARY|RAD|HOSP_B|20240604101500||ADT^A01^ADT_A01|MSG0001|P|2.5.1\r"
    b"EVN|A01|20240604101500\r"
    b"PID|1||4711^^^STM^MR||Doe^Jane\r"
    b"PV1|1|I|W3^12^1|||||||med^Medicine~SUR\r"
)


def test_an_hl7_message_names_its_receiving_application_and_hospital_service() -> None:
    lab = validate("oru.hl7", ORU_TO_LAB)
    assert (lab.receiving_application, lab.hospital_service) == ("Lis", None)  # no PV1
    assert summarize([lab], peer="hospital-a", departments=CARDIOLOGY).department == "Laboratory"
    # The laboratory rule holds only for what hospital-a sends.
    assert summarize([lab], peer="hospital-c", departments=CARDIOLOGY).department is None
    adt = validate("adt.hl7", ADT_ON_A_WARD)
    assert (adt.receiving_application, adt.hospital_service) == ("RAD", "med")  # PV1-10, first component
    assert summarize([adt], peer="hospital-a", departments=CARDIOLOGY).department == "Wards"
    assert validate("adt.hl7", ADT_A01).hospital_service is None  # PV1 without a 10th field


def test_a_fhir_resource_is_named_by_peer_and_type_rules_and_the_default() -> None:
    rules = DepartmentRules(
        rules=(DepartmentRule(department="Oncology", peers=("hospital-a",), message_types=("Bundle",)),),
        default="Records",
    )
    bundle = validate("bundle.json", (DATA / "fhir_bundle.json").read_bytes())
    assert summarize([bundle], peer="hospital-a", departments=rules).department == "Oncology"
    assert summarize([bundle], peer="hospital-c", departments=rules).department == "Records"


def test_department_texts_stay_out_of_repr() -> None:
    info = validate(
        "IM1", _resave(make_ct_study(1, 8, 8, seed=14)[0], InstitutionalDepartmentName="CARDIOLOGY")
    )
    adt = validate("adt.hl7", ADT_ON_A_WARD)
    assert "CARDIOLOGY" not in repr(info) and "RAD" not in repr(adt) and "med" not in repr(adt).split("(")[1]
