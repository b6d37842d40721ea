"""`qlink gate scenario` end to end (issue 18's scripted scenario), run in-process as a user runs it: it
starts and stops its own loopback testbed, replays the users' history through the daemon's API under the
gate's test clock, and judges. The test reads the summary and the testbed's audit log itself, so it checks
the command's verdict rather than trusting it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qlinkmed.client.gate_scenario import DEPARTMENTS, STAFF, STUDIES_PER_DEPARTMENT, format_summary
from tests.cli import qlink


def test_the_insider_is_stepped_up_then_refused_and_the_others_never(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "scenario"
    code, out, err = qlink(capsys, "gate", "scenario", "--json", "--keep", str(root), "--days", "21")
    summary: dict[str, Any] = json.loads(out)
    assert code == 0, (summary["checks"], err)
    users = summary["users"]
    assert len(users) == sum(STAFF.values()) + 1 and sum(u["insider"] for u in users) == 1
    ordinary = [u for u in users if not u["insider"]]
    assert all(u["today"] > 0 and u["today_refused"] == 0 for u in ordinary)
    assert all(u["history_requests"] > 0 for u in users)

    tonight = summary["insider"]
    first = tonight[0]
    assert first["status"] == 403 and first["decision"] == "step-up" and first["bytes"] == 0
    assert any("outside your departments (Radiology)" in r for r in first["reasons"])
    assert any("outside working hours" in r for r in first["reasons"])
    refused = [r for r in tonight if r["decision"] == "deny"]
    assert refused and refused[-1] is tonight[-1]
    taken = sum(r["status"] == 200 for r in tonight)
    assert taken == summary["insider_studies_taken"] < summary["insider_targets"] // 2
    assert summary["insider_targets"] == (len(DEPARTMENTS) - 1) * STUDIES_PER_DEPARTMENT

    # The audit log holds every request of today with its decision; the insider's refusals carry reasons.
    audit_path = root / "deployment" / "state" / "hospital-b" / "audit.jsonl"
    records = [json.loads(line) for line in audit_path.read_text().splitlines()]
    gate = [r for r in records if r["event"] == "gate_request"]
    steps = [r for r in gate if r["decision"] == "step-up" and r["applied"] == "refused"]
    assert steps and all(r["department"] != "Radiology" and r["reasons"] for r in steps)
    assert any(r["event"] == "break_glass" for r in records)
    assert summary["gate"]["latency"]["samples"] == len([r for r in gate if "score" in r])
    assert summary["gate"]["latency"]["p99_ms"] > 0

    text = format_summary(summary)
    assert "qlink gate scenario: PASS" in text and "p50" in text
