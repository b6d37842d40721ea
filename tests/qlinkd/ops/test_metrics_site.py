"""The remote /metrics site: HTTPS on its own address, /metrics and nothing else, mutual TLS when
`client_ca` is set; checked on 127.0.0.1 with httpx (not our HTTP code) and certificates from the
project's PKI helpers; its configuration keys; and a real daemon serving it beside its local API."""

from __future__ import annotations

import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from aiohttp import web

from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.ops import pki
from qlinkmed.qlinkd.ops.config import load_facility_config
from qlinkmed.qlinkd.ops.metrics import LinkMetrics
from qlinkmed.qlinkd.ops.metrics_site import make_metrics_app, metrics_server_context
from qlinkmed.qlinkd.testbed.deployment import free_ports
from tests.polling import wait_for
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    # "prometheus" stands for the scraper: a client certificate of the same CA.
    return pki.write_demo_pki(tmp_path / "pki", [A], ["prometheus"])


def _client(certs: dict[str, Path], *, with_cert: bool) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=str(certs["ca.pem"]))
    if with_cert:
        context.load_cert_chain(certs["prometheus.pem"], certs["prometheus.key"])
    return httpx.AsyncClient(verify=context, timeout=5.0)


async def _serve(context: ssl.SSLContext) -> AsyncIterator[str]:
    metrics = LinkMetrics()
    metrics.add_peer(B)
    scrapes = []

    def render() -> bytes:
        scrapes.append(1)
        metrics.set_pool(B, pool_bits=4096 * len(scrapes))
        return metrics.render()

    runner = web.AppRunner(make_metrics_app(render), access_log=None)
    await runner.setup()
    (port,) = free_ports(1)
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context)
    await site.start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def open_site(certs: dict[str, Path]) -> AsyncIterator[str]:
    async for url in _serve(metrics_server_context(certs[f"{A}.pem"], certs[f"{A}.key"], None)):
        yield url


@pytest_asyncio.fixture
async def mutual_site(certs: dict[str, Path]) -> AsyncIterator[str]:
    context = metrics_server_context(certs[f"{A}.pem"], certs[f"{A}.key"], certs["ca.pem"])
    async for url in _serve(context):
        yield url


@pytest.mark.asyncio
async def test_serves_metrics_over_tls_and_nothing_else(open_site: str, certs: dict[str, Path]) -> None:
    async with _client(certs, with_cert=False) as client:
        answer = await client.get(open_site + "/metrics")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        # Refreshed at each scrape (the daemon reads its stores then).
        assert f'qlink_pool_bits{{peer="{B}"}} 4096.0' in answer.text
        assert f'qlink_pool_bits{{peer="{B}"}} 8192.0' in (await client.get(open_site + "/metrics")).text
        for path in ("/v1/status", "/v1/keys", "/v1/inbox", "/"):
            assert (await client.get(open_site + path)).status_code == 404
        assert (await client.post(open_site + "/metrics")).status_code == 405
    # Plain HTTP is not served.
    async with httpx.AsyncClient(timeout=5.0) as plain:
        with pytest.raises(httpx.HTTPError):
            await plain.get(open_site.replace("https", "http") + "/metrics")


@pytest.mark.asyncio
async def test_with_client_ca_a_client_without_a_certificate_is_refused(
    mutual_site: str, certs: dict[str, Path]
) -> None:
    async with _client(certs, with_cert=False) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get(mutual_site + "/metrics")
    async with _client(certs, with_cert=True) as client:
        answer = await client.get(mutual_site + "/metrics")
        assert answer.status_code == 200 and "qlink_alarm_latched" in answer.text


@pytest.mark.asyncio
async def test_with_client_ca_a_certificate_of_another_ca_is_refused(
    mutual_site: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    other = pki.write_demo_pki(tmp_path / "other", ["intruder"])
    context = ssl.create_default_context(cafile=str(certs["ca.pem"]))
    context.load_cert_chain(other["intruder.pem"], other["intruder.key"])
    async with httpx.AsyncClient(verify=context, timeout=5.0) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get(mutual_site + "/metrics")


def _add_metrics(config: Path, section: str) -> None:
    config.write_text(config.read_text() + "\n[metrics]\n" + section)


def test_config_keys_are_read_and_checked(testbeds: Testbeds) -> None:
    deployment = testbeds.write()
    config = deployment.facilities[A]
    original = config.read_text()
    assert load_facility_config(config).metrics is None
    pki_dir = deployment.root / "pki"
    cert = f'tls_cert = "{pki_dir / (A + ".pem")}"\n'
    key = f'tls_key = "{pki_dir / (A + ".key")}"\n'
    _add_metrics(config, 'listen = "0.0.0.0:9464"\n' + cert + key + f'client_ca = "{pki_dir / "ca.pem"}"\n')
    metrics = load_facility_config(config).metrics
    assert metrics is not None and (metrics.listen.host, metrics.listen.port) == ("0.0.0.0", 9464)
    assert metrics.client_ca == pki_dir / "ca.pem"
    bad = [
        ('listen = "0.0.0.0:9464"\n', "metrics.tls_cert"),
        ('listen = "0.0.0.0:9464"\n' + f'tls_cert = "{pki_dir / "ca.pem"}"\n' + key, "metrics.tls_cert"),
        ('listen = "nowhere"\n' + cert + key, "metrics.listen"),
        ('listen = "0.0.0.0:1"\n' + cert + key + "port = 3\n", "metrics.port"),
        (
            'listen = "0.0.0.0:1"\n' + cert + key + f'client_ca = "{pki_dir / "none.pem"}"\n',
            "metrics.client_ca",
        ),
    ]
    for section, field in bad:
        config.write_text(original)
        _add_metrics(config, section)
        with pytest.raises(ConfigError) as caught:
            load_facility_config(config)
        assert caught.value.field == field, (section, caught.value)


def test_a_daemon_serves_remote_metrics_beside_its_loopback_api(testbeds: Testbeds) -> None:
    deployment = testbeds.write()
    (port,) = free_ports(1)
    pki_dir = deployment.root / "pki"
    _add_metrics(
        deployment.facilities[A],
        f'listen = "127.0.0.1:{port}"\ntls_cert = "{pki_dir / (A + ".pem")}"\n'
        f'tls_key = "{pki_dir / (A + ".key")}"\nclient_ca = "{pki_dir / "ca.pem"}"\n',
    )
    group = testbeds.start(deployment, "channel", A)
    context = ssl.create_default_context(cafile=str(pki_dir / "ca.pem"))
    context.load_cert_chain(*deployment.pki(f"pacs-{A}"))
    with httpx.Client(verify=context, timeout=5.0) as client:
        text = wait_for(lambda: client.get(f"https://127.0.0.1:{port}/metrics").text, "the metrics site")
        assert f'qlink_data_queued{{peer="{B}"}} 0.0' in text and f'qlink_alarm_latched{{peer="{B}"}}' in text
        assert client.get(f"https://127.0.0.1:{port}/v1/status").status_code == 404
    bare = ssl.create_default_context(cafile=str(pki_dir / "ca.pem"))
    with httpx.Client(verify=bare, timeout=5.0) as client, pytest.raises(httpx.HTTPError):
        client.get(f"https://127.0.0.1:{port}/metrics")
    group.kill(A, signal.SIGTERM)
