"""The ETSI GS QKD 014 API of two facilities' KMEs, served by aiohttp over mutual TLS on loopback and
called with httpx (an independent client) presenting SAE certificates."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web

from qlinkmed.qlinkd.errors import ConfigError, StoreError
from qlinkmed.qlinkd.ops import pki
from qlinkmed.qlinkd.pool.etsi import KmePolicy, make_kme_app
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.pool.kme import StoreKeyManager, round_owner

A, B = "hospital-a", "hospital-b"
SAES = ("sae-a1", "sae-b1", "sae-b2", "intruder")
ROUND_BYTES = 64
STATUS_FIELDS = {
    "source_KME_ID",
    "target_KME_ID",
    "master_SAE_ID",
    "slave_SAE_ID",
    "key_size",
    "stored_key_count",
    "max_key_count",
    "max_key_per_request",
    "max_key_size",
    "min_key_size",
    "max_SAE_ID_count",
}
NOT_FOUND = "one or more keys specified are not found on KME"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (cert path, key path); "ca" -> (ca cert, ca key). The intruder holds a CA-signed
    certificate but is registered with no KME."""
    directory = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = pki.create_ca("test CA")
    out: dict[str, tuple[Path, Path]] = {}

    def save(name: str, cert: bytes, key: bytes) -> None:
        (directory / f"{name}.pem").write_bytes(cert)
        (directory / f"{name}.key").write_bytes(key)
        out[name] = (directory / f"{name}.pem", directory / f"{name}.key")

    save("ca", ca_cert, ca_key)
    for kme in (A, B):
        save(kme, *pki.issue(ca_cert, ca_key, kme, server_names=["127.0.0.1"], client=False, server=True))
    for sae in SAES:
        save(sae, *pki.issue(ca_cert, ca_key, sae, client=True, server=False))
    return out


class WaitingManager(StoreKeyManager):
    """Records when a dec_keys request starts waiting for a notice, so a test can deliver it then."""

    def __init__(self, store: KeyStore, **kwargs: Any) -> None:
        super().__init__(store, **kwargs)
        self.store = store
        self.waiting = asyncio.Event()

    async def wait_notice(self, key_ids: list[str], timeout: float) -> None:
        if not all(self.store.has_incoming(k) for k in key_ids):
            self.waiting.set()
        await super().wait_notice(key_ids, timeout)


@dataclass
class Link:
    stores: dict[str, KeyStore]
    managers: dict[str, WaitingManager]
    ports: dict[str, int]
    certs: dict[str, tuple[Path, Path]]
    round_keys: dict[int, bytes]
    sent: list[tuple[str, Any]] = field(default_factory=list)
    audit: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, sae: str, kme: str) -> httpx.AsyncClient:
        cert, key = self.certs[sae]
        context = pki.client_context(self.certs["ca"][0], cert, key)
        client = httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{self.ports[kme]}/api/v1/keys", verify=context, timeout=10
        )
        self.clients.append(client)
        return client

    def forward_notices(self) -> int:
        """What the daemons do over the peer link: A's outbox to B's store, then acknowledged."""
        notices = self.stores[A].outbox(B)
        for notice in notices:
            self.stores[B].accept_notice(A, notice)
            self.managers[B].notice_arrived()
            self.stores[A].ack_notice(B, notice.key_id)
        return len(notices)


async def _serve(app: web.Application, context: ssl.SSLContext) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock, ssl_context=context).start()
    return runner, sock.getsockname()[1]


@pytest_asyncio.fixture
async def link(tmp_path: Path, certs: dict[str, tuple[Path, Path]]):
    stores = {A: KeyStore.open(tmp_path / "a.db"), B: KeyStore.open(tmp_path / "b.db")}
    peer_of = {A: B, B: A}
    round_keys = {r: bytes([r]) * 8 + bytes(range(ROUND_BYTES - 8)) for r in range(1, 5)}
    for facility, store in stores.items():
        peer = peer_of[facility]
        store.init_auth(peer, b"\x07" * 96)
        for r, round_key in round_keys.items():
            store.note_round_started(peer, r)
            store.store_pending(
                peer, r, owner=round_owner(r, facility, peer), key=round_key, auth_refill=b"\x01" * 48
            )
            store.commit(peer, r)
    result = Link(stores=stores, managers={}, ports={}, certs=certs, round_keys=round_keys)
    result.managers[A] = WaitingManager(
        stores[A],
        facility=A,
        local_saes={"sae-a1"},
        sae_to_peer={"sae-b1": B, "sae-b2": B},
        notify_sent=lambda peer, notice: result.sent.append((peer, notice)),
        pool_capacity_bits=8192,
    )
    result.managers[B] = WaitingManager(
        stores[B], facility=B, local_saes={"sae-b1", "sae-b2"}, sae_to_peer={"sae-a1": A}
    )
    runners = []
    for facility in (A, B):
        cert, key = certs[facility]
        app = make_kme_app(
            result.managers[facility],
            KmePolicy(notice_wait_s=0.2),
            audit=lambda event, fields: result.audit.append((event, fields)),
        )
        runner, port = await _serve(app, pki.server_context(certs["ca"][0], cert, key))
        runners.append(runner)
        result.ports[facility] = port
    try:
        yield result
    finally:
        for client in result.clients:
            await client.aclose()
        for runner in runners:
            await runner.cleanup()
        for store in stores.values():
            store.close()


def key_bytes(body: dict[str, Any]) -> dict[str, bytes]:
    return {k["key_ID"]: base64.b64decode(k["key"], validate=True) for k in body["keys"]}


@pytest.mark.asyncio
async def test_status_reports_the_standard_fields(link: Link) -> None:
    response = await link.client("sae-a1", A).get("/sae-b1/status")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    status = response.json()
    assert set(status) == STATUS_FIELDS
    assert status == {
        "source_KME_ID": A,
        "target_KME_ID": B,
        "master_SAE_ID": "sae-a1",
        "slave_SAE_ID": "sae-b1",
        "key_size": 256,
        "stored_key_count": 2 * ROUND_BYTES * 8 // 256,  # A owns the odd rounds 1 and 3
        "max_key_count": 8192 // 256,
        "max_key_per_request": 128,
        "max_key_size": 4096,
        "min_key_size": 64,
        "max_SAE_ID_count": 0,
    }
    unknown = await link.client("sae-a1", A).get("/nobody/status")
    assert unknown.status_code == 400
    assert "nobody" in unknown.json()["message"]


@pytest.mark.asyncio
async def test_keys_reach_the_slave_identical_and_only_once(link: Link) -> None:
    master, slave = link.client("sae-a1", A), link.client("sae-b1", B)
    response = await master.post("/sae-b1/enc_keys", json={"number": 2, "size": 256})
    assert response.status_code == 200
    sent = key_bytes(response.json())
    assert len(sent) == 2
    assert all(len(k) == 32 for k in sent.values())
    # FIFO from A's first round (round 1, which A owns).
    assert list(sent.values()) == [link.round_keys[1][:32], link.round_keys[1][32:]]
    assert [n.key_id for _, n in link.sent] == list(sent)
    assert link.forward_notices() == 2

    ids = [{"key_ID": k} for k in sent]
    response = await slave.post("/sae-a1/dec_keys", json={"key_IDs": ids})
    assert response.status_code == 200
    assert key_bytes(response.json()) == sent

    again = await slave.post("/sae-a1/dec_keys", json={"key_IDs": ids[:1]})
    assert again.status_code == 400
    assert again.json()["message"] == NOT_FOUND
    status = (await master.get("/sae-b1/status")).json()
    assert status["stored_key_count"] == 2

    events = [event for event, _ in link.audit]
    assert events.count("etsi.enc_keys") == 1
    assert events.count("etsi.dec_keys") == 1
    logged = repr(link.audit)
    for material in sent.values():
        assert base64.b64encode(material).decode() not in logged
        assert material.hex() not in logged


@pytest.mark.asyncio
async def test_a_slave_asking_for_an_expired_key_is_told_it_expired(link: Link) -> None:
    response = await link.client("sae-a1", A).post("/sae-b1/enc_keys", json={"number": 2})
    expired, kept = key_bytes(response.json())
    link.forward_notices()
    store = link.stores[B]
    # Only the first is past its lifetime: the sweep runs a minute after the second arrived, with a lifetime
    # that the first (made older by hand: both arrived this instant) has outlived.
    store._db.execute("UPDATE incoming SET received_at = received_at - 120 WHERE key_id = ?", (expired,))
    (gone,) = store.expire_unfetched(60.0, now=time.time())
    assert gone.key_ids == (expired,)
    slave = link.client("sae-b1", B)
    unknown = "00000000-0000-4000-8000-000000000000"
    response = await slave.post(
        "/sae-a1/dec_keys", json={"key_IDs": [{"key_ID": expired}, {"key_ID": unknown}]}
    )
    assert response.status_code == 400
    error = response.json()
    assert error["message"].startswith(NOT_FOUND) and "expired" in error["message"]
    assert error["details"] == [{"key_ID": expired, "expired": True}, {"key_ID": unknown}]
    alone = await slave.get("/sae-a1/dec_keys", params={"key_ID": expired})
    assert alone.status_code == 400 and "expired" in alone.json()["message"]
    # A known, expired ID is not waited for (it would be for a minute, then the test fail, if it were).
    await asyncio.wait_for(link.managers[B].wait_notice([expired], timeout=60.0), timeout=30.0)
    missing = await slave.get("/sae-a1/dec_keys", params={"key_ID": unknown})
    assert missing.json() == {"message": NOT_FOUND, "details": [{"key_ID": unknown}]}
    fetched = await slave.get("/sae-a1/dec_keys", params={"key_ID": kept})
    assert fetched.status_code == 200 and list(key_bytes(fetched.json())) == [kept]


@pytest.mark.asyncio
async def test_only_the_intended_slave_may_fetch(link: Link) -> None:
    response = await link.client("sae-a1", A).post("/sae-b1/enc_keys", json={})
    [key_id] = key_bytes(response.json())
    link.forward_notices()
    wrong = await link.client("sae-b2", B).get("/sae-a1/dec_keys", params={"key_ID": key_id})
    assert wrong.status_code == 401
    right = await link.client("sae-b1", B).get("/sae-a1/dec_keys", params={"key_ID": key_id})
    assert right.status_code == 200  # the refused attempt consumed nothing
    assert list(key_bytes(right.json())) == [key_id]
    assert any(event == "etsi.refused" for event, _ in link.audit)


@pytest.mark.asyncio
async def test_an_unregistered_sae_certificate_is_refused(link: Link) -> None:
    intruder_a, intruder_b = link.client("intruder", A), link.client("intruder", B)
    assert (await intruder_a.get("/sae-b1/status")).status_code == 401
    assert (await intruder_a.post("/sae-b1/enc_keys", json={"number": 1})).status_code == 401
    response = await intruder_b.post(
        "/sae-a1/dec_keys", json={"key_IDs": [{"key_ID": "00000000-0000-4000-8000-000000000000"}]}
    )
    assert response.status_code == 401
    assert set(response.json()) == {"message", "details"}
    status = (await link.client("sae-a1", A).get("/sae-b1/status")).json()
    assert status["stored_key_count"] == 4


@pytest.mark.asyncio
async def test_a_client_without_certificate_cannot_connect(link: Link) -> None:
    context = ssl.create_default_context(cafile=str(link.certs["ca"][0]))
    async with httpx.AsyncClient(verify=context) as anonymous:
        with pytest.raises(httpx.TransportError):
            response = await anonymous.get(f"https://127.0.0.1:{link.ports[A]}/api/v1/keys/sae-b1/status")
            # TLS 1.3 may report the missing certificate only once the request is sent.
            response.raise_for_status()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"size": 100}, "size shall be a multiple of 8"),
        ({"extension_mandatory": [{"abc_route_type": "direct"}]}, "not all extension_mandatory"),
        ({"number": 0}, "number"),
        ({"number": 129}, "number"),
        ({"number": "2"}, "number"),
        ({"size": 32}, "size"),
        ({"size": 8192}, "size"),
        ({"additional_slave_SAE_IDs": ["sae-b2"]}, "additional_slave_SAE_IDs"),
        ([1, 2], "JSON object"),
    ],
)
async def test_enc_keys_bad_requests(link: Link, body: Any, message: str) -> None:
    response = await link.client("sae-a1", A).post("/sae-b1/enc_keys", json=body)
    assert response.status_code == 400
    error = response.json()
    assert message in error["message"]
    assert isinstance(error["details"], list)
    assert link.stores[A].outbox(B) == []  # nothing handed out


@pytest.mark.asyncio
async def test_enc_keys_mandated_messages_are_exact(link: Link) -> None:
    client = link.client("sae-a1", A)
    response = await client.post("/sae-b1/enc_keys", json={"size": 100})
    assert response.json()["message"] == "size shall be a multiple of 8"
    response = await client.post("/sae-b1/enc_keys", json={"extension_mandatory": [{"x": 1}]})
    assert response.json()["message"] == "not all extension_mandatory parameters are supported"
    bad_json = await client.post(
        "/sae-b1/enc_keys", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400
    unknown = await client.post("/sae-zz/enc_keys", json={})
    assert unknown.status_code == 400


@pytest.mark.asyncio
async def test_more_than_the_pool_holds_is_a_503_with_no_effect(link: Link) -> None:
    client = link.client("sae-a1", A)
    response = await client.post("/sae-b1/enc_keys", json={"number": 5, "size": 256})
    assert response.status_code == 503
    assert response.json()["message"].startswith("not enough key material: ")
    assert link.stores[A].outbox(B) == []
    ok = await client.post("/sae-b1/enc_keys", json={"number": 4, "size": 256})
    assert ok.status_code == 200
    assert len(ok.json()["keys"]) == 4


@pytest.mark.asyncio
async def test_get_forms(link: Link) -> None:
    master = link.client("sae-a1", A)
    response = await master.get("/sae-b1/enc_keys", params={"number": 2, "size": 128})
    assert response.status_code == 200
    sent = key_bytes(response.json())
    assert [len(k) for k in sent.values()] == [16, 16]
    default = await master.get("/sae-b1/enc_keys")
    assert [len(k) for k in key_bytes(default.json()).values()] == [32]
    extra = await master.get("/sae-b1/enc_keys", params={"number": 1, "extension_mandatory": "x"})
    assert extra.status_code == 400
    bad_size = await master.get("/sae-b1/enc_keys", params={"size": 100})
    assert bad_size.json()["message"] == "size shall be a multiple of 8"
    link.forward_notices()
    slave = link.client("sae-b1", B)
    for key_id, material in sent.items():
        response = await slave.get("/sae-a1/dec_keys", params={"key_ID": key_id})
        assert response.status_code == 200
        assert key_bytes(response.json()) == {key_id: material}
    missing = await slave.get("/sae-a1/dec_keys")
    assert missing.status_code == 400
    not_uuid = await slave.get("/sae-a1/dec_keys", params={"key_ID": "123"})
    assert not_uuid.status_code == 400


@pytest.mark.asyncio
async def test_dec_keys_waits_for_a_notice_still_in_flight(link: Link) -> None:
    response = await link.client("sae-a1", A).post("/sae-b1/enc_keys", json={"number": 1})
    [(key_id, material)] = key_bytes(response.json()).items()
    slave = link.client("sae-b1", B)
    # The slave asks before the notice has crossed the peer link; deliver it while the request waits.
    request = asyncio.create_task(slave.post("/sae-a1/dec_keys", json={"key_IDs": [{"key_ID": key_id}]}))
    try:
        await asyncio.wait_for(link.managers[B].waiting.wait(), 10)
        link.forward_notices()
        response = await asyncio.wait_for(request, 10)
    finally:
        if not request.done():
            request.cancel()
    assert response.status_code == 200
    assert key_bytes(response.json()) == {key_id: material}


@pytest.mark.asyncio
async def test_dec_keys_unknown_id_is_400_after_the_wait(link: Link) -> None:
    slave = link.client("sae-b1", B)
    body = {"key_IDs": [{"key_ID": "00000000-0000-4000-8000-000000000000"}]}
    response = await slave.post("/sae-a1/dec_keys", json=body)
    assert response.status_code == 400
    assert response.json()["message"] == NOT_FOUND
    assert link.managers[B].waiting.is_set()
    bad: dict[str, Any]
    for bad in ({}, {"key_IDs": []}, {"key_IDs": ["x"]}, {"key_IDs": [{"key_ID": 5}]}):
        response = await slave.post("/sae-a1/dec_keys", json=bad)
        assert response.status_code == 400
    unknown_master = await slave.post("/sae-zz/dec_keys", json=body)
    assert unknown_master.status_code == 400


@pytest.mark.asyncio
async def test_a_key_store_failure_is_a_503(link: Link, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("disk on fire")

    monkeypatch.setattr(link.managers[A], "enc_keys", broken)
    response = await link.client("sae-a1", A).post("/sae-b1/enc_keys", json={})
    assert response.status_code == 503
    assert "disk on fire" not in response.text  # internals stay in the KME's log
    assert set(response.json()) == {"message", "details"}


def test_round_ownership_rule() -> None:
    assert [round_owner(r, B, A) for r in (1, 2, 3)] == [A, B, A]
    assert [round_owner(r, A, B) for r in (1, 2, 3)] == [A, B, A]


def test_policy_is_validated() -> None:
    with pytest.raises(ConfigError):
        KmePolicy(key_size=100)
    with pytest.raises(ConfigError):
        KmePolicy(key_size=8, min_key_size=64)
    with pytest.raises(ConfigError):
        KmePolicy(max_key_per_request=0)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "raw",
    [
        b'{"number": ' + b"9" * 5000 + b"}",  # more digits than Python converts to an int
        b"[" * 30_000 + b"]" * 30_000,  # nested deeper than the parser recurses
        b'{"number": NaN}',  # not JSON (RFC 8259), though Python's parser takes it by default
        b'{"size": Infinity}',
    ],
    ids=["long-integer", "deep-nesting", "nan", "infinity"],
)
async def test_hostile_json_is_a_400_in_valid_json(link: Link, raw: bytes) -> None:
    # Regression: these were answered 503 with a traceback in the log (or echoed NaN, which is not JSON).
    response = await link.client("sae-a1", A).post(
        "/sae-b1/enc_keys", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400

    def refuse(name: str) -> None:
        raise AssertionError(f"the answer holds {name}")

    error = json.loads(response.text, parse_constant=refuse)
    assert error["message"].startswith("request body is not valid UTF-8 JSON")
    assert link.stores[A].outbox(B) == []


@pytest.mark.asyncio
async def test_an_oversized_body_is_refused_without_touching_the_pool(link: Link) -> None:
    response = await link.client("sae-a1", A).post(
        "/sae-b1/enc_keys", content=b" " * 100_000, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert link.stores[A].outbox(B) == []
