"""One link's latched alarm: raised by an alarming round, kept through good rounds and daemon restarts,
cleared only by an operator's acknowledgement. Persisted as a small JSON file in the state directory,
replaced atomically (written beside it, fsynced, renamed, directory fsynced), so a crash leaves the old
latch or the new one, never a torn file."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from qlinkmed.qlinkd.errors import StatusFormatError
from qlinkmed.qlinkd.link.status import LatchedAlarm

log = logging.getLogger("qlink.link")

UNREADABLE = "latch_file_unreadable"
"""The reason a latch carries when its file cannot be read: an unreadable latch may hide a raised alarm,
so it counts as raised until acknowledged."""


def latch_path(state_dir: Path, peer: str) -> Path:
    # Facility ids are [a-z0-9-] (qcore.constants.FACILITY_ID_PATTERN): safe in a file name.
    return state_dir / f"alarm-{peer}.json"


class AlarmLatch:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.latched = self._load()

    def _load(self) -> LatchedAlarm | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._unreadable(f"cannot read it: {exc.strerror or exc}")
        try:
            return LatchedAlarm.from_json(json.loads(text))
        except (ValueError, StatusFormatError) as exc:
            return self._unreadable(f"not a latch: {exc}")

    def _unreadable(self, why: str) -> LatchedAlarm:
        log.error("ALARM latch %s %s; the alarm counts as raised until acknowledged", self.path, why)
        return LatchedAlarm(
            reason=UNREADABLE, raised_at="", round=0, count=1, last_reason=UNREADABLE, last_raised_at=""
        )

    def raise_alarm(self, *, reason: str, round_id: int, at: str) -> bool:
        """An alarming round ended at `at` (RFC 3339): latch it. True when this raised the alarm, False
        when it was already raised (its count and last reason move on)."""
        held = self.latched
        if held is None:
            self.latched = LatchedAlarm(
                reason=reason, raised_at=at, round=round_id, count=1, last_reason=reason, last_raised_at=at
            )
        else:
            self.latched = LatchedAlarm(
                reason=held.reason,
                raised_at=held.raised_at,
                round=held.round,
                count=held.count + 1,
                last_reason=reason,
                last_raised_at=at,
            )
        try:
            self._write(json.dumps(self.latched.to_json()).encode())
        except OSError as exc:
            # Raised in memory all the same: the operator sees it now; only a restart could lose it.
            log.error(
                "ALARM latch %s could not be written (%s): it will not survive a restart", self.path, exc
            )
        return held is None

    def acknowledge(self) -> LatchedAlarm | None:
        """Clear the latch; returns what it held (None if nothing was raised)."""
        held = self.latched
        if held is None:
            return None
        self.path.unlink(missing_ok=True)
        _fsync_dir(self.path.parent)
        self.latched = None
        return held

    def _write(self, data: bytes) -> None:
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        _fsync_dir(self.path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        # Some file systems refuse fsync on a directory; the rename is then as durable as they make it.
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
