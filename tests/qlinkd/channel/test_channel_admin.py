"""The channel service's eavesdropper admin API, served in-process: a refused request names its field, and
only a caller holding the token, sending JSON, to the API's own address changes anything."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from qlinkmed.qlinkd.channel.admin import admin_app, ensure_token, host_allowed
from qlinkmed.qlinkd.channel.config import ADMIN_TOKEN_FILE, load_channel_config
from qlinkmed.qlinkd.channel.service import ChannelService
from qlinkmed.qlinkd.ops.toml_reader import Address
from qlinkmed.qlinkd.testbed.deployment import write_loopback_deployment

TOKEN = secrets.token_urlsafe(32)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ATTACK = {"kind": "intercept-resend", "fraction": 1.0}


def _service(tmp_path: Path) -> ChannelService:
    write_loopback_deployment(tmp_path)
    return ChannelService(load_channel_config(tmp_path / "channel.toml"))


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "answer"),
    [
        # Regression: ConfigError is also a ValueError, and the ValueError branch came first, so these two
        # were answered "kind must be one of ...".
        ({"kind": "intercept-resend", "fraction": 2.0}, "fraction: "),
        ({"kind": "none"}, "kind: use DELETE /v1/eve to detach"),
        ({"fraction": "all"}, "fraction: must be a number in [0, 1]"),
        ({"kind": "photon-sniffer"}, "kind must be one of intercept-resend, pns"),
    ],
)
async def test_a_refused_eavesdropper_names_its_field(
    tmp_path: Path, body: dict[str, object], answer: str
) -> None:
    service = _service(tmp_path)
    async with TestClient(TestServer(admin_app(service, TOKEN))) as client:
        response = await client.post("/v1/eve", json=body, headers=AUTH)
        assert response.status == 400
        assert answer in (await response.json())["message"]
        status = await (await client.get("/v1/status")).json()
    assert status["eve"]["kind"] == "none"  # nothing was attached


@pytest.mark.asyncio
async def test_state_changes_need_the_token_json_and_the_apis_own_host(tmp_path: Path) -> None:
    # Regression (issue 14, item 4): the API had no authentication and took a text/plain POST for any Host,
    # so any web page in a browser on the host (CSRF, DNS rebinding) could attach an eavesdropper.
    service = _service(tmp_path)
    async with TestClient(TestServer(admin_app(service, TOKEN))) as client:
        port = client.server.port
        assert port is not None
        refusals = [
            (client.post("/v1/eve", json=ATTACK), 401, "Authorization: Bearer"),
            (client.post("/v1/eve", json=ATTACK, headers={"Authorization": "Bearer wrong"}), 401, "token"),
            (client.delete("/v1/eve"), 401, "Authorization: Bearer"),
            # What a page's form or fetch without preflight sends: refused even with the token.
            (
                client.post("/v1/eve", data='{"kind": "intercept-resend"}', headers=AUTH),
                415,
                "application/json",
            ),
            (
                client.post(
                    "/v1/eve", data='{"kind": "pns"}', headers={**AUTH, "Content-Type": "text/plain"}
                ),
                415,
                "'text/plain'",
            ),
            # A rebound name reaches the loopback socket with its own Host: refused, reads included.
            (
                client.post("/v1/eve", json=ATTACK, headers={**AUTH, "Host": f"evil.example:{port}"}),
                421,
                "Host",
            ),
            (client.get("/v1/status", headers={"Host": f"evil.example:{port}"}), 421, "evil.example"),
            (client.get("/metrics", headers={"Host": f"127.0.0.1:{port + 1}"}), 421, "Host"),
        ]
        for request, status, named in refusals:
            response = await request
            assert response.status == status
            assert response.content_type == "application/json"
            assert named in (await response.json())["message"]
        assert (await (await client.get("/v1/status")).json())["eve"]["kind"] == "none"
        assert not service.broker.eve.active

        response = await client.post("/v1/eve", json=ATTACK, headers=AUTH)
        assert response.status == 200
        assert (await response.json())["eve"] == {"kind": "intercept-resend", "fraction": 1.0}
        response = await client.post("/v1/eve", json=ATTACK, headers={**AUTH, "Host": f"localhost:{port}"})
        assert response.status == 200
        response = await client.delete("/v1/eve", headers=AUTH)
        assert response.status == 200
        assert (await response.json())["eve"]["kind"] == "none"
        # Reads stay open (status and metrics hold no secret), and an unknown path is refused in JSON too.
        assert (await client.get("/metrics")).status == 200
        response = await client.get("/v1/nothing")
        assert response.status == 404 and "/v1/nothing" in (await response.json())["message"]


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:7109", True),
        ("localhost:7109", True),
        ("LOCALHOST:7109", True),
        ("[::1]:7109", True),
        ("127.0.0.1:7108", False),
        ("127.0.0.1", False),  # port 80 implied
        ("attacker.example:7109", False),
        ("127.0.0.1.attacker.example:7109", False),
        ("user@127.0.0.1:7109", False),
        ("127.0.0.1:7109/x", False),
        ("127.0.0.1:port", False),
        ("", False),
        (None, False),
    ],
)
def test_host_must_name_the_bound_address(host: str | None, allowed: bool) -> None:
    assert host_allowed(host, Address(host="127.0.0.1", port=7109), 7109) is allowed


def test_the_token_is_made_once_from_the_csprng_and_kept_private(tmp_path: Path) -> None:
    state = tmp_path / "state" / "channel"
    token = ensure_token(state)
    path = state / ADMIN_TOKEN_FILE
    assert len(token) >= 43  # 32 random bytes, URL-safe base64
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert ensure_token(state) == token == path.read_text().strip()
    assert ensure_token(tmp_path / "other") != token
