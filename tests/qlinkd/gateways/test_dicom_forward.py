"""B's forwarding to a dcmtk `storescp` as the PACS, in this process: the association runs over the
forwarding socket (qlinkd/gateways/dicom_socket.py: Nagle off, each read acknowledged at once) and a
study sent through it arrives bit-exact; the socket's reads keep pynetdicom's contract (exactly the bytes
asked for, across segments; what came before when the peer closes); with each instance decrypted while
the one before it is sent, a copy that fails its check stops the study at its turn (those before it at
the PACS, none after it sent) and parks it; a PACS killed mid-study makes the attempt a retry, and the
next attempt delivers every instance (those the PACS already had are sent again: at least once). The
socket's effect on time (no 40 ms delayed-ACK wait an instance) is a figure, not a test:
bench/bench_dicom_gateway.py prints it. The storescp tests skip when dcmtk is missing (CI installs it)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom._globals import MODE_REQUESTOR
from pynetdicom.association import Association

from qlinkmed.qlinkd.content import at_rest
from qlinkmed.qlinkd.content.validate import validate
from qlinkmed.qlinkd.gateways.dicom_config import DicomDestination, DicomGatewayConfig
from qlinkmed.qlinkd.gateways.dicom_forward import DicomForwarding
from qlinkmed.qlinkd.gateways.dicom_socket import PromptSocket
from qlinkmed.qlinkd.gateways.forwarder import Verdict
from qlinkmed.qlinkd.gateways.forwards import ForwardLedger
from qlinkmed.qlinkd.ops.audit import AuditLog
from qlinkmed.qlinkd.ops.toml_reader import Address
from qlinkmed.qlinkd.testbed.deployment import free_ports
from tests.dicom_factory import make_ct_study
from tests.polling import wait_for
from tests.qlinkd.gateways.test_dicom_e2e import _dataset_bytes
from tests.qlinkd.gateways.test_dicom_scp import _plane

needs_dcmtk = pytest.mark.skipif(
    shutil.which("storescp") is None, reason="dcmtk's storescp is not installed: apt-get install dcmtk"
)


@contextlib.contextmanager
def _storescp(port: int, out: Path) -> Iterator[subprocess.Popen[bytes]]:
    out.mkdir()
    process = subprocess.Popen(
        ["storescp", "+B", "-aet", "PACS", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    [port] = free_ports(1)
    with _storescp(port, tmp_path / "pacs") as process:
        yield port, tmp_path / "pacs", process


@pytest.fixture
def forwarding(
    tmp_path: Path, pacs: tuple[int, Path, subprocess.Popen[bytes]]
) -> Iterator[tuple[DicomForwarding, DicomDestination]]:
    """B's forwarding to the PACS, over a real data plane (its inbox is not read here: the test hands
    attempt_study the at-rest copies itself)."""
    port = pacs[0]
    destination = DicomDestination(name="pacs", ae_title="PACS", address=Address(host="127.0.0.1", port=port))
    config = DicomGatewayConfig(
        ae_title="QLINK_B", listen=Address(host="127.0.0.1", port=0), destinations=(destination,)
    )
    ledger = ForwardLedger.open(tmp_path / "forwards.sqlite3")
    audit = AuditLog.open(tmp_path / "fw.audit", facility="hospital-b")
    plane = _plane(tmp_path)
    try:
        yield DicomForwarding(config, plane=plane, ledger=ledger, audit=audit), destination
    finally:
        ledger.close()
        plane.close()


@needs_dcmtk
def test_the_forward_association_runs_without_nagle_and_the_study_arrives_bit_exact(
    pacs: tuple[int, Path, subprocess.Popen[bytes]], forwarding: tuple[DicomForwarding, DicomDestination]
) -> None:
    out = pacs[1]
    forwarder, destination = forwarding

    def associated() -> Any:
        assoc = forwarder._associate(destination, {(CTImageStorage, ExplicitVRLittleEndian): None})
        return assoc if assoc.is_established else None

    assoc = wait_for(associated, "storescp accepting an association")
    try:
        sock = assoc.dul.socket
        assert isinstance(sock, PromptSocket)
        assert sock.socket is not None
        assert sock.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()

    study = make_ct_study(3, 64, 64, seed=31)
    attempt = forwarder.attempt_study(destination, _sealed(study))
    assert attempt.verdict is Verdict.DELIVERED, attempt
    received = sorted(_dataset_bytes(p.read_bytes()) for p in out.iterdir())
    assert received == sorted(_dataset_bytes(d) for d in study)


@pytest.fixture
def pair() -> Iterator[tuple[PromptSocket, socket.socket]]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    wrapped = PromptSocket(Association(AE(), MODE_REQUESTOR), client_socket=client)
    try:
        yield wrapped, server
    finally:
        client.close()
        server.close()


def test_a_read_gathers_exactly_the_bytes_asked_for_across_segments(
    pair: tuple[PromptSocket, socket.socket],
) -> None:
    wrapped, server = pair
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header, body = b"\x04\x00\x00\x00\x00\xa4", os.urandom(200_000)
    for piece in (header[:2], header[2:], body[:7], body[7:], b"next"):
        server.sendall(piece)
    assert wrapped.recv(6) == header
    assert wrapped.recv(len(body)) == body
    assert wrapped.recv(4) == b"next"


def test_a_read_the_peer_cuts_short_returns_what_came(pair: tuple[PromptSocket, socket.socket]) -> None:
    wrapped, server = pair
    server.sendall(b"abc")
    server.close()
    assert wrapped.recv(10) == b"abc"
    assert wrapped.recv(10) == b""


def _sealed(study: list[bytes]) -> list[tuple[Path | bytes, bytes, str]]:
    key = os.urandom(32)
    return [
        (
            at_rest.seal_at_rest(f"{i}.dcm", data, validate(f"{i}.dcm", data), key),
            key,
            hashlib.sha256(data).hexdigest(),
        )
        for i, data in enumerate(study)
    ]


@needs_dcmtk
def test_an_instance_failing_its_check_mid_study_parks_it_at_its_turn(
    pacs: tuple[int, Path, subprocess.Popen[bytes]], forwarding: tuple[DicomForwarding, DicomDestination]
) -> None:
    out = pacs[1]
    forwarder, destination = forwarding
    study = make_ct_study(4, 64, 64, seed=32)
    located = _sealed(study)
    source, key, sha256 = located[2]
    assert isinstance(source, bytes)
    tampered = bytearray(source)
    tampered[-1] ^= 0x01  # the storage host altered the third instance
    located[2] = (bytes(tampered), key, sha256)

    def attempted() -> Any:
        attempt = forwarder.attempt_study(destination, located)
        # storescp gives no sign it listens: until it does, an attempt finds no association (RETRY).
        return attempt if attempt.verdict is not Verdict.RETRY else None

    attempt = wait_for(attempted, "storescp up and the study attempted")
    assert attempt.verdict is Verdict.PARK, attempt
    assert "IntegrityError" in attempt.detail, attempt
    received = sorted(_dataset_bytes(p.read_bytes()) for p in out.iterdir())
    assert received == sorted(_dataset_bytes(d) for d in study[:2])


@needs_dcmtk
def test_a_pacs_lost_mid_study_is_retried_and_the_next_attempt_delivers_every_instance(
    tmp_path: Path,
    pacs: tuple[int, Path, subprocess.Popen[bytes]],
    forwarding: tuple[DicomForwarding, DicomDestination],
) -> None:
    port, out, process = pacs
    forwarder, destination = forwarding
    study = make_ct_study(300, 128, 128, seed=33)
    located = _sealed(study)
    wait_for(lambda: _listening(port), "storescp listening")
    with ThreadPoolExecutor(max_workers=1) as pool:
        sending = pool.submit(forwarder.attempt_study, destination, located)
        wait_for(lambda: len(list(out.iterdir())) >= 3, "the PACS holding the study's first instances")
        process.kill()  # the PACS host fails mid-study
        process.wait(10)
        first = sending.result(timeout=120)
    assert first.verdict is Verdict.RETRY, first
    assert "to resend" in first.detail, first
    assert 3 <= len(list(out.iterdir())) < len(study)

    # The PACS is back (a fresh store): the whole study goes again, those it had included (at least once).
    again = tmp_path / "pacs-again"
    with _storescp(port, again):
        wait_for(lambda: _listening(port), "storescp listening again")
        second = forwarder.attempt_study(destination, located)
    assert second.verdict is Verdict.DELIVERED, second
    received = sorted(_dataset_bytes(p.read_bytes()) for p in again.iterdir())
    assert received == sorted(_dataset_bytes(d) for d in study)


def _listening(port: int) -> bool:
    # A bare TCP connection: storescp logs a failed association and goes on listening.
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False
