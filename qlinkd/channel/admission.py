"""Who may use the channel, without I/O: the checks on a facility connection (the identity its certificate
names, its hello, how many connections that identity already holds). Each refusal raises ChannelRefused
with a reason label and a message the service logs, counts and sends to the refused party.

Any certificate of the deployment's CA passes TLS: a workstation SAE's, a facility of another link's. Only
a facility the configuration's links name may hold a connection, only under its own name, only for its
own links, and only a few connections at a time: so no certificate holder can fill the channel's link
slots with made-up peers and starve the honest links.
"""

from __future__ import annotations

from enum import StrEnum

from qlinkmed.qlinkd.channel.broker import LinkKey
from qlinkmed.qlinkd.channel.config import ChannelServiceConfig
from qlinkmed.qlinkd.errors import ChannelRefused
from qlinkmed.qlinkd.link import messages as lm

MAX_LINKS = 64
"""Links the channel serves at once, whatever the configuration says."""


class Refusal(StrEnum):
    """Why a connection was refused: the label of ``qlink_channel_refused_total{reason}``."""

    NOT_A_FACILITY = "not_a_facility"
    IMPERSONATION = "impersonation"
    UNKNOWN_LINK = "unknown_link"
    BAD_HELLO = "bad_hello"
    CONNECTION_LIMIT = "connection_limit"
    LINKS_FULL = "links_full"


def connection_limit(config: ChannelServiceConfig, facility: str) -> int:
    """How many connections `facility` may hold at once (0 for a certificate that names no facility)."""
    return config.connections_per_link * len(config.peers_of(facility))


def admit_identity(config: ChannelServiceConfig, who: str | None, held: int) -> str:
    """A connection's verified certificate names `who`, which already holds `held` connections: the
    facility it may speak for. Raises ChannelRefused."""
    if who is None or who not in config.facilities:
        raise ChannelRefused(
            Refusal.NOT_A_FACILITY,
            f"certificate {who!r} names no facility of this channel's links "
            f"({', '.join(sorted(config.facilities))})",
        )
    limit = connection_limit(config, who)
    if held >= limit:
        raise ChannelRefused(
            Refusal.CONNECTION_LIMIT,
            f"{who} already holds {held} connections to the channel (limit {limit}: "
            f"{config.connections_per_link} per configured link)",
        )
    return who


def expect_hello(message: object) -> lm.ChannelHello:
    """A connection's first message, which must be its hello. Raises ChannelRefused."""
    if not isinstance(message, lm.ChannelHello):
        raise ChannelRefused(Refusal.BAD_HELLO, f"expected channel_hello first, got {type(message).__name__}")
    return message


def admit_hello(config: ChannelServiceConfig, who: str, hello: lm.ChannelHello) -> LinkKey:
    """The link (and so the slot) the hello of `who` asks for. Raises ChannelRefused."""
    if hello.facility != who:
        raise ChannelRefused(
            Refusal.IMPERSONATION, f"certificate names {who!r}, hello claims {hello.facility!r}"
        )
    if hello.peer not in config.peers_of(who):
        raise ChannelRefused(
            Refusal.UNKNOWN_LINK, f"this channel carries no link {who}--{hello.peer} (see its [[link]] list)"
        )
    a, b = sorted((hello.facility, hello.peer))
    if (hello.role == "alice") != (hello.facility == a):
        raise ChannelRefused(
            Refusal.BAD_HELLO, f"{who} claims role {hello.role} on {a}--{b}; Alice is the first name"
        )
    return LinkKey(alice=a, bob=b)


def admit_link(link: LinkKey, connected: set[LinkKey]) -> None:
    """Whether `link` may join the links already `connected`. Raises ChannelRefused."""
    if link not in connected and len(connected) >= MAX_LINKS:
        raise ChannelRefused(
            Refusal.LINKS_FULL, f"refusing link {link}: {MAX_LINKS} links are already connected"
        )
