"""Inbox retention: the hospital's policy (`[inbox]`, `ops.inbox_config`) applied to delivered transfers.

`decide` is the policy, a pure function of the time, the transfers held and what the forwarding ledger
says of them. `Retention` is the shell: a periodic sweep in the daemon's task group that marks each
chosen transfer purged in the records, audits it, then deletes its at-rest files.

Crash safety: the record is marked first (in one transaction that also drops the transfer's at-rest key
and an EHR message's sealed body, as an older qlinkd kept them), then an EHR message's key in the key
store is erased (crypto-shredding: a copy of its file that survives on shared storage opens no more),
and the files go last. A crash in between leaves files no record claims and keys no record needs;
`recover`, run at start-up before the data plane receives, deletes both (and audits the purge,
`resumed`). A record never claims files or keys that are gone.

The record itself stays, state "delivered" and marked purged (when, why): the same transfer sent again
is answered "already delivered" from it and never stored again, and fetching it says when and why it was
purged (410).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from qlinkmed.qlinkd.dataplane.records import Incoming, RetentionRow, TransferRecords
from qlinkmed.qlinkd.dataplane.rest_keys import RestKeys
from qlinkmed.qlinkd.ops.audit import AuditLog
from qlinkmed.qlinkd.ops.inbox_config import InboxConfig

log = logging.getLogger("qlink.retention")

BATCH = 200
"""Transfers purged per sweep step; the loop serves other work between steps."""


class PurgeReason(enum.StrEnum):
    FETCHED = "fetched"
    """purge_after_fetch_s passed since it was fetched."""
    FORWARDED = "forwarded"
    """purge_after_forward_s passed since the last gateway destination owed it accepted it."""
    MAX_AGE = "max_age"
    """max_age_s passed since it was delivered."""


@dataclass(frozen=True, slots=True)
class Forwarding:
    """What the forwarding ledger says of one transfer."""

    delivered: int
    """Destinations that accepted it."""
    owed: int
    """Destinations it is still pending at, or parked at (refused; an operator may retry)."""
    last_delivered_at: float | None
    """When the last destination accepted it."""


@dataclass(frozen=True, slots=True)
class Purge:
    transfer_id: str
    reason: PurgeReason


def decide(
    policy: InboxConfig, now: float, held: Iterable[RetentionRow], forwarding: Mapping[str, Forwarding]
) -> list[Purge]:
    """The transfers to purge now, and why (the first rule that applies: fetched, forwarded, max_age).

    A transfer still owed to a gateway destination (pending or parked) is purged only by max_age: neither
    a fetch nor other destinations' success may take what a forward still needs."""
    chosen = []
    for row in held:
        fwd = forwarding.get(row.transfer_id)
        owed = fwd is not None and fwd.owed > 0
        reason = None
        after_fetch = policy.purge_after_fetch_s
        after_forward = policy.purge_after_forward_s
        fetched = row.fetched_at
        if not owed and after_fetch is not None and fetched is not None and now >= fetched + after_fetch:
            reason = PurgeReason.FETCHED
        if reason is None and not owed and after_forward is not None and fwd is not None:
            last = fwd.last_delivered_at
            if fwd.delivered > 0 and last is not None and now >= last + after_forward:
                reason = PurgeReason.FORWARDED
        if reason is None and policy.max_age_s is not None and now >= row.delivered_at + policy.max_age_s:
            reason = PurgeReason.MAX_AGE
        if reason is not None:
            chosen.append(Purge(row.transfer_id, reason))
    return chosen


def blob_bytes(inbox_root: Path, transfer_id: str) -> int:
    """The bytes of a delivered transfer's at-rest files (``inbox/<transfer_id>/<index>``); 0 when there
    are none (an EHR message, or deleted already). Blocking."""
    size = 0
    try:
        with os.scandir(inbox_root / transfer_id) as entries:
            for entry in entries:
                size += entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0
    return size


def delete_blobs(inbox_root: Path, transfer_id: str) -> None:
    """Delete a delivered transfer's at-rest files, if any are left. Blocking: run it off the event
    loop."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(inbox_root / transfer_id)


def _transfer_folders(inbox_root: Path) -> list[str]:
    # The inbox holds one folder per delivered transfer, and dot-names of its own (.spool, .stage-*).
    try:
        return [e.name for e in os.scandir(inbox_root) if e.is_dir() and not e.name.startswith(".")]
    except FileNotFoundError:
        return []


class Retention:
    """The retention sweep of one facility. Records, ledger and audit are used from the event loop only;
    file deletion runs in a thread."""

    def __init__(
        self,
        policy: InboxConfig,
        *,
        records: TransferRecords,
        inbox_root: Path,
        audit: AuditLog,
        outcomes: Callable[[], Mapping[str, tuple[int, int, float | None]]] | None = None,
        on_purged: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.time,
        rest_keys: RestKeys | None = None,
    ) -> None:
        """`outcomes`: the forwarding ledger's per-transfer outcomes (`ForwardLedger.outcomes`), None
        without gateways. `on_purged(reason, bytes)`: counts each purge (metrics). `rest_keys`: the key
        store's keys of EHR messages at rest, erased with their messages."""
        self._rest_keys = rest_keys
        self._policy = policy
        self._records = records
        self._root = inbox_root
        self._audit = audit
        self._outcomes = outcomes
        self._on_purged = on_purged
        self._clock = clock

    def recover(self) -> int:
        """Finish the deletions a crash interrupted: the files of every transfer marked purged. Blocking
        (a few stats per held transfer): call it at start-up. Returns how many were finished."""
        finished: set[str] = set()
        for transfer_id in _transfer_folders(self._root):
            purged = self._records.purged(transfer_id)
            if purged is None:
                continue
            if self._rest_keys is not None:
                self._rest_keys.forget(transfer_id)
            size = blob_bytes(self._root, transfer_id)
            delete_blobs(self._root, transfer_id)
            self._audit.record(
                "inbox_purged", transfer=transfer_id, reason=purged[1], bytes=size, resumed=True
            )
            finished.add(transfer_id)
        finished |= self._recover_keys()
        if finished:
            log.info("inbox retention: finished %d purge(s) a stop interrupted", len(finished))
        return len(finished)

    def _recover_keys(self) -> set[str]:
        """Erase the at-rest keys no delivered, unpurged record needs: those of purged transfers whose
        files were already gone when the stop came, and pads cut for a message a crash kept from being
        recorded (sent again, it gets a fresh one)."""
        if self._rest_keys is None:
            return set()
        erased = set()
        for transfer_id in self._rest_keys.transfers():
            record = self._records.incoming(transfer_id)
            if record is not None and record.state is Incoming.DELIVERED and record.purged_at is None:
                continue
            self._rest_keys.forget(transfer_id)
            if record is not None and record.purged_at is not None:
                self._audit.record(
                    "inbox_purged", transfer=transfer_id, reason=record.purge_reason, bytes=0, resumed=True
                )
                erased.add(transfer_id)
        return erased

    def due(self) -> list[Purge]:
        """What the policy purges now."""
        outcomes = self._outcomes() if self._outcomes is not None else {}
        forwarding = {tid: Forwarding(*o) for tid, o in outcomes.items()}
        return decide(self._policy, self._clock(), self._records.held(), forwarding)

    async def sweep(self) -> int:
        """Purge what is due; returns how many transfers were purged."""
        done = 0
        due = self.due()
        for start in range(0, len(due), BATCH):
            for purge in due[start : start + BATCH]:
                done += await self._purge(purge)
            await asyncio.sleep(0)
        return done

    async def _purge(self, purge: Purge) -> int:
        tid = purge.transfer_id
        held_bytes = self._records.mark_purged(tid, purge.reason.value, self._clock())
        if held_bytes is None:
            return 0  # purged meanwhile, or not delivered after all
        if self._rest_keys is not None:
            self._rest_keys.forget(tid)
        held_bytes += await asyncio.to_thread(blob_bytes, self._root, tid)
        # Audited before the files go: a crash after this leaves them to `recover`, which audits again
        # (resumed); one before it leaves them to `recover` too. Either way the purge is in the audit.
        self._audit.record("inbox_purged", transfer=tid, reason=purge.reason.value, bytes=held_bytes)
        await asyncio.to_thread(delete_blobs, self._root, tid)
        if self._on_purged is not None:
            self._on_purged(purge.reason.value, held_bytes)
        return 1

    async def run(self) -> None:
        """Sweep every `sweep_interval_s` until cancelled. A failed sweep is logged and tried again at the
        next interval: retention must never stop the daemon."""
        while True:
            try:
                purged = await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "inbox retention sweep failed; trying again in %g s", self._policy.sweep_interval_s
                )
            else:
                if purged:
                    log.info("inbox retention: purged %d transfer(s)", purged)
            await asyncio.sleep(self._policy.sweep_interval_s)
