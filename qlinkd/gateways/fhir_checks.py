"""The FHIR REST rules the gateway checks itself, on the parsed JSON, before the content validator sees
the resource: what POST [base] takes (a transaction or batch Bundle whose every entry says what to do,
bdl-3 and bdl-7), and how a validator's refusal becomes OperationOutcome issues."""

from __future__ import annotations

from collections import Counter
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
    full_urls: Counter[str] = Counter()
    for i, entry in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        if not isinstance(entry, dict):
            issues.append(Issue("error", "structure", f"{where} must be an object", (where,)))
            continue
        if isinstance(entry.get("fullUrl"), str):
            full_urls[entry["fullUrl"]] += 1
        request = entry.get("request")
        if not isinstance(request, dict):
            issues.append(
                Issue(
                    "error",
                    "required",
                    "every entry of a transaction or batch needs request (bdl-3)",
                    (f"{where}.request",),
                )
            )
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
    for url, count in sorted(full_urls.items()):
        if count > 1:
            issues.append(
                Issue(
                    "error",
                    "invariant",
                    f"fullUrl {url} appears {count} times; it must be unique (bdl-7)",
                    ("Bundle.entry.fullUrl",),
                )
            )
    return issues, kind if isinstance(kind, str) else ""


def validation_issues(error: ContentError) -> list[Issue]:
    """The content validator's refusal as issues: one per problem it lists, or its one message."""
    listed = getattr(error, "issues", None)
    if not listed:
        return [Issue("error", "invalid", error.problem)]
    out = []
    for item in listed:
        location = getattr(item, "location", None) or getattr(item, "expression", None)
        expression = (location,) if isinstance(location, str) and location else ()
        message = getattr(item, "message", None) or getattr(item, "diagnostics", None) or str(item)
        code = getattr(item, "code", None) or "invalid"
        out.append(Issue("error", str(code), str(message), expression))
    return out
