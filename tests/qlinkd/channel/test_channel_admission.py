"""Who the channel admits, without sockets (admission.py), and the channel configuration's [[link]] list
and timeouts, each mistake naming its field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from qlinkmed.qlinkd.channel.admission import (
    MAX_LINKS,
    Refusal,
    admit_hello,
    admit_identity,
    admit_link,
    connection_limit,
    expect_hello,
)
from qlinkmed.qlinkd.channel.broker import LinkKey
from qlinkmed.qlinkd.channel.config import ChannelServiceConfig, load_channel_config
from qlinkmed.qlinkd.errors import ChannelRefused, ConfigError
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.testbed.deployment import write_loopback_deployment

A, B, C = "hospital-a", "hospital-b", "hospital-c"
EXTRA_LINK = f'\n[[link]]\na = "{C}"\nb = "{A}"\n'


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("channel")
    write_loopback_deployment(root)
    return root


@pytest.fixture(scope="module")
def config(root: Path) -> ChannelServiceConfig:
    """Links A--B and C--A."""
    path = root / "three.toml"
    path.write_text((root / "channel.toml").read_text() + EXTRA_LINK)
    return load_channel_config(path)


def _refusal(call: Callable[..., object], *args: object) -> ChannelRefused:
    with pytest.raises(ChannelRefused) as caught:
        call(*args)
    return caught.value


def _hello(facility: str, peer: str, role: str) -> lm.ChannelHello:
    return lm.ChannelHello(facility=facility, peer=peer, role=role, protocol="bb84")


@pytest.mark.parametrize("who", ["pacs-hospital-a", "channel", "hospital-z", None])
def test_a_certificate_that_names_no_configured_facility_is_refused(
    config: ChannelServiceConfig, who: str | None
) -> None:
    # Regression (issue 14, item 3): any certificate of the CA (an SAE's, say) could say hello as anyone.
    refused = _refusal(admit_identity, config, who, 0)
    assert refused.reason == Refusal.NOT_A_FACILITY
    assert f"certificate {who!r} names no facility" in refused.message


def test_each_facility_holds_two_connections_per_link(config: ChannelServiceConfig) -> None:
    assert config.connections_per_link == 2
    assert connection_limit(config, A) == 4  # A--B and C--A
    assert connection_limit(config, B) == 2
    assert admit_identity(config, B, 1) == B
    refused = _refusal(admit_identity, config, B, 2)
    assert refused.reason == Refusal.CONNECTION_LIMIT
    assert f"{B} already holds 2 connections" in refused.message


def test_a_hello_names_its_own_facility_and_a_configured_link(config: ChannelServiceConfig) -> None:
    assert admit_hello(config, A, _hello(A, B, "alice")) == LinkKey(alice=A, bob=B)
    assert admit_hello(config, A, _hello(A, C, "alice")) == LinkKey(alice=A, bob=C)
    assert admit_hello(config, C, _hello(C, A, "bob")) == LinkKey(alice=A, bob=C)

    refused = _refusal(admit_hello, config, B, _hello(A, B, "alice"))
    assert refused.reason == Refusal.IMPERSONATION
    assert refused.message == f"certificate names {B!r}, hello claims {A!r}"
    # B and C are both facilities of this channel, but no link joins them; nor any made-up peer.
    for peer in (C, "made-up-peer"):
        refused = _refusal(admit_hello, config, B, _hello(B, peer, "bob" if peer < B else "alice"))
        assert refused.reason == Refusal.UNKNOWN_LINK
        assert f"no link {B}--{peer}" in refused.message
    refused = _refusal(admit_hello, config, B, _hello(B, A, "alice"))
    assert refused.reason == Refusal.BAD_HELLO and "Alice is the first name" in refused.message
    refused = _refusal(expect_hello, lm.PulsesSent(count=3))
    assert refused.reason == Refusal.BAD_HELLO and "got PulsesSent" in refused.message


def test_the_global_link_limit_stays() -> None:
    connected = {LinkKey(alice=f"a{i}", bob=f"b{i}") for i in range(MAX_LINKS)}
    admit_link(next(iter(connected)), connected)  # a connected link may take a second party
    assert _refusal(admit_link, LinkKey(alice="x", bob="y"), connected).reason == Refusal.LINKS_FULL


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        # No [[link]] at all: the channel would admit nobody, so the file is refused instead.
        (f'[[link]]\na = "{A}"\nb = "{B}"\n', "", "link"),
        (f'b = "{B}"', f'b = "{A}"', "link[0].b"),
        (f'a = "{A}"', 'a = "Hospital A"', "link[0].a"),
        (f'a = "{A}"', 'a = "channel"', "link[0].a"),
        (f'b = "{B}"', f'b = "{B}"\nc = "{C}"', "link[0].c"),
        (f'b = "{B}"\n', f'b = "{B}"\n\n[[link]]\na = "{B}"\nb = "{A}"\n', "link[1]"),
        ("idle_timeout_s = 300.0", "idle_timeout_s = 0", "channel.idle_timeout_s"),
        ("connections_per_link = 2", "connections_per_link = 0", "channel.connections_per_link"),
        ("connections_per_link = 2", "connections_per_link = 2.5", "channel.connections_per_link"),
        ('backend = "numpy"', 'backend = "numpy"\nhello_timeout_s = -1', "channel.hello_timeout_s"),
        ('state_dir = "state/channel"\n', "", "channel.state_dir"),
    ],
)
def test_link_and_timeout_mistakes_name_the_field(root: Path, old: str, new: str, field: str) -> None:
    text = (root / "channel.toml").read_text()
    assert text.count(old) == 1, f"test setup: {old!r} must occur once"
    path = root / f"variant-{abs(hash((old, new)))}.toml"
    path.write_text(text.replace(old, new))
    with pytest.raises(ConfigError) as caught:
        load_channel_config(path)
    assert caught.value.field == field


def test_the_testbed_channel_names_its_link_and_state_dir(root: Path) -> None:
    config = load_channel_config(root / "channel.toml")
    assert config.facilities == {A, B}
    assert config.peers_of(A) == {B} and config.peers_of("pacs-hospital-a") == frozenset()
    assert config.admin_token_path == (root / "state" / "channel" / "admin-api.token").resolve()
    assert (config.hello_timeout_s, config.idle_timeout_s) == (10.0, 300.0)
    assert config.summary().endswith(f"links {A}--{B}")
