"""The link machine, sans IO: rounds, key confirmation, crash recovery by hello, and every way a peer or a
man in the middle can break a round (each must end it with no key in either pool)."""

from __future__ import annotations

import dataclasses
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qlinkmed.qcore import messages as qm
from qlinkmed.qcore.channel import Eavesdropper, EveKind
from qlinkmed.qcore.errors import AbortReason, LocalProtocolError
from qlinkmed.qcore.randomness import PartyRandomness
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.events import (
    HelloReceived,
    LinkClosed,
    LinkConfig,
    NoticeAcked,
    NoticeReceived,
    RoundEnded,
)
from qlinkmed.qlinkd.link.machine import LinkConnection
from qlinkmed.qlinkd.link.rounds import Round
from qlinkmed.qlinkd.link.states import (
    CONSEQUENCES,
    LINK_TRANSITIONS,
    PEER_INPUTS,
    ROUND_PEER_INPUTS,
    ROUND_TRANSITIONS,
    Input,
    Role,
    RoundState,
    State,
)
from qlinkmed.qlinkd.link.wire import decode_frame, encode_frame
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.pool.values import KeyNotice, Segment
from tests.link_pair import PULSES, LinkPair, Tap


def _pool(store: KeyStore, peer: str) -> tuple[int, int, int]:
    state = store.link_state(peer)
    return store.pool_bits(peer), state.last_committed, state.pending_round


def _keys_equal(pair: LinkPair) -> bool:
    a, b = pair.a, pair.b
    return a.store.pool_bits(a.peer, owner=a.name) == b.store.pool_bits(
        b.peer, owner=a.name
    ) and a.store.pool_bits(a.peer, owner=b.name) == b.store.pool_bits(b.peer, owner=b.name)


@pytest.fixture
def pair(tmp_path: Path) -> LinkPair:
    p = LinkPair(tmp_path)
    p.connect()
    return p


def test_hello_brings_both_ends_up_with_no_round_open(pair: LinkPair) -> None:
    assert pair.a.link.state is State.UP and pair.b.link.state is State.UP
    assert pair.a.link.open_rounds == () == pair.b.link.open_rounds
    assert pair.a.link.role is Role.ALICE and pair.b.link.role is Role.BOB


def test_round_commits_identical_key_at_both_ends(pair: LinkPair) -> None:
    round_id = pair.run_round()
    for end in pair.ends():
        (ended,) = pair.ended(end)
        assert ended.established and ended.round_id == round_id
        assert end.store.link_state(end.peer).last_committed == round_id
        assert end.store.link_state(end.peer).pending_round == 0
    assert pair.a.store.pool_bits(pair.a.peer) >= 512
    # The first round's key belongs to Alice (odd rounds): she can hand it out, Bob mirrors it.
    assert pair.a.store.pool_bits(pair.a.peer, owner="hospital-a") == pair.a.store.pool_bits(pair.a.peer)
    assert _keys_equal(pair)
    # Both ends carve the same bytes: Alice hands out a key, Bob accepts the notice and yields equal bytes.
    (key,) = pair.a.store.take_keys(
        pair.a.peer, owner="hospital-a", number=1, size_bits=256, master_sae="m", slave_sae="s"
    )
    (notice,) = pair.a.store.outbox(pair.a.peer)
    pair.b.store.accept_notice(pair.b.peer, notice)
    (mirror,) = pair.b.store.fetch_keys(pair.b.peer, [key.key_id], master_sae="m", slave_sae="s")
    assert mirror.material == key.material


def test_rounds_alternate_ownership_and_refill_authentication(pair: LinkPair) -> None:
    reserve = pair.a.store.auth_reserve_bits(pair.a.peer)
    first, second = pair.run_round(), pair.run_round()
    assert second == first + 1
    assert pair.a.store.pool_bits(pair.a.peer, owner="hospital-b") > 0
    assert pair.a.store.auth_reserve_bits(pair.a.peer) == reserve  # each round paid back what it used
    assert (
        pair.a.store.link_state(pair.a.peer).auth_position
        == pair.b.store.link_state(pair.b.peer).auth_position
    )


@pytest.mark.parametrize("kind", [EveKind.INTERCEPT_RESEND])
def test_eavesdropper_aborts_at_both_ends_and_no_key_enters_the_pool(tmp_path: Path, kind: EveKind) -> None:
    pair = LinkPair(tmp_path, eve=Eavesdropper(kind=kind, fraction=1.0))
    pair.connect()
    pair.run_round()
    for end in pair.ends():
        (ended,) = pair.ended(end)
        assert ended.reason is AbortReason.QBER_ABOVE_THRESHOLD
        assert end.store.pool_bits(end.peer) == 0 and _pool(end.store, end.peer)[2] == 0
        # Each end judged on its own evidence: Bob sends his test bits ahead of his Abort.
        outcome = pair.ended(end)[0].outcome
        assert outcome is not None
        stats = outcome.statistics
        assert not pair.ended(end)[0].by_peer and stats is not None and stats.qber > 0.2
    # Detached: the next round establishes again.
    pair.broker.eve = Eavesdropper()
    pair.run_round()
    assert pair.ended(pair.a)[-1].established and pair.a.store.pool_bits(pair.a.peer) > 0


def _flip_first(message: lm.Distill) -> lm.Distill:
    """The message with one bit of its first array field flipped: a man in the middle's edit."""
    for name, _ in message.layout():
        value = getattr(message, name)
        # The field is found at run time (from the layout), so the edit is typed as the layout is: Any.
        edit: dict[str, Any] = {}
        if isinstance(value, np.ndarray) and value.size:
            edit[name] = value.copy()
            edit[name][0] ^= 1
        elif isinstance(value, bytes) and value:
            edit[name] = bytes([value[0] ^ 1]) + value[1:]
        if edit:
            return dataclasses.replace(message, **edit)
    raise AssertionError(f"nothing to flip in {type(message).__name__}")


def _attack(kind: str, victim_type: type[lm.Distill], sender: str) -> Tap:
    done = False
    held: bytes | None = None

    def tap(who: str, round_id: int, message: object, data: bytes) -> list[bytes]:
        nonlocal done, held
        if who != sender or (done and held is None):
            return [data]
        if held is not None:  # reorder: release the held frame after this one
            release, held = held, None
            return [data, release]
        if not isinstance(message, victim_type):
            return [data]
        done = True
        if kind == "drop":
            return []
        if kind == "replay":
            return [data, data]
        if kind == "reorder":
            held = data
            return []
        return [encode_frame(_flip_first(message), round_id)]

    return tap


@pytest.mark.parametrize(
    ("kind", "victim", "sender"),
    [
        ("modify", qm.ParityReply, "hospital-a"),
        ("modify", qm.Estimate, "hospital-b"),
        ("modify", qm.AuthTag, "hospital-a"),
        ("replay", qm.ParityRequest, "hospital-b"),
        ("replay", qm.ParityReply, "hospital-a"),
        ("reorder", qm.ParityRequest, "hospital-b"),
        ("reorder", qm.Estimate, "hospital-b"),
        ("drop", qm.ParityReply, "hospital-a"),
        ("drop", qm.Verify, "hospital-b"),
    ],
)
def test_classical_tampering_aborts_the_round_with_no_key(
    pair: LinkPair, kind: str, victim: type[lm.Distill], sender: str
) -> None:
    pair.tap = _attack(kind, victim, sender)
    pair.run_round()
    if kind == "drop" or any(not pair.ended(e) for e in pair.ends()):
        pair.expire()
    for end in pair.ends():
        ended = pair.ended(end)
        assert ended and not ended[-1].established, (end.name, ended)
        assert end.store.pool_bits(end.peer) == 0
        assert end.store.link_state(end.peer).last_committed == 0
        assert end.store.link_state(end.peer).pending_round == 0 or end.link.state is State.CLOSED
    # Whatever happened, the link recovers: a new connection settles any pending round, then keys flow.
    fresh = LinkPair(pair.root, stores=(pair.a.store, pair.b.store))
    fresh.connect()
    fresh.run_round()
    assert fresh.ended(fresh.a)[-1].established
    assert _keys_equal(fresh)


def test_modified_sifting_is_caught_by_authentication(pair: LinkPair) -> None:
    pair.tap = _attack("modify", qm.Sifting, "hospital-a")
    pair.run_round()
    reasons = {pair.ended(e)[-1].reason for e in pair.ends()}
    assert reasons & {
        AbortReason.AUTHENTICATION_FAILED,
        AbortReason.VERIFICATION_FAILED,
        AbortReason.PROTOCOL_VIOLATION,
    }
    assert all(e.store.pool_bits(e.peer) == 0 for e in pair.ends())


def _lose_first(kind: type, sender: str):
    lost = {"done": False}

    def tap(who: str, round_id: int, message: object, data: bytes) -> list[bytes]:
        if who == sender and isinstance(message, kind) and not lost["done"]:
            lost["done"] = True
            return []
        return [data]

    return tap


@pytest.mark.parametrize("sender", ["hospital-a", "hospital-b"])
def test_lost_key_confirmation_is_settled_by_the_next_hello(pair: LinkPair, sender: str) -> None:
    pair.tap = _lose_first(lm.KeyStored, sender)
    round_id = pair.run_round()
    states = {e.name: e.store.link_state(e.peer) for e in pair.ends()}
    # Exactly one end is left with the round pending; the other committed it.
    assert sorted((s.pending_round, s.last_committed) for s in states.values()) == [
        (0, round_id),
        (round_id, 0),
    ]
    fresh = LinkPair(pair.root, stores=(pair.a.store, pair.b.store))
    fresh.connect()
    for end in fresh.ends():
        state = end.store.link_state(end.peer)
        assert (state.last_committed, state.pending_round) == (round_id, 0)
    assert _keys_equal(fresh) and fresh.a.store.pool_bits(fresh.a.peer) > 0


def test_round_stored_at_bob_only_is_discarded_by_the_next_hello(pair: LinkPair) -> None:
    # Alice "crashes" before she sees Bob's tag: Bob has stored the key, Alice never did.
    cut = {"on": False}

    def tap(who: str, round_id: int, message: object, data: bytes) -> list[bytes]:
        if who == "hospital-b" and isinstance(message, qm.AuthTag):
            cut["on"] = True
        return [] if cut["on"] and who == "hospital-b" else [data]

    pair.tap = tap
    pair.run_round()
    assert pair.b.store.link_state(pair.b.peer).pending_round == 1
    assert pair.a.store.link_state(pair.a.peer).pending_round == 0
    fresh = LinkPair(pair.root, stores=(pair.a.store, pair.b.store))
    fresh.connect()
    for end in fresh.ends():
        assert _pool(end.store, end.peer) == (0, 0, 0)
    assert fresh.run_round() == 2  # round ids never repeat


def test_replayed_round_start_is_refused(pair: LinkPair) -> None:
    pair.run_round()
    pair.b.link.receive(1, lm.RoundStart(pulses=pair.pulses), pair.now)
    assert pair.b.link.state is State.UP and pair.b.link.open_rounds == ()
    (round_id, abort), *_ = pair.b.link.frames_to_send()
    assert round_id == 1 and isinstance(abort, qm.Abort)
    assert abort.reason == AbortReason.PROTOCOL_VIOLATION


def test_hello_with_other_parameters_closes_the_link(tmp_path: Path) -> None:
    pair = LinkPair(tmp_path)
    bad = lm.Hello(
        facility="hospital-b",
        peer="hospital-a",
        protocol="e91",
        source="single-photon",
        pulses_per_round=pair.pulses,
        next_round=1,
        last_committed=0,
        pending_round=0,
        auth_position=0,
    )
    pair.a.link.start(0.0)
    pair.a.link.receive(0, bad, 0.0)
    assert pair.a.link.state is State.CLOSED
    closed = [e for e in iter(pair.a.link.next_event, None) if isinstance(e, LinkClosed)]
    assert closed and "protocol" in closed[0].reason


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("eps_sec", 1e-9),
        ("eps_cor", 0.0),
        ("e91_security", "device-independent"),
        ("rounds_in_flight", 4),
        ("cascade", "few-round-trips"),
    ],
)
def test_hello_with_other_security_parameters_closes_the_link(
    tmp_path: Path, field: str, value: object
) -> None:
    # Regression (issue 15): ends with different eps (or an older peer, which sends 0) aborted every round
    # on a mismatched hash or length; the hello now names the difference.
    pair = LinkPair(tmp_path)
    fields = {
        "facility": "hospital-b",
        "peer": "hospital-a",
        "protocol": "bb84",
        "source": "single-photon",
        "pulses_per_round": pair.pulses,
        "next_round": 1,
        "last_committed": 0,
        "pending_round": 0,
        "auth_position": 0,
        "rounds_in_flight": 1,
        "cascade": "low-latency",
    }
    pair.a.link.start(0.0)
    (_, ours), *_ = pair.a.link.frames_to_send()
    assert isinstance(ours, lm.Hello) and (ours.eps_sec, ours.eps_cor) == (1e-10, 1e-10)
    decoded = decode_frame(encode_frame(lm.Hello(**{**fields, field: value}), 0))[1]  # type: ignore[arg-type]
    pair.a.link.receive(0, decoded, 0.0)
    assert pair.a.link.state is State.CLOSED
    closed = [e for e in iter(pair.a.link.next_event, None) if isinstance(e, LinkClosed)]
    assert closed and f"{field} {value!r} differs" in closed[0].reason


def test_silent_peer_times_out_and_nothing_is_kept(pair: LinkPair) -> None:
    pair.tap = lambda who, r, m, d: [] if who == "hospital-b" else [d]
    pair.run_round()
    pair.expire()
    (ended,) = pair.ended(pair.a)
    assert ended.reason is AbortReason.TIMEOUT
    assert pair.a.store.pool_bits(pair.a.peer) == 0


# ---- the transition table, exhaustively ------------------------------------------------------------
NOTICE = KeyNotice(
    key_id="00000000-0000-4000-8000-000000000000",
    master_sae="m",
    slave_sae="s",
    segments=(Segment(round_id=1, start=0, length=32),),
)


def _peer_input(kind: Input, round_id: int) -> tuple[int, lm.PeerMessage]:
    if kind is Input.HELLO:
        return 0, lm.Hello(
            facility="hospital-a",
            peer="hospital-b",
            protocol="bb84",
            source="single-photon",
            pulses_per_round=PULSES,
            next_round=1,
            last_committed=0,
            pending_round=0,
            auth_position=0,
            rounds_in_flight=1,
            cascade="low-latency",
        )
    if kind is Input.ROUND_START:
        return round_id, lm.RoundStart(pulses=7)
    if kind is Input.DISTILL:
        return round_id, qm.Estimate(test_bits=np.zeros(3, dtype=np.uint8))
    if kind is Input.KEY_STORED:
        return round_id, lm.KeyStored(confirmation=bytes(16))
    if kind is Input.NOTICE:
        return 0, NOTICE
    return 0, lm.NoticeAck(key_id=NOTICE.key_id)


HELD_FRAMES: dict[str, lm.PeerMessage] = {}


def _bob_link_in(state: State, root: Path) -> LinkPair:
    pair = LinkPair(root)
    if state is State.EXPECT_HELLO:
        pair.b.link.start(0.0)
    else:
        pair.connect()
    return pair


@pytest.mark.parametrize("state", [s for s in State if s is not State.CLOSED])
@pytest.mark.parametrize("kind", sorted(PEER_INPUTS, key=attrgetter("value")))
def test_every_peer_input_to_the_link_moves_by_its_table_or_ends_the_link(
    tmp_path: Path, state: State, kind: Input
) -> None:
    pair = _bob_link_in(state, tmp_path)
    bob = pair.b.link
    list(iter(bob.next_event, None))
    round_id, message = _peer_input(kind, bob.next_round)
    bob.receive(round_id, message, pair.now)
    if kind in ROUND_PEER_INPUTS:
        # Addressed to a round that was never opened: the link ends whatever its state.
        assert bob.state is State.CLOSED, (state, kind)
        return
    if (state, kind) not in LINK_TRANSITIONS:
        assert bob.state is State.CLOSED, (state, kind)
        return
    assert bob.state is LINK_TRANSITIONS[(state, kind)], (state, kind)


def _bob_round_in(state: RoundState, root: Path) -> tuple[LinkPair, int]:
    """A pair whose Bob has round 1 (AGREED: round 2) in `state`. AGREED needs an earlier round still
    open, so that one runs with a window of two rounds."""
    pair = LinkPair(root, window=2 if state is RoundState.AGREED else 1)
    pair.connect()
    if state is RoundState.AWAIT_CHANNEL:
        pair.b.link.receive(1, lm.RoundStart(pulses=pair.pulses), 0.0)
        return pair, 1
    held = {"on": False}

    def tap(who: str, r: int, message: object, data: bytes) -> list[bytes]:
        if state is RoundState.AGREED:
            return [] if r == 1 and not isinstance(message, lm.RoundStart) else [data]
        if state is RoundState.DISTILLING and isinstance(message, qm.Sifting):
            held["on"] = True
        if (
            state is RoundState.AWAIT_CONFIRMATION
            and isinstance(message, lm.KeyStored)
            and who == "hospital-a"
        ):
            held["on"] = True
            HELD_FRAMES["key_stored"] = message  # Alice's genuine confirmation, for the legal case
        return [] if held["on"] else [data]

    pair.tap = tap
    if state is RoundState.AGREED:
        pair.run_window()
        return pair, 2
    pair.run_round()
    return pair, 1


def _reachable(state: RoundState) -> set[RoundState]:
    """`state`, and every round state the machine's own consequences (key agreed, round ended) may lead
    on to from it."""
    seen, todo = {state}, [state]
    while todo:
        current = todo.pop()
        for consequence in CONSEQUENCES:
            after = ROUND_TRANSITIONS.get((current, consequence))
            if after is not None and after not in seen:
                seen.add(after)
                todo.append(after)
    return seen


@pytest.mark.parametrize("state", [s for s in RoundState if s is not RoundState.ENDED])
@pytest.mark.parametrize("kind", sorted(ROUND_PEER_INPUTS, key=attrgetter("value")))
def test_every_peer_input_to_a_round_moves_by_its_table_or_ends_the_round(
    tmp_path: Path, state: RoundState, kind: Input
) -> None:
    pair, round_id = _bob_round_in(state, tmp_path)
    bob = pair.b.link
    assert bob.round_state(round_id) is state
    list(iter(bob.next_event, None))
    _, message = _peer_input(kind, round_id)
    if kind is Input.KEY_STORED and state is RoundState.AWAIT_CONFIRMATION:
        message = HELD_FRAMES.pop("key_stored")
    bob.receive(round_id, message, pair.now)
    events = list(iter(bob.next_event, None))
    after = bob.round_state(round_id) or RoundState.ENDED
    violated = bob.state is State.CLOSED or any(
        isinstance(e, RoundEnded) and e.round_id == round_id and e.reason is AbortReason.PROTOCOL_VIOLATION
        for e in events
    )
    legal = (state, kind) in ROUND_TRANSITIONS
    if not legal:
        assert violated, (state, kind, after, events)
        assert after in _reachable(state) - {state}
        return
    if kind is Input.KEY_STORED:
        # A forged confirmation (AGREED: all zeros) closes the link; the genuine one commits.
        assert not violated or state is RoundState.AGREED
    assert after in _reachable(ROUND_TRANSITIONS[(state, kind)]), (state, kind, after)


def _machine(tmp_path: Path) -> LinkConnection:
    store = KeyStore.open(tmp_path / "one.sqlite3")
    store.init_auth("hospital-b", bytes(range(256)) * 16)
    config = LinkConfig(facility="hospital-a", peer="hospital-b", pulses_per_round=1000)
    return LinkConnection(
        config,
        local=store.link_state("hospital-b"),
        auth=store.auth_store("hospital-b"),
        randomness=PartyRandomness.seeded(np.random.SeedSequence(1)),
    )


def test_the_one_transition_method_follows_the_table_for_every_state_and_input(tmp_path: Path) -> None:
    link = _machine(tmp_path)
    for state in State:
        for kind in Input:
            for target in State:
                link.state = state  # set up the case (the machine itself assigns it only in _transition)
                if LINK_TRANSITIONS.get((state, kind)) is target:
                    link._transition(kind, target)
                    assert link.state is target
                else:
                    with pytest.raises(LocalProtocolError):
                        link._transition(kind, target)
                    assert link.state is state


def test_the_round_transition_method_follows_the_round_table(tmp_path: Path) -> None:
    link = _machine(tmp_path)
    rnd = Round(round_id=1, started_at=0.0)
    for state in RoundState:
        for kind in Input:
            for target in RoundState:
                rnd.state = state
                if ROUND_TRANSITIONS.get((state, kind)) is target:
                    link._round_transition(rnd, kind, target)
                    assert rnd.state is target
                else:
                    with pytest.raises(LocalProtocolError):
                        link._round_transition(rnd, kind, target)
                    assert rnd.state is state


def test_the_tables_lead_nowhere_from_closed_or_ended_and_everything_open_can_end() -> None:
    assert not [key for key in LINK_TRANSITIONS if key[0] is State.CLOSED]
    assert all(LINK_TRANSITIONS[(s, Input.CLOSE)] is State.CLOSED for s in State if s is not State.CLOSED)
    assert not [key for key in ROUND_TRANSITIONS if key[0] is RoundState.ENDED]
    assert all(
        ROUND_TRANSITIONS[(s, Input.ROUND_ENDED)] is RoundState.ENDED
        for s in RoundState
        if s is not RoundState.ENDED
    )


def test_calls_the_table_does_not_allow_raise_and_change_nothing(tmp_path: Path) -> None:
    link = _machine(tmp_path)
    link.start(0.0)
    for call in (lambda: link.begin_round(0.0), lambda: link.notice_stored(NOTICE.key_id)):
        with pytest.raises(LocalProtocolError):
            call()
        assert link.state is State.EXPECT_HELLO
    assert [type(m) for _, m in link.frames_to_send()] == [lm.Hello]
    assert link.next_event() is None


# ---- key notices: the machine sends every frame ------------------------------------------------------
def test_notices_wait_for_the_hello_then_the_outbox_goes_first(tmp_path: Path) -> None:
    pair = LinkPair(tmp_path)
    alice = pair.a.link
    alice.start(0.0)
    alice.send_notice(NOTICE)  # before the hello: the outbox replay after it covers this notice
    assert [type(m) for _, m in alice.frames_to_send()] == [lm.Hello]
    pair.b.link.start(0.0)
    ((_, hello),) = pair.b.link.frames_to_send()
    alice.receive(0, hello, 0.0)
    assert isinstance(alice.next_event(), HelloReceived) and alice.state is State.UP
    alice.hello_done(next_round=1, auth=pair.a.store.auth_store(pair.a.peer), outbox=[NOTICE])
    assert alice.frames_to_send() == [(0, NOTICE)]
    alice.send_notice(NOTICE)
    assert alice.frames_to_send() == [(0, NOTICE)]


def test_an_incoming_notice_is_acknowledged_only_once_stored(pair: LinkPair) -> None:
    # Alice hands out a key; Bob is told, stores the notice, and only then acknowledges it.
    pair.run_round()
    pair.a.store.take_keys(
        pair.a.peer, owner="hospital-a", number=1, size_bits=256, master_sae="m", slave_sae="s"
    )
    (notice,) = pair.a.store.outbox(pair.a.peer)
    pair.a.link.send_notice(notice)
    ((round_id, sent),) = pair.a.link.frames_to_send()
    assert round_id == 0 and sent == notice
    bob = pair.b.link
    bob.receive(0, notice, pair.now)
    assert bob.frames_to_send() == []  # nothing before the durable write
    assert bob.next_event() == NoticeReceived(notice=notice)
    bob.notice_stored(notice.key_id)
    ((_, ack),) = bob.frames_to_send()
    assert ack == lm.NoticeAck(key_id=notice.key_id)
    pair.a.link.receive(0, ack, pair.now)
    assert pair.a.link.next_event() == NoticeAcked(key_id=notice.key_id)


def test_the_pair_acknowledges_notices_and_empties_the_outbox(pair: LinkPair) -> None:
    pair.run_round()
    pair.a.store.take_keys(
        pair.a.peer, owner="hospital-a", number=2, size_bits=256, master_sae="m", slave_sae="s"
    )
    for notice in pair.a.store.outbox(pair.a.peer):
        pair.a.link.send_notice(notice)
    pair.settle()
    assert pair.a.store.outbox(pair.a.peer) == []
    assert [type(e) for e in pair.b.events].count(NoticeReceived) == 2


def test_a_reconnect_resends_the_unacknowledged_outbox(pair: LinkPair) -> None:
    pair.run_round()
    pair.a.store.take_keys(
        pair.a.peer, owner="hospital-a", number=1, size_bits=256, master_sae="m", slave_sae="s"
    )
    (notice,) = pair.a.store.outbox(pair.a.peer)  # the connection drops before it is sent
    fresh = LinkPair(pair.root, stores=(pair.a.store, pair.b.store))
    fresh.connect()
    assert pair.a.store.outbox(pair.a.peer) == []
    assert [e.notice for e in fresh.b.events if isinstance(e, NoticeReceived)] == [notice]


def test_key_bits_count_the_whole_bytes_stored(pair: LinkPair) -> None:
    pair.run_round()
    for end in pair.ends():
        (ended,) = pair.ended(end)
        assert ended.outcome is not None and ended.key_bits % 8 == 0
        assert 0 <= ended.outcome.final_key_bits - ended.key_bits < 8
        assert ended.key_bits == end.store.pool_bits(end.peer)


def test_channel_failure_at_bob_releases_alice_at_once(pair: LinkPair) -> None:
    pair.a.link.begin_round(pair.now)
    pair.b.link.receive(1, lm.RoundStart(pulses=pair.pulses), pair.now)
    pair.b.link.channel_result(1, lm.ChannelError(reason="not connected"), pair.now)
    for round_id, message in pair.b.link.frames_to_send():
        pair.a.link.receive(round_id, message, pair.now)
    ended = [e for e in iter(pair.a.link.next_event, None) if isinstance(e, RoundEnded)]
    assert ended and ended[0].reason is AbortReason.CHANNEL_UNAVAILABLE and ended[0].by_peer
    assert pair.a.link.state is State.UP and pair.a.link.open_rounds == ()


def test_forged_key_confirmation_never_commits(pair: LinkPair) -> None:
    # A man in the middle (TLS broken) swaps Bob's KeyStored for one made without the key.
    def tap(who: str, round_id: int, message: object, data: bytes) -> list[bytes]:
        if who == "hospital-b" and isinstance(message, lm.KeyStored):
            return [encode_frame(lm.KeyStored(confirmation=bytes(16)), round_id)]
        return [data]

    pair.tap = tap
    pair.run_round()
    assert pair.a.link.state is State.CLOSED
    assert pair.a.store.link_state(pair.a.peer).last_committed == 0
    # Both ends did hold the key: the next hello settles the pending round consistently.
    fresh = LinkPair(pair.root, stores=(pair.a.store, pair.b.store))
    fresh.connect()
    assert _keys_equal(fresh)
    assert (
        fresh.a.store.link_state(fresh.a.peer).last_committed
        == fresh.b.store.link_state(fresh.b.peer).last_committed
    )
