"""`[access]`: the roles a facility's users may hold and the limits of break-glass.

    [access]
    break_glass_default_s = 3600      # `qlink user break-glass` without --minutes
    break_glass_max_s = 14400         # the longest grant a user may ask for
    break_glass_min_s = 60            # the shortest (tests set 1)

    [[access.role]]
    name = "radiology"
    kinds = ["study", "images"]       # required: what a holder may read at all
    peers = ["hospital-a"]            # optional: only what these facilities sent
    modalities = ["CT", "MR"]         # optional: studies of these DICOM modalities only
    message_types = ["ORU^R01"]       # optional: EHR messages of these types only
    departments = ["radiology"]       # optional: only transfers addressed to these departments
    patients = "assigned"             # optional: "any" (default) or only patients assigned to the user

A dimension left out places no limit; `kinds` must be given, so a role that reads everything says so
(`kinds = ["study", "images", "ehr"]`). Errors name the field (`access.role[0].kinds[1]`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum

from qlinkmed.qlinkd.dataplane.manifest import TransferKind
from qlinkmed.qlinkd.ops.toml_reader import Table, check

ROLE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MODALITY = re.compile(r"[A-Z0-9_]{1,16}")
"""A DICOM Modality (0008,0060): a code string of at most 16 characters."""
MESSAGE_TYPE = re.compile(r"[A-Za-z0-9_^]{1,40}")
"""An HL7 v2 MSH-9 ("ORU^R01") or a FHIR resource type ("Bundle")."""
MAX_DEPARTMENT_CHARS = 64
DEFAULT_BREAK_GLASS_S = 3600.0
MAX_BREAK_GLASS_S = 4 * 3600.0
MIN_BREAK_GLASS_S = 60.0


class PatientScope(StrEnum):
    ANY = "any"
    ASSIGNED = "assigned"
    """Only transfers about a patient assigned to the user (`qlink user assign ID --patient PID`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Role:
    name: str
    """How users name it (`qlink user add NAME --role NAME`)."""
    kinds: tuple[TransferKind, ...]
    """The kinds of transfer a holder may read."""
    peers: tuple[str, ...] = ()
    """Only transfers these peer facilities sent; empty: from any peer."""
    modalities: tuple[str, ...] = ()
    """Only studies whose every modality is listed; empty: any modality."""
    message_types: tuple[str, ...] = ()
    """Only EHR messages of these types; empty: any type."""
    departments: tuple[str, ...] = ()
    """Only transfers addressed to these departments; empty: any."""
    patients: PatientScope = PatientScope.ANY
    """Every patient, or only those assigned to the user."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessConfig:
    roles: tuple[Role, ...] = ()
    """The roles users may hold; a user with none reads nothing."""
    break_glass_default_s: float = DEFAULT_BREAK_GLASS_S
    """A break-glass grant's length when the user names none."""
    break_glass_max_s: float = MAX_BREAK_GLASS_S
    """The longest grant a user may ask for."""
    break_glass_min_s: float = MIN_BREAK_GLASS_S
    """The shortest grant a user may ask for."""

    def role_map(self) -> dict[str, Role]:
        return {role.name: role for role in self.roles}


def _codes(section: Table, key: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    values = section.str_list(key, [])
    for i, value in enumerate(values):
        check(bool(pattern.fullmatch(value)), f"{section.name(key)}[{i}]", f"{value[:40]!r} is not {what}")
    check(len(set(values)) == len(values), section.name(key), "lists a value twice")
    return values


def _role(section: Table, peers: tuple[str, ...]) -> Role:
    name = section.text("name")
    check(bool(ROLE_NAME.fullmatch(name)), section.name("name"), f"must match {ROLE_NAME.pattern}")
    kinds = section.str_list("kinds")
    check(bool(kinds), section.name("kinds"), "must name at least one of study, images, ehr")
    for i, kind in enumerate(kinds):
        allowed = [k.value for k in TransferKind]
        check(kind in allowed, f"{section.name('kinds')}[{i}]", f"must be one of {allowed}, got {kind!r}")
    role_peers = section.str_list("peers", [])
    for i, peer in enumerate(role_peers):
        check(peer in peers, f"{section.name('peers')}[{i}]", f"{peer!r} is not a configured peer {peers}")
    departments = section.str_list("departments", [])
    for i, department in enumerate(departments):
        ok = 0 < len(department) <= MAX_DEPARTMENT_CHARS and department.isprintable()
        check(
            ok,
            f"{section.name('departments')}[{i}]",
            f"must be 1..{MAX_DEPARTMENT_CHARS} printable characters",
        )
    scope = section.choice("patients", PatientScope, tuple(p.value for p in PatientScope), "any")
    role = Role(
        name=name,
        kinds=tuple(TransferKind(k) for k in dict.fromkeys(kinds)),
        peers=role_peers,
        modalities=_codes(section, "modalities", MODALITY, "a DICOM modality code (CT, MR, US...)"),
        message_types=_codes(section, "message_types", MESSAGE_TYPE, "a message type (ORU^R01, Bundle...)"),
        departments=departments,
        patients=scope,
    )
    section.finish()
    return role


def access_section(root: Table, peers: tuple[str, ...]) -> AccessConfig:
    """`[access]` of a facility configuration; `peers`: the configured peer facilities' ids."""
    table = root.table("access", optional=True)
    default = table.number("break_glass_default_s", DEFAULT_BREAK_GLASS_S)
    longest = table.number("break_glass_max_s", MAX_BREAK_GLASS_S)
    shortest = table.number("break_glass_min_s", MIN_BREAK_GLASS_S)
    check(
        math.isfinite(shortest) and shortest >= 1.0, table.name("break_glass_min_s"), "must be at least 1 s"
    )
    check(
        shortest <= longest <= 7 * 86_400.0,
        table.name("break_glass_max_s"),
        "must be at least break_glass_min_s and at most a week (604800 s)",
    )
    check(
        shortest <= default <= longest,
        table.name("break_glass_default_s"),
        "must lie between break_glass_min_s and break_glass_max_s",
    )
    roles = [_role(section, peers) for section in table.tables("role")]
    names = [role.name for role in roles]
    for i, name in enumerate(names):
        check(name not in names[:i], f"{table.name('role')}[{i}].name", f"role {name!r} is defined twice")
    table.finish()
    return AccessConfig(
        roles=tuple(roles),
        break_glass_default_s=default,
        break_glass_max_s=longest,
        break_glass_min_s=shortest,
    )
