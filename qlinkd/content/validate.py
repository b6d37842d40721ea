"""`validate`: check a file's size against its kind's limit, sniff it, then parse it completely with the
library for its kind, decoding no more than the limits allow."""

from __future__ import annotations

import hashlib
import json

from qlinkmed.qlinkd.content.dicom import validate_dicom
from qlinkmed.qlinkd.content.ehr import load_common_models, validate_fhir, validate_hl7
from qlinkmed.qlinkd.content.kinds import ContentInfo, ContentKind, identify
from qlinkmed.qlinkd.content.limits import DEFAULT_LIMITS, HEAD_BYTES, ContentLimits, check_size
from qlinkmed.qlinkd.content.raster import validate_raster


def validate(name: str, data: bytes, limits: ContentLimits = DEFAULT_LIMITS) -> ContentInfo:
    """Parse `data` (named `name` by the user) and describe it.

    Raises ContentError (qlinkd.errors) naming the file and precisely what is wrong: a file larger than
    its kind's limit or decoding beyond it, an unknown kind, a truncated or malformed file, a missing
    required attribute, an invalid resource or message. Blocking and, for a large file, slow: the daemon
    runs it in a worker process (`content.worker`).
    """
    check_size(name, data[:HEAD_BYTES], len(data), limits)
    kind, resource = identify(name, data)
    digest = hashlib.sha256(data).hexdigest()
    if resource is not None:  # FHIR: identify has parsed the JSON already
        return validate_fhir(name, data, resource, digest)
    if kind is ContentKind.DICOM:
        return validate_dicom(name, data, digest, limits)
    if kind in (ContentKind.PNG, ContentKind.JPEG):
        return validate_raster(name, data, kind, digest, limits)
    return validate_hl7(name, data, digest)


def warm_up() -> None:
    """Load the FHIR models of the common resource types and validate a small message of each EHR kind.

    fhir.resources imports a resource's model, and pydantic completes its validators, on first use: about
    0.1 s at each end of the link for the first FHIR message after a start (0.6-0.8 s here for all the
    common types and the two messages). A daemon pays this before it reports ready; a rarer resource type
    still loads on first use.
    """
    load_common_models()
    for name, data in WARM_UP_MESSAGES:
        validate(name, data)


_PATIENT_URL = "urn:uuid:00000000-0000-4000-8000-000000000001"
_WARM_UP_BUNDLE = {
    "resourceType": "Bundle",
    "type": "collection",
    "timestamp": "2026-01-01T00:00:00Z",
    "entry": [
        {
            "fullUrl": _PATIENT_URL,
            "resource": {
                "resourceType": "Patient",
                "id": "p",
                "identifier": [{"system": "urn:oid:1.2.3", "value": "1"}],
                "name": [{"family": "Up", "given": ["Warm"]}],
                "gender": "other",
                "birthDate": "2000-01-01",
            },
        },
        {
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000002",
            "resource": {
                "resourceType": "Observation",
                "id": "o",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Pulse"}]},
                "subject": {"reference": _PATIENT_URL},
                "effectiveDateTime": "2026-01-01T00:00:00Z",
                "valueQuantity": {"value": 60, "unit": "/min", "system": "http://unitsofmeasure.org"},
            },
        },
    ],
}
WARM_UP_MESSAGES = (
    ("warm-up.json", json.dumps(_WARM_UP_BUNDLE).encode()),
    (
        "warm-up.hl7",
        b"MSH|^~\\&|QLINK|A|QLINK|B|20260101000000||ADT^A01|1|P|2.5\rEVN|A01|20260101000000\r"
        b"PID|1||1||Up^Warm\rPV1|1|O\r",
    ),
)
