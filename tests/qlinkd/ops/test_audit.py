"""The audit log: one fsynced JSON line per event, a hash chain that exposes edits, no key material."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qlinkmed.qlinkd.errors import AuditAnchorError, AuditError
from qlinkmed.qlinkd.ops import audit as audit_module
from qlinkmed.qlinkd.ops.audit import (
    GENESIS,
    PEER_HEAD,
    Anchor,
    AuditHead,
    AuditLog,
    latest_peer_heads,
    peer_anchors,
    verify,
)


def _clock() -> Callable[[], dt.datetime]:
    ticks = iter(range(10_000))
    start = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
    return lambda: start + dt.timedelta(seconds=next(ticks))


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def log(log_path: Path) -> Iterator[AuditLog]:
    with AuditLog.open(log_path, facility="hospital-a", clock=_clock()) as opened:
        yield opened


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_records_are_json_lines_in_a_hash_chain(log: AuditLog, log_path: Path) -> None:
    log.record("keys_delivered", sae="pacs-a", slave="pacs-b", key_ids=["k1", "k2"], bits=512)
    head = log.record("link_up", peer="hospital-b")

    lines = _lines(log_path)
    first, second = (json.loads(line) for line in lines)
    assert list(first) == ["ts", "seq", "event", "facility", "sae", "slave", "key_ids", "bits", "prev"]
    assert first["ts"] == "2025-03-01T12:00:00.000000Z"
    assert second["ts"] == "2025-03-01T12:00:01.000000Z"
    assert (first["seq"], second["seq"]) == (1, 2)
    assert first["facility"] == "hospital-a" and first["key_ids"] == ["k1", "k2"]
    assert first["prev"] == GENESIS
    assert second["prev"] == hashlib.sha256(lines[0]).hexdigest()
    assert head == AuditHead(seq=2, digest=hashlib.sha256(lines[1]).hexdigest())
    assert verify(log_path, expected_head=head) == head


def test_file_is_0600_even_if_it_existed_wider(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.jsonl"
    AuditLog.open(fresh, facility="a").close()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600

    existing = tmp_path / "existing.jsonl"
    existing.write_bytes(b"")
    existing.chmod(0o644)
    AuditLog.open(existing, facility="a").close()
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600


def test_each_record_is_fsynced_before_returning(log: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        # The line must already be in the file when fsync is asked for.
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(audit_module.os, "fsync", spy)
    log.record("a")
    log.record("b")
    assert len(synced) == 2 and 0 < synced[0] < synced[1] == log.path.stat().st_size


def test_reopening_continues_the_chain(log_path: Path) -> None:
    with AuditLog.open(log_path, facility="hospital-a") as first:
        first.record("started")
        first.record("link_up", peer="hospital-b")
    with AuditLog.open(log_path, facility="hospital-a") as second:
        assert second.head.seq == 2
        head = second.record("stopped")
    assert head.seq == 3
    assert verify(log_path, expected_head=head) == head


def test_an_edited_line_is_detected(log: AuditLog, log_path: Path) -> None:
    for sae in ("pacs-a", "ehr-a", "pacs-a"):
        log.record("keys_delivered", sae=sae, count=1)
    lines = _lines(log_path)
    lines[1] = lines[1].replace(b'"ehr-a"', b'"pacs-z"')
    log_path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(AuditError) as info:
        verify(log_path)
    assert info.value.line == 3


def test_a_deleted_line_is_detected(log: AuditLog, log_path: Path) -> None:
    for n in range(3):
        log.record("tick", n=n)
    lines = _lines(log_path)
    log_path.write_bytes(lines[0] + b"\n" + lines[2] + b"\n")
    with pytest.raises(AuditError, match="seq") as info:
        verify(log_path)
    assert info.value.line == 2


def test_truncation_is_detected_against_a_kept_head(log: AuditLog, log_path: Path) -> None:
    log.record("one")
    head = log.record("two")
    log_path.write_bytes(_lines(log_path)[0] + b"\n")
    assert verify(log_path).seq == 1  # the chain alone cannot see a cut at the end
    with pytest.raises(AuditError, match="truncated"):
        verify(log_path, expected_head=head)


def test_a_torn_last_line_is_reported(log: AuditLog, log_path: Path) -> None:
    log.record("one")
    with log_path.open("ab") as handle:
        handle.write(b'{"ts":"2025')
    with pytest.raises(AuditError) as info:
        verify(log_path)
    assert info.value.line == 2
    with pytest.raises(AuditError, match="incomplete"):
        AuditLog.open(log_path, facility="hospital-a")


@pytest.mark.parametrize("name", ["key", "keys", "key_material", "secret", "psk", "preshared_key", "seq"])
def test_refuses_secret_or_reserved_field_names(log: AuditLog, log_path: Path, name: str) -> None:
    with pytest.raises(AuditError):
        log.record("keys_delivered", **{name: "x"})
    assert log_path.read_bytes() == b""
    assert log.head.seq == 0


def test_refuses_bytes_values_without_echoing_them(log: AuditLog, log_path: Path) -> None:
    with pytest.raises(AuditError) as info:
        log.record("keys_delivered", key_id=b"\x13\x37" * 8)
    assert "1337" not in str(info.value) and "\\x13" not in str(info.value)
    assert log_path.read_bytes() == b""


def test_closed_log_refuses_records(log_path: Path) -> None:
    opened = AuditLog.open(log_path, facility="a")
    opened.close()
    with pytest.raises(AuditError, match="closed"):
        opened.record("late")


def _rechain(records: list[dict[str, object]]) -> bytes:
    """Lines for `records` with every prev re-hashed (seq left as given)."""
    out, prev = b"", GENESIS
    for record in records:
        line = json.dumps({**record, "prev": prev}, separators=(",", ":")).encode()
        out += line + b"\n"
        prev = hashlib.sha256(line).hexdigest()
    return out


def test_a_gap_in_seq_is_reported_even_with_prev_rebuilt(log: AuditLog, log_path: Path) -> None:
    for n in range(3):
        log.record("tick", n=n)
    records = [json.loads(line) for line in _lines(log_path)]
    log_path.write_bytes(_rechain([records[0], records[2]]))  # seq 1, 3: prev chains, seq does not
    with pytest.raises(AuditError, match="seq is 3, expected 2") as info:
        verify(log_path)
    assert info.value.line == 2 and not isinstance(info.value, AuditAnchorError)


def test_a_bad_prev_is_reported(log: AuditLog, log_path: Path) -> None:
    log.record("one")
    log.record("two")
    lines = _lines(log_path)
    record = json.loads(lines[1])
    record["prev"] = "f" * 64
    log_path.write_bytes(lines[0] + b"\n" + json.dumps(record, separators=(",", ":")).encode() + b"\n")
    with pytest.raises(AuditError, match="prev does not match") as info:
        verify(log_path)
    assert info.value.line == 2


def _ticks(log: AuditLog, count: int) -> list[AuditHead]:
    return [log.record("tick", n=n) for n in range(count)]


def test_anchors_that_the_log_still_holds_pass(log: AuditLog, log_path: Path) -> None:
    heads = _ticks(log, 5)
    anchors = [Anchor(holder="hospital-b", head=heads[1]), Anchor(holder="hospital-c", head=heads[4])]
    assert verify(log_path, anchors=anchors) == heads[4]


def test_a_missing_tail_is_named_against_the_anchor(log: AuditLog, log_path: Path) -> None:
    heads = _ticks(log, 5)
    log_path.write_bytes(b"".join(line + b"\n" for line in _lines(log_path)[:3]))
    anchors = [Anchor(holder="hospital-b", head=heads[1]), Anchor(holder="hospital-b", head=heads[4])]
    assert verify(log_path).seq == 3  # the chain alone is fooled
    with pytest.raises(AuditAnchorError) as info:
        verify(log_path, anchors=anchors)
    err = info.value
    assert "ends at seq 3 but hospital-b holds an anchor at seq 5: the tail is missing" in err.message
    assert (err.holder, err.seq, err.found, err.ends_at, err.last_good) == ("hospital-b", 5, None, 3, 2)


def test_a_rebuilt_chain_is_caught_by_the_first_anchor_it_changed(log: AuditLog, log_path: Path) -> None:
    heads = _ticks(log, 6)
    records = [json.loads(line) for line in _lines(log_path)]
    del records[3]  # seq 4 removed, the rest renumbered and re-hashed: a chain that verifies
    for seq, record in enumerate(records, start=1):
        record["seq"] = seq
    log_path.write_bytes(_rechain(records))
    assert verify(log_path).seq == 5
    anchors = [Anchor(holder="hospital-b", head=h) for h in (heads[1], heads[2], heads[4])]
    with pytest.raises(AuditAnchorError) as info:
        verify(log_path, anchors=anchors)
    err = info.value
    assert (err.seq, err.last_good, err.line) == (5, 3, 5) and err.found is not None
    assert "record 5 is not the one hospital-b anchored" in err.message and "after seq 3" in err.message


def test_digest_at_reads_back_any_record(
    log: AuditLog, log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_module, "_TAIL_CHUNK", 100)  # several chunks: lines cross chunk edges
    log.record("nested", detail={"seq": 2, "x": 1})  # a nested "seq" is no record number
    heads = _ticks(log, 20)
    for head in (heads[0], heads[9], heads[19]):
        assert log.digest_at(head.seq) == head.digest
    assert log.digest_at(22) is None
    assert log.digest_at(2) == heads[0].digest


def test_records_from_many_threads_keep_one_chain(log: AuditLog, log_path: Path) -> None:
    # The daemon records from its event loop and from the data plane's worker threads at once.
    def work(name: str) -> None:
        for n in range(40):
            log.record("tick", worker=name, n=n)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert verify(log_path) == log.head and log.head.seq == 240


def test_peer_heads_are_read_back_latest_first_and_all_for_the_peer_log_check(
    log: AuditLog, log_path: Path
) -> None:
    log.record(PEER_HEAD, peer="hospital-b", head_seq=3, head_digest="b" * 64)
    log.record(PEER_HEAD, peer="hospital-c", head_seq=7, head_digest="c" * 64)
    log.record(PEER_HEAD, peer="hospital-b", head_seq=9, head_digest="d" * 64)
    log.record("link_down", peer="hospital-b")
    heads = latest_peer_heads(log_path, ["hospital-b", "hospital-c", "hospital-d"])
    assert heads == {
        "hospital-b": AuditHead(seq=9, digest="d" * 64),
        "hospital-c": AuditHead(seq=7, digest="c" * 64),
    }
    assert [a.head.seq for a in peer_anchors(log_path, "hospital-b")] == [3, 9]
    assert {a.holder for a in peer_anchors(log_path, "hospital-b")} == {"hospital-a"}
