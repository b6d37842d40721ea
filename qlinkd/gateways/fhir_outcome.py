"""FHIR's answers, built as plain JSON: OperationOutcome (every issue found, not only the first), the
transaction-response/batch-response Bundle, and the CapabilityStatement served at [base]/metadata."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["fatal", "error", "warning", "information"]
FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "5.0.0"
"""fhir.resources 8 validates R5; the CapabilityStatement says so."""


@dataclass(frozen=True, slots=True)
class Issue:
    severity: Severity
    code: str
    """From FHIR's IssueType value set: invalid, structure, required, value, invariant, security, login,
    not-found, not-supported, too-costly, processing, exception, transient, informational..."""
    diagnostics: str
    expression: tuple[str, ...] = ()
    """FHIRPath locations of the problem, e.g. ``Bundle.entry[2].request``."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [issue.to_json() for issue in issues]}


def response_bundle(
    kind: Literal["transaction-response", "batch-response"], entries: Sequence[tuple[str, str | None]]
) -> dict[str, Any]:
    """A response Bundle: per request entry, its status line and location (None: no location)."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    out = []
    for status, location in entries:
        response: dict[str, Any] = {"status": status}
        if location is not None:
            response["location"] = location
        out.append({"response": response})
    return {"resourceType": "Bundle", "type": kind, "timestamp": now, "entry": out}


def capability_statement(base_url: str, software_version: str) -> dict[str, Any]:
    """What this endpoint does: create (POST [base]/[type], any type fhir.resources knows), transaction and
    batch; nothing is read back but the relay's own record of a request."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now,
        "kind": "instance",
        "software": {"name": "qlink", "version": software_version},
        "implementation": {
            "description": "qlink FHIR gateway: relays what it accepts to the peer facility's FHIR server",
            "url": base_url,
        },
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "POST [base]/[type] and POST [base] (transaction or batch Bundle). A request is "
                    "answered once it is durably queued for the peer facility; the peer's FHIR server "
                    "performs it when it arrives there."
                ),
                "security": {
                    "description": "Bearer token or client certificate, as the facility configures."
                },
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }
