"""The demo CA and the mutual-TLS contexts: real handshakes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from qlinkmed.client.commands import ca as ca_command
from qlinkmed.qlinkd.errors import PkiError
from qlinkmed.qlinkd.ops.pki import client_context, peer_common_name, server_context, write_demo_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    write_demo_pki(directory, ["hospital-a", "hospital-b"], ["pacs-a"])
    return directory


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("other")
    write_demo_pki(directory, ["hospital-a"])
    return directory


def _ctx(factory, directory: Path, name: str, ca_dir: Path | None = None) -> ssl.SSLContext:
    return factory((ca_dir or directory) / "ca.pem", directory / f"{name}.pem", directory / f"{name}.key")


async def _exchange(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    server_hostname: str = "127.0.0.1",
    seen: list[str | None] | None = None,
) -> tuple[list[str | None], bytes, str | None]:
    """Start a TLS server, connect once, return (client CNs seen by the server, reply, server CN seen by
    the client)."""
    seen = [] if seen is None else seen

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cn = peer_common_name(writer.transport)
        seen.append(cn)
        writer.write(f"hello {cn}\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname=server_hostname
        )
        server_cn = peer_common_name(writer.get_extra_info("ssl_object"))
        try:
            reply = await asyncio.wait_for(reader.readline(), 10)
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
    return seen, reply, server_cn


@pytest.mark.asyncio
async def test_mutual_tls_handshake_identifies_both_ends(pki: Path) -> None:
    seen, reply, server_cn = await _exchange(
        _ctx(server_context, pki, "hospital-b"), _ctx(client_context, pki, "hospital-a")
    )
    assert seen == ["hospital-a"]
    assert reply == b"hello hospital-a\n"
    assert server_cn == "hospital-b"


@pytest.mark.asyncio
async def test_sae_client_certificate_is_accepted_by_a_facility(pki: Path) -> None:
    seen, _, _ = await _exchange(
        _ctx(server_context, pki, "hospital-a"), _ctx(client_context, pki, "pacs-a"), "localhost"
    )
    assert seen == ["pacs-a"]


@pytest.mark.asyncio
async def test_client_certificate_from_another_ca_is_refused(pki: Path, other_pki: Path) -> None:
    # The intruder trusts our CA (so it accepts our server) but presents a certificate from its own CA.
    intruder = _ctx(client_context, other_pki, "hospital-a", ca_dir=pki)
    seen: list[str | None] = []
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _, reply, _ = await _exchange(_ctx(server_context, pki, "hospital-b"), intruder, seen=seen)
        # With TLS 1.3 the client learns of the rejection only when it reads.
        if reply == b"":
            raise ConnectionError("closed without a reply")
    assert seen == []  # the server's handler never ran


@pytest.mark.asyncio
async def test_server_outside_our_ca_is_refused_by_the_client(pki: Path, other_pki: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await _exchange(
            _ctx(server_context, other_pki, "hospital-a", ca_dir=pki), _ctx(client_context, pki, "hospital-a")
        )


@pytest.mark.asyncio
async def test_client_checks_the_server_name(pki: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match=r"match|mismatch"):
        await _exchange(
            _ctx(server_context, pki, "hospital-b"), _ctx(client_context, pki, "hospital-a"), "example.org"
        )


def test_contexts_require_tls_1_2_and_client_certificates(pki: Path) -> None:
    server = _ctx(server_context, pki, "hospital-a")
    client = _ctx(client_context, pki, "hospital-a")
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert server.minimum_version == client.minimum_version == ssl.TLSVersion.TLSv1_2


def test_certificate_contents(pki: Path) -> None:
    facility = x509.load_pem_x509_certificate((pki / "hospital-a.pem").read_bytes())
    san = facility.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert facility.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = facility.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    sae = x509.load_pem_x509_certificate((pki / "pacs-a.pem").read_bytes())
    assert list(sae.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert (pki / "channel.pem").is_file()


def test_private_keys_are_0600(pki: Path) -> None:
    keys = sorted(pki.glob("*.key"))
    assert [k.name for k in keys] == [
        "ca.key",
        "channel.key",
        "hospital-a.key",
        "hospital-b.key",
        "pacs-a.key",
    ]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_refuses_to_overwrite_and_names_the_file(tmp_path: Path) -> None:
    write_demo_pki(tmp_path, ["hospital-a"])
    before = (tmp_path / "ca.key").read_bytes()
    with pytest.raises(PkiError) as info:
        write_demo_pki(tmp_path, ["hospital-a"])
    assert info.value.path.endswith("ca.pem")
    assert (tmp_path / "ca.key").read_bytes() == before


def test_missing_file_is_named(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(PkiError) as info:
        server_context(pki / "ca.pem", tmp_path / "absent.pem", pki / "hospital-a.key")
    assert info.value.path.endswith("absent.pem")


def test_cli_init_writes_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    code = ca_command.run(
        ["init", "--dir", str(out), "--facility", "a", "--facility", "b", "--sae", "pacs-a"]
    )
    assert code == 0
    printed = capsys.readouterr().out.split()
    assert str(out / "pacs-a.key") in printed and str(out / "ca.pem") in printed
    assert (out / "b.pem").is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["init", "--facility", "a"],  # no --dir
        ["init", "--dir", "{tmp}", "--facility", "../evil"],
        ["init", "--dir", "{tmp}", "--facility", "a", "--sae", "a"],
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path / "x")) for a in argv]
    code: int | str | None
    try:
        code = ca_command.run(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err
    assert not (tmp_path / "x").exists()


def test_cli_refuses_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["init", "--dir", str(tmp_path), "--facility", "a"]
    assert ca_command.run(argv) == 0
    capsys.readouterr()
    assert ca_command.run(argv) == 2
    assert "ca.pem" in capsys.readouterr().err
