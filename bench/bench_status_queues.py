"""What a status call or a metrics scrape pays to read the data plane's queues from the transfer records
(issue 17, item 6): ``queue_statuses`` over an aged daemon's records (many delivered incoming transfers,
some unfetched; a long queue to one peer; refusals), on the event loop that also streams data. It decides
reading at scrape time over gauges kept in step with every queue, delivery, fetch and purge. Not a test;
timings vary on a shared machine (medians).

    python bench/bench_status_queues.py            # 100,000 incoming, 2,000 queued
    python bench/bench_status_queues.py --quick    # a tenth of it
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from qlinkmed.qlinkd.dataplane.manifest import FileEntry, Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.queues import queue_statuses
from qlinkmed.qlinkd.dataplane.records import Outgoing, TransferRecords

A, B, C = "hospital-a", "hospital-b", "hospital-c"
DIGEST = hashlib.sha256(b"").hexdigest()


def _manifest(sender: str, recipient: str, files: int, created: float) -> Manifest:
    return Manifest(
        transfer_id=str(uuid.uuid4()),
        sender=sender,
        recipient=recipient,
        kind=TransferKind.STUDY,
        files=tuple(FileEntry(f"IM{i}.dcm", 500_000, DIGEST, "application/dicom") for i in range(files)),
        created=created,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    incoming, queued, refused = 100_000 // scale, 2_000 // scale, 500 // scale
    with tempfile.TemporaryDirectory() as tmp:
        records = TransferRecords.open(Path(tmp) / "transfers.sqlite3")
        now = time.time()
        started = time.perf_counter()
        db = records._db  # bulk fill in one transaction: the product's calls fsync one record at a time
        db.execute("BEGIN")
        for i in range(incoming):
            m = _manifest(C, A, 1, now - 86_400 + i)
            db.execute(
                "INSERT INTO incoming VALUES"
                " (?, ?, 'delivered', ?, 1, 0, ?, ?, NULL, 'dicom', NULL, ?, NULL, ?)",
                (
                    m.transfer_id,
                    C,
                    m.to_json(),
                    m.created,
                    m.created,
                    None if i % 10 == 0 else now,
                    m.created,
                ),
            )
        db.execute("COMMIT")
        for i in range(queued):
            records.queue(_manifest(A, B, 300 if i == 0 else 1, now - 3600 + i))
        for _ in range(refused):
            m = _manifest(A, B, 1, now - 60)
            records.queue(m)
            records.finish_outgoing(m.transfer_id, Outgoing.REFUSED, "refused: not DICOM")
        print(
            f"filled {incoming:,} incoming, {queued:,} queued, {refused:,} refused"
            f" in {time.perf_counter() - started:.1f} s"
        )
        timings = []
        for _ in range(21):
            t = time.perf_counter()
            b, c = queue_statuses(records, [B, C], senders={}, failing_since={}, now=time.time())
            timings.append(time.perf_counter() - t)
        print(
            f"queued to {B}: {b.queued:,} ({b.queued_bytes / 1e9:.2f} GB),"
            f" unfetched from {C}: {c.unfetched:,}"
        )
        print(
            f"queue_statuses: median {statistics.median(timings) * 1e3:.1f} ms,"
            f" max {max(timings) * 1e3:.1f} ms (21 calls)"
        )
        for name, call in (
            ("queue_summary", lambda: records.queue_summary(B, stuck_before=now)),
            ("refused_outgoing", lambda: records.refused_outgoing(B, since=now - 86_400)),
            ("unfetched", records.unfetched),
        ):
            parts = []
            for _ in range(11):
                t = time.perf_counter()
                call()
                parts.append(time.perf_counter() - t)
            print(f"  {name}: median {statistics.median(parts) * 1e3:.1f} ms")
        records.close()


if __name__ == "__main__":
    main()
