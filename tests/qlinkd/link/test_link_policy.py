"""The link's policy as pure functions: when Alice starts a round (watermarks with hysteresis, the
authentication reserve, the pause after an abort), what an abort means (eavesdropper, tampering, honest),
and the record a round leaves (status and audit). Also the status values' JSON form, which the local API
sends and the client parses back."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from qlinkmed.qcore.auth import ROUND_AUTH_BITS
from qlinkmed.qcore.errors import AbortReason
from qlinkmed.qcore.estimation import Statistics
from qlinkmed.qcore.params import DecoySource, DistillConfig
from qlinkmed.qcore.round_state import RoundOutcome
from qlinkmed.qlinkd.errors import StatusFormatError
from qlinkmed.qlinkd.link import policy
from qlinkmed.qlinkd.link.events import RoundEnded
from qlinkmed.qlinkd.link.policy import PoolLevels, StartGate, Verdict
from qlinkmed.qlinkd.link.status import LinkStatus, RoundCounts, RoundRecord, SourceStatus
from tests.test_layers import IO_MODULES, _closure

LOW, HIGH = 12_000, 30_000
TOLERANCE = 0.11
RESERVE = 10 * ROUND_AUTH_BITS
DISTILL = DistillConfig(eps_sec=1e-9, eps_cor=1e-12)


def levels(pool: int, reserve: int = RESERVE) -> PoolLevels:
    return PoolLevels(
        pool_bits=pool, auth_reserve_bits=reserve, low_watermark_bits=LOW, high_watermark_bits=HIGH
    )


def decide(gate: StartGate, pool: int, *, reserve: int = RESERVE, channel: bool = True, now: float = 100.0):
    return policy.round_start(gate, levels(pool, reserve), channel_up=channel, now=now)


@pytest.mark.parametrize("module", ["qlinkmed.qlinkd.link.policy", "qlinkmed.qlinkd.link.status"])
def test_policy_and_status_reach_no_io(module: str) -> None:
    assert _closure(module) & IO_MODULES == set()


# ---- when to start a round --------------------------------------------------------------------------
def test_a_pool_below_the_high_watermark_starts_rounds() -> None:
    decision = decide(StartGate(), 0)
    assert decision.start and decision.gate == StartGate()
    assert decide(StartGate(), HIGH - 1).start


def test_the_high_watermark_pauses_and_only_the_low_one_resumes() -> None:
    full = decide(StartGate(), HIGH)
    assert not full.start and full.gate.paused
    gate = full.gate
    # Keys handed out drain the pool, but until it is below the low mark no round starts, however long.
    for now, pool in enumerate([HIGH, HIGH - 1, 20_000, LOW]):
        decision = decide(gate, pool, now=100.0 + 10 * now)
        assert not decision.start and decision.gate.paused, pool
        gate = decision.gate
    resumed = decide(gate, LOW - 1)
    assert resumed.start and not resumed.gate.paused
    # ...and rounds go on while the pool refills, until it reaches the high mark again.
    assert decide(resumed.gate, 20_000).start
    assert not decide(resumed.gate, HIGH).start


def test_a_starved_authentication_reserve_halts_rounds_whatever_the_pool() -> None:
    gate = StartGate()
    for now in (100.0, 101.0, 500.0, 10_000.0):
        decision = decide(gate, 0, reserve=ROUND_AUTH_BITS - 1, now=now)
        assert not decision.start and decision.gate.starved
        gate = decision.gate
    assert not gate.paused  # the watermarks were never weighed
    recovered = decide(gate, 0, reserve=ROUND_AUTH_BITS)
    assert recovered.start and not recovered.gate.starved


def test_another_round_opens_only_while_the_reserve_pays_for_every_open_round_and_it() -> None:
    # Open rounds take their tag keys before their refills come back: three open rounds and a fourth need
    # four rounds' tags. Short of that Alice waits for commits, which is not starvation (no alarm).
    gate = StartGate()
    for reserve, opens in ((4 * ROUND_AUTH_BITS, True), (4 * ROUND_AUTH_BITS - 1, False)):
        decision = policy.round_start(gate, levels(0, reserve), channel_up=True, now=100.0, rounds_open=3)
        assert decision.start is opens and not decision.gate.starved


def test_an_aborted_round_pauses_the_next_one() -> None:
    gate = policy.after_round(StartGate(), established=False, now=100.0)
    assert gate.resume_at == 100.0 + policy.PAUSE_AFTER_ABORT_S
    held = decide(gate, 0, now=100.0 + policy.PAUSE_AFTER_ABORT_S / 2)
    assert not held.start and held.gate == gate
    assert decide(gate, 0, now=gate.resume_at).start
    assert policy.after_round(gate, established=True, now=200.0) == gate


def test_without_the_channel_nothing_is_decided_or_changed() -> None:
    gate = StartGate(paused=True)
    decision = decide(gate, 0, reserve=0, channel=False)
    assert not decision.start and decision.gate == gate  # neither resumed nor marked starved


# ---- what an abort means ----------------------------------------------------------------------------
def stats(qber: float, qber_upper: float | None = None, chsh_s: float | None = None) -> Statistics:
    upper = qber if qber_upper is None else qber_upper
    return Statistics(
        raw_key_bits=10_000,
        sample_bits=1_000,
        errors=int(qber * 1_000),
        qber=qber,
        qber_upper=upper,
        chsh_s=chsh_s,
    )


def classify(reason: AbortReason, statistics: Statistics | None) -> Verdict:
    return policy.classify_round(reason=reason, statistics=statistics, qber_tolerance=TOLERANCE)


def test_a_measured_qber_past_the_threshold_is_an_eavesdropper() -> None:
    assert classify(AbortReason.QBER_ABOVE_THRESHOLD, stats(0.25)) is Verdict.EAVESDROPPER


def test_only_the_finite_size_bound_past_the_threshold_is_no_alarm() -> None:
    # A round too small for its noise: no key, but a configuration matter, not an attack.
    assert classify(AbortReason.QBER_ABOVE_THRESHOLD, stats(0.05, qber_upper=0.2)) is Verdict.NONE


def test_chsh_at_or_below_the_classical_bound_is_an_eavesdropper() -> None:
    assert classify(AbortReason.CHSH_NOT_VIOLATED, stats(0.05, chsh_s=2.0)) is Verdict.EAVESDROPPER
    assert classify(AbortReason.CHSH_NOT_VIOLATED, stats(0.2, chsh_s=2.6)) is Verdict.EAVESDROPPER
    assert classify(AbortReason.DI_RATE_NONPOSITIVE, stats(0.05, chsh_s=2.4)) is Verdict.NONE


def test_without_our_own_measurement_the_reason_is_the_evidence() -> None:
    assert classify(AbortReason.QBER_ABOVE_THRESHOLD, None) is Verdict.EAVESDROPPER
    # Photon-number splitting shows only in the decoy yields, never in the QBER.
    assert classify(AbortReason.DECOY_BOUND_EMPTY, stats(0.01)) is Verdict.EAVESDROPPER


def test_a_failed_tag_is_tampering() -> None:
    assert classify(AbortReason.AUTHENTICATION_FAILED, stats(0.01)) is Verdict.TAMPERING
    assert classify(AbortReason.AUTHENTICATION_FAILED, None).alarming


@pytest.mark.parametrize(
    "reason",
    [
        AbortReason.NONE,
        AbortReason.VERIFICATION_FAILED,
        AbortReason.FINITE_KEY_EMPTY,
        AbortReason.TIMEOUT,
        AbortReason.LINK_LOST,
        AbortReason.PROTOCOL_VIOLATION,
        AbortReason.CHANNEL_UNAVAILABLE,
    ],
)
def test_honest_endings_raise_no_alarm(reason: AbortReason) -> None:
    assert classify(reason, stats(0.3)) is Verdict.NONE
    assert not Verdict.NONE.alarming


def test_the_alarm_is_set_by_an_alarming_abort_and_cleared_by_a_key() -> None:
    alarm = policy.alarm_after(None, reason=AbortReason.QBER_ABOVE_THRESHOLD, verdict=Verdict.EAVESDROPPER)
    assert alarm == "qber_above_threshold"
    assert policy.alarm_after(alarm, reason=AbortReason.TIMEOUT, verdict=Verdict.NONE) == alarm
    assert policy.alarm_after(alarm, reason=AbortReason.NONE, verdict=Verdict.NONE) is None


# ---- the record a round leaves ----------------------------------------------------------------------
def outcome(*, established: bool, key_bits: int, statistics: Statistics | None) -> RoundOutcome:
    return RoundOutcome(
        established=established,
        abort_reason=AbortReason.NONE if established else AbortReason.QBER_ABOVE_THRESHOLD,
        abort_detail="",
        statistics=statistics,
        sifted_bits=20_000,
        raw_key_bits=18_000,
        leaked_ec_bits=2_500,
        corrected_bits=90,
        round_trips=7,
        pa_output_bits=key_bits,
        auth_cost_bits=ROUND_AUTH_BITS,
        key=np.zeros(key_bits, dtype=np.uint8),
        auth_refill=np.zeros(0, dtype=np.uint8),
    )


def test_an_established_round_records_the_bits_the_pool_gained() -> None:
    # The distilled key has 5003 bits; the pool keeps whole bytes: 5000 bits.
    event = RoundEnded(
        round_id=9,
        outcome=outcome(established=True, key_bits=5003, statistics=stats(0.021, 0.034)),
        reason=AbortReason.NONE,
        detail="",
        started_at=10.0,
        ended_at=10.123456,
        key_bits=5000,
    )
    record = policy.round_record(event, DISTILL)
    assert record == RoundRecord(
        round=9,
        established=True,
        reason="none",
        detail="",
        duration_s=0.1235,
        qber=0.021,
        qber_upper=0.034,
        chsh_s=None,
        chsh_lower=None,
        raw_key_bits=18_000,
        leaked_ec_bits=2_500,
        final_key_bits=5000,
        round_trips=7,
        eps_sec=1e-9,
        eps_cor=1e-12,
        eps=1e-9 + 1e-12,
        protocol="bb84",
        decoy=None,
    )
    name, fields = policy.audit_fields(record)
    assert name == "round_established"
    assert list(fields) == [*(k for k in record.to_json() if k != "detail"), "detail"]


def test_an_aborted_round_records_no_key_and_a_bounded_detail() -> None:
    event = RoundEnded(
        round_id=4,
        outcome=outcome(
            established=False,
            key_bits=0,
            statistics=dataclasses.replace(stats(0.2, chsh_s=2.1), chsh_lower=1.8),
        ),
        reason=AbortReason.CHSH_NOT_VIOLATED,
        detail="x" * 1000,
        started_at=1.0,
        ended_at=1.5,
    )
    record = policy.round_record(event, DISTILL)
    assert (record.established, record.reason, record.final_key_bits) == (False, "chsh_not_violated", 0)
    assert record.detail == "x" * policy.DETAIL_CHARS and record.chsh_s == 2.1
    assert record.chsh_lower == 1.8  # the CHSH interval is reported, not only the estimate
    assert policy.audit_fields(record)[0] == "round_aborted"


def test_a_round_that_ended_before_distillation_records_no_measurement() -> None:
    event = RoundEnded(
        round_id=1,
        outcome=None,
        reason=AbortReason.TIMEOUT,
        detail="no progress",
        started_at=0.0,
        ended_at=5.0,
    )
    record = policy.round_record(event, DISTILL)
    assert (record.qber, record.qber_upper, record.chsh_s) == (None, None, None)
    assert (record.raw_key_bits, record.leaked_ec_bits, record.final_key_bits, record.round_trips) == (
        0,
        0,
        0,
        0,
    )
    assert record.duration_s == 5.0


# ---- the status JSON --------------------------------------------------------------------------------
STATUS_FIELDS = [
    "peer",
    "role",
    "protocol",
    "eps_sec",
    "eps_cor",
    "eps",
    "connected",
    "channel_connected",
    "state",
    "pool_bits",
    "pool_bits_owned",
    "auth_reserve_bits",
    "low_watermark_bits",
    "high_watermark_bits",
    "rounds_paused",
    "last_committed_round",
    "rounds",
    "last_round",
    "alarm",
    "auth_starved",
    "decoy",
    "rounds_in_flight",
    "rounds_window",
    "down_since",
    "down_reason",
    "alarm_latched",
]
ROUND_FIELDS = [
    "round",
    "established",
    "reason",
    "detail",
    "duration_s",
    "qber",
    "qber_upper",
    "chsh_s",
    "chsh_lower",
    "raw_key_bits",
    "leaked_ec_bits",
    "final_key_bits",
    "round_trips",
    "eps_sec",
    "eps_cor",
    "eps",
    "protocol",
    "decoy",
]


def status(last: RoundRecord | None) -> LinkStatus:
    return LinkStatus(
        peer="hospital-b",
        role="alice",
        protocol="bb84",
        eps_sec=DISTILL.eps_sec,
        eps_cor=DISTILL.eps_cor,
        eps=DISTILL.eps,
        connected=True,
        channel_connected=False,
        state="up",
        pool_bits=4096,
        pool_bits_owned=2048,
        auth_reserve_bits=RESERVE,
        low_watermark_bits=LOW,
        high_watermark_bits=HIGH,
        rounds_paused=False,
        last_committed_round=3,
        rounds=RoundCounts(established=3, aborted=1),
        last_round=last,
        alarm=None,
        auth_starved=False,
        rounds_in_flight=2,
        rounds_window=4,
        down_since="2026-12-06T17:00:00+00:00",
        down_reason="peer closed the connection",
    )


def test_status_json_has_the_api_field_names_and_parses_back() -> None:
    last = policy.round_record(
        RoundEnded(
            round_id=1, outcome=None, reason=AbortReason.TIMEOUT, detail="d", started_at=0.0, ended_at=1.0
        ),
        DISTILL,
    )
    for value in (status(None), status(last)):
        body = value.to_json()
        assert list(body) == STATUS_FIELDS
        assert body["rounds"] == {"established": 3, "aborted": 1}
        assert LinkStatus.from_json(json.loads(json.dumps(body))) == value
    assert list(status(last).to_json()["last_round"]) == ROUND_FIELDS


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"pool_bits": None}, "pool_bits"),
        ({"connected": 1}, "connected"),
        ({"pool_bits": True}, "pool_bits"),
        ({"rounds": {"established": 1}}, "rounds.aborted"),
        ({"alarm": 3}, "alarm"),
        ({"last_round": {"round": 1}}, "last_round.established"),
    ],
)
def test_a_malformed_status_names_the_field(change: dict[str, object], field: str) -> None:
    body = {**status(None).to_json(), **change}
    with pytest.raises(StatusFormatError) as caught:
        LinkStatus.from_json(body)
    assert caught.value.field == field
    missing = status(None).to_json()
    del missing["state"]
    with pytest.raises(StatusFormatError, match="'state': missing"):
        LinkStatus.from_json(missing)


def test_a_decoy_links_status_and_round_record_name_its_source() -> None:
    source = DecoySource(intensities=(0.5551, 0.2175, 2e-4), probabilities=(0.12, 0.52, 0.36), p_x=0.69)
    distill = DistillConfig(decoy=source)
    last = policy.round_record(
        RoundEnded(
            round_id=2,
            outcome=None,
            reason=AbortReason.DECOY_BOUND_EMPTY,
            detail="",
            started_at=0.0,
            ended_at=1.0,
        ),
        distill,
    )
    named = SourceStatus(intensities=source.intensities, probabilities=source.probabilities, p_x=0.69)
    assert last.protocol == "bb84-decoy" and last.decoy == named
    assert policy.protocol_name(distill) == "bb84-decoy" and policy.source_status(distill) == named
    assert policy.protocol_name(DISTILL) == "bb84" and policy.source_status(DISTILL) is None
    value = dataclasses.replace(status(last), protocol="bb84-decoy", decoy=named)
    body = json.loads(json.dumps(value.to_json()))
    assert body["decoy"] == {
        "intensities": [0.5551, 0.2175, 2e-4],
        "probabilities": [0.12, 0.52, 0.36],
        "p_x": 0.69,
    }
    assert body["last_round"]["decoy"] == body["decoy"]
    assert LinkStatus.from_json(body) == value
    _, fields = policy.audit_fields(last)
    assert fields["protocol"] == "bb84-decoy" and fields["decoy"] == body["decoy"]
    body["decoy"]["p_x"] = "high"
    with pytest.raises(StatusFormatError, match=r"decoy\.p_x"):
        LinkStatus.from_json(body)
