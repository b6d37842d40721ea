"""EHR messages at rest in QOTPE form through two facility daemons (real processes on loopback): an HL7
ORU sent with `qlink ehr send` from hospital-a lands in hospital-b's inbox, placed by `[inbox] dir` on a
directory everyone may read, as data XOR alpha with alpha in b's key store; hospital-a's daemon drops its
copy of the pad (the link carries the notice); `qlink inbox fetch` gives the message back bit-exact; the
purge after the fetch erases the pad with the file; and, stopped and settled, both pools are identical.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from qlinkmed.client.commands.demo import _token
from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.content import qotp_at_rest
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.testbed.deployment import Deployment
from qlinkmed.qlinkd.testbed.readers import reader_token
from qlinkmed.qlinkd.testbed.settle import settle_stopped_stores
from tests.cli import qlink
from tests.paths import DATA
from tests.polling import wait_for
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"
PULSES = 700_000
KEY_BITS = 32_000
HL7 = (DATA / "oru_r01.hl7").read_bytes()


def _owned_bits(target: DataTarget) -> int:
    status, body = target.json("GET", "/v1/status")
    return int(body["links"][0]["pool_bits_owned"]) if status == 200 else 0


def _keys_db(deployment: Deployment, facility: str) -> Path:
    return deployment.root / "state" / facility / "keys.sqlite3"


def _query(path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """A read beside the running daemon (WAL: it never blocks the daemon's writes)."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        return db.execute(sql, params).fetchall()


def _audit(deployment: Deployment, facility: str) -> list[dict[str, Any]]:
    path = deployment.root / "state" / facility / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_an_hl7_message_rests_as_qotpe_on_a_world_readable_inbox_and_both_pools_stay_identical(
    testbeds: Testbeds, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared-inbox"
    shared.mkdir()
    shared.chmod(0o755)
    deployment = testbeds.write(pulses_per_round=PULSES)
    config_b = deployment.facilities[B]
    config_b.write_text(
        config_b.read_text()
        + f'\n[inbox]\ndir = "{shared}"\npurge_after_fetch_s = 0\nsweep_interval_s = 0.2\n'
    )
    group = testbeds.start(deployment)
    a = DataTarget(deployment.local_url(A), _token(deployment, A))
    b = DataTarget(deployment.local_url(B), _token(deployment, B))
    wait_for(lambda: _owned_bits(a) >= KEY_BITS and _owned_bits(b) >= KEY_BITS, "key in both pools")

    oru = tmp_path / "result.hl7"
    oru.write_bytes(HL7)
    code, out, err = qlink(
        capsys, "ehr", "send", "--to", B, str(oru), "--json", "--config", str(deployment.facilities[A])
    )
    assert code == 0, err
    sent = json.loads(out.splitlines()[0])
    assert sent["state"] == "delivered"
    tid = sent["transfer_id"]

    # ---- at rest: on the shared directory, nothing of the message; its pad only in b's key store
    stored = (shared / tid / "0").read_bytes()
    assert qotp_at_rest.is_qotpe(stored)
    assert b"Qlinktest" not in stored and b"MSH|" not in stored
    assert not any(HL7[i : i + 8] in stored for i in range(len(HL7) - 7))
    ((form, pad),) = _query(
        _keys_db(deployment, B), "SELECT form, material FROM at_rest WHERE transfer_id = ?", tid
    )
    assert form == "qotpe" and len(pad) == qotp_at_rest.pad_bytes(len(HL7))
    assert stored[14 : 14 + len(HL7)] == bytes(x ^ y for x, y in zip(HL7, pad, strict=False))
    records = deployment.root / "state" / B / "transfers.sqlite3"
    assert _query(records, "SELECT at_rest_key, blob FROM incoming WHERE transfer_id = ?", tid) == [
        (None, None)
    ]
    # hospital-a carved the same bytes and kept none of them (a tombstone, nothing held for an SAE).
    wait_for(
        lambda: (
            _query(_keys_db(deployment, A), "SELECT COUNT(*) FROM fetched WHERE peer = ?", B)[0][0] >= 1
            and not _query(_keys_db(deployment, B), "SELECT 1 FROM outbox WHERE slave_sae = 'qlinkd:discard'")
        ),
        "hospital-a accepts the pad's notice",
    )
    assert _query(_keys_db(deployment, A), "SELECT COUNT(*) FROM incoming WHERE peer = ?", B) == [(0,)]

    # ---- fetched bit-exact, then purged with its pad
    monkeypatch.setenv("QLINK_USER_TOKEN", reader_token(deployment, B))
    out_dir = tmp_path / "fetched"
    code, out, err = qlink(
        capsys, "inbox", "fetch", tid[:8], "--out", str(out_dir), "--config", str(config_b)
    )
    assert code == 0, err
    assert [p.read_bytes() for p in (out_dir / tid).iterdir()] == [HL7]
    wait_for(lambda: not (shared / tid).exists(), "the fetched message's file purged")
    assert _query(_keys_db(deployment, B), "SELECT COUNT(*) FROM at_rest") == [(0,)]
    assert any(e["event"] == "inbox_purged" and e["transfer"] == tid for e in _audit(deployment, B))

    # ---- stopped and settled: both ends hold exactly the same rounds
    group.stop_all()
    for name, child in group.children.items():
        assert "Traceback" not in child.log(), f"{name}:\n{child.log()[-3000:]}"
    settle_stopped_stores(deployment)
    identities = []
    for facility, peer in ((A, B), (B, A)):
        store = KeyStore.open(_keys_db(deployment, facility))
        try:
            identities.append(store.pool_identities(peer))
        finally:
            store.close()
    assert identities[0] == identities[1] and identities[0]
