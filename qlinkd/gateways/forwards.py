"""The durable forwarding ledger of one facility: which arrived transfers each gateway still owes to a
destination (a PACS AE, an interface engine, a FHIR server), in arrival order, with the attempts made and
the last error; what was delivered; what was parked because the destination refused it for good.

One SQLite file (forwards.sqlite3) beside the transfer records. A row is added when a transfer arrives
(and again, harmlessly, when the gateway reconciles the inbox at start-up: `add` ignores a row it has),
so a crash between the inbox commit and the ledger write loses nothing. Rows leave the ledger only by
`purge_finished` (retention). Synchronous; use from the event loop's thread.
"""

from __future__ import annotations

import enum
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from qlinkmed.qlinkd.errors import StoreError
from qlinkmed.qlinkd.pool.sqlite import open_private_db

LEDGER_FILE = "forwards.sqlite3"
ERROR_CHARS = 500
"""A destination's error text is kept to this length (it comes from a remote system)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS forwards (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    gateway TEXT NOT NULL,
    destination TEXT NOT NULL,
    transfer_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt REAL NOT NULL,
    added REAL NOT NULL,
    finished REAL,
    UNIQUE (gateway, destination, transfer_id)
);
CREATE INDEX IF NOT EXISTS forwards_due ON forwards (gateway, destination, state, seq);
"""


class ForwardState(enum.StrEnum):
    PENDING = "pending"
    """Owed to the destination; tried again at next_attempt."""
    DELIVERED = "delivered"
    """The destination accepted it (its success status or ACK)."""
    PARKED = "parked"
    """The destination refused it for good (DICOM failure status, HL7 AR, FHIR 4xx): an operator looks."""


@dataclass(frozen=True, slots=True)
class Forward:
    seq: int
    """Arrival order across the ledger: a destination is served in this order."""
    gateway: str
    destination: str
    transfer_id: str
    state: ForwardState
    attempts: int
    last_error: str | None
    next_attempt: float
    added: float
    finished: float | None


@dataclass(frozen=True, slots=True)
class DestinationSummary:
    gateway: str
    destination: str
    pending: int
    parked: int
    delivered: int
    oldest_pending: float | None
    """When the oldest pending row was added (Unix time), None if nothing is pending."""
    last_error: str | None
    """The last error of the oldest pending row (the one holding the line), if any."""


_COLUMNS = (
    "seq, gateway, destination, transfer_id, state, attempts, last_error, next_attempt, added, finished"
)


def _row(row: tuple[object, ...]) -> Forward:
    seq, gateway, destination, tid, state, attempts, error, next_attempt, added, finished = row
    return Forward(
        seq=int(str(seq)),
        gateway=str(gateway),
        destination=str(destination),
        transfer_id=str(tid),
        state=ForwardState(str(state)),
        attempts=int(str(attempts)),
        last_error=None if error is None else str(error),
        next_attempt=float(str(next_attempt)),
        added=float(str(added)),
        finished=None if finished is None else float(str(finished)),
    )


class ForwardLedger:
    def __init__(self, db: sqlite3.Connection, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._watchers: dict[tuple[str, str], Callable[[], None]] = {}

    def watch(self, gateway: str, destination: str, wake: Callable[[], None]) -> None:
        """Call `wake` when rows of (gateway, destination) become owed again by an operator's release
        (arrivals wake their forwarders themselves)."""
        self._watchers[(gateway, destination)] = wake

    @classmethod
    def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> ForwardLedger:
        db = open_private_db(path)
        try:
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StoreError(f"{path}: not a forwarding ledger ({exc})", field="path") from exc
        return cls(db, clock=clock)

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

    def add(self, gateway: str, transfer_id: str, destinations: Iterable[str]) -> int:
        """Owe `transfer_id` to each destination (in this call's order); a row already there is left as it
        is. Returns how many rows were new."""
        now = self._clock()
        with self._tx():
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO forwards"
                " (gateway, destination, transfer_id, state, next_attempt, added) VALUES (?, ?, ?, ?, ?, ?)",
                [(gateway, d, transfer_id, ForwardState.PENDING.value, now, now) for d in destinations],
            )
            return self._db.total_changes - before

    def known(self, gateway: str, transfer_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM forwards WHERE gateway = ? AND transfer_id = ? LIMIT 1", (gateway, transfer_id)
        ).fetchone()
        return row is not None

    def head(self, gateway: str, destination: str) -> Forward | None:
        """The oldest pending row of a destination: the one it must take next (order is kept)."""
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM forwards WHERE gateway = ? AND destination = ? AND state = ?"
            " ORDER BY seq LIMIT 1",
            (gateway, destination, ForwardState.PENDING.value),
        ).fetchone()
        return None if row is None else _row(row)

    def pending(self, gateway: str, destination: str, limit: int = 100) -> list[Forward]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM forwards WHERE gateway = ? AND destination = ? AND state = ?"
            " ORDER BY seq LIMIT ?",
            (gateway, destination, ForwardState.PENDING.value, limit),
        ).fetchall()
        return [_row(r) for r in rows]

    def get(self, gateway: str, destination: str, transfer_id: str) -> Forward | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM forwards WHERE gateway = ? AND destination = ? AND transfer_id = ?",
            (gateway, destination, transfer_id),
        ).fetchone()
        return None if row is None else _row(row)

    def delivered(self, forward: Forward) -> None:
        self._finish(forward, ForwardState.DELIVERED, None)

    def parked(self, forward: Forward, error: str) -> None:
        self._finish(forward, ForwardState.PARKED, error)

    def _finish(self, forward: Forward, state: ForwardState, error: str | None) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE forwards SET state = ?, attempts = attempts + 1, last_error = ?, finished = ?"
                " WHERE seq = ? AND state = ?",
                (state.value, _clip(error), self._clock(), forward.seq, ForwardState.PENDING.value),
            )

    def failed(self, forward: Forward, error: str, retry_in_s: float) -> None:
        """An attempt failed in a way worth retrying (timeout, connection refused, a transient status)."""
        with self._tx():
            self._db.execute(
                "UPDATE forwards SET attempts = attempts + 1, last_error = ?, next_attempt = ?"
                " WHERE seq = ? AND state = ?",
                (_clip(error), self._clock() + retry_in_s, forward.seq, ForwardState.PENDING.value),
            )

    def retry_parked(
        self, gateway: str, destination: str | None = None, transfer_id: str | None = None
    ) -> list[Forward]:
        """An operator fixed the destination (or the message): parked rows are owed again, in their
        original order, with their attempts kept. Returns the released rows as they were (the caller
        audits them); the destinations' forwarders are woken."""
        where, args = "gateway = ? AND state = ?", [gateway, ForwardState.PARKED.value]
        if destination is not None:
            where += " AND destination = ?"
            args.append(destination)
        if transfer_id is not None:
            where += " AND transfer_id = ?"
            args.append(transfer_id)
        with self._tx():
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM forwards WHERE {where}", args).fetchall()
            self._db.execute(
                f"UPDATE forwards SET state = ?, next_attempt = ?, finished = NULL WHERE {where}",
                [ForwardState.PENDING.value, self._clock(), *args],
            )
        released = [_row(r) for r in rows]
        for key in sorted({(f.gateway, f.destination) for f in released}):
            if (wake := self._watchers.get(key)) is not None:
                wake()
        return released

    def rows(
        self,
        *,
        state: ForwardState | None = None,
        gateway: str | None = None,
        destination: str | None = None,
        limit: int = 100,
    ) -> list[Forward]:
        """Rows in arrival order, optionally of one state, gateway or destination (for operators)."""
        clauses, args = [], []
        for column, value in (("state", state), ("gateway", gateway), ("destination", destination)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(str(value))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        found = self._db.execute(
            f"SELECT {_COLUMNS} FROM forwards{where} ORDER BY seq LIMIT ?", [*args, limit]
        ).fetchall()
        return [_row(r) for r in found]

    def summaries(self) -> list[DestinationSummary]:
        out = []
        rows = self._db.execute(
            "SELECT gateway, destination,"
            " SUM(state = 'pending'), SUM(state = 'parked'), SUM(state = 'delivered'),"
            " MIN(CASE WHEN state = 'pending' THEN added END)"
            " FROM forwards GROUP BY gateway, destination ORDER BY gateway, destination"
        ).fetchall()
        for gateway, destination, pending, parked, delivered, oldest in rows:
            head = self.head(gateway, destination) if pending else None
            out.append(
                DestinationSummary(
                    gateway=gateway,
                    destination=destination,
                    pending=int(pending),
                    parked=int(parked),
                    delivered=int(delivered),
                    oldest_pending=None if oldest is None else float(oldest),
                    last_error=head.last_error if head else None,
                )
            )
        return out

    def outcomes(self) -> dict[str, tuple[int, int, float | None]]:
        """Per transfer the ledger knows: (rows delivered, rows pending or parked, when its last delivered
        row finished). Inbox retention reads it: a transfer is forwarded once no row is owed."""
        rows = self._db.execute(
            "SELECT transfer_id, TOTAL(state = 'delivered'), TOTAL(state != 'delivered'),"
            " MAX(CASE WHEN state = 'delivered' THEN finished END) FROM forwards GROUP BY transfer_id"
        )
        return {r[0]: (int(r[1]), int(r[2]), r[3]) for r in rows}

    def purge_finished(self, older_than_s: float) -> list[Forward]:
        """Drop delivered and parked rows finished more than `older_than_s` ago; returns them (the caller
        audits what it purged)."""
        cutoff = self._clock() - older_than_s
        with self._tx():
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM forwards WHERE state != ? AND finished < ?",
                (ForwardState.PENDING.value, cutoff),
            ).fetchall()
            self._db.executemany("DELETE FROM forwards WHERE seq = ?", [(r[0],) for r in rows])
        return [_row(r) for r in rows]


def _clip(error: str | None) -> str | None:
    if error is None:
        return None
    return error if len(error) <= ERROR_CHARS else error[: ERROR_CHARS - 1] + "…"
