"""The channel service's eavesdropper admin API, served in-process: a refused request names its field."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from qlinkmed.qlinkd.channel.config import load_channel_config
from qlinkmed.qlinkd.channel.service import ChannelService
from qlinkmed.qlinkd.testbed.deployment import write_loopback_deployment


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
    write_loopback_deployment(tmp_path)
    service = ChannelService(load_channel_config(tmp_path / "channel.toml"))
    async with TestClient(TestServer(service.admin_app())) as client:
        response = await client.post("/v1/eve", json=body)
        assert response.status == 400
        assert answer in await response.text()
        status = await (await client.get("/v1/status")).json()
    assert status["eve"]["kind"] == "none"  # nothing was attached
