"""EHR messages: FHIR JSON (validated with fhir.resources and the Bundle invariants of `fhir_rules`) and
HL7 v2 (header rules here, structure by version and trigger event in `hl7_structure`).

Every problem found is reported, not only the first: a refusal is one ContentError whose `issues`
(`content.issues.Issue`: expression, severity, code, diagnostics, as an OperationOutcome's) list them all
and whose text spells them out. Error messages never quote the offending value: it may be patient data.

FHIR: the resource is validated as the model class its resourceType names, against FHIR R5 (the
fhir.resources default) and, if that fails, R4B, the release most systems still exchange; the info says
which one passed, and a failure reports every error of the release that knows the type, each with a
FHIRPath-like location ("FHIR Bundle.entry[2].resource.status: ..."), and every broken Bundle invariant
("Bundle.entry[0].request: bdl-3a: ...").

HL7 v2: segments are separated by CR; a message written with LF or CRLF line ends is accepted by
normalising a copy for the check (the bytes are carried unchanged). The text is decoded per MSH-18:
"UNICODE UTF-8" as strict UTF-8, "ASCII" as strict ASCII, "8859/n" as ISO 8859-n; when MSH-18 is empty,
as UTF-8 if it is valid UTF-8, else as ISO 8859-1 (HL7 says ASCII, but both are common in practice). Any
other character set is refused. Required: MSH with its field separator and the four (or five, v2.7+)
encoding characters, MSH-9 (message type), MSH-10 (control ID), MSH-12 (a 2.x version), and at least one
segment after MSH; every segment ID must be three capitals or digits starting with a capital. Then the
segments must fit the message structure MSH-9 names in MSH-12's version (`hl7_structure`), and the file
must hold one message.
"""

from __future__ import annotations

import re
from typing import Any

import hl7
from fhir.resources import get_fhir_model_class as r5_model_class
from fhir.resources.R4B import get_fhir_model_class as r4b_model_class

from qlinkmed.qlinkd.content.fhir_rules import bundle_issues
from qlinkmed.qlinkd.content.hl7_structure import structure_issues
from qlinkmed.qlinkd.content.issues import Issue, IssueCode, refuse
from qlinkmed.qlinkd.content.kinds import ContentInfo, ContentKind
from qlinkmed.qlinkd.errors import ContentError

_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_CHARSETS = {
    "": None,
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    **{f"8859/{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
}
_RELEASES = (("R5", r5_model_class), ("R4B", r4b_model_class))
_NOT_IN_RELEASE = "not a resource type of this release"

COMMON_RESOURCE_TYPES = (
    "Bundle", "Patient", "Observation", "DiagnosticReport", "ImagingStudy", "ServiceRequest", "Encounter",
    "Condition", "Procedure", "Practitioner", "PractitionerRole", "Organization", "Location",
    "DocumentReference", "Composition", "MedicationRequest", "MedicationStatement", "AllergyIntolerance",
    "Immunization", "Specimen", "CarePlan", "Appointment", "Consent", "Provenance", "MessageHeader",
    "OperationOutcome", "Device", "Coverage", "QuestionnaireResponse", "Endpoint",
)  # fmt: skip
"""The resources an imaging and EHR link carries most, whose models a daemon loads before it is ready."""


# FHIR ---------------------------------------------------------------------------------------------------


def validate_fhir(name: str, data: bytes, resource: dict[str, Any], digest: str) -> ContentInfo:
    """Validate a parsed FHIR resource (from `kinds.identify`); ContentError listing every issue found
    (`issues`): each element error of the release that knows the resource type, and each broken Bundle
    invariant (`fhir_rules`)."""
    resource_type = resource["resourceType"]
    unknown = _resource_type_issues(resource, resource_type)
    if unknown:
        raise refuse(name, "FHIR", unknown)
    invariants = bundle_issues(resource) if resource_type == "Bundle" else []
    failures: list[tuple[str, list[Issue]]] = []
    for release, model_class in _RELEASES:
        errors = _model_issues(model_class, resource, resource_type)
        if not errors:
            break
        failures.append((release, errors))
    else:
        # Report the first release that knows the resource type.
        release, errors = next(
            ((r, e) for r, e in failures if e[0].diagnostics != _NOT_IN_RELEASE), failures[0]
        )
        others = ", ".join(r for r, _ in failures if r != release)
        raise refuse(name, "FHIR", [*errors, *invariants], note=f"({release}; also invalid as {others})")
    if invariants:
        raise refuse(name, "FHIR", invariants, note=f"(valid as {release} otherwise)")
    entries = resource.get("entry") if resource_type == "Bundle" else None
    patient_id, patient_name = _fhir_patient(resource)
    return ContentInfo(
        kind=ContentKind.FHIR,
        size=len(data),
        sha256=digest,
        resource_type=resource_type,
        bundle_entries=len(entries or ()) if resource_type == "Bundle" else None,
        fhir_version=release,
        bundle_type=_string(resource.get("type")) if resource_type == "Bundle" else None,
        patient_id=patient_id,
        patient_name=patient_name,
    )


def _string(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _fhir_patient(resource: dict[str, Any]) -> tuple[str | None, str | None]:
    """(patient_id, patient_name) for the inbox listing: from the Patient resource (the resource itself,
    or a Bundle's first Patient entry), else the id of the first "Patient/<id>" subject or patient
    reference."""
    resources = [resource]
    if resource.get("resourceType") == "Bundle" and isinstance(resource.get("entry"), list):
        resources += [e["resource"] for e in resource["entry"] if isinstance(e, dict) and "resource" in e]
    resources = [r for r in resources if isinstance(r, dict)]
    for found in resources:
        if found.get("resourceType") != "Patient":
            continue
        ids = [i.get("value") for i in found.get("identifier") or () if isinstance(i, dict)]
        names = [n for n in found.get("name") or () if isinstance(n, dict)]
        patient_id = next((v for v in map(_string, ids) if v), None) or _string(found.get("id"))
        return patient_id, _fhir_name(names[0]) if names else None
    for found in resources:
        for key in ("subject", "patient"):
            reference = found.get(key)
            target = _string(reference.get("reference")) if isinstance(reference, dict) else None
            if target and target.startswith("Patient/"):
                return target.removeprefix("Patient/") or None, None
    return None, None


def _fhir_name(name: dict[str, Any]) -> str | None:
    """A FHIR HumanName in DICOM PN form (family^given middle), or its text."""
    family = _string(name.get("family")) or ""
    given = " ".join(g.strip() for g in name.get("given") or () if isinstance(g, str) and g.strip())
    if family or given:
        return f"{family}^{given}" if given else family
    return _string(name.get("text"))


def _lookup(model_class: Any, resource_type: str) -> Any:
    try:
        return model_class(resource_type)
    except (ValueError, KeyError, ImportError, AttributeError):
        return None


def _known_type(resource_type: object) -> bool:
    if not isinstance(resource_type, str) or not _RESOURCE_TYPE.fullmatch(resource_type):
        return False
    return any(_lookup(model_class, resource_type) is not None for _, model_class in _RELEASES)


def _resource_type_issues(resource: dict[str, Any], path: str) -> list[Issue]:
    """Every resourceType, down through Bundle entries, must name a resource (the models fail obscurely
    on an unknown one)."""
    resource_type = resource.get("resourceType")
    if resource_type is None:
        return [Issue(expression=path, diagnostics="no resourceType", code=IssueCode.REQUIRED)]
    if not _known_type(resource_type):
        return [Issue(expression=path, diagnostics="unknown resourceType", code=IssueCode.NOT_SUPPORTED)]
    if resource_type != "Bundle" or not isinstance(resource.get("entry"), list):
        return []
    issues = []
    for i, entry in enumerate(resource["entry"]):
        inner = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(inner, dict):
            issues += _resource_type_issues(inner, f"{path}.entry[{i}].resource")
    return issues


def _model_issues(model_class: Any, resource: dict[str, Any], resource_type: str) -> list[Issue]:
    """Every error of `resource` in the release of `model_class` ("Path.to.field: message"); empty when
    it validates."""
    model = _lookup(model_class, resource_type)
    if model is None:
        return [Issue(expression=resource_type, diagnostics=_NOT_IN_RELEASE, code=IssueCode.NOT_SUPPORTED)]
    try:
        model.model_validate(resource)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        errors = exc.errors() if hasattr(exc, "errors") else []
        if not errors:
            return [Issue(expression=resource_type, diagnostics=str(exc), code=IssueCode.VALUE)]
        return [
            Issue(
                expression=resource_type
                + "".join(
                    f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.get("loc", ())
                ),
                diagnostics=str(error.get("msg", "invalid")).removeprefix("Value error, "),
                code=IssueCode.REQUIRED if error.get("type") == "missing" else IssueCode.VALUE,
            )
            for error in errors
        ]
    except MemoryError:
        raise  # past the worker's budget (content.worker), not an invalid resource
    except Exception as exc:
        return [
            Issue(
                expression=resource_type,
                diagnostics=f"cannot be validated ({type(exc).__name__})",
                code=IssueCode.STRUCTURE,
            )
        ]
    return []


def load_common_models() -> None:
    """Import the R5 models of `COMMON_RESOURCE_TYPES` (see `validate.warm_up`)."""
    for resource_type in COMMON_RESOURCE_TYPES:
        r5_model_class(resource_type)


# HL7 v2 -------------------------------------------------------------------------------------------------


def validate_hl7(name: str, data: bytes, digest: str) -> ContentInfo:
    """Parse an HL7 v2 message and describe it; ContentError listing every problem found (`issues`)."""
    text = _decode_hl7(name, data)
    segments = [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH"):
        raise ContentError(name, "HL7 v2 message has no MSH segment")
    msh = segments[0]
    _check_msh_separators(name, msh)
    issues: list[Issue] = []
    for i, segment in enumerate(segments):
        seg_id = segment[:3]
        if not _SEGMENT_ID.fullmatch(seg_id) or segment[3:4] not in ("", msh[3]):
            issues.append(
                Issue(expression=f"segment {i + 1}", diagnostics="does not start with a segment ID")
            )
    if len(segments) < 2:
        raise ContentError(name, "HL7 v2 message has no segment after MSH")
    try:
        message = hl7.parse("\r".join(segments[:1]))
        header = message.segment("MSH")
        fields = [str(header[i]) if i < len(header) else "" for i in range(13)]
    except Exception as exc:
        raise ContentError(name, f"malformed HL7 v2 message: {type(exc).__name__}: {exc}") from None
    version = fields[12].split(msh[4])[0]
    for index, what in ((9, "message type"), (10, "message control ID")):
        if not fields[index]:
            issues.append(
                Issue(expression=f"MSH-{index}", diagnostics=f"{what} is empty", code=IssueCode.REQUIRED)
            )
    if not re.fullmatch(r"2\.[0-9]+(\.[0-9]+)?", version):
        issues.append(
            Issue(
                expression="MSH-12",
                diagnostics="version ID is missing or not a 2.x version",
                code=IssueCode.VALUE,
            )
        )
    elif fields[9] and not issues:
        issues += structure_issues(segments, version, fields[9].split(msh[4]))
    if issues:
        raise refuse(name, "HL7 v2", issues)
    sender, patient_id, patient_name = _hl7_header_facts(segments, msh)
    receiving_application, hospital_service = _hl7_routing_facts(segments, msh)
    return ContentInfo(
        kind=ContentKind.HL7,
        size=len(data),
        sha256=digest,
        message_type=fields[9],
        control_id=fields[10],
        hl7_version=version,
        sender=sender,
        patient_id=patient_id,
        patient_name=patient_name,
        receiving_application=receiving_application,
        hospital_service=hospital_service,
    )


def _first_component(value: str, msh: str) -> str:
    """A field's first repetition's first component's first subcomponent, stripped."""
    separator, component, repetition = msh[3], msh[4], msh[5]
    subcomponent = msh[7] if len(msh) > 7 and msh[7] != separator else "&"
    return value.split(repetition, 1)[0].split(component, 1)[0].split(subcomponent, 1)[0].strip()


def _hl7_routing_facts(segments: list[str], msh: str) -> tuple[str | None, str | None]:
    """(receiving application, hospital service) for choosing the message's department: MSH-5 and the
    first PV1's PV1-10, first components."""
    separator = msh[3]
    header = msh.split(separator)
    application = _first_component(header[4], msh) if len(header) > 4 else ""
    service = ""
    pv1 = next((s for s in segments if s.startswith("PV1" + separator)), None)
    if pv1 is not None:
        fields = pv1.split(separator)
        service = _first_component(fields[10], msh) if len(fields) > 10 else ""
    return application or None, service or None


def _hl7_header_facts(segments: list[str], msh: str) -> tuple[str | None, str | None, str | None]:
    """(sender, patient ID, patient name) for the inbox listing: MSH-3@MSH-4, PID-3 (the first
    identifier's ID) and PID-5 (the first name, in DICOM PN form family^given middle)."""
    separator, component, repetition = msh[3], msh[4], msh[5]
    subcomponent = msh[7] if len(msh) > 7 and msh[7] != separator else "&"

    def first(value: str) -> str:
        return value.split(repetition, 1)[0].split(component, 1)[0].split(subcomponent, 1)[0].strip()

    header = msh.split(separator)
    parts = [first(header[i]) if len(header) > i else "" for i in (2, 3)]
    sender = "@".join(p for p in parts if p) or None
    patient_id = patient_name = None
    pid = next((s for s in segments if s.startswith("PID" + separator)), None)
    if pid is not None:
        fields = pid.split(separator)
        patient_id = first(fields[3]) if len(fields) > 3 else ""
        name = fields[5].split(repetition, 1)[0].split(component) if len(fields) > 5 else []
        family = name[0].split(subcomponent, 1)[0].strip() if name else ""
        given = " ".join(n.strip() for n in name[1:3] if n.strip())
        patient_name = f"{family}^{given}" if given else family
    return sender, patient_id or None, patient_name or None


def _check_msh_separators(name: str, msh: str) -> None:
    if len(msh) < 8:
        raise ContentError(name, "HL7 v2 MSH segment is too short for its separators")
    separator = msh[3]
    if separator.isalnum() or separator.isspace():
        raise ContentError(name, "HL7 v2 MSH-1 (field separator) is not a separator character")
    end = msh.find(separator, 4)
    encoding = msh[4:] if end < 0 else msh[4:end]
    if (
        len(encoding) not in (4, 5)
        or len(set(encoding + separator)) != len(encoding) + 1
        or any(c.isalnum() or c.isspace() for c in encoding)
    ):
        raise ContentError(
            name,
            "HL7 v2 MSH-2 (encoding characters) must be four distinct separators (component, repetition, "
            "escape, subcomponent), five from v2.7",
        )


def _decode_hl7(name: str, data: bytes) -> str:
    first = data.split(b"\r", 1)[0].split(b"\n", 1)[0].decode("latin-1")
    parts = first.split(first[3]) if len(first) > 3 else []
    declared = parts[17] if len(parts) > 17 else ""
    if len(first) > 5:
        declared = declared.split(first[5])[0]  # the first repetition is the default character set
    declared = declared.strip()
    if declared not in _CHARSETS:
        raise ContentError(name, f"HL7 v2 MSH-18 character set {declared!r} is not supported")
    codec = _CHARSETS[declared]
    if codec is None:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise ContentError(
            name, f"HL7 v2 message declares {declared} in MSH-18 but is not valid {codec} (byte {exc.start})"
        ) from None
