"""The key pool's SQLite schema: its tables, its version, and the upgrade of a file written by an older
qlinkd (:class:`~qlinkmed.qlinkd.pool.keystore.KeyStore` runs :func:`upgrade` when it opens the file)."""

from __future__ import annotations

import sqlite3

from qlinkmed.qlinkd.errors import StoreError

SCHEMA_VERSION = 3

# rounds: one row per pending or committed round with its unconsumed key (`start` = absolute offset of
# `material`'s first byte); round_outcomes: the fate of every settled round id; outbox: notices owed to the
# peer (master side); incoming: keys held for a slave SAE; fetched: tombstones of delivered incoming keys.
# This is version 1; a new file gets it and then every migration, so a new file and an upgraded one are
# the same.
_SCHEMA_V1 = """
CREATE TABLE links (peer TEXT PRIMARY KEY, next_round INTEGER NOT NULL, last_committed INTEGER NOT NULL,
    last_stored INTEGER NOT NULL);
CREATE TABLE rounds (peer TEXT NOT NULL, round_id INTEGER NOT NULL, owner TEXT NOT NULL,
    committed INTEGER NOT NULL, start INTEGER NOT NULL, material BLOB NOT NULL, auth_refill BLOB,
    PRIMARY KEY (peer, round_id));
CREATE TABLE round_outcomes (peer TEXT NOT NULL, round_id INTEGER NOT NULL, committed INTEGER NOT NULL,
    PRIMARY KEY (peer, round_id)) WITHOUT ROWID;
CREATE TABLE auth (peer TEXT PRIMARY KEY, position INTEGER NOT NULL, material BLOB NOT NULL,
    psk_sha256 BLOB NOT NULL);
CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, peer TEXT NOT NULL, key_id TEXT NOT NULL UNIQUE,
    master_sae TEXT NOT NULL, slave_sae TEXT NOT NULL, segments TEXT NOT NULL);
CREATE TABLE incoming (key_id TEXT PRIMARY KEY, peer TEXT NOT NULL, master_sae TEXT NOT NULL,
    slave_sae TEXT NOT NULL, material BLOB NOT NULL);
CREATE TABLE fetched (key_id TEXT PRIMARY KEY, peer TEXT NOT NULL) WITHOUT ROWID;
"""
# {old_version: script}; upgrade() applies them in order, in the caller's transaction.
_MIGRATIONS: dict[int, str] = {
    # Key lifetime: incoming.received_at is when this end accepted the key (Unix time; NULL for a key a
    # version-1 qlinkd accepted: its lifetime starts at the first expiry sweep after the upgrade);
    # expired: tombstones of incoming keys deleted unfetched, so a replayed notice stays a no-op and a
    # slave asking for one learns that it expired.
    1: """
ALTER TABLE incoming ADD COLUMN received_at REAL;
CREATE TABLE expired (key_id TEXT PRIMARY KEY, peer TEXT NOT NULL, expired_at REAL NOT NULL) WITHOUT ROWID;
""",
    # EHR messages at rest: the key each delivered message's inbox file opens with, by transfer ID, kept
    # here and never beside the file (so the inbox may sit on shared storage): a quantum one-time pad
    # (form "qotpe": alpha || beta || MAC key, cut from the pool) or, when the pool was short, the
    # AES-256-GCM key (form "aead"). Deleting the row (secure_delete) shreds the message.
    2: """
CREATE TABLE at_rest (transfer_id TEXT PRIMARY KEY, peer TEXT NOT NULL, form TEXT NOT NULL,
    material BLOB NOT NULL, stored_at REAL NOT NULL);
""",
}


def _run(db: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it commits first, and the upgrade must stay inside the caller's transaction.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def upgrade(db: sqlite3.Connection) -> None:
    """Bring the file to SCHEMA_VERSION inside the caller's transaction: create the tables in a new file
    (version 0), apply the migrations to an older one; StoreError for a newer one."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"database schema {version} is newer than this qlinkd ({SCHEMA_VERSION})")
    if version == 0:
        _run(db, _SCHEMA_V1)
        version = 1
    while version < SCHEMA_VERSION:
        _run(db, _MIGRATIONS[version])
        version += 1
    db.execute(f"PRAGMA user_version = {version}")
