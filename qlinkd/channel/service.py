"""The quantum-channel service: the emulated fibre between facilities, as its own process.

Facilities connect over mutual TLS (their certificate names them), say which link and role they serve,
then submit their round choices; the broker pairs them and the emulator answers each party. An admin
API (plain HTTP, bound where the config says, loopback in every example) attaches and detaches an
eavesdropper at runtime: the eavesdropper-injection test mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web

from qlinkmed.qcore.backends import get_backend
from qlinkmed.qcore.channel import Eavesdropper, EveKind
from qlinkmed.qcore.errors import ConfigError
from qlinkmed.qlinkd.channel.broker import ChannelBroker, Job, LinkKey, run
from qlinkmed.qlinkd.channel.config import ChannelServiceConfig
from qlinkmed.qlinkd.errors import FrameError
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.framing import encode_length_prefixed, read_frame
from qlinkmed.qlinkd.link.wire import MAX_FRAME_BYTES, decode_frame, encode_frame
from qlinkmed.qlinkd.ops import pki
from qlinkmed.qlinkd.ops.metrics import CONTENT_TYPE, ChannelMetrics

log = logging.getLogger("qlink.channel")

HELLO_WAIT_S = 10.0
"""How long a new connection may take to say who it is."""
CLOSE_WAIT_S = 2.0
"""How long a closing connection waits for the peer's TLS goodbye."""
MAX_LINKS = 64
"""Links the channel serves at once: a certificate holder cannot make it hold rounds for endless
made-up links."""


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
    _rounds: int = 0
    _jobs: set[asyncio.Task[None]] = field(default_factory=set)

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
        slot: tuple[LinkKey, str] | None = None
        try:
            async with asyncio.timeout(HELLO_WAIT_S):
                first = await read_frame(reader, MAX_FRAME_BYTES)
            if first is None:
                return
            _, hello = decode_frame(first)
            if not isinstance(hello, lm.ChannelHello):
                raise FrameError(f"expected channel_hello first, got {type(hello).__name__}")
            if who != hello.facility:
                raise FrameError(f"certificate names {who!r}, hello claims {hello.facility!r}")
            link = _link_key(hello)
            links = self._links()
            if link not in links and len(links) >= MAX_LINKS:
                raise FrameError(f"refusing link {link}: {MAX_LINKS} links are already connected")
            slot = (link, hello.role)
            old = self._parties.get(slot)
            if old is not None:
                old.writer.close()
            self._parties[slot] = _Party(writer=writer, role=hello.role)
            log.info("%s connected as %s on %s (%s)", hello.facility, hello.role, link, hello.protocol)
            while (data := await read_frame(reader, MAX_FRAME_BYTES)) is not None:
                round_id, message = decode_frame(data)
                outcome = self.broker.submit(link, hello.protocol, hello.role, round_id, message)
                if isinstance(outcome, lm.ChannelError):
                    writer.write(encode_length_prefixed(encode_frame(outcome, round_id)))
                elif isinstance(outcome, Job):
                    task = asyncio.create_task(self._run_job(outcome))
                    self._jobs.add(task)
                    task.add_done_callback(self._jobs.discard)
        except (FrameError, TimeoutError) as exc:
            log.warning("closing channel connection from %s (%s): %s", peer, who, exc)
        except (ConnectionError, OSError) as exc:
            log.info("channel connection from %s (%s) lost: %s", peer, who, exc)
        except asyncio.CancelledError:
            # Shutting down. Python 3.11's stream server asks a finished handler for its exception and
            # logs a cancelled one as an error; ending normally keeps shutdown quiet.
            log.debug("channel connection from %s closed at shutdown", peer)
            writer.transport.abort()  # no TLS goodbye to wait for: the loop is going away
        finally:
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

    # ---- admin API -------------------------------------------------------------------------------------
    def admin_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/v1/status", self._get_status)
        app.router.add_post("/v1/eve", self._post_eve)
        app.router.add_delete("/v1/eve", self._delete_eve)
        app.router.add_get("/metrics", self._get_metrics)
        return app

    async def _get_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _post_eve(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _bad("body is not JSON")
        if not isinstance(body, dict):
            return _bad("body must be a JSON object")
        kind = body.get("kind", "intercept-resend")
        fraction = body.get("fraction", 1.0)
        try:
            if kind == EveKind.NONE.value:
                raise ConfigError("kind", "use DELETE /v1/eve to detach")
            if isinstance(fraction, bool) or not isinstance(fraction, int | float):
                raise ConfigError("fraction", "must be a number in [0, 1]")
            eve = Eavesdropper(kind=EveKind(kind), fraction=float(fraction))
        except ConfigError as exc:  # before ValueError, which it also is
            return _bad(f"{exc.field}: {exc.message}")
        except ValueError:
            return _bad(f"kind must be one of intercept-resend, pns; got {str(kind)[:40]!r}")
        self.attach_eve(eve)
        return web.json_response(self.status())

    async def _delete_eve(self, request: web.Request) -> web.Response:
        self.detach_eve()
        return web.json_response(self.status())

    async def _get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def _link_key(hello: lm.ChannelHello) -> LinkKey:
    a, b = sorted((hello.facility, hello.peer))
    role_ok = (hello.role == "alice") == (hello.facility == a)
    if not role_ok:
        raise FrameError(f"{hello.facility} claims role {hello.role} on {a}--{b}; Alice is the first name")
    return LinkKey(alice=a, bob=b)


def _pulses(job: Job) -> int:
    return int(job.bob.settings.size)


def _bad(message: str) -> web.Response:
    return web.json_response({"message": message}, status=400)


async def serve(
    config: ChannelServiceConfig, *, on_ready: Callable[[dict[str, int]], object] | None = None
) -> None:
    """Run the channel service until cancelled. `on_ready` gets the bound ports (listen, admin)."""
    service = ChannelService(config)
    context = pki.server_context(config.tls.ca, config.tls.cert, config.tls.key)
    server = await asyncio.start_server(
        service.handle_connection, config.listen.host, config.listen.port, ssl=context, limit=2**16
    )
    runner = web.AppRunner(service.admin_app(), access_log=None, shutdown_timeout=2.0)
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
