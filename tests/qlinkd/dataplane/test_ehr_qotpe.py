"""EHR messages at rest in the quantum one-time-pad form (seed paper 003's QOTPE, issue 18).

Two data planes on loopback deliver real HL7 and FHIR messages; the receiver's pads are cut from a real
key store whose notices go to the sender's store, as the link carries them between two daemons. The
message lands in ``inbox/<id>/0`` as data XOR alpha with an HMAC, its pad (alpha, beta, MAC key) in
keys.sqlite3 only; it is fetched bit-exact; a flipped bit fails as IntegrityError and costs nothing else;
both pools shrink by the same bytes and stay identical; a short pool falls back to AES-256-GCM (audited,
counted, still delivered); a purge erases the pad with the file, and start-up finishes one a crash cut
short; an inbox anyone can read reveals nothing of the message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import secrets
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from qlinkmed.qcore.qotp import QotpKey, circuit_encrypt, encrypt
from qlinkmed.qlinkd.content import qotp_at_rest
from qlinkmed.qlinkd.dataplane.inbox import Inbox
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.records import Outgoing, TransferRecords
from qlinkmed.qlinkd.dataplane.rest_keys import RestKeys
from qlinkmed.qlinkd.dataplane.retention import Retention
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.errors import IntegrityError, KeyMaterialShort, StoreError, TransferError
from qlinkmed.qlinkd.ops.audit import AuditLog
from qlinkmed.qlinkd.ops.inbox_config import InboxConfig
from qlinkmed.qlinkd.ops.metrics import LinkMetrics
from qlinkmed.qlinkd.ops.pki import client_context, server_context, write_demo_pki
from qlinkmed.qlinkd.ops.toml_reader import Address
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.pool.kme import StoreKeyManager
from tests.paths import DATA
from tests.qlinkd.dataplane.test_dataplane import PairedKeys

A, B = "hospital-a", "hospital-b"  # A sends, B receives and keeps the pads
PSK = bytes(range(96))
HL7 = (DATA / "oru_r01.hl7").read_bytes()
FHIR = (DATA / "fhir_bundle.json").read_bytes()
PATIENT = b"Qlinktest"
HEADER = 14
"""The QOTPE blob's header: magic, version, form, length."""


# ---- the format -----------------------------------------------------------------------------------------


def test_the_circuit_and_numpy_paths_give_the_same_cipher_bits_on_a_real_hl7_message() -> None:
    data = HL7[:64]  # 512 qubits, MSH segment and the start of PID
    key = QotpKey.from_material(secrets.token_bytes(128))
    cipher = encrypt(data, key)
    assert circuit_encrypt(data, key) == cipher
    assert cipher == bytes(x ^ a for x, a in zip(data, key.alpha, strict=True))
    # The stored blob carries exactly that cipher.
    pad = key.alpha + key.beta + secrets.token_bytes(qotp_at_rest.MAC_KEY_BYTES)
    assert qotp_at_rest.seal(data, pad)[HEADER : HEADER + 64] == cipher


def test_the_blob_opens_bit_exact_and_any_change_or_wrong_pad_is_one_integrity_error() -> None:
    pad = secrets.token_bytes(qotp_at_rest.pad_bytes(len(HL7)))
    blob = qotp_at_rest.seal(HL7, pad)
    assert len(blob) == HEADER + len(HL7) + 32 and qotp_at_rest.is_qotpe(blob)
    assert qotp_at_rest.open_blob(blob, pad) == HL7
    for bit in (0, 8 * 5 + 3, 8 * 6, 8 * HEADER + 1, 8 * (HEADER + 100), 8 * len(blob) - 1):
        changed = bytearray(blob)
        changed[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(IntegrityError):
            qotp_at_rest.open_blob(bytes(changed), pad)
    # alpha alone changed (the MAC key the same) opens to other bytes: the MAC guards the blob, not the
    # pad, which is why the inbox checks the manifest's SHA-256 after opening.
    other = bytearray(pad)
    other[0] ^= 1
    assert qotp_at_rest.open_blob(blob, bytes(other)) != HL7
    for wrong in (secrets.token_bytes(len(pad)), pad[:-1], pad + b"\0", b""):
        with pytest.raises(IntegrityError):
            qotp_at_rest.open_blob(blob, wrong)
    for cut in (blob[:-1], blob[:HEADER], blob + b"\0"):
        with pytest.raises(IntegrityError):
            qotp_at_rest.open_blob(cut, pad)
    with pytest.raises(KeyMaterialShort):
        qotp_at_rest.seal(HL7, pad[:-1])


# ---- two planes, a real key store at the receiver -------------------------------------------------------


@dataclass
class Pools:
    """B's key store and A's, with the same committed rounds, B's pad notices carried to A at once."""

    b: KeyStore
    a: KeyStore
    rest_keys: RestKeys

    def close(self) -> None:
        self.b.close()
        self.a.close()


def _pools(root: Path, b_owned_bytes: int) -> Pools:
    b = KeyStore.open(root / "b-keys.sqlite3")
    a = KeyStore.open(root / "a-keys.sqlite3")
    b.init_auth(A, PSK)
    a.init_auth(B, PSK)
    rounds = ((1, A, 4096), (2, B, b_owned_bytes), (3, A, 4096))
    for store, peer in ((b, A), (a, B)):
        for round_id, owner, size in rounds:
            material = hashlib.shake_256(f"round {round_id}".encode()).digest(size)
            store.note_round_started(peer, round_id)
            store.store_pending(peer, round_id, owner=owner, key=material, auth_refill=b"\xaa" * 48)
            store.commit(peer, round_id)
    manager = StoreKeyManager(
        b,
        facility=B,
        local_saes=(),
        sae_to_peer={},
        notify_sent=lambda peer, notice: a.accept_notice(B, notice),
    )
    return Pools(b=b, a=a, rest_keys=RestKeys(B, manager, b))


@pytest.fixture
def pools(tmp_path: Path) -> Iterator[Pools]:
    p = _pools(tmp_path, 8192)
    yield p
    p.close()


def _plane(
    root: Path,
    me: str,
    peer: str,
    address: Address | None,
    registry: CollectorRegistry,
    keys: PairedKeys,
    rest_keys: RestKeys | None = None,
    inbox_dir: Path | None = None,
) -> DataPlane:
    pki = root / "pki"
    if not pki.exists():
        write_demo_pki(pki, [A, B])
    tls = (pki / "ca.pem", pki / f"{me}.pem", pki / f"{me}.key")
    return DataPlane(
        facility=me,
        state_dir=root / me,
        peers={peer: address},
        keys=keys,
        client_ssl=client_context(*tls),
        server_ssl=server_context(*tls),
        audit=AuditLog.open(root / f"{me}.audit", facility=me),
        metrics=LinkMetrics(registry),
        rest_keys=rest_keys,
        inbox_dir=inbox_dir,
    )


@dataclass
class Delivered:
    plane: DataPlane
    registry: CollectorRegistry
    ids: list[str]


async def _deliver(
    root: Path,
    messages: list[tuple[str, bytes, str]],
    rest_keys: RestKeys | None,
    inbox_dir: Path | None = None,
) -> Delivered:
    """Send `messages` (name, body, kind) from A to B, each answered "delivered"; B's plane is returned
    stopped but open (its inbox readable), A's closed."""
    registry = CollectorRegistry()
    keys = PairedKeys()  # the sessions' keys (not the pads): in memory, as the other data-plane tests
    b = _plane(root, B, A, None, registry, keys, rest_keys, inbox_dir)
    port = await b.start(Address(host="127.0.0.1", port=0))
    a = _plane(root, A, B, Address(host="127.0.0.1", port=port), CollectorRegistry(), keys)
    senders = asyncio.create_task(a.run_senders())
    ids = []
    try:
        for name, body, kind in messages:
            entry = FileEntry(name, len(body), hashlib.sha256(body).hexdigest(), kind)
            manifest = a.new_manifest(B, TransferKind.EHR, [entry])
            outcome = await asyncio.wait_for(a.queue_ehr(manifest, body), 20)
            assert outcome.state is Outgoing.DELIVERED, outcome.reason
            ids.append(manifest.transfer_id)
    finally:
        senders.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await senders
        await b.stop()
        a.close()
    return Delivered(b, registry, ids)


def _audit(root: Path, event: str) -> list[dict[str, Any]]:
    lines = (root / f"{B}.audit").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def _stored(registry: CollectorRegistry, form: str) -> float:
    return registry.get_sample_value("qlink_ehr_at_rest_total", {"form": form}) or 0.0


@pytest.mark.asyncio
async def test_a_delivered_message_is_kept_as_qotpe_fetched_bit_exact_and_both_pools_stay_identical(
    tmp_path: Path, pools: Pools
) -> None:
    before = pools.b.pool_bits(A, owner=B)
    done = await _deliver(tmp_path, [("oru.hl7", HL7, "hl7"), ("bundle.json", FHIR, "fhir")], pools.rest_keys)
    b = done.plane
    try:
        for tid, body in zip(done.ids, (HL7, FHIR), strict=True):
            record = b.records.incoming(tid)
            assert record is not None and record.forms == "qotpe"
            # Nothing secret beside the data: the record holds neither key nor blob.
            assert b.records.at_rest_key(tid) is None and b.records.blob(tid) is None
            form, pad = pools.b.at_rest_key(tid) or ("", b"")
            assert form == "qotpe" and len(pad) == qotp_at_rest.pad_bytes(len(body))
            assert qotp_at_rest.is_qotpe((b.inbox.root / tid / "0").read_bytes())
            assert b.inbox.read_file(tid, 0) == body
        spent = 8 * (qotp_at_rest.pad_bytes(len(HL7)) + qotp_at_rest.pad_bytes(len(FHIR)))
        assert pools.b.pool_bits(A, owner=B) == before - spent
        assert pools.a.pool_bits(B, owner=B) == before - spent
        assert pools.b.pool_identities(A) == pools.a.pool_identities(B)
        assert pools.a.incoming_bits() == 0  # A dropped its copy of the pads: no SAE can fetch them
        assert _stored(done.registry, "qotpe") == 2 and _stored(done.registry, "aead") == 0
        assert _audit(tmp_path, "ehr_at_rest_fallback") == []
        assert {r["at_rest"] for r in _audit(tmp_path, "transfer_received")} == {"qotpe"}
    finally:
        b.close()


@pytest.mark.asyncio
async def test_a_flipped_bit_in_the_file_fails_as_integrity_error_and_loses_nothing_else(
    tmp_path: Path, pools: Pools
) -> None:
    done = await _deliver(tmp_path, [("oru.hl7", HL7, "hl7"), ("bundle.json", FHIR, "fhir")], pools.rest_keys)
    b = done.plane
    try:
        first, second = done.ids
        path = b.inbox.root / first / "0"
        original = path.read_bytes()
        changed = bytearray(original)
        changed[HEADER + 20] ^= 0x04  # a bit of the cipher: the pad alone would flip the same message bit
        path.write_bytes(bytes(changed))
        with pytest.raises(IntegrityError):
            b.inbox.read_file(first, 0)
        assert b.inbox.read_file(second, 0) == FHIR
        assert pools.b.at_rest_key(first) is not None  # the pad is kept: the failure erased nothing
        path.write_bytes(original)  # a good copy restored (from a backup) opens again
        assert b.inbox.read_file(first, 0) == HL7
    finally:
        b.close()


@pytest.mark.asyncio
async def test_a_short_pool_stores_the_message_under_aead_audited_and_counted_and_still_delivers(
    tmp_path: Path,
) -> None:
    pools = _pools(tmp_path, 100)  # B's rounds hold 800 bits: the pad needs far more
    try:
        identities = pools.b.pool_identities(A)
        done = await _deliver(tmp_path, [("oru.hl7", HL7, "hl7")], pools.rest_keys)
        b = done.plane
        try:
            (tid,) = done.ids
            record = b.records.incoming(tid)
            assert record is not None and record.forms == "aead"
            assert b.inbox.read_file(tid, 0) == HL7
            # Its AES key is in the key store too, not in the record; its blob is a file.
            form, key = pools.b.at_rest_key(tid) or ("", b"")
            assert form == "aead" and len(key) == 32 and b.records.at_rest_key(tid) is None
            assert (b.inbox.root / tid / "0").read_bytes()[:4] == b"QLAR"
            (fallback,) = _audit(tmp_path, "ehr_at_rest_fallback")
            assert fallback["transfer"] == tid
            assert fallback["needed_bits"] == 8 * qotp_at_rest.pad_bytes(len(HL7))
            assert fallback["available_bits"] == 800
            assert PATIENT.decode() not in json.dumps(fallback)
            assert _stored(done.registry, "aead") == 1 and _stored(done.registry, "qotpe") == 0
            # Nothing was carved: both pools as they were.
            assert pools.b.pool_identities(A) == pools.a.pool_identities(B) == identities
        finally:
            b.close()
    finally:
        pools.close()


@pytest.mark.asyncio
async def test_an_inbox_on_a_directory_others_can_read_reveals_nothing_of_the_message(
    tmp_path: Path, pools: Pools
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)  # whatever the umask: readable by everyone
    done = await _deliver(tmp_path, [("oru.hl7", HL7, "hl7")], pools.rest_keys, inbox_dir=shared)
    b = done.plane
    try:
        (tid,) = done.ids
        assert b.inbox.root == shared
        assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # the operator's mode is kept
        # Everything under it opened up to others, as careless shared storage would.
        for folder, dirs, files in os.walk(shared):
            for d in dirs:
                Path(folder, d).chmod(0o755)
            for f in files:
                Path(folder, f).chmod(0o644)
        contents = [p.read_bytes() for p in shared.rglob("*") if p.is_file()]
        assert contents, "the message's file is under the inbox"
        everything = b"\n".join(contents)
        assert PATIENT not in everything and b"MSH|" not in everything and b"QLT-0042" not in everything
        windows = {HL7[i : i + 8] for i in range(len(HL7) - 7)}
        assert not any(w in everything for w in windows)
        # What protects it: the cipher is the message XOR alpha, and alpha is in the key store only.
        cipher = (shared / tid / "0").read_bytes()[HEADER : HEADER + len(HL7)]
        _, pad = pools.b.at_rest_key(tid) or ("", b"")
        alpha = pad[: len(HL7)]
        assert cipher == bytes(np.bitwise_xor(np.frombuffer(HL7, np.uint8), np.frombuffer(alpha, np.uint8)))
        assert b.inbox.read_file(tid, 0) == HL7
    finally:
        b.close()


def test_a_named_inbox_directory_that_does_not_exist_is_created_private(tmp_path: Path) -> None:
    records = TransferRecords.open(tmp_path / "transfers.sqlite3")
    try:
        inbox = Inbox(tmp_path / "new" / "inbox", records, facility=B, operator_dir=True)
        assert stat.S_IMODE(inbox.root.stat().st_mode) == 0o700
    finally:
        records.close()


def test_the_same_message_stored_twice_at_once_leaves_one_whole_file(tmp_path: Path, pools: Pools) -> None:
    """A sender that reconnected may have a message stored again while the first store still runs: the
    file under ``<id>/0`` is always whole and opens, and no temporary file is left."""
    records = TransferRecords.open(tmp_path / "transfers.sqlite3")
    try:
        inbox = Inbox(tmp_path / "inbox", records, facility=B, rest_keys=pools.rest_keys)
        digest = hashlib.sha256(HL7).hexdigest()
        manifest = Manifest(
            transfer_id=str(uuid.uuid4()),
            sender=A,
            recipient=B,
            kind=TransferKind.EHR,
            files=(FileEntry("oru.hl7", len(HL7), digest, "hl7"),),
            created=0.0,
        )
        info = inbox.check_ehr(manifest, HL7)
        pad = pools.rest_keys.cut_pad(A, manifest.transfer_id, len(HL7))

        def store(_: int) -> None:
            inbox.store_ehr(manifest, HL7, info, form="qotpe", key=pad)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(store, range(64)))
        folder = inbox.root / manifest.transfer_id
        assert [p.name for p in folder.iterdir()] == ["0"]
        assert Inbox.open_located(folder / "0", pad, digest) == HL7
    finally:
        records.close()


@pytest.mark.asyncio
async def test_a_purge_erases_the_pad_with_the_file_and_start_up_finishes_one_a_crash_cut_short(
    tmp_path: Path, pools: Pools
) -> None:
    done = await _deliver(tmp_path, [("oru.hl7", HL7, "hl7"), ("bundle.json", FHIR, "fhir")], pools.rest_keys)
    b = done.plane
    audit = AuditLog.open(tmp_path / "retention.audit", facility=B)
    try:
        first, second = done.ids
        copy = (b.inbox.root / first / "0").read_bytes()  # a copy that survives on shared storage
        _, pad = pools.b.at_rest_key(first) or ("", b"")
        retention = Retention(
            InboxConfig(max_age_s=0),
            records=b.records,
            inbox_root=b.inbox.root,
            audit=audit,
            rest_keys=pools.rest_keys,
        )
        # The second is marked purged as a sweep would, then the daemon "crashes" before its key and
        # file go; the first goes by a whole sweep.
        assert b.records.mark_purged(second, "max_age", 0.0) == 0
        assert pools.b.at_rest_key(second) is not None and (b.inbox.root / second).exists()
        assert await retention.sweep() == 1
        assert pools.b.at_rest_key(first) is None and not (b.inbox.root / first).exists()
        with pytest.raises(TransferError, match="purged"):
            b.inbox.locate(first, 0)
        # A stray pad (cut for a message a crash kept from being recorded) goes at start-up too.
        stray = "0d3b5f0e-8b59-4c1e-9a55-3c3f7f3c1a11"
        pools.rest_keys.cut_pad(A, stray, 10)
        assert retention.recover() == 1  # the interrupted purge (the stray is no purge)
        assert pools.b.at_rest_transfers() == []
        assert not (b.inbox.root / second).exists()
        records = [json.loads(line) for line in (tmp_path / "retention.audit").read_text().splitlines()]
        resumed = [r for r in records if r["event"] == "inbox_purged" and r.get("resumed")]
        assert [r["transfer"] for r in resumed] == [second]
        # The surviving copy: its pad is gone from the key store, to the last byte of its files.
        pools.b.checkpoint()
        path = tmp_path / "b-keys.sqlite3"
        raw = b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())
        assert pad[:32] not in raw and pad[-32:] not in raw
        assert qotp_at_rest.is_qotpe(copy)
    finally:
        audit.close()
        b.close()


@pytest.mark.asyncio
async def test_a_message_an_older_qlinkd_kept_in_its_record_is_still_read(
    tmp_path: Path, pools: Pools
) -> None:
    # Delivered by a plane without a key store for rest keys: blob and key in the record, as before.
    done = await _deliver(tmp_path, [("oru.hl7", HL7, "hl7")], rest_keys=None)
    b = done.plane
    try:
        (tid,) = done.ids
        assert b.records.blob(tid) is not None and b.records.at_rest_key(tid) is not None
        assert not (b.inbox.root / tid).exists()
        upgraded = Inbox(b.inbox.root, b.records, facility=B, rest_keys=pools.rest_keys)
        assert upgraded.read_file(tid, 0) == HL7
        b.records.mark_purged(tid, "max_age", 0.0)
        with pytest.raises((TransferError, StoreError)):
            upgraded.read_file(tid, 0)
    finally:
        b.close()
