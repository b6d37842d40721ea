"""`[gateway.fhir]`: what a facility's configuration may say about its FHIR endpoint and where arrived FHIR
messages go; every mistake names its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.ops.config import FacilityConfig, load_facility_config
from qlinkmed.qlinkd.ops.pki import write_demo_pki
from tests.examples import example_without_gateways


@pytest.fixture(scope="module")
def etc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("etc-qlink")
    (root / "hospital-a.toml").write_text(example_without_gateways())
    write_demo_pki(root / "pki", ["hospital-a", "hospital-b"], ["pacs-a", "ehr-a", "pacs-b"])
    (root / "psk").mkdir()
    (root / "psk" / "hospital-a--hospital-b.key").write_bytes(bytes(range(256)) * 4)
    return root


def _load(etc: Path, section: str) -> FacilityConfig:
    path = etc / f"fhir-{abs(hash(section))}.toml"
    path.write_text((etc / "hospital-a.toml").read_text() + "\n" + section)
    return load_facility_config(path)


def test_a_facility_without_gateways_has_none(etc: Path) -> None:
    config = load_facility_config(etc / "hospital-a.toml")
    assert config.gateways.fhir is None and not config.gateways.any


def test_a_full_fhir_section_loads(etc: Path) -> None:
    config = _load(
        etc,
        """[gateway.fhir]
listen = "0.0.0.0:8443"
base_path = "/r5"
token_file = "fhir.token"
tls_cert = "pki/hospital-a.pem"
tls_key = "pki/hospital-a.key"
client_ca = "pki/ca.pem"

[[gateway.fhir.destination]]
base_url = "https://fhir.hospital-a.example/r5/"
ca = "pki/ca.pem"
timeout_s = 12
""",
    )
    fhir = config.gateways.fhir
    assert fhir is not None and fhir.base_path == "/r5" and fhir.listen.port == 8443
    assert fhir.token_file == etc / "fhir.token"
    (destination,) = fhir.destinations
    assert destination.base_url == "https://fhir.hospital-a.example/r5" and destination.timeout_s == 12


@pytest.mark.parametrize(
    ("section", "field", "words"),
    [
        ('[gateway.fhir]\nlisten = "127.0.0.1:8080"\n', "gateway.fhir.token_file", "patient data"),
        (
            '[gateway.fhir]\nlisten = "10.0.0.5:8080"\ntoken_file = "t"\n',
            "gateway.fhir.listen",
            "not loopback",
        ),
        (
            '[gateway.fhir]\nlisten = "127.0.0.1:8080"\ntoken_file = "t"\ntls_cert = "pki/hospital-a.pem"\n',
            "gateway.fhir.tls_cert",
            "go together",
        ),
        (
            '[gateway.fhir]\nlisten = "127.0.0.1:8080"\ntoken_file = "t"\nbase_path = "fhir"\n',
            "gateway.fhir.base_path",
            "/fhir",
        ),
        (
            '[gateway.fhir]\nlisten = "127.0.0.1:8080"\ntoken_file = "t"\n'
            '[[gateway.fhir.destination]]\nbase_url = "ftp://server/r5"\n',
            "gateway.fhir.destination[0].base_url",
            "http(s)",
        ),
        (
            '[gateway.fhir]\nlisten = "127.0.0.1:8080"\ntoken_file = "t"\n'
            '[[gateway.fhir.destination]]\nbase_url = "http://a/r5"\n'
            '[[gateway.fhir.destination]]\nbase_url = "http://a/r5/"\n',
            "gateway.fhir.destination",
            "twice",
        ),
        (
            '[gateway.fhir]\nlisten = "127.0.0.1:8080"\ntoken_file = "t"\nlisen = 1\n',
            "gateway.fhir.lisen",
            "unknown",
        ),
        ('[gateway.fhirr]\nlisten = "127.0.0.1:8080"\n', "gateway.fhirr", "unknown"),
    ],
    ids=[
        "no-auth",
        "plain-http-off-loopback",
        "cert-without-key",
        "base-path",
        "url-scheme",
        "twice",
        "typo",
        "typo-gateway",
    ],
)
def test_mistakes_name_the_field(etc: Path, section: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(etc, section)
    assert caught.value.field == field
    assert words in caught.value.message
