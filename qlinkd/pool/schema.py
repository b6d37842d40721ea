"""The key pool's SQLite schema: its tables, its version, and the upgrade of a file written by an older
qlinkd (:class:`~qlinkmed.qlinkd.pool.keystore.KeyStore` runs :func:`upgrade` when it opens the file)."""

from __future__ import annotations

import sqlite3

from qlinkmed.qlinkd.errors import StoreError

SCHEMA_VERSION = 1

# rounds: one row per pending or committed round with its unconsumed key (`start` = absolute offset of
# `material`'s first byte); round_outcomes: the fate of every settled round id; outbox: notices owed to the
# peer (master side); incoming: keys held for a slave SAE; fetched: tombstones of delivered incoming keys.
_SCHEMA = """
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
# Future schema changes: add {old_version: script} here; upgrade() applies them in order.
_MIGRATIONS: dict[int, str] = {}


def upgrade(db: sqlite3.Connection) -> None:
    """Bring the file to SCHEMA_VERSION inside the caller's transaction: create the tables in a new file
    (version 0), apply the migrations to an older one; StoreError for a newer one."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"database schema {version} is newer than this qlinkd ({SCHEMA_VERSION})")
    if version == 0:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        version = SCHEMA_VERSION
    while version < SCHEMA_VERSION:
        db.execute(_MIGRATIONS[version])
        version += 1
    db.execute(f"PRAGMA user_version = {version}")
