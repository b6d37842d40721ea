"""The local API's user routes. Managing users is an administrator's act: it needs the facility token
(``state_dir/local-api.token``) and names the OS user who ran the command (`who`), and each act is
audited. Break-glass is the user's own act, with the user's token.

    POST /v1/users                  {"name", "roles": [...], "departments"?: [...], "who"}
                                                                        -> 201 {"user", "token"}
    GET  /v1/users                                                      -> {"users": [...]}
    POST /v1/users/{id}/disable     {"who"}                             -> {"user"}
    POST /v1/users/{id}/rotate      {"who"}                             -> {"user", "token"}
    POST /v1/users/{id}/patients    {"patient", "assigned": bool, "who"} -> {"user"}
    POST /v1/users/{id}/departments {"department", "assigned": bool, "who"} -> {"user"}
    POST /v1/break-glass            {"reason", "minutes"?}  (user token) -> {"user"}

A token appears in an answer only to `add` and `rotate`; the store keeps its SHA-256 alone."""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from qlinkmed.qlinkd.access.policy import User, UserState
from qlinkmed.qlinkd.access.service import Access
from qlinkmed.qlinkd.errors import AccessError

MAX_WHO_CHARS = 64
MAX_ROLES = 32
MAX_BODY_BYTES = 16 << 10
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(kind: type[web.HTTPException], message: str, field: str | None = None) -> web.HTTPException:
    body = {"message": message} if field is None else {"message": message, "field": field}
    return kind(text=json.dumps(body), content_type="application/json")


def bearer(request: web.Request) -> str:
    given = request.headers.get("Authorization", "")
    return given[7:].strip() if given.startswith("Bearer ") else ""


def is_facility_token(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode())


def active_user(access: Access, given: str) -> User:
    """The active user holding the bearer token `given`; 401 for a token no user holds, 403 for a
    disabled user."""
    user = access.authenticate(given) if given else None
    if user is None:
        raise json_error(
            web.HTTPUnauthorized,
            "this endpoint needs a user's bearer token (qlink user add NAME --role ROLE)",
        )
    if user.state is not UserState.ACTIVE:
        raise json_error(web.HTTPForbidden, f"user {user.name} is {user.state.value}")
    return user


def _too_large(size: int) -> web.HTTPException:
    body = json.dumps({"message": f"the body is over {MAX_BODY_BYTES} bytes"})
    return web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, size, text=body, content_type="application/json")


async def read_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _too_large(request.content_length)
    # Read whole (bounded by the application's client_max_size), then held to this route's own bound.
    data = await request.read()
    if len(data) > MAX_BODY_BYTES:
        raise _too_large(len(data))
    try:
        body = json.loads(data)
    except ValueError:
        raise json_error(web.HTTPBadRequest, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "the body must be a JSON object")
    return body


def operator_name(body: dict[str, Any]) -> str:
    who = body.get("who")
    if not isinstance(who, str) or not who.strip() or len(who) > MAX_WHO_CHARS or not who.isprintable():
        raise json_error(
            web.HTTPBadRequest, f"who must name the operator in 1..{MAX_WHO_CHARS} characters", "who"
        )
    return who.strip()


def add_access_routes(app: web.Application, access: Access, token: str) -> None:
    def administrator(request: web.Request) -> None:
        if not is_facility_token(bearer(request), token):
            raise json_error(
                web.HTTPUnauthorized, "managing users needs the facility token (local-api.token)"
            )

    def refused(exc: AccessError) -> web.HTTPException:
        kind = web.HTTPNotFound if exc.field == "user" else web.HTTPBadRequest
        return json_error(kind, exc.message, exc.field)

    def user_json(user: User) -> dict[str, object]:
        return user.to_json(access.clock())

    async def add_user(request: web.Request) -> web.Response:
        administrator(request)
        body = await read_body(request)
        who, name, roles = operator_name(body), body.get("name"), body.get("roles")
        departments = body.get("departments", [])
        if (
            not isinstance(departments, list)
            or not all(isinstance(d, str) for d in departments)
            or len(departments) > MAX_ROLES
        ):
            raise json_error(
                web.HTTPBadRequest,
                f"departments must be a list of at most {MAX_ROLES} department names",
                "departments",
            )
        if not isinstance(name, str):
            raise json_error(web.HTTPBadRequest, "name must be text", "name")
        if (
            not isinstance(roles, list)
            or not all(isinstance(r, str) for r in roles)
            or len(roles) > MAX_ROLES
        ):
            raise json_error(
                web.HTTPBadRequest, f"roles must be a list of at most {MAX_ROLES} role names", "roles"
            )
        try:
            user, new = access.add(
                name, tuple(dict.fromkeys(roles)), by=who, departments=tuple(dict.fromkeys(departments))
            )
        except AccessError as exc:
            raise refused(exc) from None
        return web.json_response({"user": user_json(user), "token": new}, status=201)

    async def list_users(request: web.Request) -> web.Response:
        administrator(request)
        return web.json_response({"users": [user_json(u) for u in access.store.users()]})

    async def disable_user(request: web.Request) -> web.Response:
        administrator(request)
        who = operator_name(await read_body(request))
        try:
            user = access.disable(request.match_info["user"], by=who)
        except AccessError as exc:
            raise refused(exc) from None
        return web.json_response({"user": user_json(user)})

    async def rotate_user(request: web.Request) -> web.Response:
        administrator(request)
        who = operator_name(await read_body(request))
        try:
            user, new = access.rotate(request.match_info["user"], by=who)
        except AccessError as exc:
            raise refused(exc) from None
        return web.json_response({"user": user_json(user), "token": new})

    def assignment(what: str, act: Callable[[str, str, bool, str], User]) -> Handler:
        """The route assigning (or, with "assigned": false, removing) a patient or a department."""

        async def assign(request: web.Request) -> web.Response:
            administrator(request)
            body = await read_body(request)
            who, value, assigned = operator_name(body), body.get(what), body.get("assigned", True)
            if not isinstance(value, str) or not isinstance(assigned, bool):
                raise json_error(web.HTTPBadRequest, f"{what} must be text and assigned true or false", what)
            try:
                user = act(request.match_info["user"], value, assigned, who)
            except AccessError as exc:
                raise refused(exc) from None
            return web.json_response({"user": user_json(user)})

        return assign

    assign_patient = assignment(
        "patient", lambda uid, value, on, who: access.assign(uid, value, assigned=on, by=who)
    )
    assign_department = assignment(
        "department", lambda uid, value, on, who: access.assign_department(uid, value, assigned=on, by=who)
    )

    async def break_glass(request: web.Request) -> web.Response:
        user = active_user(access, bearer(request))
        body = await read_body(request)
        reason, minutes = body.get("reason"), body.get("minutes")
        if not isinstance(reason, str):
            raise json_error(web.HTTPBadRequest, "break-glass needs a reason (text)", "reason")
        ok = minutes is None or (
            isinstance(minutes, int | float) and not isinstance(minutes, bool) and math.isfinite(minutes)
        )
        if not ok:
            raise json_error(web.HTTPBadRequest, "minutes must be a number", "minutes")
        try:
            granted = access.break_glass(user, reason, None if minutes is None else float(minutes) * 60.0)
        except AccessError as exc:
            raise refused(exc) from None
        return web.json_response({"user": user_json(granted)})

    app.router.add_post("/v1/users", add_user)
    app.router.add_get("/v1/users", list_users)
    app.router.add_post("/v1/users/{user}/disable", disable_user)
    app.router.add_post("/v1/users/{user}/rotate", rotate_user)
    app.router.add_post("/v1/users/{user}/patients", assign_patient)
    app.router.add_post("/v1/users/{user}/departments", assign_department)
    app.router.add_post("/v1/break-glass", break_glass)
