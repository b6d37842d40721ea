"""The user routes of the local API against bad input: each refusal names the problem, nothing is changed
by a refused request, and a token appears only in the answers to `add` and `rotate`. (The routes run in
an aiohttp test server on 127.0.0.1; the end-to-end test drives them through `qlink user`.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from qlinkmed.qlinkd.access.api import MAX_BODY_BYTES, add_access_routes
from qlinkmed.qlinkd.access.config import AccessConfig, Role
from qlinkmed.qlinkd.access.service import Access
from qlinkmed.qlinkd.dataplane.manifest import TransferKind
from qlinkmed.qlinkd.ops.audit import AuditLog

FACILITY = "facility-token"
ADMIN = {"Authorization": f"Bearer {FACILITY}"}


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    audit = AuditLog.open(tmp_path / "audit.jsonl", facility="hospital-b")
    config = AccessConfig(
        roles=(Role(name="radiology", kinds=(TransferKind.STUDY,)),), break_glass_min_s=60.0
    )
    access = Access.open(tmp_path, config, audit)
    app = web.Application()
    add_access_routes(app, access, FACILITY)
    async with TestClient(TestServer(app, host="127.0.0.1")) as running:
        yield running
    access.close()
    audit.close()


async def _add(client: TestClient[web.Request, web.Application], name: str = "alice") -> dict[str, object]:
    answer = await client.post(
        "/v1/users", json={"name": name, "roles": ["radiology"], "who": "root"}, headers=ADMIN
    )
    assert answer.status == 201
    return dict(await answer.json())


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json", 400, "the body is not JSON"),
        (b"[1]", 400, "the body must be a JSON object"),
        (json.dumps({"name": "a", "roles": ["radiology"]}).encode(), 400, "who must name the operator"),
        (json.dumps({"name": 5, "roles": ["radiology"], "who": "r"}).encode(), 400, "name must be text"),
        (json.dumps({"name": "a", "roles": "radiology", "who": "r"}).encode(), 400, "roles must be a list"),
        (
            json.dumps({"name": "a b", "roles": ["radiology"], "who": "r"}).encode(),
            400,
            "a user name must match",
        ),
        (json.dumps({"name": "a", "roles": [], "who": "r"}).encode(), 400, "at least one role"),
        (json.dumps({"name": "a", "roles": ["x"], "who": "r"}).encode(), 400, "role 'x' is not defined"),
        (b"{" + b" " * MAX_BODY_BYTES + b"}", 413, "the body is over"),
    ],
)
async def test_a_refused_add_names_the_problem_and_adds_no_one(
    client: TestClient[web.Request, web.Application], body: bytes, status: int, message: str
) -> None:
    answer = await client.post("/v1/users", data=body, headers=ADMIN)
    assert answer.status == status
    assert message in (await answer.json())["message"]
    listed = await client.get("/v1/users", headers=ADMIN)
    assert (await listed.json())["users"] == []


@pytest.mark.asyncio
async def test_management_needs_the_facility_token_and_a_token_is_shown_only_when_issued(
    client: TestClient[web.Request, web.Application],
) -> None:
    added = await _add(client)
    token = str(added["token"])
    user = added["user"]
    assert isinstance(user, dict)
    for method, path in (("GET", "/v1/users"), ("POST", f"/v1/users/{user['id']}/rotate")):
        refused = await client.request(
            method, path, json={"who": "root"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert refused.status == 401
    listed = await client.get("/v1/users", headers=ADMIN)
    assert token not in await listed.text()
    missing = await client.post("/v1/users/u-nobody/disable", json={"who": "root"}, headers=ADMIN)
    assert missing.status == 404 and "no user 'u-nobody'" in (await missing.json())["message"]


@pytest.mark.asyncio
async def test_break_glass_needs_the_users_token_and_a_reason_and_a_period_in_range(
    client: TestClient[web.Request, web.Application],
) -> None:
    token = str((await _add(client))["token"])
    mine = {"Authorization": f"Bearer {token}"}
    refused = await client.post("/v1/break-glass", json={"reason": "x"}, headers=ADMIN)
    assert refused.status == 401  # the facility token is no user
    for body, message in (
        ({}, "break-glass needs a reason"),
        ({"reason": "x", "minutes": "ten"}, "minutes must be a number"),
        ({"reason": "x", "minutes": 0.5}, "break-glass lasts 1..240 minutes here, not 0.5"),
        ({"reason": "x", "minutes": 1e308}, "break-glass lasts 1..240 minutes here"),
    ):
        answer = await client.post("/v1/break-glass", json=body, headers=mine)
        assert answer.status == 400, body
        assert message in (await answer.json())["message"]
    granted = await client.post("/v1/break-glass", json={"reason": "ED trauma", "minutes": 5}, headers=mine)
    assert granted.status == 200
    assert (await granted.json())["user"]["break_glass_reason"] == "ED trauma"


@pytest.mark.asyncio
async def test_departments_are_given_at_add_and_assigned_or_removed_later(
    client: TestClient[web.Request, web.Application],
) -> None:
    answer = await client.post(
        "/v1/users",
        json={"name": "carol", "roles": ["radiology"], "departments": ["Radiology"], "who": "root"},
        headers=ADMIN,
    )
    assert answer.status == 201
    user = (await answer.json())["user"]
    assert user["departments"] == ["Radiology"]
    path = f"/v1/users/{user['id']}/departments"
    added = await client.post(path, json={"department": "Cardiology", "who": "root"}, headers=ADMIN)
    assert (await added.json())["user"]["departments"] == ["Cardiology", "Radiology"]
    removed = await client.post(
        path, json={"department": "Radiology", "assigned": False, "who": "root"}, headers=ADMIN
    )
    assert (await removed.json())["user"]["departments"] == ["Cardiology"]
    for body, words in (
        ({"department": "", "who": "root"}, "a department is 1..64 printable characters"),
        ({"department": 5, "who": "root"}, "department must be text"),
        ({"department": "x\x07", "who": "root"}, "a department is 1..64 printable characters"),
    ):
        refused = await client.post(path, json=body, headers=ADMIN)
        assert refused.status == 400 and words in (await refused.json())["message"], body
    bad_list = await client.post(
        "/v1/users",
        json={"name": "dan", "roles": ["radiology"], "departments": "x", "who": "r"},
        headers=ADMIN,
    )
    assert bad_list.status == 400 and (await bad_list.json())["field"] == "departments"
    listed = await client.get("/v1/users", headers=ADMIN)
    assert [u["name"] for u in (await listed.json())["users"]] == ["carol"]
    unauthorised = await client.post(path, json={"department": "Oncology", "who": "root"})
    assert unauthorised.status == 401


def test_a_department_the_facility_cannot_name_is_refused_with_a_hint(tmp_path: Path) -> None:
    from qlinkmed.qlinkd.errors import AccessError

    audit = AuditLog.open(tmp_path / "audit.jsonl", facility="hospital-b")
    config = AccessConfig(roles=(Role(name="radiology", kinds=(TransferKind.STUDY,)),))
    access = Access.open(tmp_path, config, audit, departments=("Radiology", "Cardiology"))
    try:
        with pytest.raises(AccessError) as caught:
            access.add("erin", ("radiology",), by="root", departments=("radiology",))
        assert caught.value.field == "departments"
        assert "(did you mean 'Radiology'?)" in caught.value.message
        assert access.store.count() == 0  # nothing added
        user, _ = access.add("erin", ("radiology",), by="root", departments=("Radiology",))
        with pytest.raises(AccessError) as caught:
            access.assign_department(user.id, "Oncology", assigned=True, by="root")
        assert "known: Radiology, Cardiology" in caught.value.message
        # Removing a name the rules no longer produce is allowed: the configuration may have changed.
        assert access.assign_department(user.id, "Oncology", assigned=False, by="root").departments == {
            "Radiology"
        }
    finally:
        access.close()
        audit.close()
