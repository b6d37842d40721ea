"""The ETSI GS QKD 014 client and the external key source, against KMEs on loopback over mutual TLS: the
real one (qlinkd's KME over two key stores), and a broken or hostile one that answers what each test
makes it answer (oversized, malformed, short or mislabelled keys, ETSI errors, silence). Also how a take is
split within the KME's limits. (The configuration: test_external_keys_config.py.)"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from qlinkmed.qlinkd.dataplane.etsi_client import EtsiClient, KmeStatus
from qlinkmed.qlinkd.dataplane.external_keys import ExternalKeys, KeyRequest, plan_request
from qlinkmed.qlinkd.errors import KeyNotFound, KmeError, KmeUnavailable
from qlinkmed.qlinkd.ops import pki
from qlinkmed.qlinkd.pool.etsi import KmePolicy, make_kme_app
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.pool.kme import StoreKeyManager, round_owner
from qlinkmed.qlinkd.pool.values import KeyNotice
from tests.polling import wait_for_async

K1, K2 = "kme-1", "kme-2"
SAE_A, SAE_B = "sae-a", "sae-b"
ROUND_BYTES = 4096


def _status(**changes: int) -> KmeStatus:
    values = {"key_size": 256, "stored_key_count": 10, "max_key_per_request": 128}
    values |= {"max_key_size": 4096, "min_key_size": 64} | changes
    return KmeStatus(source_kme_id=K1, target_kme_id=K2, master_sae_id=SAE_A, **values)


# ---- the split of a take (pure)


@pytest.mark.parametrize(
    ("bits", "status", "request_"),
    [
        (256, _status(), KeyRequest(number=1, size_bits=256)),
        (8 * 16384, _status(), KeyRequest(number=32, size_bits=4096)),
        (9000, _status(), KeyRequest(number=3, size_bits=3000)),
        (40, _status(), KeyRequest(number=1, size_bits=64)),  # raised to the KME's minimum
        (8 * 16384, _status(max_key_size=1 << 20), KeyRequest(number=1, size_bits=8 * 16384)),
        (4100, _status(max_key_size=4100), KeyRequest(number=2, size_bits=2056)),  # whole bytes only
    ],
)
def test_a_take_is_the_fewest_equal_keys_within_the_limits(
    bits: int, status: KmeStatus, request_: KeyRequest
) -> None:
    planned = plan_request(bits, status, url="https://kme")
    assert planned == request_
    assert planned.number * planned.size_bits >= bits and planned.size_bits % 8 == 0
    assert status.min_key_size <= planned.size_bits <= status.max_key_size


def test_a_take_beyond_one_request_is_refused_naming_the_limit() -> None:
    with pytest.raises(KmeError, match="more than the 4 one request may return") as caught:
        plan_request(5 * 4096, _status(max_key_per_request=4), url="https://kme-1:9")
    assert caught.value.url == "https://kme-1:9"
    with pytest.raises(KmeError, match="more than the 255"):
        plan_request(256 * 4096, _status(max_key_per_request=1000), url="https://kme")


# ---- certificates and servers


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (cert, key). "ca" signs the KMEs and SAEs; "other-ca" signs "stranger" and "fake-kme"."""
    directory = tmp_path_factory.mktemp("pki")
    out: dict[str, tuple[Path, Path]] = {}

    def save(name: str, cert: bytes, key: bytes) -> None:
        (directory / f"{name}.pem").write_bytes(cert)
        (directory / f"{name}.key").write_bytes(key)
        out[name] = (directory / f"{name}.pem", directory / f"{name}.key")

    for ca_name, leaves in (
        ("ca", (K1, K2, SAE_A, "sae-a2", SAE_B, "intruder")),
        ("other-ca", ("fake-kme", "stranger")),
    ):
        ca_cert, ca_key = pki.create_ca(ca_name)
        save(ca_name, ca_cert, ca_key)
        for leaf in leaves:
            server = leaf in (K1, K2, "fake-kme")
            names = ["127.0.0.1"] if server else []
            save(leaf, *pki.issue(ca_cert, ca_key, leaf, server_names=names, client=True, server=server))
    return out


def _client_context(certs: dict[str, tuple[Path, Path]], sae: str, ca: str = "ca") -> ssl.SSLContext:
    return pki.client_context(certs[ca][0], *certs[sae])


async def _serve(app: web.Application, context: ssl.SSLContext) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock, ssl_context=context).start()
    return runner, sock.getsockname()[1]


class CountingManager(StoreKeyManager):
    """Counts the dec_keys requests that reach the key manager (each waits for the notice first)."""

    asked = 0

    async def wait_notice(self, key_ids: list[str], timeout: float) -> None:
        self.asked += 1
        await super().wait_notice(key_ids, timeout)


@dataclass
class Kmes:
    """Two qlinkd KMEs over two stores holding the same committed rounds; `forward` is the QKD link."""

    stores: dict[str, KeyStore]
    managers: dict[str, CountingManager]
    urls: dict[str, str]
    certs: dict[str, tuple[Path, Path]]
    clients: list[EtsiClient] = field(default_factory=list)
    auto_forward: bool = False
    """Pass every key notice to kme-2 as kme-1 hands the key out (as a running QKD link soon does)."""

    def client(self, sae: str, kme: str, *, ca: str = "ca", timeout_s: float = 5.0) -> EtsiClient:
        client = EtsiClient(self.urls[kme], _client_context(self.certs, sae, ca), timeout_s=timeout_s)
        self.clients.append(client)
        return client

    def forward(self) -> int:
        notices = self.stores[K1].outbox(K2)
        for notice in notices:
            self.stores[K2].accept_notice(K1, notice)
            self.managers[K2].notice_arrived()
            self.stores[K1].ack_notice(K2, notice.key_id)
        return len(notices)


@pytest_asyncio.fixture
async def kmes(tmp_path: Path, certs: dict[str, tuple[Path, Path]]) -> AsyncIterator[Kmes]:
    stores = {K1: KeyStore.open(tmp_path / "k1.db"), K2: KeyStore.open(tmp_path / "k2.db")}
    peer_of = {K1: K2, K2: K1}
    for kme, store in stores.items():
        peer = peer_of[kme]
        store.init_auth(peer, b"\x07" * 96)
        for r in range(1, 9):
            store.note_round_started(peer, r)
            material = bytes([r]) * ROUND_BYTES
            store.store_pending(
                peer, r, owner=round_owner(r, kme, peer), key=material, auth_refill=b"\x01" * 48
            )
            store.commit(peer, r)
    holder: list[Kmes] = []

    def sent(peer: str, notice: KeyNotice) -> None:
        if holder and holder[0].auto_forward:
            holder[0].forward()

    managers = {
        K1: CountingManager(
            stores[K1], facility=K1, local_saes={SAE_A, "sae-a2"}, sae_to_peer={SAE_B: K2}, notify_sent=sent
        ),
        K2: CountingManager(stores[K2], facility=K2, local_saes={SAE_B}, sae_to_peer={SAE_A: K1}),
    }
    runners, urls = [], {}
    for kme in (K1, K2):
        app = make_kme_app(managers[kme], KmePolicy(notice_wait_s=0.1))
        runner, port = await _serve(app, pki.server_context(certs["ca"][0], *certs[kme]))
        runners.append(runner)
        urls[kme] = f"https://127.0.0.1:{port}"
    result = Kmes(stores=stores, managers=managers, urls=urls, certs=certs)
    holder.append(result)
    try:
        yield result
    finally:
        for client in result.clients:
            await client.close()
        for runner in runners:
            await runner.cleanup()
        for store in stores.values():
            store.close()


# ---- against qlinkd's own KME


@pytest.mark.asyncio
async def test_keys_taken_at_the_master_kme_are_fetched_identical_once_at_the_slave(kmes: Kmes) -> None:
    sender = ExternalKeys(K2, kmes.client(SAE_A, K1), sae_id=SAE_A, peer_sae_id=SAE_B)
    receiver = ExternalKeys(K1, kmes.client(SAE_B, K2), sae_id=SAE_B, peer_sae_id=SAE_A)
    session = await sender.take(K2, 256)
    pad = await sender.take(K2, 9000)  # over max_key_size: split into equal keys
    assert [len(k.material) for k in session] == [32]
    assert len(pad) == 3 and {len(k.material) for k in pad} == {375} and len({k.key_id for k in pad}) == 3
    assert kmes.forward() == 4
    for keys in (session, pad):
        ids = [k.key_id for k in keys]
        assert await receiver.fetch(K1, ids, timeout=2.0) == keys
        # Each key leaves each KME once.
        with pytest.raises(KeyNotFound):
            await receiver.fetch(K1, ids, timeout=0.3)


@pytest.mark.asyncio
async def test_a_single_key_over_the_kme_s_largest_is_refused_and_takes_nothing(kmes: Kmes) -> None:
    sender = ExternalKeys(K2, kmes.client(SAE_A, K1), sae_id=SAE_A, peer_sae_id=SAE_B)
    with pytest.raises(KmeError, match="one key of 131072 bits is over the KME's max_key_size 4096"):
        await sender.take(K2, 8 * 16384, single=True)
    assert kmes.stores[K1].outbox(K2) == []
    (key,) = await sender.take(K2, 4096, single=True)
    assert len(key.material) == 512 and [n.key_id for n in kmes.stores[K1].outbox(K2)] == [key.key_id]


@pytest.mark.asyncio
async def test_a_certificate_of_another_sae_than_configured_is_named_before_any_key_is_taken(
    kmes: Kmes,
) -> None:
    # sae-a2 is another SAE of kme-1: its certificate works there, but it is not the SAE configured.
    confused = ExternalKeys(K2, kmes.client("sae-a2", K1), sae_id=SAE_A, peer_sae_id=SAE_B)
    with pytest.raises(KmeError, match="knows our certificate as SAE 'sae-a2', the configuration says"):
        await confused.take(K2, 256)
    assert kmes.stores[K1].outbox(K2) == []


@pytest.mark.asyncio
async def test_the_slave_waits_for_a_key_still_crossing_the_qkd_link(kmes: Kmes) -> None:
    sender = ExternalKeys(K2, kmes.client(SAE_A, K1), sae_id=SAE_A, peer_sae_id=SAE_B)
    receiver = ExternalKeys(K1, kmes.client(SAE_B, K2), sae_id=SAE_B, peer_sae_id=SAE_A)
    keys = await sender.take(K2, 256)
    fetching = asyncio.ensure_future(receiver.fetch(K1, [keys[0].key_id], timeout=20.0))
    # The slave's KME answered "not found" and was asked again before the notice crossed.
    await wait_for_async(lambda: kmes.managers[K2].asked >= 2, "a second dec_keys at the slave's KME")
    assert not fetching.done()
    kmes.forward()
    assert await fetching == keys


@pytest.mark.asyncio
async def test_a_key_id_the_slave_kme_does_not_know_is_refused_clearly(kmes: Kmes) -> None:
    receiver = ExternalKeys(K1, kmes.client(SAE_B, K2), sae_id=SAE_B, peer_sae_id=SAE_A)
    unknown = str(uuid.uuid4())
    with pytest.raises(KeyNotFound) as caught:
        await receiver.fetch(K1, [unknown], timeout=0.5)
    assert caught.value.key_ids == (unknown,)
    with pytest.raises(KmeError, match="one or more keys specified are not found on KME") as raw:
        await kmes.client(SAE_B, K2).dec_keys(SAE_A, [unknown])
    assert raw.value.status == 400 and unknown in str(raw.value)


@pytest.mark.asyncio
async def test_a_fetch_refused_for_another_reason_fails_at_once_and_an_absent_kme_after_the_wait(
    kmes: Kmes, certs: dict[str, tuple[Path, Path]]
) -> None:
    intruder = ExternalKeys(K1, kmes.client("intruder", K2), sae_id="intruder", peer_sae_id=SAE_A)
    with pytest.raises(KmeError) as caught:
        await intruder.fetch(K1, [str(uuid.uuid4())], timeout=60.0)  # a retry would take the whole minute
    assert caught.value.status == 401
    assert kmes.managers[K2].asked == 0  # refused before the key manager was asked

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    absent = EtsiClient(f"https://127.0.0.1:{port}", _client_context(certs, SAE_B))
    try:
        receiver = ExternalKeys(K1, absent, sae_id=SAE_B, peer_sae_id=SAE_A)
        with pytest.raises(KmeUnavailable, match="cannot connect"):
            await receiver.fetch(K1, [str(uuid.uuid4())], timeout=0.3)
    finally:
        await absent.close()


@pytest.mark.asyncio
async def test_a_certificate_the_kme_does_not_know_is_refused(kmes: Kmes) -> None:
    # Signed by the KME's CA but registered as no SAE: the KME's 401 and its message.
    with pytest.raises(KmeError, match="the calling SAE is not registered with this KME") as caught:
        await kmes.client("intruder", K1).enc_keys(SAE_B, number=1, size_bits=256)
    assert caught.value.status == 401 and not isinstance(caught.value, KmeUnavailable)
    # Signed by another CA: the KME's TLS refuses it; nothing is taken either way.
    with pytest.raises(KmeError, match=r"connection failed|TLS"):
        await kmes.client("stranger", K1).status(SAE_B)
    assert kmes.stores[K1].outbox(K2) == []


@pytest.mark.asyncio
async def test_a_kme_with_an_untrusted_server_certificate_is_refused(
    kmes: Kmes, certs: dict[str, tuple[Path, Path]]
) -> None:
    app = make_kme_app(kmes.managers[K1], KmePolicy())
    runner, port = await _serve(app, pki.server_context(certs["ca"][0], *certs["fake-kme"]))
    client = EtsiClient(f"https://127.0.0.1:{port}", _client_context(certs, SAE_A))
    try:
        with pytest.raises(KmeError, match="server certificate is not trusted"):
            await client.enc_keys(SAE_B, number=1, size_bits=256)
    finally:
        await client.close()
        await runner.cleanup()
    assert kmes.stores[K1].outbox(K2) == []


@pytest.mark.asyncio
async def test_an_unreachable_kme_is_unavailable(certs: dict[str, tuple[Path, Path]]) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    client = EtsiClient(f"https://127.0.0.1:{port}", _client_context(certs, SAE_A))
    try:
        with pytest.raises(KmeUnavailable, match="cannot connect"):
            await client.status(SAE_B)
    finally:
        await client.close()


# ---- against a broken or hostile KME


Handler = Callable[[web.Request], Any]


@pytest_asyncio.fixture
async def hostile(
    certs: dict[str, tuple[Path, Path]],
) -> AsyncIterator[tuple[dict[str, Handler], EtsiClient]]:
    """A KME whose every answer a test sets: routes[name] for status, enc_keys and dec_keys."""
    routes: dict[str, Handler] = {}

    async def dispatch(request: web.Request) -> web.StreamResponse:
        return await routes[request.match_info["call"]](request)

    app = web.Application()
    app.router.add_route("*", "/api/v1/keys/{sae}/{call}", dispatch)
    runner, port = await _serve(app, pki.server_context(certs["ca"][0], *certs[K1]))
    client = EtsiClient(f"https://127.0.0.1:{port}", _client_context(certs, SAE_A), timeout_s=1.0)
    try:
        yield routes, client
    finally:
        await client.close()
        await runner.cleanup()


def _answer(body: Any, status: int = 200) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    return handle


def _key(material: bytes, key_id: str | None = None) -> dict[str, str]:
    return {"key_ID": key_id or str(uuid.uuid4()), "key": base64.b64encode(material).decode()}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"keys": [_key(b"\x01" * 16)]}, "holds 128 bits, 256 were asked for"),
        ({"keys": [_key(b"\x01" * 32, "not-a-uuid")]}, "is not a UUID"),
        ({"keys": [{"key_ID": str(uuid.uuid4()), "key": "%%%not base64%%%"}]}, "not base64"),
        ({"keys": []}, "asked for 1 key(s), the answer holds 0"),
        ({"keys": [_key(b"\x01" * 32), _key(b"\x02" * 32)]}, "asked for 1 key(s), the answer holds 2"),
        ({"nothing": 1}, "no keys array"),
        ([1, 2], "not a JSON object"),
    ],
)
@pytest.mark.asyncio
async def test_a_malformed_key_answer_is_refused(
    hostile: tuple[dict[str, Handler], EtsiClient], body: Any, problem: str
) -> None:
    routes, client = hostile
    routes["enc_keys"] = _answer(body)
    with pytest.raises(KmeError) as caught:
        await client.enc_keys(SAE_B, number=1, size_bits=256)
    assert problem in str(caught.value)


@pytest.mark.asyncio
async def test_a_key_id_given_twice_or_one_not_asked_for_is_refused(
    hostile: tuple[dict[str, Handler], EtsiClient],
) -> None:
    routes, client = hostile
    same = str(uuid.uuid4())
    routes["enc_keys"] = _answer({"keys": [_key(b"\x01" * 32, same), _key(b"\x02" * 32, same)]})
    with pytest.raises(KmeError, match="given twice"):
        await client.enc_keys(SAE_B, number=2, size_bits=256)
    routes["dec_keys"] = _answer({"keys": [_key(b"\x01" * 32)]})
    with pytest.raises(KmeError, match="asked for key"):
        await client.dec_keys(SAE_B, [str(uuid.uuid4())])


@pytest.mark.asyncio
async def test_etsi_errors_keep_the_kme_s_status_and_message(
    hostile: tuple[dict[str, Handler], EtsiClient],
) -> None:
    routes, client = hostile
    routes["enc_keys"] = _answer({"message": "size shall be a multiple of 8", "details": [{"size": 9}]}, 400)
    with pytest.raises(KmeError) as caught:
        await client.enc_keys(SAE_B, number=1, size_bits=256)
    assert (caught.value.status, type(caught.value)) == (400, KmeError)
    assert "size shall be a multiple of 8" in str(caught.value) and '"size": 9' in str(caught.value)
    routes["enc_keys"] = _answer({"message": "not enough key material"}, 503)
    with pytest.raises(KmeUnavailable, match="answered 503: not enough key material"):
        await client.enc_keys(SAE_B, number=1, size_bits=256)

    async def html(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>bad gateway</html>")

    routes["status"] = html
    with pytest.raises(KmeError, match="answered 502: no ETSI error object"):
        await client.status(SAE_B)


@pytest.mark.asyncio
async def test_an_endless_answer_is_cut_at_its_bound(hostile: tuple[dict[str, Handler], EtsiClient]) -> None:
    routes, client = hostile
    sent: list[int] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no length announced
        await response.prepare(request)
        await response.write(b'{"keys": [{"key_ID": "')
        chunk = b"A" * 65536
        try:
            for _ in range(10_000):  # 650 MB if nobody stopped reading
                await response.write(chunk)
                sent.append(len(chunk))
        except (ConnectionResetError, RuntimeError):
            pass
        return response

    routes["enc_keys"] = endless
    with pytest.raises(KmeError, match=r"over the \d+-byte bound"):
        await client.enc_keys(SAE_B, number=1, size_bits=256)
    # The bound for one 256-bit key is about 64 KiB: the client stopped reading long before the end.
    assert sum(sent) < 64 << 20

    async def announced(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (1 << 20), content_type="application/json")

    routes["status"] = announced
    with pytest.raises(KmeError, match="answer of 1048576 bytes is over the 65536-byte bound"):
        await client.status(SAE_B)


@pytest.mark.asyncio
async def test_a_silent_kme_times_out_as_unavailable(hostile: tuple[dict[str, Handler], EtsiClient]) -> None:
    routes, client = hostile
    never = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response(status=500)

    routes["status"] = silent
    try:
        with pytest.raises(KmeUnavailable, match="no answer within 1 s"):
            await client.status(SAE_B)
    finally:
        never.set()  # the server's shutdown would otherwise wait for the handler


@pytest.mark.asyncio
async def test_status_limits_that_make_no_sense_are_refused(
    hostile: tuple[dict[str, Handler], EtsiClient],
) -> None:
    routes, client = hostile
    good = {"key_size": 256, "stored_key_count": 1, "max_key_per_request": 8, "max_key_size": 1024}
    routes["status"] = _answer(good | {"min_key_size": 2048})
    with pytest.raises(KmeError, match="status limits make no sense"):
        await client.status(SAE_B)
    routes["status"] = _answer(good | {"min_key_size": "64"})
    with pytest.raises(KmeError, match="min_key_size is not a non-negative integer"):
        await client.status(SAE_B)


@pytest.mark.asyncio
async def test_a_fetched_key_is_bounded_by_the_kme_s_own_largest_key(
    hostile: tuple[dict[str, Handler], EtsiClient],
) -> None:
    routes, client = hostile
    limits = {"key_size": 256, "stored_key_count": 1, "max_key_per_request": 8}
    routes["status"] = _answer(limits | {"max_key_size": 256, "min_key_size": 64})
    key_id = str(uuid.uuid4())
    routes["dec_keys"] = _answer({"keys": [_key(b"\x05" * (1 << 20), key_id)]})
    receiver = ExternalKeys(K1, client, sae_id=SAE_B, peer_sae_id=SAE_A)
    with pytest.raises(KmeError, match=r"answer of \d+ bytes is over the 65\d+-byte bound"):
        await receiver.fetch(K1, [key_id], timeout=5.0)
    routes["dec_keys"] = _answer({"keys": [_key(b"\x05" * 32, key_id)]})
    assert [k.material for k in await receiver.fetch(K1, [key_id], timeout=5.0)] == [b"\x05" * 32]
