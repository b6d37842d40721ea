"""The gate's local API routes, both with the facility token:

    GET  /v1/gate                  -> mode, model, thresholds, decisions so far, assessment p50/p99
    POST /v1/gate/clock {"now", "who"}  -> {"now"}   (only with [gate] test_clock = true; else 404)

The test clock lets a scripted testbed scenario replay weeks of requests in minutes: it moves the time
the gate and break-glass read (never the audit's own timestamps). Each move is audited."""

from __future__ import annotations

import json
import math
import time

from aiohttp import web

from qlinkmed.qlinkd.access.api import bearer, is_facility_token, json_error, operator_name, read_body
from qlinkmed.qlinkd.access.gate_service import Gate


class SettableClock:
    """Wall-clock time plus an offset a test may set; what the gate and break-glass read."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def set(self, now: float) -> None:
        self.offset = now - time.time()


def add_gate_routes(app: web.Application, gate: Gate, token: str, clock: SettableClock | None) -> None:
    def administrator(request: web.Request) -> None:
        if not is_facility_token(bearer(request), token):
            raise json_error(web.HTTPUnauthorized, "the gate's routes need the facility token")

    async def statistics(request: web.Request) -> web.Response:
        administrator(request)
        return web.json_response(gate.statistics())

    async def set_clock(request: web.Request) -> web.Response:
        administrator(request)
        if clock is None:
            raise json_error(web.HTTPNotFound, "the gate's test clock is off ([gate] test_clock)")
        body = await read_body(request)
        who, now = operator_name(body), body.get("now")
        if not isinstance(now, int | float) or isinstance(now, bool) or not math.isfinite(now) or now <= 0:
            raise json_error(web.HTTPBadRequest, "now must be epoch seconds", "now")
        clock.set(float(now))
        gate.audit.record("gate_test_clock", now=float(now), by=who)
        return web.Response(text=json.dumps({"now": clock()}), content_type="application/json")

    app.router.add_get("/v1/gate", statistics)
    app.router.add_post("/v1/gate/clock", set_clock)
