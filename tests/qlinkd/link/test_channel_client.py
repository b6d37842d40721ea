"""The daemon's connection to the quantum-channel service: it talks only to the channel's certificate."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.channel_client import ChannelClient
from qlinkmed.qlinkd.ops.pki import CHANNEL_NAME, client_context, server_context, write_demo_pki
from qlinkmed.qlinkd.ops.toml_reader import Address
from tests.polling import wait_for_async

A, B = "hospital-a", "hospital-b"
HELLO = lm.ChannelHello(facility=A, peer=B, role="alice", protocol="bb84")


@pytest.mark.asyncio
@pytest.mark.parametrize(("server_name", "accepted"), [("hospital-b", False), (CHANNEL_NAME, True)])
async def test_only_the_channels_certificate_hears_the_hello(
    tmp_path: Path, server_name: str, accepted: bool
) -> None:
    # Regression: the daemon checked only the hostname, which every certificate of the deployment's CA
    # carries, so an impostor with any of them was taken for the channel and carried the link's photons.
    certs = write_demo_pki(tmp_path / "pki", [A, B])
    received: list[bytes] = []
    ended = asyncio.Event()

    async def listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            if accepted:
                received.append(await reader.readexactly(4))  # the hello's length prefix arrives
            else:
                received.append(await reader.read())  # until the client closes
        writer.close()
        ended.set()

    tls = server_context(certs["ca.pem"], certs[f"{server_name}.pem"], certs[f"{server_name}.key"])
    server = await asyncio.start_server(listen, "127.0.0.1", 0, ssl=tls)
    refused: list[None] = []
    client = ChannelClient(
        Address(host="127.0.0.1", port=server.sockets[0].getsockname()[1]),
        client_context(certs["ca.pem"], certs[f"{A}.pem"], certs[f"{A}.key"]),
        HELLO,
        lambda round_id, message: None,
        on_refused=lambda: refused.append(None),
    )
    running = asyncio.create_task(client.run())
    try:
        await wait_for_async(ended.is_set, "the server's end of the first connection", timeout=20.0)
        if accepted:
            assert refused == [] and len(received[0]) == 4
            assert await client.wait_connected(5.0)
        else:
            # Closed without a byte (on every retry): the impostor never saw the hello.
            assert received and all(data == b"" for data in received)
            assert refused and not client.connected
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        server.close()
        await server.wait_closed()
