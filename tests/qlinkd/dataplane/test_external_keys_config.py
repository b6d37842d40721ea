"""The configuration of a ``key_source = "etsi014"`` peer (every field checked and named), and the
``key_source`` the status reports for each data-plane peer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.link.status import DataPeerStatus
from qlinkmed.qlinkd.ops import pki
from qlinkmed.qlinkd.ops.config import load_facility_config

K1 = "kme-1"
SAE_A, SAE_B = "sae-a", "sae-b"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (cert, key), all signed by "ca"."""
    directory = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = pki.create_ca("ca")
    out: dict[str, tuple[Path, Path]] = {}
    for name, (cert, key) in {
        "ca": (ca_cert, ca_key),
        K1: pki.issue(ca_cert, ca_key, K1, server_names=["127.0.0.1"]),
        SAE_A: pki.issue(ca_cert, ca_key, SAE_A, server=False),
        SAE_B: pki.issue(ca_cert, ca_key, SAE_B, server=False),
    }.items():
        (directory / f"{name}.pem").write_bytes(cert)
        (directory / f"{name}.key").write_bytes(key)
        out[name] = (directory / f"{name}.pem", directory / f"{name}.key")
    return out


def test_status_names_the_key_source_and_reads_daemons_that_predate_it() -> None:
    status = DataPeerStatus(peer="hospital-b", pq_hybrid=False, last_session=None, key_source="etsi014")
    as_json = json.loads(json.dumps(status.to_json()))
    assert as_json["key_source"] == "etsi014"
    assert DataPeerStatus.from_json(as_json) == status
    del as_json["key_source"]
    assert DataPeerStatus.from_json(as_json).key_source == "emulated"


def _facility_toml(tmp_path: Path, certs: dict[str, tuple[Path, Path]], peer: str) -> Path:
    """A facility configuration with one [[peer]] section given as `peer`; the facility's own TLS files
    are the K1 ones (any CA-signed server+client certificate whose CN is the facility id)."""
    ca, (cert, key) = certs["ca"][0], certs[K1]
    path = tmp_path / "facility.toml"
    path.write_text(
        f"""[facility]
id = "{K1}"
state_dir = "state"
saes = []

[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[listen]
classical = "127.0.0.1:1"
kme = "127.0.0.1:2"
local = "127.0.0.1:3"

[channel]
address = "127.0.0.1:4"

{peer}
"""
    )
    return path


def _etsi_peer(certs: dict[str, tuple[Path, Path]], **changes: str) -> str:
    values = {
        "kme_url": "https://127.0.0.1:8443",
        "sae_id": SAE_A,
        "peer_sae_id": SAE_B,
        "client_cert": str(certs[SAE_A][0]),
        "client_key": str(certs[SAE_A][1]),
        "ca": str(certs["ca"][0]),
    } | changes
    lines = "\n".join(f'{k} = "{v}"' for k, v in values.items() if v != "-")
    return f"""[[peer]]
id = "hospital-b"
key_source = "etsi014"
data_address = "127.0.0.1:5"

[peer.etsi014]
{lines}
"""


def test_an_etsi014_peer_loads_without_an_emulated_link(
    tmp_path: Path, certs: dict[str, tuple[Path, Path]]
) -> None:
    config = load_facility_config(_facility_toml(tmp_path, certs, _etsi_peer(certs)))
    assert config.peers == ()
    (peer,) = config.external_peers
    assert (peer.id, peer.etsi014.kme_url, peer.etsi014.sae_id, peer.etsi014.peer_sae_id) == (
        "hospital-b",
        "https://127.0.0.1:8443",
        SAE_A,
        SAE_B,
    )
    assert "hospital-b (etsi014)" in config.summary()


@pytest.mark.parametrize(
    ("changes", "extra", "field", "problem"),
    [
        ({"kme_url": "http://127.0.0.1:8443"}, "", "peer[0].etsi014.kme_url", "must be an https:// URL"),
        ({"kme_url": "https://:8443"}, "", "peer[0].etsi014.kme_url", "names no host"),
        ({"kme_url": "https://kme:99999"}, "", "peer[0].etsi014.kme_url", "invalid port"),
        ({"kme_url": "https://u:p@kme:1"}, "", "peer[0].etsi014.kme_url", "user information"),
        ({"sae_id": "bad sae/id"}, "", "peer[0].etsi014.sae_id", "SAE ID alphabet"),
        ({"peer_sae_id": SAE_A}, "", "peer[0].etsi014.peer_sae_id", "must differ from sae_id"),
        ({"client_key": "/nonexistent/sae.key"}, "", "peer[0].etsi014.client_key", "cannot read"),
        ({"ca": "-"}, "", "peer[0].etsi014.ca", "required field is missing"),
        ({"colour": "blue"}, "", "peer[0].etsi014.colour", "unknown key"),
    ],
)
def test_every_etsi014_field_is_checked_and_named(
    tmp_path: Path,
    certs: dict[str, tuple[Path, Path]],
    changes: dict[str, str],
    extra: str,
    field: str,
    problem: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_facility_config(_facility_toml(tmp_path, certs, _etsi_peer(certs, **changes) + extra))
    assert caught.value.field == field
    assert problem in caught.value.message


def test_a_certificate_that_does_not_match_its_key_is_named(
    tmp_path: Path, certs: dict[str, tuple[Path, Path]]
) -> None:
    peer = _etsi_peer(certs, client_key=str(certs[SAE_B][1]))
    with pytest.raises(ConfigError) as caught:
        load_facility_config(_facility_toml(tmp_path, certs, peer))
    assert caught.value.field == "peer[0].etsi014.client_cert"


def test_link_fields_on_an_etsi014_peer_and_etsi014_on_an_emulated_one_are_refused(
    tmp_path: Path, certs: dict[str, tuple[Path, Path]]
) -> None:
    peer = _etsi_peer(certs).replace(
        'key_source = "etsi014"\n', 'key_source = "etsi014"\nprotocol = "bb84"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_facility_config(_facility_toml(tmp_path, certs, peer))
    assert (caught.value.field, caught.value.message) == (
        "peer[0].protocol",
        'applies to key_source = "emulated" only',
    )
    peer = _etsi_peer(certs).replace('key_source = "etsi014"', 'key_source = "quantum-magic"')
    with pytest.raises(ConfigError) as caught:
        load_facility_config(_facility_toml(tmp_path, certs, peer))
    assert caught.value.field == "peer[0].key_source" and "emulated | etsi014" in caught.value.message
    peer = _etsi_peer(certs).replace('key_source = "etsi014"', 'key_source = "emulated"')
    with pytest.raises(ConfigError) as caught:
        load_facility_config(_facility_toml(tmp_path, certs, peer))
    assert caught.value.field == "peer[0].etsi014"
