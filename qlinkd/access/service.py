"""The daemon's access shell: the user store, the roles, the audit log, the metrics and the clock put
together, so the local API asks one object "who is this" and "may they read that", and every answer that
matters is audited. Decisions themselves are `policy.decide` (pure); expiry of break-glass is checked on
every request against the clock, so no timer is needed for it to end."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from qlinkmed.qlinkd.access.config import AccessConfig
from qlinkmed.qlinkd.access.policy import DataAttributes, Decision, User, decide
from qlinkmed.qlinkd.access.store import DEPARTMENT, UserStore
from qlinkmed.qlinkd.content.summary import MODALITY_SEPARATOR, InboxSummary
from qlinkmed.qlinkd.dataplane.manifest import TransferKind
from qlinkmed.qlinkd.dataplane.records import InboxEntry, IncomingRecord
from qlinkmed.qlinkd.errors import AccessError
from qlinkmed.qlinkd.ops.audit import AuditLog, rfc3339

MAX_REASON_CHARS = 500
T = TypeVar("T")


def _message_type(written: str | None) -> str | None:
    """HL7 MSH-9 as a role names it: message code and trigger event ("ORU^R01" of "ORU^R01^ORU_R01");
    a FHIR type as written."""
    if written is None or "^" not in written:
        return written
    return "^".join(written.split("^")[:2])


def attributes_of(record: IncomingRecord, summary: InboxSummary | None) -> DataAttributes:
    """What the policy judges of an inbox entry: its manifest and the summary stored on arrival
    (modalities, message type, patient, and the department the facility's `[departments]` named; a
    transfer that names none is refused by a role limited to departments, which says so)."""
    known = summary or InboxSummary()
    return DataAttributes.from_manifest(
        record.manifest,
        modalities=tuple(known.modalities.split(MODALITY_SEPARATOR)) if known.modalities else (),
        message_type=_message_type(known.message_type),
        patient_id=known.patient_id,
        department=known.department,
    )


def attributes_of_entry(entry: InboxEntry) -> DataAttributes:
    """The same for a row of the inbox listing (no manifest read), department included."""
    known = entry.summary
    return DataAttributes(
        transfer_id=entry.transfer_id,
        kind=TransferKind(entry.kind),
        peer=entry.peer,
        modalities=tuple(known.modalities.split(MODALITY_SEPARATOR)) if known.modalities else (),
        message_type=_message_type(known.message_type),
        patient_id=known.patient_id,
        department=known.department,
    )


def _stamp(seconds: float) -> str:
    return rfc3339(dt.datetime.fromtimestamp(seconds, dt.UTC))


class AccessMetrics:
    """Break-glass on /metrics: `qlink_break_glass_grants_total` (a counter of grants) and
    `qlink_break_glass_active` (grants not yet expired, read at each scrape), and
    `qlink_access_denied_total` (reads refused by the policy)."""

    def __init__(self, registry: CollectorRegistry, active: Callable[[], int]) -> None:
        self.grants = Counter("qlink_break_glass_grants", "Break-glass grants made", registry=registry)
        self.active = Gauge(
            "qlink_break_glass_active", "Users whose break-glass grant has not expired", registry=registry
        )
        self.active.set_function(lambda: float(active()))
        self.denied = Counter(
            "qlink_access_denied", "Inbox reads refused by the access policy", registry=registry
        )


class Access:
    def __init__(
        self,
        store: UserStore,
        config: AccessConfig,
        audit: AuditLog,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        departments: tuple[str, ...] | None = None,
    ) -> None:
        """`departments`: every department the facility's `[departments]` can name (None: no such
        table), so a user cannot be given a misspelt one."""
        self.store = store
        self.departments = departments
        self.config = config
        self.roles = config.role_map()
        self.audit = audit
        self.clock = clock
        self.metrics = None if registry is None else AccessMetrics(registry, self.active_count)

    @classmethod
    def open(
        cls,
        state_dir: Path,
        config: AccessConfig,
        audit: AuditLog,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        departments: tuple[str, ...] | None = None,
    ) -> Access:
        return cls(
            UserStore.open(state_dir), config, audit, registry=registry, clock=clock, departments=departments
        )

    def close(self) -> None:
        self.store.close()

    def active_count(self) -> int:
        return len(self.store.break_glass_active(self.clock()))

    def authenticate(self, token: str) -> User | None:
        """The user holding `token`, in whatever state (the caller refuses a disabled one), or None."""
        return self.store.by_token(token)

    def decide(self, user: User, data: DataAttributes) -> Decision:
        decision = decide(user, self.roles, data, self.clock())
        if not decision.allow and self.metrics is not None:
            self.metrics.denied.inc()
        return decision

    def check_read(self, user: User, data: DataAttributes, *, file: int | None = None) -> Decision:
        """Decide one read of an inbox entry (its manifest, or its file `file`) and audit it, allowed or
        not, as `inbox_fetch` with the user, the transfer and whether only break-glass allowed it."""
        decision = self.decide(user, data)
        self.audit.record(
            "inbox_fetch",
            user=user.id,
            transfer=data.transfer_id,
            file=file,
            decision="allow" if decision.allow else "deny",
            break_glass=decision.break_glass,
            reasons=list(decision.reasons),
        )
        return decision

    def visible(self, user: User, entries: Iterable[tuple[DataAttributes, T]]) -> tuple[list[T], int]:
        """The entries `user` may see (in order) and how many were hidden; audited as `inbox_list`."""
        now = self.clock()
        shown: list[T] = []
        hidden = under_glass = 0
        for data, entry in entries:
            decision = decide(user, self.roles, data, now)
            if decision.allow:
                shown.append(entry)
                under_glass += decision.break_glass
            else:
                hidden += 1
        self.audit.record(
            "inbox_list", user=user.id, shown=len(shown), hidden=hidden, break_glass=under_glass
        )
        return shown, hidden

    # ------------------------------------------------------------------ administration (facility token)

    def _check_roles(self, roles: tuple[str, ...]) -> None:
        for role in roles:
            if role not in self.roles:
                defined = ", ".join(self.roles) or "none: add [[access.role]] to the configuration"
                raise AccessError(f"role {role!r} is not defined (defined: {defined})", field="roles")

    def add(
        self, name: str, roles: tuple[str, ...], *, by: str, departments: tuple[str, ...] = ()
    ) -> tuple[User, str]:
        self._check_roles(roles)
        for department in departments:
            self._check_department(department, "departments")
        user, token = self.store.add(name, roles, self.clock())
        for department in departments:
            user = self.store.assign_department(user.id, department)
        self.audit.record(
            "user_added",
            user=user.id,
            name=user.name,
            roles=list(roles),
            departments=list(departments),
            by=by,
        )
        return user, token

    def disable(self, user_id: str, *, by: str) -> User:
        user = self.store.disable(user_id)
        self.audit.record("user_disabled", user=user.id, name=user.name, by=by)
        return user

    def rotate(self, user_id: str, *, by: str) -> tuple[User, str]:
        user, token = self.store.rotate(user_id, self.clock())
        self.audit.record("user_rotated", user=user.id, name=user.name, by=by)
        return user, token

    def assign(self, user_id: str, patient: str, *, assigned: bool, by: str) -> User:
        user = self.store.assign(user_id, patient, assigned=assigned)
        event = "user_patient_assigned" if assigned else "user_patient_unassigned"
        self.audit.record(event, user=user.id, patient=patient, by=by)
        return user

    def _check_department(self, department: str, field: str) -> None:
        if not DEPARTMENT.fullmatch(department):
            raise AccessError("a department is 1..64 printable characters", field=field)
        known = self.departments
        if known is not None and department not in known:
            near = [k for k in known if k.casefold() == department.casefold()]
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise AccessError(
                f"department {department!r} is not one the facility's [departments] can name{hint};"
                f" known: {', '.join(known)}",
                field=field,
            )

    def assign_department(self, user_id: str, department: str, *, assigned: bool, by: str) -> User:
        if assigned:
            self._check_department(department, "department")
        user = self.store.assign_department(user_id, department, assigned=assigned)
        event = "user_department_assigned" if assigned else "user_department_unassigned"
        self.audit.record(event, user=user.id, department=department, by=by)
        return user

    # ------------------------------------------------------------------ break-glass (the user's token)

    def break_glass(self, user: User, reason: str, seconds: float | None) -> User:
        """Grant `user` access beyond the roles until now + `seconds` (the configured default when None).
        Audited and counted before it is returned; AccessError names a refused reason or period."""
        reason = reason.strip()
        if not reason or len(reason) > MAX_REASON_CHARS or not reason.isprintable():
            raise AccessError(
                f"break-glass needs a reason: 1..{MAX_REASON_CHARS} printable characters", field="reason"
            )
        cfg = self.config
        length = cfg.break_glass_default_s if seconds is None else seconds
        if not cfg.break_glass_min_s <= length <= cfg.break_glass_max_s:
            raise AccessError(
                f"break-glass lasts {cfg.break_glass_min_s / 60:g}..{cfg.break_glass_max_s / 60:g} minutes"
                f" here, not {length / 60:g}",
                field="minutes",
            )
        until = self.clock() + length
        granted = self.store.grant_break_glass(user.id, until, reason)
        self.audit.record("break_glass", user=user.id, name=user.name, reason=reason, until=_stamp(until))
        if self.metrics is not None:
            self.metrics.grants.inc()
        return granted

    def status_json(self) -> dict[str, object]:
        """What `qlink status` shows: every active break-glass grant (an alarm until it expires)."""
        now = self.clock()
        return {
            "users": self.store.count(),
            "break_glass": [
                {"user": u.id, "name": u.name, "until": u.break_glass_until, "reason": u.break_glass_reason}
                for u in self.store.break_glass_active(now)
            ],
        }
