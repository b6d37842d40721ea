"""What the daemon tells its operator about one link: the counters, last round and alarm that status
shows, and the log lines, audit records and metrics of each event. It decides nothing: the verdicts come
from ``policy``."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from qlinkmed.qcore.params import DistillConfig
from qlinkmed.qlinkd.errors import StoreError
from qlinkmed.qlinkd.link import policy
from qlinkmed.qlinkd.link.alarm_latch import AlarmLatch, latch_path
from qlinkmed.qlinkd.link.events import RoundEnded
from qlinkmed.qlinkd.link.status import LatchedAlarm, RoundCounts, RoundRecord
from qlinkmed.qlinkd.pool.values import ReconcileResult
from qlinkmed.qlinkd.runtime import Runtime

log = logging.getLogger("qlink.link")


class LinkReporter:
    def __init__(self, rt: Runtime, peer: str, *, role: str, distill: DistillConfig) -> None:
        self.rt = rt
        self.peer = peer
        self.role = role
        # The link's round policy: its QBER tolerance judges aborts, its security parameters go in every
        # round record (status and audit).
        self.distill = distill
        self.rounds = RoundCounts()
        self.last_round: RoundRecord | None = None
        self.alarm: str | None = None
        """The current condition: set by an alarming round, cleared by an established one."""
        self.latch = AlarmLatch(latch_path(rt.config.state_dir, peer))
        """The alarm as the operator must see it: raised until acknowledged, across restarts."""
        rt.metrics.set_alarm_latched(peer, self.latch.latched is not None)
        self.down_since: float | None = time.time()
        """Wall-clock time the classical connection went down (None while up); the daemon's start
        until the first hello."""
        self.down_reason: str | None = None

    def link_up(self, result: ReconcileResult) -> None:
        self.rt.metrics.set_link_up(self.peer, True)
        committed, discarded = list(result.committed), list(result.discarded)
        down_s = None if self.down_since is None else round(time.time() - self.down_since, 3)
        log.info(
            "link to %s up as %s after %s s down (committed %s, discarded %s on reconcile)",
            self.peer,
            self.role,
            down_s,
            committed,
            discarded,
        )
        self.rt.audit.record(
            "link_up", peer=self.peer, committed=committed, discarded=discarded, down_s=down_s
        )
        self.down_since, self.down_reason = None, None

    def link_down(self, reason: str) -> None:
        log.warning("link to %s closed: %s", self.peer, reason)
        self.rt.audit.record("link_down", peer=self.peer, reason=reason)
        if self.down_since is None:
            self.down_since = time.time()
        self.down_reason = reason

    def down_since_iso(self) -> str | None:
        if self.down_since is None:
            return None
        return datetime.fromtimestamp(self.down_since, UTC).isoformat(timespec="seconds")

    def acknowledge(self, *, who: str, note: str) -> LatchedAlarm | None:
        """An operator acknowledged the link's alarm: clear the latch (audited with who and why); the
        current condition stays what the rounds make it. Returns what was latched (None: nothing)."""
        held = self.latch.acknowledge()
        if held is None:
            return None
        self.rt.metrics.set_alarm_latched(self.peer, False)
        log.warning(
            "alarm on link %s (%s since %s, %d round(s)) acknowledged by %s: %s",
            self.peer,
            held.reason,
            held.raised_at,
            held.count,
            who,
            note or "(no note)",
        )
        self.rt.audit.record(
            "alarm_acknowledged",
            peer=self.peer,
            reason=held.reason,
            raised_at=held.raised_at,
            rounds=held.count,
            who=who,
            note=note,
            condition=self.alarm,
        )
        return held

    def notice_refused(self, key_id: str, exc: StoreError) -> None:
        log.error("ALARM key notice %s from %s does not match our pool: %s", key_id, self.peer, exc)
        self.rt.audit.record("pool_divergence", peer=self.peer, key_id=key_id, detail=str(exc))

    def starvation(self, starved: bool, reserve_bits: int) -> None:
        """The authentication reserve crossed one round's tags (either way)."""
        self.rt.metrics.set_auth_starved(self.peer, starved)
        if starved:
            log.error(
                "ALARM authentication key starved on link %s: %d bits left, key generation halted",
                self.peer,
                reserve_bits,
            )
            self.rt.audit.record("auth_starved", peer=self.peer, reserve_bits=reserve_bits)

    def round_ended(self, event: RoundEnded) -> None:
        peer, metrics, store = self.peer, self.rt.metrics, self.rt.store
        record = policy.round_record(event, self.distill)
        stats = event.outcome.statistics if event.outcome is not None else None
        verdict = policy.classify_round(
            reason=event.reason, statistics=stats, qber_tolerance=self.distill.qber_tolerance
        )
        duration = event.ended_at - event.started_at
        ok = event.established
        self.rounds = RoundCounts(
            established=self.rounds.established + ok, aborted=self.rounds.aborted + (not ok)
        )
        self.last_round = record
        if ok:
            metrics.round_established(
                peer,
                duration_s=duration,
                final_key_bits=record.final_key_bits,
                qber=record.qber,
                chsh_s=record.chsh_s,
            )
        else:
            metrics.round_aborted(
                peer,
                reason=event.reason,
                duration_s=duration,
                eavesdropper_suspected=verdict.alarming,
                qber=record.qber,
                chsh_s=record.chsh_s,
            )
        metrics.set_pool(
            peer, pool_bits=store.pool_bits(peer), auth_reserve_bits=store.auth_reserve_bits(peer)
        )
        name, fields = policy.audit_fields(record)
        self.rt.audit.record(name, peer=peer, **fields)
        before, self.alarm = self.alarm, policy.alarm_after(self.alarm, reason=event.reason, verdict=verdict)
        detail = event.detail[:200]
        if verdict.alarming:
            # Wall time: the machine's clock is monotonic, and the latch's time is read across restarts.
            if self.latch.raise_alarm(reason=record.reason, round_id=event.round_id, at=_now()):
                self.rt.audit.record("alarm_raised", peer=peer, reason=record.reason, round=event.round_id)
            metrics.set_alarm_latched(peer, True)
        if ok:
            if before is not None:
                # The condition clears; the latched alarm waits for `qlink alarm ack`.
                log.warning(
                    "alarm condition cleared on link %s: round %d established (the alarm stays raised"
                    " until acknowledged)",
                    peer,
                    event.round_id,
                )
                self.rt.audit.record("alarm_cleared", peer=peer, round=event.round_id)
            qber = record.qber or 0.0
            bits = record.final_key_bits
            log.info(
                "round %d with %s: %d bits, QBER %.4f, %.3f s", event.round_id, peer, bits, qber, duration
            )
        elif verdict.alarming:
            log.error(
                "ALARM round %d with %s aborted (%s): %s; no key kept",
                event.round_id,
                peer,
                record.reason,
                detail,
            )
        else:
            log.warning("round %d with %s aborted (%s): %s", event.round_id, peer, record.reason, detail)


def _now() -> str:
    # As status shows down_since: to the second, UTC.
    return datetime.now(UTC).isoformat(timespec="seconds")
