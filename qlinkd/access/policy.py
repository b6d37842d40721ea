"""Who may read what: a pure function of the user, the facility's roles, the transfer's attributes and the
time (`decide`). No I/O: the shell (`access/service.py`) loads the user and audits the decision.

A user reads a transfer when one of the user's roles allows every dimension of it (kind, sending peer,
modalities, message type, department, patient); the reasons say in plain words which role allowed it or
why each role did not. An active break-glass grant allows what the roles refuse, and says so: every read
under it is audited as a break-glass read. A disabled user reads nothing, whatever the grant."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass

from qlinkmed.qlinkd.access.config import PatientScope, Role
from qlinkmed.qlinkd.dataplane.manifest import Manifest, TransferKind


class UserState(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    id: str
    name: str
    roles: tuple[str, ...]
    state: UserState
    created_at: float
    rotated_at: float
    """When the user's token was last issued (at `add`, then at each `rotate`)."""
    patients: frozenset[str] = frozenset()
    """Patient ids assigned to the user (for roles with ``patients = "assigned"``)."""
    departments: frozenset[str] = frozenset()
    """The departments the user works for (`qlink user assign ID --department D`): not a limit on what
    the roles allow, but what the intent gate judges requests against (AD, RF)."""
    break_glass_until: float | None = None
    break_glass_reason: str | None = None

    def break_glass_active(self, now: float) -> bool:
        return self.break_glass_until is not None and now < self.break_glass_until

    def to_json(self, now: float) -> dict[str, object]:
        active = self.break_glass_active(now)
        return {
            "id": self.id,
            "name": self.name,
            "roles": list(self.roles),
            "state": self.state.value,
            "created_at": self.created_at,
            "rotated_at": self.rotated_at,
            "patients": len(self.patients),
            "departments": sorted(self.departments),
            "break_glass_until": self.break_glass_until if active else None,
            "break_glass_reason": self.break_glass_reason if active else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DataAttributes:
    """What the policy knows of one transfer: its manifest, and the summary recorded on arrival
    (modalities, message type, patient, department). A field the content did not carry (or that a
    transfer delivered before its column existed lacks) is None or empty; a role that limits a dimension
    refuses a transfer whose value for it is not recorded."""

    transfer_id: str
    kind: TransferKind
    peer: str
    """The facility that sent it."""
    contents: tuple[str, ...] = ()
    """Its files' content kinds (dicom, png, jpeg, fhir, hl7), each once."""
    modalities: tuple[str, ...] = ()
    message_type: str | None = None
    patient_id: str | None = None
    department: str | None = None

    @classmethod
    def from_manifest(
        cls,
        manifest: Manifest,
        *,
        modalities: tuple[str, ...] = (),
        message_type: str | None = None,
        patient_id: str | None = None,
        department: str | None = None,
    ) -> DataAttributes:
        return cls(
            transfer_id=manifest.transfer_id,
            kind=manifest.kind,
            peer=manifest.sender,
            contents=tuple(dict.fromkeys(f.content for f in manifest.files)),
            modalities=modalities,
            message_type=message_type,
            patient_id=patient_id,
            department=department,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    reasons: tuple[str, ...]
    break_glass: bool = False
    """Allowed only by an active break-glass grant (the read is audited as such)."""


_NOUN = {TransferKind.STUDY: "study", TransferKind.IMAGES: "image set", TransferKind.EHR: "message"}


def _listed(values: tuple[str, ...]) -> str:
    return ", ".join(values)


def _refusal(role: Role, user: User, data: DataAttributes) -> str | None:
    """Why `role` does not allow `data` to `user`, or None when it does."""
    noun, may = _NOUN[data.kind], f"role {role.name} may see"
    if data.kind not in role.kinds:
        kinds = _listed(tuple(k.value for k in role.kinds))
        return f"{may} {kinds}; this transfer is {data.kind.value}"
    if role.peers and data.peer not in role.peers:
        return f"{may} data from {_listed(role.peers)}; this {noun} came from {data.peer}"
    if role.modalities and data.kind is TransferKind.STUDY:
        allowed = f"{may} studies of modality {_listed(role.modalities)}"
        if not data.modalities:
            return f"{allowed}; this study's modality is not recorded"
        if any(m not in role.modalities for m in data.modalities):
            return f"{allowed}; this study is {_listed(data.modalities)}"
    if role.message_types and data.kind is TransferKind.EHR:
        allowed = f"{may} messages of type {_listed(role.message_types)}"
        if data.message_type is None:
            return f"{allowed}; this message's type is not recorded"
        if data.message_type not in role.message_types:
            return f"{allowed}; this message is {data.message_type}"
    if role.departments:
        allowed = f"{may} data for {_listed(role.departments)}"
        if data.department is None:
            return f"{allowed}; this {noun} names no department"
        if data.department not in role.departments:
            return f"{allowed}; this {noun} is for {data.department}"
    if role.patients is PatientScope.ASSIGNED:
        # The patient id is not quoted: reasons reach the audit log and the user.
        allowed = f"{may} only patients assigned to {user.name}"
        if data.patient_id is None:
            return f"{allowed}; this {noun} names no patient"
        if data.patient_id not in user.patients:
            return f"{allowed}; this {noun}'s patient is not"
    return None


def _when(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def decide(user: User, roles: Mapping[str, Role], data: DataAttributes, now: float) -> Decision:
    """May `user` read `data` at `now` (wall-clock seconds)? Pure: same inputs, same decision."""
    if user.state is not UserState.ACTIVE:
        return Decision(False, (f"user {user.name} is {user.state.value}",))
    reasons: list[str] = []
    for name in user.roles:
        role = roles.get(name)
        if role is None:
            reasons.append(f"role {name} is not defined in the facility configuration")
            continue
        refusal = _refusal(role, user, data)
        if refusal is None:
            return Decision(True, (f"role {name} allows this {_NOUN[data.kind]} from {data.peer}",))
        reasons.append(refusal)
    if not user.roles:
        reasons.append(f"user {user.name} holds no role")
    if user.break_glass_active(now) and user.break_glass_until is not None:
        granted = f"break-glass until {_when(user.break_glass_until)}: {user.break_glass_reason}"
        return Decision(True, (*reasons, granted), break_glass=True)
    return Decision(False, tuple(reasons))
