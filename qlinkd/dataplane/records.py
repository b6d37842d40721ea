"""The data plane's durable records: one SQLite database (WAL, synchronous=FULL, mode 0600) holding the
state of every outgoing and incoming transfer. The bytes of studies and images live in files beside it
(``outbox``, ``inbox``), and a record changes only after the files it vouches for are fsynced. An EHR
message is small and latency-bound, so its bytes live in its record: queueing or delivering one is a
single transaction, one fsync.
"""

from __future__ import annotations

import enum
import functools
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from qlinkmed.qlinkd.dataplane.manifest import Manifest
from qlinkmed.qlinkd.errors import StoreError
from qlinkmed.qlinkd.pool.sqlite import open_private_db


@functools.lru_cache(maxsize=256)
def _manifest(stored: bytes) -> Manifest:
    # A manifest never changes once stored, and parsing a study's thousand entries takes milliseconds:
    # without the cache every status or inbox call paid that on the event loop that streams the data.
    return Manifest.from_json(stored)


_STEPS = (
    # Each step takes the schema from its index to the next version; a new database runs them all, so
    # every table and index is declared once.
    """
    CREATE TABLE outgoing (transfer_id TEXT PRIMARY KEY, peer TEXT NOT NULL, seq INTEGER NOT NULL,
        state TEXT NOT NULL, manifest BLOB NOT NULL, queued_at REAL NOT NULL, finished_at REAL,
        reason TEXT, body BLOB);
    CREATE INDEX outgoing_peer ON outgoing (peer, state, seq);
    CREATE TABLE incoming (transfer_id TEXT PRIMARY KEY, peer TEXT NOT NULL, state TEXT NOT NULL,
        manifest BLOB NOT NULL, file_index INTEGER NOT NULL, file_offset INTEGER NOT NULL,
        started_at REAL NOT NULL, delivered_at REAL, at_rest_key BLOB, forms TEXT, reason TEXT,
        fetched_at REAL, blob BLOB, spooled_at REAL);
    """,
    # Version 1 had no index for the order of either table: queueing (MAX(seq)) and both listings scanned
    # every transfer ever sent or received, so they grew slower with the daemon's age.
    """
    CREATE INDEX outgoing_seq ON outgoing (seq);
    CREATE INDEX incoming_started ON incoming (started_at);
    """,
)
SCHEMA_VERSION = len(_STEPS)


class Outgoing(enum.StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    REFUSED = "refused"


class Incoming(enum.StrEnum):
    RECEIVING = "receiving"
    DELIVERED = "delivered"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    manifest: Manifest
    state: Outgoing
    queued_at: float
    finished_at: float | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class IncomingRecord:
    manifest: Manifest
    state: Incoming
    file_index: int
    file_offset: int
    started_at: float
    delivered_at: float | None
    forms: str | None
    reason: str | None
    fetched_at: float | None
    spooled_at: float | None
    """When every byte was fsynced in the spool and verified (None for an EHR message sent whole)."""


@dataclass(frozen=True, slots=True)
class QueueSummary:
    count: int
    bytes: int
    oldest_queued_at: float | None
    """Wall time the oldest queued transfer was queued; None for an empty queue."""
    stuck: int
    """Queued before the time the caller named."""


@dataclass(frozen=True, slots=True)
class RefusedTransfer:
    transfer_id: str
    finished_at: float
    reason: str


class TransferRecords:
    """Synchronous; used from the daemon's event-loop thread only."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @classmethod
    def open(cls, path: Path) -> TransferRecords:
        db = open_private_db(path)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{path}: transfer schema {version}, this qlinkd knows {SCHEMA_VERSION}")
            if version < SCHEMA_VERSION:
                steps = "".join(_STEPS[version:])
                db.executescript(f"BEGIN; {steps} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        except BaseException:
            db.close()
            raise
        return cls(db)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- outgoing

    def queue(self, manifest: Manifest, body: bytes | None = None) -> None:
        """Queue a transfer whose files are in the outbox, or an EHR message whose `body` is kept here."""
        with self._tx():
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM outgoing").fetchone()[0]
            self._db.execute(
                "INSERT INTO outgoing VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, ?)",
                (
                    manifest.transfer_id,
                    manifest.recipient,
                    seq,
                    Outgoing.QUEUED.value,
                    manifest.to_json(),
                    manifest.created,
                    body,
                ),
            )

    def body(self, transfer_id: str) -> bytes | None:
        """The bytes of a queued EHR message (None for a transfer whose files are in the outbox)."""
        row = self._db.execute("SELECT body FROM outgoing WHERE transfer_id = ?", (transfer_id,)).fetchone()
        return None if row is None else row[0]

    def queued(self, peer: str) -> list[Manifest]:
        """The peer's queued transfers, oldest first."""
        rows = self._db.execute(
            "SELECT manifest FROM outgoing WHERE peer = ? AND state = ? ORDER BY seq",
            (peer, Outgoing.QUEUED.value),
        )
        return [_manifest(r[0]) for r in rows]

    def finish_outgoing(self, transfer_id: str, state: Outgoing, reason: str | None = None) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE outgoing SET state = ?, finished_at = ?, reason = ?, body = NULL"
                " WHERE transfer_id = ?",
                (state.value, time.time(), reason, transfer_id),
            )

    def outgoing(self, transfer_id: str) -> OutgoingRecord | None:
        row = self._db.execute(
            "SELECT manifest, state, queued_at, finished_at, reason FROM outgoing WHERE transfer_id = ?",
            (transfer_id,),
        ).fetchone()
        if row is None:
            return None
        return OutgoingRecord(_manifest(row[0]), Outgoing(row[1]), row[2], row[3], row[4])

    def list_outgoing(self, limit: int = 1000) -> list[OutgoingRecord]:
        rows = self._db.execute(
            "SELECT manifest, state, queued_at, finished_at, reason FROM outgoing ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [OutgoingRecord(_manifest(r[0]), Outgoing(r[1]), r[2], r[3], r[4]) for r in rows]

    def queue_summary(self, peer: str, *, stuck_before: float = 0.0) -> QueueSummary:
        """The peer's queue at a glance: how many transfers, their bytes, when the oldest was queued, and
        how many were queued before `stuck_before`. One indexed read (outgoing_peer)."""
        # Bytes summed in SQLite from the manifests' file sizes: parsing each manifest in Python cost ~40 ms
        # a scrape for a queue of 2,000 (bench/bench_status_queues.py), on the loop that streams data.
        count, oldest, stuck, size = self._db.execute(
            "SELECT COUNT(*), MIN(queued_at), TOTAL(queued_at < ?),"
            " TOTAL((SELECT TOTAL(json_extract(f.value, '$[1]'))"
            " FROM json_each(CAST(manifest AS TEXT), '$.files') AS f))"
            " FROM outgoing WHERE peer = ? AND state = ?",
            (stuck_before, peer, Outgoing.QUEUED.value),
        ).fetchone()
        return QueueSummary(count=count, bytes=int(size), oldest_queued_at=oldest, stuck=int(stuck))

    def refused_outgoing(
        self, peer: str, *, since: float, limit: int = 5
    ) -> tuple[int, list[RefusedTransfer]]:
        """Transfers to `peer` the peer refused (or that could not be delivered) since `since` (wall
        time): their number and the newest `limit`, each with its reason."""
        count = self._db.execute(
            "SELECT COUNT(*) FROM outgoing WHERE peer = ? AND state = ? AND finished_at >= ?",
            (peer, Outgoing.REFUSED.value, since),
        ).fetchone()[0]
        rows = self._db.execute(
            "SELECT transfer_id, finished_at, reason FROM outgoing WHERE peer = ? AND state = ?"
            " AND finished_at >= ? ORDER BY seq DESC LIMIT ?",
            (peer, Outgoing.REFUSED.value, since, limit),
        )
        return count, [RefusedTransfer(r[0], r[1], r[2] or "") for r in rows]

    def unfetched(self) -> dict[str, tuple[int, float]]:
        """Per sending peer: delivered transfers nobody has fetched yet, and when the oldest arrived."""
        # A scan of the incoming table (no index on state): ~2.5 ms for 10,000 received transfers, ~40 ms
        # for 100,000 (bench/bench_status_queues.py); the inbox's retention keeps the table bounded. A
        # partial index (state = 'delivered' AND fetched_at IS NULL) would make it one indexed read.
        rows = self._db.execute(
            "SELECT peer, COUNT(*), MIN(delivered_at) FROM incoming"
            " WHERE state = ? AND fetched_at IS NULL GROUP BY peer",
            (Incoming.DELIVERED.value,),
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    # ---- incoming

    def incoming(self, transfer_id: str) -> IncomingRecord | None:
        row = self._db.execute(
            "SELECT manifest, state, file_index, file_offset, started_at, delivered_at, forms, reason,"
            " fetched_at, spooled_at FROM incoming WHERE transfer_id = ?",
            (transfer_id,),
        ).fetchone()
        if row is None:
            return None
        return IncomingRecord(_manifest(row[0]), Incoming(row[1]), *row[2:])

    def at_rest_key(self, transfer_id: str) -> bytes | None:
        row = self._db.execute("SELECT at_rest_key FROM incoming WHERE transfer_id = ?", (transfer_id,))
        found = row.fetchone()
        return None if found is None else found[0]

    def begin_incoming(self, manifest: Manifest) -> None:
        with self._tx():
            self._db.execute(
                "INSERT INTO incoming VALUES (?, ?, ?, ?, 0, 0, ?, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
                (
                    manifest.transfer_id,
                    manifest.sender,
                    Incoming.RECEIVING.value,
                    manifest.to_json(),
                    time.time(),
                ),
            )

    def record_ehr(
        self,
        manifest: Manifest,
        *,
        blob: bytes | None,
        key: bytes | None,
        forms: str | None,
        reason: str | None,
    ) -> None:
        """An EHR message received whole: delivered (its at-rest `blob` kept here) or refused, at once."""
        state = Incoming.DELIVERED if reason is None else Incoming.REFUSED
        now = time.time()
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO incoming VALUES (?, ?, ?, ?, 1, 0, ?, ?, ?, ?, ?, NULL, ?, ?)",
                (
                    manifest.transfer_id,
                    manifest.sender,
                    state.value,
                    manifest.to_json(),
                    now,
                    now,
                    key,
                    forms,
                    reason,
                    blob,
                    now,
                ),
            )

    def blob(self, transfer_id: str) -> bytes | None:
        row = self._db.execute("SELECT blob FROM incoming WHERE transfer_id = ?", (transfer_id,)).fetchone()
        return None if row is None else row[0]

    def advance(self, transfer_id: str, file_index: int, offset: int, *, complete: bool = False) -> None:
        """Every byte before (file_index, offset) is fsynced in the spool (`complete`: every byte)."""
        with self._tx():
            self._db.execute(
                "UPDATE incoming SET file_index = ?, file_offset = ?,"
                " spooled_at = CASE WHEN ? THEN ? ELSE spooled_at END WHERE transfer_id = ? AND state = ?",
                (file_index, offset, complete, time.time(), transfer_id, Incoming.RECEIVING.value),
            )

    def deliver(self, transfer_id: str, *, at_rest_key: bytes, forms: str) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE incoming SET state = ?, delivered_at = ?, at_rest_key = ?, forms = ?"
                " WHERE transfer_id = ?",
                (Incoming.DELIVERED.value, time.time(), at_rest_key, forms, transfer_id),
            )

    def refuse_incoming(self, transfer_id: str, reason: str) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE incoming SET state = ?, reason = ?, delivered_at = ? WHERE transfer_id = ?",
                (Incoming.REFUSED.value, reason, time.time(), transfer_id),
            )

    def mark_fetched(self, transfer_id: str) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE incoming SET fetched_at = ? WHERE transfer_id = ?", (time.time(), transfer_id)
            )

    def list_incoming(self, limit: int = 1000) -> list[IncomingRecord]:
        rows = self._db.execute(
            "SELECT manifest, state, file_index, file_offset, started_at, delivered_at, forms, reason,"
            " fetched_at, spooled_at FROM incoming ORDER BY started_at DESC LIMIT ?",
            (limit,),
        )
        return [IncomingRecord(_manifest(r[0]), Incoming(r[1]), *r[2:]) for r in rows]
