"""The quantum-channel service: the emulated fibre between facilities, as its own process.

Facilities connect over mutual TLS (their certificate names them), say which link and role they serve,
then submit their round choices; the broker pairs them and the emulator answers each party. Only the
facilities and links the configuration names are admitted (`admission.py`); a connection that does not
finish TLS and hello in time, or falls silent, is closed. An admin API (`admin.py`: plain HTTP on
loopback, a token for every change) attaches and detaches an eavesdropper at runtime: the
eavesdropper-injection test mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web

from qlinkmed.qcore.backends import get_backend
from qlinkmed.qcore.channel import Eavesdropper, EveKind
from qlinkmed.qlinkd.channel.admin import admin_app, ensure_token
from qlinkmed.qlinkd.channel.admission import admit_hello, admit_identity, admit_link, expect_hello
from qlinkmed.qlinkd.channel.broker import ChannelBroker, Job, LinkKey, run
from qlinkmed.qlinkd.channel.config import ChannelServiceConfig
from qlinkmed.qlinkd.errors import ChannelRefused, FrameError
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.framing import encode_length_prefixed, read_frame
from qlinkmed.qlinkd.link.wire import MAX_FRAME_BYTES, decode_frame, encode_frame
from qlinkmed.qlinkd.ops import pki
from qlinkmed.qlinkd.ops.metrics import ChannelMetrics

log = logging.getLogger("qlink.channel")

CLOSE_WAIT_S = 2.0
"""How long a closing connection waits for the peer's TLS goodbye."""
EMULATIONS_AT_ONCE = 2
"""Rounds emulated at the same time (in worker threads). Links keep several rounds open; running all
their emulations at once would multiply the service's memory without finishing any sooner on two
cores, so the others wait their turn with just their submissions in memory."""


@dataclass(slots=True)
class _Party:
    writer: asyncio.StreamWriter
    role: str


@dataclass(slots=True)
class ChannelService:
    config: ChannelServiceConfig
    broker: ChannelBroker = field(init=False)
    metrics: ChannelMetrics = field(default_factory=ChannelMetrics)
    _parties: dict[tuple[LinkKey, str], _Party] = field(default_factory=dict)
    _connections: Counter[str] = field(default_factory=Counter)
    """Open connections by facility (from TLS to close, hello or not): the per-identity limit's count."""
    _rounds: int = 0
    _jobs: set[asyncio.Task[None]] = field(default_factory=set)
    _emulating: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(EMULATIONS_AT_ONCE))

    def __post_init__(self) -> None:
        self.broker = ChannelBroker(
            model=self.config.fiber, backend=get_backend(self.config.backend.value), eve=self.config.eve
        )
        self.metrics.set_eve_attached(self.config.eve.active)

    # ---- eavesdropper admin --------------------------------------------------------------------------
    def attach_eve(self, eve: Eavesdropper) -> None:
        self.broker.eve = eve
        self.metrics.set_eve_attached(eve.active)
        log.warning(
            "eavesdropper attached: %s on a fraction %.3f of the pulses", eve.kind.value, eve.fraction
        )
        if eve.kind is EveKind.PNS:
            log.warning(
                "photon-number splitting acts on weak-coherent-pulse trains only: single-photon BB84 and "
                "E91 rounds pass it untouched (there is no spare photon to split off)"
            )

    def detach_eve(self) -> None:
        self.broker.eve = Eavesdropper()
        self.metrics.set_eve_attached(False)
        log.warning("eavesdropper detached")

    def status(self) -> dict[str, object]:
        eve = self.broker.eve
        return {
            "eve": {"kind": eve.kind.value, "fraction": eve.fraction if eve.active else 0.0},
            "links": sorted({f"{key[0]}:{key[1]}" for key in self._parties}),
            "sources": dict(sorted((str(key), source) for key, source in self.broker.sources.items())),
            "connections": dict(sorted(self._connections.items())),
            "rounds": self._rounds,
            "fiber": {
                "distance_km": self.config.fiber.distance_km,
                "misalignment": self.config.fiber.misalignment,
                "detector_efficiency": self.config.fiber.detector_efficiency,
            },
        }

    # ---- facility connections -------------------------------------------------------------------------
    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        who = pki.peer_common_name(writer.transport)
        facility: str | None = None
        slot: tuple[LinkKey, str] | None = None
        phase = "hello"
        try:
            facility = admit_identity(self.config, who, self._connections[who or ""])
            self._connections[facility] += 1
            async with asyncio.timeout(self.config.hello_timeout_s):
                first = await read_frame(reader, MAX_FRAME_BYTES)
            if first is None:
                return
            hello = expect_hello(decode_frame(first)[1])
            link = admit_hello(self.config, facility, hello)
            admit_link(link, self._links())
            slot = (link, hello.role)
            old = self._parties.get(slot)
            if old is not None:
                old.writer.close()
            self._parties[slot] = _Party(writer=writer, role=hello.role)
            log.info("%s connected as %s on %s (%s)", hello.facility, hello.role, link, hello.protocol)
            phase = "idle"
            while True:
                async with asyncio.timeout(self.config.idle_timeout_s):
                    data = await read_frame(reader, MAX_FRAME_BYTES)
                if data is None:
                    break
                round_id, message = decode_frame(data)
                outcome = self.broker.submit(link, hello.protocol, hello.role, round_id, message)
                if isinstance(outcome, lm.ChannelError):
                    writer.write(encode_length_prefixed(encode_frame(outcome, round_id)))
                elif isinstance(outcome, Job):
                    task = asyncio.create_task(self._run_job(outcome))
                    self._jobs.add(task)
                    task.add_done_callback(self._jobs.discard)
        except ChannelRefused as exc:
            # Said to the party too: a misconfigured facility learns why it is refused, not just that it was.
            self.metrics.connection_refused(exc.reason)
            log.warning(
                "closing channel connection from %s (%s): refused (%s): %s",
                peer,
                who,
                exc.reason,
                exc.message,
            )
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(encode_length_prefixed(encode_frame(lm.ChannelError(reason=exc.message), 0)))
        except FrameError as exc:
            log.warning("closing channel connection from %s (%s): %s", peer, who, exc)
        except TimeoutError:
            self.metrics.connection_timed_out(phase)
            if phase == "hello":
                log.warning(
                    "closing channel connection from %s (%s): no hello within %g s",
                    peer,
                    who,
                    self.config.hello_timeout_s,
                )
            else:  # an honest facility between rounds: it redials when it next needs the channel
                log.info(
                    "closing channel connection from %s (%s): no frame for %g s",
                    peer,
                    who,
                    self.config.idle_timeout_s,
                )
        except (ConnectionError, OSError) as exc:
            log.info("channel connection from %s (%s) lost: %s", peer, who, exc)
        except asyncio.CancelledError:
            # Shutting down. Python 3.11's stream server asks a finished handler for its exception and
            # logs a cancelled one as an error; ending normally keeps shutdown quiet.
            log.debug("channel connection from %s closed at shutdown", peer)
            writer.transport.abort()  # no TLS goodbye to wait for: the loop is going away
        finally:
            if facility is not None:
                self._connections[facility] -= 1
                if not self._connections[facility]:
                    del self._connections[facility]
            party = self._parties.get(slot) if slot is not None else None
            if slot is not None and party is not None and party.writer is writer:
                del self._parties[slot]
                if slot[0] not in self._links():
                    self.broker.forget(slot[0])  # nobody left to finish its rounds
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await writer.wait_closed()

    async def _run_job(self, job: Job) -> None:
        rng = np.random.default_rng(secrets.randbits(128))
        async with self._emulating:
            result = await asyncio.to_thread(
                run, job, model=self.config.fiber, backend=self.broker.backend, rng=rng
            )
        self._rounds += 1
        self.metrics.round_carried(job.protocol, _pulses(job))
        for role, message in (("alice", result.alice), ("bob", result.bob)):
            party = self._parties.get((job.link, role))
            if party is None:
                log.info("round %d on %s: %s is gone, answer dropped", job.round_id, job.link, role)
                continue
            with contextlib.suppress(ConnectionError, OSError):
                party.writer.write(encode_length_prefixed(encode_frame(message, job.round_id)))

    def _links(self) -> set[LinkKey]:
        return {key for key, _ in self._parties}


def _pulses(job: Job) -> int:
    return int(job.bob.settings.size)


async def serve(
    config: ChannelServiceConfig, *, on_ready: Callable[[dict[str, int]], object] | None = None
) -> None:
    """Run the channel service until cancelled. `on_ready` gets the bound ports (listen, admin); by then
    the admin token is in `state_dir`."""
    service = ChannelService(config)
    token = ensure_token(config.state_dir)
    context = pki.server_context(config.tls.ca, config.tls.cert, config.tls.key)
    server = await asyncio.start_server(
        service.handle_connection,
        config.listen.host,
        config.listen.port,
        ssl=context,
        # A connection that never finishes its handshake holds a socket, not a slot; still, not for long.
        ssl_handshake_timeout=config.hello_timeout_s,
        limit=2**16,
    )
    runner = web.AppRunner(admin_app(service, token), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, config.admin.host, config.admin.port)
    await site.start()
    ports = {
        "listen": server.sockets[0].getsockname()[1],
        "admin": runner.addresses[0][1],  # the one site's socket: the port bound when asked for 0
    }
    log.info(
        "channel service listening on %s:%d, admin on %s:%d",
        config.listen.host,
        ports["listen"],
        config.admin.host,
        ports["admin"],
    )
    try:
        if on_ready is not None:
            on_ready(ports)
        async with server:
            await server.serve_forever()
    finally:
        await runner.cleanup()
        for task in list(service._jobs):
            task.cancel()
