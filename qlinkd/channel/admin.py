"""The channel service's admin API (plain HTTP on a loopback address): attach and detach an eavesdropper,
read the status and the metrics.

A loopback address is not a boundary against a browser on the same host: any web page can send it a
simple POST (CSRF), and a page whose name rebinds to 127.0.0.1 can read its answers (DNS rebinding). So:
- every request's Host header must name the address the API is bound to (a rebound name does not);
- every state-changing call (POST, PUT, PATCH, DELETE) needs ``Authorization: Bearer <token>``, the token in
  ``state_dir/admin-api.token`` (0600, the service's user), compared in constant time;
- every request body must be ``Content-Type: application/json`` (a page can only send that cross-origin
  after a CORS preflight, which this API never grants).
The GETs need no token: the status and the metrics hold no key, no secret and no patient data, and
monitoring scrapes them. Every refusal is a JSON object {"message": ...} naming the problem.
"""

from __future__ import annotations

import hmac
import logging
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from qlinkmed.qcore.channel import Eavesdropper, EveKind
from qlinkmed.qcore.errors import ConfigError
from qlinkmed.qcore.params import SourceKind
from qlinkmed.qlinkd.channel.config import ADMIN_TOKEN_FILE
from qlinkmed.qlinkd.ops import entropy
from qlinkmed.qlinkd.ops.metrics import CONTENT_TYPE
from qlinkmed.qlinkd.ops.toml_reader import Address

if TYPE_CHECKING:
    from qlinkmed.qlinkd.channel.broker import LinkKey
    from qlinkmed.qlinkd.channel.service import ChannelService

log = logging.getLogger("qlink.channel")

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON = "application/json"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""Host names a loopback-bound API also answers to: a page can only send them from its own origin on
this very port, never from a rebound name."""


def ensure_token(state_dir: Path) -> str:
    """The admin API token, created (0600, from the OS CSPRNG) at the first start; `state_dir` is created
    (0700) if missing."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return entropy.bearer_token(state_dir / ADMIN_TOKEN_FILE)


def host_allowed(header: str | None, bound: Address, port: int) -> bool:
    """Whether a Host header names the API's own address: the bound host (or a loopback name) and the
    port the API listens on."""
    if not header:
        return False
    try:
        parts = urllib.parse.urlsplit("//" + header)
        given_port = parts.port
    except ValueError:
        return False
    if parts.path or parts.query or parts.fragment or parts.username is not None:
        return False
    names = LOOPBACK_NAMES | {bound.host.lower()}
    return parts.hostname in names and (given_port if given_port is not None else 80) == port


def _refusal(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"message": message}, status=status, headers=headers or None)


def guard(token: str, bound: Address) -> Middleware:
    """The middleware that checks every request's Host, and a state-changing one's token and content type."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        port = sockname[1] if sockname else -1
        host = request.headers.get("Host")
        if not host_allowed(host, bound, port):
            log.warning("admin API: refused a request for Host %r (not %s)", (host or "")[:80], bound)
            return _refusal(
                421, f"Host {(host or '')[:80]!r} is not this API's address (use {bound.host}:{port})"
            )
        if request.method in STATE_CHANGING:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                log.warning("admin API: refused %s %s without the token", request.method, request.path)
                return _refusal(
                    401,
                    f"{request.method} needs Authorization: Bearer <token>, the token in "
                    f"state_dir/{ADMIN_TOKEN_FILE}",
                    **{"WWW-Authenticate": "Bearer"},
                )
            if (request.method != "DELETE" or request.body_exists) and request.content_type != JSON:
                return _refusal(415, f"the body must be {JSON}, got {request.content_type!r}")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
            return _refusal(exc.status, f"{exc.reason}: {request.method} {request.path}", **allow)

    return middleware


def _no_pns_target(sources: dict[LinkKey, str]) -> str:
    carried = ", ".join(sorted(f"{link} {source}" for link, source in sources.items()))
    return (
        "photon-number splitting needs multi-photon pulses (a decoy/WCP source: protocol bb84-decoy), "
        f"and {'no link has sent pulses yet' if not carried else 'no link carried sends them: ' + carried}"
    )


def admin_app(service: ChannelService, token: str) -> web.Application:
    """The admin API of `service`; `token` is what state-changing calls must carry."""
    app = web.Application(client_max_size=64 * 1024, middlewares=[guard(token, service.config.admin)])

    async def get_status(request: web.Request) -> web.Response:
        return web.json_response(service.status())

    async def post_eve(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _refusal(400, "body is not JSON")
        if not isinstance(body, dict):
            return _refusal(400, "body must be a JSON object")
        kind = body.get("kind", "intercept-resend")
        fraction = body.get("fraction", 1.0)
        try:
            if kind == EveKind.NONE.value:
                raise ConfigError("kind", "use DELETE /v1/eve to detach")
            if isinstance(fraction, bool) or not isinstance(fraction, int | float):
                raise ConfigError("fraction", "must be a number in [0, 1]")
            eve = Eavesdropper(kind=EveKind(kind), fraction=float(fraction))
        except ConfigError as exc:  # before ValueError, which it also is
            return _refusal(400, f"{exc.field}: {exc.message}")
        except ValueError:
            return _refusal(400, f"kind must be one of intercept-resend, pns; got {str(kind)[:40]!r}")
        if eve.kind is EveKind.PNS and SourceKind.WCP.value not in service.broker.sources.values():
            # Attached, it would change nothing: refused, so nobody reads an unharmed link as resistant.
            return _refusal(400, f"kind: {_no_pns_target(service.broker.sources)}")
        service.attach_eve(eve)
        return web.json_response(service.status())

    async def delete_eve(request: web.Request) -> web.Response:
        service.detach_eve()
        return web.json_response(service.status())

    async def get_metrics(request: web.Request) -> web.Response:
        return web.Response(body=service.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/v1/status", get_status)
    app.router.add_post("/v1/eve", post_eve)
    app.router.add_delete("/v1/eve", delete_eve)
    app.router.add_get("/metrics", get_metrics)
    return app
