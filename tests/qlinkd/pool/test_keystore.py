"""The durable key pool: commit protocol, reconciliation, FIFO carving, ETSI notices, authentication key
persistence, erasure of consumed key, and crash safety under SIGKILL."""

from __future__ import annotations

import hashlib
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from qlinkmed.qlinkd.errors import InsufficientKey, KeyNotFound, NotAuthorised, QlinkdError, StoreError
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.pool.sqlite import WAL_CHECKPOINT_PAGES, open_private_db
from qlinkmed.qlinkd.pool.values import DeliveredKey, KeyNotice, LinkState, ReconcileResult, Segment

PEER = "hospital-b"
ME = "hospital-a"
PSK = bytes(range(96))
REFILL = b"\xaa" * 48


def round_key(round_id: int, size: int = 10) -> bytes:
    return hashlib.shake_256(f"round {round_id}".encode()).digest(size)


@pytest.fixture
def store(tmp_path: Path):
    ks = KeyStore.open(tmp_path / "pool" / "keys.db")
    ks.init_auth(PEER, PSK)
    yield ks
    ks.close()


def add_round(ks: KeyStore, round_id: int, *, owner: str = ME, size: int = 10, peer: str = PEER) -> bytes:
    key = round_key(round_id, size)
    ks.note_round_started(peer, round_id)
    ks.store_pending(peer, round_id, owner=owner, key=key, auth_refill=REFILL)
    ks.commit(peer, round_id)
    return key


def take(ks: KeyStore, number: int, size_bits: int, *, owner: str = ME) -> list[DeliveredKey]:
    return ks.take_keys(
        PEER, owner=owner, number=number, size_bits=size_bits, master_sae="m1", slave_sae="s1"
    )


# ---- opening


def test_open_creates_a_private_wal_database_with_a_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "keys.db"
    KeyStore.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] >= 1
    finally:
        raw.close()


def test_databases_open_with_fsynced_commits_a_small_wal_and_zeroed_free_pages(tmp_path: Path) -> None:
    db = open_private_db(tmp_path / "x.db")
    try:
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: every commit fsynced
        assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_CHECKPOINT_PAGES < 1000
        assert db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    finally:
        db.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    KeyStore.open(path).close()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 999")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="newer"):
        KeyStore.open(path)


def test_errors_are_qlinkd_errors() -> None:
    assert issubclass(StoreError, QlinkdError)
    for cls in (InsufficientKey, KeyNotFound, NotAuthorised):
        assert issubclass(cls, StoreError)


# ---- commit protocol


def test_store_then_commit(store: KeyStore) -> None:
    assert store.link_state(PEER) == LinkState(
        next_round=1, last_committed=0, pending_round=0, auth_position=0
    )
    store.note_round_started(PEER, 1)
    assert store.link_state(PEER).next_round == 2
    store.store_pending(PEER, 1, owner=ME, key=round_key(1), auth_refill=REFILL)
    assert store.link_state(PEER).pending_round == 1
    assert store.pool_bits(PEER) == 0  # pending key is not in the pool
    reserve = store.auth_reserve_bits(PEER)
    store.commit(PEER, 1)
    assert store.link_state(PEER) == LinkState(
        next_round=2, last_committed=1, pending_round=0, auth_position=0
    )
    assert store.pool_bits(PEER) == 80
    assert store.auth_reserve_bits(PEER) == reserve + 384
    store.commit(PEER, 1)  # idempotent
    assert store.auth_reserve_bits(PEER) == reserve + 384
    assert store.pool_bits(PEER) == 80


def test_store_pending_refusals(store: KeyStore) -> None:
    add_round(store, 1)
    with pytest.raises(StoreError) as info:
        store.store_pending(PEER, 1, owner=ME, key=b"k", auth_refill=REFILL)
    assert info.value.field == "round_id"
    store.store_pending(PEER, 3, owner=ME, key=b"k", auth_refill=REFILL)
    with pytest.raises(StoreError, match="pending"):
        store.store_pending(PEER, 4, owner=ME, key=b"k", auth_refill=REFILL)
    store.discard_pending(PEER, 3)
    with pytest.raises(StoreError):  # a discarded round id is never reused
        store.store_pending(PEER, 3, owner=ME, key=b"k", auth_refill=REFILL)
    with pytest.raises(StoreError) as info:
        store.store_pending(PEER, 5, owner=ME, key=b"", auth_refill=REFILL)
    assert info.value.field == "key"
    with pytest.raises(StoreError):
        store.store_pending(PEER, 0, owner=ME, key=b"k", auth_refill=REFILL)
    with pytest.raises(StoreError, match="init_auth"):
        store.store_pending("stranger", 1, owner=ME, key=b"k", auth_refill=REFILL)


def test_commit_and_discard_edge_cases(store: KeyStore) -> None:
    with pytest.raises(StoreError):
        store.commit(PEER, 7)  # unknown
    store.store_pending(PEER, 1, owner=ME, key=b"k1", auth_refill=REFILL)
    store.discard_pending(PEER, 1)
    store.discard_pending(PEER, 1)  # idempotent
    assert store.link_state(PEER).pending_round == 0
    with pytest.raises(StoreError, match="discarded"):
        store.commit(PEER, 1)
    add_round(store, 2)
    with pytest.raises(StoreError, match="committed"):
        store.discard_pending(PEER, 2)
    assert store.pool_bits(PEER) == 80


def test_link_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    ks = KeyStore.open(path)
    ks.init_auth(PEER, PSK)
    add_round(ks, 1)
    ks.note_round_started(PEER, 5)
    ks.note_round_started(PEER, 3)  # never moves backwards
    ks.store_pending(PEER, 5, owner=ME, key=b"k5", auth_refill=REFILL)
    ks.close()
    ks = KeyStore.open(path)
    assert ks.link_state(PEER) == LinkState(next_round=6, last_committed=1, pending_round=5, auth_position=0)
    assert ks.peers() == [PEER]
    ks.close()


# ---- reconcile


def state(next_round: int, last_committed: int, pending: int) -> LinkState:
    return LinkState(
        next_round=next_round, last_committed=last_committed, pending_round=pending, auth_position=0
    )


@pytest.mark.parametrize(
    ("remote", "committed"),
    [
        (state(4, 2, 3), True),  # peer has it pending
        (state(4, 3, 0), True),  # peer committed it
        (state(5, 4, 0), True),  # peer committed it and a later one (rule: last_committed >= P)
        (state(4, 2, 0), False),  # peer never stored it
        (state(4, 1, 0), False),
        (state(9, 2, 0), False),
    ],
)
def test_reconcile_rule(store: KeyStore, remote: LinkState, committed: bool) -> None:
    add_round(store, 1)
    add_round(store, 2)
    store.note_round_started(PEER, 3)
    store.store_pending(PEER, 3, owner=ME, key=round_key(3), auth_refill=REFILL)
    result = store.reconcile(PEER, remote)
    if committed:
        assert result == ReconcileResult(committed=(3,), discarded=(), next_round=max(4, remote.next_round))
        assert store.pool_bits(PEER) == 240
        assert store.link_state(PEER).last_committed == 3
    else:
        assert result == ReconcileResult(committed=(), discarded=(3,), next_round=max(4, remote.next_round))
        assert store.pool_bits(PEER) == 160
        assert store.link_state(PEER).last_committed == 2
    assert store.link_state(PEER).pending_round == 0
    assert store.link_state(PEER).next_round == max(4, remote.next_round)


def test_reconcile_without_pending_only_moves_next_round(store: KeyStore) -> None:
    add_round(store, 1)
    assert store.reconcile(PEER, state(7, 1, 0)) == ReconcileResult(committed=(), discarded=(), next_round=7)
    assert store.reconcile(PEER, state(3, 1, 0)).next_round == 7


def committed_rounds(ks: KeyStore, rounds: range) -> set[int]:
    out = set()
    for r in rounds:
        try:
            ks.commit(PEER, r)  # idempotent on committed rounds, refuses discarded/unknown ones
        except StoreError:
            continue
        out.add(r)
    return out


@pytest.mark.parametrize(
    ("a_step", "b_step"),
    # How far each end got with round 2 before the crash: 0 = not stored, 1 = stored, 2 = committed.
    # (One end commits only after the other stored, so (2, 0) and (0, 2) cannot happen.)
    [(0, 0), (1, 0), (0, 1), (1, 1), (2, 1), (1, 2), (2, 2)],
)
def test_reconcile_leaves_both_ends_with_the_same_rounds(tmp_path: Path, a_step: int, b_step: int) -> None:
    ends = []
    for name, step in (("a", a_step), ("b", b_step)):
        ks = KeyStore.open(tmp_path / f"{name}.db")
        ks.init_auth(PEER, PSK)
        add_round(ks, 1)
        ks.note_round_started(PEER, 2)
        if step >= 1:
            ks.store_pending(PEER, 2, owner=ME, key=round_key(2), auth_refill=REFILL)
        if step == 2:
            ks.commit(PEER, 2)
        ends.append(ks)
    a, b = ends
    state_a, state_b = a.link_state(PEER), b.link_state(PEER)
    ra, rb = a.reconcile(PEER, state_b), b.reconcile(PEER, state_a)
    assert ra.next_round == rb.next_round == 3
    assert committed_rounds(a, range(1, 3)) == committed_rounds(b, range(1, 3))
    assert a.pool_bits(PEER) == b.pool_bits(PEER)
    assert a.auth_reserve_bits(PEER) == b.auth_reserve_bits(PEER)
    for ks in ends:
        ks.close()


# ---- the pool: FIFO carving and ownership


def test_fifo_carving_across_rounds_respects_ownership(store: KeyStore) -> None:
    k1 = add_round(store, 1, owner=ME)
    k2 = add_round(store, 2, owner=PEER)
    k3 = add_round(store, 3, owner=ME)
    keys = take(store, 3, 48)
    assert [k.material for k in keys] == [k1[:6], k1[6:] + k3[:2], k3[2:8]]
    assert len({k.key_id for k in keys}) == 3
    notices = store.outbox(PEER)
    assert [n.key_id for n in notices] == [k.key_id for k in keys]
    assert notices[1].segments == (
        Segment(round_id=1, start=6, length=4),
        Segment(round_id=3, start=0, length=2),
    )
    assert notices[2].segments == (Segment(round_id=3, start=2, length=6),)
    assert (notices[0].master_sae, notices[0].slave_sae) == ("m1", "s1")
    assert store.pool_bits(PEER, owner=ME) == 16
    assert store.pool_bits(PEER, owner=PEER) == 80  # the peer's round is untouched
    assert store.pool_bits(PEER) == 96
    [last] = take(store, 1, 16)
    assert last.material == k3[8:]
    assert store.pool_bits(PEER, owner=PEER) == 80
    assert k2 not in (k.material for k in keys)


def test_insufficient_key_has_no_effect(store: KeyStore) -> None:
    add_round(store, 1, owner=ME)
    add_round(store, 2, owner=PEER)
    with pytest.raises(InsufficientKey) as info:
        take(store, 2, 48)  # 12 bytes wanted, the owner has 10 (the peer's 10 do not count)
    assert (info.value.requested_bits, info.value.available_bits) == (96, 80)
    assert store.outbox(PEER) == []
    assert store.pool_bits(PEER, owner=ME) == 80
    with pytest.raises(StoreError):
        take(store, 1, 12)  # not whole bytes
    with pytest.raises(StoreError):
        take(store, 0, 8)
    [key] = take(store, 1, 80)
    assert key.material == round_key(1)


def test_delivered_key_repr_hides_material() -> None:
    key = DeliveredKey("id", b"\x01\x02secret-bytes")
    assert "(hidden)" in repr(key)
    assert "secret" not in repr(key)
    assert "\\x01" not in repr(key)


def test_notice_requires_canonical_uuid() -> None:
    segments = (Segment(round_id=1, start=0, length=1),)
    with pytest.raises(StoreError):
        KeyNotice(
            key_id="ABCDEF00-0000-4000-8000-000000000000", master_sae="m", slave_sae="s", segments=segments
        )
    with pytest.raises(StoreError):
        KeyNotice(key_id="not-a-uuid", master_sae="m", slave_sae="s", segments=segments)
    with pytest.raises(StoreError):
        KeyNotice(key_id="abcdef00-0000-4000-8000-000000000000", master_sae="m", slave_sae="s", segments=())
    with pytest.raises(StoreError):
        Segment(round_id=1, start=0, length=0)


# ---- notices: master side to slave side


@pytest.fixture
def pair(tmp_path: Path):
    """Master store (at ME, peer PEER) and slave store (at PEER, peer ME) with identical rounds 1..4."""
    master = KeyStore.open(tmp_path / "master.db")
    slave = KeyStore.open(tmp_path / "slave.db")
    master.init_auth(PEER, PSK)
    slave.init_auth(ME, PSK)
    for r in range(1, 5):
        owner = ME if r % 2 else PEER
        add_round(master, r, owner=owner)
        add_round(slave, r, owner=owner, peer=ME)
    yield master, slave
    master.close()
    slave.close()


def test_notice_carries_the_same_bytes_to_the_slave(pair) -> None:
    master, slave = pair
    keys = take(master, 3, 48)
    notices = master.outbox(PEER)
    for notice in notices:
        slave.accept_notice(ME, notice)
        assert slave.has_incoming(notice.key_id)
    assert slave.pool_bits(ME, owner=ME) == master.pool_bits(PEER, owner=ME) == 160 - 3 * 48
    assert slave.pool_bits(ME, owner=PEER) == 160
    slave.accept_notice(ME, notices[0])  # replay: no-op
    assert slave.pool_bits(ME, owner=ME) == 160 - 3 * 48
    got = slave.fetch_keys(ME, [k.key_id for k in reversed(keys)], master_sae="m1", slave_sae="s1")
    assert [g.material for g in got] == [k.material for k in reversed(keys)]
    assert [g.key_id for g in got] == [k.key_id for k in reversed(keys)]
    assert not slave.has_incoming(keys[0].key_id)
    assert slave.has_fetched(keys[0].key_id)
    slave.accept_notice(ME, notices[0])  # replay after fetch: still a no-op, nothing carved again
    assert not slave.has_incoming(keys[0].key_id)
    assert slave.pool_bits(ME, owner=ME) == 160 - 3 * 48
    with pytest.raises(KeyNotFound):
        slave.fetch_keys(ME, [keys[0].key_id], master_sae="m1", slave_sae="s1")
    master.ack_notice(PEER, notices[0].key_id)
    master.ack_notice(PEER, notices[0].key_id)  # idempotent
    assert [n.key_id for n in master.outbox(PEER)] == [n.key_id for n in notices[1:]]


def test_a_notice_that_is_not_the_pool_head_is_refused(pair) -> None:
    master, slave = pair
    take(master, 2, 40)
    first, second = master.outbox(PEER)
    with pytest.raises(StoreError) as info:
        slave.accept_notice(ME, second)  # out of order
    assert info.value.field == "segments"
    shifted = KeyNotice(
        key_id=first.key_id,
        master_sae=first.master_sae,
        slave_sae=first.slave_sae,
        segments=(Segment(round_id=1, start=1, length=5),),
    )
    with pytest.raises(StoreError):
        slave.accept_notice(ME, shifted)
    peer_owned = KeyNotice(
        key_id=first.key_id,
        master_sae="m1",
        slave_sae="s1",
        segments=(Segment(round_id=2, start=0, length=5),),  # round 2 is the slave's own
    )
    with pytest.raises(StoreError):
        slave.accept_notice(ME, peer_owned)
    too_long = KeyNotice(
        key_id=first.key_id,
        master_sae="m1",
        slave_sae="s1",
        segments=(Segment(round_id=1, start=0, length=11),),
    )
    with pytest.raises(StoreError):
        slave.accept_notice(ME, too_long)
    assert slave.pool_bits(ME, owner=ME) == 160  # nothing carved by the refusals
    assert not slave.has_incoming(first.key_id)
    slave.accept_notice(ME, first)
    slave.accept_notice(ME, second)
    assert slave.pool_bits(ME, owner=ME) == 80


def test_fetch_errors_consume_nothing(pair) -> None:
    master, slave = pair
    keys = take(master, 2, 64)
    for notice in master.outbox(PEER):
        slave.accept_notice(ME, notice)
    ids = [k.key_id for k in keys]
    unknown = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(KeyNotFound) as info:
        slave.fetch_keys(ME, [ids[0], unknown], master_sae="m1", slave_sae="s1")
    assert info.value.key_ids == (unknown,)
    with pytest.raises(NotAuthorised):
        slave.fetch_keys(ME, ids, master_sae="m1", slave_sae="s2")
    with pytest.raises(NotAuthorised):
        slave.fetch_keys(ME, ids, master_sae="m2", slave_sae="s1")
    with pytest.raises(KeyNotFound):
        slave.fetch_keys("elsewhere", ids, master_sae="m1", slave_sae="s1")
    with pytest.raises(StoreError):
        slave.fetch_keys(ME, [ids[0], ids[0]], master_sae="m1", slave_sae="s1")
    assert all(slave.has_incoming(k) for k in ids)
    got = slave.fetch_keys(None, ids, master_sae="m1", slave_sae="s1")
    assert [g.material for g in got] == [k.material for k in keys]


# ---- the authentication key store


def test_auth_write_ahead_is_monotonic_and_durable(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    ks = KeyStore.open(path)
    ks.init_auth(PEER, PSK)
    auth = ks.auth_store(PEER)
    assert auth.snapshot() == (0, PSK)
    round_keys = auth.take_round_keys()
    ks.advance_auth(PEER, auth.position)
    ks.advance_auth(PEER, auth.position)  # equal: no-op
    with pytest.raises(StoreError) as info:
        ks.advance_auth(PEER, 10)
    assert info.value.field == "position"
    with pytest.raises(StoreError):
        ks.advance_auth(PEER, len(PSK) + 1)  # beyond the key held
    ks.close()
    ks = KeyStore.open(path)
    assert ks.link_state(PEER).auth_position == 48
    reloaded = ks.auth_store(PEER)
    assert reloaded.snapshot() == (48, PSK[48:])
    assert reloaded.take_round_keys().offset == 48
    assert round_keys.hash_key == PSK[:16]
    assert ks.auth_reserve_bits(PEER) == 8 * 48
    add_round(ks, 1)  # commit appends the refill
    assert ks.auth_store(PEER).snapshot() == (48, PSK[48:] + REFILL)
    ks.close()


def test_preshared_key_change_is_refused(store: KeyStore) -> None:
    store.init_auth(PEER, PSK)  # same key: fine
    with pytest.raises(StoreError) as info:
        store.init_auth(PEER, PSK[::-1])
    assert info.value.field == "preshared_key"
    assert "preshared_key" in str(info.value)
    assert store.auth_store(PEER).snapshot() == (0, PSK)
    with pytest.raises(StoreError):
        store.auth_store("stranger")


# ---- erasure


def test_consumed_key_is_not_left_in_the_database_files(tmp_path: Path) -> None:
    master = KeyStore.open(tmp_path / "master.db")
    slave = KeyStore.open(tmp_path / "slave.db")
    rng = random.Random(20240611)
    psk = rng.randbytes(512)
    key = rng.randbytes(4096)
    for ks, peer in ((master, PEER), (slave, ME)):
        ks.init_auth(peer, psk)
        ks.note_round_started(peer, 1)
        ks.store_pending(peer, 1, owner=ME, key=key, auth_refill=rng.randbytes(48))
        ks.commit(peer, 1)
        ks.advance_auth(peer, 256)
    delivered = take(master, 2, 8 * 1024)
    for notice in master.outbox(PEER):
        slave.accept_notice(ME, notice)
    slave.fetch_keys(ME, [d.key_id for d in delivered], master_sae="m1", slave_sae="s1")
    master.checkpoint()
    slave.checkpoint()

    def raw(path: Path) -> bytes:
        files = [path, path.with_name(path.name + "-wal")]
        return b"".join(f.read_bytes() for f in files if f.exists())

    for path in (tmp_path / "master.db", tmp_path / "slave.db"):
        data = raw(path)
        assert key[3000:3032] in data  # unconsumed key is still there: the search works
        for offset in range(0, 2048, 32):
            assert key[offset : offset + 32] not in data, f"consumed key at {offset} found in {path.name}"
        for offset in range(0, 256, 32):
            assert psk[offset : offset + 32] not in data
        assert psk[300:332] in data
    master.close()
    slave.close()


# ---- crash safety

_CHILD = r"""
import hashlib, random, sys
from pathlib import Path
from qlinkmed.qlinkd.pool.keystore import KeyStore

PEER = "hospital-b"
path, seed = Path(sys.argv[1]), int(sys.argv[2])
rng = random.Random(seed)
store = KeyStore.open(path)
store.init_auth(PEER, bytes(96))
pending = store.link_state(PEER).pending_round
if pending:
    # The simulated peer always stored it too: reconcile commits it.
    store.commit(PEER, pending)
print("ready", flush=True)
while True:
    r = store.link_state(PEER).next_round
    store.note_round_started(PEER, r)
    key = hashlib.shake_256(f"round {r}".encode()).digest(40)
    store.store_pending(PEER, r, owner="hospital-a", key=key, auth_refill=bytes([r % 256]) * 48)
    print(f"stored {r}", flush=True)
    store.commit(PEER, r)
    number = min(rng.randint(1, 3), store.pool_bits(PEER, owner="hospital-a") // 256)
    if number:
        keys = store.take_keys(
            PEER, owner="hospital-a", number=number, size_bits=256, master_sae="m", slave_sae="s"
        )
        for k in keys:
            print(f"key {k.key_id} {k.material.hex()}", flush=True)
    store.advance_auth(PEER, store.link_state(PEER).auth_position + 48)
"""


def check_invariants(path: Path, stored: set[int], printed: dict[str, bytes]) -> None:
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = raw.execute("SELECT round_id, committed, start, material FROM rounds").fetchall()
        outcomes = dict(raw.execute("SELECT round_id, committed FROM round_outcomes").fetchall())
        auth_position, auth_material = raw.execute("SELECT position, material FROM auth").fetchone()
    finally:
        raw.close()
    pending = [r for r, c, _, _ in rows if not c]
    assert len(pending) <= 1
    assert all(outcomes.get(r) is None for r in pending), "a round is both pending and committed"
    committed = {r for r, c in outcomes.items() if c}
    assert not any(not c for c in outcomes.values()), "the child never discards"
    assert stored <= committed | set(pending), "a round reported stored was lost"

    ks = KeyStore.open(path)
    try:
        notices = ks.outbox(PEER)
        state = ks.link_state(PEER)
        pool = ks.pool_bits(PEER)
    finally:
        ks.close()
    consumed: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for notice in notices:
        material = b""
        for seg in notice.segments:
            consumed[seg.round_id].append((seg.start, seg.length))
            material += hashlib.shake_256(f"round {seg.round_id}".encode()).digest(40)[seg.start :][
                : seg.length
            ]
        if notice.key_id in printed:
            assert printed[notice.key_id] == material
    assert set(printed) <= {n.key_id for n in notices}, "a key handed out is missing from the outbox"
    live = {r: (start, material) for r, c, start, material in rows if c}
    assert set(live) | set(consumed) == committed
    for r in committed:
        runs = sorted(consumed.get(r, []))
        edge = 0
        for start, length in runs:  # consumed runs tile [0, edge) exactly: no byte handed out twice
            assert start == edge
            edge += length
        if r in live:
            start, material = live[r]
            assert start == edge
            assert material == hashlib.shake_256(f"round {r}".encode()).digest(40)[start:]
        else:
            assert edge == 40
    assert pool == 8 * sum(len(m) for _, m in live.values())
    assert state.last_committed == max(committed, default=0)
    assert state.auth_position == auth_position
    assert auth_position + len(auth_material) == 96 + 48 * len(committed)


@pytest.mark.slow
def test_sigkill_at_random_moments_keeps_the_store_consistent(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    path = tmp_path / "keys.db"
    rng = random.Random(1234)
    stored: set[int] = set()
    printed: dict[str, bytes] = {}
    for kill in range(15):
        child = subprocess.Popen(
            [sys.executable, str(script), str(path), str(kill)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
            # Not waiting for readiness (that was the line above): choosing the instant of the kill.
            time.sleep(rng.uniform(0.0, 0.15))
            child.send_signal(signal.SIGKILL)
            out, _ = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == -signal.SIGKILL
        for line in out.splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # cut by the kill
            words = line.split()
            if words[0] == "stored":
                stored.add(int(words[1]))
            elif words[0] == "key":
                assert words[1] not in printed, f"key id {words[1]} returned twice"
                printed[words[1]] = bytes.fromhex(words[2])
        check_invariants(path, stored, printed)
    assert len(printed) > 30  # the children did real work between kills
