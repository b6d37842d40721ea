"""The ``[gateway.dicom]`` table of a facility configuration: the SCP's AE title and address, the routes
from the called (and optionally calling) AE title of an association to a peer facility, the PACS this
facility forwards arrived studies to, and the staging limits. Parsed with the strict TOML reader: every
error names its dotted field.

    [gateway.dicom]
    ae_title = "QLINK_A"              # the calling AE title when forwarding to the PACS
    listen = "127.0.0.1:11112"
    quiet_s = 30                      # a study left open this long without an instance is sent
    staging_max_bytes = 4294967296    # instances held before they are queued; beyond: 0xA700
    max_associations = 10
    timeout_s = 60                    # ACSE/DIMSE/network/connect timeout, SCP and forwarder
    tls = false                       # true: the SCP speaks DICOM TLS only (mutual, the facility's CA)

    [[gateway.dicom.route]]           # first match wins
    called_ae = "TO_HOSPITAL_B"
    calling_ae = "CT01"               # optional: only this modality
    peer = "hospital-b"

    [[gateway.dicom.destination]]     # every arrived study goes to each destination
    name = "pacs"
    ae_title = "PACS"
    address = "10.1.2.3:104"
    tls = false                       # true: DICOM TLS with the facility's certificate, PACS checked by CA
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from qlinkmed.qlinkd.ops.toml_reader import Address, Table, build, check

AE_TITLE = re.compile(r"[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?")
"""PS3.5 AE VR: 1..16 characters of the default repertoire without backslash or control characters;
leading and trailing spaces are not significant, so a title here has none."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

DEFAULT_QUIET_S = 30.0
DEFAULT_STAGING_MAX_BYTES = 4 << 30
DEFAULT_MAX_ASSOCIATIONS = 10
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DicomRoute:
    """Where an association's instances go."""

    called_ae: str
    """The AE title the modality calls (the SCP answers to every routed title)."""
    calling_ae: str | None = None
    """Only associations from this AE title match; None: any."""
    peer: str
    """The peer facility the instances are sent to."""

    def matches(self, called: str, calling: str) -> bool:
        return self.called_ae == called and self.calling_ae in (None, calling)


@dataclass(frozen=True, slots=True, kw_only=True)
class DicomDestination:
    """A PACS (C-STORE SCP) every study arriving at this facility is forwarded to."""

    name: str
    """Its name in the forwarding ledger, status and audit."""
    ae_title: str
    """Its AE title (our associations call it)."""
    address: Address
    """Its host and port."""
    tls: bool = False
    """DICOM TLS (PS3.15 B.1): we present the facility's certificate ([tls] cert/key) and require the
    PACS's certificate to chain to [tls].ca and name its host."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DicomGatewayConfig:
    """The DICOM gateway of one facility."""

    ae_title: str
    """This facility's AE title: the forwarder calls the PACS with it. The SCP answers only to the routed
    titles (an association must say where its instances go)."""
    listen: Address
    """Where the SCP listens (port 0: a free one, tests)."""
    routes: tuple[DicomRoute, ...] = ()
    """Association routing, first match wins; an association no route matches is rejected (called AE
    title not recognised)."""
    destinations: tuple[DicomDestination, ...] = ()
    """PACS that arrived studies are forwarded to."""
    quiet_s: float = DEFAULT_QUIET_S
    """A study whose association stays open is sent once no instance of it came for this long."""
    staging_max_bytes: int = DEFAULT_STAGING_MAX_BYTES
    """Most bytes of instances acknowledged but not yet queued; an instance beyond it is refused with
    0xA700 (out of resources) and the modality retries later."""
    max_associations: int = DEFAULT_MAX_ASSOCIATIONS
    """Most associations the SCP serves at once; more are rejected (local limit exceeded)."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    """ACSE, DIMSE and network timeout, for the SCP and the forwarder."""
    tls: bool = False
    """The SCP accepts DICOM TLS only, mutual: a modality presents a certificate issued by [tls].ca (the
    facility's CA) and sees the facility's certificate."""

    def __post_init__(self) -> None:
        check(bool(AE_TITLE.fullmatch(self.ae_title)), "ae_title", _AE_RULE)
        check(
            math.isfinite(self.quiet_s) and 0.1 <= self.quiet_s <= 3600, "quiet_s", "must be in 0.1..3600 s"
        )
        check(self.staging_max_bytes >= 1 << 20, "staging_max_bytes", "must be at least 1048576 (1 MiB)")
        check(1 <= self.max_associations <= 1000, "max_associations", "must be in 1..1000")
        check(
            math.isfinite(self.timeout_s) and 1 <= self.timeout_s <= 3600, "timeout_s", "must be in 1..3600 s"
        )
        names = [d.name for d in self.destinations]
        for i, name in enumerate(names):
            check(name not in names[:i], f"destination[{i}].name", f"destination {name!r} is listed twice")

    def route(self, called: str, calling: str) -> DicomRoute | None:
        """The first route for an association from `calling` to `called` (titles with their padding
        stripped), or None."""
        return next((r for r in self.routes if r.matches(called, calling)), None)


_AE_RULE = "must be an AE title: 1..16 printable ASCII characters, no backslash, no leading/trailing space"


def _ae(table: Table, key: str, default: str | None = None) -> str:
    value = table.text(key) if default is None else table.text(key, default)
    check(bool(AE_TITLE.fullmatch(value)), table.name(key), _AE_RULE)
    return value


def parse_dicom_gateway(gateway: Table, peers: dict[str, bool]) -> DicomGatewayConfig | None:
    """The ``dicom`` table of `gateway` (the ``[gateway]`` table), or None when it has none. `peers`: the
    configured peer facility ids a route may name, each with whether it has a data_address (a route to a
    peer without one could queue nothing)."""
    if not gateway.has("dicom"):
        return None
    section = gateway.table("dicom")
    routes = []
    for table in section.tables("route"):
        peer = table.text("peer")
        check(peer in peers, table.name("peer"), f"{peer!r} is no configured peer (peers: {sorted(peers)})")
        check(
            peers[peer], table.name("peer"), f"peer {peer!r} has no data_address: nothing can be sent to it"
        )
        routes.append(
            DicomRoute(
                called_ae=_ae(table, "called_ae"),
                calling_ae=_ae(table, "calling_ae") if table.has("calling_ae") else None,
                peer=peer,
            )
        )
        table.finish()
    destinations = []
    for table in section.tables("destination"):
        name = table.text("name")
        check(bool(_NAME.fullmatch(name)), table.name("name"), "must match [A-Za-z0-9][A-Za-z0-9._-]{0,62}")
        address = table.address("address")
        check(address.port != 0, table.name("address"), "a destination needs a real port, not 0")
        destinations.append(
            DicomDestination(
                name=name,
                ae_title=_ae(table, "ae_title"),
                address=address,
                tls=table.boolean("tls", False),
            )
        )
        table.finish()
    config = build(
        section.where,
        DicomGatewayConfig,
        ae_title=section.text("ae_title"),
        listen=section.address("listen"),
        routes=tuple(routes),
        destinations=tuple(destinations),
        quiet_s=section.number("quiet_s", DEFAULT_QUIET_S),
        staging_max_bytes=section.integer("staging_max_bytes", DEFAULT_STAGING_MAX_BYTES),
        max_associations=section.integer("max_associations", DEFAULT_MAX_ASSOCIATIONS),
        timeout_s=section.number("timeout_s", DEFAULT_TIMEOUT_S),
        tls=section.boolean("tls", False),
    )
    section.finish()
    return config
