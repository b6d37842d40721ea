"""The audit-anchor exchange without sockets: two ``AnchorSession``s over real audit logs, their anchors
crossing through the wire codec. Each end keeps the other's head, offers its own only once the peer's copy
is found in its log, never lets a kept head go backwards, and asks again only when its log has news."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.anchor import (
    MISMATCH,
    REGRESSED,
    AnchorBook,
    AnchorSession,
    Verdict,
    judge,
)
from qlinkmed.qlinkd.link.wire import decode_frame, encode_frame
from qlinkmed.qlinkd.ops.audit import PEER_HEAD, AuditHead, AuditLog

A, B = "hospital-a", "hospital-b"
INTERVAL = 60.0


def _head(seq: int, fill: str = "a") -> AuditHead:
    return AuditHead(seq=seq, digest=fill * 64)


@pytest.mark.parametrize(
    ("held", "offered", "verdict"),
    [
        (None, _head(3), Verdict.ADVANCE),
        (_head(3), _head(4, "b"), Verdict.ADVANCE),
        (_head(3), _head(3), Verdict.SAME),
        (_head(3), _head(3, "b"), Verdict.REGRESSED),
        (_head(3), _head(2), Verdict.REGRESSED),
    ],
)
def test_judge_keeps_only_heads_beyond_the_one_held(
    held: AuditHead | None, offered: AuditHead, verdict: Verdict
) -> None:
    assert judge(held, offered) is verdict


class End:
    def __init__(self, root: Path, name: str, peer: str) -> None:
        self.name, self.peer = name, peer
        self.path = root / f"{name}.jsonl"
        self.audit = AuditLog.open(self.path, facility=name)
        self.audit.record("daemon_started", peers=[peer])
        self.book = AnchorBook(self.audit, (peer,), interval_s=INTERVAL)
        self.session = AnchorSession(self.book, peer, 0.0)

    def restart(self) -> None:
        self.audit.close()
        self.audit = AuditLog.open(self.path, facility=self.name)
        self.book = AnchorBook(self.audit, (self.peer,), interval_s=INTERVAL)
        self.session = AnchorSession(self.book, self.peer, 0.0)

    def events(self, event: str) -> list[dict[str, object]]:
        return [r for r in map(json.loads, self.path.read_bytes().splitlines()) if r["event"] == event]


def _over_the_wire(anchor: lm.AuditAnchor) -> lm.AuditAnchor:
    _, back = decode_frame(encode_frame(anchor, 0))
    assert isinstance(back, lm.AuditAnchor)
    return back


def _deliver(to: End, anchors: list[lm.AuditAnchor], now: float = 1.0) -> list[lm.AuditAnchor]:
    out = []
    for anchor in anchors:
        out.extend(to.session.receive(_over_the_wire(anchor), now))
    return out


def _connect(a: End, b: End) -> None:
    """Both openings cross, each answered; the answers cross back (what a connection does first)."""
    from_a, from_b = [a.session.opening()], [b.session.opening()]
    replies_b, replies_a = _deliver(b, from_a), _deliver(a, from_b)
    assert _deliver(a, replies_b) == [] and _deliver(b, replies_a) == []  # a reply is never answered


@pytest.fixture
def ends(tmp_path: Path) -> tuple[End, End]:
    return End(tmp_path, A, B), End(tmp_path, B, A)


def test_connecting_anchors_each_head_at_the_other(ends: tuple[End, End]) -> None:
    a, b = ends
    opening = a.session.opening()
    assert (opening.seq, opening.digest) == (0, "")  # nothing offered before the peer's copy is checked
    _connect(a, b)
    held_at_b = b.book.held(A)
    assert held_at_b is not None
    # B keeps a head of A's log that A's file has, byte for byte.
    line = a.path.read_bytes().splitlines()[held_at_b.seq - 1]
    assert hashlib.sha256(line).hexdigest() == held_at_b.digest
    assert b.events(PEER_HEAD)[-1]["peer"] == A and a.events(PEER_HEAD)[-1]["peer"] == B
    assert a.session.consistent is True and b.session.consistent is True
    # B's answer to the openings went out before it kept A's head; the next exchange tells A what B keeps.
    first = a.book.acknowledged(B)
    assert first is not None and first.head is None
    request = a.session.request(2.0)
    _deliver(a, _deliver(b, [request]), now=2.0)
    acked = a.book.acknowledged(B)
    assert acked is not None and acked.head == b.book.held(A) == AuditHead(
        seq=request.seq, digest=request.digest
    )


def test_kept_heads_survive_a_restart(ends: tuple[End, End]) -> None:
    a, b = ends
    _connect(a, b)
    held = b.book.held(A)
    b.restart()
    assert b.book.held(A) == held


def test_a_periodic_request_goes_out_only_when_due_and_the_log_has_news(ends: tuple[End, End]) -> None:
    a, b = ends
    _connect(a, b)
    assert a.session.poll(INTERVAL - 1) == []  # not due
    # Due, but the log only grew by the exchange's own bookkeeping: asking again would never end.
    assert a.session.poll(INTERVAL + 1) == []
    a.audit.record("link_up", peer=B)
    assert a.session.poll(INTERVAL + 2) == []  # the next period has not come yet
    (request,) = a.session.poll(2 * INTERVAL + 2)
    assert request.seq == a.audit.head.seq and not request.reply
    _deliver(a, _deliver(b, [request]))
    assert b.book.held(A) == AuditHead(seq=request.seq, digest=request.digest)
    assert a.session.poll(3 * INTERVAL + 3) == []  # quiet again


def test_a_log_rewritten_while_down_is_refused_and_the_peer_keeps_its_copy(
    ends: tuple[End, End],
) -> None:
    a, b = ends
    a.audit.record("keys_delivered", sae="pacs-a", count=2)
    _connect(a, b)
    anchored = b.book.held(A)
    assert anchored is not None
    # While A is down its log loses its tail, the anchored line with it; A starts again and records more.
    a.audit.close()
    kept = a.path.read_bytes().splitlines()[: anchored.seq - 1]
    a.path.write_bytes(b"".join(line + b"\n" for line in kept))
    a.restart()
    a.audit.record("daemon_started", peers=[B])
    a.audit.record("link_up", peer=B)
    b.session = AnchorSession(b.book, A, 0.0)
    _connect(a, b)
    assert a.session.consistent is False
    (alarm,) = a.events(MISMATCH)
    assert (
        alarm["peer"] == B and alarm["head_seq"] == anchored.seq and alarm["head_digest"] == anchored.digest
    )
    assert b.book.held(A) == anchored  # no head of the altered log reached B
    # Nor does one later: requests from A offer none, whatever is due.
    a.audit.record("link_up", peer=B)
    assert a.session.poll(10 * INTERVAL) == []
    request = a.session.request(10 * INTERVAL)
    assert request.digest == ""
    _deliver(a, _deliver(b, [request]))
    assert b.book.held(A) == anchored


def test_a_head_behind_the_one_kept_is_recorded_and_refused(ends: tuple[End, End]) -> None:
    a, b = ends
    a.audit.record("link_up", peer=B)
    _connect(a, b)
    kept = b.book.held(A)
    assert kept is not None and kept.seq == 2
    older = lm.AuditAnchor(seq=kept.seq - 1, digest="c" * 64, held_seq=0, held_digest="", reply=True)
    b.session.receive(older, 2.0)
    same_seq = lm.AuditAnchor(seq=kept.seq, digest="d" * 64, held_seq=0, held_digest="", reply=True)
    b.session.receive(same_seq, 3.0)
    assert b.book.held(A) == kept
    assert [(r["head_seq"], r["held_seq"]) for r in b.events(REGRESSED)] == [
        (kept.seq - 1, kept.seq),
        (kept.seq, kept.seq),
    ]


def test_requests_and_replies_are_counted_for_the_waiters(ends: tuple[End, End]) -> None:
    a, b = ends
    _connect(a, b)
    assert (a.session.requests_sent, a.session.replies_received) == (1, 1)
    first, second = a.session.request(5.0), a.session.request(5.0)
    assert a.session.requests_sent == 3
    _deliver(a, _deliver(b, [first]))
    assert a.session.replies_received == 2
    _deliver(a, _deliver(b, [second]))
    assert a.session.replies_received == 3
