"""Bounded input against running daemons (issue 14, item 2): the deflated-DICOM bomb and an oversized EHR
message are refused by the daemon's local API (400, or a JSON 413 naming the limit) and, with the same
message, by `qlink send` / `qlink ehr send` before anything is uploaded; a client that disconnects in the
middle of its request body costs one INFO line, not an ERROR traceback (local API and ETSI 014 KME).

One loopback deployment (channel service and two daemons as real processes) serves the module; the
refusals need no key, so nothing waits for the link."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
from pathlib import Path

import pytest

from qlinkmed.client.commands.demo import _token
from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.testbed.launcher import ProcessGroup
from tests.cli import qlink
from tests.dicom_factory import make_deflate_bomb
from tests.polling import wait_for
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"
MIB = 1 << 20
BOMB_PROBLEM = (
    "the deflated data set declares 1,073,741,824 bytes of pixel data (32768 x 16384 x 1 frame(s) x "
    "1 sample(s) at 16 bits), over the 536,870,912-byte limit for decoded content"
)


@pytest.fixture(scope="module")
def group(module_testbeds: Testbeds) -> ProcessGroup:
    return module_testbeds.launch(pulses_per_round=700_000)


@pytest.fixture(scope="module")
def a(group: ProcessGroup) -> DataTarget:
    return DataTarget(group.deployment.local_url(A), _token(group.deployment, A))


def _transfers(a: DataTarget) -> list[dict[str, object]]:
    status, body = a.json("GET", "/v1/transfers")
    assert status == 200, body
    return list(body["transfers"])


def _upload_body(name: str, data: bytes) -> bytes:
    manifest = {
        "kind": "study",
        "study_uid": None,
        "files": [[name, len(data), hashlib.sha256(data).hexdigest(), "dicom"]],
    }
    declared = json.dumps(manifest).encode()
    return len(declared).to_bytes(4, "big") + declared + data


def test_the_bomb_is_refused_by_the_daemon_and_by_qlink_send_with_one_message(
    group: ProcessGroup, a: DataTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bomb = make_deflate_bomb(32768, 16384, bits=16, zeros=8 * MIB)  # declares 1 GiB of pixel data
    status, body = a.json("POST", f"/v1/transfers?to={B}", body=_upload_body("bomb.dcm", bomb))
    assert status == 400, body
    assert body["message"] == f"bomb.dcm: {BOMB_PROBLEM}"

    (tmp_path / "bomb.dcm").write_bytes(bomb)
    before = _transfers(a)
    config = str(group.deployment.facilities[A])
    code, out, err = qlink(capsys, "send", "--to", B, str(tmp_path / "bomb.dcm"), "--config", config)
    assert (code, out) == (1, "")
    assert err == f"qlink send: bomb.dcm: {BOMB_PROBLEM}\n"
    assert _transfers(a) == before


def test_an_ehr_message_over_the_limit_is_a_json_413_and_refused_before_upload(
    group: ProcessGroup, a: DataTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\rPID|1||" + b"x" * (9 * MIB) + b"\r"
    problem = (
        f"{len(message):,} bytes is over the 8,388,608-byte limit for an EHR message (FHIR JSON or HL7 v2)"
    )
    status, body = a.json("POST", f"/v1/ehr?to={B}&name=big.hl7", body=message)
    assert status == 413
    assert body == {"message": f"big.hl7: {problem}", "limit_bytes": 8 * MIB}

    (tmp_path / "big.hl7").write_bytes(message)
    before = _transfers(a)
    config = str(group.deployment.facilities[A])
    code, out, err = qlink(capsys, "ehr", "send", "--to", B, str(tmp_path / "big.hl7"), "--config", config)
    assert (code, out) == (1, "")
    assert err == f"qlink ehr send: big.hl7: {problem}\n"
    assert _transfers(a) == before


def _half_a_body(sock: socket.socket, request_line: str, headers: dict[str, str]) -> None:
    """Send a request whose body stops at 10 of its 1000 declared bytes, then close the connection."""
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Content-Length": "1000"}.items())
    sock.sendall(f"{request_line}\r\n{head}\r\n".encode() + b"{" * 10)
    sock.close()


def test_a_client_leaving_mid_body_is_one_info_line_not_a_traceback(
    group: ProcessGroup, a: DataTarget
) -> None:
    deployment = group.deployment
    local = socket.create_connection(("127.0.0.1", deployment.ports[f"{A}.local"]))
    _half_a_body(
        local,
        f"POST /v1/ehr?to={B}&name=x.json HTTP/1.1",
        {"Host": "a", "Authorization": f"Bearer {a.token}"},
    )

    context = ssl.create_default_context(cafile=str(deployment.root / "pki" / "ca.pem"))
    context.load_cert_chain(*deployment.pki(f"pacs-{A}"))
    context.check_hostname = False  # the KME's certificate names its facility, not 127.0.0.1
    raw = socket.create_connection(("127.0.0.1", deployment.ports[f"{A}.kme"]))
    kme = context.wrap_socket(raw)
    _half_a_body(kme, f"POST /api/v1/keys/pacs-{B}/enc_keys HTTP/1.1", {"Host": "kme"})

    log = group.children[A].log
    wait_for(lambda: "POST /v1/ehr: the client went away" in log(), "the local API's line")
    wait_for(lambda: f"POST /api/v1/keys/pacs-{B}/enc_keys: the client went away" in log(), "the KME's line")
    assert "Traceback" not in log()
    assert a.json("GET", "/v1/status")[0] == 200
