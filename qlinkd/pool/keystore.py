"""The durable per-peer key pool: one SQLite file per daemon.

It holds, per peer link: the round commit state (the two-phase "stored" protocol the daemon runs), the
committed key of each round (owned by one end, consumed first-in first-out, byte by byte), the
authentication key store, the notices a master side owes its peer, and the keys a slave side holds for
its SAEs. Every mutating method is one ``BEGIN IMMEDIATE`` transaction, so a crash at any instant leaves
either the old state or the new one. Consumed key bytes are deleted with ``secure_delete`` on and the WAL
is checkpointed and truncated right after, so they do not linger in the files.

Keys of data at rest (`at_rest`, schema 3): the one-time pad of each EHR message in the inbox, carved
from this end's rounds with a notice that makes the peer drop its copy (DISCARD_SAE), or the AES key of
one stored when the pool was short; erased (secure_delete, WAL truncated) when the message is purged.

Key lifetime: a key handed to a master SAE leaves this store at once (only its notice, which names pool
offsets, stays until the peer acknowledges it); its copy at the slave's end waits in `incoming` until the
slave fetches it. `expire_unfetched` deletes the copies older than the configured lifetime by the same
erasure path, and leaves a tombstone so the slave is told the key expired.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qlinkmed.qcore.auth import AuthKeyStore
from qlinkmed.qlinkd.errors import InsufficientKey, KeyNotFound, NotAuthorised, StoreError
from qlinkmed.qlinkd.pool.schema import upgrade
from qlinkmed.qlinkd.pool.sqlite import open_private_db
from qlinkmed.qlinkd.pool.values import (
    DeliveredKey,
    ExpiredKeys,
    KeyNotice,
    LinkState,
    ReconcileResult,
    Segment,
    check_positive,
)

CHECKPOINT_INTERVAL_S = 0.5
FORM_PAD = "qotpe"
"""The `at_rest` form of a pad cut from the pool (alpha || beta || MAC key, `content.qotp_at_rest`)."""
DISCARD_SAE = "qlinkd:discard"
"""The slave SAE of pool bytes one end keeps for itself (an EHR message's at-rest pad): the peer carves
them from its pool and deletes them at once (`accept_notice`). The colon is outside the ETSI SAE ID
alphabet, so no SAE can claim them."""


def _segments_json(segments: tuple[Segment, ...]) -> str:
    return json.dumps([[s.round_id, s.start, s.length] for s in segments])


def _segments_from_json(text: str) -> tuple[Segment, ...]:
    return tuple(Segment(round_id=r, start=s, length=n) for r, s, n in json.loads(text))


class _Carver:
    """A cursor over one owner's committed rounds in FIFO order: hands out byte runs and then writes the
    consumption back (fully used rows deleted, the partly used one trimmed)."""

    def __init__(self, db: sqlite3.Connection, peer: str, owner: str, needed: int) -> None:
        self._rows: list[tuple[int, int, int, bytes]] = []
        have = 0
        cursor = db.execute(
            "SELECT rowid, round_id, start, material FROM rounds"
            " WHERE peer = ? AND owner = ? AND committed = 1 ORDER BY round_id",
            (peer, owner),
        )
        for row in cursor:
            if have >= needed:
                break
            self._rows.append(row)
            have += len(row[3])
        cursor.close()
        self._index = 0
        self._offset = 0

    def head(self) -> tuple[int, int, int] | None:
        """(round_id, absolute start, bytes left) of the next unconsumed run, None when exhausted."""
        if self._index >= len(self._rows):
            return None
        _, round_id, start, material = self._rows[self._index]
        return round_id, start + self._offset, len(material) - self._offset

    def take(self, length: int) -> tuple[bytes, list[Segment]]:
        parts: list[bytes] = []
        segments: list[Segment] = []
        while length:
            head = self.head()
            if head is None:
                raise StoreError("pool exhausted while carving", field="segments")
            round_id, start, left = head
            n = min(length, left)
            material = self._rows[self._index][3]
            parts.append(material[self._offset : self._offset + n])
            segments.append(Segment(round_id=round_id, start=start, length=n))
            self._offset += n
            length -= n
            if self._offset == len(material):
                self._index += 1
                self._offset = 0
        return b"".join(parts), segments

    def write_back(self, db: sqlite3.Connection) -> None:
        done = [(row[0],) for row in self._rows[: self._index]]
        db.executemany("DELETE FROM rounds WHERE rowid = ?", done)
        if self._offset:
            rowid, _, start, material = self._rows[self._index]
            db.execute(
                "UPDATE rounds SET start = ?, material = ? WHERE rowid = ?",
                (start + self._offset, material[self._offset :], rowid),
            )


class KeyStore:
    """The daemon's durable key pool. Synchronous; use from one thread. `clock` (Unix time, as
    `time.time`) stamps the keys accepted for a slave: their lifetime survives a restart, so it is wall
    time, not a monotonic clock."""

    def __init__(self, db: sqlite3.Connection, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._checkpoint_due = False

    def __repr__(self) -> str:
        return "KeyStore(keys=(hidden))"

    @classmethod
    def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> KeyStore:
        db = open_private_db(path)
        try:
            store = cls(db, clock=clock)
            store._migrate()
        except BaseException:
            db.close()
            raise
        return store

    def _migrate(self) -> None:
        with self._tx():
            upgrade(self._db)

    def close(self) -> None:
        self.checkpoint()
        self._db.close()

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it, so old page images (which may hold consumed
        key) do not survive in the -wal file."""
        self._q("PRAGMA wal_checkpoint(TRUNCATE)")
        self._checkpoint_due = False

    def checkpoint_if_due(self) -> bool:
        """Checkpoint if a key delivery left consumed key in the WAL since the last one. The daemon calls
        this every CHECKPOINT_INTERVAL_S: key deliveries then cost one fsync, not three, and consumed key
        lingers in the -wal file for at most that interval."""
        if self._checkpoint_due:
            self.checkpoint()
            return True
        return False

    def _q(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, params)

    def _one(self, sql: str, *params: object) -> Any:
        return self._db.execute(sql, params).fetchone()

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[None]:
        self._q("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield
        except BaseException:
            self._q("ROLLBACK")
            raise
        self._q("COMMIT")

    # ---- link state and the commit protocol

    def _link(self, peer: str) -> tuple[int, int, int]:
        row = self._one("SELECT next_round, last_committed, last_stored FROM links WHERE peer = ?", peer)
        return row if row is not None else (1, 0, 0)

    def _set_link(self, peer: str, link: tuple[int, int, int]) -> None:
        self._q("INSERT OR REPLACE INTO links VALUES (?, ?, ?, ?)", (peer, *link))

    def _pending(self, peer: str) -> int:
        row = self._one("SELECT round_id FROM rounds WHERE peer = ? AND committed = 0", peer)
        return 0 if row is None else row[0]

    def _state(self, peer: str) -> LinkState:
        next_round, last_committed, _ = self._link(peer)
        auth = self._one("SELECT position FROM auth WHERE peer = ?", peer)
        return LinkState(
            next_round=next_round,
            last_committed=last_committed,
            pending_round=self._pending(peer),
            auth_position=0 if auth is None else auth[0],
        )

    def link_state(self, peer: str) -> LinkState:
        with self._tx(write=False):
            return self._state(peer)

    def note_round_started(self, peer: str, round_id: int) -> None:
        check_positive(round_id, "round_id")
        with self._tx():
            next_round, last_committed, last_stored = self._link(peer)
            self._set_link(peer, (max(next_round, round_id + 1), last_committed, last_stored))

    def store_pending(self, peer: str, round_id: int, *, owner: str, key: bytes, auth_refill: bytes) -> None:
        """Phase one of the commit protocol: the round's key and refill, durable but not yet usable."""
        check_positive(round_id, "round_id")
        if not key:
            raise StoreError("a round's key cannot be empty", field="key")
        if not auth_refill:
            raise StoreError("a round's authentication refill cannot be empty", field="auth_refill")
        with self._tx():
            if self._one("SELECT 1 FROM auth WHERE peer = ?", peer) is None:
                raise StoreError(f"no authentication key for peer {peer!r}: init_auth first", field="peer")
            pending = self._pending(peer)
            if pending:
                raise StoreError(f"round {pending} is still pending", field="round_id")
            next_round, last_committed, last_stored = self._link(peer)
            if round_id <= last_stored:
                raise StoreError(f"round {round_id} is not newer than round {last_stored}", field="round_id")
            self._q(
                "INSERT INTO rounds VALUES (?, ?, ?, 0, 0, ?, ?)",
                (peer, round_id, owner, bytes(key), bytes(auth_refill)),
            )
            self._set_link(peer, (max(next_round, round_id + 1), last_committed, round_id))

    def _outcome(self, peer: str, round_id: int) -> bool | None:
        row = self._one(
            "SELECT committed FROM round_outcomes WHERE peer = ? AND round_id = ?", peer, round_id
        )
        return None if row is None else bool(row[0])

    def _commit(self, peer: str, round_id: int) -> None:
        outcome = self._outcome(peer, round_id)
        if outcome is True:
            return
        if outcome is False:
            raise StoreError(f"round {round_id} was discarded; it cannot be committed", field="round_id")
        row = self._one(
            "SELECT rowid, auth_refill FROM rounds WHERE peer = ? AND round_id = ? AND committed = 0",
            peer,
            round_id,
        )
        if row is None:
            raise StoreError(f"round {round_id} is not pending", field="round_id")
        rowid, refill = row
        self._q("UPDATE rounds SET committed = 1, auth_refill = NULL WHERE rowid = ?", (rowid,))
        material = self._auth_row(peer)[1]
        self._q("UPDATE auth SET material = ? WHERE peer = ?", (material + refill, peer))
        self._q("INSERT INTO round_outcomes VALUES (?, ?, 1)", (peer, round_id))
        next_round, last_committed, last_stored = self._link(peer)
        self._set_link(peer, (next_round, max(last_committed, round_id), last_stored))

    def _discard(self, peer: str, round_id: int) -> None:
        if self._outcome(peer, round_id) is True:
            raise StoreError(f"round {round_id} is committed; it cannot be discarded", field="round_id")
        gone = self._q(
            "DELETE FROM rounds WHERE peer = ? AND round_id = ? AND committed = 0", (peer, round_id)
        ).rowcount
        if gone:
            self._q("INSERT INTO round_outcomes VALUES (?, ?, 0)", (peer, round_id))

    def commit(self, peer: str, round_id: int) -> None:
        """Phase two: the round's key joins the pool and its refill the authentication key."""
        with self._tx():
            self._commit(peer, round_id)

    def discard_pending(self, peer: str, round_id: int) -> None:
        with self._tx():
            self._discard(peer, round_id)
        self.checkpoint()

    def reconcile(self, peer: str, remote: LinkState) -> ReconcileResult:
        """Settle my pending round against the peer's state: committed if the peer has it pending or has
        committed it (or later), else discarded. Both ends then hold the same committed round set."""
        committed: tuple[int, ...] = ()
        discarded: tuple[int, ...] = ()
        with self._tx():
            mine = self._state(peer)
            pending = mine.pending_round
            if pending and (remote.last_committed >= pending or remote.pending_round == pending):
                self._commit(peer, pending)
                committed = (pending,)
            elif pending:
                self._discard(peer, pending)
                discarded = (pending,)
            next_round, last_committed, last_stored = self._link(peer)
            next_round = max(next_round, remote.next_round)
            self._set_link(peer, (next_round, last_committed, last_stored))
        self.checkpoint()
        return ReconcileResult(committed=committed, discarded=discarded, next_round=next_round)

    # ---- the pool

    def pool_identities(self, peer: str) -> list[tuple[int, str, int, int]]:
        """(round id, owner, first unconsumed byte, bytes left) of every committed round: the identities
        both ends of a link must agree on. Key material stays out of it."""
        rows = self._q(
            "SELECT round_id, owner, start, length(material) FROM rounds"
            " WHERE peer = ? AND committed = 1 ORDER BY round_id",
            (peer,),
        )
        return [(int(r), str(o), int(st), int(n)) for r, o, st, n in rows]

    def pool_bits(self, peer: str, *, owner: str | None = None) -> int:
        row = self._one(
            "SELECT COALESCE(SUM(length(material)), 0) FROM rounds"
            " WHERE peer = ? AND committed = 1 AND (? IS NULL OR owner = ?)",
            peer,
            owner,
            owner,
        )
        return 8 * int(row[0])

    def peers(self) -> list[str]:
        rows = self._q("SELECT peer FROM links UNION SELECT peer FROM auth ORDER BY peer")
        return [row[0] for row in rows]

    # ---- the authentication key store

    def init_auth(self, peer: str, preshared: bytes) -> None:
        if not preshared:
            raise StoreError("the pre-shared key cannot be empty", field="preshared_key")
        fingerprint = hashlib.sha256(preshared).digest()
        with self._tx():
            row = self._one("SELECT psk_sha256 FROM auth WHERE peer = ?", peer)
            if row is None:
                self._q("INSERT INTO auth VALUES (?, 0, ?, ?)", (peer, bytes(preshared), fingerprint))
            elif not hmac.compare_digest(row[0], fingerprint):
                raise StoreError(
                    f"preshared_key for peer {peer!r} differs from the one this pool was started with",
                    field="preshared_key",
                )

    def _auth_row(self, peer: str) -> tuple[int, bytes]:
        row: tuple[int, bytes] | None = self._one("SELECT position, material FROM auth WHERE peer = ?", peer)
        if row is None:
            raise StoreError(f"no authentication key for peer {peer!r}", field="peer")
        return row

    def auth_store(self, peer: str) -> AuthKeyStore:
        with self._tx(write=False):
            position, material = self._auth_row(peer)
        return AuthKeyStore(material, consumed=position)

    def advance_auth(self, peer: str, position: int) -> None:
        """Write-ahead: record that every authentication key byte before `position` is used."""
        check_positive(position, "position", minimum=0)
        with self._tx():
            stored, material = self._auth_row(peer)
            if position < stored:
                raise StoreError(f"auth position {position} is behind the stored {stored}", field="position")
            if position == stored:
                return
            if position - stored > len(material):
                raise StoreError(
                    f"auth position {position} is beyond the key held (up to {stored + len(material)})",
                    field="position",
                )
            self._q(
                "UPDATE auth SET position = ?, material = ? WHERE peer = ?",
                (position, material[position - stored :], peer),
            )
        # No checkpoint here: this write sits on every round's critical path, and the bytes it drops are
        # this round's pads, worthless once its tags are checked; SQLite's automatic checkpoints fold
        # the old page away.

    def auth_reserve_bits(self, peer: str) -> int:
        with self._tx(write=False):
            return 8 * len(self._auth_row(peer)[1])

    # ---- ETSI delivery, master side

    def take_keys(
        self, peer: str, *, owner: str, number: int, size_bits: int, master_sae: str, slave_sae: str
    ) -> list[DeliveredKey]:
        """Carve `number` keys FIFO from `owner`'s committed rounds and record a notice for each, all in
        one transaction. InsufficientKey (nothing consumed) when the pool is short."""
        check_positive(number, "number")
        check_positive(size_bits, "size")
        if size_bits % 8:
            raise StoreError(f"key size {size_bits} bits is not whole bytes", field="size")
        keys: list[DeliveredKey] = []
        with self._tx():
            carver = self._carver(peer, owner, number * size_bits // 8)
            for _ in range(number):
                material, notice = self._carve_noticed(carver, peer, size_bits // 8, master_sae, slave_sae)
                keys.append(DeliveredKey(notice.key_id, material))
            carver.write_back(self._db)
        self._checkpoint_due = True
        return keys

    def _carver(self, peer: str, owner: str, needed: int) -> _Carver:
        """A carver of `needed` bytes of `owner`'s rounds; InsufficientKey when the pool holds fewer.
        Inside a transaction."""
        available = self.pool_bits(peer, owner=owner)
        if 8 * needed > available:
            raise InsufficientKey(requested_bits=8 * needed, available_bits=available)
        return _Carver(self._db, peer, owner, needed)

    def _carve_noticed(
        self, carver: _Carver, peer: str, size_bytes: int, master_sae: str, slave_sae: str
    ) -> tuple[bytes, KeyNotice]:
        """The next `size_bytes` of `carver` and the notice, recorded in the outbox, that tells the peer
        which pool bytes they were. Inside a transaction."""
        material, segments = carver.take(size_bytes)
        notice = KeyNotice(
            key_id=str(uuid.uuid4()), master_sae=master_sae, slave_sae=slave_sae, segments=tuple(segments)
        )
        self._q(
            "INSERT INTO outbox (peer, key_id, master_sae, slave_sae, segments) VALUES (?, ?, ?, ?, ?)",
            (peer, notice.key_id, master_sae, slave_sae, _segments_json(notice.segments)),
        )
        return material, notice

    def outbox(self, peer: str) -> list[KeyNotice]:
        rows = self._q(
            "SELECT key_id, master_sae, slave_sae, segments FROM outbox WHERE peer = ? ORDER BY seq", (peer,)
        )
        return [
            KeyNotice(key_id=k, master_sae=m, slave_sae=s, segments=_segments_from_json(j))
            for k, m, s, j in rows
        ]

    def ack_notice(self, peer: str, key_id: str) -> None:
        with self._tx():
            self._q("DELETE FROM outbox WHERE peer = ? AND key_id = ?", (peer, key_id))

    # ---- keys of data at rest

    def take_pad(
        self, peer: str, *, owner: str, transfer_id: str, size_bytes: int, master_sae: str
    ) -> tuple[bytes, KeyNotice | None]:
        """Carve `size_bytes` FIFO from `owner`'s committed rounds as transfer `transfer_id`'s pad at rest,
        keep it in `at_rest` (form "qotpe") and record the notice (slave DISCARD_SAE) that makes the peer
        drop its copy, all in one transaction; returns the pad and that notice. A pad already held for the
        transfer (cut before a crash, the message sent again) is returned with no notice and nothing
        carved. InsufficientKey (nothing consumed) when the pool is short."""
        check_positive(size_bytes, "size")
        with self._tx():
            held = self._one("SELECT form, material FROM at_rest WHERE transfer_id = ?", transfer_id)
            if held is not None:
                if held[0] != FORM_PAD or len(held[1]) != size_bytes:
                    raise StoreError(f"transfer {transfer_id} holds another at-rest key", field="transfer_id")
                return bytes(held[1]), None
            carver = self._carver(peer, owner, size_bytes)
            material, notice = self._carve_noticed(carver, peer, size_bytes, master_sae, DISCARD_SAE)
            self._q(
                "INSERT INTO at_rest VALUES (?, ?, ?, ?, ?)",
                (transfer_id, peer, FORM_PAD, material, self._clock()),
            )
            carver.write_back(self._db)
        self._checkpoint_due = True
        return material, notice

    def keep_at_rest_key(self, peer: str, *, transfer_id: str, form: str, key: bytes) -> bytes:
        """Keep a key that is not cut from the pool (the AES-256-GCM key of a message stored when the pool
        was short) as transfer `transfer_id`'s at-rest key; returns the key held (one already kept for the
        transfer wins, so a message stored again opens with the key its file was written under)."""
        if not key:
            raise StoreError("an at-rest key cannot be empty", field="key")
        with self._tx():
            held = self._one("SELECT material FROM at_rest WHERE transfer_id = ?", transfer_id)
            if held is not None:
                return bytes(held[0])
            self._q(
                "INSERT INTO at_rest VALUES (?, ?, ?, ?, ?)", (transfer_id, peer, form, key, self._clock())
            )
        return key

    def at_rest_key(self, transfer_id: str) -> tuple[str, bytes] | None:
        """(form, key) of a transfer's at-rest file, None if none is held."""
        row = self._one("SELECT form, material FROM at_rest WHERE transfer_id = ?", transfer_id)
        return None if row is None else (str(row[0]), bytes(row[1]))

    def at_rest_transfers(self) -> list[str]:
        return [r[0] for r in self._q("SELECT transfer_id FROM at_rest ORDER BY stored_at")]

    def forget_at_rest_key(self, transfer_id: str) -> bool:
        """Erase a transfer's at-rest key (secure_delete, and the WAL truncated at once): its file, wherever
        copies of it are, can no longer be opened. True if a key was held."""
        with self._tx():
            gone = self._q("DELETE FROM at_rest WHERE transfer_id = ?", (transfer_id,)).rowcount
        if gone:
            self.checkpoint()
        return bool(gone)

    # ---- ETSI delivery, slave side

    def accept_notice(self, peer: str, notice: KeyNotice) -> None:
        """Carve the notice's bytes from the head of the peer-owned rounds and hold them for the slave SAE.
        Idempotent on key_id; StoreError (nothing carved) if they are not the head: the pools diverged."""
        with self._tx():
            if self._settled_or_held(notice.key_id):
                return
            carver = _Carver(self._db, peer, peer, sum(s.length for s in notice.segments))
            parts: list[bytes] = []
            for segment in notice.segments:
                head = carver.head()
                if head is None or head[:2] != (segment.round_id, segment.start) or segment.length > head[2]:
                    raise StoreError(
                        f"key {notice.key_id}: segment {segment} is not the head of the pool (head {head})",
                        field="segments",
                    )
                parts.append(carver.take(segment.length)[0])
            if notice.slave_sae == DISCARD_SAE:
                # The peer keeps these bytes for itself (a pad at rest): our copy is a second copy of its
                # key that nothing here may use, so it is erased now. Carving it still keeps both pools
                # identical, and the tombstone keeps a replayed notice a no-op.
                self._q("INSERT INTO fetched VALUES (?, ?)", (notice.key_id, peer))
            else:
                self._q(
                    "INSERT INTO incoming (key_id, peer, master_sae, slave_sae, material, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        notice.key_id,
                        peer,
                        notice.master_sae,
                        notice.slave_sae,
                        b"".join(parts),
                        self._clock(),
                    ),
                )
            carver.write_back(self._db)
        self._checkpoint_due = True

    def fetch_keys(
        self, peer: str | None, key_ids: list[str], *, master_sae: str, slave_sae: str
    ) -> list[DeliveredKey]:
        """Deliver and delete the keys, all or none: KeyNotFound or NotAuthorised consume nothing. Fetched
        IDs are remembered, so a replayed notice stays a no-op and a second fetch finds nothing."""
        if len(set(key_ids)) != len(key_ids):
            raise StoreError("a key ID is requested twice", field="key_IDs")
        with self._tx():
            rows = {}
            for key_id in key_ids:
                row = self._one(
                    "SELECT rowid, master_sae, slave_sae, material, peer FROM incoming"
                    " WHERE key_id = ? AND (? IS NULL OR peer = ?)",
                    key_id,
                    peer,
                    peer,
                )
                if row is not None:
                    rows[key_id] = row
            missing = tuple(k for k in key_ids if k not in rows)
            if missing:
                expired = tuple(k for k in missing if self._expired_for(k, peer))
                raise KeyNotFound(missing, expired=expired)
            refused = tuple(k for k, r in rows.items() if (r[1], r[2]) != (master_sae, slave_sae))
            if refused:
                raise NotAuthorised(refused)
            self._db.executemany("DELETE FROM incoming WHERE rowid = ?", [(r[0],) for r in rows.values()])
            self._db.executemany("INSERT INTO fetched VALUES (?, ?)", [(k, rows[k][4]) for k in key_ids])
        self._checkpoint_due = True
        return [DeliveredKey(k, rows[k][3]) for k in key_ids]

    def has_incoming(self, key_id: str) -> bool:
        """True while the key is held here for its slave (accepted, not yet fetched)."""
        return self._one("SELECT 1 FROM incoming WHERE key_id = ?", key_id) is not None

    def has_fetched(self, key_id: str) -> bool:
        """True once the key was delivered to its slave (waiting for its notice is pointless)."""
        return self._one("SELECT 1 FROM fetched WHERE key_id = ?", key_id) is not None

    def has_expired(self, key_id: str) -> bool:
        """True once the key was deleted here unfetched, its lifetime over (waiting is pointless too)."""
        return self._expired_for(key_id, None)

    def _expired_for(self, key_id: str, peer: str | None) -> bool:
        row = self._one(
            "SELECT 1 FROM expired WHERE key_id = ? AND (? IS NULL OR peer = ?)", key_id, peer, peer
        )
        return row is not None

    def _settled_or_held(self, key_id: str) -> bool:
        return self.has_incoming(key_id) or self.has_fetched(key_id) or self.has_expired(key_id)

    # ---- key lifetime

    def expire_unfetched(self, max_age_s: float, *, now: float, limit: int = 1000) -> list[ExpiredKeys]:
        """Delete the keys held for a slave SAE that were accepted `max_age_s` or more before `now` (Unix
        time) and not fetched, the oldest first and at most `limit` of them, leaving a tombstone per key
        ID; return what went, one entry per peer and SAE pair. A key without an acceptance time (accepted
        by a schema-1 qlinkd) gets `now` as its own, so its lifetime runs from the first sweep after the
        upgrade. The deletion is erased from the WAL at once (sweeps are rare, and these are keys nobody
        will use). `limit` bounds the time one call holds the caller (bench/bench_expiry.py)."""
        if not max_age_s > 0:
            raise StoreError(f"the key lifetime must be positive, got {max_age_s!r}", field="max_age_s")
        check_positive(limit, "limit")
        with self._tx():
            self._q("UPDATE incoming SET received_at = ? WHERE received_at IS NULL", (now,))
            rows = self._q(
                "SELECT rowid, key_id, peer, master_sae, slave_sae, length(material) FROM incoming"
                " WHERE received_at <= ? ORDER BY received_at, rowid LIMIT ?",
                (now - max_age_s, limit),
            ).fetchall()
            self._db.executemany("DELETE FROM incoming WHERE rowid = ?", [(r[0],) for r in rows])
            self._db.executemany("INSERT INTO expired VALUES (?, ?, ?)", [(r[1], r[2], now) for r in rows])
        if rows:
            self.checkpoint()
        groups: dict[tuple[str, str, str], list[tuple[str, int]]] = {}
        for _, key_id, peer, master_sae, slave_sae, size in rows:
            groups.setdefault((peer, master_sae, slave_sae), []).append((key_id, 8 * size))
        return [
            ExpiredKeys(
                peer=peer,
                master_sae=master,
                slave_sae=slave,
                key_ids=tuple(k for k, _ in keys),
                bits=sum(b for _, b in keys),
            )
            for (peer, master, slave), keys in sorted(groups.items())
        ]

    def incoming_bits(self, peer: str | None = None) -> int:
        """Key bits held here for slave SAEs (accepted, neither fetched nor expired)."""
        row = self._one(
            "SELECT COALESCE(SUM(length(material)), 0) FROM incoming WHERE ? IS NULL OR peer = ?", peer, peer
        )
        return 8 * int(row[0])
