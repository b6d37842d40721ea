"""The daemon's local API: what `qlink status` and `qlink keys` read, and the Prometheus endpoint.

Plain HTTP on the address the config names (loopback in every example): it reveals pool levels and link
health, never key material.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from qlinkmed.qlinkd.access.api import add_access_routes
from qlinkmed.qlinkd.access.gate_api import SettableClock, add_gate_routes
from qlinkmed.qlinkd.access.gate_service import Gate
from qlinkmed.qlinkd.access.service import Access
from qlinkmed.qlinkd.content.limits import MAX_EHR_BYTES
from qlinkmed.qlinkd.content.worker import ContentValidator
from qlinkmed.qlinkd.data_api import add_data_routes
from qlinkmed.qlinkd.dataplane.queues import queue_statuses
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.gateways.forwards import Forward, ForwardState
from qlinkmed.qlinkd.link.peer_link import PeerLink
from qlinkmed.qlinkd.link.status import QueueStatus
from qlinkmed.qlinkd.ops.metrics import CONTENT_TYPE
from qlinkmed.qlinkd.runtime import Runtime

ANCHOR_WAIT_S = 3.0
"""How long GET /v1/audit/anchors waits for the peers' answers (the CLI's timeout is 5 s)."""

MAX_NOTE_CHARS = 500
"""An acknowledgement's note goes into the audit log: a sentence or two, not a document."""
MAX_WHO_CHARS = 64
MAX_NAME_CHARS = 200
MAX_FORWARD_ROWS = 10_000
GATEWAY_NAMES = ("dicom", "mllp", "fhir")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

if TYPE_CHECKING:
    from qlinkmed.qlinkd.gateways.runner import Gateways

log = logging.getLogger("qlink.api")


def forward_json(forward: Forward) -> dict[str, Any]:
    return {
        "gateway": forward.gateway,
        "destination": forward.destination,
        "transfer": forward.transfer_id,
        "state": forward.state.value,
        "attempts": forward.attempts,
        "last_error": forward.last_error,
        "added": forward.added,
        "finished": forward.finished,
        "next_attempt": forward.next_attempt,
    }


@web.middleware
async def client_gone(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A client that disconnects while its body is read costs one INFO line, not an ERROR traceback: it
    is the client's doing (a cancelled upload, a fuzzer), and nothing is left half-done (an upload is
    abandoned by its handler)."""
    try:
        return await handler(request)
    except ConnectionResetError as exc:
        log.info("%s %s: the client went away mid-request (%s)", request.method, request.path, exc)
        raise web.HTTPBadRequest(text="connection lost\n") from None


def queues_now(plane: DataPlane, stuck_after_s: float) -> list[QueueStatus]:
    """The data plane's queues per peer, read from its records now."""
    senders = plane.sender_states()
    return queue_statuses(
        plane.records,
        senders.keys(),
        senders=senders,
        failing_since=plane.failing_since,
        now=time.time(),
        stuck_after_s=stuck_after_s,
    )


def refresh_metrics(rt: Runtime, links: Mapping[str, PeerLink], plane: DataPlane | None) -> None:
    """Set the gauges read from the stores (pools, queues) before a scrape renders them."""
    for peer_id in links:
        rt.metrics.set_pool(
            peer_id,
            pool_bits=rt.store.pool_bits(peer_id),
            auth_reserve_bits=rt.store.auth_reserve_bits(peer_id),
        )
    if plane is not None:
        now = time.time()
        failing = {peer: now - since for peer, since in plane.failing_since.items()}
        rt.metrics.set_queues(queues_now(plane, rt.config.queue_stuck_after_s), failing)


def _json_error(kind: type[web.HTTPException], message: str) -> web.HTTPException:
    return kind(text=json.dumps({"message": message}), content_type="application/json")


@dataclasses.dataclass(frozen=True, slots=True)
class OperatorAct:
    """The body of a request that is an operator's act (acknowledging an alarm, releasing forwards): the
    JSON object, who did it and why, checked; the act is audited with both."""

    body: dict[str, Any]
    who: str
    note: str


async def operator_act(request: web.Request) -> OperatorAct:
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise _json_error(web.HTTPBadRequest, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _json_error(web.HTTPBadRequest, "the body must be a JSON object")
    note, who = body.get("note", ""), body.get("who")
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise _json_error(web.HTTPBadRequest, f"note must be text of at most {MAX_NOTE_CHARS} characters")
    if not isinstance(who, str) or not who.strip() or len(who) > MAX_WHO_CHARS:
        raise _json_error(web.HTTPBadRequest, f"who must name the operator in 1..{MAX_WHO_CHARS} characters")
    return OperatorAct(body, who.strip(), note)


def make_local_app(
    rt: Runtime,
    links: Mapping[str, PeerLink],
    *,
    started: float,
    extra: Callable[[], dict[str, Any]] | None = None,
    plane: DataPlane | None = None,
    token: str | None = None,
    validator: ContentValidator | None = None,
    gateways: Gateways | None = None,
    access: Access | None = None,
    gate: Gate | None = None,
    gate_clock: SettableClock | None = None,
) -> web.Application:
    # EHR messages arrive as one request body; studies stream and are not bounded by this.
    app = web.Application(client_max_size=MAX_EHR_BYTES, middlewares=[client_gone])

    async def status(request: web.Request) -> web.Response:
        body: dict[str, Any] = {
            "facility": rt.config.id,
            "uptime_s": round(time.monotonic() - started, 3),
            "saes": list(rt.config.saes),
            "key_size_bits": rt.config.kme.key_size,
            "links": [
                dataclasses.replace(link.statistics(), alarm_latched=link.report.latch.latched).to_json()
                for link in links.values()
            ],
        }
        if plane is not None:
            body["data_plane"] = {
                "senders": plane.sender_states(),
                "peers": [p.to_json() for p in plane.peer_statuses()],
                "queues": [q.to_json() for q in queues_now(plane, rt.config.queue_stuck_after_s)],
            }
        if access is not None:
            body["access"] = access.status_json()
        if gate is not None:
            body["gate"] = gate.statistics()
        if extra is not None:
            body.update(extra())
        return web.json_response(body)

    async def keys(request: web.Request) -> web.Response:
        store = rt.store
        out = []
        for peer_id in links:
            state = store.link_state(peer_id)
            identities = store.pool_identities(peer_id)
            # The pool levels follow from the identities (bytes left per round): one query, not four.
            owned = 8 * sum(left for _, owner, _, left in identities if owner == rt.config.id)
            theirs = 8 * sum(left for _, owner, _, left in identities if owner == peer_id)
            out.append(
                {
                    "peer": peer_id,
                    "pool_bits": owned + theirs,
                    "owned_bits": owned,
                    "peer_owned_bits": theirs,
                    "auth_reserve_bits": store.auth_reserve_bits(peer_id),
                    "last_committed_round": state.last_committed,
                    "pending_round": state.pending_round,
                    "next_round": state.next_round,
                    "notices_unacknowledged": len(store.outbox(peer_id)),
                    "committed_rounds": len(identities),
                    # Equal at both ends of a healthy link: a one-line check that the pools agree.
                    "identities_sha256": hashlib.sha256(json.dumps(identities).encode()).hexdigest(),
                    "key_size_bits": rt.config.kme.key_size,
                    "keys_available": owned // rt.config.kme.key_size,
                }
            )
        return web.json_response({"facility": rt.config.id, "pools": out})

    async def metrics(request: web.Request) -> web.Response:
        refresh_metrics(rt, links, plane)
        return web.Response(body=rt.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    def require_token(request: web.Request) -> None:
        given = request.headers.get("Authorization", "")
        if token is None or not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise _json_error(web.HTTPUnauthorized, "this endpoint needs the local API bearer token")

    async def alarm_ack(request: web.Request) -> web.Response:
        # Token only: clearing an alarm is an operator's act, audited; not every local process may do it.
        require_token(request)
        act = await operator_act(request)
        peer = act.body.get("peer")
        if peer is not None and not isinstance(peer, str):
            raise _json_error(web.HTTPBadRequest, "peer must be a facility id or null")
        if peer is not None and peer not in links:
            raise _json_error(
                web.HTTPNotFound, f"unknown peer {peer!r}: this facility links to {sorted(links)}"
            )
        acknowledged, not_raised = [], []
        for peer_id in [peer] if peer is not None else list(links):
            held = links[peer_id].report.acknowledge(who=act.who, note=act.note)
            if held is None:
                not_raised.append(peer_id)
            else:
                acknowledged.append({"peer": peer_id, **held.to_json()})
        return web.json_response(
            {"facility": rt.config.id, "acknowledged": acknowledged, "not_raised": not_raised}
        )

    async def audit_anchors(request: web.Request) -> web.Response:
        # Token only: each call costs both ends an audit record, so not every local process may make one.
        require_token(request)
        # A fresh exchange with every connected peer: what each now holds of our head (anchor.py).
        answered = await asyncio.gather(*(link.anchor_now(ANCHOR_WAIT_S) for link in links.values()))
        now, head = time.monotonic(), rt.audit.head
        peers = []
        for (peer_id, link), fresh in zip(links.items(), answered, strict=True):
            known = rt.anchors.acknowledged(peer_id)
            held = known.head if known is not None else None
            peers.append(
                {
                    "peer": peer_id,
                    "connected": link.statistics().connected,
                    "answered": fresh,
                    "age_s": None if known is None else round(now - known.at, 3),
                    "anchor": None if held is None else {"seq": held.seq, "digest": held.digest},
                }
            )
        return web.json_response(
            {"facility": rt.config.id, "head": {"seq": head.seq, "digest": head.digest}, "peers": peers}
        )

    def _one_of(request: web.Request, name: str, allowed: list[str] | None = None) -> str | None:
        value = request.query.get(name)
        if value is not None and allowed is not None and value not in allowed:
            raise _json_error(web.HTTPBadRequest, f"{name} must be one of {allowed}, not {value[:40]!r}")
        return value

    async def list_forwards(request: web.Request) -> web.Response:
        # Token only: the rows name transfers and carry the destinations' error texts.
        require_token(request)
        if gateways is None:
            raise _json_error(web.HTTPNotFound, "no gateway is configured at this facility")
        state = _one_of(request, "state", [s.value for s in ForwardState])
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            limit = -1
        if not 1 <= limit <= MAX_FORWARD_ROWS:
            raise _json_error(web.HTTPBadRequest, f"limit must be a whole number in 1..{MAX_FORWARD_ROWS}")
        rows = gateways.forwards(
            state=None if state is None else ForwardState(state),
            gateway=_one_of(request, "gateway", list(GATEWAY_NAMES)),
            destination=request.query.get("destination"),
            limit=limit,
        )
        return web.json_response({"facility": rt.config.id, "forwards": [forward_json(f) for f in rows]})

    async def release_forwards(request: web.Request) -> web.Response:
        # Token only: sending again what a destination refused is an operator's act, audited.
        require_token(request)
        if gateways is None:
            raise _json_error(web.HTTPNotFound, "no gateway is configured at this facility")
        act = await operator_act(request)
        gateway, destination, transfer = (act.body.get(k) for k in ("gateway", "destination", "transfer"))
        if gateway not in GATEWAY_NAMES:
            raise _json_error(web.HTTPBadRequest, f"gateway must be one of {list(GATEWAY_NAMES)}")
        for name, value in (("destination", destination), ("transfer", transfer)):
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS):
                raise _json_error(
                    web.HTTPBadRequest, f"{name} must be text of 1..{MAX_NAME_CHARS} characters"
                )
        released = gateways.release(gateway, destination, transfer, who=act.who, note=act.note)
        return web.json_response({"facility": rt.config.id, "released": [forward_json(f) for f in released]})

    app.router.add_get("/v1/forwards", list_forwards)
    app.router.add_post("/v1/forwards/release", release_forwards)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/keys", keys)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/audit/anchors", audit_anchors)
    app.router.add_post("/v1/alarm/ack", alarm_ack)
    if plane is not None and token is not None:
        add_data_routes(app, plane, token, validator or ContentValidator(), access, gate)
    if access is not None and token is not None:
        add_access_routes(app, access, token)
    if gate is not None and token is not None:
        add_gate_routes(app, gate, token, gate_clock)
    return app
