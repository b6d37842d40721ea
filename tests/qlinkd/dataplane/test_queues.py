"""The data plane's queues as the operator sees them, read from real transfer records: queued, stuck
(older than the threshold) and refused outgoing transfers with their reasons, unfetched incoming ones;
their JSON round trip, the `qlink status` rows, and the gauges a scrape sets from them."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from qlinkmed.client.commands.status import format_queue
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.queues import REFUSED_WINDOW_S, STUCK_AFTER_S, queue_statuses
from qlinkmed.qlinkd.dataplane.records import Outgoing, TransferRecords
from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.link.status import QueueStatus
from qlinkmed.qlinkd.ops.config import load_facility_config
from qlinkmed.qlinkd.ops.metrics import LinkMetrics
from qlinkmed.qlinkd.testbed.deployment import write_loopback_deployment

A, B, C = "hospital-a", "hospital-b", "hospital-c"


def _manifest(sender: str, recipient: str, size: int, created: float) -> Manifest:
    data = b"x" * size
    return Manifest(
        transfer_id=str(uuid.uuid4()),
        sender=sender,
        recipient=recipient,
        kind=TransferKind.STUDY,
        files=(FileEntry("IM1.dcm", size, hashlib.sha256(data).hexdigest(), "application/dicom"),),
        created=created,
    )


def test_queues_count_bytes_age_stuck_refused_and_unfetched(tmp_path: Path) -> None:
    records = TransferRecords.open(tmp_path / "transfers.sqlite3")
    now = time.time()
    old = _manifest(A, B, 1000, now - 3600)  # an hour in the queue: stuck
    new = _manifest(A, B, 500, now - 5)
    refused = _manifest(A, B, 10, now - 60)
    for m in (old, new, refused):
        records.queue(m)
    records.finish_outgoing(refused.transfer_id, Outgoing.REFUSED, "study refused: not DICOM")
    delivered = _manifest(A, B, 10, now - 30)
    records.queue(delivered)
    records.finish_outgoing(delivered.transfer_id, Outgoing.DELIVERED)
    # From C: two delivered, one fetched since.
    inbound = [_manifest(C, A, 10, now) for _ in range(2)]
    for m in inbound:
        records.record_ehr(m, blob=b"sealed", key=b"k" * 32, forms="hl7", reason=None)
    records.mark_fetched(inbound[0].transfer_id)

    (b, c) = queue_statuses(
        records,
        [B, C],
        senders={B: "cannot reach 127.0.0.1:9: Connection refused", C: "idle"},
        failing_since={B: now - 120},
        now=now,
        stuck_after_s=600.0,
    )
    assert (b.queued, b.queued_bytes, b.stuck) == (2, 1500, 1)
    assert b.oldest_queued_age_s is not None and 3599 <= b.oldest_queued_age_s <= 3601
    assert b.sender.startswith("cannot reach") and b.failing_since is not None
    assert b.refused == 1 and b.refused_window_s == REFUSED_WINDOW_S
    (why,) = b.refused_recent
    assert why.transfer_id == refused.transfer_id and why.reason == "study refused: not DICOM"
    assert b.unfetched == 0 and b.oldest_unfetched_age_s is None
    assert (c.queued, c.oldest_queued_age_s, c.failing_since, c.refused) == (0, None, None, 0)
    assert c.unfetched == 1 and c.oldest_unfetched_age_s is not None and c.oldest_unfetched_age_s >= 0

    # A refusal older than the window is history, not a task.
    later = queue_statuses(records, [B], senders={}, failing_since={}, now=now + REFUSED_WINDOW_S + 60)
    assert later[0].refused == 0 and later[0].refused_recent == () and later[0].sender == "no data address"

    # The client parses exactly what the daemon sends.
    assert QueueStatus.from_json(b.to_json()) == b

    rows = dict(format_queue(b))
    assert rows["queue"].startswith("2 transfer(s), 1.5 kB, oldest 60 min")
    assert "1 queued longer than 10 min; sender: cannot reach" in rows["STUCK"]
    assert "since" in rows["STUCK"] and rows["inbox"] == "none unfetched"
    assert "1 transfer(s) in the last" in rows["REFUSED"]
    assert any("study refused: not DICOM" in line for line in (v for k, v in format_queue(b) if k == ""))
    assert dict(format_queue(c))["inbox"].startswith("1 unfetched, oldest")

    metrics = LinkMetrics(CollectorRegistry())
    metrics.set_queues([b, c], {B: 120.0})
    value = metrics.registry.get_sample_value
    assert value("qlink_data_queued", {"peer": B}) == 2
    assert value("qlink_data_queued_bytes", {"peer": B}) == 1500
    assert value("qlink_data_stuck", {"peer": B}) == 1
    assert value("qlink_data_refused_recent", {"peer": B}) == 1
    assert value("qlink_data_sender_failing_seconds", {"peer": B}) == 120
    assert value("qlink_data_sender_failing_seconds", {"peer": C}) == 0
    assert value("qlink_data_oldest_queued_age_seconds", {"peer": C}) == 0
    assert value("qlink_inbox_unfetched", {"peer": C}) == 1
    records.close()


def test_unfetched_counts_only_delivered_unfetched_transfers(tmp_path: Path) -> None:
    records = TransferRecords.open(tmp_path / "transfers.sqlite3")
    refused = _manifest(C, A, 10, time.time())
    records.record_ehr(refused, blob=None, key=None, forms=None, reason="not HL7")
    receiving = _manifest(C, A, 10, time.time())
    records.begin_incoming(receiving)
    assert records.unfetched() == {}
    records.close()


def test_the_stuck_threshold_is_configurable_and_checked(tmp_path: Path) -> None:
    deployment = write_loopback_deployment(tmp_path / "deployment")
    path = deployment.facilities[A]
    original = path.read_text()
    assert "[facility]\n" in original
    assert load_facility_config(path).queue_stuck_after_s == STUCK_AFTER_S
    path.write_text(original.replace("[facility]\n", "[facility]\nqueue_stuck_after_s = 1800\n"))
    assert load_facility_config(path).queue_stuck_after_s == 1800
    for bad in ("0", "1e9", "nan", '"ten"'):
        path.write_text(original.replace("[facility]\n", f"[facility]\nqueue_stuck_after_s = {bad}\n"))
        with pytest.raises(ConfigError) as caught:
            load_facility_config(path)
        assert caught.value.field == "facility.queue_stuck_after_s", bad
