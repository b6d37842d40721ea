"""Validation issues: every problem a FHIR resource or an HL7 v2 message has, each with where it is and
what is wrong, shaped as the issues of a FHIR OperationOutcome (severity, code, expression, diagnostics)
so a gateway can answer with one, and an HL7 ERR segment can be made from the same fields.

`refuse` raises one ContentError carrying them all: its `problem` lists every issue (at most
`MAX_LISTED` in the text, the count of the rest after them), its `issues` the whole tuple.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from qlinkmed.qlinkd.errors import ContentError

MAX_LISTED = 20
"""Issues spelled out in a refusal's text; `ContentError.issues` holds them all."""


class Severity(StrEnum):
    """FHIR IssueSeverity."""

    FATAL = "fatal"
    ERROR = "error"
    WARNING = "warning"


class IssueCode(StrEnum):
    """The FHIR IssueType codes validation uses."""

    STRUCTURE = "structure"
    """A structural problem: a segment or element where it may not be, a message that cannot be parsed."""
    REQUIRED = "required"
    """A required element, segment or group is missing."""
    VALUE = "value"
    """An element's value is not valid (wrong type, format or code)."""
    INVARIANT = "invariant"
    """A rule between elements does not hold (FHIR invariants such as bdl-3a)."""
    NOT_SUPPORTED = "not-supported"
    """Content of a kind, version or type this validator does not take."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Issue:
    """One problem found in a message or resource."""

    expression: str
    """Where: a FHIRPath-like path ("Bundle.entry[2].request") or an HL7 v2 location ("ORU_R01.PATIENT_
    RESULT.ORDER_OBSERVATION.OBR", "segment 3 (EVN)", "MSH-12")."""
    diagnostics: str
    """What is wrong, in words; never quotes a value (it may be patient data)."""
    code: IssueCode = IssueCode.STRUCTURE
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        return f"{self.expression}: {self.diagnostics}"

    def to_fhir(self) -> dict[str, Any]:
        """The issue as an OperationOutcome.issue element (FHIR R4/R5 JSON)."""
        return {
            "severity": self.severity.value,
            "code": self.code.value,
            "diagnostics": self.diagnostics,
            "expression": [self.expression],
        }


def operation_outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    """A FHIR OperationOutcome listing `issues` (at least one), as a FHIR server answers a refused
    request."""
    return {"resourceType": "OperationOutcome", "issue": [issue.to_fhir() for issue in issues]}


def refuse(name: str, what: str, issues: Sequence[Issue], *, note: str = "") -> ContentError:
    """The ContentError for `issues` (at least one) found in the file `name`; `what` prefixes the text
    ("FHIR", "HL7 v2"), `note` ends it."""
    listed = "; ".join(str(issue) for issue in issues[:MAX_LISTED])
    more = f"; and {len(issues) - MAX_LISTED} more" if len(issues) > MAX_LISTED else ""
    count = f"{len(issues)} issues: " if len(issues) > 1 else ""
    tail = f" {note}" if note else ""
    return ContentError(name, f"{what} {count}{listed}{more}{tail}", issues=tuple(issues))
