"""The `[gateway.mllp]` table of a facility's configuration: where the HL7 v2 listener binds, how large a
message and how long a silent connection may be, which peer facility each message goes to (by MSH-5 and
MSH-6), and the interface engine(s) that messages arriving here are forwarded to.

    [gateway.mllp]
    listen = "127.0.0.1:2575"
    max_message_bytes = 1048576
    idle_timeout_s = 300
    max_connections = 32

    [[gateway.mllp.route]]          # first match wins; an empty or missing field matches anything
    peer = "hospital-b"
    receiving_application = "LAB"
    receiving_facility = "HOSP_B"

    [[gateway.mllp.destination]]    # every HL7 message arriving here goes to each destination
    name = "engine"
    address = "10.0.0.5:2575"
    ack_timeout_s = 30
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.ops.toml_reader import Address, Table, build, check

DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
MAX_MESSAGE_BYTES_LIMIT = 64 << 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True, kw_only=True)
class MllpRoute:
    peer: str
    """The peer facility a matching message is sent to (one of the configuration's [[peer]] ids)."""
    receiving_application: str = ""
    """Matches MSH-5's first component (namespace ID) exactly; empty matches any."""
    receiving_facility: str = ""
    """Matches MSH-6's first component exactly; empty matches any."""

    def matches(self, application: str, facility: str) -> bool:
        return (not self.receiving_application or self.receiving_application == application) and (
            not self.receiving_facility or self.receiving_facility == facility
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MllpDestination:
    name: str
    """How the ledger, status, audit and logs name it (letters, digits, '.', '_', '-')."""
    address: Address
    """The interface engine's MLLP listener."""
    ack_timeout_s: float = 30.0
    """How long to wait for its ACK before the attempt counts as failed (retried with backoff)."""

    def __post_init__(self) -> None:
        check(bool(_NAME.fullmatch(self.name)), "name", "must be 1-64 letters, digits, '.', '_' or '-'")
        check(0 < self.ack_timeout_s <= 3600, "ack_timeout_s", "must be in (0, 3600] seconds")


@dataclass(frozen=True, slots=True, kw_only=True)
class MllpConfig:
    listen: Address | None = None
    """Where the HL7 v2 listener binds (None: this facility only forwards what arrives)."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """A larger frame is answered AR and dropped (its bytes are never held beyond this bound)."""
    idle_timeout_s: float = 300.0
    """A connection silent this long (or stalled inside a frame) is closed."""
    max_connections: int = 32
    """Connections served at once; one more is closed at once (each may hold max_message_bytes)."""
    routes: tuple[MllpRoute, ...] = ()
    """Which peer a message goes to, by MSH-5 / MSH-6; first match wins."""
    destinations: tuple[MllpDestination, ...] = ()
    """The interface engines HL7 messages arriving here are forwarded to."""

    def __post_init__(self) -> None:
        check(
            1024 <= self.max_message_bytes <= MAX_MESSAGE_BYTES_LIMIT,
            "max_message_bytes",
            f"must be in [1024, {MAX_MESSAGE_BYTES_LIMIT}]",
        )
        check(
            math.isfinite(self.idle_timeout_s) and 1 <= self.idle_timeout_s <= 86_400,
            "idle_timeout_s",
            "must be in [1, 86400] seconds",
        )
        check(1 <= self.max_connections <= 4096, "max_connections", "must be in [1, 4096]")
        names = [d.name for d in self.destinations]
        for i, name in enumerate(names):
            check(name not in names[:i], f"destination[{i}].name", f"{name!r} is named twice")

    def route(self, application: str, facility: str) -> MllpRoute | None:
        for route in self.routes:
            if route.matches(application, facility):
                return route
        return None


def mllp_section(gateway: Table, peers: tuple[str, ...]) -> MllpConfig | None:
    """Read `[gateway.mllp]` from the `[gateway]` table (None if absent); ConfigError naming the field."""
    if not gateway.has("mllp"):
        return None
    section = gateway.table("mllp")
    routes = []
    for table in section.tables("route"):
        route = build(
            table.where,
            MllpRoute,
            peer=table.text("peer"),
            receiving_application=table.text("receiving_application", ""),
            receiving_facility=table.text("receiving_facility", ""),
        )
        check(route.peer in peers, table.name("peer"), f"is no [[peer]] of this facility ({sorted(peers)})")
        table.finish()
        routes.append(route)
    destinations = []
    for table in section.tables("destination"):
        destinations.append(
            build(
                table.where,
                MllpDestination,
                name=table.text("name"),
                address=table.address("address"),
                ack_timeout_s=table.number("ack_timeout_s", 30.0),
            )
        )
        table.finish()
    listen = section.optional_address("listen")
    if listen is not None and not routes:
        raise ConfigError(section.name("route"), "a listener needs at least one [[gateway.mllp.route]]")
    config = build(
        section.where,
        MllpConfig,
        listen=listen,
        max_message_bytes=section.integer("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES),
        idle_timeout_s=section.number("idle_timeout_s", 300.0),
        max_connections=section.integer("max_connections", 32),
        routes=tuple(routes),
        destinations=tuple(destinations),
    )
    section.finish()
    return config
