"""Append-only audit log (HIPAA 164.312(b) audit controls) with a SHA-256 hash chain.

One JSON object per line: {"ts", "seq", "event", "facility", ...fields, "prev"}, where `seq` counts the
records from 1 and `prev` is the SHA-256 (hex) of the previous line's bytes without its newline (64 zeros
for the first line). Editing, inserting or deleting a line breaks the chain at the next line. Cutting
lines off the end, or rewriting a stretch and re-hashing every line after it, leaves a valid chain: only
a copy of the head kept elsewhere shows it. The peer facilities keep that copy: ``link/anchor.py``
exchanges heads over the authenticated link, each side records the other's head here as a
``peer_audit_head`` record, and ``verify`` checks a log against those anchors (`qlink audit verify`).

Every record is flushed and fsynced before `record` returns: an event the daemon acted on is on disk.
Key material never enters the log: fields named like key/material/secret/psk are refused and bytes
values cannot be serialised. Records carry identifiers (SAE IDs, key IDs, peer ids), not patient data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from qlinkmed.qcore.errors import UsageError
from qlinkmed.qlinkd.errors import AuditAnchorError, AuditError

AUDIT_FILE = "audit.jsonl"
"""The audit log's name in the facility's state_dir."""
PEER_HEAD = "peer_audit_head"
"""The event recording a peer's head, fields `peer`, `head_seq`, `head_digest` (``link/anchor.py``)."""
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


def _seq_of(line: bytes) -> int | None:
    try:
        seq = json.loads(line).get("seq")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


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


def _lines_backward(fd: int, end: int) -> Iterator[bytes]:
    """The complete lines of the file's first `end` bytes, last first, without their newlines."""
    pos, rest = end, b""
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        data = os.pread(fd, pos - start, start) + rest
        pos = start
        parts = data.split(b"\n")
        rest = parts[0]  # the start of a line that begins before this chunk (or the first line)
        for line in reversed(parts[1:]):
            if line:
                yield line
    if rest:
        yield rest


class AuditLog:
    """An open audit log. Use `AuditLog.open(path, facility=...)`; `record` blocks for an fsync, so an
    asyncio caller may run it in a thread (records are serialised by the caller)."""

    def __init__(self, fd: int, path: Path, facility: str, head: AuditHead, clock: Callable[[], dt.datetime]):
        self._fd: int | None = fd
        self._path = path
        self._facility = facility
        self._head = head
        self._clock = clock
        # The daemon records from its event loop and from worker threads (the data plane): one line at a
        # time, and a reader never sees the head and the file disagree.
        self._lock = threading.Lock()

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
        if not event:
            raise AuditError("event must be a non-empty string")
        for name in fields:
            reason = _refuse_field(name)
            if reason:
                raise AuditError(reason)
        with self._lock:
            if self._fd is None:
                raise AuditError("the audit log is closed")
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

    def digest_at(self, seq: int) -> str | None:
        """The digest of the record numbered `seq` as the file holds it now (None when it holds none):
        what a peer's copy of an earlier head is checked against. Reads back from the end, so a recent
        head costs a few lines."""
        needle = b'"seq":%d,' % seq
        with self._lock:
            if self._fd is None:
                raise AuditError("the audit log is closed")
            for line in _lines_backward(self._fd, os.fstat(self._fd).st_size):
                # The needle cannot occur inside a string value (its quotes would be escaped); a nested
                # object's "seq" is ruled out by parsing the line.
                if needle in line and _seq_of(line) == seq:
                    return _digest(line)
        return None

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog(path={str(self._path)!r}, facility={self._facility!r}, seq={self._head.seq})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Anchor:
    """A head of this log that another facility recorded: the log must still hold that record."""

    holder: str
    """The facility that holds it."""
    head: AuditHead


def verify(
    path: Path, *, expected_head: AuditHead | None = None, anchors: Iterable[Anchor] = ()
) -> AuditHead:
    """Check the whole chain and return the log's head. Raises AuditError naming the first bad line.

    The chain alone cannot see lines cut off the end, nor a stretch rewritten with every later line
    re-hashed: with `expected_head` (a copy kept elsewhere) or `anchors` (the heads peers recorded) those
    raise too, AuditAnchorError for an anchor, naming the lowest one the log no longer matches."""
    anchors = tuple(anchors)
    seqs = {a.head.seq for a in anchors} | ({expected_head.seq} if expected_head else set())
    wanted = sorted(seq for seq in seqs if seq > 0)
    found: dict[int, str] = {}
    prev, count = GENESIS, 0
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                raise AuditError("incomplete line (no newline)", line=number)
            line = raw[:-1]
            record = _parse(line, number)
            seq = record.get("seq")
            if seq != number:
                why = "a record removed or inserted" if isinstance(seq, int) else "not a record number"
                raise AuditError(f"seq is {seq!r}, expected {number} ({why})", line=number)
            if record.get("prev") != prev:
                raise AuditError("prev does not match the previous line: edited or removed", line=number)
            for name in ("ts", "event", "facility"):
                if not isinstance(record.get(name), str):
                    raise AuditError(f"missing {name}", line=number)
            prev, count = _digest(line), number
            if wanted and number == wanted[0]:
                found[wanted.pop(0)] = prev
    if expected_head is not None and (count, prev) != (expected_head.seq, expected_head.digest):
        raise AuditError(
            f"the log ends at seq {count}, expected seq {expected_head.seq}: truncated or replaced",
            line=count + 1,
        )
    _check_anchors(count, found, anchors)
    return AuditHead(seq=count, digest=prev)


def _check_anchors(count: int, found: dict[int, str], anchors: Iterable[Anchor]) -> None:
    good = 0
    for anchor in sorted(anchors, key=lambda a: a.head.seq):
        seq, held = anchor.head.seq, anchor.head.digest
        here = found.get(seq)
        if here == held:
            good = max(good, seq)
            continue
        since = f"after seq {good}, the last anchor that matches" if good else "at or before it"
        if here is None:
            message = (
                f"the log ends at seq {count} but {anchor.holder} holds an anchor at seq {seq}: "
                f"the tail is missing (records cut off, or removed {since} and the chain rebuilt)"
            )
        else:
            message = (
                f"record {seq} is not the one {anchor.holder} anchored (its digest {here[:16]}..., "
                f"anchored {held[:16]}...): the log was rewritten {since} (a record edited, removed or "
                "inserted, and the chain rebuilt)"
            )
        raise AuditAnchorError(
            message, holder=anchor.holder, seq=seq, digest=held, found=here, ends_at=count, last_good=good
        )


def _records_with(path: Path, needle: bytes, *, backward: bool) -> Iterator[dict[str, Any]]:
    """The records of the log at `path` whose line contains `needle` (a cheap filter before parsing);
    lines that are no JSON object are skipped (``verify`` is the place to report them)."""
    with Path(path).open("rb") as handle:
        fd = handle.fileno()
        lines: Iterable[bytes] = _lines_backward(fd, os.fstat(fd).st_size) if backward else handle
        for line in lines:
            if needle not in line:
                continue
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(record, dict):
                yield record


def records_of(path: Path, event: str) -> Iterator[dict[str, Any]]:
    """Every record of `event` in the log at `path`, oldest first (none when there is no log yet)."""
    if not Path(path).exists():
        return
    needle = f'"event":"{event}"'.encode()
    for record in _records_with(path, needle, backward=False):
        if record.get("event") == event:
            yield record


def _peer_head(record: dict[str, Any]) -> AuditHead | None:
    seq, digest = record.get("head_seq"), record.get("head_digest")
    if record.get("event") != PEER_HEAD or not isinstance(seq, int) or not isinstance(digest, str):
        return None
    return AuditHead(seq=seq, digest=digest)


def latest_peer_heads(path: Path, peers: Iterable[str]) -> dict[str, AuditHead]:
    """The last head of each peer's log recorded in the log at `path` (peers with none are left out).
    Read from the end: the daemon calls this at start, and the last records are recent."""
    wanted, heads = set(peers), {}
    if not Path(path).exists():
        return {}
    for record in _records_with(path, f'"event":"{PEER_HEAD}"'.encode(), backward=True):
        peer, head = record.get("peer"), _peer_head(record)
        if head is not None and isinstance(peer, str) and peer in wanted and peer not in heads:
            heads[peer] = head
            if len(heads) == len(wanted):
                break
    return heads


def peer_anchors(path: Path, peer: str) -> list[Anchor]:
    """Every head of `peer`'s log recorded in the log at `path` (its facility the holder), oldest first:
    what `peer`'s own log is checked against (`qlink audit verify --peer-log`)."""
    out = []
    for record in _records_with(path, f'"event":"{PEER_HEAD}"'.encode(), backward=False):
        head, holder = _peer_head(record), record.get("facility")
        if head is not None and record.get("peer") == peer and isinstance(holder, str):
            out.append(Anchor(holder=holder, head=head))
    return out
