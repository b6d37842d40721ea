"""The ETSI GS QKD 014 V1.1.1 key delivery API (REST over mutual TLS), as an aiohttp application.

This module only speaks HTTP: it authenticates the calling SAE from its client certificate, validates
requests, and maps the key manager's answers and errors onto the status codes and messages the standard
mandates. Where keys come from is the `KeyManager`'s business (`kme.StoreKeyManager` over the key store).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from qlinkmed.qlinkd.errors import ConfigError, InsufficientKey, KeyNotFound, NotAuthorised
from qlinkmed.qlinkd.ops.pki import peer_common_name
from qlinkmed.qlinkd.pool.values import DeliveredKey

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/keys"
MAX_SAE_ID_COUNT = 0
"""additional_slave_SAE_IDs are not supported: each key goes to exactly one slave SAE."""
MAX_BODY_BYTES = 64 * 1024
MSG_SIZE_MULTIPLE = "size shall be a multiple of 8"
MSG_EXTENSION_MANDATORY = "not all extension_mandatory parameters are supported"
MSG_KEYS_NOT_FOUND = "one or more keys specified are not found on KME"
_DIGITS = re.compile(r"[0-9]{1,9}")

Audit = Callable[[str, dict[str, Any]], None]
Handler = Callable[[web.Request], Awaitable[web.Response]]


@dataclass(frozen=True, slots=True, kw_only=True)
class KmePolicy:
    key_size: int = 256
    """Key size in bits used when a request names none (reported as `key_size` in the status)."""
    min_key_size: int = 64
    """Smallest key size in bits a request may ask for."""
    max_key_size: int = 4096
    """Largest key size in bits a request may ask for."""
    max_key_per_request: int = 128
    """Most keys one enc_keys request may ask for (also the most key IDs one dec_keys may name)."""
    notice_wait_s: float = 2.0
    """How long dec_keys waits for key IDs this KME does not know yet: the master's KME may still be
    forwarding the notice over the peer link."""

    def __post_init__(self) -> None:
        for name in ("key_size", "min_key_size", "max_key_size"):
            value = getattr(self, name)
            if value <= 0 or value % 8:
                raise ConfigError(name, f"must be a positive multiple of 8 bits, got {value}")
        if not self.min_key_size <= self.key_size <= self.max_key_size:
            raise ConfigError("key_size", "must lie within [min_key_size, max_key_size]")
        if self.max_key_per_request < 1:
            raise ConfigError("max_key_per_request", f"must be at least 1, got {self.max_key_per_request}")
        if self.notice_wait_s < 0:
            raise ConfigError("notice_wait_s", f"must not be negative, got {self.notice_wait_s}")


class KeyManager(Protocol):
    """What the API needs from the daemon: SAE directory, pool counts, and key hand-out."""

    facility: str

    def local_saes(self) -> frozenset[str]: ...

    def peer_of_sae(self, sae_id: str) -> str | None: ...

    def status_counts(self, peer: str, key_size: int) -> tuple[int, int]: ...

    def enc_keys(
        self, peer: str, *, number: int, size_bits: int, master_sae: str, slave_sae: str
    ) -> list[DeliveredKey]: ...

    async def wait_notice(self, key_ids: list[str], timeout: float) -> None: ...

    def dec_keys(self, key_ids: list[str], *, master_sae: str, slave_sae: str) -> list[DeliveredKey]: ...


def sae_from_certificate(request: web.Request) -> str | None:
    """The calling SAE's ID: the subject CN of its verified client certificate (None without one)."""
    transport = request.transport
    return None if transport is None else peer_common_name(transport)


class _Refusal(Exception):
    """Internal: ends a request with an ETSI error object."""

    def __init__(self, status: int, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


def _bad(message: str, **detail: Any) -> _Refusal:
    return _Refusal(400, message, [detail] if detail else None)


def _not_found(exc: KeyNotFound) -> _Refusal:
    """The standard's 400 for missing keys. Keys this KME deleted unfetched at the end of their lifetime
    say so: the message keeps the standard's text as its prefix, and their details carry "expired"."""
    details = [{"key_ID": k, **({"expired": True} if k in exc.expired else {})} for k in exc.key_ids]
    if not exc.expired:
        return _Refusal(400, MSG_KEYS_NOT_FOUND, details)
    message = f"{MSG_KEYS_NOT_FOUND}: {len(exc.expired)} expired, not fetched within the key lifetime"
    return _Refusal(400, message, details)


def _keys_body(keys: list[DeliveredKey]) -> dict[str, Any]:
    return {"keys": [{"key_ID": k.key_id, "key": base64.b64encode(k.material).decode()} for k in keys]}


def _no_constant(name: str) -> Any:
    """JSON has no NaN or Infinity (RFC 8259); Python's parser accepts them unless told otherwise, and an
    error that echoed one back would itself not be JSON."""
    raise ValueError(f"{name} is not a JSON number")


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers malformed JSON, NaN/Infinity and an integer of more digits than Python converts;
        # RecursionError a body nested deeper than the parser recurses. All are the client's, so 400.
        raise _bad(f"request body is not valid UTF-8 JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object")
    return body


def _query(request: web.Request, allowed: set[str]) -> dict[str, str]:
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise _bad(f"unsupported query parameter(s): {', '.join(unknown)}", allowed=sorted(allowed))
    if any(len(request.query.getall(name)) > 1 for name in request.query):
        raise _bad("a query parameter is given more than once")
    return dict(request.query)


def _query_int(params: Mapping[str, str], name: str, default: int) -> int:
    if name not in params:
        return default
    if not _DIGITS.fullmatch(params[name]):
        raise _bad(f"{name} must be a non-negative integer", parameter=name, value=params[name])
    return int(params[name])


def _body_int(body: Mapping[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be an integer", parameter=name, value=value)
    return value


def _canonical_key_id(value: Any) -> str:
    try:
        return str(uuid.UUID(value)) if isinstance(value, str) else ""
    except ValueError:
        return ""


def make_kme_app(
    manager: KeyManager,
    policy: KmePolicy,
    *,
    caller_identity: Callable[[web.Request], str | None] = sae_from_certificate,
    audit: Audit | None = None,
) -> web.Application:
    """The ETSI GS QKD 014 application for one KME. Serve it only over TLS that requires client
    certificates (`pki.server_context`): the caller's identity is its certificate."""

    def record(event: str, fields: dict[str, Any]) -> None:
        # Key IDs, SAE IDs and sizes only: never key material.
        if audit is not None:
            audit(event, fields)

    def calling_sae(request: web.Request) -> str:
        sae = caller_identity(request)
        if sae is None or sae not in manager.local_saes():
            record("etsi.refused", {"caller": sae, "path": request.path, "reason": "unknown SAE"})
            raise _Refusal(401, "the calling SAE is not registered with this KME")
        return sae

    def remote_peer(sae: str, role: str) -> str:
        peer = manager.peer_of_sae(sae)
        if peer is None:
            raise _bad(
                f"unknown {role} SAE ID {sae!r}: not attached to a peer KME", parameter=f"{role}_SAE_ID"
            )
        return peer

    def handler(inner: Callable[[web.Request], Awaitable[dict[str, Any]]]) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            try:
                body, status = await inner(request), 200
            except _Refusal as refusal:
                body, status = {"message": refusal.message, "details": refusal.details}, refusal.status
            except web.HTTPException:
                raise  # aiohttp's own answers (e.g. 413 for an oversized body)
            except ConnectionResetError as exc:
                # The SAE went away while its body was read: its doing, nothing half-done, no traceback.
                log.info("ETSI 014 %s %s: the client went away (%s)", request.method, request.path, exc)
                raise web.HTTPBadRequest(text="connection lost\n") from None
            except Exception:
                # The standard's answer to any server-side failure; the details stay in our log.
                log.exception("ETSI 014 %s %s failed", request.method, request.path)
                body, status = {"message": "the KME failed; see its log", "details": []}, 503
            return web.json_response(body, status=status)

        return handle

    @handler
    async def status(request: web.Request) -> dict[str, Any]:
        master = calling_sae(request)
        slave = request.match_info["slave_SAE_ID"]
        peer = remote_peer(slave, "slave")
        stored, maximum = manager.status_counts(peer, policy.key_size)
        return {
            "source_KME_ID": manager.facility,
            "target_KME_ID": peer,
            "master_SAE_ID": master,
            "slave_SAE_ID": slave,
            "key_size": policy.key_size,
            "stored_key_count": stored,
            "max_key_count": maximum,
            "max_key_per_request": policy.max_key_per_request,
            "max_key_size": policy.max_key_size,
            "min_key_size": policy.min_key_size,
            "max_SAE_ID_count": MAX_SAE_ID_COUNT,
        }

    async def enc_request(request: web.Request) -> tuple[int, int]:
        if request.method == "GET":
            params = _query(request, {"number", "size"})
            number, size = _query_int(params, "number", 1), _query_int(params, "size", policy.key_size)
        else:
            body = await _json_object(request)
            number, size = _body_int(body, "number", 1), _body_int(body, "size", policy.key_size)
            if body.get("additional_slave_SAE_IDs"):
                raise _bad(
                    "additional_slave_SAE_IDs are not supported (max_SAE_ID_count is 0)",
                    parameter="additional_slave_SAE_IDs",
                )
            if body.get("extension_mandatory"):
                raise _bad(MSG_EXTENSION_MANDATORY, parameter="extension_mandatory")
        if not 1 <= number <= policy.max_key_per_request:
            raise _bad(f"number must be between 1 and {policy.max_key_per_request}", parameter="number")
        if size % 8:
            raise _bad(MSG_SIZE_MULTIPLE, parameter="size", value=size)
        if not policy.min_key_size <= size <= policy.max_key_size:
            raise _bad(
                f"size must be between {policy.min_key_size} and {policy.max_key_size} bits", parameter="size"
            )
        return number, size

    @handler
    async def enc_keys(request: web.Request) -> dict[str, Any]:
        master = calling_sae(request)
        slave = request.match_info["slave_SAE_ID"]
        peer = remote_peer(slave, "slave")
        number, size = await enc_request(request)
        try:
            keys = manager.enc_keys(peer, number=number, size_bits=size, master_sae=master, slave_sae=slave)
        except InsufficientKey as exc:
            raise _Refusal(503, f"not enough key material: {exc}") from None
        record(
            "etsi.enc_keys",
            {
                "master_SAE_ID": master,
                "slave_SAE_ID": slave,
                "size": size,
                "key_IDs": [k.key_id for k in keys],
            },
        )
        return _keys_body(keys)

    async def dec_request(request: web.Request) -> list[str]:
        if request.method == "GET":
            params = _query(request, {"key_ID"})
            if "key_ID" not in params:
                raise _bad("key_ID query parameter is required", parameter="key_ID")
            raw_ids: list[Any] = [params["key_ID"]]
        else:
            body = await _json_object(request)
            entries = body.get("key_IDs")
            if not isinstance(entries, list) or not entries:
                raise _bad(
                    'key_IDs must be a non-empty array of {"key_ID": ...} objects', parameter="key_IDs"
                )
            if not all(isinstance(e, dict) for e in entries):
                raise _bad("each key_IDs entry must be an object with a key_ID", parameter="key_IDs")
            raw_ids = [e.get("key_ID") for e in entries]
        if len(raw_ids) > policy.max_key_per_request:
            raise _bad(f"at most {policy.max_key_per_request} key IDs per request", parameter="key_IDs")
        ids = [_canonical_key_id(k) for k in raw_ids]
        if not all(ids):
            raise _bad("every key_ID must be a UUID", parameter="key_ID")
        if len(set(ids)) != len(ids):
            raise _bad("a key_ID is requested more than once", parameter="key_ID")
        return ids

    @handler
    async def dec_keys(request: web.Request) -> dict[str, Any]:
        slave = calling_sae(request)
        master = request.match_info["master_SAE_ID"]
        remote_peer(master, "master")
        ids = await dec_request(request)
        await manager.wait_notice(ids, policy.notice_wait_s)
        try:
            keys = manager.dec_keys(ids, master_sae=master, slave_sae=slave)
        except KeyNotFound as exc:
            raise _not_found(exc) from None
        except NotAuthorised as exc:
            record("etsi.refused", {"caller": slave, "path": request.path, "key_IDs": list(exc.key_ids)})
            raise _Refusal(401, "one or more keys were not handed out for this SAE") from None
        record(
            "etsi.dec_keys",
            {"master_SAE_ID": master, "slave_SAE_ID": slave, "key_IDs": [k.key_id for k in keys]},
        )
        return _keys_body(keys)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_get(API_PREFIX + "/{slave_SAE_ID}/status", status)
    for method in ("GET", "POST"):
        app.router.add_route(method, API_PREFIX + "/{slave_SAE_ID}/enc_keys", enc_keys)
        app.router.add_route(method, API_PREFIX + "/{master_SAE_ID}/dec_keys", dec_keys)
    return app
