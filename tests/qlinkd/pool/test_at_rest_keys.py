"""The key store's keys of data at rest (schema 3): a pad cut from the owner's rounds with a notice that
makes the peer carve and drop the same bytes, so both pools stay identical; an AEAD key kept beside it;
erasure that leaves nothing in the database files; and the upgrade of a schema-2 file."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from qlinkmed.qlinkd.errors import InsufficientKey, KeyNotFound, StoreError
from qlinkmed.qlinkd.pool import schema
from qlinkmed.qlinkd.pool.keystore import DISCARD_SAE, FORM_PAD, KeyStore
from qlinkmed.qlinkd.pool.kme import StoreKeyManager
from qlinkmed.qlinkd.pool.values import KeyNotice

ME, PEER = "hospital-b", "hospital-a"  # ME receives EHR messages and keeps their pads
PSK = bytes(range(96))
TID = "5b0e7c4e-2f55-4a8e-9d8e-0d1d6f7b1a01"


def round_key(round_id: int, size: int) -> bytes:
    return hashlib.shake_256(f"round {round_id}".encode()).digest(size)


def add_round(ks: KeyStore, peer: str, round_id: int, owner: str, size: int) -> None:
    ks.note_round_started(peer, round_id)
    ks.store_pending(peer, round_id, owner=owner, key=round_key(round_id, size), auth_refill=b"\xaa" * 48)
    ks.commit(peer, round_id)


@pytest.fixture
def pair(tmp_path: Path):
    """My store (peer PEER) and the peer's (peer ME) with identical rounds: 1 and 3 mine, 2 theirs."""
    mine = KeyStore.open(tmp_path / "mine.db")
    theirs = KeyStore.open(tmp_path / "theirs.db")
    mine.init_auth(PEER, PSK)
    theirs.init_auth(ME, PSK)
    for r, owner in ((1, ME), (2, PEER), (3, ME)):
        add_round(mine, PEER, r, owner, 300)
        add_round(theirs, ME, r, owner, 300)
    yield mine, theirs
    mine.close()
    theirs.close()


def test_a_pad_is_cut_from_my_rounds_and_the_peer_drops_the_same_bytes(pair) -> None:
    mine, theirs = pair
    sent: list[KeyNotice] = []
    manager = StoreKeyManager(
        mine, facility=ME, local_saes=(), sae_to_peer={}, notify_sent=lambda peer, n: sent.append(n)
    )
    pad = manager.take_pad(PEER, transfer_id=TID, size_bytes=450, master_sae=f"qlinkd:{ME}")
    # FIFO across my two rounds, 300 bytes of round 1 then 150 of round 3; round 2 (theirs) untouched.
    assert pad == round_key(1, 300) + round_key(3, 300)[:150]
    assert mine.at_rest_key(TID) == (FORM_PAD, pad)
    (notice,) = sent
    assert (notice.slave_sae, notice.master_sae) == (DISCARD_SAE, f"qlinkd:{ME}")
    assert mine.pool_bits(PEER, owner=ME) == 8 * 150
    theirs.accept_notice(ME, notice)
    assert mine.pool_identities(PEER) == theirs.pool_identities(ME)
    # The peer keeps no copy for anyone: nothing held, a tombstone, and no SAE can fetch it.
    assert not theirs.has_incoming(notice.key_id) and theirs.has_fetched(notice.key_id)
    assert theirs.incoming_bits() == 0
    with pytest.raises(KeyNotFound):
        theirs.fetch_keys(ME, [notice.key_id], master_sae=f"qlinkd:{ME}", slave_sae=DISCARD_SAE)
    theirs.accept_notice(ME, notice)  # replayed on reconnect: a no-op
    assert mine.pool_identities(PEER) == theirs.pool_identities(ME)
    # The same transfer again (a message sent again after a crash): the pad held, nothing carved.
    assert manager.take_pad(PEER, transfer_id=TID, size_bytes=450, master_sae=f"qlinkd:{ME}") == pad
    assert len(sent) == 1 and mine.pool_bits(PEER, owner=ME) == 8 * 150
    with pytest.raises(StoreError, match="another at-rest key"):
        mine.take_pad(PEER, owner=ME, transfer_id=TID, size_bytes=10, master_sae="m")


def test_a_short_pool_cuts_nothing_and_an_aead_key_is_kept_instead(pair) -> None:
    mine, theirs = pair
    before = mine.pool_identities(PEER)
    with pytest.raises(InsufficientKey) as short:
        mine.take_pad(PEER, owner=ME, transfer_id=TID, size_bytes=601, master_sae="m")
    assert (short.value.requested_bits, short.value.available_bits) == (8 * 601, 8 * 600)
    assert mine.pool_identities(PEER) == before == theirs.pool_identities(ME) and mine.outbox(PEER) == []
    assert mine.at_rest_key(TID) is None
    key = bytes(range(32))
    assert mine.keep_at_rest_key(PEER, transfer_id=TID, form="aead", key=key) == key
    # A second keep (the message stored again) returns the key its file was written under.
    assert mine.keep_at_rest_key(PEER, transfer_id=TID, form="aead", key=b"\x01" * 32) == key
    assert mine.at_rest_key(TID) == ("aead", key) and mine.at_rest_transfers() == [TID]


def test_a_forgotten_pad_leaves_no_byte_in_the_database_files(tmp_path: Path, pair) -> None:
    mine, _ = pair
    pad, _ = mine.take_pad(PEER, owner=ME, transfer_id=TID, size_bytes=256, master_sae="m")
    mine.checkpoint()

    def raw() -> bytes:
        path = tmp_path / "mine.db"
        return b"".join(p.read_bytes() for p in (path, path.with_name("mine.db-wal")) if p.exists())

    assert pad[:32] in raw()  # held: the search finds it
    assert mine.forget_at_rest_key(TID)
    assert not mine.forget_at_rest_key(TID)
    assert mine.at_rest_key(TID) is None and mine.at_rest_transfers() == []
    data = raw()
    for offset in range(0, 256, 32):
        assert pad[offset : offset + 32] not in data, f"pad bytes at {offset} survive the erasure"


def test_a_schema_2_store_gains_the_at_rest_table_and_keeps_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    for script in (schema._SCHEMA_V1, schema._MIGRATIONS[1]):
        for statement in script.split(";"):
            if statement.strip():
                old.execute(statement)
    old.execute("PRAGMA user_version = 2")
    old.execute("INSERT INTO auth VALUES (?, 0, ?, ?)", (PEER, PSK, hashlib.sha256(PSK).digest()))
    old.execute("INSERT INTO rounds VALUES (?, 1, ?, 1, 0, ?, NULL)", (PEER, ME, round_key(1, 100)))
    old.close()
    store = KeyStore.open(path)
    try:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 3
        assert store.pool_identities(PEER) == [(1, ME, 0, 100)]
        pad, _ = store.take_pad(PEER, owner=ME, transfer_id=TID, size_bytes=40, master_sae="m")
        assert pad == round_key(1, 100)[:40] and store.at_rest_key(TID) == (FORM_PAD, pad)
    finally:
        store.close()
    store = KeyStore.open(path)  # current now: opened again without a migration
    try:
        assert store.at_rest_key(TID) == (FORM_PAD, round_key(1, 100)[:40])
    finally:
        store.close()
