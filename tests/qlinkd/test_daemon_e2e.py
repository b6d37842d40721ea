"""Two facility daemons and the channel service as real processes on loopback: keys through the ETSI GS
QKD 014 API (called with httpx, an HTTP client independent of the daemon), and a man in the middle
holding stolen TLS certificates who alters one classical message (the privacy-amplification seed):
Wegman-Carter authentication catches it and no key from that round reaches either pool."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from typing import Any

import httpx
import pytest
from aiohttp import ClientSession, WSMsgType, web

from qlinkmed.qcore import messages as qm
from qlinkmed.qlinkd.link.wire import MAX_FRAME_BYTES, decode_frame, encode_frame
from qlinkmed.qlinkd.ops import pki
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.testbed.deployment import Deployment, free_ports
from qlinkmed.qlinkd.testbed.settle import settle_stopped_stores
from tests.polling import wait_for
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"
PULSES = 700_000
EPS_SEC, EPS_COR = 1e-9, 1e-12  # the deployer's security parameters (not the defaults)


def _get(url: str) -> dict[str, Any]:
    return httpx.get(url, timeout=5.0).json()


def _pool(deployment: Deployment, facility: str) -> dict[str, Any]:
    return _get(deployment.local_url(facility) + "/v1/keys")["pools"][0]


@pytest.fixture(scope="module")
def running(module_testbeds: Testbeds) -> Deployment:
    deployment = module_testbeds.launch(pulses_per_round=PULSES, eps_sec=EPS_SEC, eps_cor=EPS_COR).deployment
    wait_for(lambda: _pool(deployment, A)["owned_bits"] >= 4096, "key in A's pool")
    return deployment


def _sae(deployment: Deployment, name: str, facility: str) -> httpx.Client:
    cert, key = deployment.pki(name)
    context = ssl.create_default_context(cafile=str(deployment.root / "pki" / "ca.pem"))
    context.load_cert_chain(cert, key)
    return httpx.Client(base_url=deployment.kme_url(facility), verify=context, timeout=10.0)


def test_status_reports_the_link_and_its_measurements(running: Deployment) -> None:
    status = _get(running.local_url(A) + "/v1/status")
    (link,) = status["links"]
    assert link["peer"] == B and link["role"] == "alice" and link["connected"]
    last = link["last_round"]
    assert last["established"] and last["final_key_bits"] >= 512
    assert 0.0 < last["qber"] < 0.11
    # The configured security parameters and their total, for the link and for the round.
    for shown in (link, last):
        assert (shown["eps_sec"], shown["eps_cor"]) == (EPS_SEC, EPS_COR)
        assert shown["eps"] == pytest.approx(EPS_SEC + EPS_COR, rel=1e-12)
    established = [r for r in _audit(running, A) if r["event"] == "round_established"]
    assert established and all(
        (r["eps_sec"], r["eps_cor"], r["eps"]) == (EPS_SEC, EPS_COR, EPS_SEC + EPS_COR) for r in established
    )
    metrics = httpx.get(running.local_url(A) + "/metrics").text
    assert 'qlink_rounds_total{outcome="established",peer="hospital-b"}' in metrics
    assert 'qlink_eavesdropper_alarm{peer="hospital-b"} 0.0' in metrics


def test_etsi_keys_reach_master_and_slave_once(running: Deployment) -> None:
    master = _sae(running, f"pacs-{A}", A)
    slave = _sae(running, f"pacs-{B}", B)
    other_slave = _sae(running, f"ehr-{B}", B)
    status = master.get(f"/api/v1/keys/pacs-{B}/status").json()
    assert status["source_KME_ID"] == A and status["target_KME_ID"] == B
    assert status["master_SAE_ID"] == f"pacs-{A}" and status["stored_key_count"] >= 1

    got = master.post(f"/api/v1/keys/pacs-{B}/enc_keys", json={"number": 2, "size": 256})
    assert got.status_code == 200, got.text
    keys = got.json()["keys"]
    assert len(keys) == 2 and keys[0]["key"] != keys[1]["key"]
    ids = [{"key_ID": k["key_ID"]} for k in keys]
    # Only the slave the keys were made for may fetch them; a refusal consumes nothing.
    assert other_slave.post(f"/api/v1/keys/pacs-{A}/dec_keys", json={"key_IDs": ids}).status_code == 401
    fetched = slave.post(f"/api/v1/keys/pacs-{A}/dec_keys", json={"key_IDs": ids})
    assert fetched.status_code == 200, fetched.text
    assert {k["key_ID"]: k["key"] for k in fetched.json()["keys"]} == {k["key_ID"]: k["key"] for k in keys}
    again = slave.post(f"/api/v1/keys/pacs-{A}/dec_keys", json={"key_IDs": ids})
    assert again.status_code == 400
    assert again.json()["message"] == "one or more keys specified are not found on KME"


def test_etsi_error_cases_on_the_running_daemon(running: Deployment) -> None:
    master = _sae(running, f"pacs-{A}", A)
    bad_size = master.post(f"/api/v1/keys/pacs-{B}/enc_keys", json={"number": 1, "size": 100})
    assert bad_size.status_code == 400 and bad_size.json()["message"] == "size shall be a multiple of 8"
    ext = master.post(f"/api/v1/keys/pacs-{B}/enc_keys", json={"extension_mandatory": [{"x": 1}]})
    assert ext.status_code == 400
    assert ext.json()["message"] == "not all extension_mandatory parameters are supported"
    too_many = master.post(f"/api/v1/keys/pacs-{B}/enc_keys", json={"number": 128, "size": 4096})
    assert too_many.status_code == 503
    stranger = _sae(running, "channel", A)  # a valid certificate of the CA, but no SAE of this KME
    assert stranger.get(f"/api/v1/keys/pacs-{B}/status").status_code == 401


def test_both_pools_hold_the_same_key_identities(running: Deployment) -> None:
    def agree() -> bool:
        a, b = _pool(running, A), _pool(running, B)
        return a["identities_sha256"] == b["identities_sha256"] and a["committed_rounds"] > 0

    wait_for(agree, "equal pool identities at both ends")


# ---- a man in the middle with stolen certificates ----------------------------------------------------
class TamperingProxy:
    """Relays Alice's link to Bob, presenting Bob's certificate to Alice and Alice's to Bob (the TLS layer
    is fully compromised), and flips one bit of the privacy-amplification seed from round `target` on."""

    def __init__(self, deployment: Deployment, bob_port: int, target: int, *, every: bool = False) -> None:
        self.deployment = deployment
        self.bob_port = bob_port
        self.target = target
        self.every = every
        self.tampered_round: int | None = None

    def _context(self, name: str, server: bool) -> ssl.SSLContext:
        cert, key = self.deployment.pki(name)
        ca = self.deployment.root / "pki" / "ca.pem"
        return pki.server_context(ca, cert, key) if server else pki.client_context(ca, cert, key)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        inbound = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES)
        await inbound.prepare(request)
        async with ClientSession() as http:
            outbound = await http.ws_connect(
                f"wss://127.0.0.1:{self.bob_port}/v1/link",
                ssl=self._context(A, server=False),
                max_msg_size=MAX_FRAME_BYTES,
            )

            async def pump(source: Any, sink: Any, edit: bool) -> None:
                async for msg in source:
                    if msg.type is not WSMsgType.BINARY:
                        break
                    data = msg.data
                    if edit and (self.tampered_round is None or self.every):
                        round_id, message = decode_frame(data)
                        if round_id >= self.target and isinstance(message, qm.Amplify):
                            # Nothing in reconciliation would notice: Bob would simply hash to another key.
                            # Only the Wegman-Carter tag over the transcript stands in the way.
                            seed = message.seed.copy()
                            seed[0] ^= 1
                            data = encode_frame(qm.Amplify(seed=seed, length=message.length), round_id)
                            self.tampered_round = round_id
                    await sink.send_bytes(data)
                await sink.close()

            await asyncio.gather(pump(inbound, outbound, True), pump(outbound, inbound, False))
        return inbound


async def _start_proxy(deployment: Deployment, proxy: TamperingProxy) -> web.AppRunner:
    """Point Alice at the proxy and start it."""
    (proxy_port,) = free_ports(1)
    config = deployment.facilities[A]
    bob_port = deployment.ports[f"{B}.classical"]
    config.write_text(
        config.read_text().replace(f'address = "127.0.0.1:{bob_port}"', f'address = "127.0.0.1:{proxy_port}"')
    )
    app = web.Application()
    app.router.add_get("/v1/link", proxy.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", proxy_port, ssl_context=proxy._context(B, server=True)).start()
    return runner


@pytest.mark.asyncio
async def test_man_in_the_middle_edit_aborts_the_round_and_no_key_is_kept(testbeds: Testbeds) -> None:
    deployment = testbeds.write(pulses_per_round=PULSES)
    proxy = TamperingProxy(deployment, deployment.ports[f"{B}.classical"], target=3)
    runner = await _start_proxy(deployment, proxy)
    try:
        group = await asyncio.to_thread(testbeds.start, deployment)

        def rounds_after_tamper() -> bool:
            audit = _audit(deployment, A)
            return proxy.tampered_round is not None and any(
                r["event"] == "round_established" and r["round"] > proxy.tampered_round for r in audit
            )

        await asyncio.to_thread(wait_for, rounds_after_tamper, "a round after the tampered one")
        group.stop_all()
    finally:
        await runner.cleanup()
    # Stopped (rounds no longer move) and settled as the next hello would (with rounds in flight the stop
    # may land between one end's commit and the other's): both ends hold exactly the same rounds.
    settle_stopped_stores(deployment)
    identities = [_identities(deployment, f, peer) for f, peer in ((A, B), (B, A))]
    tampered = proxy.tampered_round
    for facility in (A, B):
        records = [r for r in _audit(deployment, facility) if r.get("round") == tampered]
        # The round is aborted (never committed); a tampering alarm may latch on it (alarm_raised).
        assert {r["event"] for r in records} <= {"round_aborted", "alarm_raised"}, records
        aborted = [r for r in records if r["event"] == "round_aborted"]
        assert aborted and all(r["reason"] == "authentication_failed" for r in aborted), records
    # The rounds around it kept flowing, and both ends hold exactly the same rounds.
    assert identities[0] == identities[1]
    assert len(identities[0]) >= 2 and tampered not in {r[0] for r in identities[0]}


def _identities(deployment: Deployment, facility: str, peer: str) -> list[tuple[int, str, int, int]]:
    store = KeyStore.open(deployment.root / "state" / facility / "keys.sqlite3")
    try:
        return store.pool_identities(peer)
    finally:
        store.close()


def _audit(deployment: Deployment, facility: str) -> list[dict[str, Any]]:
    path = deployment.root / "state" / facility / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_e91_eavesdropper_drops_chsh_aborts_and_keys_resume_after_detach(testbeds: Testbeds) -> None:
    # E91 keyed as BBM92 with the default detectors (10 %, after-pulses 4 %): 2e7 pairs at 0 km give
    # ~18 kbit per round (qlink sim e91 --qubits 20000000 --distance-km 0).
    deployment = testbeds.write(
        protocol="e91",
        pulses_per_round=20_000_000,
        distance_km=0.0,
        round_timeout_s=60.0,
    )

    def bob() -> dict[str, Any]:
        return _get(deployment.local_url(B) + "/v1/status")["links"][0]

    def established_after(count: int) -> Any:
        link = bob()
        return link["rounds"]["established"] > count and link["last_round"]["established"] and link

    group = testbeds.start(deployment)
    honest = wait_for(lambda: established_after(0), "an honest E91 round", timeout=90.0)
    assert honest["last_round"]["chsh_s"] > 2.5
    httpx.post(
        deployment.admin_url + "/v1/eve",
        json={"kind": "intercept-resend", "fraction": 1.0},
        headers=deployment.admin_headers(),
    ).raise_for_status()
    aborted = wait_for(
        lambda: (link := bob())["last_round"]["reason"] == "chsh_not_violated" and link,
        "CHSH abort",
        timeout=90.0,
    )
    assert aborted["last_round"]["chsh_s"] < 2.0 and aborted["alarm"] == "chsh_not_violated"
    pool = _pool(deployment, B)["pool_bits"]
    for facility in (A, B):
        metrics = httpx.get(deployment.local_url(facility) + "/metrics").text
        assert f'qlink_eavesdropper_alarm{{peer="{B if facility == A else A}"}} 1.0' in metrics
    assert "ALARM" in group.children[A].log() and "ALARM" in group.children[B].log()
    # Let another attacked round run its course: it must add nothing to the pool.
    wait_for(
        lambda: bob()["rounds"]["aborted"] > aborted["rounds"]["aborted"],
        "another attacked round",
        timeout=90.0,
    )
    assert _pool(deployment, B)["pool_bits"] == pool  # nothing from an attacked round
    httpx.delete(deployment.admin_url + "/v1/eve", headers=deployment.admin_headers()).raise_for_status()
    resumed = wait_for(
        lambda: established_after(aborted["rounds"]["established"]), "keys again", timeout=90.0
    )
    assert resumed["alarm"] is None and _pool(deployment, B)["pool_bits"] > pool


@pytest.mark.parametrize("name", ["channel", A])
def test_services_notify_readiness_and_feed_the_watchdog(testbeds: Testbeds, name: str) -> None:
    deployment = testbeds.write(pulses_per_round=PULSES)
    group = testbeds.start(deployment, name, env={"WATCHDOG_USEC": "400000"})
    pings: set[float] = set()
    deadline = time.monotonic() + 10
    while len(pings) < 2 and time.monotonic() < deadline:
        message = group.next_notification(name)
        if "WATCHDOG=1" in message.split("\n"):
            pings.add(time.monotonic())
    assert len(pings) >= 2


@pytest.mark.asyncio
async def test_authentication_key_starvation_raises_the_alarm_and_halts_rounds(testbeds: Testbeds) -> None:
    # A 512-byte pre-shared key covers 10 rounds' tags; a man in the middle spoiling every round after
    # the tags were spent drains it, and Alice must stop rather than run unauthenticated.
    deployment = testbeds.write(pulses_per_round=PULSES, preshared_bytes=512)
    proxy = TamperingProxy(deployment, deployment.ports[f"{B}.classical"], target=1, every=True)
    runner = await _start_proxy(deployment, proxy)
    try:
        group = await asyncio.to_thread(testbeds.start, deployment)

        def starved() -> Any:
            link = _get(deployment.local_url(A) + "/v1/status")["links"][0]
            return link["auth_starved"] and link

        link = await asyncio.to_thread(wait_for, starved, "authentication starvation")
        assert link["rounds"]["established"] == 0 and link["auth_reserve_bits"] < 384
        metrics = httpx.get(deployment.local_url(A) + "/metrics").text
        assert 'qlink_auth_starved{peer="hospital-b"} 1.0' in metrics
        assert "ALARM authentication key starved" in group.children[A].log()
        # That a starved link starts no round, however long it waits, is policy: test_link_policy.
        group.stop_all()
    finally:
        await runner.cleanup()


def test_pool_stops_at_the_high_watermark_and_resumes_below_the_low_one(testbeds: Testbeds) -> None:
    # A short channel idle timeout: while paused, the channel closes both silent connections (issue 14,
    # item 3) and the facilities redial; the rounds must resume all the same.
    deployment = testbeds.write(
        pulses_per_round=PULSES,
        low_watermark_bits=12_000,
        high_watermark_bits=30_000,
        channel_idle_timeout_s=2.0,
    )

    def rounds() -> int:
        return sum(_get(deployment.local_url(A) + "/v1/status")["links"][0]["rounds"].values())

    testbeds.start(deployment)
    wait_for(lambda: _pool(deployment, A)["pool_bits"] >= 30_000, "the high watermark")
    # That no round starts while paused, until the low mark, is policy: test_link_policy.
    wait_for(lambda: _get(deployment.local_url(A) + "/v1/status")["links"][0]["rounds_paused"], "the pause")
    paused_at = rounds()

    def idle_closes() -> int:
        metrics = httpx.get(deployment.admin_url + "/metrics", timeout=5.0).text
        found = re.search(r'^qlink_channel_timeouts_total\{phase="idle"\} (\d+)\.0$', metrics, re.M)
        return int(found.group(1)) if found else 0

    wait_for(lambda: idle_closes() >= 2, "the channel to close both idle connections")
    # Hand keys out at both ends (each owns half the rounds) until the pool is below the low mark.
    for facility, peer in ((A, B), (B, A)):
        master = _sae(deployment, f"pacs-{facility}", facility)
        # The rounds open when the pool crossed the high mark still commit: it may hold a window more.
        while (owned := _pool(deployment, facility)["owned_bits"]) >= 256:
            got = master.post(
                f"/api/v1/keys/pacs-{peer}/enc_keys", json={"number": min(owned // 256, 128), "size": 256}
            )
            assert got.status_code == 200, got.text
    assert _pool(deployment, A)["pool_bits"] < 12_000
    wait_for(lambda: rounds() > paused_at, "rounds to resume below the low watermark")
    wait_for(lambda: _pool(deployment, A)["pool_bits"] >= 12_000, "the pool to refill")


def test_sigterm_stops_every_process_cleanly_mid_round(testbeds: Testbeds) -> None:
    group = testbeds.launch(pulses_per_round=PULSES)
    wait_for(lambda: _pool(group.deployment, A)["pool_bits"] > 0, "a first key")
    group.stop_all()  # SIGTERM, then SIGKILL for whatever is still running 10 s later
    for name, child in group.children.items():
        assert child.process.returncode == 0, (name, child.process.returncode)
        assert "Traceback" not in child.log(), name
