"""What the operator sees of the data plane's queues with each peer (``qlink status`` and the metrics):
queued, stuck and refused outgoing transfers and why, and unfetched incoming ones. Read from the durable
records when asked, so it is the truth after a restart and costs nothing between scrapes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

from qlinkmed.qlinkd.dataplane.records import TransferRecords
from qlinkmed.qlinkd.link.status import QueueStatus, RefusedStatus

STUCK_AFTER_S = 600.0
"""A transfer queued longer than this is stuck (``[facility] queue_stuck_after_s``, by default): a
healthy link delivers a CT study in well under a minute, so ten minutes means the peer is unreachable,
refusing, or out of key."""
REFUSED_WINDOW_S = 86_400.0
"""Refused transfers are shown for a day: they are final (never retried), so an older one is history for
the audit log, not a task for the operator."""
REFUSED_SHOWN = 5


def _iso(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat(timespec="seconds")


def _age(since: float | None, now: float) -> float | None:
    return None if since is None else round(max(now - since, 0.0), 3)


def queue_statuses(
    records: TransferRecords,
    peers: Iterable[str],
    *,
    senders: Mapping[str, str],
    failing_since: Mapping[str, float],
    now: float,
    stuck_after_s: float = STUCK_AFTER_S,
) -> list[QueueStatus]:
    """One entry per peer; `senders` is each sender's state, `failing_since` when it began failing."""
    unfetched = records.unfetched()
    out = []
    for peer in peers:
        queue = records.queue_summary(peer, stuck_before=now - stuck_after_s)
        refused, recent = records.refused_outgoing(peer, since=now - REFUSED_WINDOW_S, limit=REFUSED_SHOWN)
        held, oldest_held = unfetched.get(peer, (0, None))
        failing = failing_since.get(peer)
        out.append(
            QueueStatus(
                peer=peer,
                queued=queue.count,
                queued_bytes=queue.bytes,
                oldest_queued_age_s=_age(queue.oldest_queued_at, now),
                stuck=queue.stuck,
                stuck_after_s=stuck_after_s,
                sender=senders.get(peer, "no data address"),
                failing_since=None if failing is None else _iso(failing),
                refused=refused,
                refused_window_s=REFUSED_WINDOW_S,
                refused_recent=tuple(
                    RefusedStatus(transfer_id=r.transfer_id, at=_iso(r.finished_at), reason=r.reason)
                    for r in recent
                ),
                unfetched=held,
                oldest_unfetched_age_s=_age(oldest_held, now),
            )
        )
    return out
