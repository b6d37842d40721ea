"""Alarms latch: an alarming round raises the link's alarm, and it stays raised (status, metric, file)
through good rounds and daemon restarts until an operator acknowledges it, audited with who and why.
The reporter runs here on a real key store, audit log and metrics registry, without a link."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlinkmed.client.commands.status import format_link
from qlinkmed.qcore.errors import AbortReason
from qlinkmed.qlinkd.link.alarm_latch import UNREADABLE, AlarmLatch, latch_path
from qlinkmed.qlinkd.link.anchor import AnchorBook
from qlinkmed.qlinkd.link.events import RoundEnded
from qlinkmed.qlinkd.link.reporting import LinkReporter
from qlinkmed.qlinkd.link.status import LatchedAlarm, LinkStatus
from qlinkmed.qlinkd.ops.audit import AuditLog
from qlinkmed.qlinkd.ops.config import load_facility_config
from qlinkmed.qlinkd.ops.metrics import LinkMetrics
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.runtime import Runtime
from qlinkmed.qlinkd.testbed.deployment import write_loopback_deployment
from tests.status_factory import link_status

A, B = "hospital-a", "hospital-b"


class Daemon:
    """What a facility daemon's reporter for its link to B stands on, opened and closed like a restart."""

    def __init__(self, config_path: Path) -> None:
        self.config = load_facility_config(config_path)
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.rt: Runtime | None = None

    def start(self) -> LinkReporter:
        store = KeyStore.open(self.config.state_dir / "keys.sqlite3")
        store.init_auth(B, self.config.peer(B).preshared)
        audit = AuditLog.open(self.config.state_dir / "audit.jsonl", facility=A)
        context = ssl.create_default_context()
        self.rt = Runtime(
            config=self.config,
            store=store,
            audit=audit,
            anchors=AnchorBook(audit, (B,), interval_s=60.0),
            metrics=LinkMetrics(),
            client_ssl=context,
            server_ssl=context,
        )
        self.rt.metrics.add_peer(B)
        return LinkReporter(self.rt, B, role="alice", distill=self.config.peer(B).distill_config())

    def stop(self) -> None:
        if self.rt is not None:
            self.rt.audit.close()
            self.rt.store.close()
            self.rt = None

    def metric(self, name: str) -> float | None:
        assert self.rt is not None
        return self.rt.metrics.registry.get_sample_value(name, {"peer": B})

    def audit(self) -> list[dict[str, object]]:
        path = self.config.state_dir / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    deployment = write_loopback_deployment(tmp_path / "deployment")
    d = Daemon(deployment.facilities[A])
    yield d
    d.stop()


def _round(round_id: int, reason: AbortReason) -> RoundEnded:
    now = time.monotonic()
    key_bits = 1024 if reason is AbortReason.NONE else 0
    return RoundEnded(
        round_id=round_id,
        outcome=None,
        reason=reason,
        detail="",
        started_at=now - 0.5,
        ended_at=now,
        key_bits=key_bits,
    )


def test_an_alarm_stays_raised_through_good_rounds_and_a_restart_until_acknowledged(daemon: Daemon) -> None:
    report = daemon.start()
    assert report.latch.latched is None and daemon.metric("qlink_alarm_latched") == 0
    # A tampered classical message (no statistics needed): the alarm is raised.
    report.round_ended(_round(7, AbortReason.AUTHENTICATION_FAILED))
    assert report.alarm == "authentication_failed"
    assert daemon.metric("qlink_alarm_latched") == 1
    # A good round clears the condition, never the latch (before latching it cleared the alarm itself).
    report.round_ended(_round(8, AbortReason.NONE))
    assert report.alarm is None
    latched = report.latch.latched
    assert latched is not None and latched.reason == "authentication_failed" and latched.round == 7
    assert daemon.metric("qlink_alarm_latched") == 1
    assert daemon.metric("qlink_eavesdropper_alarm") == 0  # the current condition, kept separate

    daemon.stop()  # the daemon restarts
    report = daemon.start()
    latched = report.latch.latched
    assert latched is not None and (latched.reason, latched.round, latched.count) == (
        "authentication_failed",
        7,
        1,
    )
    assert daemon.metric("qlink_alarm_latched") == 1

    held = report.acknowledge(who="dr-ops", note="fibre patched, checked with the carrier")
    assert held is not None and held.reason == "authentication_failed"
    assert report.latch.latched is None and daemon.metric("qlink_alarm_latched") == 0
    assert not latch_path(daemon.config.state_dir, B).exists()
    assert report.acknowledge(who="dr-ops", note="again") is None  # nothing left to acknowledge
    (ack,) = [r for r in daemon.audit() if r["event"] == "alarm_acknowledged"]
    assert (
        ack["peer"] == B
        and ack["who"] == "dr-ops"
        and ack["note"] == "fibre patched, checked with the carrier"
    )
    assert ack["reason"] == "authentication_failed" and ack["raised_at"] == held.raised_at
    raised = [r for r in daemon.audit() if r["event"] == "alarm_raised"]
    assert [r["round"] for r in raised] == [7]

    daemon.stop()
    report = daemon.start()
    assert report.latch.latched is None and daemon.metric("qlink_alarm_latched") == 0


def test_further_alarming_rounds_count_on_the_first_one(daemon: Daemon) -> None:
    report = daemon.start()
    report.round_ended(_round(3, AbortReason.AUTHENTICATION_FAILED))
    report.round_ended(_round(4, AbortReason.NONE))
    report.round_ended(_round(5, AbortReason.AUTHENTICATION_FAILED))
    latched = report.latch.latched
    assert latched is not None and (latched.round, latched.count) == (3, 2)
    assert latched.last_raised_at >= latched.raised_at
    # One raise in the audit log: the second alarming round adds to the raised alarm.
    assert [r["round"] for r in daemon.audit() if r["event"] == "alarm_raised"] == [3]


def test_an_honest_abort_raises_nothing(daemon: Daemon) -> None:
    report = daemon.start()
    report.round_ended(_round(1, AbortReason.TIMEOUT))
    assert report.latch.latched is None and daemon.metric("qlink_alarm_latched") == 0


@pytest.mark.parametrize("content", [b"{not json", b'{"reason": 3}', b"[]"])
def test_an_unreadable_latch_counts_as_raised(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "alarm-hospital-b.json"
    path.write_bytes(content)
    latch = AlarmLatch(path)
    assert latch.latched is not None and latch.latched.reason == UNREADABLE
    assert latch.acknowledge() is not None and not path.exists()
    assert AlarmLatch(path).latched is None


def test_the_latch_file_is_replaced_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "alarm-hospital-b.json"
    latch = AlarmLatch(path)
    assert latch.raise_alarm(reason="qber_above_threshold", round_id=1, at="2026-12-06T20:00:00Z")
    assert not latch.raise_alarm(reason="chsh_not_violated", round_id=2, at="2026-12-06T20:01:00Z")
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
    again = AlarmLatch(path).latched
    assert again is not None and (again.reason, again.count, again.last_reason) == (
        "qber_above_threshold",
        2,
        "chsh_not_violated",
    )


def test_status_shows_the_latched_alarm_apart_from_the_current_condition() -> None:
    latched = LatchedAlarm(
        reason="qber_above_threshold",
        raised_at="2026-12-06T20:00:00+00:00",
        round=7,
        count=3,
        last_reason="chsh_not_violated",
        last_raised_at="2026-12-06T20:05:00+00:00",
    )
    rows = format_link(link_status(alarm_latched=latched), 256)
    text = "\n".join(rows)
    assert (
        "  ALARM         qber_above_threshold since 2026-12-06T20:00:00+00:00 (round 7; 3 alarming rounds"
        in text
    )
    assert "qlink alarm ack --peer hospital-b" in text
    assert "  condition     clear (a round established since)" in text
    still = "\n".join(format_link(link_status(alarm_latched=latched, alarm="chsh_not_violated"), 256))
    assert "  condition     chsh_not_violated" in still
    # Acknowledged while rounds still abort: the condition alone, no acknowledgement asked for.
    acknowledged = "\n".join(format_link(link_status(alarm="chsh_not_violated"), 256))
    assert "  ALARM         chsh_not_violated" in acknowledged and "alarm ack" not in acknowledged
    assert "ALARM" not in "\n".join(format_link(link_status(), 256))
    # The JSON carries it, and the client parses it back.
    assert LinkStatus.from_json(link_status(alarm_latched=latched).to_json()).alarm_latched == latched
