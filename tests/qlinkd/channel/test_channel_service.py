"""The channel service on real sockets (in-process, 127.0.0.1, free ports): it admits a facility only for
its own configured links, closes connections that stay half-open or fall silent, and caps the connections
of each identity. Every wait is for an event (a frame, the close, a status); none is a sleep."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qlinkmed.qlinkd.channel.config import ChannelServiceConfig, load_channel_config
from qlinkmed.qlinkd.channel.service import serve
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.channel_client import ChannelClient
from qlinkmed.qlinkd.link.framing import encode_length_prefixed, read_frame
from qlinkmed.qlinkd.link.wire import MAX_FRAME_BYTES, decode_frame, encode_frame
from qlinkmed.qlinkd.ops import pki
from qlinkmed.qlinkd.ops.toml_reader import Address
from qlinkmed.qlinkd.testbed.deployment import Deployment, write_loopback_deployment
from tests.polling import wait_for_async

A, B = "hospital-a", "hospital-b"
EVENT_S = 20.0
"""Bound on waiting for an event that must come (a refusal, a close): generous for a loaded machine."""


@dataclasses.dataclass
class Running:
    deployment: Deployment
    config: ChannelServiceConfig
    ports: dict[str, int]

    async def dial(self, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TLS connection to the channel presenting `name`'s certificate (issued by the deployment's CA)."""
        cert, key = self.deployment.pki(name)
        context = pki.client_context(self.deployment.root / "pki" / "ca.pem", cert, key)
        return await asyncio.open_connection(
            "127.0.0.1", self.ports["listen"], ssl=context, server_hostname="127.0.0.1"
        )

    async def _get(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.ports['admin']}{path}"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return await response.text()

    async def status(self) -> dict[str, Any]:
        return dict(json.loads(await self._get("/v1/status")))

    async def metrics(self) -> str:
        return await self._get("/metrics")


@asynccontextmanager
async def channel(tmp_path: Path, **overrides: Any) -> AsyncIterator[Running]:
    """The channel service of a loopback deployment, its configuration changed by `overrides`, running in
    this loop until the block ends."""
    deployment = write_loopback_deployment(tmp_path)
    config = dataclasses.replace(load_channel_config(deployment.channel), **overrides)
    ready: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, on_ready=ready.set_result))
    try:
        async with asyncio.timeout(EVENT_S):
            ports = await asyncio.shield(ready)
        yield Running(deployment=deployment, config=config, ports=ports)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _hello(facility: str, peer: str, role: str) -> bytes:
    hello = lm.ChannelHello(facility=facility, peer=peer, role=role, protocol="bb84")
    return encode_length_prefixed(encode_frame(hello, 0))


async def _refusal(reader: asyncio.StreamReader) -> str:
    """The ChannelError the channel sends a refused connection; the connection then ends."""
    async with asyncio.timeout(EVENT_S):
        frame = await read_frame(reader, MAX_FRAME_BYTES)
        assert frame is not None, "closed without saying why"
        round_id, message = decode_frame(frame)
        assert round_id == 0 and isinstance(message, lm.ChannelError)
        assert await read_frame(reader, MAX_FRAME_BYTES) is None
    return message.reason


async def _closed(reader: asyncio.StreamReader) -> None:
    """Wait for the channel to end the connection (end of stream, or a reset)."""
    async with asyncio.timeout(EVENT_S):
        with contextlib.suppress(ConnectionError, OSError):
            assert await reader.read() == b""


def _close(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("certificate", "hello", "reason"),
    [
        # Regression (issue 14, item 3): an SAE's certificate of the same CA could hello as a facility
        # of its own name, for a link to anyone, and take one of the 64 link slots.
        ("pacs-hospital-a", ("pacs-hospital-a", B, "bob"), "certificate 'pacs-hospital-a' names no facility"),
        # A facility claiming another facility's name.
        (B, (A, B, "alice"), f"certificate names {B!r}, hello claims {A!r}"),
        # Regression: a facility for a link the configuration does not name (a made-up peer).
        (A, (A, "made-up-peer", "alice"), f"this channel carries no link {A}--made-up-peer"),
    ],
)
async def test_a_hello_outside_the_configuration_is_refused_and_said(
    tmp_path: Path, certificate: str, hello: tuple[str, str, str], reason: str
) -> None:
    async with channel(tmp_path) as running:
        reader, writer = await running.dial(certificate)
        writer.write(_hello(*hello))
        try:
            assert reason in await _refusal(reader)
        finally:
            _close(writer)
        status = await running.status()
        assert status["links"] == []
        assert "qlink_channel_refused_total" in await running.metrics()


@pytest.mark.asyncio
async def test_an_honest_facility_is_admitted_and_a_made_up_one_is_not(tmp_path: Path) -> None:
    async with channel(tmp_path) as running:
        # A certificate of the CA for a name the configuration does not list (say, a stolen issuance).
        ca = running.deployment.root / "pki"
        cert, key = pki.issue((ca / "ca.pem").read_bytes(), (ca / "ca.key").read_bytes(), "hospital-z")
        (ca / "hospital-z.pem").write_bytes(cert)
        (ca / "hospital-z.key").write_bytes(key)
        reader, writer = await running.dial("hospital-z")
        writer.write(_hello("hospital-z", A, "bob"))
        try:
            assert "certificate 'hospital-z' names no facility" in await _refusal(reader)
        finally:
            _close(writer)
        metrics = await running.metrics()
        assert 'qlink_channel_refused_total{reason="not_a_facility"} 1.0' in metrics

        reader, writer = await running.dial(A)
        writer.write(_hello(A, B, "alice"))
        try:
            status: dict[str, Any] = await wait_for_async(
                lambda: _status_if(running, lambda s: s["links"]), "hospital-a's link in the status"
            )
            assert status["links"] == [f"{A}--{B}:alice"]
        finally:
            _close(writer)


async def _status_if(running: Running, condition: Any) -> dict[str, Any] | None:
    status = await running.status()
    return status if condition(status) else None


@pytest.mark.asyncio
async def test_half_open_connections_are_closed(tmp_path: Path) -> None:
    # Regression: a TCP connection that never starts TLS was held for asyncio's 60 s handshake default,
    # and one that finished TLS but never said hello for a fixed 10 s; now both follow hello_timeout_s.
    async with channel(tmp_path, hello_timeout_s=1.0) as running:
        raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", running.ports["listen"])
        tls_reader, tls_writer = await running.dial(A)
        try:
            await _closed(raw_reader)
            await _closed(tls_reader)
        finally:
            _close(raw_writer)
            _close(tls_writer)
        metrics = await running.metrics()
        assert 'qlink_channel_timeouts_total{phase="hello"} 1.0' in metrics


@pytest.mark.asyncio
async def test_an_idle_connection_is_closed_and_the_facility_can_redial(tmp_path: Path) -> None:
    # Regression: an established connection could stay silent forever, holding its link slot.
    async with channel(tmp_path, idle_timeout_s=0.5) as running:
        for attempt in (1, 2):
            reader, writer = await running.dial(A)
            writer.write(_hello(A, B, "alice"))
            try:
                await _closed(reader)
            finally:
                _close(writer)
            await wait_for_async(
                lambda: _status_if(running, lambda s: not s["links"] and not s["connections"]),
                "the idle link gone from the status",
            )
            metrics = await running.metrics()
            assert f'qlink_channel_timeouts_total{{phase="idle"}} {attempt}.0' in metrics


@pytest.mark.asyncio
async def test_each_identity_holds_at_most_its_limit_of_connections(tmp_path: Path) -> None:
    # Regression: one certificate could open connection after connection (each waiting out the hello).
    async with channel(tmp_path) as running:
        held = [await running.dial(A), await running.dial(A)]  # the limit: 2 per configured link
        try:
            await wait_for_async(
                lambda: _status_if(running, lambda s: s["connections"] == {A: 2}), "two connections counted"
            )
            reader, writer = await running.dial(A)
            try:
                assert f"{A} already holds 2 connections to the channel" in await _refusal(reader)
            finally:
                _close(writer)
            # Another identity is not affected, and a freed place is free again.
            _, b_writer = await running.dial(B)
            b_writer.write(_hello(B, A, "bob"))
            _close(held.pop()[1])
            await wait_for_async(
                lambda: _status_if(running, lambda s: s["connections"] == {A: 1, B: 1}),
                "one of A's connections gone, B's counted",
            )
            reader, writer = await running.dial(A)
            writer.write(_hello(A, B, "alice"))
            held.append((reader, writer))
            status: dict[str, Any] = await wait_for_async(
                lambda: _status_if(running, lambda s: len(s["links"]) == 2), "both parties of the link"
            )
            assert status["links"] == [f"{A}--{B}:alice", f"{A}--{B}:bob"]
            _close(b_writer)
        finally:
            for _, writer in held:
                _close(writer)
        metrics = await running.metrics()
        assert 'qlink_channel_refused_total{reason="connection_limit"} 1.0' in metrics


@pytest.mark.asyncio
async def test_a_refused_facility_logs_the_channels_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The facility's side: a refusal is logged with the channel's words, not taken for a round's answer.
    answers: list[tuple[int, object]] = []
    async with channel(tmp_path) as running:
        cert, key = running.deployment.pki(A)
        client = ChannelClient(
            Address(host="127.0.0.1", port=running.ports["listen"]),
            pki.client_context(running.deployment.root / "pki" / "ca.pem", cert, key),
            lm.ChannelHello(facility=A, peer="hospital-q", role="alice", protocol="bb84"),
            lambda round_id, message: answers.append((round_id, message)),
        )
        task = asyncio.create_task(client.run())
        try:
            record = await wait_for_async(
                lambda: next((r for r in caplog.records if "refused the link" in r.getMessage()), None),
                "the facility's log of the refusal",
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert record.levelname == "ERROR"
    assert record.getMessage() == (
        f"quantum channel refused the link to hospital-q: this channel carries no link {A}--hospital-q "
        "(see its [[link]] list)"
    )
    assert answers == []
