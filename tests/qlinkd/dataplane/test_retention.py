"""Inbox retention: the policy as a pure function (`retention.decide`), the sweep that applies it (mark,
audit, delete), crash recovery at start-up (a row marked purged whose files a crash left behind), and the
`[inbox]` configuration table, each mistake named by its key."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlinkmed.qlinkd.dataplane.records import RetentionRow, TransferRecords
from qlinkmed.qlinkd.dataplane.retention import Forwarding, Purge, PurgeReason, Retention, decide
from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.gateways.forwards import ForwardLedger
from qlinkmed.qlinkd.ops.audit import AuditLog
from qlinkmed.qlinkd.ops.config import load_facility_config
from qlinkmed.qlinkd.ops.inbox_config import InboxConfig
from qlinkmed.qlinkd.ops.pki import write_demo_pki
from tests.paths import REPO
from tests.qlinkd.dataplane.test_inbox_records import MULLER, ORU, _ehr, _study

NOW = 1_000_000.0
DAY = 86400.0


def _row(tid: str, delivered_ago: float, fetched_ago: float | None = None) -> RetentionRow:
    return RetentionRow(tid, NOW - delivered_ago, None if fetched_ago is None else NOW - fetched_ago)


# ---- the policy -----------------------------------------------------------------------------------------


def test_nothing_is_purged_without_a_policy() -> None:
    held = [_row("old", 1000 * DAY, 999 * DAY)]
    assert decide(InboxConfig(), NOW, held, {"old": Forwarding(1, 0, NOW - 900 * DAY)}) == []


def test_a_fetched_transfer_goes_once_its_grace_period_has_passed() -> None:
    policy = InboxConfig(purge_after_fetch_s=DAY)
    held = [_row("due", 3 * DAY, DAY), _row("early", 3 * DAY, DAY - 1), _row("unfetched", 30 * DAY)]
    assert decide(policy, NOW, held, {}) == [Purge("due", PurgeReason.FETCHED)]


def test_a_forwarded_transfer_goes_once_every_destination_has_it_and_the_grace_has_passed() -> None:
    policy = InboxConfig(purge_after_forward_s=3600)
    held = [_row(t, DAY) for t in ("all", "recent", "pending", "parked", "no-gateway")]
    forwarding = {
        "all": Forwarding(delivered=2, owed=0, last_delivered_at=NOW - 3600),
        "recent": Forwarding(delivered=2, owed=0, last_delivered_at=NOW - 3599),
        "pending": Forwarding(delivered=1, owed=1, last_delivered_at=NOW - DAY),
        "parked": Forwarding(delivered=0, owed=1, last_delivered_at=None),
    }
    assert decide(policy, NOW, held, forwarding) == [Purge("all", PurgeReason.FORWARDED)]


def test_a_forward_still_owed_holds_a_fetched_transfer_too() -> None:
    policy = InboxConfig(purge_after_fetch_s=0, purge_after_forward_s=0)
    held = [_row("owed", DAY, DAY)]
    assert decide(policy, NOW, held, {"owed": Forwarding(1, 1, NOW - DAY)}) == []


def test_max_age_purges_whatever_holds_it_fetched_or_not_forwarded_or_not() -> None:
    policy = InboxConfig(purge_after_fetch_s=10 * DAY, max_age_s=30 * DAY)
    held = [_row("never-fetched", 30 * DAY), _row("owed", 31 * DAY), _row("young", 29 * DAY)]
    forwarding = {"owed": Forwarding(0, 1, None)}
    assert decide(policy, NOW, held, forwarding) == [
        Purge("never-fetched", PurgeReason.MAX_AGE),
        Purge("owed", PurgeReason.MAX_AGE),
    ]


def test_the_first_rule_that_applies_is_the_reason() -> None:
    policy = InboxConfig(purge_after_fetch_s=0, purge_after_forward_s=0, max_age_s=0)
    held = [_row("a", DAY, DAY), _row("b", DAY)]
    forwarding = {"b": Forwarding(1, 0, NOW - 1)}
    assert decide(policy, NOW, held, forwarding) == [
        Purge("a", PurgeReason.FETCHED),
        Purge("b", PurgeReason.FORWARDED),
    ]


# ---- the sweep ------------------------------------------------------------------------------------------


def _audit_events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _files(inbox: Path, tid: str, *sizes: int) -> None:
    folder = inbox / tid
    folder.mkdir(parents=True)
    for i, size in enumerate(sizes):
        (folder / str(i)).write_bytes(os.urandom(size))


@pytest.fixture
def records(tmp_path: Path) -> Iterator[TransferRecords]:
    opened = TransferRecords.open(tmp_path / "transfers.sqlite3")
    yield opened
    opened.close()


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog.open(tmp_path / "audit.jsonl", facility="hospital-b")
    yield log
    log.close()


def test_a_sweep_marks_audits_counts_and_deletes(
    records: TransferRecords, audit: AuditLog, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    fetched = _study(records, MULLER).transfer_id
    kept = _study(records, MULLER).transfer_id
    message = _ehr(records, ORU, body=b"sealed-body").transfer_id
    _files(inbox, fetched, 100, 50)
    _files(inbox, kept, 10)
    records.mark_fetched(fetched)
    records.mark_fetched(message)
    counted: list[tuple[str, int]] = []
    retention = Retention(
        InboxConfig(purge_after_fetch_s=0),
        records=records,
        inbox_root=inbox,
        audit=audit,
        on_purged=lambda reason, size: counted.append((reason, size)),
    )
    assert asyncio.run(retention.sweep()) == 2
    assert not (inbox / fetched).exists() and (inbox / kept / "0").exists()
    assert records.purged(fetched) is not None and records.purged(message) is not None
    assert records.purged(kept) is None and records.blob(message) is None
    purged = [e for e in _audit_events(tmp_path / "audit.jsonl") if e["event"] == "inbox_purged"]
    assert {(e["transfer"], e["reason"], e["bytes"]) for e in purged} == {
        (fetched, "fetched", 150),
        (message, "fetched", len(b"sealed-body")),
    }
    assert sorted(counted) == [("fetched", 11), ("fetched", 150)]
    assert asyncio.run(retention.sweep()) == 0  # nothing twice


def test_a_sweep_reads_the_forwarding_ledger(
    records: TransferRecords, audit: AuditLog, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    ledger = ForwardLedger.open(tmp_path / "forwards.sqlite3")
    try:
        done = _study(records, MULLER).transfer_id
        owed = _study(records, MULLER).transfer_id
        for tid in (done, owed):
            _files(inbox, tid, 10)
            ledger.add("dicom", tid, ["pacs", "archive"])
        for forward in ledger.pending("dicom", "pacs") + ledger.pending("dicom", "archive"):
            if forward.transfer_id == done or forward.destination == "pacs":
                ledger.delivered(forward)
        retention = Retention(
            InboxConfig(purge_after_forward_s=0),
            records=records,
            inbox_root=inbox,
            audit=audit,
            outcomes=ledger.outcomes,
        )
        assert asyncio.run(retention.sweep()) == 1
        assert records.purged(done) is not None and records.purged(owed) is None
        assert (inbox / owed).exists()
    finally:
        ledger.close()


def test_start_up_finishes_a_purge_a_crash_interrupted(
    records: TransferRecords, audit: AuditLog, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    interrupted = _study(records, MULLER).transfer_id
    held = _study(records, MULLER).transfer_id
    _files(inbox, interrupted, 64, 64)
    _files(inbox, held, 32)
    (inbox / ".spool").mkdir()
    # The crash: the row was marked (and its key dropped) but the files were never deleted.
    records.mark_purged(interrupted, "max_age", time.time())
    retention = Retention(InboxConfig(), records=records, inbox_root=inbox, audit=audit)
    assert retention.recover() == 1
    assert not (inbox / interrupted).exists()
    assert (inbox / held / "0").exists() and (inbox / ".spool").is_dir()
    (event,) = [e for e in _audit_events(tmp_path / "audit.jsonl") if e["event"] == "inbox_purged"]
    assert (event["transfer"], event["reason"], event["bytes"], event["resumed"]) == (
        interrupted,
        "max_age",
        128,
        True,
    )
    assert retention.recover() == 0


def test_a_failed_sweep_is_logged_and_the_task_goes_on(
    records: TransferRecords, audit: AuditLog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def broken_ledger() -> dict[str, tuple[int, int, float | None]]:
        nonlocal calls
        calls += 1
        raise OSError("ledger unreadable")

    retention = Retention(
        InboxConfig(purge_after_forward_s=0, sweep_interval_s=0.1),
        records=records,
        inbox_root=tmp_path / "inbox",
        audit=audit,
        outcomes=broken_ledger,
    )

    async def run_until_two_sweeps() -> None:
        task = asyncio.create_task(retention.run())
        while calls < 2:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(run_until_two_sweeps(), 10))
    assert "inbox retention sweep failed" in caplog.text


# ---- [inbox] --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("etc-qlink")
    shutil.copy(REPO / "systemd" / "examples" / "hospital-a.toml", root / "hospital-a.toml")
    write_demo_pki(root / "pki", ["hospital-a", "hospital-b"], ["pacs-a", "ehr-a", "pacs-b"])
    (root / "psk").mkdir()
    (root / "psk" / "hospital-a--hospital-b.key").write_bytes(random.Random(7).randbytes(1024))
    return root / "hospital-a.toml"


def _with_inbox(example: Path, section: str) -> Path:
    path = example.with_name(f"inbox-{abs(hash(section))}.toml")
    path.write_text(example.read_text() + "\n[inbox]\n" + section + "\n")
    return path


def test_retention_is_off_without_the_table(example: Path) -> None:
    inbox = load_facility_config(example).inbox
    assert inbox == InboxConfig() and not inbox.enabled


def test_the_table_sets_the_policy(example: Path) -> None:
    path = _with_inbox(example, "purge_after_fetch_s = 86400\nmax_age_s = 2592000.5\nsweep_interval_s = 5")
    inbox = load_facility_config(path).inbox
    assert inbox.enabled
    assert (inbox.purge_after_fetch_s, inbox.purge_after_forward_s, inbox.max_age_s) == (
        86400,
        None,
        2592000.5,
    )
    assert inbox.sweep_interval_s == 5


def test_the_inbox_directory_may_be_placed_elsewhere_without_turning_retention_on(example: Path) -> None:
    assert load_facility_config(example).inbox.dir is None
    inbox = load_facility_config(_with_inbox(example, 'dir = "shared/qlink-inbox"')).inbox
    assert inbox.dir == example.parent / "shared" / "qlink-inbox" and not inbox.enabled
    assert load_facility_config(_with_inbox(example, 'dir = "/srv/inbox"')).inbox.dir == Path("/srv/inbox")


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("dir = ''", "inbox.dir"),
        ("dir = 7", "inbox.dir"),
        ("purge_after_fetch_s = -1", "inbox.purge_after_fetch_s"),
        ("purge_after_forward_s = 'soon'", "inbox.purge_after_forward_s"),
        ("max_age_s = 1e12", "inbox.max_age_s"),
        ("max_age_s = nan", "inbox.max_age_s"),
        ("sweep_interval_s = 0", "inbox.sweep_interval_s"),
        ("purge_after_fetch = 10", "inbox.purge_after_fetch"),
    ],
)
def test_a_mistake_names_its_key(example: Path, line: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_facility_config(_with_inbox(example, line))
    assert caught.value.field == field, caught.value
