"""The inbox side of the transfer records: the summary stored on arrival, the listing filtered in SQL
without reading a blob, the schema migration of a records file an older daemon wrote, and purging (the
row stays, so a transfer sent again is still answered "delivered" and never stored twice)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlinkmed.qlinkd.content.summary import InboxSummary
from qlinkmed.qlinkd.dataplane.inbox import Inbox
from qlinkmed.qlinkd.dataplane.inbox_filter import InboxFilter, parse_filter
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.records import SCHEMA_VERSION, Incoming, TransferRecords
from qlinkmed.qlinkd.errors import FilterError, TransferError

A, B, C = "hospital-a", "hospital-b", "hospital-c"

_V2_SCHEMA = """
CREATE TABLE outgoing (transfer_id TEXT PRIMARY KEY, peer TEXT NOT NULL, seq INTEGER NOT NULL,
    state TEXT NOT NULL, manifest BLOB NOT NULL, queued_at REAL NOT NULL, finished_at REAL,
    reason TEXT, body BLOB);
CREATE INDEX outgoing_peer ON outgoing (peer, state, seq);
CREATE TABLE incoming (transfer_id TEXT PRIMARY KEY, peer TEXT NOT NULL, state TEXT NOT NULL,
    manifest BLOB NOT NULL, file_index INTEGER NOT NULL, file_offset INTEGER NOT NULL,
    started_at REAL NOT NULL, delivered_at REAL, at_rest_key BLOB, forms TEXT, reason TEXT,
    fetched_at REAL, blob BLOB, spooled_at REAL);
CREATE INDEX outgoing_seq ON outgoing (seq);
CREATE INDEX incoming_started ON incoming (started_at);
PRAGMA user_version = 2;
"""
"""The records schema of version 2, as the daemon before the inbox summary wrote it."""

_V3_SCHEMA = (
    _V2_SCHEMA.replace("PRAGMA user_version = 2;", "")
    + """
ALTER TABLE incoming ADD COLUMN purged_at REAL;
ALTER TABLE incoming ADD COLUMN purge_reason TEXT;
CREATE TABLE inbox_listing (transfer_id TEXT PRIMARY KEY, peer TEXT NOT NULL, kind TEXT NOT NULL,
    files INTEGER NOT NULL, bytes INTEGER NOT NULL, state TEXT NOT NULL, started_at REAL NOT NULL,
    delivered_at REAL, fetched_at REAL, purged_at REAL, purge_reason TEXT, forms TEXT, reason TEXT,
    patient_name TEXT, patient_id TEXT, accession TEXT, modalities TEXT, study_date TEXT,
    study_description TEXT, instances INTEGER, message_type TEXT, sender TEXT);
CREATE INDEX inbox_listing_started ON inbox_listing (started_at);
PRAGMA user_version = 3;
"""
)
"""The records schema of version 3, as the daemon before departments wrote it."""


def _manifest(kind: TransferKind, *sizes: int, sender: str = A) -> Manifest:
    content = {TransferKind.STUDY: "dicom", TransferKind.EHR: "hl7", TransferKind.IMAGES: "png"}[kind]
    files = tuple(
        FileEntry(f"f{i}", size, hashlib.sha256(bytes(size)).hexdigest(), content)
        for i, size in enumerate(sizes)
    )
    return Manifest(
        transfer_id=str(uuid.uuid4()),
        sender=sender,
        recipient=B,
        kind=kind,
        files=files,
        created=time.time(),
        study_uid="1.2.3" if kind is TransferKind.STUDY else None,
    )


def _study(
    records: TransferRecords, summary: InboxSummary, *, sender: str = A, sizes: tuple[int, ...] = (10, 20)
) -> Manifest:
    m = _manifest(TransferKind.STUDY, *sizes, sender=sender)
    records.begin_incoming(m)
    records.deliver(m.transfer_id, at_rest_key=b"k" * 32, forms="aes-gcm", summary=summary)
    return m


def _ehr(records: TransferRecords, summary: InboxSummary, body: bytes = b"sealed message") -> Manifest:
    m = _manifest(TransferKind.EHR, len(body))
    records.record_ehr(m, blob=body, key=b"k" * 32, forms="aes-gcm", reason=None, summary=summary)
    return m


@pytest.fixture
def records(tmp_path: Path) -> Iterator[TransferRecords]:
    opened = TransferRecords.open(tmp_path / "transfers.sqlite3")
    yield opened
    opened.close()


MULLER = InboxSummary(
    patient_name="Müller, Jörg",
    patient_id="PID-1",
    accession="ACC-1",
    modalities="CT\\SR",
    study_date="2024-06-04",
    study_description="CT THORAX",
    instances=2,
)
SMITH = InboxSummary(
    patient_name="Smith, Anna", patient_id="PID-2", accession="ACC-2", modalities="MR", instances=1
)
ORU = InboxSummary(
    patient_name="JÖRG, Example", patient_id="PID-3", message_type="ORU^R01^ORU_R01", sender="LAB@HOSP"
)


def _ids(records: TransferRecords, **values: str) -> set[str]:
    return {e.transfer_id for e in records.list_inbox(parse_filter(values, time.time()))}


def test_the_listing_carries_the_summary_stored_on_arrival(records: TransferRecords) -> None:
    study = _study(records, MULLER)
    ehr = _ehr(records, ORU)
    entries = {e.transfer_id: e for e in records.list_inbox(InboxFilter())}
    assert entries[study.transfer_id].summary == MULLER
    assert (entries[study.transfer_id].kind, entries[study.transfer_id].files) == ("study", 2)
    assert entries[study.transfer_id].bytes == 30
    assert entries[ehr.transfer_id].summary == ORU and entries[ehr.transfer_id].kind == "ehr"
    assert records.summary(study.transfer_id) == MULLER
    # Newest first.
    assert records.list_inbox(InboxFilter())[0].transfer_id == ehr.transfer_id


def test_a_transfer_still_arriving_is_listed_with_its_progress(records: TransferRecords) -> None:
    m = _manifest(TransferKind.STUDY, 10, 20)
    records.begin_incoming(m)
    records.advance(m.transfer_id, 1, 5)
    (entry,) = records.list_inbox(InboxFilter())
    assert entry.state is Incoming.RECEIVING and entry.received_bytes == 15
    assert entry.summary == InboxSummary()


def test_each_filter_is_applied(records: TransferRecords) -> None:
    muller = _study(records, MULLER).transfer_id
    smith = _study(records, SMITH, sender=C).transfer_id
    oru = _ehr(records, ORU).transfer_id
    assert _ids(records, patient="müller") == {muller}
    assert _ids(records, patient="jörg") == {muller, oru}  # Unicode case folding: "JÖRG" too
    assert _ids(records, patient="pid-2") == {smith}
    assert _ids(records, accession="ACC-1") == {muller}
    assert _ids(records, accession="ACC") == set()  # exact
    assert _ids(records, modality="sr") == {muller}
    assert _ids(records, modality="C") == set()  # a whole modality, not a part of one
    assert _ids(records, kind="ehr") == {oru}
    assert _ids(records, kind="study") == {muller, smith}
    assert _ids(records, peer=C) == {smith}
    assert _ids(records, since="1h") == {muller, smith, oru}
    assert _ids(records, until="2000-01-01") == set()
    assert _ids(records, id=muller[:8]) == {muller}
    assert len(records.list_inbox(parse_filter({"limit": "2"}, time.time()))) == 2
    records.mark_fetched(muller)
    assert _ids(records, unfetched="true") == {smith, oru}
    assert _ids(records, kind="study", unfetched="true", patient="PID") == {smith}


def test_since_and_until_bound_the_arrival_time(records: TransferRecords) -> None:
    early = _study(records, MULLER).transfer_id
    records._db.execute(
        "UPDATE inbox_listing SET started_at = started_at - 7200 WHERE transfer_id = ?", (early,)
    )
    late = _study(records, SMITH).transfer_id
    assert _ids(records, since="1h") == {late}
    assert _ids(records, until="1h") == {early}
    assert _ids(records, since="3h", until="90m") == {early}


@pytest.mark.parametrize(
    ("values", "option"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-13-01"}, "since"),
        ({"until": "3x"}, "until"),
        ({"since": "1h", "until": "2h"}, "until"),
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"kind": "dicom"}, "kind"),
        ({"modality": "C T"}, "modality"),
        ({"patient": ""}, "patient"),
        ({"department": " "}, "department"),
        ({"department": "x" * 129}, "department"),
        ({"department": "a\tb"}, "department"),
        ({"unfetched": "maybe"}, "unfetched"),
        ({"id": "xyz"}, "id"),
    ],
)
def test_a_bad_filter_names_its_option(values: dict[str, str], option: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(values, time.time())
    assert caught.value.option == option


def test_times_are_iso_dates_datetimes_or_spans_back() -> None:
    now = 1_800_000_000.0
    assert parse_filter({"since": "2h"}, now).since == now - 7200
    assert parse_filter({"since": "3d"}, now).since == now - 3 * 86400
    assert parse_filter({"since": "1.5w"}, now).since == now - 1.5 * 604800
    assert parse_filter({"since": "2026-03-01T08:30:00Z"}, now).since == 1772353800.0
    assert parse_filter({"since": "2026-03-01T08:30+01:00"}, now).since == 1772353800.0 - 3600
    local_midnight = time.mktime((2026, 3, 1, 0, 0, 0, 0, 0, -1))
    assert parse_filter({"since": "2026-03-01"}, now).since == local_midnight


def test_the_listing_reads_no_manifest_blob_or_key(records: TransferRecords) -> None:
    # The incoming rows hold manifests and sealed EHR bodies: any column after those is read through their
    # overflow pages. The listing reads its own narrow table only.
    _study(records, MULLER)
    _ehr(records, ORU, body=b"x" * 100_000)
    read: set[tuple[str, str]] = set()

    def authorise(action: int, table: str | None, column: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_READ and table and column:
            read.add((table, column))
        return sqlite3.SQLITE_OK

    records._db.set_authorizer(authorise)
    try:
        assert len(records.list_inbox(InboxFilter(patient="r"))) == 2
    finally:
        records._db.set_authorizer(None)
    assert ("inbox_listing", "state") in read  # the authorizer saw the query
    assert {table for table, _ in read} == {"inbox_listing"}


def test_the_listing_uses_the_arrival_index(records: TransferRecords) -> None:
    plan = " | ".join(
        str(r[-1])
        for r in records._db.execute(
            "EXPLAIN QUERY PLAN SELECT transfer_id, patient_name FROM inbox_listing"
            " ORDER BY started_at DESC LIMIT 10"
        )
    )
    assert "inbox_listing_started" in plan and "TEMP B-TREE" not in plan, plan


def test_a_records_file_of_schema_2_gains_summaries_and_purge_columns_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "transfers.sqlite3"
    old_study = _manifest(TransferKind.STUDY, 100, 200)
    old_ehr = _manifest(TransferKind.EHR, 14)
    now = time.time()
    with contextlib.closing(sqlite3.connect(path)) as old:
        old.executescript(_V2_SCHEMA)
        old.execute(
            "INSERT INTO incoming VALUES"
            " (?, ?, 'delivered', ?, 2, 0, ?, ?, ?, 'aes-gcm', NULL, NULL, NULL, ?)",
            (old_study.transfer_id, A, old_study.to_json(), now - 10, now - 9, b"k" * 32, now - 9),
        )
        old.execute(
            "INSERT INTO incoming VALUES (?, ?, 'delivered', ?, 1, 0, ?, ?, ?, 'aes-gcm', NULL, ?, ?, ?)",
            (
                old_ehr.transfer_id,
                A,
                old_ehr.to_json(),
                now - 5,
                now - 5,
                b"k" * 32,
                now - 1,
                b"sealed",
                now - 5,
            ),
        )
        old.commit()
    records = TransferRecords.open(path)
    try:
        assert records._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        entries = {e.transfer_id: e for e in records.list_inbox(InboxFilter())}
        study = entries[old_study.transfer_id]
        assert (study.kind, study.files, study.bytes, study.state) == ("study", 2, 300, Incoming.DELIVERED)
        assert study.summary == InboxSummary()  # arrived before summaries: nothing is invented
        assert (
            entries[old_ehr.transfer_id].kind == "ehr" and entries[old_ehr.transfer_id].fetched_at == now - 1
        )
        assert _ids(records, kind="study") == {old_study.transfer_id}
        assert records.blob(old_ehr.transfer_id) == b"sealed"
        # And the migrated file takes new arrivals and purges.
        new = _study(records, MULLER)
        assert records.summary(new.transfer_id) == MULLER
        assert records.mark_purged(old_ehr.transfer_id, "fetched", now) == len(b"sealed")
        assert records.incoming(old_ehr.transfer_id).purged_at == now  # type: ignore[union-attr]
    finally:
        records.close()


def test_a_records_file_of_schema_3_gains_the_department_column_and_keeps_its_summaries(
    tmp_path: Path,
) -> None:
    path = tmp_path / "transfers.sqlite3"
    old = _manifest(TransferKind.STUDY, 100, 200)
    now = time.time()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(_V3_SCHEMA)
        db.execute(
            "INSERT INTO incoming VALUES"
            " (?, ?, 'delivered', ?, 2, 0, ?, ?, ?, 'aes-gcm', NULL, NULL, NULL, ?, NULL, NULL)",
            (old.transfer_id, A, old.to_json(), now - 10, now - 9, b"k" * 32, now - 9),
        )
        db.execute(
            "INSERT INTO inbox_listing VALUES (?, ?, 'study', 2, 300, 'delivered', ?, ?, NULL, NULL, NULL,"
            " 'aes-gcm', NULL, 'Müller, Jörg', 'PID-1', 'ACC-1', 'CT\\SR', '2024-06-04', 'CT THORAX', 2,"
            " NULL, NULL)",
            (old.transfer_id, A, now - 10, now - 9),
        )
        db.commit()
    records = TransferRecords.open(path)
    try:
        assert records._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        (entry,) = records.list_inbox(InboxFilter())
        # Its summary is kept whole; its department is not recorded (nothing is invented).
        assert entry.summary == MULLER and entry.summary.department is None
        assert _ids(records, department="Cardiology") == set()
        new = _study(records, dataclasses.replace(SMITH, department="Cardiology"))
        assert records.summary(new.transfer_id) == dataclasses.replace(SMITH, department="Cardiology")
        assert _ids(records, department="cardiology") == {new.transfer_id}
    finally:
        records.close()


def test_the_department_is_stored_on_arrival_and_filtered_exactly_in_any_case(
    records: TransferRecords,
) -> None:
    cardio = _study(records, dataclasses.replace(MULLER, department="Cardiology")).transfer_id
    icu = _study(records, dataclasses.replace(SMITH, department="Intensive Care ÄÖ")).transfer_id
    lab = _ehr(records, dataclasses.replace(ORU, department="Laboratory")).transfer_id
    none = _study(records, SMITH).transfer_id
    entries = {e.transfer_id: e for e in records.list_inbox(InboxFilter())}
    assert entries[cardio].summary.department == "Cardiology"
    assert entries[lab].summary.department == "Laboratory" and entries[none].summary.department is None
    assert _ids(records, department="CARDIOLOGY") == {cardio}
    assert _ids(records, department="intensive care äö") == {icu}  # Unicode case folding
    assert _ids(records, department="Cardio") == set()  # exact: not a part of the name
    assert _ids(records, department="Laboratory", kind="ehr") == {lab}


def test_purging_keeps_the_row_and_drops_the_key_and_the_message(records: TransferRecords) -> None:
    ehr = _ehr(records, ORU, body=b"0123456789")
    study = _study(records, MULLER)
    assert records.mark_purged(ehr.transfer_id, "max_age", 1000.0) == 10
    assert records.mark_purged(study.transfer_id, "fetched", 1001.0) == 0  # its bytes are files
    assert records.mark_purged(ehr.transfer_id, "max_age", 1002.0) is None  # once only
    assert records.mark_purged("no-such-transfer", "max_age", 1002.0) is None
    record = records.incoming(ehr.transfer_id)
    assert record is not None and record.state is Incoming.DELIVERED
    assert (record.purged_at, record.purge_reason) == (1000.0, "max_age")
    assert records.blob(ehr.transfer_id) is None and records.at_rest_key(ehr.transfer_id) is None
    assert records.purged(study.transfer_id) == (1001.0, "fetched")
    assert records.held() == []
    assert records.unfetched() == {}  # purged is not "waiting to be fetched"
    assert records.list_incoming() == []  # the gateways reconcile from it: nothing left to forward
    listed = {e.transfer_id: e for e in records.list_inbox(InboxFilter())}
    assert listed[ehr.transfer_id].purge_reason == "max_age"  # still listed, marked purged


def test_a_purged_transfer_offered_again_is_answered_delivered_and_not_stored(
    records: TransferRecords, tmp_path: Path
) -> None:
    inbox = Inbox(tmp_path / "inbox", records, facility=B)
    study = _study(records, MULLER)
    ehr = _ehr(records, ORU)
    for m in (study, ehr):
        records.mark_purged(m.transfer_id, "fetched", time.time())
        where = inbox.offer(m, A)
        assert where.state is Incoming.DELIVERED and where.file_index == len(m.files)
    assert not (tmp_path / "inbox" / ".spool" / study.transfer_id).exists()
    assert records.incoming(study.transfer_id).purged_at is not None  # type: ignore[union-attr]


def test_reading_a_purged_transfer_says_it_was_purged(records: TransferRecords, tmp_path: Path) -> None:
    # The gateways' forwarders read through `locate` and park on TransferError; a purged transfer used to
    # raise StoreError ("no at-rest key"), which the FHIR forwarder does not expect.
    inbox = Inbox(tmp_path / "inbox", records, facility=B)
    ehr = _ehr(records, ORU)
    records.mark_purged(ehr.transfer_id, "max_age", time.time())
    with pytest.raises(TransferError, match=r"purged by retention \(max_age\)"):
        inbox.locate(ehr.transfer_id, 0)
    with pytest.raises(TransferError, match="purged"):
        inbox.read_file(ehr.transfer_id, 0)
