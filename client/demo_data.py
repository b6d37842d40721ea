"""The EHR messages `qlink demo` sends: a FHIR R5 Bundle (a patient and a CT dose observation) and an
HL7 v2.5 ORU^R01 result. Fictitious patients; shipped inside the package so the demo needs no files."""

from __future__ import annotations

import json

FHIR_BUNDLE = json.dumps(
    {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": "2026-11-24T09:30:00Z",
        "entry": [
            {
                "fullUrl": "urn:uuid:6f1c2a8e-3d4b-4c5d-9e6f-7a8b9c0d1e2f",
                "resource": {
                    "resourceType": "Patient",
                    "id": "demo-patient",
                    "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "MRN-000451"}],
                    "name": [{"family": "Example", "given": ["Dana"]}],
                    "gender": "female",
                    "birthDate": "1971-03-14",
                },
            },
            {
                "fullUrl": "urn:uuid:0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
                "resource": {
                    "resourceType": "Observation",
                    "id": "demo-ctdi",
                    "status": "final",
                    "code": {
                        "coding": [
                            {"system": "http://loinc.org", "code": "73569-6", "display": "Radiation dose"}
                        ]
                    },
                    "subject": {"reference": "urn:uuid:6f1c2a8e-3d4b-4c5d-9e6f-7a8b9c0d1e2f"},
                    "effectiveDateTime": "2026-11-24T09:12:00Z",
                    "valueQuantity": {
                        "value": 12.4,
                        "unit": "mGy",
                        "system": "http://unitsofmeasure.org",
                        "code": "mGy",
                    },
                },
            },
        ],
    },
    indent=2,
).encode()

HL7_ORU = (
    b"MSH|^~\\&|RIS|HOSPITAL-A|EHR|HOSPITAL-B|20261124093000||ORU^R01^ORU_R01|MSG000451|P|2.5\r"
    b"PID|1||MRN-000451^^^HOSPA^MR||EXAMPLE^DANA||19710314|F\r"
    b"OBR|1|ORD451|ACC451|71250^CT CHEST^CPT|||20261124091200\r"
    b"OBX|1|TX|18782-3^RADIOLOGY STUDY OBSERVATION^LN||No acute findings.||||||F\r"
)
