"""Audit anchors: each facility keeps the other's audit-log head, so that a log cut short or rewritten
(and re-hashed to look whole) no longer matches what its peer holds (`qlink audit verify`).

The exchange runs beside the link machine, on the same authenticated connection, and decides nothing
about keys. Each ``AuditAnchor`` carries the sender's head and the receiver's head as the sender holds
it. The rules, for each end of one connection (``AnchorSession``):

1. Check first, offer after: our head is offered only once the peer's copy of it has been found in our
   log as it is now. A copy our log no longer holds means it was cut or rewritten since: that is
   recorded (``audit_anchor_mismatch``), logged as an alarm, and this connection never offers a head
   again, so the peer keeps the copy that proves it. (Offering our current head instead would let the
   peer's copy follow a rewritten log.)
2. Keep the highest: a peer's head is recorded (``peer_audit_head``) when it is beyond the one held; one
   at or below it with another digest is recorded as ``peer_audit_regressed`` and not kept.
3. A request is answered once: every connection opens with a request (offering no head yet); then a
   request goes out every `interval_s` when our log has records other than anchor bookkeeping since the
   last head offered, when the operator asks (``qlink audit verify``) and when the daemon stops.

Each peer's head is recorded in our own log, so it survives restarts (``AnchorBook`` reads the last one
back at start); the peer's copy of ours lives in the peer's log, out of reach of whoever edits ours.
Records hold seqs and digests only, never key material.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

from qlinkmed.qlinkd.link.messages import AuditAnchor
from qlinkmed.qlinkd.ops.audit import PEER_HEAD, AuditHead, AuditLog, latest_peer_heads

log = logging.getLogger("qlink.audit")

MISMATCH = "audit_anchor_mismatch"
"""Our log no longer holds the head a peer kept of it (fields peer, head_seq, head_digest, found_digest)."""
REGRESSED = "peer_audit_regressed"
"""A peer offered a head behind or beside the one we keep (peer, head_seq, head_digest, held_seq,
held_digest)."""


class Verdict(Enum):
    ADVANCE = "advance"
    """Beyond the head held (or none held): keep it."""
    SAME = "same"
    """The head held: nothing to record."""
    REGRESSED = "regressed"
    """At or below the head held, with another digest at the same seq or an older seq: refuse it."""


def judge(held: AuditHead | None, offered: AuditHead) -> Verdict:
    """What to do with a head a peer offers, given the one we hold of its log."""
    if held is None or offered.seq > held.seq:
        return Verdict.ADVANCE
    if offered == held:
        return Verdict.SAME
    return Verdict.REGRESSED


def head_of(seq: int, digest: str) -> AuditHead | None:
    """The head a message's (seq, digest) pair names; None for the (0, "") of "none"."""
    return AuditHead(seq=seq, digest=digest) if digest else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Acknowledged:
    """What a peer last said it holds of our head, and when (the daemon's monotonic clock)."""

    head: AuditHead | None
    at: float


class AnchorBook:
    """The daemon's side of every link's anchors: the head of each peer's log we hold (read back from our
    log at start, kept in it as ``peer_audit_head`` records) and the head of ours each peer said it holds.
    Anchor records go through ``record`` so the sessions can tell them from news worth anchoring."""

    def __init__(self, audit: AuditLog, peers: tuple[str, ...], *, interval_s: float) -> None:
        self.audit = audit
        self.interval_s = interval_s
        self._held = latest_peer_heads(audit.path, peers)
        self._acknowledged: dict[str, Acknowledged] = {}
        self.bookkeeping = 0
        """Anchor records written by this process (see ``AnchorSession.poll``)."""

    def held(self, peer: str) -> AuditHead | None:
        return self._held.get(peer)

    def acknowledged(self, peer: str) -> Acknowledged | None:
        return self._acknowledged.get(peer)

    def record(self, event: str, **fields: Any) -> AuditHead:
        head = self.audit.record(event, **fields)
        self.bookkeeping += 1
        return head

    def offer_from(self, peer: str, offered: AuditHead) -> Verdict:
        """A head of `peer`'s log arrived: keep it, ignore it or record that it went backwards."""
        held = self._held.get(peer)
        verdict = judge(held, offered)
        if verdict is Verdict.ADVANCE:
            self.record(PEER_HEAD, peer=peer, head_seq=offered.seq, head_digest=offered.digest)
            self._held[peer] = offered
        elif verdict is Verdict.REGRESSED and held is not None:
            log.error(
                "ALARM %s offered audit head %d, behind or beside the %d we hold: its log was cut or "
                "rewritten; we keep ours",
                peer,
                offered.seq,
                held.seq,
            )
            self.record(
                REGRESSED,
                peer=peer,
                head_seq=offered.seq,
                head_digest=offered.digest,
                held_seq=held.seq,
                held_digest=held.digest,
            )
        return verdict

    def acknowledge(self, peer: str, head: AuditHead | None, now: float) -> None:
        self._acknowledged[peer] = Acknowledged(head=head, at=now)


class AnchorSession:
    """The anchor exchange on one classical connection (one per connection, like the link machine).
    Inputs are the peer's anchors and the clock; outputs are the anchors to send."""

    def __init__(self, book: AnchorBook, peer: str, now: float) -> None:
        self.book = book
        self.peer = peer
        self.consistent: bool | None = None
        """Whether the peer's copy of our head is in our log: None until its first anchor arrives,
        False for good once it was not (this connection then offers no head)."""
        self._offered: AuditHead | None = None
        self._bookkeeping_at_offer = 0
        self._next_due = now + book.interval_s
        self.requests_sent = 0
        self.replies_received = 0
        """The peer answers requests in order: the n-th reply answers the n-th request."""

    def opening(self) -> AuditAnchor:
        """The connection's first anchor: a request offering no head yet (rule 1)."""
        return self._anchor(reply=False)

    def request(self, now: float) -> AuditAnchor:
        """An anchor request now (the operator's verify, the daemon stopping)."""
        self._next_due = now + self.book.interval_s
        return self._anchor(reply=False)

    def poll(self, now: float) -> list[AuditAnchor]:
        """The periodic request, when it is due and our log has news since the head last offered."""
        if now < self._next_due or self.consistent is not True:
            return []
        self._next_due = now + self.book.interval_s
        head = self.book.audit.head
        offered_seq = self._offered.seq if self._offered is not None else 0
        # Records since the offer that are not anchor bookkeeping: otherwise every exchange (which
        # records a head at both ends) would call for the next one, forever.
        news = (head.seq - offered_seq) - (self.book.bookkeeping - self._bookkeeping_at_offer)
        return [self._anchor(reply=False)] if news > 0 else []

    def receive(self, message: AuditAnchor, now: float) -> list[AuditAnchor]:
        """The peer's anchor: check its copy of our head, keep its head, answer a request."""
        self.replies_received += message.reply
        ours = head_of(message.held_seq, message.held_digest)
        self._check(ours)
        self.book.acknowledge(self.peer, ours, now)
        theirs = head_of(message.seq, message.digest)
        if theirs is not None:
            self.book.offer_from(self.peer, theirs)
        return [] if message.reply else [self._anchor(reply=True)]

    def _check(self, ours: AuditHead | None) -> None:
        if self.consistent is False:
            return  # stays refused: the peer keeps the copy that shows the break
        if ours is None or ours == self._offered:
            # Nothing kept yet, or the head this connection offered (the log cannot lose it without our
            # own next record breaking the chain, which verify shows).
            self.consistent = True
            return
        found = self.book.audit.digest_at(ours.seq)
        if found == ours.digest:
            self.consistent = True
            return
        self.consistent = False
        log.error(
            "ALARM our audit log no longer holds record %d as %s anchored it (%s): it was cut short or "
            "rewritten; no head is offered to %s until that is resolved",
            ours.seq,
            self.peer,
            "missing" if found is None else "another digest",
            self.peer,
        )
        self.book.record(
            MISMATCH, peer=self.peer, head_seq=ours.seq, head_digest=ours.digest, found_digest=found
        )

    def _anchor(self, *, reply: bool) -> AuditAnchor:
        held = self.book.held(self.peer)
        mine = self.book.audit.head if self.consistent is True else None
        if mine is not None and mine.seq == 0:
            mine = None  # an empty log has no head to keep
        if mine is not None:
            self._offered, self._bookkeeping_at_offer = mine, self.book.bookkeeping
        self.requests_sent += not reply
        return AuditAnchor(
            seq=mine.seq if mine else 0,
            digest=mine.digest if mine else "",
            held_seq=held.seq if held else 0,
            held_digest=held.digest if held else "",
            reply=reply,
        )
