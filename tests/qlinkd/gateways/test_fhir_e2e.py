"""The FHIR gateway end to end: two facility daemons as real processes on loopback, an EHR system at A
played by httpx (an HTTP client that is not ours) POSTing to A's FHIR endpoint, and B forwarding what
arrives to a FHIR server started here. Resources and transaction Bundles arrive bit-exact; invalid
requests get one OperationOutcome listing every issue; a server that is down is retried, one that refuses
parks the message with its reason."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web

from qlinkmed.client.commands.demo import _token
from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.testbed.deployment import Deployment, free_ports
from qlinkmed.qlinkd.testbed.launcher import ProcessGroup
from tests.polling import wait_for
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"
PULSES = 700_000
KEY_BITS = 64_000
FHIR_JSON = "application/fhir+json"

OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}]},
    "subject": {"reference": "Patient/p-1001"},
    "valueQuantity": {"value": 13.2, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
}
TRANSACTION = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "fullUrl": "urn:uuid:0b7c4f5e-8a57-4a1b-9d3e-2f6f0c1d2e3a",
            "resource": {"resourceType": "Patient", "name": [{"family": "Tanaka", "given": ["Aiko"]}]},
            "request": {"method": "POST", "url": "Patient"},
        },
        {
            "resource": OBSERVATION
            | {"subject": {"reference": "urn:uuid:0b7c4f5e-8a57-4a1b-9d3e-2f6f0c1d2e3a"}},
            "request": {"method": "POST", "url": "Observation"},
        },
    ],
}


@dataclass
class FhirServer:
    """The FHIR server behind B: records every POST; answers as told per resource type."""

    port: int
    received: list[tuple[str, bytes]] = field(default_factory=list)
    unavailable_first: int = 1
    """The first N requests get 503 (a server restarting): the forwarder must retry."""
    refuse: frozenset[str] = frozenset({"Device"})
    """Resource types answered 422 with an OperationOutcome: the forwarder must park them."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> web.Application:
        async def post(request: web.Request) -> web.Response:
            body = await request.read()
            with self._lock:
                if self.unavailable_first > 0:
                    self.unavailable_first -= 1
                    return web.Response(status=503, text="starting")
            kind = json.loads(body)["resourceType"]
            if kind in self.refuse:
                outcome = {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {"severity": "error", "code": "business-rule", "diagnostics": f"no {kind} here"}
                    ],
                }
                return web.json_response(outcome, status=422, content_type=FHIR_JSON)
            with self._lock:
                self.received.append((request.path, body))
            return web.json_response({"resourceType": kind}, status=201 if kind != "Bundle" else 200)

        app = web.Application()
        app.router.add_post("/r5", post)
        app.router.add_post("/r5/{type}", post)
        return app

    def bodies(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.received)


@pytest.fixture(scope="module")
def fhir_server() -> Iterator[FhirServer]:
    (port,) = free_ports(1)
    server = FhirServer(port)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(server.app())
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30), "the test FHIR server did not start"
    yield server
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)


@dataclass(frozen=True)
class Gateway:
    deployment: Deployment
    group: ProcessGroup
    origin: str
    """A's FHIR endpoint, scheme://host:port."""
    url: str
    """[base] at A for peer B."""
    headers: dict[str, str]

    def audit(self, facility: str) -> list[dict[str, Any]]:
        path = self.deployment.root / "state" / facility / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _owned_bits(target: DataTarget) -> int:
    status, body = target.json("GET", "/v1/status")
    return int(body["links"][0]["pool_bits_owned"]) if status == 200 else 0


@pytest.fixture(scope="module")
def gateway(module_testbeds: Testbeds, fhir_server: FhirServer) -> Iterator[Gateway]:
    deployment = module_testbeds.write(pulses_per_round=PULSES)
    port_a, port_b = free_ports(2)
    with deployment.facilities[A].open("a") as out:
        out.write(f'\n[gateway.fhir]\nlisten = "127.0.0.1:{port_a}"\ntoken_file = "fhir-a.token"\n')
    with deployment.facilities[B].open("a") as out:
        out.write(
            f'\n[gateway.fhir]\nlisten = "127.0.0.1:{port_b}"\ntoken_file = "fhir-b.token"\n'
            f'\n[[gateway.fhir.destination]]\nbase_url = "http://127.0.0.1:{fhir_server.port}/r5"\n'
            "timeout_s = 10\n"
        )
    group = module_testbeds.start(deployment)
    a = DataTarget(deployment.local_url(A), _token(deployment, A))
    b = DataTarget(deployment.local_url(B), _token(deployment, B))
    wait_for(lambda: _owned_bits(a) >= KEY_BITS and _owned_bits(b) >= KEY_BITS, "key in both pools")
    token = (deployment.root / "fhir-a.token").read_text().strip()
    yield Gateway(
        deployment,
        group,
        f"http://127.0.0.1:{port_a}",
        f"http://127.0.0.1:{port_a}/fhir/{B}",
        {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON},
    )
    for name, child in group.children.items():
        assert "Traceback" not in child.log(), f"{name}:\n{child.log()[-3000:]}"


def _arrived(server: FhirServer, path: str, body: bytes) -> bool:
    return (path, body) in server.bodies()


def test_a_resource_is_created_relayed_and_forwarded_bit_exact(
    gateway: Gateway, fhir_server: FhirServer
) -> None:
    body = json.dumps(OBSERVATION, indent=1).encode()
    answer = httpx.post(f"{gateway.url}/Observation", content=body, headers=gateway.headers, timeout=30)
    assert answer.status_code == 201, answer.text
    location = answer.headers["Location"]
    assert location.startswith(f"/fhir/{B}/Observation/")
    assert answer.content == body  # return=representation by default: the resource as accepted
    wait_for(lambda: _arrived(fhir_server, "/r5/Observation", body), "the Observation at B's FHIR server")
    # The server answered 503 to the first attempt: the forwarder retried rather than giving up.
    tid = location.rsplit("/", 1)[1]

    def forwarded() -> list[tuple[str, str]] | None:
        events = [(r["event"], r.get("detail", "")) for r in gateway.audit(B) if r.get("transfer") == tid]
        return events if ("forward_delivered", "HTTP 201") in events else None

    assert ("forward_failed", "HTTP 503: starting") in wait_for(forwarded, "B's forward_delivered record")
    metrics = httpx.get(gateway.deployment.local_url(B) + "/metrics", timeout=30).text
    labels = f'destination="http://127.0.0.1:{fhir_server.port}/r5",gateway="fhir"'
    assert f"qlink_forwarded_total{{{labels}}} 1.0" in metrics
    assert f"qlink_forward_failures_total{{{labels}}} 1.0" in metrics
    status = httpx.get(gateway.deployment.local_url(B) + "/v1/status", timeout=30).json()
    (owed,) = [d for d in status["gateways"]["destinations"] if d["gateway"] == "fhir"]
    assert owed["delivered"] >= 1 and owed["destination"] == f"http://127.0.0.1:{fhir_server.port}/r5"

    def relayed() -> str | None:
        relay = httpx.get(gateway.origin + location, headers=gateway.headers, timeout=30)
        assert relay.status_code == 200, relay.text
        text = str(relay.json()["issue"][0]["diagnostics"])
        return text if text == f"delivered to {B}" else None

    wait_for(relayed, "A's relay record to say delivered")


def test_a_transaction_bundle_gets_a_transaction_response_and_arrives_whole(
    gateway: Gateway, fhir_server: FhirServer
) -> None:
    body = json.dumps(TRANSACTION).encode()
    answer = httpx.post(gateway.url, content=body, headers=gateway.headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith(FHIR_JSON)
    response = answer.json()
    assert response["resourceType"] == "Bundle" and response["type"] == "transaction-response"
    assert [e["response"]["status"] for e in response["entry"]] == ["202 Accepted", "202 Accepted"]
    wait_for(lambda: _arrived(fhir_server, "/r5", body), "the transaction at B's FHIR server's base")


def test_an_invalid_bundle_is_refused_with_every_issue(gateway: Gateway) -> None:
    broken = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient"}},
            {"resource": {"resourceType": "Patient"}, "request": {"method": "FETCH", "url": "Patient"}},
            {"fullUrl": "urn:uuid:1", "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:1", "request": {"method": "DELETE", "url": "Patient/1"}},
        ],
    }
    answer = httpx.post(gateway.url, content=json.dumps(broken), headers=gateway.headers, timeout=30)
    assert answer.status_code == 400, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    where = [tuple(issue.get("expression", ())) for issue in outcome["issue"]]
    assert ("Bundle.entry[0].request",) in where
    assert ("Bundle.entry[1].request.method",) in where
    assert ("Bundle.entry[2].resource",) in where
    assert ("Bundle.entry[3].fullUrl",) in where
    # The gateway's REST checks and the content rules' invariants together, each issue once.
    assert len(where) == len(set(where)) == 4


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code"),
    [
        ("/Observation", json.dumps(OBSERVATION), {"Authorization": "Bearer wrong"}, 401, "login"),
        ("/Observation", json.dumps(OBSERVATION), {"Content-Type": "text/plain"}, 415, "not-supported"),
        ("/Observation", "{not json", {}, 400, "structure"),
        ("/Patient", json.dumps(OBSERVATION), {}, 400, "invalid"),
        ("", json.dumps({"resourceType": "Bundle", "type": "collection"}), {}, 400, "invalid"),
    ],
    ids=["bad-token", "not-fhir-json", "not-json", "type-mismatch", "not-a-transaction"],
)
def test_bad_requests_get_an_operation_outcome(
    gateway: Gateway, path: str, body: str, headers: dict[str, str], status: int, code: str
) -> None:
    answer = httpx.post(gateway.url + path, content=body, headers=gateway.headers | headers, timeout=30)
    assert answer.status_code == status, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert code in [issue["code"] for issue in outcome["issue"]]


def test_an_unknown_peer_is_not_found(gateway: Gateway) -> None:
    url = gateway.url.replace(f"/fhir/{B}", "/fhir/nowhere") + "/Observation"
    answer = httpx.post(url, content=json.dumps(OBSERVATION), headers=gateway.headers, timeout=30)
    assert answer.status_code == 404
    assert "nowhere" in answer.json()["issue"][0]["diagnostics"]


def test_metadata_is_a_capability_statement(gateway: Gateway) -> None:
    answer = httpx.get(f"{gateway.url}/metadata", headers=gateway.headers, timeout=30)
    assert answer.status_code == 200
    statement = answer.json()
    assert statement["resourceType"] == "CapabilityStatement" and statement["kind"] == "instance"
    assert {i["code"] for i in statement["rest"][0]["interaction"]} == {"transaction", "batch"}


def test_a_message_the_server_refuses_is_parked_with_its_reason(
    gateway: Gateway, fhir_server: FhirServer
) -> None:
    device = {"resourceType": "Device", "status": "active"}
    answer = httpx.post(
        f"{gateway.url}/Device", content=json.dumps(device), headers=gateway.headers, timeout=30
    )
    assert answer.status_code == 201, answer.text
    tid = answer.headers["Location"].rsplit("/", 1)[1]

    def parked() -> dict[str, Any] | None:
        return next(
            (r for r in gateway.audit(B) if r.get("transfer") == tid and r["event"] == "forward_parked"), None
        )

    record = wait_for(parked, "the Device parked at B")
    assert record["detail"] == "HTTP 422: no Device here"
    assert all(path != "/r5/Device" for path, _ in fhir_server.bodies())
