"""The data plane below the daemon: manifests, the inbox's spool and exactly-once delivery, and whole
sender/receiver sessions over loopback sockets, with a man in the middle who tampers with, replays,
reorders or drops frames. A tampered frame is rejected and reported, no corrupt byte is ever written, and
the transfer still arrives once, bit-exact, after the sender reconnects with a fresh key."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from qlinkmed.client.commands.status import format_pq_hybrid, format_status
from qlinkmed.proto import qlinkmed_wire_pb2 as pb
from qlinkmed.qcore.errors import IntegrityFailure
from qlinkmed.qlinkd.dataplane import sender as sender_module
from qlinkmed.qlinkd.dataplane import wire as dm
from qlinkmed.qlinkd.dataplane.ehr_queue import EhrQueue
from qlinkmed.qlinkd.dataplane.inbox import Inbox, TransferRefused, advance_past_complete
from qlinkmed.qlinkd.dataplane.keys import SESSION_KEY_BITS, SessionKeyed
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.outbox import Outbox
from qlinkmed.qlinkd.dataplane.pads import PAD_KEY_BYTES, ReceiverPads, SenderPads
from qlinkmed.qlinkd.dataplane.receiver import ReceiverContext, ReceiverSession
from qlinkmed.qlinkd.dataplane.records import SCHEMA_VERSION, Incoming, Outgoing, TransferRecords
from qlinkmed.qlinkd.dataplane.sender import SenderContext, SenderSession
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.dataplane.spool import Spool
from qlinkmed.qlinkd.errors import (
    FrameError,
    InsufficientKey,
    IntegrityError,
    KeyNotFound,
    Rejected,
    SessionClosed,
    StoreError,
    TransferError,
)
from qlinkmed.qlinkd.link.status import DataPeerStatus
from qlinkmed.qlinkd.ops.audit import AuditLog
from qlinkmed.qlinkd.ops.metrics import LinkMetrics
from qlinkmed.qlinkd.ops.pki import client_context, server_context, write_demo_pki
from qlinkmed.qlinkd.ops.toml_reader import Address
from qlinkmed.qlinkd.pool.values import DeliveredKey
from qlinkmed.qlinkd.seal import aead
from qlinkmed.qlinkd.seal.constants import AEAD_VERSION, OTP_RANGE_VERSION, OTP_VERSION
from tests.dicom_factory import make_ct_study
from tests.paths import DATA
from tests.polling import wait_for_async

A, B = "hospital-a", "hospital-b"


class PairedKeys:
    """Both ends' view of one shared pool, in memory: a key taken at one end can be fetched once at the
    other, as the ETSI notice path does between two daemons."""

    def __init__(self, budget_bits: int = 1 << 30) -> None:
        self.held: dict[str, bytes] = {}
        self.budget_bits = budget_bits
        self.taken: list[int] = []
        self.issued: dict[str, bytes] = {}
        """Every key ever taken, fetched or not: what an adversary who broke QKD would hold."""

    name = "emulated"

    async def take(self, peer: str, size_bits: int, *, single: bool = False) -> list[DeliveredKey]:
        if size_bits > self.budget_bits:
            raise InsufficientKey(requested_bits=size_bits, available_bits=self.budget_bits)
        self.budget_bits -= size_bits
        self.taken.append(size_bits)
        key = DeliveredKey(str(uuid.uuid4()), secrets.token_bytes(size_bits // 8))
        self.held[key.key_id] = key.material
        self.issued[key.key_id] = key.material
        return [key]

    async def fetch(self, peer: str, key_ids: list[str], timeout: float) -> list[DeliveredKey]:
        missing = tuple(k for k in key_ids if k not in self.held)
        if missing:
            raise KeyNotFound(missing)
        return [DeliveredKey(k, self.held.pop(k)) for k in key_ids]


def _manifest(files: list[tuple[str, bytes, str]], kind: TransferKind = TransferKind.STUDY) -> Manifest:
    return Manifest(
        transfer_id=str(uuid.uuid4()),
        sender=A,
        recipient=B,
        kind=kind,
        files=tuple(FileEntry(n, len(d), hashlib.sha256(d).hexdigest(), c) for n, d, c in files),
        created=time.time(),
    )


# ---- manifests ------------------------------------------------------------------------------------------


def test_manifest_round_trips_and_hashes_identically() -> None:
    m = _manifest([("a.dcm", b"x" * 10, "dicom"), ("b.dcm", b"", "dicom")])
    again = Manifest.from_json(m.to_json())
    assert again == m and again.sha256() == m.sha256()
    assert m.total_bytes == 10
    assert m.file_starts() == [0, 10, 10]


@pytest.mark.parametrize(
    ("name", "problem"),
    [("../etc/passwd", "bad name"), ("/a/b", "bad name"), ("..", "bad name"), ("x\x00y", "bad name")],
)
def test_manifest_refuses_names_that_could_be_paths(name: str, problem: str) -> None:
    with pytest.raises(TransferError, match=problem):
        _manifest([(name, b"1", "dicom")])


def test_manifest_refuses_duplicates_bad_hashes_and_multi_file_ehr() -> None:
    with pytest.raises(TransferError, match="appears twice"):
        _manifest([("a", b"1", "dicom"), ("a", b"2", "dicom")])
    with pytest.raises(TransferError, match="exactly one"):
        _manifest([("a", b"1", "fhir"), ("b", b"2", "fhir")], TransferKind.EHR)
    good = _manifest([("a", b"1", "dicom")]).to_json()
    with pytest.raises(TransferError, match="malformed manifest"):
        Manifest.from_json(good.replace(b'"files":[[', b'"files":[[1,'))
    with pytest.raises(TransferError, match="sha256"):
        Manifest.from_json(good.replace(hashlib.sha256(b"1").hexdigest().encode(), b"00" * 31 + b"zz"))


def test_empty_files_are_skipped_by_the_same_rule_at_both_ends() -> None:
    m = _manifest([("a", b"", "dicom"), ("b", b"12", "dicom"), ("c", b"", "dicom")])
    assert advance_past_complete(m, 0, 0) == (1, 0)
    assert advance_past_complete(m, 1, 2) == (3, 0)


def test_data_messages_refuse_garbage() -> None:
    with pytest.raises(FrameError):
        dm.decode(b"\xff\xff\xff")
    with pytest.raises(FrameError, match="no body"):
        dm.decode(b"")
    with pytest.raises(FrameError, match="not a UUID"):
        dm.decode(dm.chunk("not-a-uuid", 0, 0, b"x"))
    with pytest.raises(FrameError, match="pad key ID"):
        dm.decode(dm.pad_key("not-a-uuid"))
    with pytest.raises(FrameError, match="version 7"):
        dm.decode_open(pb.DataOpen(version=7, facility=A, key_ids=[str(uuid.uuid4())]).SerializeToString())
    with pytest.raises(FrameError, match="names 0 key IDs"):
        dm.decode_open(pb.DataOpen(version=dm.DATA_VERSION, facility=A).SerializeToString())


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, (1 << 20) - 1024, (1 << 21) + 1])
@pytest.mark.parametrize(("index", "offset"), [(0, 0), (3, 12_345), (2**32 - 1, 2**63)])
def test_a_chunk_is_encoded_exactly_as_protobuf_encodes_it(size: int, index: int, offset: int) -> None:
    # The data field is appended by hand for speed; the bytes must be protobuf's own, varint edges included.
    data = os.urandom(size)
    tid = str(uuid.uuid4())
    body = pb.Chunk(transfer_id=tid, file_index=index, offset=offset, data=data)
    assert dm.chunk(tid, index, offset, data) == pb.DataMessage(chunk=body).SerializeToString()
    assert dm.decode(dm.chunk(tid, index, offset, data)).chunk == body


# ---- the records ----------------------------------------------------------------------------------------

_V1_SCHEMA = """
CREATE TABLE outgoing (transfer_id TEXT PRIMARY KEY, peer TEXT NOT NULL, seq INTEGER NOT NULL,
    state TEXT NOT NULL, manifest BLOB NOT NULL, queued_at REAL NOT NULL, finished_at REAL,
    reason TEXT, body BLOB);
CREATE INDEX outgoing_peer ON outgoing (peer, state, seq);
CREATE TABLE incoming (transfer_id TEXT PRIMARY KEY, peer TEXT NOT NULL, state TEXT NOT NULL,
    manifest BLOB NOT NULL, file_index INTEGER NOT NULL, file_offset INTEGER NOT NULL,
    started_at REAL NOT NULL, delivered_at REAL, at_rest_key BLOB, forms TEXT, reason TEXT,
    fetched_at REAL, blob BLOB, spooled_at REAL);
PRAGMA user_version = 1;
"""


def _plan(records: TransferRecords, sql: str, *params: object) -> str:
    rows = records._db.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    return " | ".join(str(r[-1]) for r in rows)


def test_records_never_scan_or_sort_every_transfer(tmp_path: Path) -> None:
    # Queueing and both listings run on every call; with a scan they grow slower with the daemon's age.
    records = TransferRecords.open(tmp_path / "transfers.sqlite3")
    queued = "SELECT manifest FROM outgoing WHERE peer = ? AND state = ? ORDER BY seq"
    plans = [
        ("outgoing_seq", _plan(records, "SELECT COALESCE(MAX(seq), 0) + 1 FROM outgoing")),
        ("outgoing_peer", _plan(records, queued, B, "queued")),
        ("outgoing_seq", _plan(records, "SELECT manifest FROM outgoing ORDER BY seq DESC LIMIT 10")),
        ("incoming_started", _plan(records, "SELECT state FROM incoming ORDER BY started_at DESC LIMIT 10")),
    ]
    for index, plan in plans:
        assert f"INDEX {index}" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    records.close()


def test_records_of_schema_1_gain_the_indexes_and_keep_their_rows(tmp_path: Path) -> None:
    path = tmp_path / "transfers.sqlite3"
    m = _manifest([("bundle.json", b"{}", "fhir")], TransferKind.EHR)
    with contextlib.closing(sqlite3.connect(path)) as old:
        old.executescript(_V1_SCHEMA)
        old.execute(
            "INSERT INTO outgoing VALUES (?, ?, 7, 'queued', ?, ?, NULL, NULL, ?)",
            (m.transfer_id, B, m.to_json(), m.created, b"{}"),
        )
        old.commit()
    records = TransferRecords.open(path)
    assert records._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [q.transfer_id for q in records.queued(B)] == [m.transfer_id]
    assert records.body(m.transfer_id) == b"{}"
    assert "outgoing_seq" in _plan(records, "SELECT MAX(seq) FROM outgoing")
    m2 = _manifest([("b2.json", b"{}", "fhir")], TransferKind.EHR)
    records.queue(m2, b"{}")
    assert [q.transfer_id for q in records.queued(B)] == [m.transfer_id, m2.transfer_id]
    records.close()


def test_records_newer_than_this_daemon_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "transfers.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as newer:
        newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match=f"transfer schema {SCHEMA_VERSION + 1}"):
        TransferRecords.open(path)


# ---- the sender's EHR queue -----------------------------------------------------------------------------


def test_the_ehr_queue_starts_from_the_records_and_then_learns_each_message_as_it_is_queued(
    tmp_path: Path,
) -> None:
    records = TransferRecords.open(tmp_path / "transfers.sqlite3")
    older = _manifest([("old.json", b"{1}", "fhir")], TransferKind.EHR)
    study = _manifest([("ct.dcm", b"x", "dicom")])
    records.queue(older, b"{1}")
    records.queue(study)
    queue = EhrQueue(records, B)
    # Queued before the queue was first asked: the records are the only place that knows it.
    before = _manifest([("before.json", b"{2}", "fhir")], TransferKind.EHR)
    records.queue(before, b"{2}")
    queue.added(before, b"{2}")
    assert queue.next() == older  # the first question reads the records: EHR only, oldest first
    assert queue.next(skip={older.transfer_id}) == before
    newer = _manifest([("new.json", b"{3}", "fhir")], TransferKind.EHR)
    records.queue(newer, b"{3}")
    queue.added(newer, b"{3}")
    assert [queue.body(m) for m in (older, before, newer)] == [b"{1}", b"{2}", b"{3}"]
    queue.finished(older.transfer_id)
    queue.finished(before.transfer_id)
    assert queue.next() == newer
    queue.finished(newer.transfer_id)
    assert queue.next() is None
    records.close()


def test_the_ehr_queue_keeps_bodies_in_memory_only_up_to_its_budget(tmp_path: Path) -> None:
    records = TransferRecords.open(tmp_path / "transfers.sqlite3")
    queue = EhrQueue(records, B, budget_bytes=10)
    assert queue.next() is None
    # The records hold "stored"; the queue is told "memory": which one comes back says where it came from.
    small = _manifest([("s.json", b"stored", "fhir")], TransferKind.EHR)
    large = _manifest([("l.json", b"stored", "fhir")], TransferKind.EHR)
    records.queue(small, b"stored")
    records.queue(large, b"stored")
    queue.added(small, b"memory")
    queue.added(large, b"memory")  # 12 bytes held would pass the budget of 10
    assert (queue.body(small), queue.body(large)) == (b"memory", b"stored")
    queue.finished(small.transfer_id)  # its bytes leave the budget
    later = _manifest([("t.json", b"stored", "fhir")], TransferKind.EHR)
    records.queue(later, b"stored")
    queue.added(later, b"memory")
    assert queue.body(later) == b"memory"
    records.close()


# ---- the inbox ------------------------------------------------------------------------------------------


@pytest.fixture
def study() -> list[bytes]:
    return make_ct_study(3, 64, 64, seed=4)


def _sync(inbox: Inbox, transfer_id: str) -> tuple[int, int]:
    """What the receiver does in the background, in one blocking call: sync, record, the position."""
    point = inbox.sync_point(transfer_id)
    point.durable.result(timeout=30)
    inbox.record_durable(point)
    return point.file_index, point.offset


def _inbox(tmp_path: Path) -> tuple[Inbox, TransferRecords]:
    records = TransferRecords.open(tmp_path / "transfers.sqlite3")
    return Inbox(tmp_path / "inbox", records, facility=B), records


def test_the_inbox_is_private_to_the_daemon(tmp_path: Path) -> None:
    # Regression: inbox/ was created 0755 (only its .spool was 0700), so any local user could list it.
    _inbox(tmp_path)
    assert stat.S_IMODE((tmp_path / "inbox").stat().st_mode) == 0o700
    (tmp_path / "inbox").chmod(0o755)  # as an older version left it
    _inbox(tmp_path)
    assert stat.S_IMODE((tmp_path / "inbox").stat().st_mode) == 0o700


def test_inbox_resumes_from_the_last_fsynced_byte_after_a_crash(tmp_path: Path, study: list[bytes]) -> None:
    m = _manifest([(f"i{k}.dcm", d, "dicom") for k, d in enumerate(study)])
    inbox, records = _inbox(tmp_path)
    assert inbox.offer(m, A).state is None
    first = study[0]
    inbox.write_chunk(m.transfer_id, 0, 0, first[:1000])
    assert _sync(inbox, m.transfer_id) == (0, 1000)
    inbox.write_chunk(m.transfer_id, 0, 1000, first[1000:2000])  # written, never fsynced or acknowledged
    inbox.close_all()
    records.close()

    inbox, records = _inbox(tmp_path)
    where = inbox.offer(m, A)
    assert (where.state, where.file_index, where.offset) == (Incoming.RECEIVING, 0, 1000)
    with pytest.raises(TransferError, match="expected file 0 offset 1000"):
        inbox.write_chunk(m.transfer_id, 0, 2000, first[2000:3000])
    inbox.write_chunk(m.transfer_id, 0, 1000, first[1000:])
    second = study[1]
    inbox.write_chunk(m.transfer_id, 1, 0, second[:700])
    assert _sync(inbox, m.transfer_id) == (1, 700)
    inbox.write_chunk(m.transfer_id, 1, 700, b"\xff" * 300)  # junk never synced: cut on resume
    inbox.close_all()
    records.close()

    # The second crash falls inside file 1: the spool resumes there, its hash rebuilt from the kept bytes.
    inbox, records = _inbox(tmp_path)
    where = inbox.offer(m, A)
    assert (where.state, where.file_index, where.offset) == (Incoming.RECEIVING, 1, 700)
    assert (tmp_path / "inbox" / ".spool" / m.transfer_id).stat().st_size == len(first) + 700
    inbox.write_chunk(m.transfer_id, 1, 700, second[700:])
    assert inbox.write_chunk(m.transfer_id, 2, 0, study[2])
    assert _sync(inbox, m.transfer_id) == (3, 0)
    key = secrets.token_bytes(32)
    forms = inbox.store_at_rest(m, key)
    inbox.delivered(m.transfer_id, key=key, forms=forms)
    assert forms == "cipher-image"
    assert [inbox.read_file(m.transfer_id, k) for k in range(3)] == study
    again = inbox.offer(m, A)
    assert again.state is Incoming.DELIVERED  # exactly once: never received twice

    # A crash between the delivery and the spool's removal: the next start sweeps the spool away.
    spool = tmp_path / "inbox" / ".spool" / m.transfer_id
    assert spool.exists()
    inbox.close_all()
    records.close()
    inbox, records = _inbox(tmp_path)
    assert not spool.exists()
    assert inbox.read_file(m.transfer_id, 0) == study[0]


def test_inbox_refuses_a_file_whose_hash_is_wrong_and_keeps_nothing(
    tmp_path: Path, study: list[bytes]
) -> None:
    m = _manifest([("i0.dcm", study[0], "dicom"), ("i1.dcm", study[1], "dicom")])
    inbox, _ = _inbox(tmp_path)
    inbox.offer(m, A)
    forged = bytearray(study[1])
    forged[-1] ^= 1
    inbox.write_chunk(m.transfer_id, 0, 0, study[0])
    assert inbox.write_chunk(m.transfer_id, 1, 0, bytes(forged))
    _sync(inbox, m.transfer_id)
    with pytest.raises(TransferRefused, match=r"i1\.dcm: bytes differ from the manifest"):
        inbox.store_at_rest(m, secrets.token_bytes(32))
    inbox.refuse(m.transfer_id, "hash")
    assert not any((tmp_path / "inbox").glob(f"*{m.transfer_id}*"))
    assert not (tmp_path / "inbox" / ".spool" / m.transfer_id).exists()


def test_inbox_refuses_an_offer_from_the_wrong_facility(tmp_path: Path, study: list[bytes]) -> None:
    m = _manifest([("i0.dcm", study[0], "dicom")])
    inbox, _ = _inbox(tmp_path)
    with pytest.raises(TransferError, match="the connection is"):
        inbox.offer(m, "hospital-c")


# ---- session pad keys -----------------------------------------------------------------------------------


def _pad(size: int) -> DeliveredKey:
    return DeliveredKey(str(uuid.uuid4()), secrets.token_bytes(size))


def test_sender_pads_cut_in_order_and_discard_what_a_message_does_not_fit() -> None:
    pads = SenderPads()
    assert pads.cut(1) is None
    first, second = _pad(100), _pad(300)
    pads.add(first)
    pads.add(second)
    a = pads.cut(60)
    assert a is not None and (a.key_id, a.offset, a.material) == (first.key_id, 0, first.material[:60])
    b = pads.cut(30)
    assert b is not None and (b.key_id, b.offset, b.material) == (first.key_id, 60, first.material[60:90])
    assert pads.cut(301) is None and pads.left() == 310  # nothing fits: nothing consumed
    c = pads.cut(50)  # 10 bytes left of the first key: retired, discarded
    assert c is not None and (c.key_id, c.offset, c.material) == (second.key_id, 0, second.material[:50])
    assert pads.discarded_bytes == 10
    assert pads.close() == 10 + 250 and pads.left() == 0


async def _key_later(key: DeliveredKey) -> DeliveredKey:
    await asyncio.sleep(0.01)
    return key


async def _never_arrives(key_id: str) -> DeliveredKey:
    raise KeyNotFound((key_id,))


@pytest.mark.asyncio
async def test_receiver_pads_accept_each_offset_once_and_in_order() -> None:
    first, second = _pad(100), _pad(100)
    pads = ReceiverPads()
    pads.announce(first.key_id, _key_later(first))
    pads.announce(second.key_id, _key_later(second))
    assert await pads.cut(first.key_id, 0, 40) == first.material[:40]

    async def refused(key_id: str, offset: int, size: int) -> IntegrityFailure:
        with pytest.raises(IntegrityError) as info:
            await pads.cut(key_id, offset, size)
        return info.value.reason

    assert await refused(first.key_id, 0, 40) is IntegrityFailure.REPLAY
    assert await refused(first.key_id, 50, 10) is IntegrityFailure.REORDERED
    assert await refused(first.key_id, 40, 61) is IntegrityFailure.TOO_LARGE
    assert await refused(str(uuid.uuid4()), 0, 1) is IntegrityFailure.KEY_MISMATCH
    assert await pads.cut(second.key_id, 0, 10) == second.material[:10]
    assert await refused(first.key_id, 40, 10) is IntegrityFailure.KEY_MISMATCH  # retired by the later key
    with pytest.raises(IntegrityError, match="announced twice"):
        pads.announce(second.key_id, _key_later(second))
    lost = str(uuid.uuid4())
    pads.announce(lost, _never_arrives(lost))
    with pytest.raises(KeyNotFound):
        await pads.cut(lost, 0, 1)
    pads.close()


# ---- sessions over sockets ------------------------------------------------------------------------------

FrameHook = Callable[[int, bytes], list[bytes]]


class Harness:
    """A sender and a receiver on 127.0.0.1, with a frame-level proxy between them."""

    def __init__(
        self, tmp_path: Path, keys: PairedKeys, *, sender_hybrid: bool = False, receiver_hybrid: bool = False
    ) -> None:
        self.keys = keys
        self.sender_hybrid = sender_hybrid
        self.receiver_hybrid = receiver_hybrid
        self.sessions: list[SessionKeyed] = []
        self.sender_errors: list[str] = []
        self.back_hook: FrameHook = lambda n, frame: [frame]
        """Frames from the receiver to the sender, numbered per connection."""
        self.connections = 0
        self.a_records = TransferRecords.open(tmp_path / "a" / "transfers.sqlite3")
        self.outbox = Outbox(tmp_path / "a" / "outbox")
        self.b_records = TransferRecords.open(tmp_path / "b" / "transfers.sqlite3")
        self.inbox = Inbox(tmp_path / "b" / "inbox", self.b_records, facility=B)
        self.rejections: list[str] = []
        self.finished: list[tuple[str, Outgoing, str | None]] = []
        self.fallbacks: list[str] = []
        self.hook: FrameHook = lambda n, frame: [frame]
        self.finishing: dict[str, asyncio.Task[tuple[bool, str] | None]] = {}

    def queue(self, files: list[tuple[str, bytes, str]], kind: TransferKind = TransferKind.STUDY) -> Manifest:
        m = _manifest(files, kind)
        if kind is TransferKind.EHR:  # kept whole in its record, as the daemon does
            self.a_records.queue(m, files[0][1])
            return m
        upload = self.outbox.upload(m)
        for i, (_, data, _) in enumerate(files):
            upload.start_file(i)
            upload.write(data)
        upload.commit()
        self.a_records.queue(m)
        return m

    async def _receive(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ctx = ReceiverContext(
            facility=B,
            keys=self.keys,
            inbox=self.inbox,
            on_delivered=lambda tid, m, forms, stored_at: None,
            on_refused=lambda tid, reason: None,
            finishing=self.finishing,
            hybrid=self.receiver_hybrid,
            on_session=self.sessions.append,
        )
        try:
            await ReceiverSession(ctx, A, reader, writer).run()
        except Rejected as exc:
            self.rejections.append(exc.reason)
        finally:
            writer.close()

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.receiver_port)

        self.connections += 1

        async def forward_frames() -> None:
            n = 0
            while True:
                head = await reader.readexactly(4)
                frame = await reader.readexactly(int.from_bytes(head, "big"))
                for out in self.hook(n, frame):
                    up_writer.write(len(out).to_bytes(4, "big") + out)
                n += 1
                await up_writer.drain()

        async def backward() -> None:
            n = 0
            with contextlib.suppress(asyncio.IncompleteReadError):
                while True:
                    head = await up_reader.readexactly(4)
                    frame = await up_reader.readexactly(int.from_bytes(head, "big"))
                    for out in self.back_hook(n, frame):
                        writer.write(len(out).to_bytes(4, "big") + out)
                    n += 1
                    await writer.drain()
            writer.close()

        tasks = [asyncio.create_task(forward_frames()), asyncio.create_task(backward())]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        up_writer.close()
        writer.close()

    async def run_until(self, done: Callable[[], bool], timeout: float = 30.0) -> None:
        receiver = await asyncio.start_server(self._receive, "127.0.0.1", 0)
        self.receiver_port = receiver.sockets[0].getsockname()[1]
        proxy = await asyncio.start_server(self._proxy, "127.0.0.1", 0)
        port = proxy.sockets[0].getsockname()[1]
        ctx = SenderContext(
            facility=A,
            peer=B,
            keys=self.keys,
            records=self.a_records,
            outbox=self.outbox,
            wake=asyncio.Event(),
            on_finished=lambda tid, state, reason: self.finished.append((tid, state, reason)),
            on_otp_fallback=lambda tid, why: self.fallbacks.append(why),
            hybrid=self.sender_hybrid,
            on_session=self.sessions.append,
        )

        async def sender_loop() -> None:
            while not done():
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    session = SenderSession(ctx, reader, writer)
                    await session.run()
                except SessionClosed as exc:
                    self.sender_errors.append(str(exc))
                except (FrameError, OSError, asyncio.IncompleteReadError):
                    pass
                except Exception as exc:  # an IntegrityError from our own opener: the reply was altered
                    if not isinstance(exc, IntegrityError):
                        raise
                finally:
                    writer.close()

        async def watch() -> None:
            while not done():
                await asyncio.sleep(0.01)
                ctx.wake.set()

        try:
            async with asyncio.timeout(timeout):
                task = asyncio.create_task(sender_loop())
                await watch()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            proxy.close()
            receiver.close()


def _delivered(h: Harness, m: Manifest) -> Callable[[], bool]:
    return lambda: any(t == m.transfer_id for t, _, _ in h.finished)


@pytest.mark.asyncio
async def test_a_study_crosses_in_chunks_and_is_stored_at_rest(tmp_path: Path) -> None:
    study = make_ct_study(3, 512, 512, seed=1)  # 3 x 512 KiB: each file spans chunks
    keys = PairedKeys()
    h = Harness(tmp_path, keys)
    m = h.queue([(f"ct{i}.dcm", d, "dicom") for i, d in enumerate(study)])
    await h.run_until(_delivered(h, m))
    assert h.finished == [(m.transfer_id, Outgoing.DELIVERED, None)]
    assert [h.inbox.read_file(m.transfer_id, i) for i in range(3)] == study
    record = h.b_records.incoming(m.transfer_id)
    assert record is not None and record.forms == "cipher-image"
    stored = b"".join(p.read_bytes() for p in (tmp_path / "b" / "inbox" / m.transfer_id).iterdir())
    assert study[0][-4096:] not in stored  # the pixels are not at rest in clear
    assert not h.outbox.has(m.transfer_id)
    assert keys.taken == [256]  # one session key for the whole study


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("flip", "tag"),
        ("replay", "replay"),
        ("reorder", "reordered"),
    ],
)
async def test_a_tampered_replayed_or_reordered_frame_is_rejected_and_nothing_corrupt_is_written(
    tmp_path: Path, attack: str, reason: str
) -> None:
    study = make_ct_study(2, 1024, 1024, seed=2)  # 3 chunks per file
    h = Harness(tmp_path, PairedKeys())
    m = h.queue([(f"ct{i}.dcm", d, "dicom") for i, d in enumerate(study)])
    attacked: list[bytes] = []
    held: list[bytes] = []

    def hook(n: int, frame: bytes) -> list[bytes]:
        # Attack the first connection only, on its 3rd and 4th frames (chunks of file 0).
        if attacked or n < 3:
            return [frame]
        if attack == "flip":
            attacked.append(frame)
            return [frame[:100] + bytes([frame[100] ^ 0x01]) + frame[101:]]
        if attack == "replay":
            attacked.append(frame)
            return [frame, frame]
        if n == 3:
            held.append(frame)
            return []
        attacked.append(frame)
        return [frame, held[0]]

    h.hook = hook
    await h.run_until(_delivered(h, m))
    assert h.rejections[:1] == [reason]
    assert h.finished == [(m.transfer_id, Outgoing.DELIVERED, None)]
    assert [h.inbox.read_file(m.transfer_id, i) for i in range(2)] == study


@pytest.mark.asyncio
async def test_ehr_goes_by_one_time_pad_and_falls_back_to_aead_when_the_pool_is_short(tmp_path: Path) -> None:
    fhir = (DATA / "fhir_bundle.json").read_bytes()
    keys = PairedKeys()
    h = Harness(tmp_path, keys)
    m1 = h.queue([("bundle.json", fhir, "fhir")], TransferKind.EHR)
    await h.run_until(_delivered(h, m1))
    assert not h.fallbacks
    assert any(bits >= 8 * len(fhir) for bits in keys.taken)  # the pad covers the whole message

    keys.budget_bits = 300  # enough for a session key, not for a pad
    m2 = h.queue([("bundle2.json", fhir, "fhir")], TransferKind.EHR)
    await h.run_until(_delivered(h, m2))
    assert len(h.fallbacks) == 1 and "one-time pad needs" in h.fallbacks[0]
    assert h.inbox.read_file(m2.transfer_id, 0) == fhir


@pytest.mark.asyncio
async def test_a_transfer_offered_again_after_delivery_is_not_delivered_twice(tmp_path: Path) -> None:
    study = make_ct_study(1, 64, 64, seed=3)
    h = Harness(tmp_path, PairedKeys())
    m = h.queue([("ct.dcm", study[0], "dicom")])
    await h.run_until(_delivered(h, m))
    # The sender crashed before recording the delivery: it offers the same transfer again.
    h.a_records._db.execute("UPDATE outgoing SET state = 'queued' WHERE transfer_id = ?", (m.transfer_id,))
    upload = h.outbox.upload(m)
    upload.start_file(0)
    upload.write(study[0])
    upload.commit()
    h.finished.clear()
    await h.run_until(_delivered(h, m))
    assert h.finished == [(m.transfer_id, Outgoing.DELIVERED, None)]
    assert len(h.b_records.list_incoming()) == 1


@pytest.mark.asyncio
async def test_a_refused_content_is_reported_to_the_sender(tmp_path: Path) -> None:
    h = Harness(tmp_path, PairedKeys())
    m = h.queue([("not-really.dcm", b"\x00" * 128 + b"DICM" + os.urandom(200), "dicom")])
    await h.run_until(_delivered(h, m))
    ((tid, state, reason),) = h.finished
    assert state is Outgoing.REFUSED and "not-really.dcm" in str(reason)
    record = h.b_records.incoming(tid)
    assert record is not None and record.state is Incoming.REFUSED


def _fhir_messages(n: int) -> list[bytes]:
    fhir = (DATA / "fhir_bundle.json").read_bytes()
    return [fhir.replace(b'"Bundle"', b'"Bundle", "id": "m%d"' % i, 1) for i in range(n)]


@pytest.mark.asyncio
async def test_ehr_messages_after_the_first_are_cut_from_a_session_pad_key(tmp_path: Path) -> None:
    keys = PairedKeys()
    h = Harness(tmp_path, keys)
    versions: list[int] = []

    def hook(n: int, frame: bytes) -> list[bytes]:
        versions.append(frame[0])
        return [frame]

    h.hook = hook
    bodies = _fhir_messages(4)
    ms = [h.queue([(f"m{i}.json", body, "fhir")], TransferKind.EHR) for i, body in enumerate(bodies)]
    await h.run_until(lambda: len(h.finished) == 4)
    assert [state for _, state, _ in h.finished] == [Outgoing.DELIVERED] * 4
    assert [h.inbox.read_file(m.transfer_id, 0) for m in ms] == bodies
    # The first message pays for its own pad; it is followed by a pad key the next three are cut from.
    one_time_pads = [v for v in versions if v in (OTP_VERSION, OTP_RANGE_VERSION)]
    assert one_time_pads == [OTP_VERSION] + [OTP_RANGE_VERSION] * 3
    assert keys.taken[0] == 256 and keys.taken[2] == 8 * PAD_KEY_BYTES and len(keys.taken) == 3
    assert not h.fallbacks


@pytest.mark.asyncio
@pytest.mark.parametrize(("attack", "reason"), [("replay", "replay"), ("flip", "tag")])
async def test_a_replayed_or_tampered_pad_range_frame_is_rejected_and_each_message_arrives_once(
    tmp_path: Path, attack: str, reason: str
) -> None:
    h = Harness(tmp_path, PairedKeys())
    attacked: list[bytes] = []

    def hook(n: int, frame: bytes) -> list[bytes]:
        if attacked or frame[0] != OTP_RANGE_VERSION:
            return [frame]
        attacked.append(frame)
        if attack == "replay":
            return [frame, frame]
        return [frame[:-20] + bytes([frame[-20] ^ 0x01]) + frame[-19:]]

    h.hook = hook
    bodies = _fhir_messages(3)
    ms = [h.queue([(f"m{i}.json", body, "fhir")], TransferKind.EHR) for i, body in enumerate(bodies)]
    await h.run_until(lambda: len(h.finished) == 3)
    assert attacked and h.rejections[:1] == [reason]
    assert sorted(t for t, _, _ in h.finished) == sorted(m.transfer_id for m in ms)
    assert len(h.b_records.list_incoming()) == 3
    assert [h.inbox.read_file(m.transfer_id, 0) for m in ms] == bodies


@pytest.mark.asyncio
async def test_a_failed_spool_sync_closes_the_session_and_the_transfer_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = make_ct_study(2, 256, 256, seed=4)  # one chunk per file: the only syncs are the final ones
    h = Harness(tmp_path, PairedKeys())
    m = h.queue([(f"ct{i}.dcm", d, "dicom") for i, d in enumerate(study)])
    real_sync = Spool.sync
    failed: list[int] = []

    def sync_once_failing(spool: Spool) -> concurrent.futures.Future[None]:
        if failed:
            return real_sync(spool)
        failed.append(1)
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        future.set_exception(OSError(5, "Input/output error"))
        return future

    monkeypatch.setattr(Spool, "sync", sync_once_failing)
    # Without the close the sender would wait out its reply timeout (120 s), past this test's 30 s.
    await h.run_until(_delivered(h, m), timeout=30.0)
    assert failed and h.finished == [(m.transfer_id, Outgoing.DELIVERED, None)]
    assert [h.inbox.read_file(m.transfer_id, i) for i in range(2)] == study


# ---- the post-quantum hybrid over sockets ---------------------------------------------------------------


def _qkd_only_opener(keys: PairedKeys, key_id: str) -> aead.Opener:
    """The sender's traffic key as derived from the QKD key alone: what an adversary who broke QKD (or a
    daemon that silently fell back) would use."""
    material = keys.issued[key_id]
    key = aead.derive_traffic_key(material, [key_id], direction=aead.Direction.MASTER_TO_SLAVE)
    return aead.Opener(key, started_at=time.monotonic())


@pytest.mark.asyncio
@pytest.mark.parametrize("hybrid", [True, False], ids=["hybrid", "qkd-only"])
async def test_a_hybrid_session_delivers_under_traffic_keys_the_qkd_key_alone_does_not_give(
    tmp_path: Path, hybrid: bool
) -> None:
    keys = PairedKeys()
    h = Harness(tmp_path, keys, sender_hybrid=hybrid, receiver_hybrid=hybrid)
    frames: list[bytes] = []
    answers: list[bytes] = []

    def keep(into: list[bytes]) -> FrameHook:
        def hook(n: int, frame: bytes) -> list[bytes]:
            into.append(frame)
            return [frame]

        return hook

    h.hook, h.back_hook = keep(frames), keep(answers)
    study = make_ct_study(1, 256, 256, seed=5)
    m = h.queue([("ct.dcm", study[0], "dicom")])
    await h.run_until(_delivered(h, m))
    assert h.finished == [(m.transfer_id, Outgoing.DELIVERED, None)]
    assert h.inbox.read_file(m.transfer_id, 0) == study[0]
    opening = dm.decode_open(frames[0])
    assert opening.hybrid is hybrid
    assert sorted((s.role, s.pq_hybrid) for s in h.sessions) == [("receiver", hybrid), ("sender", hybrid)]
    # The receiver's first answer is the plain ciphertext with the hybrid, the sealed Ready without.
    assert (answers[0][0] == AEAD_VERSION) is not hybrid
    qkd_only = _qkd_only_opener(keys, opening.key_ids[0])
    if hybrid:
        with pytest.raises(IntegrityError) as info:
            qkd_only.open(frames[1], now=time.monotonic())
        assert info.value.reason is IntegrityFailure.TAG
    else:  # the control: the same derivation opens a session without the hybrid
        assert dm.decode_message(qkd_only.open(frames[1], now=time.monotonic()))


@pytest.mark.asyncio
@pytest.mark.parametrize(("sender_hybrid", "receiver_hybrid"), [(True, False), (False, True)])
async def test_mismatched_pq_hybrid_settings_are_refused_at_both_ends_and_nothing_is_sent(
    tmp_path: Path, sender_hybrid: bool, receiver_hybrid: bool
) -> None:
    keys = PairedKeys()
    h = Harness(tmp_path, keys, sender_hybrid=sender_hybrid, receiver_hybrid=receiver_hybrid)
    m = h.queue([("m.json", _fhir_messages(1)[0], "fhir")], TransferKind.EHR)
    await h.run_until(lambda: len(h.sender_errors) >= 2)
    assert set(h.rejections) == {"pq_hybrid_mismatch"}
    for error in h.sender_errors:
        assert "the receiver refused the session" in error and "pq_hybrid must agree" in error
    assert h.finished == [] and h.sessions == [] and h.b_records.incoming(m.transfer_id) is None
    # Refused before any key was fetched: every session key the sender took is still unclaimed.
    assert set(keys.held) == set(keys.issued) and keys.taken == [SESSION_KEY_BITS] * len(keys.taken)


@pytest.mark.asyncio
@pytest.mark.parametrize("target", ["ciphertext", "encapsulation key"])
async def test_an_altered_ml_kem_exchange_ends_the_session_before_anything_is_sent(
    tmp_path: Path, target: str
) -> None:
    h = Harness(tmp_path, PairedKeys(), sender_hybrid=True, receiver_hybrid=True)
    altered: list[int] = []
    sent_in_first: list[bytes] = []

    def flip_last_byte(n: int, frame: bytes) -> list[bytes]:
        # The first connection's plain frame only: the Open (its encapsulation key ends with the 32-byte
        # seed rho, any value of which is a valid key) or the DataAccept (the ciphertext ends the frame).
        if altered or n != 0:
            return [frame]
        altered.append(h.connections)
        return [frame[:-1] + bytes([frame[-1] ^ 0x01])]

    def forward(n: int, frame: bytes) -> list[bytes]:
        if h.connections == 1 and n > 0:
            sent_in_first.append(frame)
        return flip_last_byte(n, frame) if target == "encapsulation key" else [frame]

    h.hook = forward
    if target == "ciphertext":
        h.back_hook = flip_last_byte
    m = h.queue([("m.json", _fhir_messages(1)[0], "fhir")], TransferKind.EHR)
    await h.run_until(_delivered(h, m))
    assert altered == [1]
    assert h.sender_errors[:1] == [
        "the receiver's Ready does not open (tag check failed on frame 0): the ML-KEM exchange was altered "
        "or the two ends hold different keys"
    ]
    # The altered session sent nothing after its Open; the next one, unaltered, delivered once.
    assert sent_in_first == []
    assert h.finished == [(m.transfer_id, Outgoing.DELIVERED, None)]
    assert [s.role for s in h.sessions if s.pq_hybrid] == ["receiver", "receiver", "sender"]


# ---- two data planes ------------------------------------------------------------------------------------


def _plane(
    root: Path,
    certs: dict[str, Path],
    keys: PairedKeys,
    me: str,
    peer: str,
    address: Address | None,
    registry: CollectorRegistry | None = None,
    *,
    pq_hybrid: bool = False,
) -> DataPlane:
    """A DataPlane in this process for facility `me`, sending to `peer` at `address` (None: receives only),
    with the post-quantum hybrid on for `peer` if `pq_hybrid`."""
    tls = (certs["ca.pem"], certs[f"{me}.pem"], certs[f"{me}.key"])
    return DataPlane(
        facility=me,
        state_dir=root / me,
        peers={peer: address},
        keys=keys,
        client_ssl=client_context(*tls),
        server_ssl=server_context(*tls),
        audit=AuditLog.open(root / f"{me}.audit", facility=me),
        metrics=LinkMetrics(registry or CollectorRegistry()),
        pq_hybrid=[peer] if pq_hybrid else [],
    )


def _audit_records(root: Path, me: str, event: str) -> list[dict[str, Any]]:
    lines = (root / f"{me}.audit").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.mark.asyncio
async def test_a_session_that_ends_idle_is_replaced_at_once_until_the_peer_cannot_be_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aead, "REKEY_AFTER_SECONDS", 0.3)  # a session key ages out while idle
    monkeypatch.setattr(sender_module, "IDLE_CHECK_S", 0.02)
    certs = write_demo_pki(tmp_path / "pki", [A, B])
    keys = PairedKeys()

    tasks_before = asyncio.all_tasks()
    b = _plane(tmp_path, certs, keys, B, A, None)
    port = await b.start(Address(host="127.0.0.1", port=0))
    a = _plane(tmp_path, certs, keys, A, B, Address(host="127.0.0.1", port=port))
    sessions = lambda: keys.taken.count(SESSION_KEY_BITS)  # noqa: E731
    refused: list[OSError] = []
    connect = asyncio.open_connection

    async def counting_connect(*args: Any, **kwargs: Any) -> Any:
        try:
            return await connect(*args, **kwargs)
        except OSError as exc:
            refused.append(exc)
            raise

    monkeypatch.setattr(asyncio, "open_connection", counting_connect)
    senders = asyncio.create_task(a.run_senders())
    bodies = _fhir_messages(2)
    entries = [
        FileEntry(f"m{i}.json", len(d), hashlib.sha256(d).hexdigest(), "fhir") for i, d in enumerate(bodies)
    ]
    messages = [a.new_manifest(B, TransferKind.EHR, [entry]) for entry in entries]
    try:
        outcome = await asyncio.wait_for(a.queue_ehr(messages[0], bodies[0]), 20)
        assert outcome.state is Outgoing.DELIVERED and sessions() == 1
        # Nothing is queued, yet the sender takes a fresh session key each time the last one ages out.
        await wait_for_async(lambda: sessions() >= 3, "two sessions opened in standby", timeout=20.0)
        outcome = await asyncio.wait_for(a.queue_ehr(messages[1], bodies[1]), 20)
        assert outcome.state is Outgoing.DELIVERED
        assert [b.inbox.read_file(m.transfer_id, 0) for m in messages] == bodies
        # Once the peer is gone, the standby session's successor fails to connect and the sender waits
        # for work rather than dialling on (it would say "cannot reach" between its attempts).
        await b.stop()
        refused.clear()
        await wait_for_async(
            lambda: bool(refused) and a.sender_states()[B] == "idle", "an idle sender", timeout=20.0
        )
        assert len(refused) == 1
    finally:
        senders.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await senders
        await b.stop()
        a.close()
        b.close()
    # Both planes are stopped and closed: none of the tasks they started is still pending.
    assert asyncio.all_tasks() - tasks_before == set()


@pytest.mark.asyncio
async def test_a_receiver_with_another_facilitys_certificate_costs_no_key(tmp_path: Path) -> None:
    # Regression: the sender checked only the hostname (every certificate of the deployment's CA names
    # 127.0.0.1), so an impostor at B's data address was sent a session and each retry took fresh key.
    mallory = "mallory"
    certs = write_demo_pki(tmp_path / "pki", [A, B, mallory])
    keys = PairedKeys()
    registry = CollectorRegistry()

    impostor = _plane(tmp_path, certs, keys, mallory, A, None)
    port = await impostor.start(Address(host="127.0.0.1", port=0))
    a = _plane(tmp_path, certs, keys, A, B, Address(host="127.0.0.1", port=port), registry)
    body = _fhir_messages(1)[0]
    entry = FileEntry("m.json", len(body), hashlib.sha256(body).hexdigest(), "fhir")
    a.queue_ehr(a.new_manifest(B, TransferKind.EHR, [entry]), body)
    senders = asyncio.create_task(a.run_senders())

    def refusals() -> float:
        labels = {"peer": B, "service": "data"}
        return registry.get_sample_value("qlink_identity_refused_total", labels) or 0.0

    try:
        await wait_for_async(lambda: refusals() >= 3, "three refused dials", timeout=20.0)
        assert keys.taken == []  # no session key, no pad: nothing was spent on the impostor
        assert "certificate names 'mallory'" in a.sender_states()[B]
        assert impostor.records.list_incoming() == []  # and the impostor received nothing
    finally:
        senders.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await senders
        await impostor.stop()
        a.close()
        impostor.close()


@pytest.mark.asyncio
async def test_two_planes_with_pq_hybrid_deliver_and_show_it_in_status_and_the_audit_log(
    tmp_path: Path,
) -> None:
    certs = write_demo_pki(tmp_path / "pki", [A, B])
    keys = PairedKeys()
    b = _plane(tmp_path, certs, keys, B, A, None, pq_hybrid=True)
    port = await b.start(Address(host="127.0.0.1", port=0))
    a = _plane(tmp_path, certs, keys, A, B, Address(host="127.0.0.1", port=port), pq_hybrid=True)
    assert [(s.peer, s.pq_hybrid, s.last_session) for s in a.peer_statuses()] == [(B, True, None)]
    senders = asyncio.create_task(a.run_senders())
    body = _fhir_messages(1)[0]
    entry = FileEntry("m.json", len(body), hashlib.sha256(body).hexdigest(), "fhir")
    try:
        outcome = await asyncio.wait_for(a.queue_ehr(a.new_manifest(B, TransferKind.EHR, [entry]), body), 20)
        assert outcome.state is Outgoing.DELIVERED
    finally:
        senders.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await senders
        await b.stop()
        a.close()
        b.close()
    # The EHR message went under the hybrid traffic key, not a one-time pad (secret only while QKD is):
    # the only key taken is the session's.
    assert keys.taken == [SESSION_KEY_BITS]
    for plane, me, role in ((a, A, "sender"), (b, B, "receiver")):
        (status,) = plane.peer_statuses()
        last = status.last_session
        assert status.pq_hybrid and last is not None
        assert (last.role, last.pq_hybrid, last.kem) == (role, True, "ML-KEM-768")
        assert DataPeerStatus.from_json(status.to_json()) == status
        record = _audit_records(tmp_path, me, "data_session")[0]
        assert (record["role"], record["pq_hybrid"], record["kem"]) == (role, True, "ML-KEM-768")
        assert len(record["key_ids"]) == 1 and record["key_ids"][0] in keys.issued
    text = format_status(
        {"facility": A, "links": [], "data_plane": {"peers": [s.to_json() for s in a.peer_statuses()]}}
    )
    assert "no links configured" in text  # the data plane's view is printed with each link
    line = format_pq_hybrid(a.peer_statuses()[0])
    assert line.startswith("on (ML-KEM-768") and "(sender, " in line and "QKD key and ML-KEM-768" in line


@pytest.mark.asyncio
async def test_two_planes_whose_pq_hybrid_settings_differ_refuse_every_session_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    certs = write_demo_pki(tmp_path / "pki", [A, B])
    keys = PairedKeys()
    b = _plane(tmp_path, certs, keys, B, A, None, pq_hybrid=False)
    port = await b.start(Address(host="127.0.0.1", port=0))
    a = _plane(tmp_path, certs, keys, A, B, Address(host="127.0.0.1", port=port), pq_hybrid=True)
    body = _fhir_messages(1)[0]
    entry = FileEntry("m.json", len(body), hashlib.sha256(body).hexdigest(), "fhir")
    a.queue_ehr(a.new_manifest(B, TransferKind.EHR, [entry]), body)
    senders = asyncio.create_task(a.run_senders())
    try:
        sender_said = "data session to hospital-b ended: the receiver refused the session: hospital-a offered"

        def refused_twice() -> bool:
            logged = [r for r in caplog.records if r.getMessage().startswith(sender_said)]
            return len(logged) >= 2 and len(_audit_records(tmp_path, B, "data_frame_rejected")) >= 2

        await wait_for_async(refused_twice, "two sessions refused, logged at both ends", timeout=20.0)
        assert b.records.list_incoming() == []
    finally:
        senders.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await senders
        await b.stop()
        a.close()
        b.close()
    for record in _audit_records(tmp_path, B, "data_frame_rejected"):
        assert record["reason"] == "pq_hybrid_mismatch"
        assert "hospital-a offered the ML-KEM-768 hybrid, but pq_hybrid is off" in record["detail"]
    assert _audit_records(tmp_path, A, "data_session") == _audit_records(tmp_path, B, "data_session") == []
    assert [s.last_session for s in a.peer_statuses() + b.peer_statuses()] == [None, None]


@pytest.mark.asyncio
async def test_a_reply_that_does_not_open_ends_the_session_not_the_senders(tmp_path: Path) -> None:
    # Regression: an IntegrityError from the sender's opener (a reply sealed under another key) escaped the
    # sender loop, which handles only the data plane's own errors, and ended every sender of the daemon.
    certs = write_demo_pki(tmp_path / "pki", [A, B])
    keys = PairedKeys()
    dials: list[int] = []

    async def wrong_keys(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dials.append(1)
        with contextlib.suppress(Exception):
            await reader.readexactly(int.from_bytes(await reader.readexactly(4), "big"))  # the Open
            stranger = DeliveredKey(str(uuid.uuid4()), secrets.token_bytes(32))
            key = aead.derive_traffic_key(
                stranger.material, [stranger.key_id], direction=aead.Direction.SLAVE_TO_MASTER
            )
            sealer = aead.Sealer(key, state=aead.SendState(next_counter=0, bytes_sealed=0, started_at=0.0))
            frame = sealer.seal(dm.ready(), now=0.0)
            writer.write(len(frame).to_bytes(4, "big") + frame)
            await writer.drain()
            await reader.read()
        writer.close()

    tls = (certs["ca.pem"], certs[f"{B}.pem"], certs[f"{B}.key"])
    impostor_keys = await asyncio.start_server(wrong_keys, "127.0.0.1", 0, ssl=server_context(*tls))
    port = impostor_keys.sockets[0].getsockname()[1]
    a = _plane(tmp_path, certs, keys, A, B, Address(host="127.0.0.1", port=port))
    body = _fhir_messages(1)[0]
    entry = FileEntry("m.json", len(body), hashlib.sha256(body).hexdigest(), "fhir")
    a.queue_ehr(a.new_manifest(B, TransferKind.EHR, [entry]), body)
    senders = asyncio.create_task(a.run_senders())
    try:
        await wait_for_async(lambda: len(dials) >= 3 or senders.done(), "three dials", timeout=20.0)
        assert not senders.done(), senders.exception()
    finally:
        senders.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await senders
        impostor_keys.close()
        a.close()
