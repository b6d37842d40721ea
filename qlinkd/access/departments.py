"""Which department a transfer is for: the facility's `[departments]` rules (`ops/departments_config.py`)
applied to what validation learned of its content, once, when it arrives (`content.summary`). A role
limited to departments (`access.config.Role.departments`) is then judged against that name.

Rules are tried in order and the first whose every condition holds names the department; none holding,
the default does (absent: the transfer names no department, and a role limited to departments refuses
it). Texts the peer wrote (DICOM (0008,1040)/(0032,1033), HL7 MSH-5 and PV1-10) are compared without
regard to case, since sending systems disagree on it; modality codes and message types are codes and
compared exactly, as the roles compare them. Pure: no I/O, same inputs, same department.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


def fold(text: str) -> str:
    """How peer-written names are compared: Unicode case folding, surrounding blanks ignored."""
    return text.strip().casefold()


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """What the rules judge of one transfer (from its files' `ContentInfo`s). The peer's texts are kept
    out of repr, as `ContentInfo` keeps them: what a peer writes is never logged."""

    peer: str
    """The facility that sent it."""
    dicom_departments: tuple[str, ...] = field(default=(), repr=False)
    """Every distinct (0008,1040), or (0032,1033) where absent, its DICOM objects name."""
    modalities: tuple[str, ...] = ()
    """A study's distinct modalities."""
    receiving_application: str | None = field(default=None, repr=False)
    """HL7 v2 MSH-5, first component."""
    hospital_service: str | None = field(default=None, repr=False)
    """HL7 v2 PV1-10, first component."""
    message_type: str | None = None
    """HL7 v2 MSH-9's code and trigger event ("ORU^R01"), or a FHIR resourceType."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DepartmentRule:
    """One `[[departments.rule]]`: the department, when every condition given holds. An empty condition
    places no limit; a rule has at least one (the configuration refuses one without)."""

    department: str
    """The department's name, as roles name it (`departments = ["Cardiology"]`)."""
    peers: tuple[str, ...] = ()
    """Only transfers from these peer facilities."""
    dicom_departments: tuple[str, ...] = ()
    """(0008,1040)/(0032,1033) values, compared case-insensitively (kept folded)."""
    modalities: tuple[str, ...] = ()
    """Studies with any of these modalities."""
    hl7_receiving_applications: tuple[str, ...] = ()
    """MSH-5 values, compared case-insensitively (kept folded)."""
    hl7_services: tuple[str, ...] = ()
    """PV1-10 values, compared case-insensitively (kept folded)."""
    message_types: tuple[str, ...] = ()
    """HL7 code^event ("ORU^R01") or FHIR resource types, exactly."""

    def __post_init__(self) -> None:
        for name in ("dicom_departments", "hl7_receiving_applications", "hl7_services"):
            object.__setattr__(self, name, tuple(fold(v) for v in getattr(self, name)))

    def matches(self, arrival: Arrival) -> bool:
        return (
            _holds(self.peers, (arrival.peer,))
            and _holds(self.dicom_departments, (fold(d) for d in arrival.dicom_departments))
            and _holds(self.modalities, arrival.modalities)
            and _holds(self.hl7_receiving_applications, _folded(arrival.receiving_application))
            and _holds(self.hl7_services, _folded(arrival.hospital_service))
            and _holds(self.message_types, () if arrival.message_type is None else (arrival.message_type,))
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DepartmentRules:
    """A facility's `[departments]`: ordered rules, first match wins, and the default."""

    rules: tuple[DepartmentRule, ...] = ()
    default: str | None = None
    """The department of an arrival no rule names; None: it names none."""

    def names(self) -> tuple[str, ...]:
        """Every department these rules can name, each once, in order of appearance."""
        found = [rule.department for rule in self.rules]
        if self.default is not None:
            found.append(self.default)
        return tuple(dict.fromkeys(found))

    def department_of(self, arrival: Arrival) -> str | None:
        for rule in self.rules:
            if rule.matches(arrival):
                return rule.department
        return self.default


def _folded(value: str | None) -> tuple[str, ...]:
    return () if value is None else (fold(value),)


def _holds(allowed: tuple[str, ...], found: Iterable[str]) -> bool:
    """An empty condition always holds; otherwise any found value must be allowed."""
    return not allowed or any(value in allowed for value in found)
