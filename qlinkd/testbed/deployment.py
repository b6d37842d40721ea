"""A complete loopback deployment in one directory: a demo CA and certificates, a pre-shared key, two
facility configurations and the channel configuration, optionally with every hospital gateway enabled.
What the tests, the benchmarks, `qlink testbed init` and `qlink demo` start from; the files are the same
TOML an operator writes by hand."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from qlinkmed.qlinkd.channel.config import load_channel_config
from qlinkmed.qlinkd.ops import entropy, pki
from qlinkmed.qlinkd.ops.config import Address, ConfigError, FacilityConfig, load_facility_config

PRESHARED_BYTES = 4096
"""Pre-shared authentication key: 85 rounds of Wegman-Carter keys before the first refill."""
GATEWAY_PORTS = ("dicom", "pacs", "mllp", "engine", "fhir", "fhir_server")
"""With gateways, the ports of each facility besides its daemon listeners ("<facility>.<name>"): its DICOM
SCP, MLLP listener and FHIR endpoint, and the three local destinations it forwards to, which the testbed's
user (or `qlink demo`) runs: a PACS, an interface engine and a FHIR server."""
PACS_DESTINATION, ENGINE_DESTINATION = "pacs", "engine"
FHIR_BASE_PATH = "/fhir"


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One link of the deployment that goes through a proxy port: `sender` dials `port`, where a WAN
    emulator proxy (run by `testbed run` or a benchmark, not a daemon) forwards to `target`, the
    receiver's real listener. The ports are written into the configurations, so they stay valid on disk."""

    sender: str
    """The facility that dials the link."""
    receiver: str
    """The facility whose listener the link reaches."""
    port: int
    """The proxy's port on 127.0.0.1, named in the sender's configuration."""
    target: int
    """The receiver's listener port on 127.0.0.1."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    root: Path
    """The directory holding everything."""
    channel: Path
    """The channel service's configuration."""
    facilities: dict[str, Path]
    """Facility id -> configuration file."""
    ports: dict[str, int]
    """Every port named in the configurations, by "<facility>.<listener>", "channel.listen|admin" and
    "wan.<route>" (a proxy port)."""
    saes: dict[str, tuple[str, ...]]
    """Facility id -> its SAE ids (certificates in pki/)."""
    routes: dict[str, Route] = field(default_factory=dict)
    """The links a WAN emulator proxy stands on, by link name ("classical", "data.<sender>"); empty when
    the facilities dial each other's listeners directly (see `wan_links`)."""

    def local_url(self, facility: str) -> str:
        return f"http://127.0.0.1:{self.ports[facility + '.local']}"

    def kme_url(self, facility: str) -> str:
        return f"https://127.0.0.1:{self.ports[facility + '.kme']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['channel.admin']}"

    def admin_headers(self) -> dict[str, str]:
        """What a state-changing admin call carries: the token the running channel service wrote."""
        token = load_channel_config(self.channel).admin_token_path.read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def pki(self, name: str) -> tuple[Path, Path]:
        return self.root / "pki" / f"{name}.pem", self.root / "pki" / f"{name}.key"


LISTEN_PORTS_FLOOR = 10_000
"""The lowest port `free_ports` hands out (below it lie the well-known and registered services)."""
_EPHEMERAL_FALLBACK = (32_768, 60_999)


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux's default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _EPHEMERAL_FALLBACK


def free_ports(count: int) -> list[int]:
    """Ports free a moment ago (held open together, so they are distinct), chosen below the kernel's
    ephemeral range. A port the kernel picks for a bind to port 0 comes from that range, and between
    handing it out and the daemon binding it, any outgoing connection on the host may be given it as its
    local port (seen in CI: a DICOM SCP failed with "Address already in use"). Below the range no
    outgoing connection takes it, for a test's seconds or a written testbed's lifetime."""
    low, _ = _ephemeral_range()
    top = max(low, LISTEN_PORTS_FLOOR + 1_000)
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                draw = int.from_bytes(entropy.random_bytes(4), "big") % (top - LISTEN_PORTS_FLOOR)
                s.bind(("127.0.0.1", LISTEN_PORTS_FLOOR + draw))
            except OSError:  # in use: draw another
                s.close()
                continue
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


READER_ROLE = "all-data"
"""The role every testbed facility defines for its readers (`testbed.readers`): every kind, every peer."""
DEFAULT_DEPARTMENT = "General"
"""The `[departments]` default of every testbed facility: what arrives there is listed with it. A test
adds `[[departments.rule]]` tables after it for departments of its own."""


def write_loopback_deployment(
    root: Path,
    *,
    facilities: tuple[str, str] = ("hospital-a", "hospital-b"),
    protocol: str = "bb84",
    pulses_per_round: int | None = None,
    low_watermark_bits: int = 2_000_000,
    high_watermark_bits: int = 8_000_000,
    distance_km: float = 10.0,
    misalignment: float = 0.005,
    afterpulse: float = 0.04,
    eve: str = "none",
    round_timeout_s: float | None = 10.0,
    rounds_in_flight: int | None = None,
    cascade: str | None = None,
    preshared_bytes: int = PRESHARED_BYTES,
    pq_hybrid: bool = False,
    eps_sec: float = 1e-10,
    eps_cor: float = 1e-10,
    channel_idle_timeout_s: float = 300.0,
    channel_connections_per_link: int = 2,
    wan_proxies: bool = False,
    gateways: bool = False,
    default_department: str | None = DEFAULT_DEPARTMENT,
) -> Deployment:
    """Write the deployment. With `wan_proxies`, Alice's peer address and each facility's data_address
    name a proxy port instead of the peer's listener (`Deployment.routes`): nothing connects until a
    `WanLinks` runs the proxies. With `gateways`, each facility runs a DICOM SCP, an MLLP listener and a
    FHIR endpoint routing to the other, and forwards what arrives to a PACS, an interface engine and a
    FHIR server on free loopback ports (`gateway_tables`, `endpoints`). `default_department`: the
    `[departments]` default (None: no `[departments]` table, for a caller that writes its own)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    a, b = facilities
    saes: dict[str, tuple[str, ...]] = {a: (f"pacs-{a}", f"ehr-{a}"), b: (f"pacs-{b}", f"ehr-{b}")}
    pki.write_demo_pki(root / "pki", list(facilities), [s for group in saes.values() for s in group])
    psk = root / "psk" / f"{a}--{b}.key"
    psk.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(psk, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(entropy.random_bytes(preshared_bytes))
    names = ["channel.listen", "channel.admin"] + [
        f"{f}.{x}" for f in facilities for x in ("classical", "kme", "local", "data")
    ]
    if gateways:
        names += [f"{f}.{x}" for f in facilities for x in GATEWAY_PORTS]
    # Alice (the smaller id, qlinkd.link.events) dials the classical link; each side dials its data link.
    alice, bob = sorted(facilities)
    route_ends = {"classical": (alice, bob, "classical")} | {
        f"data.{me}": (me, other, "data") for me, other in ((a, b), (b, a))
    }
    if wan_proxies:
        names += [f"wan.{name}" for name in route_ends]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    routes = {
        name: Route(
            sender=sender,
            receiver=receiver,
            port=ports[f"wan.{name}"],
            target=ports[f"{receiver}.{listener}"],
        )
        for name, (sender, receiver, listener) in route_ends.items()
        if wan_proxies
    }
    channel = root / "channel.toml"
    channel.write_text(
        f"""[channel]
listen = "127.0.0.1:{ports["channel.listen"]}"
admin = "127.0.0.1:{ports["channel.admin"]}"
backend = "numpy"
state_dir = "state/channel"
idle_timeout_s = {channel_idle_timeout_s}
connections_per_link = {channel_connections_per_link}

[tls]
ca = "pki/ca.pem"
cert = "pki/channel.pem"
key = "pki/channel.key"

[[link]]
a = "{a}"
b = "{b}"

[fiber]
distance_km = {distance_km}
misalignment = {misalignment}
afterpulse = {afterpulse}

[eve]
kind = "{eve}"
fraction = 1.0
"""
    )
    # Without a value the facility configuration's per-protocol default applies (E91 needs more pairs).
    pulses_line = "" if pulses_per_round is None else f"pulses_per_round = {pulses_per_round}\n"
    # None: the configuration's default, which grows with a decoy link's round size.
    timeout_line = "" if round_timeout_s is None else f"round_timeout_s = {round_timeout_s}\n"
    if rounds_in_flight is not None:
        timeout_line += f"rounds_in_flight = {rounds_in_flight}\n"
    if cascade is not None:
        timeout_line += f'cascade = "{cascade}"\n'
    # A decoy link's source is optimised for its fibre: the facilities are told the channel's length.
    if protocol == "bb84-decoy":
        pulses_line += f"fibre_km = {float(distance_km)!r}\n"
    departments = "" if default_department is None else f'[departments]\ndefault = "{default_department}"\n\n'
    configs = {}
    for me, other in ((a, b), (b, a)):
        classical = routes["classical"].port if wan_proxies and me == alice else ports[other + ".classical"]
        data = routes[f"data.{me}"].port if wan_proxies else ports[other + ".data"]
        path = root / f"{me}.toml"
        path.write_text(
            f"""[facility]
id = "{me}"
state_dir = "state/{me}"
saes = [{", ".join(f'"{s}"' for s in saes[me])}]

[tls]
ca = "pki/ca.pem"
cert = "pki/{me}.pem"
key = "pki/{me}.key"

[listen]
classical = "127.0.0.1:{ports[me + ".classical"]}"
kme = "127.0.0.1:{ports[me + ".kme"]}"
local = "127.0.0.1:{ports[me + ".local"]}"
data = "127.0.0.1:{ports[me + ".data"]}"

[channel]
address = "127.0.0.1:{ports["channel.listen"]}"

[access]
break_glass_min_s = 1

[[access.role]]
name = "{READER_ROLE}"
kinds = ["study", "images", "ehr"]

{departments}[[peer]]
id = "{other}"
address = "127.0.0.1:{classical}"
data_address = "127.0.0.1:{data}"
saes = [{", ".join(f'"{s}"' for s in saes[other])}]
preshared_key = "psk/{a}--{b}.key"
protocol = "{protocol}"
{pulses_line}low_watermark_bits = {low_watermark_bits}
high_watermark_bits = {high_watermark_bits}
{timeout_line}pq_hybrid = {"true" if pq_hybrid else "false"}
eps_sec = {eps_sec!r}
eps_cor = {eps_cor!r}
"""
            + (gateway_tables(me, other, ports) if gateways else "")
        )
        configs[me] = path
    return Deployment(root=root, channel=channel, facilities=configs, ports=ports, saes=saes, routes=routes)


def ae_suffix(facility: str) -> str:
    """A facility id as it appears in the testbed's AE titles: "hospital-b" -> "HOSPITAL_B"."""
    return facility.upper().replace("-", "_")


def scp_ae_title(facility: str) -> str:
    """The AE title of `facility`'s gateway (its calling title towards its PACS)."""
    return f"QLINK_{ae_suffix(facility)}"[:16]


def route_ae_title(peer: str) -> str:
    """The AE title a modality calls at the other facility's SCP to send to `peer`."""
    return f"TO_{ae_suffix(peer)}"[:16]


def pacs_ae_title(facility: str) -> str:
    """The AE title of the PACS `facility` forwards arrived studies to."""
    return f"PACS_{ae_suffix(facility)}"[:16]


def fhir_token_name(facility: str) -> str:
    """The FHIR endpoint's bearer-token file (made by the daemon on its first start), in the root."""
    return f"fhir-{facility}.token"


def gateway_tables(me: str, other: str, ports: dict[str, int]) -> str:
    """The `[gateway.*]` tables of facility `me` in a two-facility loopback deployment: every association
    calling `route_ae_title(other)`, every HL7 message and every FHIR POST under `/fhir/<other>` goes to
    `other`; what arrives from `other` goes to the local PACS, interface engine and FHIR server."""
    port = {name: ports[f"{me}.{name}"] for name in GATEWAY_PORTS}
    return f"""
[gateway.dicom]
ae_title = "{scp_ae_title(me)}"
listen = "127.0.0.1:{port["dicom"]}"
quiet_s = 5

[[gateway.dicom.route]]
called_ae = "{route_ae_title(other)}"
peer = "{other}"

[[gateway.dicom.destination]]
name = "{PACS_DESTINATION}"
ae_title = "{pacs_ae_title(me)}"
address = "127.0.0.1:{port["pacs"]}"

[gateway.mllp]
listen = "127.0.0.1:{port["mllp"]}"

[[gateway.mllp.route]]
peer = "{other}"

[[gateway.mllp.destination]]
name = "{ENGINE_DESTINATION}"
address = "127.0.0.1:{port["engine"]}"
ack_timeout_s = 10

[gateway.fhir]
listen = "127.0.0.1:{port["fhir"]}"
base_path = "{FHIR_BASE_PATH}"
token_file = "{fhir_token_name(me)}"

[[gateway.fhir.destination]]
base_url = "http://127.0.0.1:{port["fhir_server"]}{FHIR_BASE_PATH}"
"""


def _gateway_ports(config: FacilityConfig) -> dict[str, int]:
    """The GATEWAY_PORTS a facility configuration names (those it has), by name."""
    gateways = config.gateways
    found: dict[str, int] = {}
    if gateways.dicom is not None:
        found["dicom"] = gateways.dicom.listen.port
        for pacs in gateways.dicom.destinations:
            if pacs.name == PACS_DESTINATION:
                found["pacs"] = pacs.address.port
    if gateways.mllp is not None:
        if gateways.mllp.listen is not None:
            found["mllp"] = gateways.mllp.listen.port
        for engine in gateways.mllp.destinations:
            if engine.name == ENGINE_DESTINATION:
                found["engine"] = engine.address.port
    if gateways.fhir is not None:
        found["fhir"] = gateways.fhir.listen.port
        for destination in gateways.fhir.destinations[:1]:
            server = urlsplit(destination.base_url).port
            if server is not None:
                found["fhir_server"] = server
    return found


def _address(address: Address) -> dict[str, Any]:
    return {"host": address.host, "port": address.port}


def facility_endpoints(config: FacilityConfig) -> dict[str, Any]:
    """Every endpoint of one facility, from its configuration, for scripts (`qlink testbed endpoints`):
    the daemon's listeners and URLs, and each gateway with the destinations it forwards to (None for a
    gateway the facility does not run)."""
    listen = config.listen
    local = f"http://{listen.local}"
    result: dict[str, Any] = {
        "config": str(config.source),
        "state_dir": str(config.state_dir),
        "local_api": local,
        "metrics": f"{local}/metrics",
        "kme": f"https://{listen.kme}",
        "classical": _address(listen.classical),
        "data": None if listen.data is None else _address(listen.data),
        "peers": [peer.id for peer in config.peers],
        "dicom": None,
        "mllp": None,
        "fhir": None,
    }
    gateways = config.gateways
    if gateways.dicom is not None:
        dicom = gateways.dicom
        result["dicom"] = {
            "ae_title": dicom.ae_title,
            "scp": _address(dicom.listen),
            "routes": [
                {"called_ae": r.called_ae, "calling_ae": r.calling_ae, "peer": r.peer} for r in dicom.routes
            ],
            "destinations": [
                {"name": d.name, "ae_title": d.ae_title, **_address(d.address), "tls": d.tls}
                for d in dicom.destinations
            ],
        }
    if gateways.mllp is not None:
        mllp = gateways.mllp
        result["mllp"] = {
            "listen": None if mllp.listen is None else _address(mllp.listen),
            "routes": [
                {
                    "peer": r.peer,
                    "receiving_application": r.receiving_application,
                    "receiving_facility": r.receiving_facility,
                }
                for r in mllp.routes
            ],
            "destinations": [
                {"name": d.name, **_address(d.address), "ack_timeout_s": d.ack_timeout_s}
                for d in mllp.destinations
            ],
        }
    if gateways.fhir is not None:
        fhir = gateways.fhir
        scheme = "https" if fhir.tls_cert is not None else "http"
        result["fhir"] = {
            "listen": _address(fhir.listen),
            "base_urls": {
                peer: f"{scheme}://{fhir.listen}{fhir.base_path}/{peer}" for peer in result["peers"]
            },
            "token_file": None if fhir.token_file is None else str(fhir.token_file),
            "destinations": [{"base_url": d.base_url} for d in fhir.destinations],
        }
    return result


def endpoints(deployment: Deployment) -> dict[str, Any]:
    """Every endpoint of the deployment (JSON-ready), read from its configuration files."""
    channel = load_channel_config(deployment.channel)
    return {
        "root": str(deployment.root),
        "channel": {
            "config": str(deployment.channel),
            "listen": _address(channel.listen),
            "admin": f"http://{channel.admin}",
        },
        "facilities": {
            name: facility_endpoints(load_facility_config(path))
            for name, path in deployment.facilities.items()
        },
    }


def read_deployment(root: Path) -> Deployment:
    """The Deployment that `testbed init` wrote to `root`, read back from its configuration files: a peer
    address that is none of the peer's listeners is a proxy port (`Deployment.routes`).
    Raises ConfigError (qlinkd.config) when a file is missing or invalid."""
    channel_path = root / "channel.toml"
    channel = load_channel_config(channel_path)
    facilities: dict[str, Path] = {}
    saes: dict[str, tuple[str, ...]] = {}
    ports = {"channel.listen": channel.listen.port, "channel.admin": channel.admin.port}
    dialled: list[tuple[str, str, str, Address]] = []
    for path in sorted(root.glob("*.toml")):
        if path.name == channel_path.name:
            continue
        config = load_facility_config(path)
        facilities[config.id] = path
        saes[config.id] = config.saes
        for listener in ("classical", "kme", "local", "data"):
            address = getattr(config.listen, listener)
            if address is not None:
                ports[f"{config.id}.{listener}"] = address.port
        ports |= {f"{config.id}.{name}": port for name, port in _gateway_ports(config).items()}
        for peer in config.peers:
            dialled.append((config.id, peer.id, "classical", peer.address))
            if peer.data_address is not None:
                dialled.append((config.id, peer.id, "data", peer.data_address))
    if not facilities:
        raise ConfigError(str(root), "no facility configuration (*.toml besides channel.toml)")
    listeners = set(ports.values())
    routes: dict[str, Route] = {}
    for sender, receiver, listener, address in dialled:
        target = ports.get(f"{receiver}.{listener}")
        # A peer address that is one of the deployment's listeners is dialled directly (Bob's names
        # Alice's classical listener, which he never dials).
        if target is None or address.port in listeners:
            continue
        name = "classical" if listener == "classical" else f"data.{sender}"
        routes[name] = Route(sender=sender, receiver=receiver, port=address.port, target=target)
        ports[f"wan.{name}"] = address.port
    return Deployment(
        root=root, channel=channel_path, facilities=facilities, ports=ports, saes=saes, routes=routes
    )
