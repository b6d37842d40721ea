"""docs/deployment.md stays true to the code: its configuration blocks load through the real loaders
(with certificates made by the guide's own `qlink ca init` line, and by its OpenSSL recipe when openssl is
installed, which must also give certificates that complete qlink's mutual-TLS handshakes under the names
the guide dials), its `qlinkd` / `qlink-channel --check-config` lines pass on those files, and every
`qlink ...` line parses with the real `qlink` argument parser."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qlinkmed.client import cli
from qlinkmed.qlinkd.channel.config import load_channel_config
from qlinkmed.qlinkd.channel.main import main as channel_main
from qlinkmed.qlinkd.main import main as qlinkd_main
from qlinkmed.qlinkd.ops.config import FacilityConfig, load_facility_config
from qlinkmed.qlinkd.ops.pki import client_context, server_context
from tests.paths import REPO

GUIDE = REPO / "docs" / "deployment.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
A, B = "hospital-a", "hospital-b"
HOST_A, HOST_B = "qlink-a.hospital-a.example", "qlink-b.hospital-b.example"
PSK = "psk/hospital-a--hospital-b.key"


def _blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(GUIDE.read_text()) if lang == language]


def _block_with(language: str, text: str) -> str:
    (block,) = [b for b in _blocks(language) if text in b]
    return block


def _command_lines() -> list[list[str]]:
    """Every command line of the guide's sh blocks, as words, without `sudo [-u USER]` and comments."""
    lines = []
    for block in _blocks("sh"):
        for raw in block.splitlines():
            try:
                words = shlex.split(raw, comments=True)
            except ValueError:
                continue  # a line of the OpenSSL recipe's shell function
            if words[:3] == ["sudo", "-u", "qlink"]:
                words = words[3:]
            elif words[:1] == ["sudo"]:
                words = words[1:]
            if words:
                lines.append(words)
    return lines


def _write_configs(etc: Path) -> dict[str, Path]:
    """The guide's TOML blocks as files in `etc` (its /etc/qlink), named as the guide names them."""
    written = {}
    for block in _blocks("toml"):
        match = re.search(r'^\[facility\]\nid = "([a-z0-9-]+)"', block, re.MULTILINE)
        name = f"{match.group(1)}.toml" if match else "channel.toml"
        assert name not in written, f"two TOML blocks for {name}"
        (etc / name).write_text(block)
        written[name] = etc / name
    assert set(written) == {f"{A}.toml", f"{B}.toml", "channel.toml"}
    (etc / "psk").mkdir()
    (etc / PSK).write_bytes(os.urandom(4096))
    return written


def _load_all(etc: Path) -> dict[str, FacilityConfig]:
    configs = {name: load_facility_config(etc / f"{name}.toml") for name in (A, B)}
    channel = load_channel_config(etc / "channel.toml")
    assert {(link.a, link.b) for link in channel.links} == {(A, B)}
    return configs


@pytest.fixture
def etc_with_qlink_ca(tmp_path: Path) -> Path:
    etc = tmp_path / "etc-qlink"
    etc.mkdir()
    _write_configs(etc)
    (ca_line,) = [words for words in _command_lines() if words[:3] == ["qlink", "ca", "init"]]
    with contextlib.chdir(etc):
        assert cli.main(ca_line[1:]) == 0
    return etc


def test_the_configurations_load_and_agree(etc_with_qlink_ca: Path) -> None:
    configs = _load_all(etc_with_qlink_ca)
    a, b = configs[A], configs[B]
    (to_b,), (to_a,) = a.peers, b.peers
    assert (to_b.id, to_a.id) == (B, A)
    assert to_b.address.host == HOST_B and to_a.address.host == HOST_A
    assert to_b.data_address is not None and to_b.data_address.port == b.listen.data.port  # type: ignore[union-attr]
    assert to_a.data_address is not None and to_a.data_address.port == a.listen.data.port  # type: ignore[union-attr]
    assert to_b.address.port == b.listen.classical.port
    assert a.channel.host == b.channel.host == HOST_A
    assert to_b.distill_config() == to_a.distill_config() and to_b.pulses_per_round == to_a.pulses_per_round
    for config in (a, b):
        assert config.gateways.dicom is not None and config.gateways.mllp is not None
        assert config.gateways.fhir is not None and config.metrics is not None
        assert str(config.state_dir) == f"/var/lib/qlinkd/{config.id}"


def test_the_check_config_lines_pass_on_the_guides_files(etc_with_qlink_ca: Path) -> None:
    mains = {"qlinkd": qlinkd_main, "qlink-channel": channel_main}
    checked = set()
    for words in _command_lines():
        if words[0] in mains:
            assert words[1] == "--check-config", words
            path = etc_with_qlink_ca / Path(words[2]).relative_to("/etc/qlink")
            assert mains[words[0]](["--check-config", str(path)]) == 0, words
            checked.add(path.name)
    assert checked == {f"{A}.toml", "channel.toml"}


def test_every_qlink_line_parses() -> None:
    lines = [words for words in _command_lines() if words[0] == "qlink"]
    commands = {words[1] for words in lines}
    assert {"ca", "status", "keys", "audit", "alarm"} <= commands, commands
    parser = cli.build_parser()
    for words in lines:
        try:
            args = parser.parse_args(words[1:])
        except SystemExit:
            pytest.fail(f"the guide's `{shlex.join(words)}` does not parse")
        assert args.command == words[1]


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, name: str) -> str | None:
    """A TLS handshake in memory; the common name of the server's certificate as the client saw it."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for key, end in (("c", c), ("s", s)):
            if not done[key]:
                with contextlib.suppress(ssl.SSLWantReadError):
                    end.do_handshake()
                    done[key] = True
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values()), "the handshake did not finish"
    cert = c.getpeercert()
    if not cert:
        return None
    # subject: a tuple of relative distinguished names, each a tuple of (name, value) pairs.
    pairs: list[Any] = [pair for rdn in cert["subject"] for pair in rdn]
    return next((str(value) for name, value in pairs if name == "commonName"), None)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_openssl_recipe_gives_certificates_qlink_accepts(tmp_path: Path) -> None:
    etc = tmp_path / "etc-qlink"
    etc.mkdir()
    _write_configs(etc)
    recipe = _block_with("sh", "openssl req -x509")
    subprocess.run(["sh", "-ec", recipe], cwd=etc, check=True, timeout=120, capture_output=True)
    pki = etc / "pki"
    configs = _load_all(etc)  # CNs equal the facility ids; every key matches its certificate
    for name, host, usages in (
        (A, HOST_A, {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
        (B, HOST_B, {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("channel", HOST_A, {ExtendedKeyUsageOID.SERVER_AUTH}),
        ("pacs-a", None, {ExtendedKeyUsageOID.CLIENT_AUTH}),
    ):
        cert = x509.load_pem_x509_certificate((pki / f"{name}.pem").read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == usages
        assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
        if host is not None:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert sans.get_values_for_type(x509.DNSName) == [host]
        assert (pki / f"{name}.key").stat().st_mode & 0o077 == 0
    ca = pki / "ca.pem"

    def server(name: str) -> ssl.SSLContext:
        return server_context(ca, pki / f"{name}.pem", pki / f"{name}.key")

    def client(name: str) -> ssl.SSLContext:
        return client_context(ca, pki / f"{name}.pem", pki / f"{name}.key")

    # As the daemons dial: A the peer's link and data plane, both the channel service, an SAE the KME.
    assert _handshake(client(A), server(B), configs[A].peers[0].address.host) == B
    assert _handshake(client(B), server(A), configs[B].peers[0].data_address.host) == A  # type: ignore[union-attr]
    assert _handshake(client(B), server("channel"), configs[B].channel.host) == "channel"
    assert _handshake(client("pacs-a"), server(A), HOST_A) == A
    # A certificate for another host name is refused.
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(client(A), server(B), HOST_A)
