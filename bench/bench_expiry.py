"""Key-lifetime sweep benchmark (issue 14, item 7): how long one sweep batch holds the daemon's event loop,
and how long a whole backlog takes, for the 17.8 Mbit of unfetched 256-bit keys the review found held at a
slave's end after one test run. Not a test; timings vary on a shared machine (medians of a few runs).

    python bench/bench_expiry.py            # the 17.8 Mbit backlog
    python bench/bench_expiry.py --quick    # a tenth of it
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from qlinkmed.qlinkd.ops.audit import AuditLog
from qlinkmed.qlinkd.ops.metrics import LinkMetrics
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.pool.lifetime import SWEEP_BATCH, more_due, sweep

BACKLOG_BITS = 17_800_000
KEY_BYTES = 32
LIFETIME_S = 86_400.0
ACCEPTED_AT = 1_700_000_000.0


def _fill(store: KeyStore, count: int) -> None:
    # Straight into the table: accepting notices would need the rounds and the peer's notices too, and the
    # sweep reads only the incoming table.
    db = store._db
    db.execute("BEGIN IMMEDIATE")
    db.executemany(
        "INSERT INTO incoming (key_id, peer, master_sae, slave_sae, material, received_at)"
        " VALUES (?, 'hospital-a', 'pacs-a', 'pacs-b', randomblob(?), ?)",
        [(str(uuid.uuid4()), KEY_BYTES, ACCEPTED_AT) for _ in range(count)],
    )
    db.execute("COMMIT")
    store.checkpoint()


def run(count: int) -> tuple[list[float], float]:
    """Seconds of each sweep batch, and of the whole backlog."""
    with tempfile.TemporaryDirectory() as folder:
        store = KeyStore.open(Path(folder) / "keys.sqlite3")
        audit = AuditLog.open(Path(folder) / "audit.jsonl", facility="hospital-b")
        try:
            _fill(store, count)
            batches = []
            start = time.perf_counter()
            while True:
                began = time.perf_counter()
                expired = sweep(
                    store,
                    max_age_s=LIFETIME_S,
                    now=ACCEPTED_AT + LIFETIME_S,
                    audit=audit,
                    metrics=LinkMetrics(),
                )
                batches.append(time.perf_counter() - began)
                if not more_due(expired):
                    break
            total = time.perf_counter() - start
            if store.incoming_bits():
                raise SystemExit("the sweep left keys behind")
        finally:
            audit.close()
            store.close()
    return batches, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the backlog, one run")
    args = parser.parse_args()
    count = BACKLOG_BITS // (8 * KEY_BYTES) // (10 if args.quick else 1)
    runs = [run(count) for _ in range(1 if args.quick else 3)]
    batch_ms = statistics.median(1e3 * b for batches, _ in runs for b in batches)
    worst_ms = max(1e3 * b for batches, _ in runs for b in batches)
    total_s = statistics.median(total for _, total in runs)
    print(f"backlog: {count} keys of {8 * KEY_BYTES} bits ({count * 8 * KEY_BYTES / 1e6:.1f} Mbit)")
    print(
        f"one sweep batch ({SWEEP_BATCH} keys; delete, WAL checkpoint, audit fsync):"
        f" median {batch_ms:.1f} ms, worst {worst_ms:.1f} ms"
    )
    print(f"whole backlog: {total_s:.2f} s in {len(runs[0][0])} batches")


if __name__ == "__main__":
    main()
