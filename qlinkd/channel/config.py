"""TOML configuration of the quantum-channel service (`qlink-channel --config FILE`), read with the same
strict reader as a facility's (`ops/toml_reader.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qlinkmed.qcore.channel import Eavesdropper, EveKind
from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.ops.config import Backend, TlsConfig, tls_section
from qlinkmed.qlinkd.ops.toml_reader import Address, build, check, read_toml


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

    def __post_init__(self) -> None:
        check(self.admin.is_loopback, "channel.admin", "plain HTTP must bind a loopback address")

    def summary(self) -> str:
        return (
            f"channel service on {self.listen}, admin {self.admin}, backend {self.backend}, "
            f"{self.fiber.distance_km:g} km, eve {self.eve.kind}"
        )



def load_channel_config(path: Path) -> ChannelServiceConfig:
    """Read and validate a channel service configuration file."""
    root = read_toml(path)
    channel = root.table("channel")
    listen = channel.address("listen")
    admin = channel.address("admin")
    backend = channel.choice("backend", Backend, tuple(Backend), "numpy")
    channel.finish()
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
    )
