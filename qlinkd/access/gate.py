"""The request-intention gate's judgement of one request (seed paper 003, Eqs. 8-19 and the QFNN): a pure
function of the user's past requests, the new one, the model and the configuration (`assess`). No I/O and
no clock: the shell (`gate_service.py`) keeps the history, reads the time and audits.

A request is the first read of a transfer by a user on a day (its manifest or any file: a client cannot
skip the gate by asking for a file directly). Reads of the same transfer later that day are the same
request. Each one is placed in a requests table with the training schema (`qcore.intent.cert_schema`) and
turned into the `request` features by the same function that made the training rows
(`qcore.intent.features.user_day_features`), for today so far:

- AU (Eq. 11): 1 when the user has no request before today;
- AD (Eqs. 12-13, as a fraction): today's requests outside the user's departments, over today's requests;
- RF (Eqs. 14-18): Pi x FDB over the window before today (Pi: the share of the user's requests that were
  outside the user's departments or refused by the roles; FDB: how many there were);
- how many other departments were asked today, and today's count, volume and night share against the
  user's own active days in the window.

The model gives P(malicious); `step_up_at` and `deny_at` turn it into a decision. The reasons say in plain
words what stood out, so a clinician stepped up knows why.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qlinkmed.qcore.intent.features import REQUEST, user_day_features
from qlinkmed.qcore.intent.qfnn import QfnnModel
from qlinkmed.qlinkd.access.gate_config import GateConfig

_INSIDE = "\x00inside"
"""The department name every request inside the user's departments is filed under: whether a request was
inside is decided when it is made (with the roles and departments of that moment) and only that matters
to the features, so the history need not be re-judged when a user's departments change."""
_NO_DEPARTMENT = "(no department)"
_USER = "user"


class GateDecision(enum.StrEnum):
    ALLOW = "allow"
    STEP_UP = "step-up"
    """Allowed only under an active break-glass grant (`qlink user break-glass --reason ...`)."""
    DENY = "deny"


@dataclass(frozen=True, slots=True, kw_only=True)
class GateRequest:
    """One request as the history keeps it (and as the audit's `gate_request` records carry it)."""

    at: float
    """Epoch seconds."""
    transfer: str
    department: str | None
    inside: bool
    """Inside the user's departments and allowed by the user's roles when it was made."""
    volume: int
    """The transfer's bytes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Assessment:
    au: float
    ad: float
    rf: float
    features: dict[str, float]
    probability: float
    decision: GateDecision
    reasons: tuple[str, ...]
    """Plain words, most telling first; the score and the thresholds last."""


def thresholds(model: QfnnModel, config: GateConfig) -> tuple[float, float]:
    """(step-up, deny) probabilities: the configured ones, the model's operating threshold for step-up
    when none is configured (0.5 for a model that has none), never above deny."""
    step_up = config.step_up_at
    if step_up is None:
        step_up = model.threshold if model.threshold is not None else 0.5
    return min(step_up, config.deny_at), config.deny_at


def _local(at: float, config: GateConfig) -> dt.datetime:
    return dt.datetime.fromtimestamp(at, config.zone).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class _Day:
    """The user's requests placed in local time once (each conversion costs a zone lookup): those of the
    window before today (`past`) and today's so far, the new request last (`today`)."""

    past: list[tuple[GateRequest, dt.datetime]]
    today: list[tuple[GateRequest, dt.datetime]]
    midnight: dt.datetime

    @classmethod
    def of(cls, history: Sequence[GateRequest], request: GateRequest, config: GateConfig) -> _Day:
        now = _local(request.at, config)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        start, tomorrow = midnight - dt.timedelta(days=config.window_days), midnight + dt.timedelta(days=1)
        past, today = [], []
        for r in history:
            moment = _local(r.at, config)
            if start <= moment < midnight:
                past.append((r, moment))
            elif midnight <= moment < tomorrow:
                today.append((r, moment))
        today.append((request, now))
        return cls(past, today, midnight)


def _table(placed: Sequence[tuple[GateRequest, dt.datetime]]) -> dict[str, np.ndarray]:
    departments = [_INSIDE if r.inside else (r.department or _NO_DEPARTMENT) for r, _ in placed]
    return {
        "user": np.full(len(placed), _USER),
        "date": np.array([moment for _, moment in placed], dtype="datetime64[s]"),
        "department": np.array(departments, dtype=object),
        "volume": np.array([r.volume for r, _ in placed], dtype=np.float64),
    }


def request_features(
    history: Sequence[GateRequest], request: GateRequest, config: GateConfig
) -> dict[str, float]:
    """The `request` features of the user's day so far, `request` included (it is the latest)."""
    return _features(_Day.of(history, request, config), config)


def _features(day: _Day, config: GateConfig) -> dict[str, float]:
    features = user_day_features(
        {"requests": _table(day.past + day.today)},
        user_ids=np.array([_USER]),
        own_pc=np.array([""]),
        authorised=np.ones((1, 1), dtype=bool),
        start=np.datetime64(day.midnight - dt.timedelta(days=config.window_days), "s"),
        days=config.window_days + 1,
        window=config.window_days,
        departments=(_INSIDE,),
        work_hours=config.work_hours,
    ).subset(REQUEST)
    last = int(np.flatnonzero(features.day == config.window_days)[-1])
    return {name: float(v) for name, v in zip(REQUEST.names, features.x[last], strict=True)}


def assess(
    model: QfnnModel,
    history: Sequence[GateRequest],
    request: GateRequest,
    config: GateConfig,
    *,
    departments: frozenset[str] | None,
) -> Assessment:
    """Score `request` against the user's `history` (earlier requests, any order). `departments`: the
    user's departments, for the reasons (None: the user is limited to none)."""
    day = _Day.of(history, request, config)
    features = _features(day, config)
    x = np.array([[features[name] for name in model.feature_set.names]])
    probability = float(model.score(x)[0])
    step_up, deny = thresholds(model, config)
    if probability >= deny:
        decision = GateDecision.DENY
    elif probability >= step_up:
        decision = GateDecision.STEP_UP
    else:
        decision = GateDecision.ALLOW
    reasons = _reasons(day, config, features, departments)
    reasons.append(
        f"intent score {probability:.2f} (step-up from {step_up:.2f}, refusal from {deny:.2f};"
        f" model {model.feature_set.name} QFNN, {model.qubits} qubits)"
    )
    return Assessment(
        au=features["au_new"],
        ad=features["ad_fraction"],
        rf=features["rf"],
        features=features,
        probability=probability,
        decision=decision,
        reasons=tuple(reasons),
    )


def _reasons(
    day: _Day, config: GateConfig, features: dict[str, float], departments: frozenset[str] | None
) -> list[str]:
    todays = [r for r, _ in day.today]
    past = [r for r, _ in day.past]
    reasons: list[str] = []
    outside = [r for r in todays if not r.inside]
    if outside:
        yours = ", ".join(sorted(departments)) if departments else "none"
        others = sorted({r.department or _NO_DEPARTMENT for r in outside})
        reasons.append(
            f"{len(outside)} of the {len(todays)} transfers you asked for today lie outside your"
            f" departments ({yours}): {', '.join(others)}"
        )
    start, end = config.work_hours
    night = sum(not start <= _hour(moment) < end for _, moment in day.today)
    if night:
        usual = sum(not start <= _hour(moment) < end for _, moment in day.past) / len(past) if past else 0.0
        reasons.append(
            f"{night} of today's {len(todays)} requests came outside working hours"
            f" ({start:02.0f}:00-{end:02.0f}:00 {config.timezone}); usually {usual:.0%} of yours do"
        )
    past_days = {moment.date() for _, moment in day.past}
    if past_days:
        usual_count = len(past) / len(past_days)
        if len(todays) > 2 * usual_count:
            reasons.append(
                f"{len(todays)} transfers asked for today; on your active days of the past"
                f" {config.window_days} you asked for {usual_count:.1f}"
            )
    else:
        reasons.append(f"no requests of yours in the past {config.window_days} days to compare with")
    refused = [r for r in past if not r.inside]
    if refused:
        reasons.append(
            f"{len(refused)} of your {len(past)} requests in the past {config.window_days} days were outside"
            " your departments or refused"
        )
    if features["au_new"] >= 1.0 and not past:
        reasons.insert(0, "this is your first day of requests here")
    return reasons


def _hour(moment: dt.datetime) -> float:
    return moment.hour + moment.minute / 60 + moment.second / 3600
