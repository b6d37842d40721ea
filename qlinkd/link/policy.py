"""The link's policy as pure functions: when Alice starts a round, what an aborted round says about the
channel, and the record a round leaves. No I/O and no clock: the time comes in as ``now``. The asyncio
shell calls these and only acts on the answers (log, audit, metrics)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from qlinkmed.qcore.auth import ROUND_AUTH_BITS
from qlinkmed.qcore.errors import AbortReason
from qlinkmed.qcore.estimation import Statistics
from qlinkmed.qcore.params import DistillConfig
from qlinkmed.qlinkd.link.events import RoundEnded
from qlinkmed.qlinkd.link.status import RoundRecord, SourceStatus

EAVESDROPPER_REASONS = frozenset(
    {
        AbortReason.QBER_ABOVE_THRESHOLD,
        AbortReason.CHSH_NOT_VIOLATED,
        AbortReason.DI_RATE_NONPOSITIVE,
        AbortReason.DECOY_BOUND_EMPTY,
    }
)
"""Aborts whose statistics point at an eavesdropper on the quantum channel."""
TAMPER_REASONS = frozenset({AbortReason.AUTHENTICATION_FAILED})
"""A tag that does not verify: someone altered the classical channel. (A failed verification hash is
a residual reconciliation error, rare and honest: it aborts the round without an alarm.)"""
PAUSE_AFTER_ABORT_S = 0.5
"""Alice waits this long after an aborted round before the next, so an attack does not spin the CPU."""
DETAIL_CHARS = 300
"""How much of an abort's detail a round record keeps."""


# ---- when to start a round --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class StartGate:
    """What the round-start decision remembers from one call to the next."""

    paused: bool = False
    """The pool reached the high watermark: no rounds until it falls below the low one."""
    starved: bool = False
    """The authentication reserve cannot pay for a round's tags."""
    resume_at: float = 0.0
    """No round before this time (the pause after an aborted round)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolLevels:
    """The durable store's figures the decision weighs, read by the caller."""

    pool_bits: int
    auth_reserve_bits: int
    low_watermark_bits: int
    high_watermark_bits: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StartDecision:
    start: bool
    """Start a round now."""
    gate: StartGate
    """The gate to keep for the next decision."""


def round_start(
    gate: StartGate, levels: PoolLevels, *, channel_up: bool, now: float, rounds_open: int = 0
) -> StartDecision:
    """Whether Alice starts another round now, with `rounds_open` already in flight. Nothing is decided
    (and nothing changes) while her channel connection is down or the pause after an aborted round runs.
    Then an authentication reserve below one round's tags halts key generation (starved); one that cannot
    pay for the tags of every open round and one more waits for their refills (the open rounds take
    their keys before their refills come back); otherwise the pool
    level decides, with hysteresis: rounds pause when the pool reaches the high watermark and resume
    only once it is below the low one."""
    if not channel_up or now < gate.resume_at:
        return StartDecision(start=False, gate=gate)
    if levels.auth_reserve_bits < ROUND_AUTH_BITS:
        return StartDecision(start=False, gate=replace(gate, starved=True))
    if levels.auth_reserve_bits < ROUND_AUTH_BITS * (rounds_open + 1):
        # Not starved: the open rounds' refills come back as they commit. Just not one more yet.
        return StartDecision(start=False, gate=replace(gate, starved=False))
    paused = gate.paused
    if paused and levels.pool_bits < levels.low_watermark_bits:
        paused = False
    elif not paused and levels.pool_bits >= levels.high_watermark_bits:
        paused = True
    return StartDecision(start=not paused, gate=replace(gate, paused=paused, starved=False))


def after_round(gate: StartGate, *, established: bool, now: float) -> StartGate:
    """The gate once a round ended: an aborted round holds the next one back for PAUSE_AFTER_ABORT_S."""
    return gate if established else replace(gate, resume_at=now + PAUSE_AFTER_ABORT_S)


# ---- what an aborted round says -------------------------------------------------------------------
class Verdict(Enum):
    NONE = "none"
    """Established, or aborted for an honest cause (noise, a small round, a lost connection)."""
    EAVESDROPPER = "eavesdropper"
    """The quantum channel's own statistics are past the threshold: raise the alarm."""
    TAMPERING = "tampering"
    """The classical channel was altered (an authentication tag failed): raise the alarm."""

    @property
    def alarming(self) -> bool:
        return self is not Verdict.NONE


def point_estimate_crosses(stats: Statistics, qber_tolerance: float) -> bool:
    """Whether the measured value itself (not only its finite-size bound) is beyond the threshold."""
    if stats.chsh_s is not None:
        return bool(stats.chsh_s <= 2.0 or stats.qber > qber_tolerance)
    return bool(stats.qber > qber_tolerance)


def classify_round(*, reason: AbortReason, statistics: Statistics | None, qber_tolerance: float) -> Verdict:
    """An abort on the statistics raises the alarm when the measured QBER or CHSH value itself is past
    the threshold. When only the finite-size bound is (a round too small for its noise), the round still
    ends without key, but that is a configuration matter, not evidence of an attack. Without our own
    measurement (the peer's abort reached us first) or for an empty decoy bound (photon-number
    splitting, which only the decoy yields reveal), the reason alone is the evidence."""
    if reason in TAMPER_REASONS:
        return Verdict.TAMPERING
    if reason not in EAVESDROPPER_REASONS:
        return Verdict.NONE
    if statistics is None or reason is AbortReason.DECOY_BOUND_EMPTY:
        return Verdict.EAVESDROPPER
    return Verdict.EAVESDROPPER if point_estimate_crosses(statistics, qber_tolerance) else Verdict.NONE


def alarm_after(alarm: str | None, *, reason: AbortReason, verdict: Verdict) -> str | None:
    """The link's alarm once a round ended: an established round clears it, an alarming abort sets it to
    its reason, any other abort leaves it as it was."""
    if reason is AbortReason.NONE:
        return None
    return reason.name.lower() if verdict.alarming else alarm


# ---- the record a round leaves --------------------------------------------------------------------
def round_record(event: RoundEnded, distill: DistillConfig) -> RoundRecord:
    """What status shows as ``last_round`` and the audit log records for a round that ended, with the
    security parameters (`distill`'s) its key length was computed with."""
    outcome = event.outcome
    stats = outcome.statistics if outcome is not None else None
    return RoundRecord(
        round=event.round_id,
        established=event.established,
        reason=event.reason.name.lower(),
        detail=event.detail[:DETAIL_CHARS],
        duration_s=round(event.ended_at - event.started_at, 4),
        qber=None if stats is None else stats.qber,
        qber_upper=None if stats is None else stats.qber_upper,
        chsh_s=None if stats is None else stats.chsh_s,
        chsh_lower=None if stats is None else stats.chsh_lower,
        raw_key_bits=0 if outcome is None else outcome.raw_key_bits,
        leaked_ec_bits=0 if outcome is None else outcome.leaked_ec_bits,
        final_key_bits=event.key_bits if event.established else 0,
        round_trips=0 if outcome is None else outcome.round_trips,
        eps_sec=distill.eps_sec,
        eps_cor=distill.eps_cor,
        eps=distill.eps,
        protocol=protocol_name(distill),
        decoy=source_status(distill),
    )


def protocol_name(distill: DistillConfig) -> str:
    """The protocol as the configuration names it: bb84, bb84-decoy or e91."""
    return "bb84-decoy" if distill.decoy is not None else distill.protocol.value


def source_status(distill: DistillConfig) -> SourceStatus | None:
    """The decoy source as status and the audit log name it; None without decoys."""
    decoy = distill.decoy
    if decoy is None:
        return None
    return SourceStatus(intensities=decoy.intensities, probabilities=decoy.probabilities, p_x=decoy.p_x)


def audit_fields(record: RoundRecord) -> tuple[str, dict[str, object]]:
    """The audit event name and fields for a round (the record, with its detail last)."""
    body = record.to_json()
    detail = body.pop("detail")
    return ("round_established" if record.established else "round_aborted"), {**body, "detail": detail}
