"""The request-intention gate (issue 18, item 2): its configuration, its pure judgement (`gate.assess`) with
the model shipped in the package, and its shell (`Gate`): monitor and enforce modes, step-up satisfied by
break-glass, deny refused whatever the grant, one audit record per request, and the history rebuilt from
the audit log after a restart giving the same judgement."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from qlinkmed.qcore.intent.features import REQUEST, user_day_features
from qlinkmed.qlinkd.access.config import Role
from qlinkmed.qlinkd.access.gate import GateDecision, GateRequest, assess, request_features
from qlinkmed.qlinkd.access.gate_config import GateConfig, GateMode, gate_section
from qlinkmed.qlinkd.access.gate_service import Gate, load_model, user_departments
from qlinkmed.qlinkd.access.policy import DataAttributes, User, UserState
from qlinkmed.qlinkd.dataplane.manifest import TransferKind
from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.ops.audit import AuditLog
from qlinkmed.qlinkd.ops.toml_reader import Table

TODAY = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()
HOUR = 3600.0
DAY = 86_400.0
MODEL = load_model(None)
CLINICIAN = Role(name="clinician", kinds=(TransferKind.STUDY,))


def _history(seed: int, *, department: str = "Radiology", night: bool = False) -> list[GateRequest]:
    """30 days of an ordinary user: active 3 days in 4, 1-7 requests a day in the shift, own department."""
    rng = np.random.default_rng(seed)
    out = []
    for back in range(30, 0, -1):
        if rng.random() < 0.25:
            continue
        for k in range(int(rng.integers(1, 8))):
            hour = (22 + 7 * rng.random()) % 24 if night else 8 + 9 * rng.random()
            out.append(
                GateRequest(
                    at=TODAY - back * DAY + hour * HOUR,
                    transfer=f"h{back}-{k}",
                    department=department,
                    inside=True,
                    volume=int(rng.integers(100_000, 50_000_000)),
                )
            )
    return out


def _request(hour: float, k: int, department: str, *, inside: bool) -> GateRequest:
    return GateRequest(
        at=TODAY + hour * HOUR, transfer=f"t{k}", department=department, inside=inside, volume=20_000_000
    )


def test_the_shipped_model_is_the_request_feature_qfnn_with_its_threshold() -> None:
    assert MODEL.feature_set is REQUEST
    assert MODEL.qubits == 4 and MODEL.threshold is not None and 0 < MODEL.threshold < 1


def test_the_features_match_the_training_function_on_a_requests_table() -> None:
    """The gate computes features through `user_day_features`: the same numbers as a table built by hand
    with the training schema (the daemon and the evaluation cannot drift apart)."""
    history = _history(1)
    request = _request(23.0, 0, "Cardiology", inside=False)
    got = request_features(history, request, GateConfig())
    start = np.datetime64(dt.datetime(2026, 11, 1), "s")
    rows = [*history, request]
    table = {
        "user": np.array(["u"] * len(rows)),
        "date": np.array(
            [np.datetime64(dt.datetime.fromtimestamp(r.at, dt.UTC).replace(tzinfo=None), "s") for r in rows]
        ),
        "department": np.array([r.department for r in rows]),
        "volume": np.array([float(r.volume) for r in rows]),
    }
    expected = user_day_features(
        {"requests": table},
        user_ids=np.array(["u"]),
        own_pc=np.array([""]),
        authorised=np.array([[True]]),
        start=start,
        days=31,
        departments=("Radiology",),
    ).subset(REQUEST)
    last = int(np.flatnonzero(expected.day == 30)[-1])
    assert got == pytest.approx(dict(zip(REQUEST.names, expected.x[last], strict=True)))
    assert got["ad_fraction"] == 1.0 and got["unauth_departments"] == 1.0 and got["au_new"] == 0.0


def test_ordinary_days_pass_and_an_insiders_night_of_other_departments_is_stepped_up_at_once() -> None:
    config = GateConfig()
    radiology = frozenset({"Radiology"})
    for seed in range(5):
        history = _history(seed)
        for k in range(6):
            request = _request(10.0 + k, k, "Radiology", inside=True)
            verdict = assess(MODEL, history, request, config, departments=radiology)
            assert verdict.decision is GateDecision.ALLOW, (seed, k, verdict.probability)
            history.append(request)
    # A night-shift user asking at night is ordinary too: night is judged against the user's own past.
    history = _history(7, night=True)
    verdict = assess(
        MODEL, history, _request(23.5, 0, "Radiology", inside=True), config, departments=radiology
    )
    assert verdict.decision is GateDecision.ALLOW
    # The insider: the same kind of history, then other departments' studies at 23:00.
    history = _history(11)
    first = assess(
        MODEL, history, _request(23.0, 0, "Cardiology", inside=False), config, departments=radiology
    )
    assert first.decision is GateDecision.STEP_UP
    assert first.ad == 1.0 and first.au == 0.0
    text = " | ".join(first.reasons)
    assert (
        "1 of the 1 transfers you asked for today lie outside your departments (Radiology): Cardiology"
        in text
    )
    assert "outside working hours (07:00-19:00 UTC); usually 0% of yours do" in text
    assert f"step-up from {MODEL.threshold:.2f}" in first.reasons[-1]


def _user(**kw: object) -> User:
    fields: dict[str, object] = {
        "id": "u-1",
        "name": "insider",
        "roles": ("clinician",),
        "state": UserState.ACTIVE,
        "created_at": 0.0,
        "rotated_at": 0.0,
        "departments": frozenset({"Radiology"}),
    }
    fields.update(kw)
    return User(**fields)  # type: ignore[arg-type]


def _data(k: int | str, department: str) -> DataAttributes:
    return DataAttributes(
        transfer_id=f"t{k}", kind=TransferKind.STUDY, peer="hospital-a", department=department
    )


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _gate(tmp_path: Path, mode: GateMode, clock: _Clock, **config: object) -> tuple[Gate, AuditLog]:
    audit = AuditLog.open(tmp_path / "audit.jsonl", facility="hospital-b")
    gate = Gate.open(
        GateConfig(mode=mode, **config),  # type: ignore[arg-type]
        audit,
        roles={"clinician": CLINICIAN},
        clock=clock,
        registry=CollectorRegistry(),
    )
    assert gate is not None
    return gate, audit


def _replay(gate: Gate, clock: _Clock, user: User) -> None:
    for request in _history(11):
        clock.now = request.at
        outcome = gate.check(
            user,
            _data(request.transfer, "Radiology"),
            volume=request.volume,
            allowed_by_roles=True,
        )
        assert not outcome.refused


def test_monitor_scores_and_audits_but_never_refuses(tmp_path: Path) -> None:
    clock = _Clock(TODAY)
    gate, audit = _gate(tmp_path, GateMode.MONITOR, clock)
    user = _user()
    _replay(gate, clock, user)
    clock.now = TODAY + 23 * HOUR
    outcome = gate.check(user, _data(1, "Oncology"), volume=10_000_000, allowed_by_roles=True)
    assert not outcome.refused and outcome.assessment is not None
    assert outcome.assessment.decision is GateDecision.STEP_UP
    audit.close()
    last = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "gate_request" and last["mode"] == "monitor"
    assert last["decision"] == "step-up" and last["applied"] == "allowed"
    assert last["department"] == "Oncology" and last["inside"] is False and last["ad"] == 1.0


def test_enforce_steps_up_break_glass_lets_through_and_deny_refuses_whatever_the_grant(
    tmp_path: Path,
) -> None:
    clock = _Clock(TODAY)
    gate, audit = _gate(tmp_path, GateMode.ENFORCE, clock, deny_at=0.75)
    user = _user()
    _replay(gate, clock, user)
    clock.now = TODAY + 23 * HOUR
    first = gate.check(user, _data(1, "Oncology"), volume=10_000_000, allowed_by_roles=True)
    assert first.refused and "step up" in first.message
    # The same transfer again is the same request: not counted twice, still refused without a grant.
    assert gate.check(user, _data(1, "Oncology"), volume=10_000_000, allowed_by_roles=True).refused
    assert gate.statistics()["decisions"] == {"allow": len(_history(11)), "step-up": 1, "deny": 0}
    glass = _user(break_glass_until=clock.now + HOUR, break_glass_reason="night consults")
    assert not gate.check(glass, _data(1, "Oncology"), volume=10_000_000, allowed_by_roles=True).refused
    refused_at = None
    for k in range(2, 30):
        clock.now += 120
        outcome = gate.check(glass, _data(k, "Neurology"), volume=10_000_000, allowed_by_roles=True)
        if outcome.refused:
            refused_at = k
            assert outcome.assessment is not None and outcome.assessment.decision is GateDecision.DENY
            assert "refuses" in outcome.message
            break
    assert refused_at is not None and refused_at < 15
    audit.close()


def test_a_restart_rebuilds_the_history_from_the_audit_and_judges_alike(tmp_path: Path) -> None:
    clock = _Clock(TODAY)
    gate, audit = _gate(tmp_path, GateMode.MONITOR, clock)
    user = _user()
    _replay(gate, clock, user)
    clock.now = TODAY + 23 * HOUR
    # A request the roles refused is recorded (not scored): a past violation for RF tomorrow.
    refused = gate.check(user, _data(99, "Oncology"), volume=1_000, allowed_by_roles=False)
    assert refused.assessment is None and not refused.refused
    clock.now = TODAY + DAY + 10 * HOUR
    before = gate.check(user, _data(100, "Radiology"), volume=1_000_000, allowed_by_roles=True).assessment
    audit.close()
    # The same log read by a new gate: the same history, so the same judgement of the next request.
    (tmp_path / "copy").mkdir()
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    (tmp_path / "copy" / "audit.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    again, audit2 = _gate(tmp_path / "copy", GateMode.MONITOR, clock)
    after = again.check(user, _data(100, "Radiology"), volume=1_000_000, allowed_by_roles=True).assessment
    assert before is not None and after is not None
    assert after.features == before.features and after.probability == before.probability
    assert before.rf > 0  # the refused request counts
    audit2.close()


def test_user_departments_join_the_users_own_and_the_roles_limits() -> None:
    limited = Role(name="cardio", kinds=(TransferKind.STUDY,), departments=("Cardiology",))
    roles = {"clinician": CLINICIAN, "cardio": limited}
    assert user_departments(_user(departments=frozenset()), roles) is None
    assert user_departments(_user(), roles) == {"Radiology"}
    both = _user(roles=("clinician", "cardio"))
    assert user_departments(both, roles) == {"Radiology", "Cardiology"}


def _section(text: str, tmp_path: Path) -> GateConfig:
    import tomllib

    return gate_section(Table(tomllib.loads(text), "", tmp_path))


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ('[gate]\nmode = "block"', "gate.mode", "must be one of off | monitor | enforce"),
        ("[gate]\nstep_up_at = 0.9\ndeny_at = 0.5", "gate.deny_at", "at least step_up_at"),
        ("[gate]\nstep_up_at = 1.0", "gate.step_up_at", "strictly between 0 and 1"),
        ("[gate]\nwindow_days = 0", "gate.window_days", "1..366"),
        ("[gate]\nwork_hours = [19, 7]", "gate.work_hours", "0 <= start < end <= 24"),
        ("[gate]\nwork_hours = [7]", "gate.work_hours", "two numbers"),
        ('[gate]\ntimezone = "Mars/Olympus"', "gate.timezone", "not an IANA time zone"),
        ('[gate]\nmodel = "missing.json"', "gate.model", "cannot read"),
        ("[gate]\nthreshold = 0.5", "gate.threshold", "unknown key"),
    ],
)
def test_configuration_errors_name_the_field(text: str, field: str, words: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _section(text, tmp_path)
    assert caught.value.field == field and words in caught.value.message


def test_a_malformed_model_file_is_refused_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "model.json"
    bad.write_text('{"format": "qlink-qfnn", "version": 99}')
    config = _section(f'[gate]\nmode = "enforce"\nmodel = "{bad}"', tmp_path)
    assert config.mode is GateMode.ENFORCE and config.model == bad
    with pytest.raises(ConfigError) as caught:
        load_model(config.model)
    assert caught.value.field == "gate.model" and "version 99 unsupported" in caught.value.message
    assert _section("", tmp_path) == GateConfig()
    assert Gate.open(GateConfig(mode=GateMode.OFF), None, roles={}) is None  # type: ignore[arg-type]
