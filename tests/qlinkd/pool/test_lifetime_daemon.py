"""Key lifetime on running daemons: with `[kme] key_expiry_s` set short, a key a master SAE took through
the ETSI GS QKD 014 API and its slave never fetched is deleted at the slave's end, which then tells the
slave it expired, records it in the audit log and counts it on /metrics; a key fetched at once is
unaffected."""

from __future__ import annotations

import json
import re
import ssl
from typing import Any

import httpx

from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.testbed.deployment import Deployment
from tests.polling import wait_for
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"
LIFETIME_S = 3.0
NOT_FOUND = "one or more keys specified are not found on KME"


def _sae(deployment: Deployment, name: str, facility: str) -> httpx.Client:
    cert, key = deployment.pki(name)
    context = ssl.create_default_context(cafile=str(deployment.root / "pki" / "ca.pem"))
    context.load_cert_chain(cert, key)
    return httpx.Client(base_url=deployment.kme_url(facility), verify=context, timeout=10.0)


def _expired_total(deployment: Deployment, facility: str, peer: str) -> float:
    text = httpx.get(deployment.local_url(facility) + "/metrics", timeout=5.0).text
    found = re.search(rf'^qlink_keys_expired_total{{peer="{peer}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else -1.0


def _audit(deployment: Deployment, facility: str) -> list[dict[str, Any]]:
    path = deployment.root / "state" / facility / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_an_unfetched_key_expires_at_the_slaves_end_of_a_running_link(testbeds: Testbeds) -> None:
    deployment = testbeds.write(pulses_per_round=500_000)
    for config in deployment.facilities.values():
        with config.open("a") as out:
            out.write(f"\n[kme]\nkey_expiry_s = {LIFETIME_S}\n")
    testbeds.start(deployment)
    master, slave = _sae(deployment, f"pacs-{A}", A), _sae(deployment, f"pacs-{B}", B)

    def enc_key() -> dict[str, str] | None:
        response = master.post(f"/api/v1/keys/pacs-{B}/enc_keys", json={"number": 1, "size": 256})
        return response.json()["keys"][0] if response.status_code == 200 else None

    fetched = wait_for(enc_key, "a key from A's KME")
    got = slave.get(f"/api/v1/keys/pacs-{A}/dec_keys", params={"key_ID": fetched["key_ID"]})
    assert got.status_code == 200, got.text  # fetched well within its lifetime
    assert got.json()["keys"] == [fetched]
    left = wait_for(enc_key, "a second key")

    wait_for(lambda: _expired_total(deployment, B, A) >= 1, "the unfetched key to expire at B")
    refused = slave.get(f"/api/v1/keys/pacs-{A}/dec_keys", params={"key_ID": left["key_ID"]})
    assert refused.status_code == 400
    error = refused.json()
    assert error["message"].startswith(NOT_FOUND) and "expired" in error["message"]
    assert error["details"] == [{"key_ID": left["key_ID"], "expired": True}]

    (record,) = [r for r in _audit(deployment, B) if r["event"] == "keys_expired"]
    assert record["key_IDs"] == [left["key_ID"]] and record["bits"] == 256 and record["peer"] == A
    assert (record["master_SAE_ID"], record["slave_SAE_ID"]) == (f"pacs-{A}", f"pacs-{B}")
    assert record["lifetime_s"] == LIFETIME_S
    assert left["key"] not in json.dumps(record)
    assert _expired_total(deployment, A, B) == 0.0  # the master's end held no copy to expire
    testbeds.stop_all()
    store = KeyStore.open(deployment.root / "state" / B / "keys.sqlite3")
    try:
        assert store.has_expired(left["key_ID"]) and not store.has_incoming(left["key_ID"])
    finally:
        store.close()
