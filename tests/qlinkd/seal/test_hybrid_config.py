"""The post-quantum hybrid as a facility configures it: ``pq_hybrid`` per peer, refused with a clear error
where the installed cryptography lacks ML-KEM-768 (simulated here by taking the module away, as
``seal/hybrid.py`` does when the import fails), the data plane refusing to start with it, and what
``qlink status`` shows of it."""

from __future__ import annotations

import json
from pathlib import Path

import cryptography
import pytest
from prometheus_client import CollectorRegistry

from qlinkmed.client.commands.status import format_pq_hybrid, format_status
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.errors import ConfigError, HybridUnavailable, StatusFormatError
from qlinkmed.qlinkd.link.status import DataPeerStatus, DataSession
from qlinkmed.qlinkd.ops.audit import AuditLog
from qlinkmed.qlinkd.ops.config import check_config, load_facility_config
from qlinkmed.qlinkd.ops.metrics import LinkMetrics
from qlinkmed.qlinkd.ops.pki import client_context, server_context
from qlinkmed.qlinkd.seal import hybrid
from qlinkmed.qlinkd.testbed.deployment import write_loopback_deployment
from tests.qlinkd.dataplane.test_dataplane import PairedKeys
from tests.status_factory import link_status

A, B = "hospital-a", "hospital-b"


@pytest.fixture
def without_mlkem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hybrid, "_mlkem", None)
    assert not hybrid.hybrid_available()


def test_pq_hybrid_is_off_unless_configured_and_the_testbed_can_turn_it_on(tmp_path: Path) -> None:
    plain = write_loopback_deployment(tmp_path / "plain")
    assert [p.pq_hybrid for p in load_facility_config(plain.facilities[A]).peers] == [False]
    both = write_loopback_deployment(tmp_path / "hybrid", pq_hybrid=True)
    for facility in (A, B):
        assert [p.pq_hybrid for p in load_facility_config(both.facilities[facility]).peers] == [True]


def test_pq_hybrid_must_be_a_boolean(tmp_path: Path) -> None:
    deployment = write_loopback_deployment(tmp_path, pq_hybrid=True)
    path = deployment.facilities[A]
    path.write_text(path.read_text().replace("pq_hybrid = true", 'pq_hybrid = "yes"'))
    with pytest.raises(ConfigError) as info:
        load_facility_config(path)
    assert info.value.field == "peer[0].pq_hybrid" and "must be true or false" in info.value.message


@pytest.mark.usefixtures("without_mlkem")
def test_pq_hybrid_without_ml_kem_is_a_config_error_naming_the_peer_and_the_library(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment = write_loopback_deployment(tmp_path, pq_hybrid=True)
    with pytest.raises(ConfigError) as info:
        load_facility_config(deployment.facilities[A])
    assert info.value.field == "peer[0].pq_hybrid"
    assert info.value.message.startswith(
        f"peer {B}: pq_hybrid = true but the installed cryptography (version {cryptography.__version__}) "
        "provides no ML-KEM-768; upgrade cryptography >= 47"
    )
    assert info.value.message.endswith("or set pq_hybrid = false")
    assert check_config(deployment.facilities[A]) == 2
    assert "config error: peer[0].pq_hybrid: peer hospital-b: pq_hybrid = true" in capsys.readouterr().err
    # Without the hybrid the same library is no obstacle.
    plain = write_loopback_deployment(tmp_path / "plain")
    assert load_facility_config(plain.facilities[A]).peers[0].pq_hybrid is False


@pytest.mark.usefixtures("without_mlkem")
def test_a_data_plane_with_pq_hybrid_refuses_to_start_without_ml_kem(tmp_path: Path) -> None:
    deployment = write_loopback_deployment(tmp_path)
    ca, (cert, key) = deployment.root / "pki" / "ca.pem", deployment.pki(A)

    def plane(pq_hybrid: list[str]) -> DataPlane:
        return DataPlane(
            facility=A,
            state_dir=tmp_path / "state",
            peers={B: None},
            keys=PairedKeys(),
            client_ssl=client_context(ca, cert, key),
            server_ssl=server_context(ca, cert, key),
            audit=AuditLog.open(tmp_path / "audit", facility=A),
            metrics=LinkMetrics(CollectorRegistry()),
            pq_hybrid=pq_hybrid,
        )

    with pytest.raises(HybridUnavailable, match=r"pq_hybrid is on for \['hospital-b'\], but the installed"):
        plane([B])
    plane([]).close()
    with pytest.raises(HybridUnavailable):
        hybrid.HybridOffer(bytes(hybrid.MLKEM_SEED_BYTES))


def test_qlink_status_shows_the_setting_and_what_the_last_session_used() -> None:
    link = link_status(peer=B, auth_reserve_bits=0)
    last = DataSession(role="receiver", pq_hybrid=True, kem="ML-KEM-768", opened_at="2025-01-01T00:00:00Z")
    peers = [
        DataPeerStatus(peer=B, pq_hybrid=True, last_session=last).to_json(),
        DataPeerStatus(peer="hospital-c", pq_hybrid=False, last_session=None).to_json(),
    ]
    status = {"facility": A, "links": [link.to_json()], "data_plane": {"senders": {}, "peers": peers}}
    text = format_status(json.loads(json.dumps(status)))
    assert (
        "  pq hybrid     on (ML-KEM-768 mixed into every data-plane traffic key); last data session "
        "(receiver, 2025-01-01T00:00:00Z): QKD key and ML-KEM-768"
    ) in text
    assert format_pq_hybrid(DataPeerStatus.from_json(peers[1])) == "off; no data session yet"
    plain = DataSession(role="sender", pq_hybrid=False, kem=None, opened_at="t")
    assert format_pq_hybrid(DataPeerStatus(peer=B, pq_hybrid=False, last_session=plain)).endswith(
        "(sender, t): QKD key alone"
    )
    with pytest.raises(StatusFormatError, match=r"hospital-b.last_session.pq_hybrid"):
        DataPeerStatus.from_json({**peers[0], "last_session": {**last.to_json(), "pq_hybrid": "yes"}})
    # A daemon without a data plane: the link block has no such row.
    assert "pq hybrid" not in format_status({"facility": A, "links": [link.to_json()]})
