"""The gate's shell: the model loaded once, each user's request history in memory (rebuilt at start from the
audit log's `gate_request` records over the window), the clock, the metrics, and one audit record per
request with its AU, AD, RF, score, decision and reasons. Judging is `gate.assess` (pure).

In `monitor` mode nothing is refused for the gate's sake: the record says what `enforce` would have done.
In `enforce` mode a step-up refuses the fetch unless the user holds an active break-glass grant (which
alerts and is audited on its own), and a deny refuses it whatever the grant. Refusals by the roles come
first and are not scored, but they enter the history as requests outside the user's reach: they are the
past violations RF counts.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from qlinkmed.qcore.intent.qfnn import QfnnModel
from qlinkmed.qlinkd.access.config import Role
from qlinkmed.qlinkd.access.gate import Assessment, GateDecision, GateRequest, assess, thresholds
from qlinkmed.qlinkd.access.gate_config import GateConfig, GateMode
from qlinkmed.qlinkd.access.policy import DataAttributes, User
from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.ops.audit import AuditLog, records_of

log = logging.getLogger(__name__)

GATE_EVENT = "gate_request"
SHIPPED_MODEL = "qfnn-request.json"
"""The model shipped in this package (`qlink gate evaluate`'s default run, seed 0)."""
LATENCY_SAMPLES = 10_000
"""How many recent assessment times `statistics()` summarises."""
MAX_HISTORY_PER_USER = 100_000
"""A bound on one user's remembered requests (a year of a busy reader is a few thousand)."""


def load_model(path: Path | None) -> QfnnModel:
    """The configured model file, or the shipped one; ConfigError naming the problem."""
    try:
        data = (
            path.read_bytes()
            if path is not None
            else resources.files("qlinkmed.qlinkd.access").joinpath(SHIPPED_MODEL).read_bytes()
        )
        return QfnnModel.from_bytes(data)
    except OSError as exc:
        raise ConfigError("gate.model", f"cannot read {path or SHIPPED_MODEL}: {exc}") from None
    except ValueError as exc:  # DecodeError and malformed arrays
        raise ConfigError("gate.model", str(exc)) from None


def user_departments(user: User, roles: dict[str, Role]) -> frozenset[str] | None:
    """The departments a user's requests are judged against: those the user is assigned to (`qlink user
    assign ID --department D`) and those the user's roles are limited to. None when neither names any:
    then every request is inside."""
    named = set(user.departments)
    for name in user.roles:
        role = roles.get(name)
        if role is not None:
            named.update(role.departments)
    return frozenset(named) if named else None


@dataclass(frozen=True, slots=True)
class GateOutcome:
    assessment: Assessment | None
    """None for a request the roles refused (not scored) and when the gate is off."""
    refused: bool
    """The fetch is refused for the gate's sake (enforce mode only)."""
    message: str = ""


class GateMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "qlink_gate_decisions",
            "Inbox requests scored by the intent gate, by decision and by what was done",
            ["decision", "applied"],
            registry=registry,
        )
        self.seconds = Histogram(
            "qlink_gate_assessment_seconds",
            "Time to score one request (features from the history, then the model)",
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
            registry=registry,
        )


class Gate:
    def __init__(
        self,
        config: GateConfig,
        model: QfnnModel,
        audit: AuditLog,
        *,
        roles: dict[str, Role],
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.audit = audit
        self.roles = roles
        self.clock = clock
        self.metrics = None if registry is None else GateMetrics(registry)
        self._history: dict[str, deque[GateRequest]] = {}
        self._today: dict[tuple[str, str], tuple[dt.date, Assessment | None]] = {}
        self._latency: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._counts: dict[str, int] = {d.value: 0 for d in GateDecision}

    @classmethod
    def open(
        cls,
        config: GateConfig,
        audit: AuditLog,
        *,
        roles: dict[str, Role],
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> Gate | None:
        """The gate with its model and its history read back from the audit log; None when it is off."""
        if config.mode is GateMode.OFF:
            return None
        gate = cls(config, load_model(config.model), audit, roles=roles, clock=clock, registry=registry)
        loaded = gate.load_history()
        log.info("intent gate: %s mode, %d requests of history loaded", config.mode.value, loaded)
        if config.test_clock:
            log.warning("intent gate: the test clock is on (testbeds only): its time can be set by the API")
            audit.record("gate_test_clock", enabled=True)
        return gate

    def load_history(self) -> int:
        """Rebuild every user's requests of the window from the audit log; returns how many."""
        since = self.clock() - (self.config.window_days + 1) * 86_400.0
        loaded = 0
        for record in records_of(self.audit.path, GATE_EVENT):
            request = _request_of(record)
            user = record.get("user")
            if request is None or not isinstance(user, str) or request.at < since:
                continue
            self._remember(user, request)
            loaded += 1
        return loaded

    def _remember(self, user_id: str, request: GateRequest) -> None:
        self._history.setdefault(user_id, deque(maxlen=MAX_HISTORY_PER_USER)).append(request)

    def _prune(self, user_id: str, now: float) -> list[GateRequest]:
        history = self._history.get(user_id)
        if not history:
            return []
        since = now - (self.config.window_days + 1) * 86_400.0
        while history and history[0].at < since:
            history.popleft()
        return list(history)

    def _day(self, at: float) -> dt.date:
        return dt.datetime.fromtimestamp(at, self.config.zone).date()

    def check(self, user: User, data: DataAttributes, *, volume: int, allowed_by_roles: bool) -> GateOutcome:
        """Score `user`'s read of `data` (its first read today), record it, audit it, and say whether to
        refuse it. A read the roles refused is recorded as a request outside the user's reach and not
        scored."""
        now = self.clock()
        day = self._day(now)
        seen = self._today.get((user.id, data.transfer_id))
        if seen is not None and seen[0] == day:
            return self._apply(user, seen[1], repeated=True)
        departments = user_departments(user, self.roles)
        inside = allowed_by_roles and (departments is None or data.department in departments)
        request = GateRequest(
            at=now, transfer=data.transfer_id, department=data.department, inside=inside, volume=volume
        )
        history = self._prune(user.id, now)
        assessment: Assessment | None = None
        if allowed_by_roles:
            started = time.perf_counter()
            assessment = assess(self.model, history, request, self.config, departments=departments)
            elapsed = time.perf_counter() - started
            self._latency.append(elapsed)
            if self.metrics is not None:
                self.metrics.seconds.observe(elapsed)
        self._remember(user.id, request)
        if len(self._today) > 100_000:  # yesterday's entries go at the first crowded moment of a new day
            self._today = {k: v for k, v in self._today.items() if v[0] == day}
        self._today[(user.id, data.transfer_id)] = (day, assessment)
        outcome = self._apply(user, assessment, repeated=False)
        self._audit(user, request, assessment, outcome)
        return outcome

    def _apply(self, user: User, assessment: Assessment | None, *, repeated: bool) -> GateOutcome:
        if assessment is None or assessment.decision is GateDecision.ALLOW:
            return GateOutcome(assessment, refused=False)
        if self.config.mode is not GateMode.ENFORCE:
            return GateOutcome(assessment, refused=False)
        if assessment.decision is GateDecision.STEP_UP and user.break_glass_active(self.clock()):
            return GateOutcome(assessment, refused=False, message="stepped up: allowed under break-glass")
        if assessment.decision is GateDecision.STEP_UP:
            return GateOutcome(
                assessment,
                refused=True,
                message=(
                    f"the intent gate asks {user.name} to step up before this fetch: run qlink user"
                    " break-glass --reason TEXT (audited and alerted) if the need is real"
                ),
            )
        return GateOutcome(
            assessment,
            refused=True,
            message=f"the intent gate refuses this fetch by {user.name}; the security officer is alerted",
        )

    def _audit(
        self, user: User, request: GateRequest, assessment: Assessment | None, outcome: GateOutcome
    ) -> None:
        fields: dict[str, object] = {
            "user": user.id,
            "transfer": request.transfer,
            "department": request.department,
            "inside": request.inside,
            "volume": request.volume,
            "at": request.at,
            "mode": self.config.mode.value,
        }
        if assessment is None:
            fields["decision"] = "refused-by-roles"
        else:
            applied = "refused" if outcome.refused else "allowed"
            fields.update(
                au=assessment.au,
                ad=round(assessment.ad, 6),
                rf=round(assessment.rf, 6),
                score=round(assessment.probability, 6),
                decision=assessment.decision.value,
                applied=applied,
                reasons=list(assessment.reasons),
            )
            self._counts[assessment.decision.value] += 1
            if self.metrics is not None:
                self.metrics.decisions.labels(assessment.decision.value, applied).inc()
        self.audit.record(GATE_EVENT, **fields)

    def statistics(self) -> dict[str, object]:
        """What GET /v1/gate and `qlink status` show: mode, thresholds, counts, assessment latency."""
        step_up, deny = thresholds(self.model, self.config)
        samples = np.array(self._latency, dtype=np.float64)
        latency = (
            {
                "samples": int(samples.size),
                "p50_ms": float(np.percentile(samples, 50) * 1e3),
                "p99_ms": float(np.percentile(samples, 99) * 1e3),
            }
            if samples.size
            else {"samples": 0}
        )
        return {
            "mode": self.config.mode.value,
            "model": str(self.config.model) if self.config.model is not None else f"shipped {SHIPPED_MODEL}",
            "feature_set": self.model.feature_set.name,
            "qubits": self.model.qubits,
            "step_up_at": step_up,
            "deny_at": deny,
            "window_days": self.config.window_days,
            "work_hours": list(self.config.work_hours),
            "timezone": self.config.timezone,
            "test_clock": self.config.test_clock,
            "decisions": dict(self._counts),
            "users_with_history": len(self._history),
            "latency": latency,
        }


def _request_of(record: dict[str, object]) -> GateRequest | None:
    """The request an audit record describes, or None for a record that is not one (edited or older)."""
    at, transfer, department = record.get("at"), record.get("transfer"), record.get("department")
    inside, volume = record.get("inside"), record.get("volume")
    if not isinstance(at, int | float) or isinstance(at, bool) or not isinstance(transfer, str):
        return None
    if not isinstance(inside, bool) or not isinstance(volume, int) or isinstance(volume, bool):
        return None
    if department is not None and not isinstance(department, str):
        return None
    return GateRequest(at=float(at), transfer=transfer, department=department, inside=inside, volume=volume)
