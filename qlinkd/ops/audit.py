"""Append-only audit log (HIPAA 164.312(b) audit controls) with a SHA-256 hash chain.

One JSON object per line: {"ts", "seq", "event", "facility", ...fields, "prev"}, where `prev` is the
SHA-256 (hex) of the previous line's bytes without its newline (64 zeros for the first line). Editing,
inserting or deleting a line breaks the chain at the next line; cutting lines off the end leaves a valid
shorter chain, so compare `head` with a copy kept elsewhere (a peer, a log shipper) to detect that.

Every record is flushed and fsynced before `record` returns: an event the daemon acted on is on disk.
Key material never enters the log: fields named like key/material/secret/psk are refused and bytes
values cannot be serialised. Records carry identifiers (SAE IDs, key IDs, peer ids), not patient data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from qlinkmed.qcore.errors import UsageError
from qlinkmed.qlinkd.errors import AuditError

GENESIS = "0" * 64
_RESERVED = frozenset({"ts", "seq", "event", "facility", "prev"})
# Any field whose name has one of these words is refused: its value is likely to be secret.
_FORBIDDEN_WORDS = frozenset({"material", "secret", "psk", "password", "preshared"})
_FORBIDDEN_NAMES = frozenset({"key", "keys"})
# Enough to hold the longest line we expect to read back when continuing the chain.
_TAIL_CHUNK = 64 * 1024


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(moment: dt.datetime) -> str:
    """The audit log's time format: UTC, microseconds, "Z" (as every record's ts)."""
    if moment.tzinfo is None:
        raise UsageError("audit timestamps must be timezone-aware")
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditHead:
    """The end of the chain: keep a copy elsewhere to detect truncation."""

    seq: int
    """Sequence number of the last record (0 for an empty log)."""
    digest: str
    """SHA-256 hex of the last line (GENESIS for an empty log)."""


def _refuse_field(name: str) -> str | None:
    if name in _RESERVED:
        return f"field {name!r} is reserved"
    words = set(name.lower().replace("-", "_").split("_"))
    if name.lower() in _FORBIDDEN_NAMES or words & _FORBIDDEN_WORDS:
        return f"field {name!r} looks like key material; audit records carry identifiers only"
    return None


def _parse(line: bytes, number: int | None) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditError(f"not a JSON record ({exc})", line=number) from None
    if not isinstance(record, dict):
        raise AuditError("not a JSON object", line=number)
    return record


def _read_tail(fd: int) -> bytes:
    """The last line of the file (without its newline), or b"" if the file is empty."""
    size = os.fstat(fd).st_size
    if size == 0:
        return b""
    chunk = min(size, _TAIL_CHUNK)
    while True:
        data = os.pread(fd, chunk, size - chunk)
        if not data.endswith(b"\n"):
            raise AuditError("the last line is incomplete (torn write?); run verify and repair by hand")
        start = data.rfind(b"\n", 0, len(data) - 1)
        if start >= 0 or chunk == size:
            return data[start + 1 : -1]
        chunk = min(size, chunk * 4)


class AuditLog:
    """An open audit log. Use `AuditLog.open(path, facility=...)`; `record` blocks for an fsync, so an
    asyncio caller may run it in a thread (records are serialised by the caller)."""

    def __init__(self, fd: int, path: Path, facility: str, head: AuditHead, clock: Callable[[], dt.datetime]):
        self._fd: int | None = fd
        self._path = path
        self._facility = facility
        self._head = head
        self._clock = clock

    @classmethod
    def open(cls, path: Path, *, facility: str, clock: Callable[[], dt.datetime] = _utc_now) -> Self:
        """Open (creating with mode 0600) for appending, continuing the chain from the last line."""
        path = Path(path)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # An existing file created with a looser umask is tightened: the log names SAEs and peers.
            os.fchmod(fd, 0o600)
            last = _read_tail(fd)
            if last:
                record = _parse(last, None)
                seq = record.get("seq")
                if not isinstance(seq, int) or isinstance(seq, bool):
                    raise AuditError("the last record has no integer seq")
                head = AuditHead(seq=seq, digest=_digest(last))
            else:
                head = AuditHead(seq=0, digest=GENESIS)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path, facility, head, clock)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def head(self) -> AuditHead:
        return self._head

    def record(self, event: str, **fields: Any) -> AuditHead:
        """Append one record and fsync it. Returns the new head."""
        if self._fd is None:
            raise AuditError("the audit log is closed")
        if not event:
            raise AuditError("event must be a non-empty string")
        for name in fields:
            reason = _refuse_field(name)
            if reason:
                raise AuditError(reason)
        seq = self._head.seq + 1
        entry = {
            "ts": rfc3339(self._clock()),
            "seq": seq,
            "event": event,
            "facility": self._facility,
            **fields,
            "prev": self._head.digest,
        }
        try:
            line = json.dumps(entry, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise AuditError(
                f"fields must be JSON values (str, int, float, bool, None, list, dict): {exc}"
            ) from None
        data = line + b"\n"
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        os.fsync(self._fd)
        self._head = AuditHead(seq=seq, digest=_digest(line))
        return self._head

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog(path={str(self._path)!r}, facility={self._facility!r}, seq={self._head.seq})"


def verify(path: Path, *, expected_head: AuditHead | None = None) -> int:
    """Check the whole chain; return the number of records. Raises AuditError naming the first bad line.
    With `expected_head` (a copy kept elsewhere), also detect lines cut off the end."""
    prev, count = GENESIS, 0
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                raise AuditError("incomplete line (no newline)", line=number)
            line = raw[:-1]
            record = _parse(line, number)
            if record.get("seq") != number:
                raise AuditError(f"seq is {record.get('seq')!r}, expected {number}", line=number)
            if record.get("prev") != prev:
                raise AuditError("prev does not match the previous line: edited or removed", line=number)
            for name in ("ts", "event", "facility"):
                if not isinstance(record.get(name), str):
                    raise AuditError(f"missing {name}", line=number)
            prev, count = _digest(line), number
    if expected_head is not None and (count, prev) != (expected_head.seq, expected_head.digest):
        raise AuditError(
            f"the log ends at seq {count}, expected seq {expected_head.seq}: truncated or replaced",
            line=count + 1,
        )
    return count
