"""Several rounds in flight on one link, sans IO: they commit in id order whatever order their keys were
agreed in, both pools and both authentication stores stay identical, and a crash at any step with rounds
open leaves both ends, after the next hello, with the same pool and no key twice."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from qlinkmed.qcore import messages as qm
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.events import CommitRound, LinkConfig, StorePending
from qlinkmed.qlinkd.link.states import RoundState
from qlinkmed.qlinkd.pool.keystore import KeyStore
from tests.link_pair import End, LinkPair


def _pool_rows(end: End) -> list[tuple[int, str, int, str]]:
    """(round, owner, start, SHA-256 of the bytes left) of every committed round, read from the store's
    file (the store has no listing of key material, on purpose)."""
    rows = end.store._q(  # test-only read of the table the store writes
        "SELECT round_id, owner, start, material FROM rounds WHERE peer = ? AND committed = 1 "
        "ORDER BY round_id",
        (end.peer,),
    ).fetchall()
    return [(r, owner, start, hashlib.sha256(material).hexdigest()) for r, owner, start, material in rows]


def _auth(end: End) -> tuple[int, bytes]:
    return end.store.auth_store(end.peer).snapshot()


def _assert_identical(pair: LinkPair) -> None:
    a, b = pair.a, pair.b
    assert _pool_rows(a) == _pool_rows(b)
    # One authentication stream: an end may be ahead by tags it spent, never holding other bytes.
    (pos_a, mat_a), (pos_b, mat_b) = _auth(a), _auth(b)
    lead = abs(pos_a - pos_b)
    behind, ahead = (mat_a, mat_b) if pos_a <= pos_b else (mat_b, mat_a)
    assert behind[lead:] == ahead


def test_a_window_of_rounds_commits_every_round_in_id_order_with_identical_pools(tmp_path: Path) -> None:
    pair = LinkPair(tmp_path, window=4)
    pair.connect()
    assert pair.run_window() == [1, 2, 3, 4]
    for end in pair.ends():
        assert [e.round_id for e in end.events if isinstance(e, CommitRound)] == [1, 2, 3, 4]
        assert all(e.established for e in pair.ended(end))
        assert end.store.link_state(end.peer).last_committed == 4
        assert end.link.open_rounds == ()
    _assert_identical(pair)
    assert _auth(pair.a) == _auth(pair.b)
    # The in-memory store the rounds took their keys from is the durable one, byte for byte.
    for end in pair.ends():
        assert end.link._auth.snapshot() == _auth(end)


def test_a_round_agreed_before_an_earlier_one_waits_for_its_turn_to_store(tmp_path: Path) -> None:
    pair = LinkPair(tmp_path, window=2)
    pair.connect()
    held: dict[str, list[bytes]] = {"hospital-a": [], "hospital-b": []}

    def tap(who: str, round_id: int, message: object, data: bytes) -> list[bytes]:
        if round_id == 1 and not isinstance(message, lm.RoundStart):
            held[who].append(data)
            return []
        return [data]

    pair.tap = tap
    pair.run_window()
    for end in pair.ends():
        assert end.link.round_state(2) is RoundState.AGREED
        assert not [e for e in end.events if isinstance(e, StorePending)]
        assert end.store.link_state(end.peer).pending_round == 0
    pair.tap = lambda who, r, m, data: [data]
    pair.b.inbox.extend(held["hospital-a"])
    pair.a.inbox.extend(held["hospital-b"])
    pair.settle()
    for end in pair.ends():
        stores = [e.round_id for e in end.events if isinstance(e, StorePending)]
        commits = [e.round_id for e in end.events if isinstance(e, CommitRound)]
        assert stores == commits == [1, 2]
    _assert_identical(pair)


def test_an_aborted_round_lets_the_next_one_store_and_both_pools_agree(tmp_path: Path) -> None:
    pair = LinkPair(tmp_path, window=3)
    pair.connect()

    def tap(who: str, round_id: int, message: object, data: bytes) -> list[bytes]:
        if round_id == 2 and isinstance(message, qm.Amplify):
            return [data[:-1] + bytes([data[-1] ^ 1])]  # alter round 2's transcript: its tag fails
        return [data]

    pair.tap = tap
    pair.run_window()
    for end in pair.ends():
        ended = {e.round_id: e.established for e in pair.ended(end)}
        assert ended == {1: True, 2: False, 3: True}
        assert [e.round_id for e in end.events if isinstance(e, CommitRound)] == [1, 3]
    _assert_identical(pair)
    assert pair.run_window() == [4, 5, 6]  # the authentication stores still agree: rounds keep keying
    assert all(e.established for e in pair.ended(pair.a) if e.round_id > 3)


def _open_and_step(pair: LinkPair, limit: int) -> int:
    """Alice keeps the window full while the pair exchanges at most `limit` steps; the steps taken."""
    opened = 0
    for taken in range(limit):
        while pair.a.link.window_open and opened < pair.window:
            pair.a.link.begin_round(pair.now)
            opened += 1
        if not pair.step() and opened == pair.window:
            return taken
    return limit


def _window_steps(root: Path) -> int:
    pair = LinkPair(root, window=3)
    pair.connect()
    return _open_and_step(pair, 10_000)


def test_a_crash_at_any_step_with_rounds_in_flight_leaves_identical_pools(tmp_path: Path) -> None:
    total = _window_steps(tmp_path / "count")
    assert total > 20
    cuts = sorted({int(total * k / 12) for k in range(12)} | {total - 1, total - 2})
    for cut in cuts:
        root = tmp_path / f"cut{cut}"
        root.mkdir()
        pair = LinkPair(root, window=3)
        pair.connect()
        _open_and_step(pair, cut)
        # kill -9 of both ends: the machines, the frames in flight and the unsent events are gone; the
        # durable stores stay as the last persisted event left them.
        stores = (pair.a.store, pair.b.store)
        fresh = LinkPair(root, stores=stores, window=3, seed=cut + 100)
        fresh.connect()
        _assert_identical(fresh)
        for end in fresh.ends():
            assert end.store.link_state(end.peer).pending_round == 0, cut
        # and the link keys on from there, with the authentication stores in step
        fresh.run_window()
        assert all(e.established for e in fresh.ended(fresh.a)), cut
        _assert_identical(fresh)


def test_the_window_starts_at_two_and_doubles_with_every_commit(tmp_path: Path) -> None:
    pair = LinkPair(tmp_path, window=6)
    pair.connect()
    assert pair.a.link.window == 2
    for expected in (4, 6, 6):
        pair.run_round()
        assert pair.a.link.window == expected
    # A new connection starts small again: the first key never waits behind a full window.
    fresh = LinkPair(tmp_path, stores=(pair.a.store, pair.b.store), window=6)
    fresh.connect()
    assert fresh.a.link.window == 2


def test_alice_holds_a_round_back_while_two_wait_for_the_channel(tmp_path: Path) -> None:
    pair = LinkPair(tmp_path, window=8)
    pair.connect()
    alice = pair.a.link
    for _ in range(2):
        pair.run_round()  # two commits: the window is the full eight
    assert alice.window == 8
    alice.begin_round(pair.now)
    alice.begin_round(pair.now)
    assert not alice.window_open and alice.open_rounds == (3, 4)
    for _ in range(3):  # the round starts reach Bob, both submissions the channel, its answers the ends
        pair.step()
    assert alice.round_state(3) is RoundState.DISTILLING and alice.window_open


def test_bob_refuses_a_round_start_beyond_the_window(tmp_path: Path) -> None:
    pair = LinkPair(tmp_path, window=2)
    pair.connect()
    bob = pair.b.link
    for round_id in (1, 2, 3):
        bob.receive(round_id, lm.RoundStart(pulses=pair.pulses), pair.now)
    assert bob.open_rounds == (1, 2)
    refusals = [(r, m) for r, m in bob.frames_to_send() if isinstance(m, qm.Abort)]
    assert [r for r, _ in refusals] == [3] and b"already open" in refusals[0][1].detail


@pytest.mark.parametrize("window", [0, 33])
def test_a_window_outside_its_range_is_refused(window: int) -> None:
    with pytest.raises(Exception, match="rounds_in_flight"):
        LinkConfig(facility="hospital-a", peer="hospital-b", rounds_in_flight=window)


def test_the_store_keeps_one_pending_round_at_most(tmp_path: Path) -> None:
    # What the in-order rule protects: the store itself refuses a second pending round.
    store = KeyStore.open(tmp_path / "s.sqlite3")
    store.init_auth("p", bytes(64))
    store.store_pending("p", 1, owner="a", key=b"k" * 8, auth_refill=b"r" * 48)
    with pytest.raises(Exception, match="still pending"):
        store.store_pending("p", 2, owner="a", key=b"k" * 8, auth_refill=b"r" * 48)
