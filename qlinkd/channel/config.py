"""TOML configuration of the quantum-channel service (`qlink-channel --config FILE`), read with the same
strict reader as a facility's (`ops/toml_reader.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qlinkmed.qcore.channel import Eavesdropper, EveKind
from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qcore.constants import FACILITY_ID_PATTERN, is_facility_id
from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.ops import pki
from qlinkmed.qlinkd.ops.config import Backend, TlsConfig, tls_section
from qlinkmed.qlinkd.ops.toml_reader import Address, Table, build, check, read_toml

ADMIN_TOKEN_FILE = "admin-api.token"
"""The admin API's bearer token, in `state_dir` (mode 0600), written at the service's first start."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkConfig:
    """A link the channel carries: the two facilities at its ends, as their certificates name them."""

    a: str
    """One end's facility id (its certificate CN)."""
    b: str
    """The other end's facility id."""

    def __post_init__(self) -> None:
        for end in ("a", "b"):
            name = getattr(self, end)
            check(is_facility_id(name), end, f"must match {FACILITY_ID_PATTERN.pattern}, got {name!r}")
            check(name != pki.CHANNEL_NAME, end, f"{name!r} is the channel's own certificate name")
        check(self.a != self.b, "b", "a link joins two different facilities")

    @property
    def ends(self) -> frozenset[str]:
        return frozenset((self.a, self.b))


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelServiceConfig:
    """The quantum channel service (`qlink-channel --config FILE`)."""

    source: Path
    """The configuration file this was loaded from."""
    listen: Address
    """Where facilities connect (mutual TLS)."""
    admin: Address
    """Plain-HTTP eavesdropper admin API; must be a loopback address."""
    backend: Backend
    """Measurement backend: numpy or qiskit."""
    tls: TlsConfig
    """Mutual-TLS files."""
    fiber: ChannelModel
    """Fibre and detector model."""
    eve: Eavesdropper
    """Eavesdropper attached at start-up (kind none: no eavesdropper)."""
    state_dir: Path
    """Where the service keeps the admin API token (``admin-api.token``, 0600); created at start."""
    links: tuple[LinkConfig, ...]
    """The links the channel carries ([[link]] a, b). A hello is accepted only from a facility of one of
    them, under its own certificate's name, for one of its links: any other certificate of the CA (an
    SAE's, a made-up facility's) is refused."""
    hello_timeout_s: float = 10.0
    """A connection must finish its TLS handshake, then say hello, each within this many seconds."""
    idle_timeout_s: float = 300.0
    """A facility connection that sends no frame for this long is closed (the facility redials at once)."""
    connections_per_link: int = 2
    """Connections a facility may hold at once, per link it has here: the live one, and the redial that
    replaces it while the old one's network path has not yet reported it dead. Over it, refused."""

    def __post_init__(self) -> None:
        check(self.admin.is_loopback, "channel.admin", "plain HTTP must bind a loopback address")
        check(bool(self.links), "link", "name at least one [[link]] (a = FACILITY, b = FACILITY)")
        seen: set[frozenset[str]] = set()
        for i, link in enumerate(self.links):
            check(link.ends not in seen, f"link[{i}]", f"the link {link.a}--{link.b} is listed twice")
            seen.add(link.ends)
        check(0 < self.hello_timeout_s <= 300, "channel.hello_timeout_s", "must be in (0, 300] seconds")
        check(0 < self.idle_timeout_s <= 86_400, "channel.idle_timeout_s", "must be in (0, 86400] seconds")
        check(1 <= self.connections_per_link <= 64, "channel.connections_per_link", "must be in 1..64")

    @property
    def facilities(self) -> frozenset[str]:
        """Every facility some configured link names."""
        return frozenset(name for link in self.links for name in link.ends)

    def peers_of(self, facility: str) -> frozenset[str]:
        """The facilities `facility` has a configured link with (empty for a stranger)."""
        ends = (link.ends for link in self.links if facility in link.ends)
        return frozenset(name for pair in ends for name in pair if name != facility)

    @property
    def admin_token_path(self) -> Path:
        return self.state_dir / ADMIN_TOKEN_FILE

    def summary(self) -> str:
        return (
            f"channel service on {self.listen}, admin {self.admin}, backend {self.backend}, "
            f"{self.fiber.distance_km:g} km, eve {self.eve.kind}, "
            f"links {', '.join(f'{link.a}--{link.b}' for link in self.links)}"
        )


def load_channel_config(path: Path) -> ChannelServiceConfig:
    """Read and validate a channel service configuration file."""
    root = read_toml(path)
    channel = root.table("channel")
    listen = channel.address("listen")
    admin = channel.address("admin")
    backend = channel.choice("backend", Backend, tuple(Backend), "numpy")
    state_dir = channel.path("state_dir")
    hello_timeout_s = channel.number("hello_timeout_s", 10.0)
    idle_timeout_s = channel.number("idle_timeout_s", 300.0)
    connections_per_link = channel.integer("connections_per_link", 2)
    channel.finish()
    links = tuple(_link(section) for section in root.tables("link"))
    tls = tls_section(root)

    fiber_section = root.table("fiber", optional=True)
    defaults = ChannelModel(distance_km=10.0)
    fiber_fields = (
        "distance_km",
        "attenuation_db_per_km",
        "detector_efficiency",
        "dark_count",
        "afterpulse",
        "misalignment",
    )
    fiber = build(
        "fiber",
        ChannelModel,
        **{name: fiber_section.number(name, getattr(defaults, name)) for name in fiber_fields},
    )
    fiber_section.finish()

    eve_section = root.table("eve", optional=True)
    kind = eve_section.choice("kind", EveKind, tuple(EveKind), "none")
    fraction = eve_section.number("fraction", 1.0)
    try:
        eve = Eavesdropper(kind=kind, fraction=fraction)
    except ConfigError as exc:
        raise ConfigError(eve_section.name("fraction"), exc.message) from None
    eve_section.finish()
    root.finish()
    return build(
        "",
        ChannelServiceConfig,
        source=Path(path),
        listen=listen,
        admin=admin,
        backend=backend,
        tls=tls,
        fiber=fiber,
        eve=eve,
        state_dir=state_dir,
        links=links,
        hello_timeout_s=hello_timeout_s,
        idle_timeout_s=idle_timeout_s,
        connections_per_link=connections_per_link,
    )


def _link(section: Table) -> LinkConfig:
    link = build(section.where, LinkConfig, a=section.text("a"), b=section.text("b"))
    section.finish()
    return link
