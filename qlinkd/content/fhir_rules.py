"""FHIR Bundle invariants the resource models do not check (fhir.resources validates element types and
cardinalities, not the FHIRPath constraints of the specification). The rules, by their keys in R5 (and
R4/R4B, where they are the same rule under another key):

- bdl-1: `total` only in a searchset or history.
- bdl-2: `entry.search` only in a searchset.
- bdl-3a (R4: bdl-3): every entry of a batch, transaction or history has a `request`; no other type but
  subscription-notification may have one.
- bdl-3b (R4: bdl-4): every entry of a batch-response, transaction-response or history has a `response`;
  no other type may have one.
- bdl-5: an entry has a `resource` unless it has a `request` or a `response`.
- bdl-7: `fullUrl` is unique in the Bundle, unless the entries differ in `meta.versionId` (not checked in
  a history, where the same resource appears in several versions).
- bdl-8: `fullUrl` is not a version-specific reference (no "/_history/").
- bdl-9: a document has an `identifier` with a system and a value.
- bdl-10: a document has a `timestamp`.
- bdl-11: a document's first entry is a Composition.
- bdl-12: a message's first entry is a MessageHeader.

Bundles inside entries are checked the same way. Each broken rule is one `Issue` (code "invariant") with
its FHIRPath location; nothing here quotes a value.
"""

from __future__ import annotations

from typing import Any

from qlinkmed.qlinkd.content.issues import Issue, IssueCode

_NEEDS_REQUEST = ("batch", "transaction", "history")
_MAY_HAVE_REQUEST = (*_NEEDS_REQUEST, "subscription-notification")
_NEEDS_RESPONSE = ("batch-response", "transaction-response", "history")


def bundle_issues(bundle: dict[str, Any], path: str = "Bundle") -> list[Issue]:
    """Every broken Bundle invariant in `bundle` (a parsed JSON object with resourceType "Bundle")."""
    issues: list[Issue] = []

    def broken(where: str, key: str, rule: str) -> None:
        issues.append(Issue(expression=where, diagnostics=f"{key}: {rule}", code=IssueCode.INVARIANT))

    kind = bundle.get("type")
    entries = bundle.get("entry")
    entries = [e if isinstance(e, dict) else {} for e in entries] if isinstance(entries, list) else []
    if "total" in bundle and kind not in ("searchset", "history"):
        broken(f"{path}.total", "bdl-1", "total only when a search or history")
    if kind == "document":
        identifier = bundle.get("identifier")
        if not (isinstance(identifier, dict) and identifier.get("system") and identifier.get("value")):
            broken(
                f"{path}.identifier", "bdl-9", "a document must have an identifier with a system and a value"
            )
        if not bundle.get("timestamp"):
            broken(f"{path}.timestamp", "bdl-10", "a document must have a date (timestamp)")
        if _first_type(entries) != "Composition":
            broken(
                f"{path}.entry[0].resource",
                "bdl-11",
                "a document must have a Composition as the first resource",
            )
    if kind == "message" and _first_type(entries) != "MessageHeader":
        broken(
            f"{path}.entry[0].resource", "bdl-12", "a message must have a MessageHeader as the first resource"
        )
    full_urls: dict[tuple[str, object], int] = {}
    for i, entry in enumerate(entries):
        where = f"{path}.entry[{i}]"
        if "search" in entry and kind != "searchset":
            broken(f"{where}.search", "bdl-2", "entry.search only when a search")
        if kind in _NEEDS_REQUEST and "request" not in entry:
            broken(f"{where}.request", "bdl-3a", f"each entry of a {kind} must have a request")
        elif "request" in entry and kind not in _MAY_HAVE_REQUEST:
            broken(f"{where}.request", "bdl-3a", f"an entry of a {kind} must not have a request")
        if kind in _NEEDS_RESPONSE and "response" not in entry:
            broken(f"{where}.response", "bdl-3b", f"each entry of a {kind} must have a response")
        elif "response" in entry and kind not in _NEEDS_RESPONSE:
            broken(f"{where}.response", "bdl-3b", f"an entry of a {kind} must not have a response")
        resource = entry.get("resource")
        if resource is None and "request" not in entry and "response" not in entry:
            broken(where, "bdl-5", "an entry must have a resource unless it has a request or a response")
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str):
            if "/_history/" in full_url:
                broken(f"{where}.fullUrl", "bdl-8", "fullUrl cannot be a version specific reference")
            meta = resource.get("meta") if isinstance(resource, dict) else None
            version = meta.get("versionId") if isinstance(meta, dict) else None
            key = (full_url, version)
            if key in full_urls and kind != "history":
                broken(
                    f"{where}.fullUrl",
                    "bdl-7",
                    f"fullUrl must be unique in a bundle (also entry[{full_urls[key]}]), or else the entries "
                    "must have different meta.versionId",
                )
            full_urls.setdefault(key, i)
        if isinstance(resource, dict) and resource.get("resourceType") == "Bundle":
            issues += bundle_issues(resource, f"{where}.resource")
    return issues


def _first_type(entries: list[dict[str, Any]]) -> object:
    resource = entries[0].get("resource") if entries else None
    return resource.get("resourceType") if isinstance(resource, dict) else None
