"""`[departments]`: how a facility names the department each arriving transfer is for (applied by
`access.departments`, recorded in the inbox listing, judged by roles limited to departments).

    [departments]
    default = "Radiology"                         # optional: arrivals no rule names (absent: none)

    [[departments.rule]]
    department = "Cardiology"
    peers = ["hospital-a"]                        # optional: only from these peer facilities
    dicom_department = ["CARDIOLOGY", "CARDIO"]   # optional: (0008,1040), else (0032,1033); any case
    modalities = ["US", "XA"]                     # optional: studies with any of these modalities
    hl7_receiving_application = ["CARDIO_EHR"]    # optional: MSH-5, any case
    hl7_service = ["CAR"]                         # optional: PV1-10, any case
    message_types = ["ORU^R01"]                   # optional: HL7 code^event or a FHIR resource type

Rules are tried in order, first match wins; a rule names at least one condition and every condition it
names must hold. With `[departments]` present every department a role names must be one these rules or
the default can produce (`check_role_departments`): a misspelt department would otherwise lock the role's
users out of everything without a word. Errors name the field (`departments.rule[1].modalities[0]`).
"""

from __future__ import annotations

import re

from qlinkmed.qlinkd.access.config import (
    MAX_DEPARTMENT_CHARS,
    MESSAGE_TYPE,
    MODALITY,
    AccessConfig,
)
from qlinkmed.qlinkd.access.departments import DepartmentRule, DepartmentRules, fold
from qlinkmed.qlinkd.ops.toml_reader import Table, check

MAX_VALUE_CHARS = 64
"""Longest value a peer-text condition may list (DICOM LO is 64 characters; HL7 HD namespaces are 20)."""
CONDITIONS = (
    "peers",
    "dicom_department",
    "modalities",
    "hl7_receiving_application",
    "hl7_service",
    "message_types",
)


def _name(table: Table, key: str) -> str:
    value = table.text(key)
    ok = 0 < len(value) <= MAX_DEPARTMENT_CHARS and value.isprintable() and value == value.strip()
    check(
        ok,
        table.name(key),
        f"must be 1..{MAX_DEPARTMENT_CHARS} printable characters without surrounding blanks",
    )
    return value


def _values(table: Table, key: str, pattern: re.Pattern[str] | None, what: str) -> tuple[str, ...]:
    values = table.str_list(key, [])
    check(bool(values) or not table.has(key), table.name(key), "must not be empty (leave it out instead)")
    for i, value in enumerate(values):
        ok = (
            bool(pattern.fullmatch(value))
            if pattern is not None
            else 0 < len(value.strip()) <= MAX_VALUE_CHARS and value.isprintable()
        )
        check(ok, f"{table.name(key)}[{i}]", f"{value[:40]!r} is not {what}")
    keys = [v if pattern is not None else fold(v) for v in values]
    check(len(set(keys)) == len(keys), table.name(key), "lists a value twice")
    return values


def _rule(table: Table, peers: tuple[str, ...]) -> DepartmentRule:
    department = _name(table, "department")
    rule_peers = _values(table, "peers", None, "a peer")
    for i, peer in enumerate(rule_peers):
        check(peer in peers, f"{table.name('peers')}[{i}]", f"{peer!r} is not a configured peer {peers}")
    text = f"1..{MAX_VALUE_CHARS} printable characters"
    rule = DepartmentRule(
        department=department,
        peers=rule_peers,
        dicom_departments=_values(table, "dicom_department", None, text),
        modalities=_values(table, "modalities", MODALITY, "a DICOM modality code (CT, MR, US...)"),
        hl7_receiving_applications=_values(table, "hl7_receiving_application", None, text),
        hl7_services=_values(table, "hl7_service", None, text),
        message_types=_values(table, "message_types", MESSAGE_TYPE, "a message type (ORU^R01, Bundle...)"),
    )
    check(
        any(table.has(key) for key in CONDITIONS),
        table.where,
        f"rule for {department!r} names no condition: give at least one of {', '.join(CONDITIONS)}"
        " (a department for everything else is `default`)",
    )
    table.finish()
    return rule


def departments_section(root: Table, peers: tuple[str, ...]) -> DepartmentRules | None:
    """`[departments]` of a facility configuration (None when absent: arrivals name no department);
    `peers`: the configured peer facilities' ids."""
    if not root.has("departments"):
        return None
    table = root.table("departments")
    default = _name(table, "default") if table.has("default") else None
    rules = tuple(_rule(section, peers) for section in table.tables("rule"))
    check(
        bool(rules) or default is not None,
        table.where,
        "names no department: give `default` or at least one [[departments.rule]]",
    )
    table.finish()
    return DepartmentRules(rules=rules, default=default)


def check_role_departments(access: AccessConfig, departments: DepartmentRules | None) -> None:
    """Every department a role names must be one `departments` can produce (no check without
    `[departments]`: then no transfer names one, and `qlink user` says why a role sees nothing)."""
    if departments is None:
        return
    names = departments.names()
    for i, role in enumerate(access.roles):
        for j, department in enumerate(role.departments):
            if department in names:
                continue
            near = [n for n in names if fold(n) == fold(department)]
            hint = f" (did you mean {near[0]!r}? names are exact)" if near else ""
            check(
                False,
                f"access.role[{i}].departments[{j}]",
                f"{department!r} is no department [departments] can name ({', '.join(names)}){hint}",
            )
