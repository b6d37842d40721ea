"""The link protocol between two facilities as a sans-IO state machine.

One ``LinkConnection`` per connected peer. It composes the qcore distillation sessions (one per round)
with what a running link adds around them: the hello that brings both durable key pools into
agreement, the round starts, the quantum-channel submissions, key confirmation (``KeyStored`` both ways
before either end commits), key-delivery notices, timeouts and aborts.

Several rounds run at once, interleaved on the one connection (every frame names its round): Alice opens
rounds while fewer than ``LinkConfig.rounds_in_flight`` are open, so the round trips of one round's
reconciliation overlap with the others' instead of adding up over a long-distance link.

The caller feeds it peer frames (``receive``), quantum-channel results (``channel_result``), storage
confirmations (``stored``, ``notice_stored``), key notices to send (``send_notice``) and the clock
(``handle_timer``), and drains ``frames_to_send``, ``channel_requests`` and ``next_event``;
``get_timer`` says when to call ``handle_timer`` next. The caller must act on every event (persist,
commit) before it flushes frames, so nothing is promised to the peer that the disk does not hold yet.
Every frame either end sends is queued here. ``states.LINK_TRANSITIONS`` and
``states.ROUND_TRANSITIONS`` name, for every (state, input) pair the connection and each round accept,
the state it leads to; one method per table performs every transition and checks it. A peer input
missing from the round table ends that round (the link, once the round's key may be stored anywhere);
one missing from the link table ends the link; a call of ours that a table does not allow raises
``LocalProtocolError``.

Key confirmation and commit: an end commits a round only once it has stored the key itself and has the
peer's ``KeyStored``. Rounds store and commit one at a time in id order, whatever order their keys were
agreed in (``_store_in_turn`` says why), so at most one round is ever pending in the pool. A crash
leaves at most that one pending round, which the next hello settles with the rule in
``keystore.reconcile``, so the two pools never diverge.

Authentication: every round takes its tag keys from the one ``AuthKeyStore`` at the point its tags are
made, and names their offset on the wire; the peer reads the frames in the order they were sent, so it
takes the same offsets in the same order. A commit pays the round's refill into that store in memory,
as the caller's durable commit does on disk.

The configuration and the events the caller drains are in ``events.py``; the states, inputs and the
table in ``states.py``; what one round holds, its channel submission and its session in ``rounds.py``.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from qlinkmed.qcore import messages as qm
from qlinkmed.qcore.auth import AuthKeyStore
from qlinkmed.qcore.codec import Message
from qlinkmed.qcore.errors import AbortReason, LocalProtocolError
from qlinkmed.qcore.randomness import PartyRandomness
from qlinkmed.qcore.round_state import RoundOutcome
from qlinkmed.qcore.session import BobSession
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.events import (
    AuthAdvanced,
    ChannelRequest,
    CommitRound,
    DiscardRound,
    Event,
    HelloReceived,
    LinkClosed,
    LinkConfig,
    NoticeAcked,
    NoticeReceived,
    RoundEnded,
    RoundStarted,
    StorePending,
)
from qlinkmed.qlinkd.link.rounds import Round, key_confirmation, make_session, open_round, whole_bytes
from qlinkmed.qlinkd.link.states import (
    KEY_HELD,
    LINK_TRANSITIONS,
    ROUND_TRANSITIONS,
    Input,
    Role,
    RoundState,
    State,
)
from qlinkmed.qlinkd.pool.values import KeyNotice, LinkState

ROUNDS_BEFORE_SIFTING = 2
"""Alice opens a round only while fewer than this many wait for the quantum channel. Until sifting a
round holds arrays of a few bytes per pulse (tens of MB for 1e7 pulses) at each end and at the channel,
which emulates two rounds at a time anyway; after sifting it holds its raw key only. So memory follows
this bound and the round size, not the window, which can then be as wide as a long link's round trips
need."""


class LinkConnection:
    def __init__(
        self, config: LinkConfig, *, local: LinkState, auth: AuthKeyStore, randomness: PartyRandomness
    ) -> None:
        """`randomness`: this end's secret and public sources (the daemon's come from
        ``qlinkd.ops.entropy``, the OS CSPRNG; tests may inject seeded ones)."""
        self.config = config
        self.role = config.role
        self.state = State.EXPECT_HELLO
        self._local = local
        self._auth = auth
        self._auth_reported = auth.position
        self._randomness = randomness
        self._next_round = local.next_round
        self._rounds: dict[int, Round] = {}
        """Open rounds by id; ids only grow, so the dict's order is the rounds' order."""
        self._frames: list[tuple[int, lm.PeerMessage]] = []
        self._channel: list[ChannelRequest] = []
        self._events: deque[Event] = deque()
        self._hello_deadline: float | None = None
        self._committed = 0
        """Rounds committed on this connection (the window grows with them)."""

    # ---- draining ----------------------------------------------------------------------------------
    def frames_to_send(self) -> list[tuple[int, lm.PeerMessage]]:
        out, self._frames = self._frames, []
        return out

    def channel_requests(self) -> list[ChannelRequest]:
        out, self._channel = self._channel, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        deadlines = [r.deadline for r in self._rounds.values() if r.deadline is not None]
        if self._hello_deadline is not None:
            deadlines.append(self._hello_deadline)
        return min(deadlines, default=None)

    @property
    def open_rounds(self) -> tuple[int, ...]:
        """The ids of the rounds in flight, oldest first."""
        return tuple(self._rounds)

    def round_state(self, round_id: int) -> RoundState | None:
        """Where round `round_id` stands, None unless it is open."""
        rnd = self._rounds.get(round_id)
        return None if rnd is None else rnd.state

    @property
    def next_round(self) -> int:
        return self._next_round

    @property
    def window(self) -> int:
        """Rounds Alice may keep open now: two on a fresh connection, doubling with every round it
        commits, up to ``rounds_in_flight``. Rounds share the CPU, so a full window from the start would
        make the first key wait for all of them; doubling keys early and still fills a long link's pipe
        after a handful of commits (TCP's slow start, for the same reason)."""
        return min(self.config.rounds_in_flight, ROUNDS_BEFORE_SIFTING << min(self._committed, 8))

    @property
    def window_open(self) -> bool:
        """Alice may begin another round: the link is up, fewer rounds than the window are open, and fewer
        than ROUNDS_BEFORE_SIFTING of them still hold per-pulse arrays (waiting for the channel)."""
        if self.state is not State.UP or len(self._rounds) >= self.window:
            return False
        early = sum(r.state is RoundState.AWAIT_CHANNEL for r in self._rounds.values())
        return early < ROUNDS_BEFORE_SIFTING

    # ---- inputs ------------------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """The connection is up: introduce ourselves."""
        c = self.config
        hello = lm.Hello(
            facility=c.facility,
            peer=c.peer,
            protocol=c.protocol.value,
            source=c.source.value,
            pulses_per_round=c.pulses_per_round,
            eps_sec=c.distill.eps_sec,
            eps_cor=c.distill.eps_cor,
            e91_security=c.distill.e91_security.value,
            rounds_in_flight=c.rounds_in_flight,
            cascade=c.distill.cascade.value,
            **_decoy_fields(c),
            **asdict(self._local),
        )
        self._frames.append((0, hello))
        self._hello_deadline = now + c.round_timeout_s

    def hello_done(self, *, next_round: int, auth: AuthKeyStore, outbox: Sequence[KeyNotice] = ()) -> None:
        """The caller reconciled its pool with the peer's hello: rounds resume from `next_round`, and the
        notices the peer has not acknowledged (`outbox`, oldest first) go out again, ahead of any round."""
        self._next_round = next_round
        self.replace_auth(auth)
        self._frames.extend((0, notice) for notice in outbox)

    def replace_auth(self, auth: AuthKeyStore) -> None:
        """Use `auth` as the authentication store from now on (after the hello settled the pools). Open
        rounds share the one store and take their keys from it in order: it cannot change under them."""
        if self._rounds:
            raise LocalProtocolError("the authentication store cannot change while rounds are open")
        self._auth = auth
        self._auth_reported = auth.position

    def receive(self, round_id: int, message: lm.WireMessage, now: float) -> None:
        """One decoded frame from the peer."""
        if self.state is State.CLOSED:
            return
        if isinstance(message, lm.Hello):
            self._on_hello(message, now)
        elif isinstance(message, lm.RoundStart):
            self._on_round_start(round_id, message, now)
        elif isinstance(message, KeyNotice):
            if self._accept(Input.NOTICE):
                self._transition(Input.NOTICE, self.state)
                self._events.append(NoticeReceived(notice=message))
        elif isinstance(message, lm.NoticeAck):
            if self._accept(Input.NOTICE_ACK):
                self._transition(Input.NOTICE_ACK, self.state)
                self._events.append(NoticeAcked(key_id=message.key_id))
        elif isinstance(message, lm.KeyStored):
            self._on_key_stored(round_id, message, now)
        elif isinstance(message, Message):
            self._on_distill(round_id, message, now)
        else:
            self._link_violation(f"{type(message).__name__} does not belong on the classical channel")

    def begin_round(self, now: float) -> int:
        """Alice: start the next round (the caller decides when: see ``policy.round_start``, and
        ``window_open``)."""
        if self.role is not Role.ALICE:
            raise LocalProtocolError("only Alice starts rounds")
        self._accept_call(Input.BEGIN_ROUND)
        if not self.window_open:
            raise LocalProtocolError(f"{len(self._rounds)} rounds are open: the window is full")
        round_id = self._next_round
        self._transition(Input.BEGIN_ROUND, State.UP)
        self._open_round(round_id, now)
        self._frames.append((round_id, lm.RoundStart(pulses=self.config.pulses_per_round)))
        return round_id

    def channel_result(self, round_id: int, message: lm.WireMessage, now: float) -> None:
        """What the quantum channel returned for our submission (anything but an answer fails the round)."""
        rnd = self._rounds.get(round_id)
        if rnd is None or rnd.state is not RoundState.AWAIT_CHANNEL:
            return  # a late answer for an abandoned round
        if isinstance(message, lm.ChannelError):
            detail = f"quantum channel: {message.reason}"
            # Tell the peer at once: it would otherwise wait out its timeout for our first message.
            self._abort_round(rnd, AbortReason.CHANNEL_UNAVAILABLE, detail, now)
            return
        rnd.deadline = now + self.config.round_timeout_s
        try:
            session = make_session(self.config, rnd, message, auth=self._auth, randomness=self._randomness)
        except ValueError as exc:
            self._abort_round(rnd, AbortReason.PROTOCOL_VIOLATION, f"quantum channel: {exc}", now)
            return
        rnd.session = session
        # The session holds what it needs (and frees it after sifting); with several rounds open, the
        # round keeping its own references would hold every open round's per-pulse arrays.
        rnd.prepared, rnd.settings = None, None
        self._round_transition(rnd, Input.CHANNEL_RESULT, RoundState.DISTILLING)
        if isinstance(session, BobSession):
            self._send_distill(rnd, session.start())
        elif rnd.held is not None:
            held, rnd.held = rnd.held, None
            self._feed(rnd, held, now)

    def stored(self, round_id: int, now: float) -> None:
        """The caller made the pending key durable."""
        rnd = self._rounds.get(round_id)
        if rnd is None:
            return
        self._accept_round_call(rnd, Input.STORED)
        self._round_transition(rnd, Input.STORED, RoundState.AWAIT_CONFIRMATION)
        rnd.stored = True
        rnd.deadline = now + self.config.round_timeout_s
        confirmation = key_confirmation(rnd.key, round_id, self.config.facility)
        self._frames.append((round_id, lm.KeyStored(confirmation=confirmation)))
        self._maybe_commit(rnd, now)

    def send_notice(self, notice: KeyNotice) -> None:
        """A key was handed to a master SAE here (the store's outbox holds its notice): tell the peer.
        Before the hello nothing is sent: ``hello_done`` sends the whole outbox."""
        if self.state is State.CLOSED:
            return
        self._accept_call(Input.SEND_NOTICE)
        self._transition(Input.SEND_NOTICE, self.state)
        if self.state is not State.EXPECT_HELLO:
            self._frames.append((0, notice))

    def notice_stored(self, key_id: str) -> None:
        """The caller made the peer's notice `key_id` durable: acknowledge it (never before)."""
        if self.state is State.CLOSED:
            return
        self._accept_call(Input.NOTICE_STORED)
        self._transition(Input.NOTICE_STORED, self.state)
        self._frames.append((0, lm.NoticeAck(key_id=key_id)))

    def handle_timer(self, now: float) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.EXPECT_HELLO:
            if self._hello_deadline is not None and now >= self._hello_deadline:
                self._transition(Input.TIMER, self.state)
                self._close("no hello from the peer")
            return
        for rnd in list(self._rounds.values()):
            if rnd.round_id not in self._rounds:
                return  # an earlier round's timeout closed the link, which ended every round
            if rnd.deadline is None or now < rnd.deadline:
                continue
            self._round_transition(rnd, Input.TIMER, rnd.state)
            if rnd.state in KEY_HELD:
                # Our key may be stored and the peer's confirmation lost: only a new hello can settle it.
                self._close(f"no key confirmation from the peer for round {rnd.round_id}")
                return
            where = rnd.state.name
            if rnd.session is not None:
                rnd.session.expire()
            self._abort_round(rnd, AbortReason.TIMEOUT, f"no progress in {where}", now, tell=b"")

    def close(self, reason: str) -> None:
        """The transport went away."""
        if self.state is not State.CLOSED:
            self._close(reason)

    # ---- the tables --------------------------------------------------------------------------------
    def _accept(self, what: Input) -> bool:
        """Whether the peer's link-level input `what` is allowed now; if not, the violation ends the link."""
        if (self.state, what) in LINK_TRANSITIONS:
            return True
        self._link_violation(f"{what.name.lower()} not expected in {self.state.name}")
        return False

    def _accept_round(self, rnd: Round, what: Input, now: float) -> bool:
        """Whether the peer's input `what` for `rnd` is allowed now; if not, the violation ends the round
        (or the link, once the round's key may be stored)."""
        if (rnd.state, what) in ROUND_TRANSITIONS:
            return True
        self._round_violation(rnd, f"{what.name.lower()} not expected in {rnd.state.name}", now)
        return False

    def _accept_call(self, what: Input) -> None:
        """A call of ours that the table does not allow now is a bug in the caller, not the peer's doing."""
        if (self.state, what) not in LINK_TRANSITIONS:
            raise LocalProtocolError(f"{what.name.lower()} is not allowed in {self.state.name}")

    def _accept_round_call(self, rnd: Round, what: Input) -> None:
        if (rnd.state, what) not in ROUND_TRANSITIONS:
            raise LocalProtocolError(
                f"{what.name.lower()} is not allowed for round {rnd.round_id} in {rnd.state.name}"
            )

    def _transition(self, what: Input, to: State) -> None:
        """The one place the link's state changes: the handler's choice must be the table's."""
        expected = LINK_TRANSITIONS.get((self.state, what))
        if expected is not to:
            table = expected.name if expected is not None else "nothing"
            raise LocalProtocolError(
                f"{what.name} in {self.state.name} moved to {to.name}; the table says {table}"
            )
        self.state = to

    def _round_transition(self, rnd: Round, what: Input, to: RoundState) -> None:
        """The one place a round's state changes, checked against the round table."""
        expected = ROUND_TRANSITIONS.get((rnd.state, what))
        if expected is not to:
            table = expected.name if expected is not None else "nothing"
            raise LocalProtocolError(
                f"round {rnd.round_id}: {what.name} in {rnd.state.name} moved to {to.name}; "
                f"the table says {table}"
            )
        rnd.state = to

    # ---- handlers ----------------------------------------------------------------------------------
    def _on_hello(self, hello: lm.Hello, now: float) -> None:
        if not self._accept(Input.HELLO):
            return
        c = self.config
        problems = [
            f"{name} {theirs!r} differs from ours {mine!r}"
            for name, theirs, mine in (
                ("facility", hello.facility, c.peer),
                ("peer", hello.peer, c.facility),
                ("protocol", hello.protocol, c.protocol.value),
                ("source", hello.source, c.source.value),
                ("pulses_per_round", hello.pulses_per_round, c.pulses_per_round),
                # A round's length and verification hash depend on these: ends that differ would abort
                # every round on a mismatched hash or length, so the hello names the difference instead.
                ("eps_sec", hello.eps_sec, c.distill.eps_sec),
                ("eps_cor", hello.eps_cor, c.distill.eps_cor),
                ("e91_security", hello.e91_security, c.distill.e91_security.value),
                # Bob refuses a round start beyond his window: ends that differ would abort rounds.
                ("rounds_in_flight", hello.rounds_in_flight, c.rounds_in_flight),
                # Cascade's passes must have the same blocks at both ends.
                ("cascade", hello.cascade, c.distill.cascade.value),
                # Both ends of a decoy link must run the same source: Bob's basis bias and both ends'
                # decoy bound depend on it (and a source that differs is a configuration error to name).
                *((name, getattr(hello, name), mine) for name, mine in _decoy_fields(c).items()),
            )
            if theirs != mine
        ]
        if problems:
            self._close("hello refused: " + "; ".join(problems))
            return
        self._transition(Input.HELLO, State.UP)
        self._hello_deadline = None
        self._events.append(HelloReceived(remote=hello))  # a Hello is the peer's LinkState

    def _on_round_start(self, round_id: int, msg: lm.RoundStart, now: float) -> None:
        if self.role is not Role.BOB:
            self._link_violation("Bob does not start rounds")
            return
        if not self._accept(Input.ROUND_START):
            return
        refusal = None
        if round_id < self._next_round or msg.pulses != self.config.pulses_per_round:
            refusal = f"round {round_id} of {msg.pulses} pulses refused (next {self._next_round})"
        elif len(self._rounds) >= self.config.rounds_in_flight:
            # Alice keeps to the same window (the hello checked it), so this is not an honest peer's
            # doing; refusing keeps a flood of round starts from growing this end's memory.
            refusal = f"round {round_id} refused: {len(self._rounds)} rounds are already open"
        if refusal is not None:
            abort = qm.Abort(reason=int(AbortReason.PROTOCOL_VIOLATION), detail=refusal.encode())
            self._frames.append((round_id, abort))
            return
        self._transition(Input.ROUND_START, State.UP)
        self._open_round(round_id, now)

    def _round_for(self, round_id: int, what: str) -> Round | None:
        """The open round a peer frame names; None for one this end already left (it crossed our abort:
        ignored) or, after closing the link, for one that was never opened."""
        rnd = self._rounds.get(round_id)
        if rnd is None and round_id >= self._next_round:
            self._link_violation(f"{what} for round {round_id}, which was never opened")
        return rnd

    def _on_key_stored(self, round_id: int, msg: lm.KeyStored, now: float) -> None:
        if self.state is not State.UP:
            self._link_violation(f"key confirmation in {self.state.name}")
            return
        rnd = self._round_for(round_id, "key confirmation")
        if rnd is None or not self._accept_round(rnd, Input.KEY_STORED, now):
            return
        expected = key_confirmation(rnd.key, rnd.round_id, self.config.peer)
        if not hmac.compare_digest(msg.confirmation, expected):
            # Not the key we hold: never commit on it; the next hello settles our pending round.
            self._close(f"key confirmation for round {round_id} does not match our key")
            return
        self._round_transition(rnd, Input.KEY_STORED, rnd.state)
        rnd.peer_stored = True
        self._maybe_commit(rnd, now)

    def _open_round(self, round_id: int, now: float) -> None:
        rnd, submission = open_round(self.config, round_id, now, self._randomness)
        rnd.deadline = now + self.config.round_timeout_s
        self._rounds[round_id] = rnd
        self._next_round = round_id + 1
        self._events.append(RoundStarted(round_id=round_id))
        self._channel.append(ChannelRequest(round_id=round_id, message=submission))

    def _on_distill(self, round_id: int, msg: lm.Distill, now: float) -> None:
        if self.state is not State.UP:
            self._link_violation(f"{type(msg).__name__} in {self.state.name}")
            return
        rnd = self._round_for(round_id, type(msg).__name__)
        if rnd is None or not self._accept_round(rnd, Input.DISTILL, now):
            return
        if rnd.state is RoundState.AWAIT_CHANNEL:
            if isinstance(msg, qm.Abort):
                self._end_round(rnd, msg.peer_reason(), msg.describe(), now, by_peer=True)
            elif rnd.held is None and self.role is Role.ALICE:
                self._round_transition(rnd, Input.DISTILL, RoundState.AWAIT_CHANNEL)
                rnd.held = msg
            else:
                self._round_violation(rnd, f"{type(msg).__name__} before the channel result", now)
            return
        self._round_transition(rnd, Input.DISTILL, rnd.state)
        if rnd.deadline is not None:
            rnd.deadline = now + self.config.round_timeout_s
        self._feed(rnd, msg, now)

    def _feed(self, rnd: Round, msg: lm.Distill, now: float) -> None:
        session = rnd.session
        if session is None:
            return
        was_established = session.outcome is not None and session.outcome.established
        out = session.receive(msg)
        self._send_distill(rnd, out)
        outcome = session.outcome
        if outcome is None:
            return
        if outcome.established and not was_established:
            self._round_transition(rnd, Input.KEY_AGREED, RoundState.AGREED)
            rnd.key = whole_bytes(outcome.key)
            rnd.auth_refill = np.packbits(outcome.auth_refill).tobytes()
            rnd.deadline = None  # it waits for the rounds before it, which have their own deadlines
            self._store_in_turn()
        elif not outcome.established:
            if rnd.store_requested:
                self._events.append(DiscardRound(round_id=rnd.round_id))
            reason, by_peer = outcome.abort_reason, False
            if reason is AbortReason.PEER_ABORTED and isinstance(msg, qm.Abort):
                # Report the cause the peer measured (an eavesdropper's QBER is an alarm at both ends).
                reason, by_peer = msg.peer_reason(), True
            self._end_round(rnd, reason, outcome.abort_detail, now, outcome=outcome, by_peer=by_peer)

    def _store_in_turn(self) -> None:
        """Ask the caller to store the oldest open round's key once it is agreed. Rounds store and commit
        strictly in id order, one at a time, at both ends: the pool then never holds more than one
        pending round (the hello's settling rule stays exact), and each commit's refill lands in the
        authentication store at the same offset at both ends (so the keys a later round takes, named
        by their offset, are the same bytes at both ends)."""
        if self.state is not State.UP or not self._rounds:
            return
        first = next(iter(self._rounds.values()))
        if first.state is not RoundState.AGREED or first.store_requested:
            return
        first.store_requested = True
        first.deadline = None
        self._events.append(
            StorePending(
                round_id=first.round_id,
                owner=self.config.owner_of(first.round_id),
                key=first.key,
                auth_refill=first.auth_refill,
            )
        )

    def _send_distill(self, rnd: Round, out: list[Message]) -> None:
        if self._auth.position != self._auth_reported:
            # Ahead of the frames that used the keys: the caller persists before it sends.
            self._auth_reported = self._auth.position
            self._events.append(AuthAdvanced(position=self._auth.position))
        self._frames.extend((rnd.round_id, _distill(msg)) for msg in out)

    def _maybe_commit(self, rnd: Round, now: float) -> None:
        if not (rnd.stored and rnd.peer_stored):
            return
        self._events.append(CommitRound(round_id=rnd.round_id))
        self._committed += 1
        # The durable store appends the same refill when the caller commits; the rounds still open take
        # their keys from this in-memory twin, so it must hold exactly what the durable one holds.
        self._auth.replenish(rnd.auth_refill)
        outcome = rnd.session.outcome if rnd.session is not None else None
        self._end_round(rnd, AbortReason.NONE, "", now, outcome=outcome, key_bits=8 * len(rnd.key))

    def _abort_round(
        self, rnd: Round, reason: AbortReason, detail: str, now: float, *, tell: bytes | None = None
    ) -> None:
        """End `rnd` on our side and tell the peer why (`tell`, else `detail`)."""
        text = detail.encode()[:512] if tell is None else tell
        self._frames.append((rnd.round_id, qm.Abort(reason=int(reason), detail=text)))
        self._end_round(rnd, reason, detail, now)

    def _end_round(
        self,
        rnd: Round,
        reason: AbortReason,
        detail: str,
        now: float,
        *,
        outcome: RoundOutcome | None = None,
        by_peer: bool = False,
        key_bits: int = 0,
    ) -> None:
        del self._rounds[rnd.round_id]
        self._round_transition(rnd, Input.ROUND_ENDED, RoundState.ENDED)
        rnd.deadline = None
        self._events.append(
            RoundEnded(
                round_id=rnd.round_id,
                outcome=outcome,
                reason=reason,
                detail=detail,
                started_at=rnd.started_at,
                ended_at=now,
                by_peer=by_peer,
                key_bits=key_bits,
            )
        )
        self._store_in_turn()

    def _round_violation(self, rnd: Round, detail: str, now: float) -> None:
        if rnd.state in KEY_HELD:
            self._close(f"protocol violation while confirming round {rnd.round_id}: {detail}")
            return
        if rnd.session is not None:
            rnd.session.expire()
        self._abort_round(rnd, AbortReason.PROTOCOL_VIOLATION, detail, now)

    def _link_violation(self, detail: str) -> None:
        where = " before hello" if self.state is State.EXPECT_HELLO else ""
        self._close(f"protocol violation{where}: {detail}")

    def _close(self, reason: str) -> None:
        # A pending key stays pending: the next hello settles it (never discard it here).
        self._transition(Input.CLOSE, State.CLOSED)
        self._hello_deadline = None
        for rnd in list(self._rounds.values()):
            outcome = rnd.session.outcome if rnd.session is not None else None
            self._end_round(rnd, AbortReason.LINK_LOST, reason, rnd.started_at, outcome=outcome)
        self._events.append(LinkClosed(reason=reason))


def _distill(msg: Message) -> lm.Distill:
    """A session's output, as the union the wire carries (the sessions return qcore's base type)."""
    if isinstance(msg, lm.DISTILL_TYPES):
        return msg
    raise LocalProtocolError(f"{type(msg).__name__} is no distillation message")


def _decoy_fields(config: LinkConfig) -> dict[str, Any]:
    """The hello's decoy-source fields for this end's configuration (empty and 0 without decoys)."""
    decoy = config.distill.decoy
    if decoy is None:
        return {"decoy_intensities": (), "decoy_probabilities": (), "decoy_p_x": 0.0}
    return {
        "decoy_intensities": tuple(decoy.intensities),
        "decoy_probabilities": tuple(decoy.probabilities),
        "decoy_p_x": decoy.p_x,
    }
