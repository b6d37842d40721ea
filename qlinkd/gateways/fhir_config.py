"""`[gateway.fhir]`: the FHIR REST endpoint a facility offers its EHR systems, and the FHIR server(s) it
forwards arrived FHIR messages to.

    [gateway.fhir]
    listen = "127.0.0.1:8080"        # where EHR systems POST (https when tls_cert is given)
    base_path = "/fhir"              # [base] = https://host:port/fhir/<peer facility>
    token_file = "fhir.token"        # clients send "Authorization: Bearer <token>" (made if missing)
    tls_cert = "fhir.pem"            # optional: serve https
    tls_key = "fhir.key"
    client_ca = "ehr-ca.pem"         # optional: require client certificates signed by this CA
    max_body_bytes = 8388608

    [[gateway.fhir.destination]]     # where FHIR messages arriving from peers go
    base_url = "https://fhir.hospital-b.example/r5"
    ca = "fhir-server-ca.pem"        # optional: the CA of the server's certificate (system CAs otherwise)
    client_cert = "qlink.pem"        # optional: mutual TLS towards the server
    client_key = "qlink.key"
    token_file = "server.token"      # optional: a bearer token the server expects
    timeout_s = 30
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.ops.toml_reader import Address, Table, check

DEFAULT_MAX_BODY_BYTES = 8 << 20
_BASE_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")


@dataclass(frozen=True, slots=True, kw_only=True)
class FhirDestination:
    base_url: str
    """The FHIR server's base; a resource goes to POST [base]/[type], a Bundle to POST [base]."""
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    token_file: Path | None = None
    timeout_s: float = 30.0

    @property
    def name(self) -> str:
        """How the ledger, status and audit name this destination."""
        return self.base_url


@dataclass(frozen=True, slots=True, kw_only=True)
class FhirGatewayConfig:
    listen: Address
    base_path: str = "/fhir"
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    destinations: tuple[FhirDestination, ...] = ()


def _optional_file(table: Table, key: str) -> Path | None:
    return table.file(key) if table.has(key) else None


def _destination(table: Table) -> FhirDestination:
    base_url = table.text("base_url").rstrip("/")
    parts = urlsplit(base_url)
    check(
        parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment,
        table.name("base_url"),
        "must be an http(s) URL with a host and no query or fragment",
    )
    timeout_s = table.number("timeout_s", 30.0)
    check(0 < timeout_s <= 600, table.name("timeout_s"), "must be in (0, 600] seconds")
    destination = FhirDestination(
        base_url=base_url,
        ca=_optional_file(table, "ca"),
        client_cert=_optional_file(table, "client_cert"),
        client_key=_optional_file(table, "client_key"),
        token_file=_optional_file(table, "token_file"),
        timeout_s=timeout_s,
    )
    check(
        (destination.client_cert is None) == (destination.client_key is None),
        table.name("client_cert"),
        "client_cert and client_key go together",
    )
    check(
        parts.scheme == "https" or destination.client_cert is None,
        table.name("client_cert"),
        "a client certificate needs an https base_url",
    )
    table.finish()
    return destination


def fhir_gateway(table: Table) -> FhirGatewayConfig:
    """Read `[gateway.fhir]` (its caller has checked the table is there)."""
    base_path = table.text("base_path", "/fhir").rstrip("/")
    check(bool(_BASE_PATH.fullmatch(base_path)), table.name("base_path"), "must be a path like /fhir")
    max_body = table.integer("max_body_bytes", DEFAULT_MAX_BODY_BYTES)
    check(1024 <= max_body <= 1 << 30, table.name("max_body_bytes"), "must be in [1 KiB, 1 GiB]")
    config = FhirGatewayConfig(
        listen=table.address("listen"),
        base_path=base_path,
        # Made (0600, from the OS's CSPRNG) on the daemon's first start if it does not exist, like the
        # local API's token; the EHR system's administrator copies it from there.
        token_file=table.path("token_file") if table.has("token_file") else None,
        tls_cert=_optional_file(table, "tls_cert"),
        tls_key=_optional_file(table, "tls_key"),
        client_ca=_optional_file(table, "client_ca"),
        max_body_bytes=max_body,
        destinations=tuple(_destination(t) for t in table.tables("destination")),
    )
    check(
        (config.tls_cert is None) == (config.tls_key is None),
        table.name("tls_cert"),
        "tls_cert and tls_key go together",
    )
    check(
        config.client_ca is None or config.tls_cert is not None,
        table.name("client_ca"),
        "client certificates need TLS: give tls_cert and tls_key",
    )
    # Patient data must not be postable by anyone who can reach the port.
    check(
        config.token_file is not None or config.client_ca is not None,
        table.name("token_file"),
        "give token_file (bearer token) or client_ca (client certificates): the endpoint takes patient data",
    )
    check(
        config.listen.is_loopback or config.tls_cert is not None,
        table.name("listen"),
        f"{config.listen} is not loopback: serve it over TLS (tls_cert, tls_key)",
    )
    names = [d.name for d in config.destinations]
    if len(set(names)) != len(names):
        raise ConfigError(table.name("destination"), "a base_url is listed twice")
    table.finish()
    return config
