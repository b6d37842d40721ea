"""The DICOM SCP in this process, queueing into a real DataPlane (its sender never runs, so what it
queued stays in the outbox to be read back): the instance kept byte for byte; the staging budget refusing
with 0xA700 and freed once the study is queued; content the rules refuse answered 0xC000 naming the
problem; a study on an association that stays open sent after the quiet time; instances a crash left
staged queued at the next start and half-written ones dropped. The SCU is pynetdicom's, in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, _config

from qlinkmed.qlinkd.content import at_rest
from qlinkmed.qlinkd.content.limits import ContentLimits
from qlinkmed.qlinkd.content.validate import validate
from qlinkmed.qlinkd.content.worker import ContentValidator
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, TransferKind
from qlinkmed.qlinkd.dataplane.records import Outgoing
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.gateways.dicom_config import DicomDestination, DicomGatewayConfig, DicomRoute
from qlinkmed.qlinkd.gateways.dicom_forward import DicomForwarding
from qlinkmed.qlinkd.gateways.dicom_gateway import DicomGateway
from qlinkmed.qlinkd.gateways.dicom_scp import DicomScp
from qlinkmed.qlinkd.gateways.forwarder import Attempt, Verdict
from qlinkmed.qlinkd.gateways.forwards import ForwardLedger
from qlinkmed.qlinkd.ops.audit import AuditLog
from qlinkmed.qlinkd.ops.metrics import LinkMetrics
from qlinkmed.qlinkd.ops.pki import client_context, server_context, write_demo_pki
from qlinkmed.qlinkd.ops.toml_reader import Address
from qlinkmed.qlinkd.testbed.deployment import free_ports
from tests.dicom_factory import make_ct_study, make_deflate_bomb
from tests.polling import wait_for_async
from tests.qlinkd.dataplane.test_dataplane import PairedKeys
from tests.qlinkd.dataplane.test_dataplane import _plane as dataplane_plane
from tests.qlinkd.gateways.test_dicom_e2e import _dataset_bytes

A, B = "hospital-a", "hospital-b"
CALLED = "TO_B"
MODALITY = "ct-modality"
"""A client certificate of the facility's CA, as a modality speaking DICOM TLS would hold."""


class Harness:
    def __init__(self, root: Path, scp: DicomScp, plane: DataPlane, port: int) -> None:
        self.root = root
        self.scp = scp
        self.plane = plane
        self.port = port

    def queued(self) -> list[Any]:
        return self.plane.records.queued(B)

    def outbox_file(self, transfer_id: str, index: int) -> bytes:
        return (self.plane.outbox.root / transfer_id / str(index)).read_bytes()


def _certs(root: Path) -> dict[str, Path]:
    pki = root / "pki"
    if (pki / "ca.pem").exists():
        return {p.name: p for p in pki.iterdir()}
    return write_demo_pki(pki, [A, B], [MODALITY])


def _plane(root: Path) -> DataPlane:
    certs = _certs(root)
    tls = (certs["ca.pem"], certs[f"{A}.pem"], certs[f"{A}.key"])
    return DataPlane(
        facility=A,
        state_dir=root / A,
        peers={B: Address(host="127.0.0.1", port=9)},  # never dialled: the senders do not run here
        keys=PairedKeys(),
        client_ssl=client_context(*tls),
        server_ssl=server_context(*tls),
        audit=AuditLog.open(root / "a.audit", facility=A),
        metrics=LinkMetrics(CollectorRegistry()),
    )


async def _harness(
    root: Path,
    *,
    quiet_s: float = 30.0,
    staging_max_bytes: int = 64 << 20,
    limits: ContentLimits | None = None,
    tls: bool = False,
) -> tuple[Harness, asyncio.Task[None]]:
    config = DicomGatewayConfig(
        ae_title="QLINK_A",
        listen=Address(host="127.0.0.1", port=0),
        routes=(DicomRoute(called_ae=CALLED, peer=B),),
        quiet_s=quiet_s,
        staging_max_bytes=staging_max_bytes,
        tls=tls,
    )
    plane = _plane(root)
    certs = _certs(root)
    server_ssl = server_context(certs["ca.pem"], certs[f"{A}.pem"], certs[f"{A}.key"])
    validator = ContentValidator(limits or ContentLimits(), workers=0)
    audit = AuditLog.open(root / "scp.audit", facility=A)
    scp = DicomScp(
        config, plane=plane, validator=validator, audit=audit, state_dir=root / A, server_ssl=server_ssl
    )
    port = await scp.start()
    return Harness(root, scp, plane, port), asyncio.create_task(scp.run())


@pytest_asyncio.fixture
async def stopper() -> AsyncIterator[list[tuple[Harness, asyncio.Task[None]]]]:
    made: list[tuple[Harness, asyncio.Task[None]]] = []
    yield made
    for h, task in made:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(h.scp.close)
        h.plane.close()


def _send(port: int, files: list[Path], *, hold: asyncio.Event | None = None, loop: Any = None) -> list[int]:
    """C-STORE each file (sent from its bytes, never decoded) on one association; the statuses."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="CT01")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)  # the files' own syntax
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
    assert assoc.is_established
    statuses = []
    try:
        for path in files:
            status = assoc.send_c_store(path)
            statuses.append(int(status.Status))
        if hold is not None:
            asyncio.run_coroutine_threadsafe(hold.wait(), loop).result(30)
    finally:
        assoc.release()
    return statuses


def _files(tmp: Path, instances: list[bytes]) -> list[Path]:
    tmp.mkdir(exist_ok=True)
    paths = []
    for i, data in enumerate(instances):
        path = tmp / f"i{i}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


@pytest.mark.asyncio
async def test_study_queued_at_release_byte_for_byte(tmp_path: Path, stopper: list[Any]) -> None:
    h, task = await _harness(tmp_path)
    stopper.append((h, task))
    study = make_ct_study(3, 32, 32, seed=3)
    statuses = await asyncio.to_thread(_send, h.port, _files(tmp_path / "in", study))
    assert statuses == [0, 0, 0]
    [manifest] = await wait_for_async(h.queued, "the study queued")
    assert manifest.kind is TransferKind.STUDY and len(manifest.files) == 3
    sent = sorted(_dataset_bytes(d) for d in study)
    queued = sorted(_dataset_bytes(h.outbox_file(manifest.transfer_id, i)) for i in range(3))
    assert queued == sent
    # The staged copies go once the outbox holds the study.
    await wait_for_async(lambda: h.scp.staging.used == 0, "the staging budget returned")
    assert not any((tmp_path / A / "dicom-staging").iterdir())


@pytest.mark.asyncio
async def test_staging_full_refuses_with_a700_and_frees_once_queued(
    tmp_path: Path, stopper: list[Any]
) -> None:
    h, task = await _harness(tmp_path, staging_max_bytes=1 << 20)
    stopper.append((h, task))
    study = make_ct_study(3, 512, 512, seed=5)  # ~0.5 MiB each: the second does not fit
    files = _files(tmp_path / "in", study)
    assert await asyncio.to_thread(_send, h.port, files) == [0, 0xA700, 0xA700]
    await wait_for_async(lambda: h.scp.staging.used == 0 and h.queued(), "the first instance queued")
    # The budget is back: the modality's retry is taken.
    assert await asyncio.to_thread(_send, h.port, files[1:2]) == [0]
    await wait_for_async(lambda: len(h.queued()) == 2, "the retried instance queued")


@pytest.mark.asyncio
async def test_content_refused_with_c000_naming_the_problem(tmp_path: Path, stopper: list[Any]) -> None:
    h, task = await _harness(tmp_path, limits=ContentLimits(max_decoded_bytes=1 << 20))
    stopper.append((h, task))
    bomb = make_deflate_bomb(2048, 2048)  # 8 MiB of zeros, deflated: past the 1 MiB decode bound
    ok = make_ct_study(1, 32, 32, seed=6)
    files = _files(tmp_path / "in", [bomb, *ok])

    def send() -> list[tuple[int, str]]:
        _config.STORE_SEND_CHUNKED_DATASET = True
        ae = AE(ae_title="CT01")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(SecondaryCaptureImageStorage, DeflatedExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", h.port, ae_title=CALLED)
        try:
            out = []
            for f in files:
                status = assoc.send_c_store(f)
                out.append((int(status.Status), str(status.get("ErrorComment", ""))))
            return out
        finally:
            assoc.release()

    (bomb_status, comment), (ok_status, _) = await asyncio.to_thread(send)
    assert bomb_status == 0xC000 and ok_status == 0
    assert "bytes" in comment, comment
    [manifest] = await wait_for_async(h.queued, "the valid instance queued")
    assert len(manifest.files) == 1
    assert h.scp.status.instances_refused == 1


@pytest.mark.asyncio
async def test_open_association_study_sent_after_quiet_time(tmp_path: Path, stopper: list[Any]) -> None:
    h, task = await _harness(tmp_path, quiet_s=0.3)
    stopper.append((h, task))
    release = asyncio.Event()
    loop = asyncio.get_running_loop()
    sending = asyncio.create_task(
        asyncio.to_thread(
            _send, h.port, _files(tmp_path / "in", make_ct_study(2, 32, 32, seed=7)), hold=release, loop=loop
        )
    )
    # Queued while the association is still open (it waits for `release`).
    [manifest] = await wait_for_async(h.queued, "the quiet study queued")
    assert not sending.done()
    assert h.scp.snapshot().associations_open == 1
    release.set()
    assert await sending == [0, 0]
    assert len(manifest.files) == 2


@pytest.mark.asyncio
async def test_instances_left_staged_by_a_crash_are_queued_at_start(
    tmp_path: Path, stopper: list[Any]
) -> None:
    study = make_ct_study(2, 32, 32, seed=8)
    staged = tmp_path / A / "dicom-staging" / f"{B}.0123abcd"
    staged.mkdir(parents=True)
    (staged / "1.dcm").write_bytes(study[0])
    (staged / "2.dcm").write_bytes(study[1])
    (staged / "3.part").write_bytes(study[1][:100])  # never acknowledged
    (staged / "4.dcm").write_bytes(study[1])  # the same instance sent again
    h, task = await _harness(tmp_path)
    stopper.append((h, task))
    [manifest] = h.queued()  # queued before the SCP listened
    assert sorted(_dataset_bytes(h.outbox_file(manifest.transfer_id, i)) for i in range(2)) == sorted(
        _dataset_bytes(d) for d in study
    )
    assert not staged.exists()
    assert h.scp.staging.used == 0


@pytest.mark.asyncio
async def test_a_pdu_claiming_gigabytes_ends_the_association_at_once(
    tmp_path: Path, stopper: list[Any]
) -> None:
    h, task = await _harness(tmp_path)
    stopper.append((h, task))

    def hostile() -> None:
        ae = AE(ae_title="CT01")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", h.port, ae_title=CALLED)
        assert assoc.is_established
        # A P-DATA-TF PDU header claiming 2 GiB, then a trickle: pynetdicom alone would wait to read it all.
        assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
        raw = assoc.dul.socket.socket
        raw.sendall(b"\x04\x00" + (1 << 31).to_bytes(4, "big") + b"\x00" * 4096)

    await asyncio.to_thread(hostile)
    # Well before the 60 s network timeout: the read is refused as soon as the length is seen.
    await wait_for_async(lambda: h.scp.snapshot().associations_open == 0, "the association ended", timeout=10)
    assert await asyncio.to_thread(
        _send, h.port, _files(tmp_path / "in", make_ct_study(1, 32, 32, seed=9))
    ) == [0]


@pytest.mark.asyncio
async def test_an_instance_larger_than_staging_is_cut_off_not_held(
    tmp_path: Path, stopper: list[Any]
) -> None:
    h, task = await _harness(tmp_path, staging_max_bytes=1 << 20)
    stopper.append((h, task))
    big = _files(tmp_path / "in", make_ct_study(1, 1024, 1024, seed=10))  # 2 MiB: cannot be staged

    def send() -> bool:
        _config.STORE_SEND_CHUNKED_DATASET = True
        ae = AE(ae_title="CT01")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", h.port, ae_title=CALLED)
        status = assoc.send_c_store(big[0])
        if assoc.is_established:
            assoc.release()
        return "Status" in status

    # Cut off once more bytes came than staging could hold (no answer, the association ends), not read
    # whole and then answered 0xA700.
    assert await asyncio.to_thread(send) is False
    await wait_for_async(lambda: h.scp.snapshot().associations_open == 0, "the association ended", timeout=10)
    assert h.scp.staging.used == 0 and h.queued() == []


@pytest.mark.asyncio
async def test_status_shows_the_scp_and_each_destination(tmp_path: Path, stopper: list[Any]) -> None:
    h, task = await _harness(tmp_path)
    stopper.append((h, task))
    ledger = ForwardLedger.open(tmp_path / "forwards.sqlite3")
    config = DicomGatewayConfig(
        ae_title="QLINK_A",
        listen=Address(host="127.0.0.1", port=0),
        destinations=(
            DicomDestination(name="pacs", ae_title="PACS", address=Address(host="127.0.0.1", port=104)),
        ),
    )
    audit = AuditLog.open(tmp_path / "gw.audit", facility=A)
    gateway = DicomGateway(
        config,
        plane=h.plane,
        validator=ContentValidator(workers=0),
        ledger=ledger,
        audit=audit,
        state_dir=tmp_path / "gw",
    )
    gateway.scp = h.scp  # the harness's running SCP, with what it received
    tid = "0f0e0d0c-0b0a-4908-8706-050403020100"
    ledger.add("dicom", tid, ["pacs"])
    forward = ledger.head("dicom", "pacs")
    assert forward is not None
    ledger.failed(forward, "ConnectionRefusedError: [Errno 111]", 5.0)
    assert await asyncio.to_thread(
        _send, h.port, _files(tmp_path / "in", make_ct_study(1, 32, 32, seed=12))
    ) == [0]
    await wait_for_async(h.queued, "the study queued")
    status = json.loads(json.dumps(gateway.status()))  # plain JSON
    assert status["ae_title"] == "QLINK_A" and status["listening"] == f"127.0.0.1:{h.port}"
    assert (status["instances_received"], status["instances_refused"], status["studies_queued"]) == (1, 0, 1)
    [pacs] = status["destinations"]
    assert (pacs["destination"], pacs["pending"], pacs["parked"], pacs["delivered"]) == ("pacs", 1, 0, 0)
    assert pacs["last_error"].startswith("ConnectionRefusedError")
    ledger.close()


DCMTK_TLS = pytest.mark.skipif(
    shutil.which("storescu") is None or shutil.which("storescp") is None,
    reason="dcmtk (storescu, storescp) is not installed: apt-get install dcmtk",
)


async def _storescu(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "storescu", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(errors="replace")


@DCMTK_TLS
@pytest.mark.asyncio
async def test_dicom_tls_scp_takes_storescu_over_mutual_tls_only(tmp_path: Path, stopper: list[Any]) -> None:
    h, task = await _harness(tmp_path, tls=True)
    stopper.append((h, task))
    certs = _certs(tmp_path)
    files = [str(p) for p in _files(tmp_path / "in", make_ct_study(2, 32, 32, seed=13))]
    target = ("-aet", "CT01", "-aec", CALLED, "127.0.0.1", str(h.port))
    tls = ("+tls", str(certs[f"{MODALITY}.key"]), str(certs[f"{MODALITY}.pem"]), "+cf", str(certs["ca.pem"]))
    code, out = await _storescu(*tls, *target, *files)
    assert code == 0, out
    [manifest] = await wait_for_async(h.queued, "the study queued")
    assert len(manifest.files) == 2
    # In the clear, or TLS without a client certificate: no association.
    code, out = await _storescu(*target, files[0])
    assert code != 0, out
    code, out = await _storescu("+tla", "+cf", str(certs["ca.pem"]), *target, files[0])
    assert code != 0, out
    assert len(h.queued()) == 1


@DCMTK_TLS
@pytest.mark.asyncio
async def test_dicom_tls_forward_to_storescp(tmp_path: Path, stopper: list[Any]) -> None:
    h, task = await _harness(tmp_path)
    stopper.append((h, task))
    certs = _certs(tmp_path)
    study = make_ct_study(2, 32, 32, seed=14)
    key = os.urandom(32)
    located: list[tuple[Path | bytes, bytes, str]] = [
        (
            at_rest.seal_at_rest(f"{i}.dcm", data, validate(f"{i}.dcm", data), key),
            key,
            hashlib.sha256(data).hexdigest(),
        )
        for i, data in enumerate(study)
    ]
    [port] = free_ports(1)
    destination = DicomDestination(
        name="pacs", ae_title="PACS", address=Address(host="127.0.0.1", port=port), tls=True
    )
    config = DicomGatewayConfig(
        ae_title="QLINK_B", listen=Address(host="127.0.0.1", port=0), destinations=(destination,)
    )
    ledger = ForwardLedger.open(tmp_path / "forwards.sqlite3")
    audit = AuditLog.open(tmp_path / "fw.audit", facility=A)
    client_ssl = client_context(certs["ca.pem"], certs[f"{A}.pem"], certs[f"{A}.key"])
    forwarding = DicomForwarding(config, plane=h.plane, ledger=ledger, audit=audit, client_ssl=client_ssl)
    out = tmp_path / "pacs"
    out.mkdir()
    tls = ("+tls", str(certs[f"{B}.key"]), str(certs[f"{B}.pem"]), "+cf", str(certs["ca.pem"]))
    pacs = await asyncio.create_subprocess_exec(
        "storescp",
        *tls,
        "+B",
        "-aet",
        "PACS",
        "-od",
        str(out),
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        attempt = await wait_for_async(
            lambda: _delivered_attempt(forwarding, destination, located), "storescp up and the study sent"
        )
    finally:
        pacs.terminate()
        await pacs.wait()
        ledger.close()
    assert attempt.verdict is Verdict.DELIVERED, attempt
    assert sorted(_dataset_bytes(p.read_bytes()) for p in out.iterdir()) == sorted(
        _dataset_bytes(d) for d in study
    )


async def _delivered_attempt(forwarding: DicomForwarding, destination: Any, located: Any) -> Attempt | None:
    # storescp gives no sign it listens: until it does, an attempt finds no association (RETRY).
    attempt = await asyncio.to_thread(forwarding.attempt_study, destination, located)
    return attempt if attempt.verdict is not Verdict.RETRY else None


@pytest.mark.asyncio
async def test_a_study_whose_at_rest_copy_fails_its_check_is_parked_not_fatal(
    tmp_path: Path, stopper: list[Any]
) -> None:
    h, task = await _harness(tmp_path)
    stopper.append((h, task))
    [data] = make_ct_study(1, 32, 32, seed=15)
    key = os.urandom(32)
    blob = bytearray(at_rest.seal_at_rest("0.dcm", data, validate("0.dcm", data), key))
    blob[-1] ^= 0x01  # the storage host altered it
    destination = DicomDestination(name="pacs", ae_title="PACS", address=Address(host="127.0.0.1", port=9))
    config = DicomGatewayConfig(
        ae_title="QLINK_B", listen=Address(host="127.0.0.1", port=0), destinations=(destination,)
    )
    ledger = ForwardLedger.open(tmp_path / "forwards.sqlite3")
    forwarding = DicomForwarding(
        config, plane=h.plane, ledger=ledger, audit=AuditLog.open(tmp_path / "fw.audit", facility=A)
    )
    try:
        located: list[tuple[Path | bytes, bytes, str]] = [
            (bytes(blob), key, hashlib.sha256(data).hexdigest())
        ]
        attempt = await asyncio.to_thread(forwarding.attempt_study, destination, located)
    finally:
        ledger.close()
    assert attempt.verdict is Verdict.PARK
    assert "IntegrityError" in attempt.detail, attempt


@pytest.mark.asyncio
async def test_a_pacs_that_never_answers_the_connect_is_retried_after_timeout_s(
    tmp_path: Path, stopper: list[Any]
) -> None:
    h, task = await _harness(tmp_path)
    stopper.append((h, task))
    # A listener whose accept queue is full: the kernel drops further SYNs, so a connect hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    [data] = make_ct_study(1, 32, 32, seed=16)
    key = os.urandom(32)
    located: list[tuple[Path | bytes, bytes, str]] = [
        (
            at_rest.seal_at_rest("0.dcm", data, validate("0.dcm", data), key),
            key,
            hashlib.sha256(data).hexdigest(),
        )
    ]
    destination = DicomDestination(name="pacs", ae_title="PACS", address=Address(host="127.0.0.1", port=port))
    config = DicomGatewayConfig(
        ae_title="QLINK_B", listen=Address(host="127.0.0.1", port=0), destinations=(destination,), timeout_s=1
    )
    ledger = ForwardLedger.open(tmp_path / "forwards.sqlite3")
    forwarding = DicomForwarding(
        config, plane=h.plane, ledger=ledger, audit=AuditLog.open(tmp_path / "fw.audit", facility=A)
    )
    try:
        # Bounded by timeout_s (1 s) and the ACSE timeout, far below the kernel's ~2 minutes of SYN retries.
        attempt = await asyncio.wait_for(
            asyncio.to_thread(forwarding.attempt_study, destination, located), 30
        )
    finally:
        ledger.close()
        for s in (*fillers, listener):
            s.close()
    assert attempt.verdict is Verdict.RETRY, attempt


@pytest.mark.asyncio
async def test_arrived_studies_are_owed_to_each_pacs_and_a_crash_gap_is_reconciled(tmp_path: Path) -> None:
    """Two data planes in this process: a study that arrived before the gateway listened (a crash between
    the inbox commit and the ledger write) is owed at start-up; one arriving after, by the listener."""
    certs = write_demo_pki(tmp_path / "pki2", [A, B])
    keys = PairedKeys()
    b = dataplane_plane(tmp_path, certs, keys, B, A, None)
    port = await b.start(Address(host="127.0.0.1", port=0))
    a = dataplane_plane(tmp_path, certs, keys, A, B, Address(host="127.0.0.1", port=port))
    senders = asyncio.create_task(a.run_senders())
    ledger = ForwardLedger.open(tmp_path / "forwards.sqlite3")
    pacs = tuple(
        DicomDestination(name=n, ae_title="PACS", address=Address(host="127.0.0.1", port=9))
        for n in ("p1", "p2")
    )
    config = DicomGatewayConfig(
        ae_title="QLINK_B", listen=Address(host="127.0.0.1", port=0), destinations=pacs
    )

    async def send(seed: int) -> str:
        study = make_ct_study(2, 32, 32, seed=seed)
        entries = [
            FileEntry(f"{i}.dcm", len(d), hashlib.sha256(d).hexdigest(), "dicom") for i, d in enumerate(study)
        ]
        upload = a.begin_upload(a.new_manifest(B, TransferKind.STUDY, entries))
        for i, data in enumerate(study):
            upload.start_file(i)
            upload.write(data)
        outcome = await asyncio.wait_for(a.queue(upload), 20)
        assert outcome.state is Outgoing.DELIVERED
        return upload.manifest.transfer_id

    try:
        before = await send(40)
        forwarding = DicomForwarding(
            config, plane=b, ledger=ledger, audit=AuditLog.open(tmp_path / "fw.audit", facility=B)
        )
        assert forwarding.reconcile() == 1
        assert forwarding.reconcile() == 0  # a row it has is left as it is
        after = await send(41)
        assert not forwarding.reconcile()
        for destination in ("p1", "p2"):
            assert [f.transfer_id for f in ledger.pending("dicom", destination)] == [before, after]
    finally:
        senders.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await senders
        await b.stop()
        a.close()
        b.close()
        ledger.close()
