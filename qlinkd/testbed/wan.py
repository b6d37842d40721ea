"""A user-space WAN emulator: a TCP proxy on loopback that adds one-way delay, jitter, loss-like stalls and
a bandwidth cap to each direction of every connection it carries, and can cut (partition), restore and flap
the link. It needs no privileges (kernel netem is often unavailable) and the daemon never imports it.

The model, per direction of each proxied connection, for a chunk of b bytes read at time t:

- rate: the chunk is serialised behind the previous one, taking 8b/RATE seconds on the link;
- delay and jitter: it then crosses the link in DELAY plus a uniform draw in [0, JITTER];
- loss: with probability LOSS it is "lost" and held one retransmission timeout more,
  ``max(200 ms, 2 x DELAY)`` (Linux's minimum RTO, or one round trip when that is longer);
- order: TCP delivers in order, so a chunk is never delivered before the one read before it (a stalled
  chunk holds back those behind it: head-of-line blocking, as on a real lossy TCP path);
- partition: while the link is cut nothing is delivered and new connections are held, not refused;
  buffered data waits and, after restore, crosses the link once more (DELAY) as TCP's retransmission would;
- memory: the proxy reads from a source only while that direction holds less than `buffer_cap` bytes, so
  backpressure reaches the sender as it would through a full TCP window.

Connection setup adds no delay of its own (the client's connect completes on the local listener).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from qlinkmed.qcore.errors import UsageError
from qlinkmed.qlinkd.errors import ConfigError

MIN_RTO_S = 0.2
"""Linux's minimum retransmission timeout: the floor of a loss stall."""
BUFFER_CAP = 4 * 1024 * 1024
"""Bytes one direction of a connection may hold in flight before the proxy stops reading its source."""
CHUNK = 64 * 1024

_TIME = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s)")
_RATE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(kbit|mbit|gbit)")
_LOSS = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(%?)")
_RATE_UNIT = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


class UniformSource(Protocol):
    """A uniform draw in [0, 1): ``random.Random(seed)`` or a numpy ``Generator`` both fit. The emulated
    network's jitter and loss are no secret; the caller seeds the generator so a run can be replayed (the
    daemon's modules may not import a seeded generator at all: tests/test_entropy.py)."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class WanSpec:
    """What one link does to the bytes it carries, in each direction."""

    delay_s: float
    """One-way delay in seconds."""
    jitter_s: float = 0.0
    """Upper bound of the uniform extra delay in seconds."""
    loss: float = 0.0
    """Probability in [0, 1) that a chunk is stalled one retransmission timeout."""
    rate_bps: float | None = None
    """Link rate in bit/s; None for no cap."""

    def __post_init__(self) -> None:
        if not self.delay_s >= 0:
            raise ConfigError("delay", f"must be >= 0 s, got {self.delay_s!r}")
        if not self.jitter_s >= 0:
            raise ConfigError("jitter", f"must be >= 0 s, got {self.jitter_s!r}")
        if not 0 <= self.loss < 1:
            raise ConfigError("loss", f"must be in [0, 1), got {self.loss!r}")
        if self.rate_bps is not None and not self.rate_bps > 0:
            raise ConfigError("rate", f"must be > 0 bit/s, got {self.rate_bps!r}")

    @property
    def stall_s(self) -> float:
        """How long a 'lost' chunk is held beyond its delay: one retransmission timeout."""
        return max(MIN_RTO_S, 2 * self.delay_s)

    @property
    def random(self) -> bool:
        """Whether the spec draws random numbers (jitter or loss)."""
        return self.jitter_s > 0 or self.loss > 0

    @classmethod
    def parse(cls, text: str) -> WanSpec:
        """Parse ``DELAY[,JITTER,LOSS,RATE]``: ``25ms``, ``5ms,1ms``, ``25ms,5ms,0.5%,100mbit``. Times take
        ms or s, loss a percentage or a fraction, rate kbit, mbit or gbit (per second)."""
        parts = [p.strip().lower() for p in text.split(",")]
        if not 1 <= len(parts) <= 4:
            raise ConfigError("wan", f"expected DELAY[,JITTER,LOSS,RATE], got {text!r}")
        names = ("delay", "jitter", "loss", "rate")
        values: dict[str, float] = {}
        for name, part in zip(names, parts, strict=False):
            values[name] = _parse_part(name, part)
        return cls(
            delay_s=values["delay"],
            jitter_s=values.get("jitter", 0.0),
            loss=values.get("loss", 0.0),
            rate_bps=values.get("rate"),
        )


def _parse_part(name: str, part: str) -> float:
    if name in ("delay", "jitter"):
        if m := _TIME.fullmatch(part):
            return float(m[1]) * (1e-3 if m[2] == "ms" else 1.0)
        raise ConfigError(name, f"{part!r} is not a time such as 25ms or 0.1s")
    if name == "loss":
        if m := _LOSS.fullmatch(part):
            value = float(m[1]) / (100 if m[2] else 1)
            if value < 1:
                return value
        raise ConfigError(name, f"{part!r} is not a loss such as 0.5% or 0.005 (below 100 %)")
    if m := _RATE.fullmatch(part):
        return float(m[1]) * _RATE_UNIT[m[2]]
    raise ConfigError(name, f"{part!r} is not a rate such as 500kbit, 100mbit or 1gbit")


@dataclass(frozen=True, slots=True, kw_only=True)
class WanStatistics:
    """What the proxy has seen so far (an immutable snapshot)."""

    connections: int
    """Connections accepted from clients."""
    upstream_read: int
    """Bytes read from clients."""
    upstream_delivered: int
    """Bytes written to the target."""
    downstream_read: int
    """Bytes read from the target."""
    downstream_delivered: int
    """Bytes written to clients."""
    stalls: int
    """Chunks held a retransmission timeout (emulated losses)."""
    held: int
    """Connections accepted during a partition, waiting for it to end before reaching the target."""


@dataclass(slots=True)
class _Counters:
    connections: int = 0
    read: list[int] = field(default_factory=lambda: [0, 0])
    delivered: list[int] = field(default_factory=lambda: [0, 0])
    stalls: int = 0
    held: int = 0


class WanProxy:
    """One emulated link: accepts on `listen_host`, forwards each connection to `target`."""

    def __init__(
        self,
        target: tuple[str, int],
        spec: WanSpec,
        *,
        rng: UniformSource | None = None,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        buffer_cap: int = BUFFER_CAP,
    ) -> None:
        if spec.random and rng is None:
            raise UsageError("a WanSpec with jitter or loss needs rng (e.g. random.Random(seed))")
        if buffer_cap < 1:
            raise ConfigError("buffer_cap", f"must be >= 1 byte, got {buffer_cap}")
        self.target = target
        self.spec = spec
        self._rng = rng
        self._listen = (listen_host, listen_port)
        self._cap = buffer_cap
        self._up = asyncio.Event()
        self._up.set()
        self._counters = _Counters()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self._flap: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Listen and return the port."""
        if self._server is not None:
            raise UsageError("WanProxy.start() called twice")
        self._server = await asyncio.start_server(self._handle, *self._listen)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def statistics(self) -> WanStatistics:
        c = self._counters
        return WanStatistics(
            connections=c.connections,
            upstream_read=c.read[0],
            upstream_delivered=c.delivered[0],
            downstream_read=c.read[1],
            downstream_delivered=c.delivered[1],
            stalls=c.stalls,
            held=c.held,
        )

    @property
    def is_cut(self) -> bool:
        return not self._up.is_set()

    def cut(self) -> None:
        """Partition the link: nothing is delivered, new connections wait (stops a flap)."""
        self._stop_flap()
        self._up.clear()

    def restore(self) -> None:
        """End a partition (stops a flap)."""
        self._stop_flap()
        self._up.set()

    def flap(self, period_s: float, down_s: float) -> None:
        """Cut the link for `down_s` at the start of every `period_s` until restore(), cut() or close()."""
        if not 0 < down_s < period_s:
            raise ConfigError("flap", f"need 0 < down_s < period_s, got {down_s!r} and {period_s!r}")
        self._stop_flap()
        self._flap = asyncio.create_task(self._flapping(period_s, down_s))

    async def close(self) -> None:
        """Stop listening, drop every connection and end every task the proxy started."""
        self._stop_flap()
        flap, self._flap = self._flap, None
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        # The server's handler tasks are not cancelled but end once their connection task has: Python
        # 3.11's stream server logs a cancelled handler as an error.
        await asyncio.gather(*connections, *self._handlers, *([flap] if flap else []), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _stop_flap(self) -> None:
        if self._flap is not None:
            self._flap.cancel()

    async def _flapping(self, period_s: float, down_s: float) -> None:
        while True:
            self._up.clear()
            await asyncio.sleep(down_s)
            self._up.set()
            await asyncio.sleep(period_s - down_s)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is None:  # handlers always run in a task; the check keeps the types honest
            raise RuntimeError("WanProxy handler outside a task")
        self._counters.connections += 1
        connection = asyncio.create_task(self._carry(client_r, client_w))
        self._handlers.add(handler)
        self._connections.add(connection)
        try:
            await asyncio.wait([connection])
        finally:
            self._handlers.discard(handler)
            self._connections.discard(connection)
            if not connection.cancelled() and (error := connection.exception()) is not None:
                raise error

    async def _carry(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        target_w: asyncio.StreamWriter | None = None
        try:
            if not self._up.is_set():
                self._counters.held += 1
                try:
                    await self._up.wait()  # a connection made during a partition is held, not refused
                finally:
                    self._counters.held -= 1
            target_r, target_w = await asyncio.open_connection(*self.target)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_Direction(self, 0).run(client_r, target_w))
                tg.create_task(_Direction(self, 1).run(target_r, client_w))
        except* (OSError, asyncio.IncompleteReadError):
            pass  # either end went away: drop the other, as a middlebox would
        finally:
            for writer in (client_w, target_w):
                if writer is not None:
                    writer.close()


class _Direction:
    """One direction of one connection: a reader that stamps each chunk with its due time and a writer
    that delivers the chunks in order when due and while the link is up."""

    def __init__(self, proxy: WanProxy, index: int) -> None:
        self._proxy = proxy
        self._index = index
        self._queue: deque[tuple[float, bytes]] = deque()
        self._buffered = 0
        self._changed = asyncio.Event()
        self._link_free = 0.0
        self._last_due = 0.0
        self._eof = False

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._read(reader))
            tg.create_task(self._write(writer))

    def _due(self, now: float, size: int) -> float:
        spec, proxy = self._proxy.spec, self._proxy
        sent = now
        if spec.rate_bps is not None:
            self._link_free = max(self._link_free, now) + 8 * size / spec.rate_bps
            sent = self._link_free
        due = sent + spec.delay_s
        if proxy._rng is not None:
            if spec.jitter_s > 0:
                due += spec.jitter_s * proxy._rng.random()
            if spec.loss > 0 and proxy._rng.random() < spec.loss:
                due += spec.stall_s
                proxy._counters.stalls += 1
        self._last_due = max(self._last_due, due)
        return self._last_due

    async def _read(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._buffered >= self._proxy._cap:
                self._changed.clear()
                await self._changed.wait()
            data = await reader.read(CHUNK)
            if not data:
                self._eof = True
                self._changed.set()
                return
            self._proxy._counters.read[self._index] += len(data)
            self._queue.append((self._due(loop.time(), len(data)), data))
            self._buffered += len(data)
            self._changed.set()

    async def _write(self, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        up = self._proxy._up
        while True:
            while not self._queue:
                if self._eof:
                    if writer.can_write_eof():
                        writer.write_eof()  # pass the half-close on, as TCP would
                    return
                self._changed.clear()
                await self._changed.wait()
            due, data = self._queue[0]
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not up.is_set():
                await up.wait()
                # After a partition the held data crosses the link once more (TCP's retransmission).
                await asyncio.sleep(self._proxy.spec.delay_s)
                continue  # the link may have been cut again meanwhile
            self._queue.popleft()
            writer.write(data)
            await writer.drain()
            self._proxy._counters.delivered[self._index] += len(data)
            self._buffered -= len(data)
            self._changed.set()
