"""The FHIR REST endpoint of a facility: EHR systems POST resources and transaction/batch Bundles to
[base] = <base_path>/<peer facility>, and the facility relays each one, whole, to that peer.

A request is answered once the message is durable in this facility's outbox (201 + Location for a
resource, a transaction-response or batch-response Bundle for a Bundle); the peer's FHIR server performs
it when it arrives there, so a response Bundle's entries say "202 Accepted", never a server-assigned id
that does not exist yet. Everything wrong with a request is reported in one OperationOutcome.
"""

from __future__ import annotations

import hmac
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

from aiohttp import web

from qlinkmed.qlinkd.content.worker import ContentValidator
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, TransferKind
from qlinkmed.qlinkd.dataplane.records import Outgoing
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.errors import ContentError, TransferError
from qlinkmed.qlinkd.gateways.fhir_checks import request_issues, validation_issues
from qlinkmed.qlinkd.gateways.fhir_config import FhirGatewayConfig
from qlinkmed.qlinkd.gateways.fhir_outcome import (
    FHIR_JSON,
    Issue,
    Severity,
    capability_statement,
    operation_outcome,
    response_bundle,
)
from qlinkmed.qlinkd.ops.audit import AuditLog

log = logging.getLogger("qlink.gateway.fhir")

_JSON_TYPES = (FHIR_JSON, "application/json")
_RESOURCE_TYPE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _outcome(status: int, *issues: Issue, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(operation_outcome(issues)),
        content_type=FHIR_JSON,
        headers=headers,
    )


class _Refusal(Exception):
    """Ends a request with an OperationOutcome (raised inside handlers, answered by `_answering`)."""

    def __init__(self, status: int, issues: list[Issue]) -> None:
        super().__init__(issues[0].diagnostics if issues else str(status))
        self.status = status
        self.issues = issues


def _refuse(status: int, code: str, diagnostics: str, *expression: str) -> _Refusal:
    return _Refusal(status, [Issue("error", code, diagnostics, tuple(expression))])


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _answering(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Refusal as refusal:
        return _outcome(refusal.status, *refusal.issues)
    except web.HTTPNotFound:
        return _outcome(404, Issue("error", "not-found", f"no FHIR interaction at {request.path}"))
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return _outcome(
            405,
            Issue("error", "not-supported", f"{request.method} is not supported here (allowed: {allowed})"),
            headers={"Allow": allowed},
        )


def _client_name(request: web.Request) -> str:
    """Who sent the request, for the audit record: the client certificate's CN, or "bearer token"."""
    transport = request.transport
    peercert = transport.get_extra_info("peercert") if transport is not None else None
    if peercert:
        for rdn in peercert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return f"certificate {value}"
    return "bearer token"


def make_fhir_app(
    config: FhirGatewayConfig,
    *,
    plane: DataPlane,
    validator: ContentValidator,
    audit: AuditLog,
    token: str | None,
    max_ehr_bytes: int,
) -> web.Application:
    """The aiohttp application; `token` is the bearer token clients must send (None: client certificates
    alone, checked by the TLS layer)."""
    limit = min(config.max_body_bytes, max_ehr_bytes)
    app = web.Application(client_max_size=limit + 1, middlewares=[_answering])
    base = config.base_path
    version = _version()

    def authorise(request: web.Request) -> None:
        if token is None:
            return
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise _Refusal(
                401,
                [Issue("error", "login", "this FHIR endpoint needs its bearer token (Authorization header)")],
            )

    def peer_of(request: web.Request) -> str:
        peer = request.match_info["peer"]
        if not plane.peer_known(peer):
            raise _refuse(404, "not-found", f"no peer facility {peer!r}: [base] is {base}/<peer facility>")
        return peer

    async def read_json(request: web.Request) -> tuple[bytes, dict[str, Any]]:
        media = request.content_type
        if media not in _JSON_TYPES:
            raise _refuse(415, "not-supported", f"send {FHIR_JSON} (got {media or 'no Content-Type'})")
        declared = request.content_length
        if declared is not None and declared > limit:
            raise _refuse(413, "too-costly", f"the body is {declared:,} bytes; the limit is {limit:,}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _refuse(413, "too-costly", f"the body is more than the limit of {limit:,} bytes") from None
        if len(body) > limit:
            raise _refuse(413, "too-costly", f"the body is {len(body):,} bytes; the limit is {limit:,}")
        try:
            parsed = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _refuse(400, "structure", f"the body is not JSON: {exc}") from None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("resourceType"), str):
            raise _refuse(400, "structure", "the body is not a FHIR resource (no resourceType)")
        return body, parsed

    async def validated(body: bytes, resource: dict[str, Any], checks: list[Issue]) -> FileEntry:
        """The resource checked by the content validator (what the data plane carries) plus `checks`
        found on the way: every issue reported at once."""
        issues = list(checks)
        name = f"{resource['resourceType']}.json"
        entry: FileEntry | None = None
        try:
            info = await validator.validate(name, body)
        except ContentError as exc:
            issues.extend(validation_issues(exc))
        else:
            if info.kind.value != "fhir":
                issues.append(
                    Issue("error", "invalid", f"the content validator read this as {info.kind.value}")
                )
            else:
                entry = FileEntry(name, len(body), info.sha256, info.kind.value)
        if issues or entry is None:
            raise _Refusal(400, issues)
        return entry

    async def queue(request: web.Request, peer: str, entry: FileEntry, body: bytes, what: str) -> str:
        try:
            manifest = plane.new_manifest(peer, TransferKind.EHR, (entry,))
            plane.queue_ehr(manifest, body)
        except (OSError, TransferError) as exc:
            log.error("FHIR %s for %s could not be queued: %s", what, peer, exc)
            raise _refuse(500, "exception", f"could not queue the message: {exc}") from None
        plane.forget_waiter(manifest.transfer_id)
        audit.record(
            "gateway_received",
            gateway="fhir",
            transfer=manifest.transfer_id,
            peer=peer,
            what=what,
            client=_client_name(request),
        )
        return manifest.transfer_id

    async def metadata_(request: web.Request) -> web.Response:
        authorise(request)
        peer = peer_of(request)
        url = f"{request.scheme}://{request.host}{base}/{peer}"
        return web.json_response(capability_statement(url, version), content_type=FHIR_JSON)

    async def create(request: web.Request) -> web.Response:
        authorise(request)
        started = time.monotonic()
        peer = peer_of(request)
        kind = request.match_info["type"]
        if not kind or not set(kind) <= _RESOURCE_TYPE_CHARS or not kind[0].isupper():
            raise _refuse(404, "not-found", f"{kind!r} is not a resource type")
        body, resource = await read_json(request)
        checks = []
        if resource["resourceType"] != kind:
            checks.append(
                Issue(
                    "error",
                    "invalid",
                    f"the body is a {resource['resourceType']}, posted to [base]/{kind}",
                    ("resourceType",),
                )
            )
        entry = await validated(body, resource, checks)
        tid = await queue(request, peer, entry, body, kind)
        location = f"{base}/{peer}/{kind}/{tid}"
        log.info("FHIR %s for %s queued as %s in %.3f s", kind, peer, tid, time.monotonic() - started)
        prefer = request.headers.get("Prefer", "")
        headers = {"Location": location, "Content-Location": location}
        if "return=minimal" in prefer:
            return web.Response(status=201, headers=headers)
        if "return=OperationOutcome" in prefer:
            queued = Issue("information", "informational", f"queued for {peer} as transfer {tid}")
            return _outcome(201, queued, headers=headers)
        return web.Response(status=201, body=body, content_type=FHIR_JSON, headers=headers)

    async def transaction(request: web.Request) -> web.Response:
        authorise(request)
        peer = peer_of(request)
        body, resource = await read_json(request)
        checks, bundle_type = request_issues(resource)
        entry = await validated(body, resource, checks)
        tid = await queue(request, peer, entry, body, f"Bundle ({bundle_type})")
        entries = resource.get("entry") or []
        answer = response_bundle(
            "transaction-response" if bundle_type == "transaction" else "batch-response",
            [("202 Accepted", None) for _ in entries],
        )
        location = f"{base}/{peer}/Bundle/{tid}"
        return web.json_response(answer, content_type=FHIR_JSON, headers={"Content-Location": location})

    async def relay_record(request: web.Request) -> web.Response:
        """What became of a request this endpoint accepted: an OperationOutcome naming its state."""
        authorise(request)
        peer = peer_of(request)
        tid = request.match_info["id"]
        record = plane.records.outgoing(tid)
        if (
            record is None
            or record.manifest.recipient != peer
            or record.manifest.kind is not TransferKind.EHR
        ):
            raise _refuse(404, "not-found", f"no request {tid} relayed to {peer}")
        state = record.state
        text = {
            Outgoing.QUEUED: f"queued for {peer}",
            Outgoing.DELIVERED: f"delivered to {peer}",
            Outgoing.REFUSED: f"refused by {peer}: {record.reason}",
        }.get(state, f"{state.value}")
        severity: Severity = "error" if state is Outgoing.REFUSED else "information"
        return _outcome(200, Issue(severity, "informational", text))

    app.router.add_get(base + "/{peer}/metadata", metadata_)
    app.router.add_post(base + "/{peer}", transaction)
    app.router.add_post(base + "/{peer}/{type}", create)
    app.router.add_get(base + "/{peer}/{type}/{id}", relay_record)
    return app


def _version() -> str:
    try:
        return metadata.version("qlinkmed")
    except metadata.PackageNotFoundError:
        return "unknown"


def server_ssl(config: FhirGatewayConfig) -> ssl.SSLContext | None:
    """The endpoint's TLS context (None: plain HTTP, allowed on loopback only by the configuration)."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.client_ca is not None:
        context.load_verify_locations(config.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
