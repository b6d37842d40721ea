"""The FHIR REST rules the gateway checks itself, on the parsed JSON, beside the content validator's (which
judges the resource: its elements and the Bundle invariants bdl-1..12, entry.request and unique fullUrls
among them): what POST [base] takes (a transaction or batch Bundle) and what each of its requests must
say to be performed (a method FHIR has, a URL, the resource a POST or PUT writes). The validator's
refusal becomes OperationOutcome issues beside them, so one answer lists every issue once."""

from __future__ import annotations

from typing import Any

from qlinkmed.qlinkd.errors import ContentError
from qlinkmed.qlinkd.gateways.fhir_outcome import Issue

BUNDLE_TYPES = ("transaction", "batch")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")
_WITH_RESOURCE = ("POST", "PUT")


def request_issues(bundle: dict[str, Any]) -> tuple[list[Issue], str]:
    """Every problem of `bundle` as the body of POST [base], and its type ("" if it has none)."""
    issues: list[Issue] = []
    if bundle.get("resourceType") != "Bundle":
        issues.append(
            Issue(
                "error",
                "invalid",
                f"POST [base] takes a transaction or batch Bundle, not a {bundle.get('resourceType')}; "
                "post a single resource to [base]/[type]",
                ("resourceType",),
            )
        )
        return issues, ""
    kind = bundle.get("type")
    if kind not in BUNDLE_TYPES:
        issues.append(
            Issue(
                "error",
                "invalid",
                f"POST [base] takes a Bundle of type transaction or batch, not {kind!r}",
                ("Bundle.type",),
            )
        )
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        issues.append(Issue("error", "structure", "Bundle.entry must be an array", ("Bundle.entry",)))
        return issues, kind if isinstance(kind, str) else ""
    for i, entry in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        # An entry that is no object, or has no request, is the validator's to report (bdl-3a).
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict):
            continue
        method = request.get("method")
        if method not in METHODS:
            issues.append(
                Issue(
                    "error",
                    "value",
                    f"request.method must be one of {', '.join(METHODS)}, not {method!r}",
                    (f"{where}.request.method",),
                )
            )
        if not isinstance(request.get("url"), str) or not request["url"]:
            issues.append(Issue("error", "required", "request.url is required", (f"{where}.request.url",)))
        if method in _WITH_RESOURCE and not isinstance(entry.get("resource"), dict):
            issues.append(
                Issue(
                    "error",
                    "required",
                    f"a {method} entry needs the resource it writes",
                    (f"{where}.resource",),
                )
            )
    return issues, kind if isinstance(kind, str) else ""


def validation_issues(error: ContentError) -> list[Issue]:
    """The content validator's refusal as issues: one per problem it lists, or its one message."""
    if not error.issues:
        return [Issue("error", "invalid", error.problem)]
    return [
        Issue(issue.severity.value, issue.code.value, issue.diagnostics, (issue.expression,))
        for issue in error.issues
    ]
