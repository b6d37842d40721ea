"""The inbox for people, end to end through two facility daemons (real processes on loopback, as
tests/testbeds.py starts them): a CT study and an HL7 ORU sent from hospital-a arrive at hospital-b, whose
`[inbox]` purges a transfer as soon as it has been fetched.

`qlink inbox list` (the real CLI) shows each arrival's patient, accession, modality, study date and
description, or message type, patient and sender; its filters work, and so does the API's query through
an HTTP client that is not ours (urllib). Fetching the study, then the sweep, removes its files under
state_dir/inbox/<id>; the audit has inbox_purged; fetching again says when and why it was purged (410).
The same transfer sent again by hospital-a (its outbox and queue row put back while it is stopped) is
answered "delivered" from hospital-b's records and not stored again.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qlinkmed.client.commands.demo import _token
from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.testbed.deployment import DEFAULT_DEPARTMENT, Deployment
from qlinkmed.qlinkd.testbed.launcher import ProcessGroup
from qlinkmed.qlinkd.testbed.readers import reader_token
from tests.cli import qlink
from tests.dicom_factory import PATIENT_ID, make_ct_study
from tests.paths import REPO
from tests.polling import wait_for
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"
PULSES = 700_000
KEY_BITS = 32_000
INBOX_POLICY = "\n[inbox]\npurge_after_fetch_s = 0\nsweep_interval_s = 0.2\n"


def _owned_bits(target: DataTarget) -> int:
    status, body = target.json("GET", "/v1/status")
    return int(body["links"][0]["pool_bits_owned"]) if status == 200 else 0


@pytest.fixture(scope="module")
def group(module_testbeds: Testbeds) -> Iterator[ProcessGroup]:
    deployment = module_testbeds.write(pulses_per_round=PULSES)
    config_b = deployment.facilities[B]
    config_b.write_text(config_b.read_text() + INBOX_POLICY)
    started = module_testbeds.start(deployment)
    a = DataTarget(deployment.local_url(A), _token(deployment, A))
    b = DataTarget(deployment.local_url(B), _token(deployment, B))
    wait_for(lambda: _owned_bits(a) >= KEY_BITS and _owned_bits(b) >= KEY_BITS, "key in both pools")
    yield started
    for name, child in started.children.items():
        assert "Traceback" not in child.log(), f"{name}:\n{child.log()[-3000:]}"


def _state(deployment: Deployment, facility: str) -> Path:
    return deployment.root / "state" / facility


def _audit(deployment: Deployment, facility: str) -> list[dict[str, Any]]:
    path = _state(deployment, facility) / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _urllib(deployment: Deployment, path: str) -> tuple[int, Any]:
    """GET with the standard library's client (independent of the CLI's http.client wrapper)."""
    request = urllib.request.Request(
        deployment.local_url(B) + path, headers={"Authorization": f"Bearer {reader_token(deployment, B)}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _list(capsys: pytest.CaptureFixture[str], config: str, *options: str) -> list[dict[str, Any]]:
    code, out, err = qlink(capsys, "inbox", "list", "--json", "--config", config, *options)
    assert code == 0, err
    return list(json.loads(out)["inbox"])


def test_the_inbox_lists_filters_purges_after_fetch_and_never_stores_a_transfer_twice(
    group: ProcessGroup, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = group.deployment
    # B's inbox is read as its all-data reader (the facility token sends only).
    monkeypatch.setenv("QLINK_USER_TOKEN", reader_token(deployment, B))
    config_a, config_b = str(deployment.facilities[A]), str(deployment.facilities[B])
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    slices = {
        f"IM{i + 1}": s for i, s in enumerate(make_ct_study(3, 16, 16, seed=17, patient_name="Müller^Jörg"))
    }
    for name, data in slices.items():
        (study_dir / name).write_bytes(data)
    code, out, err = qlink(capsys, "send", "--to", B, str(study_dir), "--json", "--config", config_a)
    assert code == 0, err
    (sent,) = [json.loads(line) for line in out.splitlines()]
    assert sent["state"] == "delivered"
    study = sent["transfer_id"]
    oru = tmp_path / "result.hl7"
    oru.write_bytes((REPO / "tests" / "data" / "oru_r01.hl7").read_bytes())
    code, out, err = qlink(capsys, "ehr", "send", "--to", B, str(oru), "--json", "--config", config_a)
    assert code == 0, err
    message = json.loads(out.splitlines()[0])["transfer_id"]

    # ---- the listing: every column, from the records
    listed = {r["transfer_id"]: r for r in _list(capsys, config_b)}
    assert set(listed) == {study, message}
    s, m = listed[study], listed[message]
    assert (s["patient_name"], s["patient_id"], s["accession"]) == ("Müller, Jörg", PATIENT_ID, "QLT-ACC-1")
    assert (s["modalities"], s["study_date"], s["instances"], s["kind"]) == (["CT"], "2024-06-04", 3, "study")
    assert (m["message_type"], m["patient_id"], m["sender"]) == (
        "ORU^R01^ORU_R01",
        "QLT-0042",
        "QLINKLAB@GENERAL HOSPITAL",
    )
    assert m["patient_name"] == "Qlinktest, Alice" and m["from"] == A
    code, out, err = qlink(capsys, "inbox", "list", "--config", config_b)
    assert code == 0, err
    lines = out.splitlines()
    assert all(len(line) <= 100 for line in lines), lines
    row = next(line for line in lines if line.startswith(study[:8]))
    # The testbed's [departments] default names every arrival: a DEPT column, the patient and detail
    # narrower for it (the patient ID is kept whole).
    assert lines[1].split()[3] == "DEPT" and row.split()[4] == DEFAULT_DEPARTMENT
    assert (s["department"], m["department"]) == (DEFAULT_DEPARTMENT, DEFAULT_DEPARTMENT)
    assert "Müller,… (QLT-0042)" in row and "QLT-ACC-1" in row and "CT 2024-06-…" in row
    assert row.rstrip().endswith("3 new")
    assert "ORU^R01 from QLINKLAB@" in next(line for line in lines if line.startswith(message[:8]))

    # ---- filters, through the CLI and through another HTTP client
    assert [r["transfer_id"] for r in _list(capsys, config_b, "--modality", "ct")] == [study]
    assert [r["transfer_id"] for r in _list(capsys, config_b, "--kind", "ehr")] == [message]
    assert [r["transfer_id"] for r in _list(capsys, config_b, "--patient", "JÖRG")] == [study]
    assert [r["transfer_id"] for r in _list(capsys, config_b, "--accession", "QLT-ACC-1")] == [study]
    assert len(_list(capsys, config_b, "--since", "1h", "--peer", A, "--unfetched")) == 2
    assert _list(capsys, config_b, "--until", "2000-01-01") == []
    assert len(_list(capsys, config_b, "--limit", "1")) == 1
    status, body = _urllib(deployment, "/v1/inbox?" + urllib.parse.urlencode({"patient": "qlinktest"}))
    assert status == 200 and [r["transfer_id"] for r in body["inbox"]] == [message]
    status, body = _urllib(deployment, "/v1/inbox?since=yesterday")
    assert status == 400 and body["field"] == "since" and "yesterday" in body["message"]
    code, _, err = qlink(capsys, "inbox", "list", "--since", "last week", "--config", config_b)
    assert code == 2 and "--since" in err

    # ---- fetch, then purge after fetch
    inbox_b = _state(deployment, B) / "inbox"
    assert sorted(p.name for p in (inbox_b / study).iterdir()) == ["0", "1", "2"]
    out_dir = tmp_path / "fetched"
    code, out, err = qlink(capsys, "inbox", "fetch", study[:8], "--out", str(out_dir), "--config", config_b)
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in (out_dir / study).iterdir()} == slices
    wait_for(lambda: not (inbox_b / study).exists(), "the fetched study's at-rest files purged")
    purges = [e for e in _audit(deployment, B) if e["event"] == "inbox_purged" and e["transfer"] == study]
    assert len(purges) == 1 and purges[0]["reason"] == "fetched" and purges[0]["bytes"] > 3 * 16 * 16 * 2
    with urllib.request.urlopen(deployment.local_url(B) + "/metrics", timeout=10) as scrape:
        metrics = scrape.read().decode()
    assert 'qlink_inbox_purged_total{reason="fetched"} 1.0' in metrics
    assert f'qlink_inbox_purged_bytes_total{{reason="fetched"}} {float(purges[0]["bytes"])}' in metrics
    listed = {r["transfer_id"]: r for r in _list(capsys, config_b)}
    assert listed[study]["purge_reason"] == "fetched" and listed[study]["state"] == "delivered"
    assert [r["transfer_id"] for r in _list(capsys, config_b, "--unfetched")] == [message]
    code, _, err = qlink(
        capsys, "inbox", "fetch", study, "--out", str(tmp_path / "again"), "--config", config_b
    )
    assert code == 1 and "purged" in err and "(fetched)" in err
    status, body = _urllib(deployment, f"/v1/inbox/{study}/files/0")
    assert status == 410 and "purged at" in body["message"] and "(fetched)" in body["message"]

    # ---- the same transfer sent again: answered from the records, not stored again
    finished_before = _outgoing(deployment, study)[1]
    assert group.kill(A, signal.SIGTERM) == 0
    outbox = _state(deployment, A) / "outbox" / study
    outbox.mkdir()
    for f in _file_list(deployment, study):
        (outbox / str(f["index"])).write_bytes(slices[f["name"]])
    with contextlib.closing(sqlite3.connect(_state(deployment, A) / "transfers.sqlite3")) as db:
        db.execute("UPDATE outgoing SET state = 'queued', finished_at = NULL WHERE transfer_id = ?", (study,))
        db.commit()
    group.start(A)
    group.wait_ready(A)
    wait_for(
        lambda: (
            _outgoing(deployment, study) != ("queued", None)
            and _outgoing(deployment, study)[1] != finished_before
        ),
        "hospital-a hears the re-sent study answered",
    )
    assert _outgoing(deployment, study)[0] == "delivered"
    assert not (inbox_b / study).exists()
    received = [
        e for e in _audit(deployment, B) if e["event"] == "transfer_received" and e["transfer"] == study
    ]
    assert len(received) == 1
    status, body = _urllib(deployment, f"/v1/inbox?id={study[:8]}")
    assert status == 200 and [r["purge_reason"] for r in body["inbox"]] == ["fetched"]


def _outgoing(deployment: Deployment, transfer_id: str) -> tuple[str, float | None]:
    """hospital-a's record of the transfer: (state, finished_at), read from its records file."""
    with contextlib.closing(sqlite3.connect(_state(deployment, A) / "transfers.sqlite3", timeout=10)) as db:
        row = db.execute(
            "SELECT state, finished_at FROM outgoing WHERE transfer_id = ?", (transfer_id,)
        ).fetchone()
    return str(row[0]), row[1]


def _file_list(deployment: Deployment, transfer_id: str) -> list[dict[str, Any]]:
    status, body = _urllib(deployment, f"/v1/inbox/{transfer_id}")
    assert status == 200, body
    return list(body["file_list"])
