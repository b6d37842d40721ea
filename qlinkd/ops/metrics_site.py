"""The optional remote /metrics endpoint (``[metrics]`` in the facility configuration): a separate small
HTTPS site for a Prometheus on another host, serving /metrics and nothing else (the local API, with its
token-protected and data routes, stays on loopback). TLS always; a client certificate from ``client_ca``
when it is set (mutual TLS)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from qlinkmed.qlinkd.errors import PkiError
from qlinkmed.qlinkd.ops.metrics import CONTENT_TYPE


def metrics_server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """A TLS >= 1.2 server context for the metrics site; it requires a client certificate issued by
    `client_ca` when that is given. PkiError names the unusable file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (ssl.SSLError, OSError) as exc:
        raise PkiError(f"{cert}, {key}", f"not a usable certificate and key pair ({exc})") from None
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (ssl.SSLError, OSError) as exc:
            raise PkiError(str(client_ca), f"not a usable CA certificate ({exc})") from None
    return context


def make_metrics_app(render: Callable[[], bytes]) -> web.Application:
    """GET /metrics answered with `render()` (which refreshes the gauges read from the stores first)."""
    # A scrape sends no body: the smallest limit aiohttp takes.
    app = web.Application(client_max_size=1024)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render(), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/metrics", metrics)
    return app
