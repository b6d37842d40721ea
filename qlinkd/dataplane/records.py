"""The data plane's durable records: one SQLite database (WAL, synchronous=FULL, mode 0600) holding the
state of every outgoing and incoming transfer. The bytes of studies and images live in files beside it
(``outbox``, ``inbox``), and a record changes only after the files it vouches for are fsynced. An EHR
message is small and latency-bound, so a queued one's bytes live in its record (queueing is one
transaction). A delivered one is an inbox file whose key is in the key store (`rest_keys`); only messages
an older qlinkd delivered keep their sealed blob and key here (`blob`, `at_rest_key`), still read.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlinkmed.qlinkd.content.summary import InboxSummary
from qlinkmed.qlinkd.dataplane.inbox_filter import InboxFilter
from qlinkmed.qlinkd.dataplane.manifest import Manifest
from qlinkmed.qlinkd.errors import StoreError
from qlinkmed.qlinkd.pool.sqlite import open_private_db

_SUMMARY_COLUMNS = (
    "patient_name",
    "patient_id",
    "accession",
    "modalities",
    "study_date",
    "study_description",
    "instances",
    "message_type",
    "sender",
    "department",
)
"""The summary's columns of inbox_listing, in the table's order (each an `InboxSummary` field)."""


def _summary_values(s: InboxSummary) -> tuple[object, ...]:
    return tuple(getattr(s, name) for name in _SUMMARY_COLUMNS)


def _summary_of(values: tuple[Any, ...]) -> InboxSummary:
    """The inverse of `_summary_values`."""
    return InboxSummary(**dict(zip(_SUMMARY_COLUMNS, values, strict=True)))


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
    # Version 2 listed the inbox by parsing every manifest and knew nothing of what a study or message is
    # about. The listing now has a narrow table of its own, `inbox_listing`: the summary extracted once on
    # arrival (content.summary) and the lifecycle the listing shows, written in the same transactions as
    # `incoming` (whose rows hold manifests and EHR bodies: reading any column after them walks their
    # overflow pages, 13.9 s for 10,000 studies of 300 instances, bench/bench_inbox_list.py). Rows that
    # arrived before this version get kind, file count and bytes from their manifests, once. A purged
    # transfer keeps its rows (exactly-once needs them) with when and why it was purged.
    """
    ALTER TABLE incoming ADD COLUMN purged_at REAL;
    ALTER TABLE incoming ADD COLUMN purge_reason TEXT;
    CREATE TABLE inbox_listing (transfer_id TEXT PRIMARY KEY, peer TEXT NOT NULL, kind TEXT NOT NULL,
        files INTEGER NOT NULL, bytes INTEGER NOT NULL, state TEXT NOT NULL, started_at REAL NOT NULL,
        delivered_at REAL, fetched_at REAL, purged_at REAL, purge_reason TEXT, forms TEXT, reason TEXT,
        patient_name TEXT, patient_id TEXT, accession TEXT, modalities TEXT, study_date TEXT,
        study_description TEXT, instances INTEGER, message_type TEXT, sender TEXT);
    INSERT INTO inbox_listing (transfer_id, peer, kind, files, bytes, state, started_at, delivered_at,
            fetched_at, forms, reason)
        SELECT transfer_id, peer, json_extract(CAST(manifest AS TEXT), '$.kind'),
            json_array_length(CAST(manifest AS TEXT), '$.files'),
            (SELECT TOTAL(json_extract(f.value, '$[1]')) FROM json_each(CAST(manifest AS TEXT), '$.files') f),
            state, started_at, delivered_at, fetched_at, forms, reason
        FROM incoming;
    CREATE INDEX inbox_listing_started ON inbox_listing (started_at);
    """,
    # Version 3 recorded no department, so roles limited to departments refused everything. The
    # department is decided on arrival by the facility's [departments] rules (access.departments); rows
    # from before stay without one (their contents' facts were not kept to decide it now).
    """
    ALTER TABLE inbox_listing ADD COLUMN department TEXT;
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
    purged_at: float | None = None
    """When retention removed its at-rest copy (the record stays: the transfer is still delivered)."""
    purge_reason: str | None = None
    """Why: "fetched", "forwarded" or "max_age" (`dataplane.retention`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InboxEntry:
    """One row of the inbox listing: the record's state and the summary stored on arrival, read without
    a manifest or a blob (the manifest of a transfer still arriving excepted, for its progress)."""

    transfer_id: str
    peer: str
    kind: str
    files: int
    bytes: int
    state: Incoming
    received_bytes: int
    started_at: float
    delivered_at: float | None
    fetched_at: float | None
    forms: str | None
    reason: str | None
    purged_at: float | None
    purge_reason: str | None
    summary: InboxSummary


@dataclass(frozen=True, slots=True)
class RetentionRow:
    """A delivered transfer whose at-rest copy is still held, as retention judges it."""

    transfer_id: str
    delivered_at: float
    fetched_at: float | None


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
        db.create_function("qlink_fold", 1, _fold, deterministic=True)

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
            " WHERE state = ? AND fetched_at IS NULL AND purged_at IS NULL GROUP BY peer",
            (Incoming.DELIVERED.value,),
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    # ---- incoming

    def incoming(self, transfer_id: str) -> IncomingRecord | None:
        row = self._db.execute(
            "SELECT manifest, state, file_index, file_offset, started_at, delivered_at, forms, reason,"
            " fetched_at, spooled_at, purged_at, purge_reason FROM incoming WHERE transfer_id = ?",
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
        now = time.time()
        with self._tx():
            self._db.execute(
                "INSERT INTO incoming (transfer_id, peer, state, manifest, file_index, file_offset,"
                " started_at) VALUES (?, ?, ?, ?, 0, 0, ?)",
                (
                    manifest.transfer_id,
                    manifest.sender,
                    Incoming.RECEIVING.value,
                    manifest.to_json(),
                    now,
                ),
            )
            self._listed(manifest, Incoming.RECEIVING, started_at=now)

    def _listed(
        self,
        manifest: Manifest,
        state: Incoming,
        *,
        started_at: float,
        delivered_at: float | None = None,
        forms: str | None = None,
        reason: str | None = None,
        summary: InboxSummary | None = None,
    ) -> None:
        """Write the transfer's listing row (inside the caller's transaction); `summary` None: only what
        the manifest says, until the content has been read."""
        s = summary or InboxSummary()
        self._db.execute(
            "INSERT OR REPLACE INTO inbox_listing VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                manifest.transfer_id,
                manifest.sender,
                manifest.kind.value,
                len(manifest.files),
                manifest.total_bytes,
                state.value,
                started_at,
                delivered_at,
                forms,
                reason,
                *_summary_values(s),
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
        summary: InboxSummary | None = None,
    ) -> None:
        """An EHR message received whole: delivered or refused, at once. `blob` and `key` None: its at-rest
        file and key are elsewhere (inbox, key store); the daemon writes them so now."""
        state = Incoming.DELIVERED if reason is None else Incoming.REFUSED
        now = time.time()
        with self._tx():
            self._listed(
                manifest, state, started_at=now, delivered_at=now, forms=forms, reason=reason, summary=summary
            )
            self._db.execute(
                "INSERT OR REPLACE INTO incoming (transfer_id, peer, state, manifest, file_index,"
                " file_offset, started_at, delivered_at, at_rest_key, forms, reason, fetched_at, blob,"
                " spooled_at) VALUES (?, ?, ?, ?, 1, 0, ?, ?, ?, ?, ?, NULL, ?, ?)",
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

    def deliver(
        self, transfer_id: str, *, at_rest_key: bytes, forms: str, summary: InboxSummary | None = None
    ) -> None:
        now = time.time()
        s = summary or InboxSummary()
        with self._tx():
            self._db.execute(
                "UPDATE incoming SET state = ?, delivered_at = ?, at_rest_key = ?, forms = ?"
                " WHERE transfer_id = ?",
                (Incoming.DELIVERED.value, now, at_rest_key, forms, transfer_id),
            )
            self._db.execute(
                "UPDATE inbox_listing SET state = ?, delivered_at = ?, forms = ?, "
                + ", ".join(f"{column} = ?" for column in _SUMMARY_COLUMNS)
                + " WHERE transfer_id = ?",
                (
                    Incoming.DELIVERED.value,
                    now,
                    forms,
                    *_summary_values(s),
                    transfer_id,
                ),
            )

    def refuse_incoming(self, transfer_id: str, reason: str) -> None:
        now = time.time()
        with self._tx():
            for table in ("incoming", "inbox_listing"):
                self._db.execute(
                    f"UPDATE {table} SET state = ?, reason = ?, delivered_at = ? WHERE transfer_id = ?",
                    (Incoming.REFUSED.value, reason, now, transfer_id),
                )

    def mark_fetched(self, transfer_id: str) -> None:
        now = time.time()
        with self._tx():
            for table in ("incoming", "inbox_listing"):
                self._db.execute(
                    f"UPDATE {table} SET fetched_at = ? WHERE transfer_id = ?", (now, transfer_id)
                )

    def list_incoming(self, limit: int = 1000) -> list[IncomingRecord]:
        """The newest incoming transfers whose at-rest copy is still held (a purged transfer has nothing
        left to forward: the gateways reconcile from this)."""
        rows = self._db.execute(
            "SELECT manifest, state, file_index, file_offset, started_at, delivered_at, forms, reason,"
            " fetched_at, spooled_at, purged_at, purge_reason FROM incoming WHERE purged_at IS NULL"
            " ORDER BY started_at DESC LIMIT ?",
            (limit,),
        )
        return [IncomingRecord(_manifest(r[0]), Incoming(r[1]), *r[2:]) for r in rows]

    def list_inbox(self, query: InboxFilter) -> list[InboxEntry]:
        """The inbox listing, newest first, filtered in SQL on its own narrow table: no manifest and no
        blob is read (but the manifest of a transfer still arriving, for its progress)."""
        where, args = _where(query)
        rows = self._db.execute(
            f"SELECT {_LISTING} FROM inbox_listing {where} ORDER BY started_at DESC LIMIT ?",
            (*args, query.limit),
        )
        entries = [_entry(r) for r in rows]
        for i, entry in enumerate(entries):
            if entry.state is Incoming.RECEIVING:
                record = self.incoming(entry.transfer_id)
                if record is not None:
                    files = record.manifest.files
                    received = sum(f.size for f in files[: record.file_index]) + record.file_offset
                    entries[i] = dataclasses.replace(entry, received_bytes=received)
        return entries

    def summary(self, transfer_id: str) -> InboxSummary | None:
        row = self._db.execute(
            f"SELECT {_LISTING} FROM inbox_listing WHERE transfer_id = ?", (transfer_id,)
        ).fetchone()
        return None if row is None else _entry(row).summary

    # ---- retention

    def held(self) -> list[RetentionRow]:
        """Every delivered transfer whose at-rest copy is still held, oldest first. Read from the narrow
        listing table (a scan of it: ~3 ms for 10,000 transfers), never through the manifests."""
        rows = self._db.execute(
            "SELECT transfer_id, delivered_at, fetched_at FROM inbox_listing"
            " WHERE state = 'delivered' AND purged_at IS NULL ORDER BY delivered_at"
        )
        return [RetentionRow(r[0], r[1], r[2]) for r in rows]

    def mark_purged(self, transfer_id: str, reason: str, now: float) -> int | None:
        """Mark a delivered transfer purged, dropping its at-rest key and an EHR message's blob in the same
        transaction: from here on nothing can read its at-rest files, whether or not they are deleted yet
        (`retention` erases an EHR message's key in the key store and deletes the files after, and again at
        start-up after a crash). Returns the bytes of the
        blob dropped (0 for a transfer kept in files), None if the transfer is not held (unknown, not
        delivered, or purged already)."""
        with self._tx():
            row = self._db.execute(
                "SELECT COALESCE(LENGTH(blob), 0) FROM incoming"
                " WHERE transfer_id = ? AND state = ? AND purged_at IS NULL",
                (transfer_id, Incoming.DELIVERED.value),
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE incoming SET purged_at = ?, purge_reason = ?, at_rest_key = NULL, blob = NULL"
                " WHERE transfer_id = ?",
                (now, reason, transfer_id),
            )
            self._db.execute(
                "UPDATE inbox_listing SET purged_at = ?, purge_reason = ? WHERE transfer_id = ?",
                (now, reason, transfer_id),
            )
        return int(row[0])

    def purged(self, transfer_id: str) -> tuple[float, str] | None:
        """(when, why) a transfer was purged; None if it was not."""
        row = self._db.execute(
            "SELECT purged_at, purge_reason FROM incoming WHERE transfer_id = ? AND purged_at IS NOT NULL",
            (transfer_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1] or "")


_LISTING = (
    "transfer_id, peer, kind, files, bytes, state, started_at, delivered_at, fetched_at, forms, reason,"
    " purged_at, purge_reason, " + ", ".join(_SUMMARY_COLUMNS)
)


def _entry(r: tuple[Any, ...]) -> InboxEntry:
    state = Incoming(r[5])
    return InboxEntry(
        transfer_id=r[0],
        peer=r[1],
        kind=r[2],
        files=r[3],
        bytes=r[4],
        state=state,
        received_bytes=r[4] if state is Incoming.DELIVERED else 0,
        started_at=r[6],
        delivered_at=r[7],
        fetched_at=r[8],
        forms=r[9],
        reason=r[10],
        purged_at=r[11],
        purge_reason=r[12],
        summary=_summary_of(r[13:]),
    )


def _where(query: InboxFilter) -> tuple[str, list[object]]:
    """The WHERE clause of the inbox listing for `query`, and its parameters."""
    terms: list[str] = []
    args: list[object] = []
    if query.patient is not None:
        terms.append("(instr(qlink_fold(patient_name), ?) OR instr(qlink_fold(patient_id), ?))")
        needle = query.patient.casefold()
        args += [needle, needle]
    if query.accession is not None:
        terms.append("accession = ?")
        args.append(query.accession)
    if query.modality is not None:
        terms.append("instr('\\' || modalities || '\\', ?)")
        args.append(f"\\{query.modality}\\")
    if query.kind is not None:
        terms.append("kind = ?")
        args.append(query.kind)
    if query.peer is not None:
        terms.append("peer = ?")
        args.append(query.peer)
    if query.department is not None:
        terms.append("qlink_fold(department) = ?")
        args.append(query.department.casefold())
    if query.since is not None:
        terms.append("started_at >= ?")
        args.append(query.since)
    if query.until is not None:
        terms.append("started_at < ?")
        args.append(query.until)
    if query.unfetched:
        terms.append("state = 'delivered' AND fetched_at IS NULL AND purged_at IS NULL")
    if query.id_prefix is not None:
        terms.append("substr(transfer_id, 1, ?) = ?")
        args += [len(query.id_prefix), query.id_prefix]
    return ("WHERE " + " AND ".join(terms)) if terms else "", args


def _fold(text: str | None) -> str | None:
    # Unicode case folding for the patient filter ("jörg" finds "JÖRG"); SQLite's LIKE folds ASCII only.
    return None if text is None else text.casefold()
