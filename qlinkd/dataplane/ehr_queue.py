"""The EHR messages queued for one peer, held in memory for the sender.

An EHR message is latency-bound: the sender should seal it the moment it is queued, without first asking
the records which transfers are queued and then reading the message's body back out of them. The records
stay the truth (a message is queued by its committed record, and a restart knows only them), so this queue
fills itself from them the first time it is asked and afterwards learns of each message as it is queued.
Bodies are kept in memory up to a budget; beyond it, a message's body is read from its record when sent.
"""

from __future__ import annotations

from collections.abc import Container

from qlinkmed.qlinkd.dataplane.manifest import Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.records import TransferRecords

MEMORY_BUDGET_BYTES = 32 << 20
"""Bodies held in memory at most (an EHR message is up to 8 MiB; most are a few KiB)."""


class EhrQueue:
    def __init__(
        self, records: TransferRecords, peer: str, *, budget_bytes: int = MEMORY_BUDGET_BYTES
    ) -> None:
        self._records = records
        self._peer = peer
        self._budget = budget_bytes
        self._held_bytes = 0
        # None until first asked: then the queued EHR messages in the records, oldest first.
        self._queued: dict[str, tuple[Manifest, bytes | None]] | None = None

    def _loaded(self) -> dict[str, tuple[Manifest, bytes | None]]:
        if self._queued is None:
            queued = self._records.queued(self._peer)
            self._queued = {m.transfer_id: (m, None) for m in queued if m.kind is TransferKind.EHR}
        return self._queued

    def added(self, manifest: Manifest, body: bytes) -> None:
        """`manifest` and its `body` were just queued in the records."""
        if self._queued is None:
            return  # not asked yet: the first question reads it from the records
        kept = body if self._held_bytes + len(body) <= self._budget else None
        if kept is not None:
            self._held_bytes += len(kept)
        self._queued[manifest.transfer_id] = (manifest, kept)

    def next(self, skip: Container[str] = ()) -> Manifest | None:
        """The oldest queued message whose id is not in `skip`."""
        for tid, (manifest, _) in self._loaded().items():
            if tid not in skip:
                return manifest
        return None

    def body(self, manifest: Manifest) -> bytes | None:
        """The message's bytes (None if the records no longer hold it)."""
        _, body = self._loaded().get(manifest.transfer_id, (manifest, None))
        return body if body is not None else self._records.body(manifest.transfer_id)

    def finished(self, transfer_id: str) -> None:
        """The message was delivered or refused: it leaves the queue."""
        if self._queued is not None:
            _, body = self._queued.pop(transfer_id, (None, None))
            if body is not None:
                self._held_bytes -= len(body)
