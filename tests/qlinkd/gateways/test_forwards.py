"""The forwarding ledger and the loop that serves one destination from it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from qlinkmed.qlinkd.gateways.forwarder import Attempt, Forwarder, Verdict
from qlinkmed.qlinkd.gateways.forwards import LEDGER_FILE, Forward, ForwardLedger, ForwardState
from qlinkmed.qlinkd.ops.backoff import Backoff
from tests.polling import wait_for_async


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Iterator[ForwardLedger]:
    opened = ForwardLedger.open(tmp_path / LEDGER_FILE, clock=clock)
    yield opened
    opened.close()


def test_add_is_idempotent_and_keeps_arrival_order(ledger: ForwardLedger) -> None:
    assert ledger.add("dicom", "t1", ["PACS1", "PACS2"]) == 2
    assert ledger.add("dicom", "t2", ["PACS1"]) == 1
    assert ledger.add("dicom", "t1", ["PACS1", "PACS2"]) == 0
    assert [f.transfer_id for f in ledger.pending("dicom", "PACS1")] == ["t1", "t2"]
    assert [f.transfer_id for f in ledger.pending("dicom", "PACS2")] == ["t1"]
    assert ledger.known("dicom", "t2") and not ledger.known("mllp", "t2")


def test_a_failed_head_keeps_its_place_and_waits(ledger: ForwardLedger, clock: Clock) -> None:
    ledger.add("mllp", "t1", ["engine"])
    ledger.add("mllp", "t2", ["engine"])
    head = ledger.head("mllp", "engine")
    assert head is not None and head.transfer_id == "t1"
    ledger.failed(head, "timeout", retry_in_s=30.0)
    again = ledger.head("mllp", "engine")
    assert again is not None and again.transfer_id == "t1"
    assert again.attempts == 1 and again.last_error == "timeout" and again.next_attempt == clock.now + 30.0


def test_delivered_and_parked_leave_the_line_and_show_in_summaries(
    ledger: ForwardLedger, clock: Clock
) -> None:
    for tid in ("t1", "t2", "t3"):
        ledger.add("dicom", tid, ["PACS"])
    first = ledger.head("dicom", "PACS")
    assert first is not None
    ledger.delivered(first)
    second = ledger.head("dicom", "PACS")
    assert second is not None and second.transfer_id == "t2"
    ledger.parked(second, "0xA700 out of resources")
    (summary,) = ledger.summaries()
    assert (summary.pending, summary.parked, summary.delivered) == (1, 1, 1)
    assert summary.oldest_pending == clock.now
    parked = ledger.get("dicom", "PACS", "t2")
    assert parked is not None and parked.state is ForwardState.PARKED and parked.finished == clock.now
    assert [f.transfer_id for f in ledger.retry_parked("dicom")] == ["t2"]
    assert [f.transfer_id for f in ledger.pending("dicom", "PACS")] == ["t2", "t3"]


def test_a_release_takes_only_the_rows_named_and_wakes_only_their_forwarders(ledger: ForwardLedger) -> None:
    woken: list[str] = []
    for name in ("PACS", "VNA"):
        ledger.watch("dicom", name, partial(woken.append, name))
    for tid in ("t1", "t2", "t3"):
        ledger.add("dicom", tid, ["PACS", "VNA"])
    for name in ("PACS", "VNA"):
        for forward in ledger.pending("dicom", name):
            ledger.parked(forward, "0xC000 cannot understand")
    assert ledger.retry_parked("mllp") == []
    assert woken == []
    released = ledger.retry_parked("dicom", "PACS", "t2")
    assert [(f.destination, f.transfer_id, f.state) for f in released] == [
        ("PACS", "t2", ForwardState.PARKED)
    ]
    assert woken == ["PACS"]
    assert [f.transfer_id for f in ledger.rows(state=ForwardState.PARKED, destination="PACS")] == ["t1", "t3"]
    assert [f.transfer_id for f in ledger.rows(state=ForwardState.PENDING)] == ["t2"]
    assert len(ledger.retry_parked("dicom", "VNA")) == 3
    assert woken == ["PACS", "VNA"]
    assert ledger.rows(state=ForwardState.PARKED, limit=1)[0].transfer_id == "t1"


def test_purge_drops_only_finished_rows_older_than_asked(ledger: ForwardLedger, clock: Clock) -> None:
    ledger.add("dicom", "old", ["PACS"])
    ledger.add("dicom", "waiting", ["PACS"])
    head = ledger.head("dicom", "PACS")
    assert head is not None
    ledger.delivered(head)
    clock.now += 100.0
    assert ledger.purge_finished(older_than_s=200.0) == []
    purged = ledger.purge_finished(older_than_s=50.0)
    assert [f.transfer_id for f in purged] == ["old"]
    assert ledger.get("dicom", "PACS", "old") is None
    assert ledger.head("dicom", "PACS") is not None


def test_a_long_error_from_a_destination_is_clipped(ledger: ForwardLedger) -> None:
    ledger.add("fhir", "t1", ["server"])
    head = ledger.head("fhir", "server")
    assert head is not None
    ledger.failed(head, "x" * 10_000, retry_in_s=1.0)
    kept = ledger.head("fhir", "server")
    assert kept is not None and kept.last_error is not None and len(kept.last_error) == 500


def test_the_ledger_survives_reopening(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / LEDGER_FILE
    first = ForwardLedger.open(path, clock=clock)
    first.add("mllp", "t1", ["engine"])
    first.close()
    second = ForwardLedger.open(path, clock=clock)
    try:
        head = second.head("mllp", "engine")
        assert head is not None and head.transfer_id == "t1" and head.state is ForwardState.PENDING
    finally:
        second.close()


@pytest.mark.asyncio
async def test_forwarder_keeps_order_retries_and_parks(tmp_path: Path) -> None:
    ledger = ForwardLedger.open(tmp_path / LEDGER_FILE)
    tried: list[str] = []
    answers = {"t1": [Verdict.RETRY, Verdict.DELIVERED], "t2": [Verdict.PARK], "t3": [Verdict.DELIVERED]}
    outcomes: list[tuple[str, Verdict]] = []

    async def deliver(forward: Forward) -> Attempt:
        tried.append(forward.transfer_id)
        return Attempt(answers[forward.transfer_id].pop(0), f"said {forward.transfer_id}")

    forwarder = Forwarder(
        ledger,
        "mllp",
        "engine",
        deliver,
        on_outcome=lambda f, a: outcomes.append((f.transfer_id, a.verdict)),
        backoff=Backoff(first_s=0.01, longest_s=0.01),
    )
    for tid in ("t1", "t2", "t3"):
        ledger.add("mllp", tid, ["engine"])
    task = asyncio.create_task(forwarder.run())
    try:
        await wait_for_async(lambda: len(outcomes) == 4, "four outcomes")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # t1 is retried before t2 is tried at all: a later message never overtakes one still owed.
    assert tried == ["t1", "t1", "t2", "t3"]
    assert outcomes == [
        ("t1", Verdict.RETRY),
        ("t1", Verdict.DELIVERED),
        ("t2", Verdict.PARK),
        ("t3", Verdict.DELIVERED),
    ]
    parked = ledger.get("mllp", "engine", "t2")
    assert parked is not None and parked.last_error == "said t2"
    ledger.close()


@pytest.mark.asyncio
async def test_forwarder_wakes_on_new_work_and_treats_connection_errors_as_retry(tmp_path: Path) -> None:
    ledger = ForwardLedger.open(tmp_path / LEDGER_FILE)
    calls = 0

    async def deliver(forward: Forward) -> Attempt:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionRefusedError("engine down")
        return Attempt(Verdict.DELIVERED)

    forwarder = Forwarder(ledger, "mllp", "engine", deliver, backoff=Backoff(first_s=0.01, longest_s=0.01))
    task = asyncio.create_task(forwarder.run())
    try:
        ledger.add("mllp", "late", ["engine"])
        forwarder.wake()
        await wait_for_async(
            lambda: (
                (f := ledger.get("mllp", "engine", "late")) is not None and f.state is ForwardState.DELIVERED
            ),
            "the late transfer delivered",
        )
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    done = ledger.get("mllp", "engine", "late")
    assert done is not None and done.attempts == 2
    ledger.close()
