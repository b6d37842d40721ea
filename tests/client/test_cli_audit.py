"""`qlink audit verify` against two running daemons that anchor each other's audit-log heads: an intact log
verifies; a log cut short, or rewritten with its chain rebuilt so that the chain alone looks whole, no
longer matches the head the peer keeps, and says so. Every tamper is done the way an intruder would: with
the daemon stopped, then started again on the altered file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qlinkmed.client.commands.audit import EXIT_ANCHOR, EXIT_CHAIN, EXIT_OK, EXIT_UNCHECKED
from qlinkmed.qlinkd.ops.audit import AUDIT_FILE, PEER_HEAD, AuditHead
from qlinkmed.qlinkd.testbed.launcher import ProcessGroup
from tests.cli import qlink
from tests.polling import wait_for
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"


@pytest.fixture(scope="module")
def group(module_testbeds: Testbeds) -> ProcessGroup:
    return module_testbeds.launch(pulses_per_round=700_000, round_timeout_s=5.0)


def _log(group: ProcessGroup, facility: str) -> Path:
    return group.deployment.root / "state" / facility / AUDIT_FILE


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def _held_at_b(group: ProcessGroup) -> AuditHead | None:
    """The last head of A's log that B recorded."""
    heads = [r for r in _records(_log(group, B)) if r["event"] == PEER_HEAD and r["peer"] == A]
    return AuditHead(seq=heads[-1]["head_seq"], digest=heads[-1]["head_digest"]) if heads else None


def _verify(capsys: pytest.CaptureFixture[str], group: ProcessGroup, *extra: str) -> tuple[int, str, str]:
    return qlink(capsys, "audit", "verify", "--config", str(group.deployment.facilities[A]), *extra)


def _verify_checked(capsys: pytest.CaptureFixture[str], group: ProcessGroup) -> tuple[int, str, str]:
    """`qlink audit verify` once the restarted A is linked to B again (until then anchors go unchecked)."""

    def checked() -> tuple[int, str, str] | None:
        result = _verify(capsys, group)
        return result if result[0] != EXIT_UNCHECKED else None

    return wait_for(checked, "verify to reach hospital-b's anchor")


def _restart_a(group: ProcessGroup) -> None:
    assert group.kill(A, signal.SIGTERM) == 0
    group.start(A)
    group.wait_ready(A)


def _rebuild(lines: list[bytes]) -> bytes:
    """The chain re-hashed from the first line on, seq renumbered: what hides an edit from the chain."""
    out, prev = [], "0" * 64
    for seq, line in enumerate(lines, start=1):
        record = json.loads(line)
        record["seq"], record["prev"] = seq, prev
        rebuilt = json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode()
        out.append(rebuilt)
        prev = hashlib.sha256(rebuilt).hexdigest()
    return b"".join(line + b"\n" for line in out)


@contextlib.contextmanager
def _tampered(group: ProcessGroup, edit: Callable[[list[bytes], int], bytes]) -> Iterator[AuditHead]:
    """Stop A, alter its log with `edit(lines, anchored seq)`, start A on it; afterwards put the original
    back (B never took a head of the altered log, so A verifies again). Yields B's anchor of A."""
    wait_for(lambda: _held_at_b(group), "hospital-b to record hospital-a's audit head")
    assert group.kill(A, signal.SIGTERM) == 0
    path = _log(group, A)
    original = path.read_bytes()
    anchored = _held_at_b(group)
    assert anchored is not None
    path.write_bytes(edit(original.splitlines(), anchored.seq))
    group.start(A)
    group.wait_ready(A)
    try:
        yield anchored
    finally:
        assert group.kill(A, signal.SIGTERM) == 0
        path.write_bytes(original)
        group.start(A)
        group.wait_ready(A)


def test_heads_are_anchored_and_an_intact_log_verifies(
    group: ProcessGroup, capsys: pytest.CaptureFixture[str]
) -> None:
    wait_for(lambda: _held_at_b(group), "hospital-b to record hospital-a's audit head")
    wait_for(
        lambda: any(r["event"] == PEER_HEAD and r["peer"] == B for r in _records(_log(group, A))),
        "hospital-a to record hospital-b's audit head",
    )
    code, out, err = _verify(capsys, group)
    assert code == EXIT_OK, err
    assert f"anchored at {B}" in out and "audit log verified" in out
    # B holds, after the exchange verify asked for, a head that A's log has at that seq.
    held = _held_at_b(group)
    assert held is not None
    lines = _log(group, A).read_bytes().splitlines()
    assert hashlib.sha256(lines[held.seq - 1]).hexdigest() == held.digest


def test_a_stopping_daemon_leaves_its_last_head_with_the_peer(
    group: ProcessGroup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert group.kill(A, signal.SIGTERM) == 0
    lines = _log(group, A).read_bytes().splitlines()
    stopping = max(i for i, line in enumerate(lines) if json.loads(line)["event"] == "daemon_stopping")
    last = AuditHead(seq=stopping + 1, digest=hashlib.sha256(lines[stopping]).hexdigest())
    wait_for(lambda: _held_at_b(group) == last, f"hospital-b to hold hospital-a's last head {last}")
    group.start(A)
    group.wait_ready(A)
    code, _, err = _verify_checked(capsys, group)
    assert code == EXIT_OK, err


def test_a_line_deleted_and_the_chain_rebuilt_is_detected(
    group: ProcessGroup, capsys: pytest.CaptureFixture[str]
) -> None:
    with _tampered(group, lambda lines, _: _rebuild(lines[:1] + lines[2:])) as anchored:
        assert _verify(capsys, group, "--offline")[0] == EXIT_OK  # the chain alone is fooled
        code, _, err = _verify_checked(capsys, group)
        assert code == EXIT_ANCHOR, err
        assert "ANCHOR MISMATCH" in err and f"record {anchored.seq} is not the one {B} anchored" in err
        # The daemon saw it too, on reconnecting: it refused to offer B a head of the altered log.
        alarms = [r for r in _records(_log(group, A)) if r["event"] == "audit_anchor_mismatch"]
        assert alarms and alarms[-1]["peer"] == B and alarms[-1]["head_seq"] == anchored.seq
        assert _held_at_b(group) == anchored


def test_the_last_anchored_line_edited_is_detected(
    group: ProcessGroup, capsys: pytest.CaptureFixture[str]
) -> None:
    def edit(lines: list[bytes], seq: int) -> bytes:
        lines[seq - 1] = lines[seq - 1].replace(b'"event":"', b'"event":"x', 1)
        return _rebuild(lines)

    with _tampered(group, edit) as anchored:
        code, _, err = _verify_checked(capsys, group)
        assert code == EXIT_ANCHOR, err
        assert f"record {anchored.seq} is not the one {B} anchored" in err


def test_a_truncated_log_is_detected(group: ProcessGroup, capsys: pytest.CaptureFixture[str]) -> None:
    with _tampered(group, lambda lines, _: b"".join(line + b"\n" for line in lines[:2])) as anchored:
        assert _verify(capsys, group, "--offline")[0] == EXIT_OK
        code, _, err = _verify_checked(capsys, group)
        assert code == EXIT_ANCHOR, err
        assert f"{B} holds an anchor at seq {anchored.seq}: the tail is missing" in err


def test_a_broken_chain_is_reported_first(group: ProcessGroup, capsys: pytest.CaptureFixture[str]) -> None:
    # Line 2 altered in place, same length, under the running daemon, and not re-hashed: line 3 shows it.
    path = _log(group, A)
    first, second = path.read_bytes().splitlines()[:2]
    year = second.index(b'"ts":"') + len(b'"ts":"')
    at, original = len(first) + 1 + year, second[year : year + 1]
    with path.open("r+b") as handle:
        handle.seek(at)
        handle.write(b"9" if original != b"9" else b"8")
    try:
        code, _, err = _verify(capsys, group, "--offline")
        assert code == EXIT_CHAIN and "CHAIN BROKEN" in err and "line 3" in err
        code, _, err = _verify(capsys, group)
        assert code == EXIT_CHAIN, err
    finally:
        with path.open("r+b") as handle:
            handle.seek(at)
            handle.write(original)


def test_without_the_daemon_anchors_are_not_checked(
    group: ProcessGroup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert group.kill(A, signal.SIGTERM) == 0
    try:
        code, out, err = _verify(capsys, group)
        assert code == EXIT_UNCHECKED and "anchors NOT CHECKED" in err and "cannot reach qlinkd" in err
        assert "chain intact" in out
        code, out, _ = _verify(capsys, group, "--offline")
        assert code == EXIT_OK and "cannot show records cut off the end" in out
    finally:
        group.start(A)
        group.wait_ready(A)


def test_the_peers_log_is_checked_against_every_head_we_recorded(
    group: ProcessGroup, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = str(group.deployment.facilities[B])
    wait_for(lambda: _held_at_b(group), "hospital-b to record hospital-a's audit head")
    # A stopped: its last head is anchored at B and no later one can be, so the copy below is not older
    # than B's newest anchor of it (a copy taken while A runs can be, and then rightly reads as cut short).
    assert group.kill(A, signal.SIGTERM) == 0
    try:
        data = _log(group, A).read_bytes()
        lines = data[: data.rindex(b"\n")].splitlines()  # a copy, as an operator would take: whole lines
        copy = tmp_path / "a-audit.jsonl"
        copy.write_bytes(b"".join(line + b"\n" for line in lines))
        code, out, err = qlink(capsys, "audit", "verify", "--config", config, "--peer-log", str(copy))
        assert code == EXIT_OK, err
        assert f"{A}'s audit log verified" in out
        # One early line removed and the chain rebuilt: B's records of A's heads no longer match.
        copy.write_bytes(_rebuild(lines[:1] + lines[2:]))
        code, _, err = qlink(capsys, "audit", "verify", "--config", config, "--peer-log", str(copy))
        assert code == EXIT_ANCHOR and "ANCHOR MISMATCH" in err and f"is not the one {B} anchored" in err
    finally:
        group.start(A)
        group.wait_ready(A)
