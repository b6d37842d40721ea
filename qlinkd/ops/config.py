"""TOML configuration of a facility daemon (`qlinkd`), and the sections the channel service's
configuration (`channel/config.py`) shares with it.

Loading is strict (`ops/toml_reader.py`): a missing field, a wrong type, an unknown key (a typo must not
silently fall back to a default), an out-of-range value or an unreadable referenced file raises
`ConfigError` naming the dotted field path. Relative paths are resolved against the directory of the
configuration file. Loading has no side effects: the daemon creates `state_dir` when it starts.
"""

from __future__ import annotations

import math
import re
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from qlinkmed.qcore.constants import FACILITY_ID_PATTERN, QBER_TOLERANCE, is_facility_id
from qlinkmed.qcore.params import CascadeKind, DistillConfig, E91Security, ProtocolKind
from qlinkmed.qcore.security import DEFAULT_EPS_COR, DEFAULT_EPS_SEC
from qlinkmed.qlinkd.access.config import AccessConfig, access_section
from qlinkmed.qlinkd.access.departments import DepartmentRules
from qlinkmed.qlinkd.access.gate_config import GateConfig, gate_section
from qlinkmed.qlinkd.errors import ConfigError, PkiError
from qlinkmed.qlinkd.gateways.config import GatewaysConfig, gateways_section
from qlinkmed.qlinkd.link.events import MAX_ROUNDS_IN_FLIGHT
from qlinkmed.qlinkd.ops.decoy_source import DecoyOverrides, DecoyPlan, plan_decoy
from qlinkmed.qlinkd.ops.departments_config import check_role_departments, departments_section
from qlinkmed.qlinkd.ops.inbox_config import InboxConfig, inbox_section
from qlinkmed.qlinkd.ops.toml_reader import Address, Table, build, check, read_toml

EXIT_OK, EXIT_USAGE = 0, 2
MIN_PRESHARED_BYTES = 512
# SAE IDs are certificate common names and file names of `qlink ca init`.
_SAE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
DEFAULT_KEY_EXPIRY_S = 86_400.0
MAX_KEY_EXPIRY_S = 365 * 86_400.0


class Backend(StrEnum):
    """Where the channel service measures qubits (qcore.backends)."""

    NUMPY = "numpy"
    QISKIT = "qiskit"


# --------------------------------------------------------------------------- facility configuration


DEFAULT_PULSES_PER_ROUND = {ProtocolKind.BB84: 20_000_000, ProtocolKind.E91: 20_000_000}
"""Pulses (BB84) or pairs (E91) per round when a peer names none. BB84 keys most per CPU second at about
2e7 pulses (10 km: ~280,000 bits a round; the finite-key length grows with the block and each round's
fixed costs are shared by more bits: docs/benchmarks.md). E91 needs about 2e7 pairs with the
default 10 %-efficient detectors: only coincidences count, a fifth of them go to the CHSH witness, and
fewer leave the BBM92 finite-key length or the CHSH lower bound empty. A bb84-decoy link's default
depends on its fibre (``decoy_source.plan_decoy``)."""
BB84_DECOY = "bb84-decoy"
"""The ``protocol`` value of a BB84 link with a weak-coherent-pulse source and decoy states."""
PROTOCOL_NAMES = ("bb84", BB84_DECOY, "e91")
DEFAULT_ROUND_TIMEOUT_S = 10.0
DECOY_TIMEOUT_S_PER_PULSE = 60.0 / 100_000_000
"""A bb84-decoy round's default timeout grows with its size: a 1e8-pulse round moves ~250 MB of
per-pulse arrays through both daemons and the channel service (docs/benchmarks.md)."""


DEFAULT_ROUNDS_IN_FLIGHT = 32
"""The default window, the most the protocol allows: enough 2e7-pulse rounds (~70 round trips each) to
keep both cores busy over a 50 ms round trip (docs/benchmarks.md). A link grows to it as rounds commit
(``LinkConnection.window``). Only two rounds at a time hold per-pulse arrays
(``machine.ROUNDS_BEFORE_SIFTING``); the others hold their raw key and Cascade's tables, about 35 MB a
round at Bob for 460,000 raw bits, so a full window peaks near 1.6 GB at Bob. A smaller window trades
key rate over a long link for memory."""


def default_round_timeout_s(pulses_per_round: int, decoy: bool) -> float:
    """A round's default timeout: 10 s, and for a decoy link 10 s more per 1.7e7 pulses."""
    extra = pulses_per_round * DECOY_TIMEOUT_S_PER_PULSE if decoy else 0.0
    return DEFAULT_ROUND_TIMEOUT_S + extra


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """Mutual-TLS files, all issued by one CA (`qlink ca init`)."""

    ca: Path
    """CA certificate that every peer, SAE and channel-service certificate must chain to."""
    cert: Path
    """This service's certificate (PEM); its subject CN is our identity."""
    key: Path
    """Private key for `cert` (PEM, mode 0600)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenConfig:
    """Where the facility daemon listens."""

    classical: Address
    """Peer links: aiohttp websocket over mutual TLS."""
    kme: Address
    """ETSI GS QKD 014 key delivery API for the SAEs (mutual TLS)."""
    local: Address
    """Plain-HTTP local API for the qlink CLI and /metrics; must be a loopback address."""
    data: Address | None = None
    """Data plane: studies and EHR messages from peers (mutual TLS). None: this facility receives none."""

    def __post_init__(self) -> None:
        check(self.local.is_loopback, "local", "plain HTTP must bind a loopback address")


@dataclass(frozen=True, slots=True, kw_only=True)
class KmeConfig:
    """Key sizes served through ETSI GS QKD 014, in bits."""

    key_size: int = 256
    """Size of a key when the SAE does not ask for one."""
    min_key_size: int = 64
    """Smallest key size an SAE may request."""
    max_key_size: int = 4096
    """Largest key size an SAE may request."""
    max_key_per_request: int = 128
    """Most keys one enc_keys request may return."""
    key_expiry_s: float = DEFAULT_KEY_EXPIRY_S
    """Key lifetime: a key handed to a master SAE whose copy at the slave's end is not fetched within this
    many seconds of arriving there is deleted (securely, audited, counted), in 1..31536000."""

    def __post_init__(self) -> None:
        for name in ("key_size", "min_key_size", "max_key_size"):
            value = getattr(self, name)
            check(8 <= value <= 1 << 20 and value % 8 == 0, name, "must be a multiple of 8 in 8..1048576")
        check(self.min_key_size <= self.max_key_size, "min_key_size", "must be <= max_key_size")
        check(
            self.min_key_size <= self.key_size <= self.max_key_size,
            "key_size",
            "must be within [min_key_size, max_key_size]",
        )
        check(1 <= self.max_key_per_request <= 10_000, "max_key_per_request", "must be in 1..10000")
        check(
            math.isfinite(self.key_expiry_s) and 1.0 <= self.key_expiry_s <= MAX_KEY_EXPIRY_S,
            "key_expiry_s",
            f"must be a number of seconds in 1..{MAX_KEY_EXPIRY_S:.0f} (the default is one day, 86400)",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """``[metrics]``: /metrics served over HTTPS on its own address for a remote Prometheus, nothing else."""

    listen: Address
    """Where to serve it, e.g. ``0.0.0.0:9464`` (any address: it is TLS)."""
    tls_cert: Path
    """The site's certificate (PEM); Prometheus checks it against its ``tls_config.ca_file``."""
    tls_key: Path
    """Private key for `tls_cert` (PEM, mode 0600)."""
    client_ca: Path | None = None
    """When set, only clients with a certificate issued by this CA may scrape (mutual TLS)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentConfig:
    """Size limits of the content qlink carries, and the worker processes that check it ([content]). The
    defaults are those of `content.limits.ContentLimits` and `content.worker` (not imported here: that
    would load every validator to read a configuration file)."""

    max_file_bytes: int = 512 << 20
    """Largest DICOM, PNG or JPEG file the daemon accepts (and the client uploads)."""
    max_ehr_bytes: int = 8 << 20
    """Largest FHIR JSON or HL7 v2 message, at most 8 MiB."""
    max_decoded_bytes: int = 512 << 20
    """Most bytes validation decodes one file to (an inflated deflated DICOM data set, PNG/JPEG pixels)."""
    validators: int = 1
    """Worker processes that validate content, 1..16."""
    validator_memory_bytes: int = 2048 << 20
    """Address space one validation may use beyond its worker's own (0: unbounded)."""

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_ehr_bytes", "max_decoded_bytes"):
            check(getattr(self, name) >= 1, name, "must be a positive number of bytes")
        check(self.max_ehr_bytes <= 8 << 20, "max_ehr_bytes", "must be at most 8388608 (8 MiB)")
        check(1 <= self.validators <= 16, "validators", "must be in 1..16")
        check(
            self.validator_memory_bytes == 0 or self.validator_memory_bytes >= 64 << 20,
            "validator_memory_bytes",
            "must be 0 (unbounded) or at least 67108864 (64 MiB)",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerConfig:
    """One QKD link to another facility."""

    id: str
    """The peer's facility id; its certificate CN must equal it."""
    address: Address
    """The peer's classical listener."""
    data_address: Address | None = None
    """The peer's data-plane listener. None: nothing can be sent to this peer."""
    saes: tuple[str, ...] = ()
    """SAE IDs served by the peer's KME (the slaves our SAEs may request keys for)."""
    preshared_key_path: Path
    """File holding the initial authentication key, identical at both ends."""
    preshared: bytes = field(repr=False)
    """Contents of `preshared_key_path` (>= 512 bytes), read at load; never printed."""
    protocol: ProtocolKind = ProtocolKind.BB84
    """bb84 or e91 (a bb84-decoy link is BB84 with ``decoy`` set)."""
    decoy: DecoyPlan | None = None
    """A bb84-decoy link's source, round size and expected key (``decoy_source.plan_decoy``); None for
    a single-photon BB84 or an E91 link."""
    fibre_km: float | None = None
    """The fibre length the deployer measured (bb84-decoy: the optimiser's input); None if not given."""
    pulses_per_round: int = 1_000_000
    """Pulses (BB84) or pairs (E91) per distillation round, 1e4..2e8."""
    low_watermark_bits: int = 2_000_000
    """Resume rounds when the key pool falls below this many bits."""
    high_watermark_bits: int = 8_000_000
    """Pause rounds when the key pool holds at least this many bits (> low_watermark_bits)."""
    round_timeout_s: float = 10.0
    """Abort a round that has not finished after this many seconds."""
    cascade: CascadeKind = CascadeKind.FEW_ROUND_TRIPS
    """Cascade's schedule: few-round-trips (default: ~70 round trips a round instead of ~120, for ~1 %
    less key) or low-latency. Both ends must say the same."""
    rounds_in_flight: int = DEFAULT_ROUNDS_IN_FLIGHT
    """Rounds kept open at once (their round trips overlap on a long link), 1..32; both ends must say the
    same."""
    qber_tolerance: float = QBER_TOLERANCE
    """Abort a round whose observed QBER exceeds this, in (0, 0.5); the finite-size deviation shortens the
    key instead."""
    sample_fraction: float = 0.3
    """Share of key candidates disclosed to estimate the QBER, in (0, 1)."""
    e91_security: E91Security = E91Security.BBM92
    """E91 key length: bbm92 (finite key on the conjugate key bases, CHSH as the witness) or
    device-independent (the Acin rate, which assumes fair sampling of the lossy detectors' coincidences).
    Both ends must say the same; ignored for BB84."""
    eps_sec: float = DEFAULT_EPS_SEC
    """Secrecy parameter of every round's finite-key length, in (0, 1). The deployer's choice; the link's
    rounds are (eps_sec + eps_cor)-secure. Both ends must configure the same value."""
    eps_cor: float = DEFAULT_EPS_COR
    """Correctness parameter, in (0, 1): the verification hash has ceil(log2(1/eps_cor)) bits. Both ends
    must configure the same value."""
    pq_hybrid: bool = False
    """Mix an ML-KEM-768 shared secret into every data-plane traffic key with this peer, so a session stays
    secret if either the QKD key or ML-KEM holds. The peer's configuration must say the same of us: a
    session whose two ends disagree is refused, never downgraded."""

    def __post_init__(self) -> None:
        check(is_facility_id(self.id), "id", f"must match {FACILITY_ID_PATTERN.pattern}")
        check(
            len(self.preshared) >= MIN_PRESHARED_BYTES,
            "preshared_key",
            f"must hold at least {MIN_PRESHARED_BYTES} bytes, the file has {len(self.preshared)}",
        )
        check(10_000 <= self.pulses_per_round <= 200_000_000, "pulses_per_round", "must be in 1e4..2e8")
        check(self.low_watermark_bits >= 0, "low_watermark_bits", "must be >= 0")
        check(
            self.high_watermark_bits > self.low_watermark_bits,
            "high_watermark_bits",
            "must be greater than low_watermark_bits",
        )
        check(
            math.isfinite(self.round_timeout_s) and 0.0 < self.round_timeout_s <= 3600.0,
            "round_timeout_s",
            "must be in (0, 3600]",
        )
        check(
            1 <= self.rounds_in_flight <= MAX_ROUNDS_IN_FLIGHT,
            "rounds_in_flight",
            f"must be in 1..{MAX_ROUNDS_IN_FLIGHT}",
        )
        check(0.0 < self.qber_tolerance < 0.5, "qber_tolerance", "must be in (0, 0.5)")
        check(0.0 < self.sample_fraction < 1.0, "sample_fraction", "must be in (0, 1)")
        for name in ("eps_sec", "eps_cor"):
            value = getattr(self, name)
            check(0.0 < value < 1.0, name, f"must be in (0, 1) (the default is 1e-10), got {value:g}")
        check(
            self.decoy is None or self.protocol is ProtocolKind.BB84,
            "protocol",
            "decoy states apply to BB84 only",
        )
        check(
            self.decoy is None or self.decoy.pulses_per_round == self.pulses_per_round,
            "pulses_per_round",
            "differs from the decoy plan's round size",
        )

    @property
    def protocol_name(self) -> str:
        """What the configuration says: bb84, bb84-decoy or e91."""
        return BB84_DECOY if self.decoy is not None else self.protocol.value

    def distill_config(self) -> DistillConfig:
        """The qcore round policy for this link."""
        return DistillConfig(
            protocol=self.protocol,
            decoy=None if self.decoy is None else self.decoy.source,
            sample_fraction=self.sample_fraction,
            qber_tolerance=self.qber_tolerance,
            e91_security=self.e91_security,
            eps_sec=self.eps_sec,
            eps_cor=self.eps_cor,
            cascade=self.cascade,
        )


KEY_SOURCES = ("emulated", "etsi014")
"""``[[peer]] key_source``: this daemon's own emulated QKD link (the default), or an external ETSI GS QKD
014 KME such as real QKD hardware."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Etsi014Config:
    """An external ETSI GS QKD 014 KME that keys the data plane with one peer (``[peer.etsi014]``)."""

    kme_url: str
    """Our KME's base URL, ``https://host:port`` (an optional path prefix before ``/api/v1/keys``)."""
    sae_id: str
    """This facility's data-plane SAE ID at that KME (master when we send, slave when we receive)."""
    peer_sae_id: str
    """The peer facility's data-plane SAE ID at the peer's KME."""
    client_cert: Path
    """The SAE's client certificate (PEM) that the KME identifies us by."""
    client_key: Path
    """Private key of `client_cert` (PEM, mode 0600)."""
    ca: Path
    """The CA certificate that signs the KME's server certificate (its host name is checked too)."""

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.kme_url)
        check(parts.scheme == "https", "kme_url", f"must be an https:// URL, got {self.kme_url!r}")
        check(bool(parts.hostname), "kme_url", "names no host")
        try:
            port = parts.port
        except ValueError:
            port = -1
        check(port != -1, "kme_url", "has an invalid port")
        check(
            not (parts.username or parts.password or parts.query or parts.fragment),
            "kme_url",
            "must not carry user information, a query or a fragment",
        )
        for name in ("sae_id", "peer_sae_id"):
            check(
                bool(_SAE_ID.fullmatch(getattr(self, name))),
                name,
                "must match [A-Za-z0-9][A-Za-z0-9._-]{0,62} (the SAE ID alphabet)",
            )
        check(self.sae_id != self.peer_sae_id, "peer_sae_id", "must differ from sae_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExternalPeerConfig:
    """A peer facility whose data-plane keys come from an external KME (``key_source = "etsi014"``): no
    emulated QKD link, no classical connection and no channel run for it, only the data plane."""

    id: str
    """The peer's facility id; its certificate CN must equal it."""
    data_address: Address | None = None
    """The peer's data-plane listener. None: nothing can be sent to this peer."""
    etsi014: Etsi014Config
    """Our KME and the two SAE IDs."""
    pq_hybrid: bool = False
    """As ``PeerConfig.pq_hybrid``."""

    def __post_init__(self) -> None:
        check(is_facility_id(self.id), "id", f"must match {FACILITY_ID_PATTERN.pattern}")


@dataclass(frozen=True, slots=True, kw_only=True)
class FacilityConfig:
    """Everything one facility daemon needs (`qlinkd --config FILE`)."""

    source: Path
    """The configuration file this was loaded from."""
    id: str
    """Facility id (``qcore.constants.FACILITY_ID_PATTERN``); its certificate CN must equal it."""
    state_dir: Path
    """Directory for the key pool database and the audit log (created by the daemon if missing)."""
    saes: tuple[str, ...]
    """SAE IDs (client-certificate CNs) served by this facility's KME."""
    tls: TlsConfig
    """Mutual-TLS files."""
    listen: ListenConfig
    """Listening addresses."""
    channel: Address
    """The quantum channel service."""
    kme: KmeConfig = KmeConfig()
    """ETSI 014 key sizes."""
    peers: tuple[PeerConfig, ...] = ()
    """QKD links, one per peer facility."""
    audit_anchor_interval_s: float = 60.0
    """How often the audit log's head is anchored at each peer when it has grown, in [1, 86400]; also on
    connecting and on stopping (``link/anchor.py``). Records after the last anchor are the ones that can
    be cut off unseen."""
    content: ContentConfig = ContentConfig()
    """Content size limits and validator processes."""
    gateways: GatewaysConfig = field(default_factory=GatewaysConfig)
    """The hospital-facing gateways (``[gateway.*]``), each optional."""
    metrics: MetricsConfig | None = None
    """The remote /metrics site; None: /metrics only on the loopback local API."""
    queue_stuck_after_s: float = 600.0
    """A transfer queued longer than this counts as stuck (status, ``qlink_data_stuck``), in [1, 604800]:
    raise it where a large study over a slow line takes longer to deliver."""
    external_peers: tuple[ExternalPeerConfig, ...] = ()
    """Peers keyed by an external ETSI 014 KME (``key_source = "etsi014"``): data plane only."""
    inbox: InboxConfig = field(default_factory=InboxConfig)
    """Retention of delivered transfers (``[inbox]``); off by default."""
    access: AccessConfig = field(default_factory=AccessConfig)
    """The roles users may hold and the limits of break-glass (``[access]``, ``access/config.py``)."""
    gate: GateConfig = field(default_factory=GateConfig)
    """The request-intention gate on inbox fetches (``[gate]``, ``access/gate_config.py``)."""
    departments: DepartmentRules | None = None
    """How an arrival's department is named (``[departments]``, ``ops/departments_config.py``); None:
    arrivals name no department."""

    def peer(self, peer_id: str) -> PeerConfig:
        """The peer called `peer_id`; KeyError if there is none."""
        for peer in self.peers:
            if peer.id == peer_id:
                return peer
        raise KeyError(peer_id)

    def summary(self) -> str:
        peers = ", ".join([p.id for p in self.peers] + [f"{p.id} (etsi014)" for p in self.external_peers])
        peers = peers or "none"
        return (
            f"facility {self.id}, {len(self.saes)} SAE(s), peers: {peers}, "
            f"classical {self.listen.classical}, kme {self.listen.kme}, local {self.listen.local}"
        )


def tls_section(root: Table) -> TlsConfig:
    section = root.table("tls")
    tls = TlsConfig(ca=section.file("ca"), cert=section.file("cert"), key=section.file("key"))
    section.finish()
    # Load them as the daemon will, so a corrupt or mismatched certificate and key fail the check.
    from qlinkmed.qlinkd.ops.pki import server_context

    try:
        server_context(tls.ca, tls.cert, tls.key)
    except PkiError as exc:
        name = section.name("ca") if exc.path == str(tls.ca) else section.name("cert")
        raise ConfigError(name, exc.message) from None
    return tls


def metrics_section(root: Table) -> MetricsConfig | None:
    if not root.has("metrics"):
        return None
    section = root.table("metrics")
    metrics = MetricsConfig(
        listen=section.address("listen"),
        tls_cert=section.file("tls_cert"),
        tls_key=section.file("tls_key"),
        client_ca=section.file("client_ca") if section.has("client_ca") else None,
    )
    section.finish()
    # Load them as the daemon will, so a corrupt or mismatched certificate and key fail the check.
    from qlinkmed.qlinkd.ops.metrics_site import metrics_server_context

    try:
        metrics_server_context(metrics.tls_cert, metrics.tls_key, metrics.client_ca)
    except PkiError as exc:
        name = section.name("client_ca") if exc.path == str(metrics.client_ca) else section.name("tls_cert")
        raise ConfigError(name, exc.message) from None
    return metrics


def _common_name(cert_path: Path) -> str | None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


_DECOY_KEYS = ("fibre_km", "mu", "decoy_mu2", "decoy_probabilities", "p_x")


def _probabilities(section: Table, key: str) -> tuple[float, float, float] | None:
    if not section.has(key):
        return None
    values = section.number_list(key)
    check(len(values) == 3, section.name(key), f"must hold 3 numbers [p1, p2, p3], got {len(values)}")
    return values[0], values[1], values[2]


def _decoy_plan(section: Table, pulses: int | None, eps_sec: float, eps_cor: float) -> DecoyPlan:
    """The source of a bb84-decoy peer; errors name the ``[[peer]]`` field."""

    def optional(key: str) -> float | None:
        return section.number(key) if section.has(key) else None

    # Read (and type-checked, naming their own fields) before the planner judges them.
    fibre_km = optional("fibre_km")
    overrides = DecoyOverrides(
        mu=optional("mu"),
        mu2=optional("decoy_mu2"),
        probabilities=_probabilities(section, "decoy_probabilities"),
        p_x=optional("p_x"),
    )
    try:
        return plan_decoy(
            fibre_km=fibre_km, pulses_per_round=pulses, overrides=overrides, eps_sec=eps_sec, eps_cor=eps_cor
        )
    except ConfigError as exc:
        # DecoySource names its own fields (mu for either intensity): point at the peer's keys.
        field = {"mu": "mu, decoy_mu2"}.get(exc.field, exc.field)
        raise ConfigError(section.name(field), exc.message) from None


def _peer(section: Table) -> PeerConfig:
    name = section.text("protocol", "bb84")
    check(
        name in PROTOCOL_NAMES,
        section.name("protocol"),
        f"must be one of {' | '.join(PROTOCOL_NAMES)}, got {name!r}",
    )
    decoy_link = name == BB84_DECOY
    protocol = ProtocolKind.BB84 if decoy_link else ProtocolKind(name)
    if not decoy_link:
        for key in _DECOY_KEYS:
            check(not section.has(key), section.name(key), f"applies to protocol {BB84_DECOY} only")
    eps_sec = section.number("eps_sec", DEFAULT_EPS_SEC)
    eps_cor = section.number("eps_cor", DEFAULT_EPS_COR)
    given_pulses = section.integer("pulses_per_round") if section.has("pulses_per_round") else None
    decoy = _decoy_plan(section, given_pulses, eps_sec, eps_cor) if decoy_link else None
    pulses = (
        decoy.pulses_per_round
        if decoy is not None
        else (given_pulses if given_pulses is not None else DEFAULT_PULSES_PER_ROUND[protocol])
    )
    peer = build(
        section.where,
        PeerConfig,
        id=section.text("id"),
        address=section.address("address"),
        data_address=section.optional_address("data_address"),
        saes=section.str_list("saes", []),
        preshared_key_path=(psk_path := section.file("preshared_key")),
        preshared=psk_path.read_bytes(),
        protocol=protocol,
        decoy=decoy,
        fibre_km=section.number("fibre_km") if section.has("fibre_km") else None,
        pulses_per_round=pulses,
        low_watermark_bits=section.integer("low_watermark_bits", 2_000_000),
        high_watermark_bits=section.integer("high_watermark_bits", 8_000_000),
        round_timeout_s=section.number(
            "round_timeout_s", default_round_timeout_s(pulses, decoy=decoy is not None)
        ),
        rounds_in_flight=section.integer("rounds_in_flight", DEFAULT_ROUNDS_IN_FLIGHT),
        cascade=section.choice("cascade", CascadeKind, tuple(CascadeKind), CascadeKind.FEW_ROUND_TRIPS.value),
        qber_tolerance=section.number("qber_tolerance", QBER_TOLERANCE),
        sample_fraction=section.number("sample_fraction", 0.3),
        e91_security=section.choice("e91_security", E91Security, tuple(E91Security), "bbm92"),
        eps_sec=eps_sec,
        eps_cor=eps_cor,
        pq_hybrid=section.boolean("pq_hybrid", False),
    )
    section.finish()
    if peer.pq_hybrid:
        _check_hybrid_available(peer.id, section.name("pq_hybrid"))
    return peer


_EMULATED_ONLY_KEYS = (
    "address",
    "saes",
    "preshared_key",
    "protocol",
    "pulses_per_round",
    "low_watermark_bits",
    "high_watermark_bits",
    "round_timeout_s",
    "rounds_in_flight",
    "cascade",
    "qber_tolerance",
    "sample_fraction",
    "e91_security",
    "eps_sec",
    "eps_cor",
    *_DECOY_KEYS,
)


def _external_peer(section: Table) -> ExternalPeerConfig:
    """A ``key_source = "etsi014"`` peer; the emulated link's fields are refused, naming the field."""
    for key in _EMULATED_ONLY_KEYS:
        check(not section.has(key), section.name(key), 'applies to key_source = "emulated" only')
    etsi = section.table("etsi014")
    settings = build(
        etsi.where,
        Etsi014Config,
        kme_url=etsi.text("kme_url"),
        sae_id=etsi.text("sae_id"),
        peer_sae_id=etsi.text("peer_sae_id"),
        client_cert=etsi.file("client_cert"),
        client_key=etsi.file("client_key"),
        ca=etsi.file("ca"),
    )
    etsi.finish()
    # Loaded as the daemon will load them, so a corrupt file or a certificate that does not match its key
    # fails the check, naming the field.
    from qlinkmed.qlinkd.ops.pki import client_context

    try:
        client_context(settings.ca, settings.client_cert, settings.client_key)
    except PkiError as exc:
        name = etsi.name("ca") if exc.path == str(settings.ca) else etsi.name("client_cert")
        raise ConfigError(name, exc.message) from None
    peer = build(
        section.where,
        ExternalPeerConfig,
        id=section.text("id"),
        data_address=section.optional_address("data_address"),
        etsi014=settings,
        pq_hybrid=section.boolean("pq_hybrid", False),
    )
    section.finish()
    if peer.pq_hybrid:
        _check_hybrid_available(peer.id, section.name("pq_hybrid"))
    return peer


def _check_hybrid_available(peer_id: str, field: str) -> None:
    from qlinkmed.qlinkd.seal.hybrid import hybrid_available

    if not hybrid_available():
        import cryptography

        raise ConfigError(
            field,
            f"peer {peer_id}: pq_hybrid = true but the installed cryptography (version "
            f"{cryptography.__version__}) provides no ML-KEM-768; upgrade cryptography >= 47 (built with an "
            "OpenSSL that has ML-KEM) or set pq_hybrid = false",
        )


def _check_sae_ids(ids: tuple[str, ...], field: str, seen: set[str]) -> None:
    for i, sae in enumerate(ids):
        check(bool(_SAE_ID.fullmatch(sae)), f"{field}[{i}]", "must match [A-Za-z0-9][A-Za-z0-9._-]{0,62}")
        check(sae not in seen, f"{field}[{i}]", f"SAE {sae!r} is listed twice")
        seen.add(sae)


def load_facility_config(path: Path) -> FacilityConfig:
    """Read and validate a facility configuration file."""
    root = read_toml(path)
    facility = root.table("facility")
    facility_id = facility.text("id")
    check(is_facility_id(facility_id), facility.name("id"), f"must match {FACILITY_ID_PATTERN.pattern}")
    state_dir = facility.path("state_dir")
    saes = facility.str_list("saes")
    anchor_interval = facility.number("audit_anchor_interval_s", 60.0)
    check(
        math.isfinite(anchor_interval) and 1.0 <= anchor_interval <= 86_400.0,
        facility.name("audit_anchor_interval_s"),
        "must be in [1, 86400] seconds",
    )
    stuck_after = facility.number("queue_stuck_after_s", 600.0)
    check(
        math.isfinite(stuck_after) and 1.0 <= stuck_after <= 604_800.0,
        facility.name("queue_stuck_after_s"),
        "must be in [1, 604800] seconds",
    )
    facility.finish()
    seen_saes: set[str] = set()
    _check_sae_ids(saes, facility.name("saes"), seen_saes)

    tls = tls_section(root)
    cert_cn = _common_name(tls.cert)
    check(
        cert_cn == facility_id,
        "tls.cert",
        f"certificate CN {cert_cn!r} differs from facility.id {facility_id!r}; peers would not recognise us",
    )
    listen_section = root.table("listen")
    listen = build(
        "listen",
        ListenConfig,
        classical=listen_section.address("classical"),
        kme=listen_section.address("kme"),
        local=listen_section.address("local"),
        data=listen_section.optional_address("data"),
    )
    listen_section.finish()
    channel_section = root.table("channel")
    channel = channel_section.address("address")
    channel_section.finish()
    kme_section = root.table("kme", optional=True)
    kme = build(
        "kme",
        KmeConfig,
        key_size=kme_section.integer("key_size", 256),
        min_key_size=kme_section.integer("min_key_size", 64),
        max_key_size=kme_section.integer("max_key_size", 4096),
        max_key_per_request=kme_section.integer("max_key_per_request", 128),
        key_expiry_s=kme_section.number("key_expiry_s", DEFAULT_KEY_EXPIRY_S),
    )
    kme_section.finish()
    content_section = root.table("content", optional=True)
    content = build(
        "content",
        ContentConfig,
        max_file_bytes=content_section.integer("max_file_bytes", 512 << 20),
        max_ehr_bytes=content_section.integer("max_ehr_bytes", 8 << 20),
        max_decoded_bytes=content_section.integer("max_decoded_bytes", 512 << 20),
        validators=content_section.integer("validators", 1),
        validator_memory_bytes=content_section.integer("validator_memory_bytes", 2048 << 20),
    )
    content_section.finish()
    metrics = metrics_section(root)

    peers: list[PeerConfig] = []
    external: list[ExternalPeerConfig] = []
    for section in root.tables("peer"):
        source = section.text("key_source", "emulated")
        check(
            source in KEY_SOURCES,
            section.name("key_source"),
            f"must be one of {' | '.join(KEY_SOURCES)}, got {source!r}",
        )
        one: PeerConfig | ExternalPeerConfig
        if source == "etsi014":
            one = _external_peer(section)
        else:
            check(
                not section.has("etsi014"), section.name("etsi014"), 'applies to key_source = "etsi014" only'
            )
            one = peer = _peer(section)
            _check_sae_ids(peer.saes, section.name("saes"), seen_saes)
        check(one.id != facility_id, section.name("id"), "a peer cannot have the facility's own id")
        listed = [p.id for p in peers] + [p.id for p in external]
        check(one.id not in listed, section.name("id"), f"peer {one.id!r} is listed twice")
        if isinstance(one, ExternalPeerConfig):
            external.append(one)
        else:
            peers.append(one)
    with_data = {p.id: p.data_address is not None for p in peers}
    gateways = gateways_section(root, with_data | {p.id: p.data_address is not None for p in external})
    inbox = inbox_section(root)
    peer_ids = tuple(p.id for p in peers) + tuple(p.id for p in external)
    access = access_section(root, peer_ids)
    departments = departments_section(root, peer_ids)
    check_role_departments(access, departments)
    gate = gate_section(root)
    root.finish()
    return FacilityConfig(
        source=Path(path),
        id=facility_id,
        state_dir=state_dir,
        saes=saes,
        tls=tls,
        listen=listen,
        channel=channel,
        kme=kme,
        peers=tuple(peers),
        audit_anchor_interval_s=anchor_interval,
        content=content,
        gateways=gateways,
        metrics=metrics,
        queue_stuck_after_s=stuck_after,
        external_peers=tuple(external),
        inbox=inbox,
        access=access,
        gate=gate,
        departments=departments,
    )


class Summarised(Protocol):
    def summary(self) -> str: ...


def check_config(path: Path, load: Callable[[Path], Summarised] | None = None) -> int:
    """`--check-config`: load `path` with `load` (the facility loader by default), print "config OK:
    <summary>" or "config error: <field>: <message>" to stderr and return the exit code (0 or 2)."""
    try:
        config = (load or load_facility_config)(path)
    except ConfigError as exc:
        print(f"config error: {exc.field}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    print(f"config OK: {config.summary()}", file=sys.stderr)
    return EXIT_OK
