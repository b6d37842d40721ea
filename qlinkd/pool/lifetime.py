"""Key lifetime: how often the daemon sweeps the keys held for slave SAEs, and what one sweep deletes and
reports (an audit record per peer and SAE pair, the expiry counters). Time comes in as `now`."""

from __future__ import annotations

from qlinkmed.qlinkd.ops.audit import AuditLog
from qlinkmed.qlinkd.ops.metrics import LinkMetrics
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.pool.values import ExpiredKeys

MAX_SWEEP_INTERVAL_S = 60.0
AUDIT_EVENT = "keys_expired"
SWEEP_BATCH = 1000
"""Most keys one `sweep` deletes: it holds the event loop about 50 ms (its delete, WAL checkpoint and audit
fsync; bench/bench_expiry.py), and its audit record (~40 KB) stays under the 64 KiB the log reads back
from its tail."""


def sweep_interval(max_age_s: float) -> float:
    """Seconds between sweeps: a tenth of the lifetime, so a key outlives it by at most 10 %, and at most a
    minute, so the default day's lifetime is kept to the minute."""
    return min(max_age_s / 10, MAX_SWEEP_INTERVAL_S)


def audit_fields(expired: ExpiredKeys, max_age_s: float) -> dict[str, object]:
    """The audit record of one group of expired keys: identifiers and sizes, no key material."""
    return {
        "peer": expired.peer,
        "master_SAE_ID": expired.master_sae,
        "slave_SAE_ID": expired.slave_sae,
        "count": len(expired.key_ids),
        "bits": expired.bits,
        "key_IDs": list(expired.key_ids),
        "lifetime_s": max_age_s,
    }


def sweep(
    store: KeyStore, *, max_age_s: float, now: float, audit: AuditLog, metrics: LinkMetrics
) -> list[ExpiredKeys]:
    """Delete up to SWEEP_BATCH keys whose lifetime is over (`KeyStore.expire_unfetched`), then audit
    and count them. The deletion commits first: a crash before the record leaves the keys gone and
    unrecorded, never recorded and still there. Call again while `more_due` says so."""
    expired = store.expire_unfetched(max_age_s, now=now, limit=SWEEP_BATCH)
    for group in expired:
        audit.record(AUDIT_EVENT, **audit_fields(group, max_age_s))
        metrics.expired(group.peer, len(group.key_ids), group.bits)
    return expired


def more_due(expired: list[ExpiredKeys]) -> bool:
    """True when a sweep deleted a full batch: more keys may be past their lifetime."""
    return sum(len(group.key_ids) for group in expired) >= SWEEP_BATCH
