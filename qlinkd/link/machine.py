"""The link protocol between two facilities as a sans-IO state machine.

One ``LinkConnection`` per connected peer. It composes the qcore distillation sessions (one per round)
with what a running link adds around them: the hello that brings both durable key pools into
agreement, the round start, the quantum-channel submissions, key confirmation (``KeyStored`` both ways
before either end commits), key-delivery notices, timeouts and aborts.

The caller feeds it peer frames (``receive``), quantum-channel results (``channel_result``), storage
confirmations (``stored``, ``notice_stored``), key notices to send (``send_notice``) and the clock
(``handle_timer``), and drains ``frames_to_send``, ``channel_requests`` and ``next_event``;
``get_timer`` says when to call ``handle_timer`` next. The caller must act on every event (persist,
commit) before it flushes frames, so nothing is promised to the peer that the disk does not hold yet.
Every frame either end sends is queued here. ``states.TRANSITIONS`` names, for every (state, input) pair
the link accepts, the state it leads to; one method performs every transition and checks it against the
table. A peer input missing from the table ends the round (or, before the hello or between rounds, the
connection); a call of ours that the table does not allow raises ``LocalProtocolError``.

Key confirmation and commit: an end commits a round only once it has stored the key itself and has the
peer's ``KeyStored``. A crash in between leaves a pending round that the next hello settles with the
rule in ``keystore.reconcile``, so the two pools never diverge.

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
from qlinkmed.qlinkd.link.states import TRANSITIONS, Input, Role, State
from qlinkmed.qlinkd.pool.values import KeyNotice, LinkState


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
        self._round: Round | None = None
        self._frames: list[tuple[int, lm.PeerMessage]] = []
        self._channel: list[ChannelRequest] = []
        self._events: deque[Event] = deque()
        self._deadline: float | None = None

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
        return self._deadline

    @property
    def round_id(self) -> int | None:
        return self._round.round_id if self._round is not None else None

    @property
    def next_round(self) -> int:
        return self._next_round

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
            **_decoy_fields(c),
            **asdict(self._local),
        )
        self._frames.append((0, hello))
        self._deadline = now + c.round_timeout_s

    def hello_done(self, *, next_round: int, auth: AuthKeyStore, outbox: Sequence[KeyNotice] = ()) -> None:
        """The caller reconciled its pool with the peer's hello: rounds resume from `next_round`, and the
        notices the peer has not acknowledged (`outbox`, oldest first) go out again, ahead of any round."""
        self._next_round = next_round
        self.replace_auth(auth)
        self._frames.extend((0, notice) for notice in outbox)

    def replace_auth(self, auth: AuthKeyStore) -> None:
        """The durable authentication store changed (a commit refilled it): use its current state."""
        if self._round is not None and self._round.session is not None and self.state is State.DISTILLING:
            raise LocalProtocolError("the authentication store cannot change under a running session")
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
            if self._accept(Input.NOTICE, now):
                self._transition(Input.NOTICE, self.state)
                self._events.append(NoticeReceived(notice=message))
        elif isinstance(message, lm.NoticeAck):
            if self._accept(Input.NOTICE_ACK, now):
                self._transition(Input.NOTICE_ACK, self.state)
                self._events.append(NoticeAcked(key_id=message.key_id))
        elif isinstance(message, lm.KeyStored):
            self._on_key_stored(round_id, message, now)
        elif isinstance(message, Message):
            self._on_distill(round_id, message, now)
        else:
            self._violation(f"{type(message).__name__} does not belong on the classical channel", now)

    def begin_round(self, now: float) -> int:
        """Alice: start the next round (the caller decides when: see ``policy.round_start``)."""
        if self.role is not Role.ALICE:
            raise LocalProtocolError("only Alice starts rounds")
        self._accept_call(Input.BEGIN_ROUND)
        round_id = self._next_round
        self._open_round(round_id, Input.BEGIN_ROUND, now)
        self._frames.append((round_id, lm.RoundStart(pulses=self.config.pulses_per_round)))
        return round_id

    def channel_result(self, round_id: int, message: lm.WireMessage, now: float) -> None:
        """What the quantum channel returned for our submission (anything but an answer fails the round)."""
        rnd = self._round
        if rnd is None or rnd.round_id != round_id or self.state is not State.AWAIT_CHANNEL:
            return  # a late answer for an abandoned round
        if isinstance(message, lm.ChannelError):
            detail = f"quantum channel: {message.reason}"
            # Tell the peer at once: it would otherwise wait out its timeout for our first message.
            self._abort_round(AbortReason.CHANNEL_UNAVAILABLE, detail, now)
            return
        self._deadline = now + self.config.round_timeout_s
        try:
            session = make_session(self.config, rnd, message, auth=self._auth, randomness=self._randomness)
        except ValueError as exc:
            self._abort_round(AbortReason.PROTOCOL_VIOLATION, f"quantum channel: {exc}", now)
            return
        rnd.session = session
        self._transition(Input.CHANNEL_RESULT, State.DISTILLING)
        if isinstance(session, BobSession):
            self._send_distill(rnd, session.start())
        elif rnd.held is not None:
            held, rnd.held = rnd.held, None
            self._feed(rnd, held, now)

    def stored(self, round_id: int, now: float) -> None:
        """The caller made the pending key durable."""
        rnd = self._round
        if rnd is None or rnd.round_id != round_id:
            return
        self._accept_call(Input.STORED)
        self._transition(Input.STORED, State.AWAIT_CONFIRMATION)
        rnd.stored = True
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
        if self.state is State.CLOSED or self._deadline is None or now < self._deadline:
            return
        self._transition(Input.TIMER, self.state)
        if self.state is State.EXPECT_HELLO:
            self._close("no hello from the peer")
        elif self.state is State.AWAIT_CONFIRMATION:
            # Our key may be stored and the peer's confirmation lost: only a new hello can settle it.
            self._close("no key confirmation from the peer")
        elif self._round is not None:
            where = self.state.name
            if self._round.session is not None:
                self._round.session.expire()
            self._abort_round(AbortReason.TIMEOUT, f"no progress in {where}", now, tell=b"")
        else:
            self._deadline = None

    def close(self, reason: str) -> None:
        """The transport went away."""
        if self.state is not State.CLOSED:
            self._close(reason)

    # ---- the table ---------------------------------------------------------------------------------
    def _accept(self, what: Input, now: float) -> bool:
        """Whether the peer's input `what` is allowed now; if not, the violation ends the round or link."""
        if (self.state, what) in TRANSITIONS:
            return True
        self._violation(f"{what.name.lower()} not expected in {self.state.name}", now)
        return False

    def _accept_call(self, what: Input) -> None:
        """A call of ours that the table does not allow now is a bug in the caller, not the peer's doing."""
        if (self.state, what) not in TRANSITIONS:
            raise LocalProtocolError(f"{what.name.lower()} is not allowed in {self.state.name}")

    def _transition(self, what: Input, to: State) -> None:
        """The one place the state changes: the handler's choice must be the table's."""
        expected = TRANSITIONS.get((self.state, what))
        if expected is not to:
            table = expected.name if expected is not None else "nothing"
            raise LocalProtocolError(
                f"{what.name} in {self.state.name} moved to {to.name}; the table says {table}"
            )
        self.state = to

    # ---- handlers ----------------------------------------------------------------------------------
    def _on_hello(self, hello: lm.Hello, now: float) -> None:
        if not self._accept(Input.HELLO, now):
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
                # Both ends of a decoy link must run the same source: Bob's basis bias and both ends'
                # decoy bound depend on it (and a source that differs is a configuration error to name).
                *((name, getattr(hello, name), mine) for name, mine in _decoy_fields(c).items()),
            )
            if theirs != mine
        ]
        if problems:
            self._close("hello refused: " + "; ".join(problems))
            return
        self._transition(Input.HELLO, State.IDLE)
        self._deadline = None
        self._events.append(HelloReceived(remote=hello))  # a Hello is the peer's LinkState

    def _on_round_start(self, round_id: int, msg: lm.RoundStart, now: float) -> None:
        if self.role is not Role.BOB:
            self._violation("Bob does not start rounds", now)
            return
        if not self._accept(Input.ROUND_START, now):
            return
        if round_id < self._next_round or msg.pulses != self.config.pulses_per_round:
            # A replayed or foreign round start: refuse it without touching our state.
            detail = f"round {round_id} of {msg.pulses} pulses refused (next {self._next_round})"
            abort = qm.Abort(reason=int(AbortReason.PROTOCOL_VIOLATION), detail=detail.encode())
            self._frames.append((round_id, abort))
            return
        self._open_round(round_id, Input.ROUND_START, now)

    def _on_key_stored(self, round_id: int, msg: lm.KeyStored, now: float) -> None:
        if self._stale(round_id) or not self._accept(Input.KEY_STORED, now):
            return
        rnd = self._round
        if rnd is None or rnd.round_id != round_id:
            self._violation(f"key confirmation for round {round_id}, not the current one", now)
            return
        expected = key_confirmation(rnd.key, rnd.round_id, self.config.peer)
        if not hmac.compare_digest(msg.confirmation, expected):
            # Not the key we hold: never commit on it; the next hello settles our pending round.
            self._close(f"key confirmation for round {round_id} does not match our key")
            return
        self._transition(Input.KEY_STORED, State.AWAIT_CONFIRMATION)
        rnd.peer_stored = True
        self._maybe_commit(rnd, now)

    def _open_round(self, round_id: int, via: Input, now: float) -> None:
        rnd, submission = open_round(self.config, round_id, now, self._randomness)
        self._round = rnd
        self._next_round = round_id + 1
        self._events.append(RoundStarted(round_id=round_id))
        self._channel.append(ChannelRequest(round_id=round_id, message=submission))
        self._transition(via, State.AWAIT_CHANNEL)
        self._deadline = now + self.config.round_timeout_s

    def _on_distill(self, round_id: int, msg: lm.Distill, now: float) -> None:
        rnd = self._round
        if self._stale(round_id):
            return
        if rnd is None or round_id != rnd.round_id:
            self._violation(f"{type(msg).__name__} for unknown round {round_id}", now)
            return
        if not self._accept(Input.DISTILL, now):
            return
        if self.state is State.AWAIT_CHANNEL:
            if isinstance(msg, qm.Abort):
                self._end_round(msg.peer_reason(), msg.describe(), now, by_peer=True)
            elif rnd.held is None and self.role is Role.ALICE:
                self._transition(Input.DISTILL, State.AWAIT_CHANNEL)
                rnd.held = msg
            else:
                self._violation(f"{type(msg).__name__} before the channel result", now)
            return
        self._transition(Input.DISTILL, self.state)
        self._deadline = now + self.config.round_timeout_s
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
            self._transition(Input.KEY_AGREED, State.AWAIT_CONFIRMATION)
            rnd.key = whole_bytes(outcome.key)
            self._events.append(
                StorePending(
                    round_id=rnd.round_id,
                    owner=self.config.owner_of(rnd.round_id),
                    key=rnd.key,
                    auth_refill=np.packbits(outcome.auth_refill).tobytes(),
                )
            )
        elif not outcome.established:
            if was_established or rnd.stored:
                self._events.append(DiscardRound(round_id=rnd.round_id))
            reason, by_peer = outcome.abort_reason, False
            if reason is AbortReason.PEER_ABORTED and isinstance(msg, qm.Abort):
                # Report the cause the peer measured (an eavesdropper's QBER is an alarm at both ends).
                reason, by_peer = msg.peer_reason(), True
            self._end_round(reason, outcome.abort_detail, now, outcome=outcome, by_peer=by_peer)

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
        outcome = rnd.session.outcome if rnd.session is not None else None
        self._end_round(AbortReason.NONE, "", now, outcome=outcome, key_bits=8 * len(rnd.key))

    def _stale(self, round_id: int) -> bool:
        """A message for a round this end already left (it crossed our abort): ignored, not a violation."""
        if self.state is State.EXPECT_HELLO or self._current(round_id):
            return False
        return round_id < self._next_round

    def _current(self, round_id: int) -> bool:
        return self._round is not None and self._round.round_id == round_id

    def _abort_round(
        self, reason: AbortReason, detail: str, now: float, *, tell: bytes | None = None
    ) -> None:
        """End the running round on our side and tell the peer why (`tell`, else `detail`)."""
        rnd = self._round
        if rnd is None:
            return
        text = detail.encode()[:512] if tell is None else tell
        self._frames.append((rnd.round_id, qm.Abort(reason=int(reason), detail=text)))
        self._end_round(reason, detail, now)

    def _end_round(
        self,
        reason: AbortReason,
        detail: str,
        now: float,
        *,
        outcome: RoundOutcome | None = None,
        by_peer: bool = False,
        key_bits: int = 0,
    ) -> None:
        rnd = self._round
        if rnd is None:
            return
        self._round = None
        self._transition(Input.ROUND_ENDED, State.IDLE)
        self._deadline = None
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

    def _violation(self, detail: str, now: float) -> None:
        if self.state is State.EXPECT_HELLO:
            self._close(f"protocol violation before hello: {detail}")
            return
        rnd = self._round
        if rnd is None:
            self._close(f"protocol violation: {detail}")
            return
        if self.state is State.AWAIT_CONFIRMATION:
            self._close(f"protocol violation while confirming round {rnd.round_id}: {detail}")
            return
        if rnd.session is not None:
            rnd.session.expire()
        self._abort_round(AbortReason.PROTOCOL_VIOLATION, detail, now)

    def _close(self, reason: str) -> None:
        # A pending key stays pending: the next hello settles it (never discard it here).
        rnd = self._round
        if rnd is not None:
            outcome = rnd.session.outcome if rnd.session is not None else None
            self._end_round(AbortReason.LINK_LOST, reason, rnd.started_at, outcome=outcome)
        self._transition(Input.CLOSE, State.CLOSED)
        self._deadline = None
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
