"""A demo certificate authority for the mutual-TLS links, and the TLS contexts that use it.

Every qlink connection (peer link, channel service, ETSI 014 KME) is mutual TLS against one private CA;
a peer's identity is the subject common name of its verified certificate. Keys are EC P-256; the
certificates follow the rules OpenSSL's strict X.509 mode checks (critical basic constraints, key
identifiers), so they stay valid when Python turns that mode on by default.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qlinkmed.qcore.errors import UsageError
from qlinkmed.qlinkd.errors import PkiError

DEFAULT_DAYS = 825
# Leaves are back-dated a little so a peer whose clock lags ours does not reject a fresh certificate.
_CLOCK_SKEW = dt.timedelta(minutes=5)
CHANNEL_NAME = "channel"
# Names become file names: no separators, no leading dot.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    if days <= 0:
        raise UsageError(f"days must be positive, got {days}")
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - _CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))


def create_ca(common_name: str, *, days: int = DEFAULT_DAYS) -> tuple[bytes, bytes]:
    """A self-signed CA that may sign leaves only (path length 0). Returns (cert_pem, key_pem)."""
    key = _new_key()
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    cert = _validity(builder, days).sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _general_name(text: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        return x509.DNSName(text)


def issue(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    common_name: str,
    *,
    server_names: Sequence[str] = (),
    client: bool = True,
    server: bool = True,
    days: int = DEFAULT_DAYS,
) -> tuple[bytes, bytes]:
    """A leaf certificate signed by the CA: subject CN=common_name, SAN from server_names (IP literals
    become IP addresses, anything else a DNS name), usable for TLS client and/or server authentication.
    Returns (cert_pem, key_pem)."""
    if not (client or server):
        raise UsageError("a certificate must allow client or server authentication")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise UsageError("the CA key is not an EC key")
    key = _new_key()
    public = key.public_key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] * client + [ExtendedKeyUsageOID.SERVER_AUTH] * server
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server_names:
        # An empty SAN extension is invalid, so it is left out when there are no names.
        names = [_general_name(n) for n in server_names]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = _validity(builder, days).sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never replace a file, even one created between our check and this write. The mode is set
    # at creation so a private key is never readable by others, not even for an instant.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PkiError(str(path), "already exists; refusing to overwrite") from None
    except OSError as exc:
        raise PkiError(str(path), exc.strerror or str(exc)) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    # The umask may have removed bits from `mode`; tighten or restore to exactly what was asked.
    os.chmod(path, mode)


def write_demo_pki(
    directory: Path,
    facilities: Sequence[str],
    saes: Sequence[str] = (),
    *,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
) -> dict[str, Path]:
    """Create a CA and certificates for each facility and the channel service (client and server, SAN =
    hosts) and each SAE (client only) in `directory`. Returns {file name: path}. Refuses to overwrite any
    existing file; nothing is written if one already exists."""
    if not facilities:
        raise UsageError("at least one facility is needed")
    leaves: list[tuple[str, bool]] = [(f, True) for f in facilities]
    leaves += [(CHANNEL_NAME, True)] + [(s, False) for s in saes]
    seen: set[str] = set()
    for name, _ in leaves:
        if not _NAME.fullmatch(name):
            raise UsageError(f"invalid name {name!r}: use letters, digits, '.', '_' or '-' (max 63)")
        if name in seen or name == "ca":
            raise UsageError(f"name {name!r} is used twice (or is reserved)")
        seen.add(name)
    directory = Path(directory)
    files = ["ca.pem", "ca.key"] + [f"{n}{ext}" for n, _ in leaves for ext in (".pem", ".key")]
    for file in files:
        if (directory / file).exists():
            raise PkiError(str(directory / file), "already exists; refusing to overwrite")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    written: dict[str, Path] = {}

    def save(name: str, cert_pem: bytes, key_pem: bytes) -> None:
        for ext, data, mode in ((".key", key_pem, 0o600), (".pem", cert_pem, 0o644)):
            path = directory / f"{name}{ext}"
            _write_new(path, data, mode)
            written[f"{name}{ext}"] = path

    ca_cert, ca_key = create_ca("qlink demo CA")
    save("ca", ca_cert, ca_key)
    for name, serves in leaves:
        cert, key = issue(
            ca_cert, ca_key, name, server_names=tuple(hosts) if serves else (), client=True, server=serves
        )
        save(name, cert, key)
    return written


def _load(context: ssl.SSLContext, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    for path in (ca, cert, key):
        if not Path(path).is_file():
            raise PkiError(str(path), "no such file")
    try:
        context.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise PkiError(str(ca), f"not a usable CA certificate ({exc})") from None
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (ssl.SSLError, OSError) as exc:
        raise PkiError(f"{cert}, {key}", f"not a usable certificate and key pair ({exc})") from None
    return context


def server_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS >= 1.2 server context that requires a client certificate issued by `ca`."""
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ca, cert, key)


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS >= 1.2 client context presenting `cert` and verifying the server (and its host name)
    against `ca`."""
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ca, cert, key)
    context.check_hostname = True
    return context


def peer_common_name(ssl_object_or_transport: Any) -> str | None:
    """Subject CN of the peer's verified certificate, from an SSLObject/SSLSocket or an asyncio transport
    (anything with get_extra_info). None when there is no TLS or no verified certificate."""
    ssl_object = ssl_object_or_transport
    if hasattr(ssl_object, "get_extra_info"):
        ssl_object = ssl_object.get_extra_info("ssl_object")
    if ssl_object is None or not hasattr(ssl_object, "getpeercert"):
        return None
    # getpeercert() returns an empty dict when the certificate was not verified.
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for attribute, value in rdn:
            if attribute == "commonName":
                return str(value)
    return None
