"""What the inbox listing says about one delivered transfer, distilled once from the validators' findings
when it arrives (the listing then reads the records only, never a blob): for a study the patient, its
accession number, modalities, study date and description and how many instances it holds; for an EHR
message its type, patient and sender.

A study's values are those of its first instance that has them (a study is one patient's, by
`studies.group_studies`); its modalities are every distinct one. Text from the peer is clipped to
`MAX_TEXT` characters: the records must not grow with what a peer chooses to write. Patient names stay in
DICOM PN form here (`format_person_name` makes them readable), so HL7 and FHIR names read the same way.

The department the transfer is for is decided here too, once: the facility's `[departments]` rules
(`access.departments`) applied to what its content names (DICOM (0008,1040)/(0032,1033) and modalities,
HL7 MSH-5, PV1-10 and type) and to the peer that sent it. It is a name from the configuration, never
the peer's text.

All of it is patient data: it lives in the transfer records only and is never logged (the fields are kept
out of repr).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from qlinkmed.qlinkd.access.departments import Arrival, DepartmentRules
from qlinkmed.qlinkd.content.kinds import ContentInfo, ContentKind

MAX_TEXT = 128
"""Longest text kept per field (DICOM allows 64 characters per PN group; HL7 fields can be longer)."""
MODALITY_SEPARATOR = "\\"
"""Between a study's modalities, as between DICOM values: "CT\\SR"."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InboxSummary:
    """One transfer as the inbox lists it. Fields that do not apply to its kind, or that its content does
    not carry, are None."""

    patient_name: str | None = field(default=None, repr=False)
    """Readable patient name ("Müller, Jörg"), from DICOM PatientName, HL7 PID-5 or FHIR Patient.name."""
    patient_id: str | None = field(default=None, repr=False)
    """DICOM PatientID, HL7 PID-3 or the FHIR Patient's identifier (or reference)."""
    accession: str | None = field(default=None, repr=False)
    """DICOM AccessionNumber."""
    modalities: str | None = None
    """A study's distinct modalities, sorted and joined by `MODALITY_SEPARATOR` ("CT\\SR")."""
    study_date: str | None = None
    """DICOM StudyDate as an ISO date (2024-03-01), or as written when it is not a plain YYYYMMDD."""
    study_description: str | None = field(default=None, repr=False)
    """DICOM StudyDescription."""
    instances: int | None = None
    """How many DICOM objects a study holds."""
    message_type: str | None = None
    """HL7 MSH-9 as written ("ORU^R01^ORU_R01"); FHIR resourceType, with a Bundle's type ("Bundle
    (transaction)")."""
    sender: str | None = None
    """HL7 MSH-3@MSH-4 (None for FHIR: the peer facility is its sender)."""
    department: str | None = None
    """The department the facility's `[departments]` rules name for it; None without a rule or default
    that does."""


def format_person_name(value: str | None) -> str | None:
    """A DICOM PN value readable: "Müller^Jörg^^Dr" -> "Müller, Dr Jörg". Of the alphabetic, ideographic
    and phonetic groups ("=" between them) the first that is not empty is used; components are family^
    given^middle^prefix^suffix."""
    if not value:
        return None
    group = next((g for g in value.split("=") if g.strip("^ ")), "")
    family, given, middle, prefix, suffix = ([c.strip() for c in group.split("^")] + [""] * 5)[:5]
    rest = " ".join(c for c in (prefix, given, middle) if c)
    name = f"{family}, {rest}" if family and rest else family or rest
    if suffix:
        name = f"{name}, {suffix}" if name else suffix
    return _clip(name)


def iso_date(value: str | None) -> str | None:
    """DICOM DA "20240301" -> "2024-03-01"; anything else (a legacy "2024.03.01", a range) as written."""
    if not value:
        return None
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return _clip(value)


def summarize(
    infos: Iterable[ContentInfo], *, peer: str = "", departments: DepartmentRules | None = None
) -> InboxSummary:
    """The summary of one transfer from what validation learned about each of its files, in order;
    `peer` sent it, `departments` (None: no `[departments]`) name its department."""
    infos = list(infos)
    summary = _described(infos)
    if departments is None:
        return summary
    department = departments.department_of(_arrival(infos, peer))
    return dataclasses.replace(summary, department=department)


def _described(infos: list[ContentInfo]) -> InboxSummary:
    dicom = [i for i in infos if i.kind is ContentKind.DICOM]
    if dicom:
        return InboxSummary(
            patient_name=format_person_name(_first(i.patient_name for i in dicom)),
            patient_id=_clip(_first(i.patient_id for i in dicom)),
            accession=_clip(_first(i.accession_number for i in dicom)),
            modalities=MODALITY_SEPARATOR.join(_modalities(dicom)) or None,
            study_date=iso_date(_first(i.study_date for i in dicom)),
            study_description=_clip(_first(i.study_description for i in dicom)),
            instances=len(dicom),
        )
    ehr = _ehr(infos)
    if ehr is None:
        return InboxSummary()  # images: nothing in a PNG or JPEG names a patient
    message_type = ehr.message_type
    if ehr.kind is ContentKind.FHIR:
        message_type = ehr.resource_type
        if ehr.bundle_type:
            message_type = f"{message_type} ({ehr.bundle_type})"
    return InboxSummary(
        patient_name=format_person_name(ehr.patient_name),
        patient_id=_clip(ehr.patient_id),
        message_type=_clip(message_type),
        sender=_clip(ehr.sender),
    )


def _arrival(infos: list[ContentInfo], peer: str) -> Arrival:
    """What the department rules judge: the texts clipped as the summary's are, so a peer's megabyte
    department name costs no more than 128 characters to compare."""
    dicom = [i for i in infos if i.kind is ContentKind.DICOM]
    ehr = _ehr(infos)
    message_type = None
    if ehr is not None:
        # As roles name types: HL7 code^event ("ORU^R01" of "ORU^R01^ORU_R01"), a FHIR resourceType.
        written = ehr.resource_type if ehr.kind is ContentKind.FHIR else ehr.message_type
        message_type = "^".join(written.split("^")[:2]) if written else None
    return Arrival(
        peer=peer,
        dicom_departments=tuple(dict.fromkeys(d for i in dicom if (d := _clip(i.dicom_department)))),
        modalities=tuple(_modalities(dicom)),
        receiving_application=None if ehr is None else _clip(ehr.receiving_application),
        hospital_service=None if ehr is None else _clip(ehr.hospital_service),
        message_type=_clip(message_type),
    )


def _modalities(dicom: list[ContentInfo]) -> list[str]:
    return sorted({_clip(i.modality) or "" for i in dicom} - {""})


def _ehr(infos: list[ContentInfo]) -> ContentInfo | None:
    return next((i for i in infos if i.kind in (ContentKind.HL7, ContentKind.FHIR)), None)


def _first(values: Iterable[str | None]) -> str | None:
    return next((v for v in values if v), None)


def _clip(text: str | None) -> str | None:
    if not text:
        return None
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return (text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…") or None
