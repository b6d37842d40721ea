"""The durable user store: SQLite in state_dir (``users.sqlite3``, 0600, opened as the key store is).

A user's bearer token is 32 bytes from the OS CSPRNG, handed out once (at `add` and at each `rotate`)
and kept only as its SHA-256: a 256-bit random token needs no slow hash, and a copy of the database
reveals no token. A token is looked up by its hash and the stored hash compared in constant time.
Rotating replaces the hash, so the old token stops working at once."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

from qlinkmed.qlinkd.access.policy import User, UserState
from qlinkmed.qlinkd.errors import AccessError
from qlinkmed.qlinkd.ops import entropy
from qlinkmed.qlinkd.pool.sqlite import open_private_db

USERS_FILE = "users.sqlite3"
TOKEN_BYTES = 32
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
PATIENT_ID = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
DEPARTMENT = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
"""A department's name as the facility's [departments] configuration spells it."""
"""A patient id (HL7 PID-3, DICOM PatientID (0010,0020): at most 64 characters), printable."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    roles TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    rotated_at REAL NOT NULL,
    token_sha256 BLOB NOT NULL UNIQUE,
    break_glass_until REAL,
    break_glass_reason TEXT
);
CREATE TABLE IF NOT EXISTS patients (
    user_id TEXT NOT NULL REFERENCES users(id),
    patient TEXT NOT NULL,
    PRIMARY KEY (user_id, patient)
);
CREATE TABLE IF NOT EXISTS user_departments (
    user_id TEXT NOT NULL REFERENCES users(id),
    department TEXT NOT NULL,
    PRIMARY KEY (user_id, department)
);
"""
_COLUMNS = "id, name, roles, state, created_at, rotated_at, break_glass_until, break_glass_reason"


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_token() -> str:
    return entropy.token_urlsafe(TOKEN_BYTES)


class UserStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @classmethod
    def open(cls, state_dir: Path) -> UserStore:
        db = open_private_db(Path(state_dir) / USERS_FILE)
        try:
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return cls(db)

    def close(self) -> None:
        self._db.close()

    def _user(self, row: tuple[Any, ...]) -> User:
        uid, name, roles, state, created, rotated, until, reason = row
        patients = frozenset(
            p for (p,) in self._db.execute("SELECT patient FROM patients WHERE user_id = ?", (uid,))
        )
        departments = frozenset(
            d
            for (d,) in self._db.execute("SELECT department FROM user_departments WHERE user_id = ?", (uid,))
        )
        return User(
            id=str(uid),
            name=str(name),
            roles=tuple(json.loads(str(roles))),
            state=UserState(state),
            created_at=float(created),
            rotated_at=float(rotated),
            patients=patients,
            departments=departments,
            break_glass_until=None if until is None else float(until),
            break_glass_reason=None if reason is None else str(reason),
        )

    def get(self, user_id: str) -> User:
        # By id, else by name (the CLI takes either); an id wins over a name spelt like one.
        found = self._db.execute(f"SELECT {_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone()
        if found is None:
            found = self._db.execute(f"SELECT {_COLUMNS} FROM users WHERE name = ?", (user_id,)).fetchone()
        if found is None:
            raise AccessError(f"no user {user_id[:80]!r} (qlink user list)", field="user")
        return self._user(found)

    def users(self) -> list[User]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM users ORDER BY created_at, id").fetchall()
        return [self._user(row) for row in rows]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    def by_token(self, token: str) -> User | None:
        """The user holding `token` (whatever the user's state), or None."""
        digest = token_digest(token)
        row = self._db.execute(
            f"SELECT {_COLUMNS}, token_sha256 FROM users WHERE token_sha256 = ?", (digest,)
        ).fetchone()
        if row is None or not hmac.compare_digest(bytes(row[-1]), digest):
            return None
        return self._user(row[:-1])

    def add(self, name: str, roles: tuple[str, ...], now: float) -> tuple[User, str]:
        """A new active user and its token (the only time the token is seen)."""
        if not USER_NAME.fullmatch(name):
            raise AccessError(f"a user name must match {USER_NAME.pattern}", field="name")
        if not roles:
            raise AccessError("a user needs at least one role (--role NAME)", field="roles")
        uid, token = f"u-{entropy.random_bytes(4).hex()}", new_token()
        try:
            self._db.execute(
                "INSERT INTO users (id, name, roles, state, created_at, rotated_at, token_sha256)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (uid, name, json.dumps(list(roles)), UserState.ACTIVE.value, now, now, token_digest(token)),
            )
        except sqlite3.IntegrityError:
            raise AccessError(f"a user named {name!r} exists (qlink user list)", field="name") from None
        return self.get(uid), token

    def disable(self, user_id: str) -> User:
        user = self.get(user_id)
        self._db.execute(
            "UPDATE users SET state = ?, break_glass_until = NULL WHERE id = ?",
            (UserState.DISABLED.value, user.id),
        )
        return self.get(user.id)

    def rotate(self, user_id: str, now: float) -> tuple[User, str]:
        """A new token for the user; the old one stops working with this commit."""
        user, token = self.get(user_id), new_token()
        self._db.execute(
            "UPDATE users SET token_sha256 = ?, rotated_at = ? WHERE id = ?",
            (token_digest(token), now, user.id),
        )
        return self.get(user.id), token

    def assign(self, user_id: str, patient: str, *, assigned: bool = True) -> User:
        if not PATIENT_ID.fullmatch(patient):
            raise AccessError("a patient id is 1..64 printable characters", field="patient")
        user = self.get(user_id)
        if assigned:
            self._db.execute("INSERT OR IGNORE INTO patients VALUES (?, ?)", (user.id, patient))
        else:
            self._db.execute("DELETE FROM patients WHERE user_id = ? AND patient = ?", (user.id, patient))
        return self.get(user.id)

    def assign_department(self, user_id: str, department: str, *, assigned: bool = True) -> User:
        if not DEPARTMENT.fullmatch(department):
            raise AccessError("a department is 1..64 printable characters", field="department")
        user = self.get(user_id)
        if assigned:
            self._db.execute("INSERT OR IGNORE INTO user_departments VALUES (?, ?)", (user.id, department))
        else:
            self._db.execute(
                "DELETE FROM user_departments WHERE user_id = ? AND department = ?", (user.id, department)
            )
        return self.get(user.id)

    def grant_break_glass(self, user_id: str, until: float, reason: str) -> User:
        user = self.get(user_id)
        self._db.execute(
            "UPDATE users SET break_glass_until = ?, break_glass_reason = ? WHERE id = ?",
            (until, reason, user.id),
        )
        return self.get(user.id)

    def break_glass_active(self, now: float) -> list[User]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM users WHERE break_glass_until > ? AND state = ? ORDER BY id",
            (now, UserState.ACTIVE.value),
        ).fetchall()
        return [self._user(row) for row in rows]
