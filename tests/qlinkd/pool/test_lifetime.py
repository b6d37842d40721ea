"""Key lifetime: a key handed to a master SAE whose copy waits unfetched at the slave's end is erased from
the store's files once its lifetime is over, tombstoned so the slave learns it expired, audited and
counted; a fetched key, a younger key and the master's end are unaffected. The clock is injected."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from qlinkmed.qlinkd.errors import KeyNotFound, StoreError
from qlinkmed.qlinkd.ops.audit import AuditLog, verify
from qlinkmed.qlinkd.ops.metrics import LinkMetrics
from qlinkmed.qlinkd.pool import schema
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.pool.lifetime import AUDIT_EVENT, SWEEP_BATCH, more_due, sweep, sweep_interval
from qlinkmed.qlinkd.pool.values import DeliveredKey, ExpiredKeys

ME, PEER = "hospital-a", "hospital-b"
HOUR = 3600.0
T0 = 1_700_000_000.0  # a Unix time: the store keeps wall time


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def raw_bytes(path: Path) -> bytes:
    """The database file and its WAL, as a storage host would read them."""
    files = [path, path.with_name(path.name + "-wal")]
    return b"".join(f.read_bytes() for f in files if f.exists())


class Pair:
    """A master store (at ME) and a slave store (at PEER, clock injected) holding the same random round."""

    def __init__(self, root: Path) -> None:
        rng = random.Random(20250114)
        self.clock = Clock(T0)
        self.master_path, self.slave_path = root / "master.db", root / "slave.db"
        self.master = KeyStore.open(self.master_path)
        self.slave = KeyStore.open(self.slave_path, clock=self.clock)
        self.round_key = rng.randbytes(4096)
        psk = rng.randbytes(512)
        for store, peer in ((self.master, PEER), (self.slave, ME)):
            store.init_auth(peer, psk)
            store.note_round_started(peer, 1)
            store.store_pending(peer, 1, owner=ME, key=self.round_key, auth_refill=rng.randbytes(48))
            store.commit(peer, 1)

    def hand_out(self, number: int, *, master_sae: str = "m1", slave_sae: str = "s1") -> list[DeliveredKey]:
        """enc_keys at the master and the notices over the link: the slave records them at clock.now."""
        keys = self.master.take_keys(
            PEER, owner=ME, number=number, size_bits=1024, master_sae=master_sae, slave_sae=slave_sae
        )
        for notice in self.master.outbox(PEER):
            if notice.key_id in {k.key_id for k in keys}:
                self.slave.accept_notice(ME, notice)
                self.master.ack_notice(PEER, notice.key_id)
        return keys

    def close(self) -> None:
        self.master.close()
        self.slave.close()


@pytest.fixture
def pair(tmp_path: Path):
    made = Pair(tmp_path)
    yield made
    made.close()


def test_an_unfetched_key_is_erased_after_its_lifetime_and_others_are_unaffected(pair: Pair) -> None:
    fetched, old = pair.hand_out(2)
    pair.clock.now = T0 + HOUR / 2
    (young,) = pair.hand_out(1)
    pair.slave.fetch_keys(ME, [fetched.key_id], master_sae="m1", slave_sae="s1")

    assert pair.slave.expire_unfetched(HOUR, now=T0 + HOUR - 1) == []  # not yet
    assert pair.slave.has_incoming(old.key_id)
    assert old.material in raw_bytes(pair.slave_path)  # the search below can find the key

    gone = pair.slave.expire_unfetched(HOUR, now=T0 + HOUR)
    assert gone == [ExpiredKeys(peer=ME, master_sae="m1", slave_sae="s1", key_ids=(old.key_id,), bits=1024)]
    assert not pair.slave.has_incoming(old.key_id) and pair.slave.has_expired(old.key_id)
    assert pair.slave.has_incoming(young.key_id) and pair.slave.incoming_bits(ME) == 1024
    # Erased from the file and its WAL, not only unlinked from the table; the master never kept it.
    pair.master.checkpoint()
    for path in (pair.slave_path, pair.master_path):
        data = raw_bytes(path)
        for offset in range(0, len(old.material), 32):
            assert old.material[offset : offset + 32] not in data, f"expired key at {offset} in {path.name}"
    assert young.material in raw_bytes(pair.slave_path)

    # The slave asking for it is told it expired; a never-known ID is only missing.
    unknown = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(KeyNotFound) as info:
        pair.slave.fetch_keys(ME, [old.key_id, unknown], master_sae="m1", slave_sae="s1")
    assert info.value.key_ids == (old.key_id, unknown) and info.value.expired == (old.key_id,)
    assert "expired" in str(info.value)
    with pytest.raises(KeyNotFound) as info:
        pair.slave.fetch_keys(ME, [fetched.key_id], master_sae="m1", slave_sae="s1")
    assert info.value.expired == ()
    assert pair.slave.fetch_keys(ME, [young.key_id], master_sae="m1", slave_sae="s1")[0] == young


def test_a_replayed_notice_of_an_expired_key_carves_nothing(pair: Pair) -> None:
    (key,) = pair.master.take_keys(PEER, owner=ME, number=1, size_bits=1024, master_sae="m1", slave_sae="s1")
    (notice,) = pair.master.outbox(PEER)
    pair.slave.accept_notice(ME, notice)
    pair.slave.expire_unfetched(HOUR, now=T0 + HOUR)
    pool = pair.slave.pool_bits(ME, owner=ME)
    # The notice arrives again (the master never saw our acknowledgement and resends it on reconnect).
    pair.slave.accept_notice(ME, notice)
    assert not pair.slave.has_incoming(key.key_id) and pair.slave.has_expired(key.key_id)
    assert pair.slave.pool_bits(ME, owner=ME) == pool
    # The pools still agree: the next key's notice is the head of the slave's pool.
    pair.master.ack_notice(PEER, key.key_id)
    (later,) = pair.hand_out(1)
    assert pair.slave.fetch_keys(ME, [later.key_id], master_sae="m1", slave_sae="s1") == [later]


def test_the_lifetime_must_be_positive(pair: Pair) -> None:
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(StoreError) as info:
            pair.slave.expire_unfetched(bad, now=T0)
        assert info.value.field == "max_age_s"


def test_a_sweep_audits_and_counts_what_it_deleted(pair: Pair, tmp_path: Path) -> None:
    a = pair.hand_out(2, master_sae="pacs-a", slave_sae="pacs-b")
    b = pair.hand_out(1, master_sae="ehr-a", slave_sae="ehr-b")
    metrics = LinkMetrics()
    metrics.add_peer(ME)
    exposition = metrics.render().decode()
    assert f'qlink_keys_expired_total{{peer="{ME}"}} 0.0' in exposition
    with AuditLog.open(tmp_path / "audit.jsonl", facility=PEER) as audit:
        assert sweep(pair.slave, max_age_s=HOUR, now=T0 + 10, audit=audit, metrics=metrics) == []
        assert audit.head.seq == 0  # nothing expired, nothing recorded
        expired = sweep(pair.slave, max_age_s=HOUR, now=T0 + HOUR, audit=audit, metrics=metrics)
        assert [g.key_ids for g in expired] == [(b[0].key_id,), tuple(k.key_id for k in a)]
    assert verify(tmp_path / "audit.jsonl").seq == 2
    text = (tmp_path / "audit.jsonl").read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["event"] for r in records] == [AUDIT_EVENT, AUDIT_EVENT]
    first, second = records
    assert (first["peer"], first["master_SAE_ID"], first["slave_SAE_ID"]) == (ME, "ehr-a", "ehr-b")
    assert (first["count"], first["bits"], first["key_IDs"]) == (1, 1024, [b[0].key_id])
    assert (second["master_SAE_ID"], second["count"], second["bits"]) == ("pacs-a", 2, 2048)
    assert second["key_IDs"] == [k.key_id for k in a] and second["lifetime_s"] == HOUR
    for key in (*a, *b):
        assert key.material.hex() not in text and key.material.hex()[:16] not in text
    exposition = metrics.render().decode()
    assert f'qlink_keys_expired_total{{peer="{ME}"}} 3.0' in exposition
    assert f'qlink_keys_expired_bits_total{{peer="{ME}"}} 3072.0' in exposition


def test_a_backlog_goes_in_batches_the_oldest_first(pair: Pair) -> None:
    keys = []
    for i in range(5):
        pair.clock.now = T0 + i
        keys += pair.hand_out(1)
    batches = [pair.slave.expire_unfetched(HOUR, now=T0 + 2 * HOUR, limit=2) for _ in range(4)]
    assert [[k for g in b for k in g.key_ids] for b in batches] == [
        [keys[0].key_id, keys[1].key_id],
        [keys[2].key_id, keys[3].key_id],
        [keys[4].key_id],
        [],
    ]
    assert not more_due(batches[2]) and not more_due([])
    full = ExpiredKeys(peer=ME, master_sae="m", slave_sae="s", key_ids=("x",) * SWEEP_BATCH, bits=8)
    assert more_due([full])
    with pytest.raises(StoreError):
        pair.slave.expire_unfetched(HOUR, now=T0, limit=0)


def test_sweeps_run_at_a_tenth_of_the_lifetime_and_at_least_every_minute() -> None:
    assert sweep_interval(86_400.0) == 60.0
    assert sweep_interval(300.0) == 30.0
    assert sweep_interval(2.0) == pytest.approx(0.2)


def test_keys_held_by_a_schema_1_store_start_their_lifetime_at_the_first_sweep(tmp_path: Path) -> None:
    """A daemon restarted on an older state dir upgrades it and still expires the keys it held."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    for statement in schema._SCHEMA_V1.split(";"):
        if statement.strip():
            old.execute(statement)
    old.execute("PRAGMA user_version = 1")
    key_id = "11111111-1111-4111-8111-111111111111"
    old.execute("INSERT INTO incoming VALUES (?, ?, 'm1', 's1', ?)", (key_id, ME, b"\x5a" * 32))
    old.close()

    store = KeyStore.open(path)
    try:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 3
        assert store.has_incoming(key_id)
        assert store.expire_unfetched(HOUR, now=T0) == []  # its clock starts now
        assert store.expire_unfetched(HOUR, now=T0 + HOUR - 1) == []
        (gone,) = store.expire_unfetched(HOUR, now=T0 + HOUR)
        assert gone.key_ids == (key_id,) and gone.bits == 256
    finally:
        store.close()
    store = KeyStore.open(path)  # a second open finds the current version: nothing to migrate
    try:
        assert store.has_expired(key_id)
    finally:
        store.close()
