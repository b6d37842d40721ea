"""What `qlink inbox list` costs the daemon (issue 17, item 5): `TransferRecords.list_inbox` over an inbox
of 10,000 delivered transfers (studies of 300 instances and HL7 messages whose sealed bodies sit in their
rows), all listed and with each filter, beside the manifest-parsing listing it replaced
(`list_incoming`). The listing reads the summary stored on arrival: no manifest, no blob, no at-rest file.
Not a test; timings vary on a shared machine (medians of 5).

    python bench/bench_inbox_list.py            # 10,000 transfers
    python bench/bench_inbox_list.py --quick    # 1,000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from qlinkmed.qlinkd.content.summary import InboxSummary
from qlinkmed.qlinkd.dataplane.inbox_filter import parse_filter
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.records import TransferRecords

A, B = "hospital-a", "hospital-b"
DIGEST = hashlib.sha256(b"").hexdigest()
INSTANCES = 300


def _fill(records: TransferRecords, count: int) -> None:
    now = time.time()
    for i in range(count):
        created = now - (count - i) * 60
        if i % 2:
            m = Manifest(
                transfer_id=str(uuid.uuid4()),
                sender=A,
                recipient=B,
                kind=TransferKind.EHR,
                files=(FileEntry("oru.hl7", 4000, DIGEST, "hl7"),),
                created=created,
            )
            summary = InboxSummary(
                patient_name=f"Patient{i}, Test", patient_id=f"PID-{i}", message_type="ORU^R01^ORU_R01"
            )
            records.record_ehr(
                m, blob=os.urandom(4100), key=b"k" * 32, forms="aes-gcm", reason=None, summary=summary
            )
            continue
        m = Manifest(
            transfer_id=str(uuid.uuid4()),
            sender=A,
            recipient=B,
            kind=TransferKind.STUDY,
            files=tuple(FileEntry(f"SE1/IM{n}", 500_000, DIGEST, "dicom") for n in range(INSTANCES)),
            created=created,
            study_uid=f"1.2.3.{i}",
        )
        records.begin_incoming(m)
        summary = InboxSummary(
            patient_name=f"Müller{i}, Jörg",
            patient_id=f"PID-{i}",
            accession=f"ACC-{i}",
            modalities="CT\\SR" if i % 3 else "MR",
            study_date="2024-06-04",
            study_description="CT THORAX",
            instances=INSTANCES,
        )
        records.deliver(m.transfer_id, at_rest_key=b"k" * 32, forms="aes-gcm", summary=summary)


def _median_ms(call: Callable[[], object]) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(5):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
        size = len(result) if isinstance(result, list) else 0
    return statistics.median(times) * 1000, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    count = 1000 if parser.parse_args().quick else 10_000
    with tempfile.TemporaryDirectory() as tmp:
        records = TransferRecords.open(Path(tmp) / "transfers.sqlite3")
        started = time.perf_counter()
        _fill(records, count)
        print(f"{count:,} delivered transfers written in {time.perf_counter() - started:.1f} s")
        now = time.time()
        cases = {
            "all (limit 10,000)": {"limit": "10000"},
            "default (limit 1,000)": {},
            "--patient müller12": {"patient": "müller12", "limit": "10000"},
            "--accession ACC-42": {"accession": "ACC-42"},
            "--modality SR": {"modality": "SR", "limit": "10000"},
            "--kind ehr --since 2d": {"kind": "ehr", "since": "2d", "limit": "10000"},
            "--unfetched": {"unfetched": "true", "limit": "10000"},
        }
        for name, values in cases.items():
            query = parse_filter(values, now)
            ms, rows = _median_ms(lambda q=query: records.list_inbox(q))  # type: ignore[misc]
            print(f"list_inbox {name:<24} {rows:>6} rows  {ms:8.1f} ms")
        _manifest_cache_clear()
        ms, rows = _median_ms(lambda: records.list_incoming(limit=10_000))
        print(f"list_incoming (manifests parsed, before) {rows:>6} rows  {ms:8.1f} ms (cache warm after 1st)")
        records.close()


def _manifest_cache_clear() -> None:
    from qlinkmed.qlinkd.dataplane import records

    records._manifest.cache_clear()


if __name__ == "__main__":
    main()
