"""The WAN emulator proxy: spec parsing, delay, order under jitter, the rate cap, partitions and teardown,
against echo and sink servers the tests start on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.testbed import wan
from qlinkmed.qlinkd.testbed.wan import WanProxy, WanSpec
from tests.polling import wait_for_async


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("25ms", WanSpec(delay_s=0.025)),
        ("5ms,1ms", WanSpec(delay_s=0.005, jitter_s=0.001)),
        ("25ms,5ms,0.5%,100mbit", WanSpec(delay_s=0.025, jitter_s=0.005, loss=0.005, rate_bps=1e8)),
        ("0.1s, 0s, 0.01, 500kbit", WanSpec(delay_s=0.1, loss=0.01, rate_bps=5e5)),
        ("0ms,0ms,0%,1gbit", WanSpec(delay_s=0.0, rate_bps=1e9)),
    ],
)
def test_a_spec_parses(text: str, spec: WanSpec) -> None:
    assert WanSpec.parse(text) == spec


@pytest.mark.parametrize(
    ("text", "field", "names"),
    [
        ("25", "delay", "'25'"),
        ("fast", "delay", "'fast'"),
        ("25ms,-1ms", "jitter", "'-1ms'"),
        ("25ms,1ms,150%", "loss", "'150%'"),
        ("25ms,1ms,1", "loss", "'1'"),
        ("25ms,1ms,0%,100mb", "rate", "'100mb'"),
        ("25ms,1ms,0%,0mbit", "rate", "0.0"),
        ("25ms,1ms,0%,1mbit,9", "wan", "DELAY[,JITTER,LOSS,RATE]"),
    ],
)
def test_a_bad_spec_names_the_bad_part(text: str, field: str, names: str) -> None:
    with pytest.raises(ConfigError) as caught:
        WanSpec.parse(text)
    assert caught.value.field == field
    assert names in str(caught.value)


def test_jitter_or_loss_without_a_generator_is_refused() -> None:
    with pytest.raises(ValueError, match="rng"):
        WanProxy(("127.0.0.1", 1), WanSpec(delay_s=0.01, jitter_s=0.001))


def _runs_wan_code(task: asyncio.Task[object]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and code.co_filename == wan.__file__


@dataclass
class Server:
    port: int
    received: bytearray
    accepted: int = 0


@pytest_asyncio.fixture
async def echo() -> AsyncIterator[Server]:
    received = bytearray()
    the_server: list[Server] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        the_server[0].accepted += 1
        try:
            while data := await r.read(65536):
                received.extend(data)
                w.write(data)
                await w.drain()
        finally:
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    the_server.append(Server(server.sockets[0].getsockname()[1], received))
    try:
        yield the_server[0]
    finally:
        server.close()
        await server.wait_closed()


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    start = time.monotonic()
    writer.write(b"ping")
    await writer.drain()
    assert await reader.readexactly(4) == b"ping"
    return time.monotonic() - start


@pytest.mark.asyncio
async def test_a_round_trip_takes_twice_the_delay(echo: Server) -> None:
    delay = 0.05
    proxy = WanProxy(("127.0.0.1", echo.port), WanSpec(delay_s=delay))
    port = await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        rtts = [await _round_trip(reader, writer) for _ in range(3)]
        writer.close()
    finally:
        await proxy.close()
    assert min(rtts) >= 2 * delay
    assert min(rtts) < 2 * delay + 0.5  # generous: a shared 2-core machine


@pytest.mark.asyncio
async def test_order_is_kept_under_jitter_and_loss(echo: Server) -> None:
    proxy = WanProxy(("127.0.0.1", echo.port), WanSpec.parse("2ms,20ms,5%"), rng=random.Random(16))
    port = await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stream = b"".join(i.to_bytes(4, "big") for i in range(20_000))

        async def send() -> None:
            # Many small writes, so the proxy reads many chunks, each with its own jitter draw.
            for i in range(0, len(stream), 800):
                writer.write(stream[i : i + 800])
                await writer.drain()
                await asyncio.sleep(0)

        sender = asyncio.create_task(send())
        echoed = await reader.readexactly(len(stream))
        await sender
        writer.close()
        stats = proxy.statistics()
    finally:
        await proxy.close()
    assert echoed == stream
    assert bytes(echo.received) == stream
    assert stats.upstream_delivered == stats.downstream_delivered == len(stream)


@pytest.mark.asyncio
async def test_the_rate_cap_bounds_the_transfer_time() -> None:
    size, rate = 200_000, 4e6  # 0.4 s at 4 Mbit/s
    got = bytearray()
    done = asyncio.Event()

    async def sink(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            got.extend(data)
        done.set()
        w.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    proxy = WanProxy(server.sockets[0].getsockname(), WanSpec(delay_s=0.0, rate_bps=rate))
    try:
        port = await proxy.start()
        payload = os.urandom(size)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        writer.write(payload)
        writer.write_eof()
        await asyncio.wait_for(done.wait(), 60)
        elapsed = time.monotonic() - start
        writer.close()
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()
    assert bytes(got) == payload
    assert elapsed >= 8 * size / rate


@pytest.mark.asyncio
async def test_a_cut_delivers_nothing_until_restored(echo: Server) -> None:
    proxy = WanProxy(("127.0.0.1", echo.port), WanSpec(delay_s=0.001))
    port = await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _round_trip(reader, writer) >= 0  # connected through the proxy to the target
        before = proxy.statistics()
        proxy.cut()
        payload = os.urandom(300_000)
        writer.write(payload)
        await writer.drain()
        # Readiness, not a sleep: the bytes reached the proxy, which has had every chance to deliver them.
        await wait_for_async(
            lambda: proxy.statistics().upstream_read - before.upstream_read == len(payload),
            "the proxy to read the payload",
        )
        held = proxy.statistics()
        assert held.upstream_delivered == before.upstream_delivered
        assert held.downstream_delivered == before.downstream_delivered
        assert len(echo.received) == 4
        proxy.restore()
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 60)
        writer.close()
    finally:
        await proxy.close()
    assert echoed == payload
    assert bytes(echo.received) == b"ping" + payload


@pytest.mark.asyncio
async def test_a_connection_made_during_a_cut_completes_after_restore(echo: Server) -> None:
    proxy = WanProxy(("127.0.0.1", echo.port), WanSpec(delay_s=0.001))
    port = await proxy.start()
    try:
        proxy.cut()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # held, not refused
        writer.write(b"hello")
        await writer.drain()
        await wait_for_async(lambda: proxy.statistics().held == 1, "the proxy to hold the connection")
        assert proxy.statistics().upstream_delivered == 0
        assert echo.accepted == 0 and echo.received == b""
        proxy.restore()
        assert await asyncio.wait_for(reader.readexactly(5), 60) == b"hello"
        writer.close()
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_a_flap_cuts_and_restores_the_link(echo: Server) -> None:
    proxy = WanProxy(("127.0.0.1", echo.port), WanSpec(delay_s=0.0))
    await proxy.start()
    try:
        proxy.flap(0.2, 0.1)
        await wait_for_async(lambda: proxy.is_cut, "the flap to cut the link")
        await wait_for_async(lambda: not proxy.is_cut, "the flap to restore the link")
        await wait_for_async(lambda: proxy.is_cut, "the flap to cut the link again")
        proxy.restore()
        assert not proxy.is_cut
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_close_leaves_no_task_running(echo: Server) -> None:
    proxy = WanProxy(("127.0.0.1", echo.port), WanSpec(delay_s=0.01))
    port = await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await _round_trip(reader, writer) > 0
    proxy.flap(1.0, 0.5)
    proxy.cut()
    # A held connection and a connection with data in flight, both open when the proxy closes.
    _, held = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"in flight")
    await writer.drain()
    await wait_for_async(lambda: proxy.statistics().connections == 2, "the proxy to accept both")
    await proxy.close()
    # The echo server's own handler may still be winding down; no task of the proxy's may be left.
    proxy_tasks = [t for t in asyncio.all_tasks() if _runs_wan_code(t)]
    assert proxy_tasks == []
    assert await reader.read() == b""  # the proxy dropped the client's connection
    writer.close()
    held.close()
