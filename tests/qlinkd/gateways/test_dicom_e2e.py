"""The DICOM gateway end to end with dcmtk as the modality and as the PACS: the channel service and two
facility daemons as real processes on loopback; dcmtk's `echoscu` and `storescu` call hospital-a's SCP
with a called AE title routed to hospital-b; hospital-b forwards every study to a dcmtk `storescp`
("pacs", started late, so the first attempts find it down) and to a refusing SCP ("refuser", answering
0xA900), both started by the test on free ports and stopped by it.

Checked: the echo; an unrouted called AE title rejected; every instance arriving at the PACS with its
data set byte for byte as storescu sent it; the PACS forward retried, then delivered and audited; the
refused study parked with its status in the ledger and the audit log; a study mixing SOP classes and
transfer syntaxes (sent by a pynetdicom SCU that proposes each file's own syntax) arriving at the PACS
with every instance in the syntax it was sent in. Skips when dcmtk is missing (CI
installs it: `dev`'s debian_tools)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, StoragePresentationContexts, _config, evt

from qlinkmed.client.commands.demo import _token
from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.testbed.deployment import Deployment, free_ports
from qlinkmed.qlinkd.testbed.launcher import ProcessGroup
from tests.dicom_factory import make_ct_study, make_image_dicom
from tests.polling import wait_for
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"
PULSES = 700_000
KEY_BITS = 64_000
INSTANCES = 5
DCMTK = ("echoscu", "storescu", "storescp")

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in DCMTK),
    reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk",
)


@dataclass(frozen=True, slots=True)
class Site:
    deployment: Deployment
    group: ProcessGroup
    scp_port: int
    pacs_port: int

    def ledger(self) -> list[dict[str, Any]]:
        path = self.deployment.root / "state" / B / "forwards.sqlite3"
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM forwards ORDER BY seq")]
        finally:
            db.close()

    def audit(self, facility: str) -> list[dict[str, Any]]:
        path = self.deployment.root / "state" / facility / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _owned_bits(target: DataTarget) -> int:
    status, body = target.json("GET", "/v1/status")
    return int(body["links"][0]["pool_bits_owned"]) if status == 200 else 0


@pytest.fixture(scope="module")
def refuser() -> Iterator[int]:
    """A PACS that refuses every instance for good: 0xA900 (data set does not match SOP class)."""
    ae = AE(ae_title="REFUSER")
    ae.supported_contexts = StoragePresentationContexts
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0xA900)]
    )
    assert server is not None
    yield int(server.server_address[1])
    server.shutdown()


@pytest.fixture(scope="module")
def site(module_testbeds: Testbeds, refuser: int) -> Iterator[Site]:
    deployment = module_testbeds.write(pulses_per_round=PULSES)
    scp_a, scp_b, pacs = free_ports(3)
    with deployment.facilities[A].open("a") as f:
        f.write(
            f"""
[gateway.dicom]
ae_title = "QLINK_A"
listen = "127.0.0.1:{scp_a}"
quiet_s = 20

[[gateway.dicom.route]]
called_ae = "TO_HOSPITAL_B"
calling_ae = "CT01"
peer = "{B}"
"""
        )
    with deployment.facilities[B].open("a") as f:
        f.write(
            f"""
[gateway.dicom]
ae_title = "QLINK_B"
listen = "127.0.0.1:{scp_b}"

[[gateway.dicom.destination]]
name = "pacs"
ae_title = "PACS"
address = "127.0.0.1:{pacs}"

[[gateway.dicom.destination]]
name = "refuser"
ae_title = "REFUSER"
address = "127.0.0.1:{refuser}"
"""
        )
    group = module_testbeds.start(deployment)
    a = DataTarget(deployment.local_url(A), _token(deployment, A))
    b = DataTarget(deployment.local_url(B), _token(deployment, B))
    wait_for(lambda: _owned_bits(a) >= KEY_BITS and _owned_bits(b) >= KEY_BITS, "key in both pools")
    yield Site(deployment, group, scp_a, pacs)
    for name, child in group.children.items():
        assert "Traceback" not in child.log(), f"{name}:\n{child.log()[-3000:]}"
    # Both daemons stop cleanly with their gateways (pynetdicom's threads included), exit code 0.
    group.stop_all()
    for name, child in group.children.items():
        assert child.process.returncode == 0, (name, child.process.returncode, child.log()[-2000:])


def _dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 file: what follows the File Meta Information (group 0002, explicit VR
    little endian), parsed here without pydicom."""
    if part10[128:132] != b"DICM":
        raise ValueError("no DICM prefix")
    pos = 132
    while pos + 8 <= len(part10):
        group, _element = struct.unpack_from("<HH", part10, pos)
        if group != 0x0002:
            break
        vr = part10[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            (length,) = struct.unpack_from("<I", part10, pos + 8)
            pos += 12 + length
        else:
            (length,) = struct.unpack_from("<H", part10, pos + 6)
            pos += 8 + length
    return part10[pos:]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_echo_routed_and_unrouted(site: Site) -> None:
    ok = _run("echoscu", "-aet", "CT01", "-aec", "TO_HOSPITAL_B", "127.0.0.1", str(site.scp_port))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # Only routed titles are answered: an association must say where its instances go.
    own = _run("echoscu", "-aet", "CT01", "-aec", "QLINK_A", "127.0.0.1", str(site.scp_port))
    assert own.returncode != 0
    unrouted = _run("echoscu", "-aet", "CT02", "-aec", "TO_HOSPITAL_B", "127.0.0.1", str(site.scp_port))
    assert unrouted.returncode != 0
    assert "Called AE Title Not Recognized" in unrouted.stdout + unrouted.stderr


def test_study_forwarded_bit_exact_retried_and_parked(site: Site, tmp_path: Path) -> None:
    study = make_ct_study(INSTANCES, 64, 64, seed=17)
    files = []
    for i, data in enumerate(study):
        path = tmp_path / f"ct{i}.dcm"
        path.write_bytes(data)
        files.append(str(path))
    sent = _run("storescu", "-aet", "CT01", "-aec", "TO_HOSPITAL_B", "127.0.0.1", str(site.scp_port), *files)
    assert sent.returncode == 0, sent.stdout + sent.stderr

    # The study reaches B and is owed to both PACS; "pacs" is down: its row is retried, not parked.
    def pacs_row(state: str | None = None, attempts: int = 0) -> dict[str, Any] | None:
        rows = [r for r in site.ledger() if r["destination"] == "pacs"]
        if (
            len(rows) == 1
            and (state is None or rows[0]["state"] == state)
            and rows[0]["attempts"] >= attempts
        ):
            return rows[0]
        return None

    down = wait_for(lambda: pacs_row("pending", attempts=1), "a failed attempt at the PACS while it is down")
    assert down["last_error"], down
    out = tmp_path / "pacs"
    out.mkdir()
    pacs = subprocess.Popen(
        ["storescp", "+B", "+xa", "-aet", "PACS", "-od", str(out), str(site.pacs_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        delivered = wait_for(lambda: pacs_row("delivered"), "the study delivered to the PACS", timeout=120)
    finally:
        pacs.terminate()
        pacs.wait(10)
    assert delivered["attempts"] >= 2, delivered

    # Every instance at the PACS, its data set byte for byte as the modality's file holds it.
    expected = sorted(_dataset_bytes(data) for data in study)
    received = sorted(_dataset_bytes(p.read_bytes()) for p in out.iterdir())
    assert len(received) == INSTANCES
    assert received == expected
    uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in out.iterdir()}
    assert uids == {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}

    # The refusing PACS: parked, its status visible; audited at B. A audited the study it queued.
    refused = wait_for(
        lambda: next(
            (r for r in site.ledger() if r["destination"] == "refuser" and r["state"] == "parked"), None
        ),
        "the study parked at the refusing PACS",
    )
    assert "0xA900" in refused["last_error"], refused
    tid = delivered["transfer_id"]
    events = {(e["event"], e.get("destination")) for e in site.audit(B) if e.get("transfer") == tid}
    assert ("forward_failed", "pacs") in events
    assert ("forward_delivered", "pacs") in events
    assert ("forward_parked", "refuser") in events
    queued = [e for e in site.audit(A) if e["event"] == "dicom_study_queued"]
    assert [(e["transfer"], e["instances"]) for e in queued] == [(tid, INSTANCES)]
    staging = site.deployment.root / "state" / A / "dicom-staging"
    assert not any(staging.iterdir())


def test_a_study_of_several_classes_and_syntaxes_arrives_each_in_its_own(site: Site, tmp_path: Path) -> None:
    """CT in explicit VR, Secondary Capture deflated and in implicit VR, one study: each instance is
    forwarded in the syntax it arrived in (a syntax met after the first opens another association)."""
    uid = "1.2.826.0.1.3680043.8.498.17170001"
    instances = [
        *make_ct_study(2, 32, 32, study_uid=uid, seed=21),
        make_image_dicom(16, 16, seed=22, study_uid=uid, transfer_syntax=DeflatedExplicitVRLittleEndian),
        make_image_dicom(16, 16, seed=23, study_uid=uid, transfer_syntax=ImplicitVRLittleEndian),
    ]
    files = []
    for i, data in enumerate(instances):
        path = tmp_path / f"i{i}.dcm"
        path.write_bytes(data)
        files.append(str(path))
    out = tmp_path / "pacs"
    out.mkdir()
    before = {r["transfer_id"] for r in site.ledger()}
    pacs = subprocess.Popen(
        ["storescp", "+B", "+xa", "-aet", "PACS", "-od", str(out), str(site.pacs_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # pynetdicom as the modality here: storescu converts a deflated file to the syntax it negotiates,
        # while this SCU proposes exactly each file's own syntax and sends its bytes undecoded.
        _config.STORE_SEND_CHUNKED_DATASET = True
        ae = AE(ae_title="CT01")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(SecondaryCaptureImageStorage, DeflatedExplicitVRLittleEndian)
        ae.add_requested_context(SecondaryCaptureImageStorage, ImplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", site.scp_port, ae_title="TO_HOSPITAL_B")
        assert assoc.is_established
        try:
            statuses = [int(assoc.send_c_store(Path(f)).Status) for f in files]
        finally:
            assoc.release()
        assert statuses == [0, 0, 0, 0]
        row = wait_for(
            lambda: next(
                (
                    r
                    for r in site.ledger()
                    if r["transfer_id"] not in before
                    and r["destination"] == "pacs"
                    and r["state"] == "delivered"
                ),
                None,
            ),
            "the mixed study delivered to the PACS",
        )
    finally:
        pacs.terminate()
        pacs.wait(10)
    assert row["attempts"] == 1
    syntaxes = {str(dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in out.iterdir()}
    assert syntaxes == {ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian}
    assert sorted(_dataset_bytes(p.read_bytes()) for p in out.iterdir()) == sorted(
        _dataset_bytes(d) for d in instances
    )
